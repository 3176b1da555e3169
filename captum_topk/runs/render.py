r"""PNG sheets of a run: top-9 / top-1 patches, projections, filters.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence
import torch
from torch import nn
from ..capture.hooks import resolve_layers
from ..viz.filters import filter_grid
from ..models.registry import load_model
from ..viz.plot import channel_sheet, fit_patches, patch_grid, projection_sheet, save_png
from ..models.registry import DEFAULT_MODEL
from ..utils.files import PathLike
from .folder import Run
from ..utils.naming import slug
from ..utils.modules import first_conv



def render_run(
    run: Run,
    layers: Optional[Sequence[str]] = None,
    channels: Optional[Sequence[int]] = None,
    which: str = "top",
    out_dir: Optional[PathLike] = None,
    max_channels: int = 16,
    patch_px: int = 96,
) -> List[Path]:
    r"""Write, per layer, ``<layer>_<which>9.png`` (top-9 sheets of several channels, the
    activation under each patch) and ``<layer>_<which>1.png`` (top-1 patch of many channels).

    Patches whose receptive field is larger than ``patch_px`` are shown downscaled to it."""
    out_dir = Path(out_dir) if out_dir else run.path
    mean, std = run.info.mean, run.info.std
    written = []
    for layer in layers or run.result.layers:
        n = run.result.num_channels(layer)
        chosen = list(channels) if channels else list(range(min(n, max_channels)))
        sets, values = {}, {}
        for c in chosen:
            recs = run.result.records(layer, c, which)
            if recs:
                sets[c] = fit_patches(run.patches(layer, c, which), patch_px)
                values[c] = [r.value for r in recs]
        side = max((p.shape[-1] for p in sets.values()), default=patch_px)
        k = run.result.k
        what = {"token": "token footprints", "image": "whole images"}.get(run.result.box_kind(layer), "patches")
        sheet = channel_sheet(sets, values, mean=mean, std=std, scale=max(1, patch_px // side),
                              title=f"{layer}: {which}-{k} {what}")
        written.append(save_png(sheet, out_dir / f"{slug(layer)}_{which}{k}.png"))
        firsts = [c for c in range(min(n, 64)) if run.result.records(layer, c, which)]
        tops = fit_patches(torch.stack([run.patches(layer, c, which, n=1)[0] for c in firsts]), patch_px * 2 // 3)
        top_vals = [run.result.records(layer, c, which)[0].value for c in firsts]
        grid = patch_grid(tops, values=top_vals, ncols=8, mean=mean, std=std,
                          scale=max(1, (patch_px * 2 // 3) // tops.shape[-1]),
                          title=f"{layer}: {which}-1 patch of channels 0-{firsts[-1]}")
        written.append(save_png(grid, out_dir / f"{slug(layer)}_{which}1.png"))
    return written


def render_overlays(
    run: Run,
    layers: Optional[Sequence[str]] = None,
    channels: Optional[Sequence[int]] = None,
    which: str = "top",
    out_dir: Optional[PathLike] = None,
    max_channels: int = 8,
    image_px: int = 112,
    quantile: Optional[float] = 0.995,
) -> List[Path]:
    r"""Write, per layer, ``<layer>_<which><k>_overlay.png``: each channel's records as whole
    images with the channel's activation map on them (:func:`captum_topk.viz.overlay.record_overlays`;
    thresholded at the channel's top ``quantile`` when the run gathered statistics).

    Args:
        run (Run): from :func:`~captum_topk.runs.folder.open_run`.
        layers, channels, which, out_dir: as in :func:`render_run`.
        max_channels (int): channels per sheet when ``channels`` is not given. Default 8.
        image_px (int): longest side of each image in the sheet.
        quantile (float, optional): the NetDissect threshold; None for none.
    Returns:
        list of Path: the PNGs written.
    Raises:
        ValueError: the run's ONNX file (a run of an ONNX file: its maps come from ONNX Runtime)
            is gone.
    """
    from ..viz.overlay import record_overlays

    out_dir = Path(out_dir) if out_dir else run.path
    written = []
    for layer in layers or run.result.layers:
        n = run.result.num_channels(layer)
        chosen = list(channels) if channels else list(range(min(n, max_channels)))
        sets, values = {}, {}
        for c in chosen:
            rgb = record_overlays(run.result, run.image_source(), layer, c, model=run.maps_model(layer), which=which,
                                  quantile=quantile, mean=run.info.mean, std=run.info.std)
            if len(rgb):
                sets[c] = fit_patches(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0, image_px)
                values[c] = [r.value for r in run.result.records(layer, c, which)]
        if not sets:
            continue
        k = run.result.k
        sheet = channel_sheet(sets, values, title=f"{layer}: {which}-{k} images with the channel's activation map")
        written.append(save_png(sheet, out_dir / f"{slug(layer)}_{which}{k}_overlay.png"))
    return written


def render_projections(
    run: Run,
    method: str = "deconvolution",
    layers: Optional[Sequence[str]] = None,
    channels: Optional[Sequence[int]] = None,
    which: str = "top",
    out_dir: Optional[PathLike] = None,
    max_channels: int = 8,
    patch_px: int = 96,
    model: Optional[nn.Module] = None,
    progress: bool = True,
) -> List[Path]:
    r"""Write, per layer, ``<layer>_<which><k>_<method>.png``: each channel's top-k patches
    beside their projections (Zeiler & Fergus, Fig. 2), see
    :func:`captum_topk.core.projections.projections` and :func:`captum_topk.viz.plot.projection_sheet`.

    Args:
        run (Run): from :func:`~captum_topk.runs.folder.open_run`.
        method (str): ``"deconvolution"`` or ``"guided_backprop"`` (or ``"gradient"``).
        layers, channels, which, out_dir: as in :func:`render_run`.
        max_channels (int): channels per sheet when ``channels`` is not given. Default 8.
        patch_px (int): longest side of patches and projections (downscaled beyond it).
        model (nn.Module, optional): the mined model; default: reloaded from the run.
        progress (bool): tqdm bar over the channels.
    Returns:
        list of Path: the PNGs written.
    """
    from tqdm.auto import tqdm

    from ..core.projections import symmetric_rgb

    out_dir = Path(out_dir) if out_dir else run.path
    model = model if model is not None else run.model
    if model is None:
        raise ValueError("Projections need the PyTorch model; this run was mined through ONNX Runtime.")
    model.eval()
    written = []
    for layer in layers or run.result.layers:
        n = run.result.num_channels(layer)
        chosen = list(channels) if channels else list(range(min(n, max_channels)))
        pairs, values = {}, {}
        for c in tqdm(chosen, desc=f"{method} {layer}", disable=not progress):
            if not run.result.records(layer, c, which):
                continue
            proj = run.result.projections(run.image_source(), layer, c, method, model=model,
                                          which=which, progress=False)
            patches = fit_patches(run.patches(layer, c, which), patch_px)
            rgb, _ = symmetric_rgb(fit_patches(proj.attributions, patch_px))
            pairs[c] = (patches, rgb)
            values[c] = [r.value for r in proj.records]
        if not pairs:
            continue
        side = max(p.shape[-1] for p, _ in pairs.values())
        k = run.result.k
        sheet = projection_sheet(pairs, values, mean=run.info.mean, std=run.info.std,
                                 scale=max(1, patch_px // side), method=method.replace("_", " "),
                                 title=f"{layer}: {which}-{k} patches | {method.replace('_', ' ')} projections")
        written.append(save_png(sheet, out_dir / f"{slug(layer)}_{which}{k}_{method}.png"))
    return written



def render_filters(model: str = DEFAULT_MODEL, checkpoint: Optional[PathLike] = None,
                   layer: Optional[str] = None, out: PathLike = "filters.png") -> Path:
    r"""Write the filter tiles of ``layer`` (default: the first convolution) to ``out``."""
    net, _ = load_model(model, checkpoint=str(checkpoint) if checkpoint else None)
    if layer:
        module = resolve_layers(net, layer)[0][1]
    else:
        conv = first_conv(net)
        if conv is None:
            raise ValueError("The model has no nn.Conv2d: pass --layer with a layer that has a .weight.")
        module = conv[1]
    return save_png(filter_grid(module, scale=12, pad=2, pad_value=255), out)
