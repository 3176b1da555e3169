r"""Image grids for mined top-k patches (used by the CLI and the docs).

* :func:`to_display` turns (normalised) float image tensors into ``uint8`` RGB arrays.
* :func:`patch_grid` lays out one channel's patches, with the activation under each one.
* :func:`channel_sheet` tiles several channels' grids into one sheet ("Layer 2: Top-9").
* :func:`save_png` writes a PNG atomically.

Geometry of :func:`patch_grid` (all in pixels): every cell is ``cell_w`` wide and
``cell_h`` high, with ``cell_w = max(w * scale, widest label)`` and
``cell_h = h * scale + label_h`` (``label_h = 0`` without ``values``; else
:func:`label_height`). Cell ``j`` is at row ``j // ncols``, column ``j % ncols``, its top-left
corner at ``(x, y) = (pad + col * (cell_w + pad), title_h + pad + row * (cell_h + pad))``
(``title_h = 0`` without a title, else ``label_height() + pad``). The patch is drawn at the
top of its cell, centred horizontally; the label is centred under it. The image is
``ncols * (cell_w + pad) + pad`` wide (or wider, to fit the title) and
``title_h + nrows * (cell_h + pad) + pad`` high, ``nrows = max(1, ceil(k / ncols))``.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..utils.files import atomic_open

__all__ = ["to_display", "patch_grid", "channel_sheet", "projection_sheet", "save_png", "label_height", "fit_patches"]

ImagesLike = Union[Tensor, np.ndarray]
Stats = Optional[Union[float, Sequence[float], Tensor]]

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


@lru_cache(maxsize=1)
def _font() -> Any:
    return ImageFont.load_default()


def _text_size(text: str) -> Tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = _font().getbbox(text)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom))


def label_height() -> int:
    r"""Height in pixels of one line of label text (the default PIL font), margin included.

    Returns:
        int: the ``label_h`` of the module-level geometry (font dependent, about 14).
    """
    return _text_size("Agy|0")[1] + 3


def _stat(value: Stats, c: int, name: str) -> Optional[Tensor]:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"{name} has {t.numel()} values but the images have {c} channels.")
    return t.view(1, c, 1, 1)


def to_display(images: ImagesLike, mean: Stats = None, std: Stats = None) -> np.ndarray:
    r"""Convert image tensors to ``uint8`` RGB for display, undoing a normalisation.

    Computes ``x * std + mean`` per channel (when given), then ``round(255 * x)`` clipped to
    [0, 255]. One-channel images are repeated to grey RGB. ``uint8`` input is taken as
    already in 0..255 and is not scaled.

    Args:
        images (Tensor or numpy.ndarray): ``(N, C, h, w)`` with ``C`` in {1, 3}, or a single
            ``(C, h, w)`` image. Floats are expected in [0, 1] once un-normalised.
        mean (float or sequence of float, optional): the ``mean`` of the
            ``torchvision.transforms.Normalize`` applied to the images (1 or ``C`` values).
        std (float or sequence of float, optional): its ``std``.

    Returns:
        numpy.ndarray: ``uint8`` of shape ``(N, h, w, 3)``.

    Example::

        >>> from captum_topk.viz.plot import to_display
        >>> IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        >>> rgb = to_display(batch, **IMAGENET)  # (N, 224, 224, 3) uint8
    """
    x = torch.as_tensor(images)
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"Expected images of shape (N, C, h, w) or (C, h, w) with C in {{1, 3}}, got "
            f"{tuple(x.shape)}. Channels-last arrays need .permute(0, 3, 1, 2) first."
        )
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        if mean is not None or std is not None:
            raise ValueError("uint8 images are not normalised; drop mean/std.")
        out = x
    else:
        x = torch.nan_to_num(x.to(torch.float64))
        c = x.shape[1]
        s, m = _stat(std, c, "std"), _stat(mean, c, "mean")
        if s is not None:
            x = x * s
        if m is not None:
            x = x + m
        out = torch.round(x * 255.0).clamp_(0, 255).to(torch.uint8)
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def _as_arrays(patches: Any, mean: Stats, std: Stats) -> Tuple[List[np.ndarray], Tuple[int, int]]:
    """Patches as a list of (h, w, 3) uint8 arrays, plus the largest (h, w)."""
    if isinstance(patches, (Tensor, np.ndarray)):
        t = torch.as_tensor(patches)
        if t.dim() != 4:
            raise ValueError(
                f"patches must be a (k, C, h, w) tensor or a list of (C, h, w) tensors, got "
                f"shape {tuple(t.shape)}."
            )
        if t.shape[0] == 0:
            if t.shape[1] not in (1, 3):
                raise ValueError(f"patches must have 1 or 3 channels, got {t.shape[1]}.")
            return [], (int(t.shape[2]), int(t.shape[3]))
        arrays = list(to_display(t, mean, std))
    else:
        arrays = [to_display(p, mean, std)[0] for p in patches]
        if not arrays:
            raise ValueError("No patches to draw (empty list); pass a (0, C, h, w) tensor instead.")
    hw = (max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays))
    return arrays, hw


def _labels(values: Any, k: int, fmt: str) -> Optional[List[str]]:
    if values is None:
        return None
    if isinstance(values, (Tensor, np.ndarray)):
        values = np.asarray(torch.as_tensor(values).detach().cpu()).reshape(-1).tolist()
    values = list(values)
    if len(values) != k:
        raise ValueError(f"Got {len(values)} values for {k} patches.")
    return [v if isinstance(v, str) else fmt.format(float(v)) for v in values]


def patch_grid(
    patches: Union[Tensor, Sequence[Tensor]],
    values: Optional[Union[Sequence[Any], Tensor]] = None,
    ncols: int = 3,
    pad: int = 2,
    scale: int = 1,
    title: Optional[str] = None,
    mean: Stats = None,
    std: Stats = None,
    fmt: str = "{:.3g}",
    background: Tuple[int, int, int] = _WHITE,
) -> Image.Image:
    r"""One channel's top-k patches as a grid, with the activation written under each.

    Args:
        patches (Tensor or list of Tensor): ``(k, C, h, w)`` with ``C`` in {1, 3}, best first,
            or a list of ``(C, h, w)`` tensors whose sizes may differ (patches cut at the
            image border); cells then take the largest size.
        values (sequence of float or str, or Tensor, optional): ``k`` labels, one per patch;
            numbers are formatted with ``fmt``. Default: no labels.
        ncols (int): cells per row (kept even when ``k < ncols``, so grids line up). Default 3.
        pad (int): pixels between cells and around the border. Default 2.
        scale (int): nearest-neighbour upscaling of the patches. Default 1.
        title (str, optional): a line of text above the grid.
        mean, std (optional): the normalisation to undo, as in :func:`to_display`.
        fmt (str): format for numeric values. Default ``"{:.3g}"``.
        background (tuple of int): RGB of the padding. Default white.

    Returns:
        PIL.Image.Image: RGB; size as in the module docstring.

    Example::

        >>> img = patch_grid(result.patches[12], values=result.values[12], scale=2,
        ...                  title="ch 12", mean=IMAGENET_MEAN, std=IMAGENET_STD)
        >>> save_png(img, "results/conv2_ch12.png")
    """
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}.")
    if int(pad) != pad or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad}.")
    ncols, pad, scale = int(ncols), int(pad), int(scale)
    arrays, (ph, pw) = _as_arrays(patches, mean, std)
    k = len(arrays)
    labels = _labels(values, k, fmt)

    lab_h = label_height() if labels is not None else 0
    lab_w = max((_text_size(s)[0] for s in labels), default=0) if labels else 0
    cell_w = max(pw * scale, lab_w + 2 if labels else 0)
    cell_h = ph * scale + lab_h
    title_h = label_height() + pad if title else 0
    nrows = max(1, math.ceil(k / ncols))
    width = ncols * (cell_w + pad) + pad
    if title:
        width = max(width, _text_size(title)[0] + 2 * pad + 2)
    height = title_h + nrows * (cell_h + pad) + pad

    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    for j, a in enumerate(arrays):
        if scale > 1:
            a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
        r, c = divmod(j, ncols)
        x = pad + c * (cell_w + pad) + (cell_w - a.shape[1]) // 2
        y = title_h + pad + r * (cell_h + pad)
        canvas[y : y + a.shape[0], x : x + a.shape[1]] = a

    img = Image.fromarray(canvas)
    if labels is not None or title:
        draw = ImageDraw.Draw(img)
        font = _font()
        if title:
            draw.text((pad + 1, pad // 2 + 1), title, fill=_BLACK, font=font)
        for j, s in enumerate(labels or []):
            r, c = divmod(j, ncols)
            x0 = pad + c * (cell_w + pad)
            y0 = title_h + pad + r * (cell_h + pad) + ph * scale + 1
            draw.text((x0 + (cell_w - _text_size(s)[0]) // 2, y0), s, fill=_BLACK, font=font)
    return img


def channel_sheet(
    patch_sets: Mapping[Any, Union[Tensor, Sequence[Tensor]]],
    values: Optional[Mapping[Any, Sequence[Any]]] = None,
    ncols: int = 4,
    grid_ncols: int = 3,
    pad: int = 2,
    gap: int = 8,
    scale: int = 1,
    title: Optional[str] = None,
    mean: Stats = None,
    std: Stats = None,
    fmt: str = "{:.3g}",
) -> Image.Image:
    r"""Several channels' top-k grids tiled into one sheet, each titled ``"ch N"``.

    Reproduces the "Layer 2: Top-9" figures of Zeiler & Fergus: one :func:`patch_grid` per
    channel (white), placed on a light grey sheet, ``ncols`` blocks per row, in the order of
    ``patch_sets``.

    Args:
        patch_sets (dict): channel index -> patches, as accepted by :func:`patch_grid`.
        values (dict, optional): channel index -> its ``k`` values; a channel missing here
            gets no labels.
        ncols (int): channel blocks per row. Default 4.
        grid_ncols (int): patches per row inside each block. Default 3 (3 x 3 for top-9).
        pad (int): padding inside each block. Default 2.
        gap (int): grey space between blocks and around the sheet. Default 8.
        scale (int): nearest-neighbour upscaling of the patches. Default 1.
        title (str, optional): a line above the sheet, e.g. ``"conv2: Top-9"``.
        mean, std (optional): normalisation to undo, as in :func:`to_display`.
        fmt (str): format of numeric values. Default ``"{:.3g}"``.

    Returns:
        PIL.Image.Image: RGB. Every block occupies a slot as large as the largest block; slot
        ``j`` has its top-left at ``(gap + col * (slot_w + gap), title_h + gap + row * (slot_h
        + gap))``, ``title_h = label_height() + gap`` with a title, else 0.

    Example::

        >>> sheet = channel_sheet({c: result.patches[c] for c in range(8)},
        ...                       {c: result.values[c] for c in range(8)},
        ...                       title="features.3: Top-9", mean=IMAGENET_MEAN, std=IMAGENET_STD)
        >>> save_png(sheet, "results/features.3_top9.png")
    """
    if not patch_sets:
        raise ValueError("patch_sets is empty: give at least one channel.")
    if int(ncols) < 1 or int(gap) < 0:
        raise ValueError(f"Need ncols >= 1 and gap >= 0, got ncols={ncols}, gap={gap}.")
    ncols, gap = int(ncols), int(gap)
    values = values or {}
    blocks = [
        patch_grid(
            p, values.get(ch), ncols=grid_ncols, pad=pad, scale=scale, title=f"ch {ch}",
            mean=mean, std=std, fmt=fmt,
        )
        for ch, p in patch_sets.items()
    ]
    slot_w = max(b.width for b in blocks)
    slot_h = max(b.height for b in blocks)
    ncols = min(ncols, len(blocks))
    nrows = math.ceil(len(blocks) / ncols)
    title_h = label_height() + gap if title else 0
    width = ncols * (slot_w + gap) + gap
    if title:
        width = max(width, _text_size(title)[0] + 2 * gap)
    height = title_h + nrows * (slot_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (230, 230, 230))
    for j, b in enumerate(blocks):
        r, c = divmod(j, ncols)
        sheet.paste(b, (gap + c * (slot_w + gap), title_h + gap + r * (slot_h + gap)))
    if title:
        ImageDraw.Draw(sheet).text((gap, gap), title, fill=_BLACK, font=_font())
    return sheet


def projection_sheet(
    pairs: Mapping[Any, Tuple[Union[Tensor, Sequence[Tensor]], Union[Tensor, np.ndarray]]],
    values: Optional[Mapping[Any, Sequence[Any]]] = None,
    ncols: int = 2,
    grid_ncols: int = 3,
    pad: int = 2,
    gap: int = 8,
    scale: int = 1,
    title: Optional[str] = None,
    mean: Stats = None,
    std: Stats = None,
    fmt: str = "{:.3g}",
    method: str = "projection",
) -> Image.Image:
    r"""Patches beside their projections, one block per channel (Zeiler & Fergus, Fig. 2).

    Each block is two :func:`patch_grid` side by side, ``gap`` pixels apart: the channel's
    image patches (titled ``"ch N"``, values under them) and the same records' projections
    (titled ``method``), cell for cell, so the k-th projection sits at the place of the k-th
    patch. Blocks are tiled ``ncols`` per row on a light grey sheet, as in :func:`channel_sheet`.

    Args:
        pairs (dict): channel -> ``(patches, projections)``; patches as accepted by
            :func:`patch_grid` (normalised floats), projections as ``(k, h, w, 3)`` uint8
            RGB (e.g. ``Projections.rgb``) or a ``(k, 3, h, w)`` uint8 tensor.
        values (dict, optional): channel -> its ``k`` values, written under both grids.
        ncols (int): blocks per row. Default 2.
        grid_ncols (int): cells per row of each grid. Default 3.
        pad, gap, scale, fmt: as in :func:`channel_sheet`.
        title (str, optional): a line above the sheet.
        mean, std (optional): normalisation of the patches to undo (not of the projections).
        method (str): title of the projection grids. Default ``"projection"``.

    Returns:
        PIL.Image.Image: RGB.

    Example::

        >>> proj = result.projections(dataset, "features.7", 12, model=model)
        >>> sheet = projection_sheet({12: (result.patches(dataset, "features.7", 12), proj.rgb)},
        ...                          mean=IMAGENET_MEAN, std=IMAGENET_STD, method="deconvnet")
    """
    if not pairs:
        raise ValueError("pairs is empty: give at least one channel.")
    if int(ncols) < 1 or int(gap) < 0:
        raise ValueError(f"Need ncols >= 1 and gap >= 0, got ncols={ncols}, gap={gap}.")
    ncols, gap = int(ncols), int(gap)
    values = values or {}
    blocks = []
    for ch, (patches, proj) in pairs.items():
        rgb = torch.as_tensor(np.asarray(proj)) if not isinstance(proj, Tensor) else proj
        if rgb.dim() == 4 and rgb.shape[-1] == 3 and rgb.shape[1] != 3:
            rgb = rgb.permute(0, 3, 1, 2)
        if rgb.dtype != torch.uint8:
            raise TypeError(f"projections must be uint8 RGB (Projections.rgb), got {rgb.dtype}.")
        left = patch_grid(patches, values.get(ch), ncols=grid_ncols, pad=pad, scale=scale,
                          title=f"ch {ch}", mean=mean, std=std, fmt=fmt)
        right = patch_grid(rgb, values.get(ch), ncols=grid_ncols, pad=pad, scale=scale,
                           title=method, fmt=fmt)
        block = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)),
                          (230, 230, 230))
        block.paste(left, (0, 0))
        block.paste(right, (left.width + gap, 0))
        blocks.append(block)
    slot_w = max(b.width for b in blocks)
    slot_h = max(b.height for b in blocks)
    ncols = min(ncols, len(blocks))
    nrows = math.ceil(len(blocks) / ncols)
    title_h = label_height() + gap if title else 0
    width = ncols * (slot_w + 2 * gap) + gap
    if title:
        width = max(width, _text_size(title)[0] + 2 * gap)
    height = title_h + nrows * (slot_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (230, 230, 230))
    for j, b in enumerate(blocks):
        r, c = divmod(j, ncols)
        sheet.paste(b, (gap + c * (slot_w + 2 * gap), title_h + gap + r * (slot_h + gap)))
    if title:
        ImageDraw.Draw(sheet).text((gap, gap), title, fill=_BLACK, font=_font())
    return sheet


def save_png(image: Union[Image.Image, np.ndarray], path: Union[str, os.PathLike]) -> Path:
    r"""Write ``image`` as a PNG at ``path`` atomically, creating parent directories.

    The PNG is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so readers never see a half-written file; the temporary file is removed
    if writing fails.

    Args:
        image (PIL.Image.Image or numpy.ndarray): an image, or a ``uint8`` array of shape
            ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (e.g. from
            :func:`captum_topk.viz.filters.filter_grid`).
        path (str or os.PathLike): destination file.

    Returns:
        pathlib.Path: ``path``.

    Example::

        >>> save_png(patch_grid(patches, values), "results/ch0.png")
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"Arrays must be uint8 to save as PNG, got {image.dtype}.")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image or a uint8 numpy array, got {type(image).__name__}.")
    path = Path(path)
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return path


def fit_patches(patches: Tensor, side: int) -> Tensor:
    r"""Downscale (k, C, h, w) patches so that their longer side is at most ``side``."""
    h, w = patches.shape[-2:]
    if max(h, w) <= side:
        return patches
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(patches, size=size, mode="bilinear", antialias=True,
                                           align_corners=False)
