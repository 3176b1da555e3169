r"""Views of one run for the dashboard, as ``uint8`` arrays and plain numbers: a channel's
top-k patches, projections, histogram and classes, whole inputs with the receptive field
drawn, top-1 grids, and weight tiles of any convolution."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..viz.plot import patch_grid, to_display
from ..core.records import PatchRecord
from ..runs.folder import Run

__all__ = [
    "channel_patches",
    "channel_visualizations",
    "channel_overlays",
    "channel_projections",
    "channel_histogram",
    "channel_classes",
    "record_image",
    "top1_grid",
    "tile_grid",
    "conv_layers",
    "filter_view",
]

def channel_patches(run: Run, layer: str, channel: int, which: str = "top",
                    n: Optional[int] = None) -> Tuple[np.ndarray, List[PatchRecord]]:
    r"""The receptive-field crops of a channel's records, ready to display.

    Returns:
        (numpy.ndarray, list[PatchRecord]): ``(n, h, w, 3)`` uint8 crops (clipped boxes padded
        with black) and the n records, strongest first.
    """
    recs = run.result.records(layer, channel, which)[:n]
    if not recs:
        return np.zeros((0, 1, 1, 3), np.uint8), []
    crops = run.result.patches(run.image_source(), layer, channel, which, n=n, fill=float("nan"))
    tiles = to_display(crops, mean=run.info.mean, std=run.info.std)
    pad = torch.isnan(crops).any(dim=1).numpy()  # NaN fill marks padding: show it black
    tiles[pad] = 0
    return tiles, recs


def channel_visualizations(run: Run, layer: str, channels: Sequence[int], compute: bool = True,
                           progress: Any = None) -> Dict[int, np.ndarray]:
    r"""Each channel's feature visualization (an image optimised for it: a sample from the model,
    beside the parts of real images of its top-k), as ``(size, size, 3)`` uint8, cached in the
    run folder.

    Args:
        run (Run), layer (str), channels (sequence of int): what to visualize.
        compute (bool): compute the missing ones (about 5 s per channel on a 2-core CPU); False:
            only those already cached.
        progress (callable, optional): ``progress(done, total)`` over the channels computed.
    Returns:
        dict: channel -> image (missing channels absent when ``compute`` is False).
    Raises:
        ValueError: a run of a user's ONNX file (no PyTorch model to optimise through).
    """
    from ..runs.visualize import run_visualizations, visualized_channels

    if run.model is None:
        raise ValueError("Feature visualization needs the PyTorch model; this run is of an ONNX file.")
    ready = visualized_channels(run, layer, channels)
    todo = [c for c in channels if c not in ready] if compute else []
    for i, c in enumerate(todo):  # one at a time: the page shows progress, a cancelled page loses one
        run_visualizations(run, layer, [c])
        if progress is not None:
            progress(i + 1, len(todo))
    have = [c for c in channels if c in ready or c in todo]
    if not have:
        return {}
    vis = run_visualizations(run, layer, have)
    return {c: to_display(vis.of(c)[:1])[0] for c in have}


def channel_overlays(run: Run, layer: str, channel: int, which: str = "top",
                     n: Optional[int] = None, quantile: Optional[float] = 0.995) -> np.ndarray:
    r"""Each record's whole image with the channel's activation map on it (thresholded at the
    channel's top ``quantile`` over the dataset when the run has statistics).

    Returns:
        numpy.ndarray: ``(n, H, W, 3)`` uint8, strongest record first.
    Raises:
        ValueError: a run of an ONNX file that is gone (its maps are computed by ONNX Runtime).
    """
    from ..viz.overlay import record_overlays

    return record_overlays(run.result, run.image_source(), layer, channel, model=run.maps_model(layer), which=which,
                           n=n, quantile=quantile, mean=run.info.mean, std=run.info.std)


def channel_projections(run: Run, layer: str, channel: int, method: str = "deconvolution",
                        which: str = "top", n: Optional[int] = None) -> np.ndarray:
    r"""Zeiler & Fergus projections of a channel's records (``method`` ``"deconvolution"``
    or ``"guided_backprop"``), cropped like :func:`channel_patches`.

    Returns:
        numpy.ndarray: ``(n, h, w, 3)`` uint8, zero at mid-grey (see
        :func:`captum_topk.core.projections.symmetric_rgb`).
    Raises:
        ValueError: an ONNX Runtime run (projections need PyTorch autograd).
    """
    if run.model is None:
        raise ValueError("Projections need the PyTorch model (autograd); this run was mined "
                         "through ONNX Runtime.")
    proj = run.result.projections(run.image_source(), layer, channel, method=method,
                                  model=run.model, which=which, n=n, progress=False)
    return proj.rgb


def channel_histogram(run: Run, layer: str, channel: int) -> Optional[Dict[str, Any]]:
    r"""The channel's activation histogram over every position of every image, or None
    when the run was mined without statistics.

    Returns:
        dict: ``edges`` (B + 1,) and ``counts`` (B,) trimmed to the non-empty range,
        ``underflow`` / ``overflow`` counts, ``mean``, ``fraction_positive``, ``count``,
        ``min``, ``max``.
    """
    if layer not in run.result.channel_stats:
        return None
    st = run.result.stats(layer)
    counts = st.counts[channel].numpy()
    edges = st.edges.numpy()
    nz = np.flatnonzero(counts)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, len(counts))
    return {
        "edges": edges[lo : hi + 1].astype(float),
        "counts": counts[lo:hi].astype(np.int64),
        "underflow": int(st.underflow[channel]),
        "overflow": int(st.overflow[channel]),
        "mean": float(st.mean[channel]),
        "fraction_positive": float(st.fraction_positive[channel]),
        "count": int(st.count[channel]),
        "min": float(st.min[channel]),
        "max": float(st.max[channel]),
        "n_images": int(st.n_images),
    }


def channel_classes(run: Run, layer: str, channel: int, which: str = "top",
                    top: int = 5) -> List[Tuple[str, int]]:
    r"""Which classes drive the channel: label names of its top-k images with their counts,
    most frequent first (unlabelled images not counted); empty when no record has a label."""
    counts: Dict[int, int] = {}
    for r in run.result.records(layer, channel, which):
        if r.label >= 0:
            counts[r.label] = counts.get(r.label, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(run.label_name(lab), c) for lab, c in ranked]


def record_image(run: Run, record: PatchRecord, color: Tuple[int, int, int] = (255, 215, 0),
                 width: Optional[int] = None) -> np.ndarray:
    r"""The whole model input of a record's image with its receptive field drawn.

    The box is ``record.box`` (top, left, bottom, right; bottom / right exclusive) in the
    model-input pixels (after resize and centre crop), drawn as a ``width``-pixel outline
    just inside the box (default ``max(1, round(max(H, W) / 100))``).

    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8.
    """
    image = run.image_source()(record.index)
    rgb = to_display(image, mean=run.info.mean, std=run.info.std)[0]
    pil = Image.fromarray(rgb)
    width = width or max(1, round(max(rgb.shape[:2]) / 100))
    top, left, bottom, right = record.box
    if bottom > top and right > left:
        ImageDraw.Draw(pil).rectangle([left, top, right - 1, bottom - 1], outline=color, width=width)
    return np.asarray(pil)


def top1_grid(run: Run, layer: str, channels: Sequence[int], which: str = "top",
              patch_px: int = 64, ncols: int = 8) -> Tuple[np.ndarray, List[int]]:
    r"""One image with the strongest patch of each of ``channels`` and its value under it;
    patches larger than ``patch_px`` are downscaled to it, smaller ones upscaled by an integer
    factor (nearest neighbour).

    Returns:
        (numpy.ndarray, list of int): the ``(H, W, 3)`` uint8 grid (cell ``j`` at row
        ``j // ncols``, column ``j % ncols``) and the channels shown (those with a record).
    """
    shown, crops, values = [], [], []
    src = run.image_source()
    for c in channels:
        recs = run.result.records(layer, c, which)
        if not recs:
            continue
        crops.append(run.result.patches(src, layer, c, which, n=1)[0])
        values.append(recs[0].value)
        shown.append(int(c))
    if not crops:
        return np.full((8, 8, 3), 255, np.uint8), []
    batch = torch.stack(crops)
    h, w = batch.shape[-2:]
    scale = max(1, patch_px // max(h, w))  # small fields: nearest-neighbour upscaling
    if max(h, w) > patch_px:  # large fields: antialiased downscaling
        size = (max(1, round(h * patch_px / max(h, w))), max(1, round(w * patch_px / max(h, w))))
        batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", antialias=True,
                                                align_corners=False)
    labels = [f"{c}: {v:.2f}" for c, v in zip(shown, values)]
    grid = patch_grid(batch, values=labels, ncols=ncols, scale=scale, mean=run.info.mean, std=run.info.std)
    return np.asarray(grid), shown


def tile_grid(tiles: np.ndarray, labels: Optional[Sequence[Any]] = None, target_px: int = 96,
          ncols: int = 3) -> np.ndarray:
    r"""Lay ``(n, h, w, 3)`` uint8 tiles out as a grid like the Zeiler & Fergus figures, with
    ``labels`` (numbers or text) under the tiles. Tiles smaller than ``target_px`` are
    upscaled by the largest integer factor that keeps their longer side <= ``target_px``
    (nearest neighbour: pixels stay visible); larger ones are downscaled to it (antialiased).

    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8 (a small white image when there is no tile).
    """
    tiles = np.asarray(tiles)
    if len(tiles) == 0:
        return np.full((8, 8, 3), 255, np.uint8)
    h, w = tiles.shape[1], tiles.shape[2]
    scale = max(1, target_px // max(h, w))
    if max(h, w) > target_px:
        f = target_px / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        tiles = np.stack([np.asarray(Image.fromarray(t).resize(size, Image.Resampling.LANCZOS)) for t in tiles])
    chw = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))
    return np.asarray(patch_grid(torch.from_numpy(chw), values=labels, ncols=ncols, scale=scale))


def conv_layers(model: nn.Module) -> List[str]:
    r"""Dotted names of the model's ``nn.Conv2d`` layers, in order (the first is layer 1)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def filter_view(model: nn.Module, layer: Optional[str] = None, mode: str = "auto",
                ncols: Optional[int] = None) -> Dict[str, Any]:
    r"""Filters of a convolution as one image, with per-pixel hover text and per-channel norms.

    Args:
        model (nn.Module): the model.
        layer (str, optional): a convolution's dotted name; default the first one.
        mode (str): ``"auto"``, ``"rgb"``, ``"mean"`` or ``"norm"``
            (:func:`captum_topk.viz.filters.filter_grid`).
        ncols (int, optional): tiles per row.
    Returns:
        dict: ``image`` (H, W, 3) uint8 at one pixel per weight (pad 1); ``hover`` (H, W)
        strings (channel, L2 norm; input channel too in ``"norm"`` mode; empty on separators);
        ``l2_norm`` (out,) float; ``mode`` used; ``layer``; ``shape`` (out, in, kh, kw).
    """
    from ..viz.filters import filter_grid, filter_stats, grid_layout

    names = conv_layers(model)
    if not names:
        raise ValueError("This model has no nn.Conv2d layer to draw.")
    layer = layer or names[0]
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"Unknown layer {layer!r}; convolutions: {', '.join(names[:8])}...")
    stats = filter_stats(module)
    out_c, in_c, kh, kw = stats["shape"]
    if mode == "auto":
        mode = "rgb" if in_c == 3 else ("norm" if kh * kw == 1 else "mean")
    norms = stats["l2_norm"]
    if mode == "norm":
        image = filter_grid(module, mode="norm", scale=1)
        kernel = stats["kernel_l2_norm"]
        hover = np.array([[f"channel {o} ← input {i}<br>kernel ‖w‖ = {kernel[o, i]:.3f}<br>filter ‖w‖ = {norms[o]:.3f}"
                           for i in range(in_c)] for o in range(out_c)], dtype=object)
    else:
        image = filter_grid(module, mode=mode, scale=1, pad=1, ncols=ncols, pad_value=255)
        nrows, ncols_used, height, width = grid_layout(out_c, (kh, kw), ncols, 1)
        hover = np.full((height, width), "", dtype=object)
        for j in range(out_c):
            r, c = divmod(j, ncols_used)
            y, x = 1 + r * (kh + 1), 1 + c * (kw + 1)
            hover[y : y + kh, x : x + kw] = f"channel {j}<br>‖w‖ = {norms[j]:.3f}"
    return {"image": image, "hover": hover, "l2_norm": np.asarray(norms, float), "mode": mode,
            "layer": layer, "shape": (out_c, in_c, kh, kw)}
