r"""Pictures of convolution weights, as in Zeiler & Fergus (2013), Fig. 2 / Fig. 6.

Two functions:

* :func:`filter_grid` renders the filters of one convolution as a ``uint8`` RGB grid,
  ready for ``PIL.Image.fromarray`` or ``plotly.express.imshow``.
* :func:`filter_stats` gives per-output-channel numbers (L2 norm, ...), e.g. for hover text.

Three views (``mode=``):

``"rgb"``
    Only for filters that see 3 input channels (the first layer of an image model). Each
    filter is one RGB tile, min-max normalised to [0, 1] on its own (``normalize="per_filter"``),
    so the colours show what the filter responds to, not how strong it is. Input channel order
    is taken as the model's (RGB for torchvision models; flip the weight for BGR models).
``"mean"``
    One tile per output channel: the mean of the kernel over its input channels (a
    ``kh x kw`` map), drawn in a diverging colour map: blue negative, white 0, red positive,
    with the largest ``|value|`` of each filter at full colour. For a depthwise convolution
    (one input channel per group) this is the filter's single kernel.
``"norm"``
    One heatmap of the L2 norm of every ``kh x kw`` kernel: row ``o`` / column ``i`` is the
    kernel linking input channel ``i`` (within its group) to output channel ``o``. White is 0,
    red the largest norm (of the row with ``"per_filter"``, of the whole matrix with
    ``"global"``). Useful for 1x1 convolutions, whose "tiles" are single pixels.

The default ``mode="auto"`` is ``"rgb"`` when each filter has exactly 3 input channels
and ``"mean"`` otherwise.

Grid layout (``"rgb"`` and ``"mean"``): tile ``j`` (the ``j``-th selected channel) sits at
row ``j // ncols``, column ``j % ncols``; its top-left pixel is
``(pad + row * (kh * scale + pad), pad + col * (kw * scale + pad))``, and the image is
``nrows * (kh * scale + pad) + pad`` high and ``ncols * (kw * scale + pad) + pad`` wide,
where ``nrows = ceil(n / ncols)``. See :func:`grid_layout`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["filter_grid", "filter_stats", "grid_layout"]

WeightLike = Union[nn.Module, Tensor, np.ndarray]

_HINT = (
    "pass a convolution such as model.features[0] (AlexNet/VGG) or model.conv1 (ResNet), "
    "or its .weight tensor of shape (out_channels, in_channels, kh, kw)"
)
_MODES = ("auto", "rgb", "mean", "norm")
_NORMALIZE = ("per_filter", "global", "none")


def _weight_and_groups(weight_or_layer: WeightLike) -> Tuple[np.ndarray, int]:
    """Return the weight as a float64 array (out, in_per_group, kh, kw) and the group count."""
    groups = 1
    obj: Any = weight_or_layer
    if isinstance(obj, nn.Module):
        if isinstance(obj, nn.modules.conv._ConvTransposeNd):
            raise TypeError(
                f"{obj.__class__.__name__} stores its weight as (in, out, kh, kw); transpose it "
                "yourself (layer.weight.transpose(0, 1)) if that is the view you want, or "
                + _HINT + "."
            )
        w = getattr(obj, "weight", None)
        if isinstance(w, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{obj.__class__.__name__} is lazy and not initialised yet; run one forward "
                "pass through the model first."
            )
        if not isinstance(w, Tensor):
            raise TypeError(
                f"{obj.__class__.__name__} has no weight tensor to draw; {_HINT}. "
                "For a container (Sequential, a block) pick the convolution inside it."
            )
        groups = int(getattr(obj, "groups", 1) or 1)
        obj = w
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(np.asarray(obj))
    if not isinstance(obj, Tensor):
        raise TypeError(f"Cannot draw filters of a {type(obj).__name__}; {_HINT}.")
    if obj.dim() != 4:
        raise ValueError(
            f"Expected a 2-D convolution weight with 4 dims (out, in, kh, kw), got shape "
            f"{tuple(obj.shape)}; {_HINT}."
        )
    if obj.is_meta:
        raise ValueError(
            "The weight is on the meta device (no values); load or initialise the model first."
        )
    if obj.is_quantized:
        obj = obj.dequantize()
    if obj.is_complex() or obj.dtype == torch.bool:
        raise TypeError(f"Expected a real-valued weight, got dtype {obj.dtype}.")
    if any(s == 0 for s in obj.shape):
        raise ValueError(f"The weight is empty (shape {tuple(obj.shape)}); nothing to draw.")
    arr = obj.detach().to("cpu", torch.float64).numpy()
    return arr, groups


def _select(n_out: int, channels: Optional[Sequence[int]]) -> np.ndarray:
    if channels is None:
        return np.arange(n_out)
    if isinstance(channels, Tensor):
        channels = channels.tolist()
    idx = [int(c) for c in np.atleast_1d(np.asarray(channels))]
    if not idx:
        raise ValueError("channels= is empty; give at least one output channel index.")
    bad = [c for c in idx if not 0 <= c < n_out]
    if bad:
        raise ValueError(
            f"channels {bad} out of range: this layer has {n_out} output channels (0..{n_out - 1})."
        )
    return np.asarray(idx, dtype=np.int64)


def grid_layout(
    n: int, tile_hw: Tuple[int, int], ncols: Optional[int] = None, pad: int = 1
) -> Tuple[int, int, int, int]:
    r"""Geometry of the tile grid used by :func:`filter_grid`.

    Args:
        n (int): number of tiles.
        tile_hw (tuple of int): ``(height, width)`` of one tile, after scaling.
        ncols (int, optional): tiles per row; default ``ceil(sqrt(n))``.
        pad (int): separator width in pixels (also around the border).

    Returns:
        tuple of int: ``(nrows, ncols, height, width)`` of the grid image, with
        ``height = nrows * (tile_h + pad) + pad`` and ``width = ncols * (tile_w + pad) + pad``.

    Example::

        >>> grid_layout(64, (44, 44), ncols=8, pad=1)
        (8, 8, 361, 361)
    """
    if n < 1:
        raise ValueError("A grid needs at least one tile.")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}.")
    if ncols is None:
        ncols = int(math.ceil(math.sqrt(n)))
    ncols = int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    ncols = min(ncols, n)
    nrows = int(math.ceil(n / ncols))
    th, tw = tile_hw
    return nrows, ncols, nrows * (th + pad) + pad, ncols * (tw + pad) + pad


def _diverging(v: np.ndarray) -> np.ndarray:
    """Map values in [-1, 1] to RGB in [0, 1]: -1 blue, 0 white, +1 red (linear)."""
    v = np.clip(v, -1.0, 1.0)
    pos, neg = np.clip(v, 0, None), np.clip(-v, 0, None)
    r = 1.0 - neg
    g = 1.0 - pos - neg
    b = 1.0 - pos
    return np.stack([r, g, b], axis=-1)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _minmax(tiles: np.ndarray, normalize: str) -> np.ndarray:
    """Min-max ``tiles`` (n, ...) to [0, 1]; a constant filter becomes 0.5 (mid grey)."""
    if normalize == "none":
        return np.clip(tiles, 0.0, 1.0)
    axes = tuple(range(1, tiles.ndim)) if normalize == "per_filter" else None
    lo = tiles.min(axis=axes, keepdims=True)
    hi = tiles.max(axis=axes, keepdims=True)
    rng = hi - lo
    flat = rng <= 0
    out = (tiles - lo) / np.where(flat, 1.0, rng)
    return np.where(flat, 0.5, out)


def _absmax(tiles: np.ndarray, normalize: str) -> np.ndarray:
    """Scale ``tiles`` (n, ...) to [-1, 1] by their largest |value|, keeping 0 at 0."""
    if normalize == "none":
        return np.clip(tiles, -1.0, 1.0)
    axes = tuple(range(1, tiles.ndim)) if normalize == "per_filter" else None
    m = np.abs(tiles).max(axis=axes, keepdims=True)
    return tiles / np.where(m > 0, m, 1.0)


def _check_args(mode: str, normalize: Optional[str], scale: int, pad: int) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    normalize = "none" if normalize is None else normalize
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE} or None, got {normalize!r}.")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}.")
    if int(pad) != pad or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad}.")
    return normalize


def filter_grid(
    weight_or_layer: WeightLike,
    *,
    ncols: Optional[int] = None,
    pad: int = 1,
    scale: int = 4,
    channels: Optional[Sequence[int]] = None,
    normalize: Optional[str] = "per_filter",
    mode: str = "auto",
    pad_value: int = 0,
) -> np.ndarray:
    r"""Draw the filters of a 2-D convolution as one RGB image.

    Args:
        weight_or_layer (nn.Module, Tensor or numpy.ndarray): an ``nn.Conv2d`` (its ``groups``
            is read), any module with a 4-D ``.weight``, or the weight itself, of shape
            ``(out_channels, in_channels // groups, kh, kw)``.
        ncols (int, optional): tiles per row (``"rgb"``/``"mean"``); default ``ceil(sqrt(n))``.
        pad (int): pixels of separator between tiles and around the border. Default 1.
        scale (int): nearest-neighbour upscaling of every weight pixel. Default 4.
        channels (sequence of int, optional): output channels to draw, in this order
            (repeats allowed). Default: all.
        normalize (str or None): ``"per_filter"`` (default; each tile, or each heatmap row for
            ``"norm"``, stretched on its own, as in Zeiler & Fergus), ``"global"`` (one scale
            for all selected filters, so strengths compare), or ``None``/``"none"`` (raw
            values, clipped to [0, 1] for ``"rgb"``, [-1, 1] for ``"mean"``, [0, 1] for
            ``"norm"``).
        mode (str): ``"auto"`` (default: ``"rgb"`` when each filter has 3 input channels,
            else ``"mean"``), ``"rgb"``, ``"mean"`` or ``"norm"``; see the module docstring.
        pad_value (int): grey level (0-255) of separators and of empty grid cells. Default 0.

    Returns:
        numpy.ndarray: ``uint8`` array of shape ``(H, W, 3)``.
        For ``"rgb"``/``"mean"``, ``H = nrows * (kh * scale + pad) + pad`` and
        ``W = ncols * (kw * scale + pad) + pad`` (:func:`grid_layout`).
        For ``"norm"``, ``H = n_selected * scale`` and ``W = (in_channels // groups) * scale``
        (no separators: one heatmap).

    Raises:
        TypeError: for an object without a usable convolution weight.
        ValueError: for a weight that is not 4-D, ``mode="rgb"`` on filters without 3 input
            channels, out-of-range ``channels`` or bad ``scale``/``pad``.

    Example::

        >>> import torchvision
        >>> from PIL import Image
        >>> from captum_topk.viz.filters import filter_grid
        >>> model = torchvision.models.alexnet(weights="DEFAULT")
        >>> grid = filter_grid(model.features[0], ncols=8, scale=4)  # 64 RGB tiles
        >>> grid.shape
        (361, 361, 3)
        >>> Image.fromarray(grid).save("alexnet_conv1.png")
        >>> deeper = filter_grid(model.features[3], channels=[0, 5, 7])  # blue/white/red
    """
    normalize = _check_args(mode, normalize, scale, pad)
    scale, pad = int(scale), int(pad)
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"pad_value is a grey level in 0..255, got {pad_value}.")
    w, _groups = _weight_and_groups(weight_or_layer)
    n_out, n_in, kh, kw = w.shape
    idx = _select(n_out, channels)
    w = w[idx]

    if mode == "auto":
        mode = "rgb" if n_in == 3 else "mean"

    if mode == "norm":
        norms = np.sqrt((w**2).sum(axis=(2, 3)))  # (n, in)
        if normalize == "none":
            v = np.clip(norms, 0.0, 1.0)
        else:
            v = _absmax(norms, normalize)
        img = _to_uint8(_diverging(v))
        return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)

    if mode == "rgb":
        if n_in != 3:
            raise ValueError(
                f"mode='rgb' needs filters with 3 input channels, these have {n_in}; use "
                "mode='mean' or mode='norm' for deeper layers (or mode='auto')."
            )
        tiles = _minmax(w.transpose(0, 2, 3, 1), normalize)  # (n, kh, kw, 3)
    else:  # mean
        tiles = _diverging(_absmax(w.mean(axis=1), normalize))  # (n, kh, kw, 3)

    tiles = _to_uint8(tiles)
    tiles = np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)
    th, tw = kh * scale, kw * scale
    n = len(tiles)
    _nrows, ncols, height, width = grid_layout(n, (th, tw), ncols, pad)
    chw = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
    if n == 1:  # make_grid returns a single tile unpadded
        grid = torch.nn.functional.pad(chw[0], (pad, pad, pad, pad), value=int(pad_value))
    else:
        from torchvision.utils import make_grid  # torchvision loads torch._dynamo: only when drawn

        grid = make_grid(chw, nrow=ncols, padding=pad, pad_value=int(pad_value))
    out = grid.permute(1, 2, 0).numpy()
    assert out.shape[:2] == (height, width)
    return np.ascontiguousarray(out)


def filter_stats(weight_or_layer: WeightLike) -> Dict[str, Any]:
    r"""Per-output-channel numbers about a convolution's filters (e.g. for hover text).

    Args:
        weight_or_layer (nn.Module, Tensor or numpy.ndarray): as in :func:`filter_grid`.

    Returns:
        dict: with keys

        - ``"l2_norm"``: ``(out,)`` float64, L2 norm of each whole filter.
        - ``"kernel_l2_norm"``: ``(out, in_per_group)`` float64, L2 norm of each ``kh x kw``
          kernel (the ``mode="norm"`` heatmap, unnormalised).
        - ``"mean"``, ``"std"``, ``"min"``, ``"max"``: ``(out,)`` float64 over each filter
          (``std`` is the population standard deviation).
        - ``"bias"``: ``(out,)`` float64, or ``None`` when no bias is known (a bare tensor,
          or a layer built with ``bias=False``).
        - ``"shape"``: ``(out, in_per_group, kh, kw)``; ``"groups"``: int.

    Example::

        >>> stats = filter_stats(model.features[0])
        >>> hover = [f"ch {i}: |w| = {n:.3f}" for i, n in enumerate(stats["l2_norm"])]
    """
    w, groups = _weight_and_groups(weight_or_layer)
    flat = w.reshape(w.shape[0], -1)
    bias = getattr(weight_or_layer, "bias", None)
    return {
        "l2_norm": np.sqrt((flat**2).sum(axis=1)),
        "kernel_l2_norm": np.sqrt((w**2).sum(axis=(2, 3))),
        "mean": flat.mean(axis=1),
        "std": flat.std(axis=1),
        "min": flat.min(axis=1),
        "max": flat.max(axis=1),
        "bias": (
            bias.detach().to("cpu", torch.float64).numpy() if isinstance(bias, Tensor) else None
        ),
        "shape": tuple(int(s) for s in w.shape),
        "groups": groups,
    }
