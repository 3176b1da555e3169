r"""Activation maps drawn on their images: the map upsampled to the input, blended on the whole
image, optionally thresholded NetDissect-style (Bau et al. 2017) at the channel's top quantile
over the dataset (from the streaming histogram gathered with ``stats=True``)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .plot import to_display

__all__ = ["overlay", "record_overlays"]


def _lut(name: str) -> np.ndarray:
    import matplotlib

    return (np.asarray(matplotlib.colormaps[name](np.linspace(0, 1, 256)))[:, :3] * 255).astype(np.uint8)


def overlay(
    image: Tensor,
    amap: Tensor,
    threshold: Optional[float] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    scale: Optional[float] = None,
) -> np.ndarray:
    r"""One activation map on its image.

    Args:
        image (Tensor): ``(C, H, W)`` model input (normalised with ``mean`` / ``std``).
        amap (Tensor): ``(h, w)`` activation map on the layer's grid.
        threshold (float, optional): NetDissect-style: where the map (bilinearly upsampled to
            ``(H, W)``) is at least ``threshold`` the image shows through with the heat colour,
            elsewhere it is dimmed to a third. None: the heat colour everywhere.
        mean, std (sequence of float, optional): the normalisation to undo for display.
        alpha (float): weight of the heat colour. Default 0.55.
        cmap (str): a matplotlib colormap. Default ``"inferno"``.
        scale (float, optional): the activation that maps to the top colour; default the map's
            maximum (maps of one channel compare when given the same ``scale``).
    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8.
    Example::
        >>> rgb = overlay(dataset[3][0], maps[0], threshold=float(stats.quantile(0.995)[12]),
        ...               mean=info.mean, std=info.std)
    """
    H, W = image.shape[-2:]
    up = F.interpolate(amap.float()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    top = float(scale) if scale is not None else float(up.max())
    low = min(0.0, float(up.min()))
    norm = ((up - low) / max(top - low, 1e-12)).clamp(0, 1)
    heat = _lut(cmap)[(norm * 255).round().long().numpy()]
    base = to_display(image[None], mean, std)[0].astype(np.float32)
    blended = (1 - alpha) * base + alpha * heat.astype(np.float32)
    if threshold is not None:
        keep = (up >= float(threshold)).numpy()[..., None]
        blended = np.where(keep, blended, base / 3.0)
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def record_overlays(
    result: Any,
    images_source: Any,
    layer: str,
    channel: int,
    model: Any = None,
    which: str = "top",
    n: Optional[int] = None,
    quantile: Optional[float] = 0.995,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> np.ndarray:
    r"""Every record's activation map on its whole image (:func:`overlay`).

    Args:
        result (TopKResult), images_source, layer, channel, model, which, n: as in
            :meth:`TopKResult.activation_maps`.
        quantile (float, optional): threshold the maps at this quantile of the channel's
            activations over the dataset, when statistics were gathered (``stats=True``);
            None: no threshold. Default 0.995 (NetDissect's top 0.5 %).
        mean, std (sequence of float, optional): default ``result.metadata["mean"]`` /
            ``["std"]`` when recorded.
    Returns:
        numpy.ndarray: ``(n, H, W, 3)`` uint8, strongest record first; one colour scale for the
        channel (the largest value among the maps).
    """
    maps = result.activation_maps(images_source, layer, channel, model=model, which=which, n=n)
    if maps.numel() == 0:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    threshold = None
    if quantile is not None and layer in result.channel_stats:
        value = float(result.channel_stats[layer].quantile(quantile)[channel])
        threshold = value if np.isfinite(value) else None
    mean = mean if mean is not None else result.metadata.get("mean")
    std = std if std is not None else result.metadata.get("std")
    from ..core.records import record_image

    records = result.records(layer, channel, which)[: maps.shape[0]]
    scale = float(maps.max()) if which == "top" else float(maps.min())
    return np.stack([overlay(record_image(images_source, r), m, threshold, mean, std,
                             scale=scale if which == "top" else None)
                     for r, m in zip(records, maps)])
