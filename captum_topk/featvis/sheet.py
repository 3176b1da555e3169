r"""Pictures of feature visualizations: each channel's optimised image(s), optionally beside
the same channel's dataset top-k patches (samples from the model beside parts of real images).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..viz.plot import label_height, patch_grid
from .render import FeatureVisualization

__all__ = ["sheet", "fit"]

_GREY = (230, 230, 230)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def fit(images: Union[Tensor, Sequence[Tensor]], px: int) -> Tensor:
    r"""Resize images so that the largest side is ``px`` (bilinear, antialiased when shrinking),
    then pad each to ``px x px`` with its own mean colour; a list of differently sized images
    (patches cut at the image border) becomes one tensor.

    Args:
        images (Tensor or list of Tensor): ``(k, C, h, w)`` or a list of ``(C, h, w)``.
        px (int): side of the output.

    Returns:
        Tensor: ``(k, C, px, px)``, same dtype as the input (float).
    """
    items = list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
    out = []
    for img in items:
        img = img.float()
        h, w = img.shape[-2:]
        f = px / max(h, w)
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        r = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=f < 1)[0]
        canvas = r.mean(dim=(1, 2), keepdim=True).expand(-1, px, px).clone()
        y, x = (px - nh) // 2, (px - nw) // 2
        canvas[:, y : y + nh, x : x + nw] = r
        out.append(canvas)
    if not out:
        raise ValueError("No images to fit.")
    return torch.stack(out)


def sheet(
    vis: FeatureVisualization,
    patches: Optional[Mapping[int, Union[Tensor, Sequence[Tensor]]]] = None,
    patch_values: Optional[Mapping[int, Sequence[Any]]] = None,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    vis_px: int = 128,
    patch_px: int = 48,
    grid_ncols: int = 3,
    ncols: int = 2,
    pad: int = 2,
    gap: int = 8,
    title: Optional[str] = None,
    fmt: str = "{:.3g}",
    patches_title: str = "dataset top-{k}",
) -> np.ndarray:
    r"""Each channel's visualization(s), labelled with the objective reached, beside its
    dataset top-k patches when given.

    One block per channel of ``vis`` (in its order): the channel's ``samples`` images in a row,
    titled ``"ch N: <objective>"`` (``"dir N"`` for directions), each labelled with its value; when ``patches`` has the
    channel, its patch grid (``grid_ncols`` per row, titled ``patches_title``) to the right.
    Blocks are tiled ``ncols`` per row on a light grey sheet.

    Args:
        vis (FeatureVisualization): from :func:`~captum_topk.featvis.visualize`.
        patches (dict, optional): channel -> its top-k patches, ``(k, 3, h, w)`` or a list of
            ``(3, h, w)``, *normalised* like the model's input (as
            ``TopKResult.patches`` returns them); undone with ``mean`` / ``std``.
        patch_values (dict, optional): channel -> the k activations, written under the patches.
        mean, std (sequence of float, optional): the normalisation of ``patches``.
        vis_px (int): side of each visualization in the sheet.
        patch_px (int): side of each patch cell in the sheet.
        grid_ncols (int): patches per row. Default 3 (3 x 3 for top-9).
        ncols (int): channel blocks per row.
        pad, gap (int): pixels inside / between blocks.
        title (str, optional): a line above the sheet.
        fmt (str): number format of the labels.
        patches_title (str): title of the patch grids; ``{k}`` is the number of patches.

    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8 RGB (write it with
        :func:`captum_topk.viz.plot.save_png`).

    Example::

        >>> vis = visualize(model, "features.7", [3, 12], info=info, size=64, steps=32)
        >>> top9 = {c: result.patches(dataset, "features.7", c) for c in (3, 12)}
        >>> save_png(sheet(vis, top9, mean=info.mean, std=info.std), "features_7_vis.png")
    """
    patches = patches or {}
    patch_values = patch_values or {}
    blocks = []
    for c in vis.channels:
        imgs = fit(vis.of(c), vis_px) if vis_px != vis.images.shape[-1] else vis.of(c)
        labels = [fmt.format(float(v)) for v in vis.values_of(c)]
        left = patch_grid(imgs, labels, ncols=vis.samples, pad=pad,
                          title=f"{'dir' if vis.directions is not None else 'ch'} {c}: {vis.objective}", fmt=fmt)
        if c in patches:
            p = fit(patches[c], patch_px)
            vals = patch_values.get(c)
            right = patch_grid(p, vals, ncols=grid_ncols, pad=pad, mean=mean, std=std,
                               title=patches_title.format(k=p.shape[0]), fmt=fmt)
            block = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), _GREY)
            block.paste(left, (0, 0))
            block.paste(right, (left.width + gap, 0))
        else:
            block = left
        blocks.append(block)
    slot_w = max(b.width for b in blocks)
    slot_h = max(b.height for b in blocks)
    ncols = max(1, min(int(ncols), len(blocks)))
    nrows = math.ceil(len(blocks) / ncols)
    title_h = label_height() + gap if title else 0
    width = ncols * (slot_w + gap) + gap
    if title:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        width = max(width, int(math.ceil(probe.textlength(title, font=_font()))) + 2 * gap)
    height = title_h + nrows * (slot_h + gap) + gap
    out = Image.new("RGB", (width, height), _GREY)
    for j, b in enumerate(blocks):
        r, col = divmod(j, ncols)
        out.paste(b, (gap + col * (slot_w + gap), title_h + gap + r * (slot_h + gap)))
    if title:
        ImageDraw.Draw(out).text((gap, gap), title, fill=(0, 0, 0), font=_font())
    return np.asarray(out, dtype=np.uint8).copy()
