r"""Layouts of raw layer outputs and their canonical ``(N, C, h, w)`` / ``(N, C)`` form, shared
by every activation source: which layout a raw output has, the checks on later batches, and the
conversion (a permuted view for channels-last maps, the patch grid and the prefix column for
tokens)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...capture.tokens import split_tokens
from ...receptive_field.field import ReceptiveField
from .base import LayerInfo

__all__ = ["LAYOUT_CHOICES", "PREFIX_SUFFIX", "base_layer", "per_layer", "check_per_layer", "check_batch", "layout_of", "canonical", "check_shape", "whole_image_field", "token_footprints", "size_key"]

#: What a user may ask for: a layout, or "auto".
LAYOUT_CHOICES = ("auto", "NCHW", "NHWC", "NLC", "NC")
#: Suffix of the layer name under which the prefix tokens (class, registers) of a token layer are mined.
PREFIX_SUFFIX = "[prefix]"


def base_layer(name: str) -> str:
    r"""The mined layer a result layer comes from: ``"x[prefix]"`` -> ``"x"``, others unchanged."""
    return name[: -len(PREFIX_SUFFIX)] if name.endswith(PREFIX_SUFFIX) else name


def per_layer(value: Any, name: str) -> Any:
    r"""A per-layer option's value for ``name``: the value itself, or its entry in a dict by
    layer name (None where the dict has none). ``token_grid=(7, 7)`` is every layer's grid,
    ``token_grid={"blocks.3": (7, 7)}`` one layer's."""
    return value.get(name) if isinstance(value, Mapping) else value


def check_per_layer(option: str, value: Any, names: Sequence[str]) -> None:
    r"""Refuse a per-layer dict naming layers that are not mined."""
    if isinstance(value, Mapping) and set(value) - set(names):
        raise ValueError(f"{option} names layers {sorted(set(value) - set(names))} that are not mined "
                         f"(mined: {list(names)}).")


def size_key(images: Tensor) -> Tuple[int, int, int]:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise TypeError(f"Expected (N, C, H, W) images, got {type(images).__name__}"
                        f"{tuple(images.shape) if isinstance(images, Tensor) else ''}.")
    return int(images.shape[2]), int(images.shape[3]), int(images.shape[1])


def layout_of(name: str, raw: Tensor, wanted: str) -> str:
    r"""The layout of a raw output from its number of dimensions and the wanted layout
    (``"auto4"``: a 4-D output whose layout the probe decides)."""
    dims = raw.dim() if isinstance(raw, Tensor) else None
    natural = {2: ["NC"], 3: ["NLC"], 4: ["NCHW", "NHWC"]}.get(dims)
    if natural is None:
        shape = tuple(raw.shape) if isinstance(raw, Tensor) else type(raw).__name__
        raise ValueError(
            f"Layer {name!r} outputs shape {shape}; only (N, C, H, W) / (N, H, W, C) feature maps, "
            "(N, tokens, C) token sequences and (N, C) vectors can be mined."
        )
    if wanted == "auto":
        return "auto4" if dims == 4 else natural[0]
    if wanted not in natural:
        raise ValueError(f"Layer {name!r} outputs shape {tuple(raw.shape)}, which cannot be layout {wanted!r} "
                         f"(a {dims}-D output is one of {natural}).")
    return wanted


def whole_image_field(grid: Tuple[int, int], size: Tuple[int, int]) -> ReceptiveField:
    boxes = torch.tensor([0, 0, size[0], size[1]]).expand(grid[0], grid[1], 4)
    return ReceptiveField(boxes=boxes, input_size=size, size=size, stride=size)


def check_batch(names: Sequence[str], raws: Sequence[Any], images: Tensor) -> None:
    r"""Refuse outputs whose first dimension is not the batch: windowed attention (Swin's
    ``attn``, ``o_proj``) and unfolded patches (MobileViT's transformer) run on ``(N * k, L, C)``
    windows, whose tokens are not one image's."""
    n = int(images.shape[0])
    for name, raw in zip(names, raws):
        if isinstance(raw, Tensor) and raw.dim() >= 2 and int(raw.shape[0]) != n:
            raise ValueError(
                f"Layer {name!r} outputs shape {tuple(raw.shape)} for a batch of {n} image(s): its first "
                "dimension is not the batch but the batch reshaped (windowed attention or unfolded "
                f"patches: {int(raw.shape[0])} = {n} x {int(raw.shape[0]) // max(n, 1)} windows"
                f"{'' if int(raw.shape[0]) % max(n, 1) == 0 else ', or another reshape'}), so its positions "
                "are not one image's. Mine the module after the windows are merged back into the "
                "image (the block or the stage that contains this layer)."
            )


def token_footprints(grid: Tuple[int, int], input_size: Tuple[int, int]) -> ReceptiveField:
    r"""The patch footprint of every token as its box: rows ``y * p .. (y + 1) * p`` (columns
    alike), ``p = H / h``. After global attention a token's exact receptive field is the whole
    image; the footprint says which patch the token stands for."""
    (h, w), (H, W) = grid, input_size
    ph, pw = H // h, W // w
    ys = torch.arange(h).view(h, 1).expand(h, w)
    xs = torch.arange(w).view(1, w).expand(h, w)
    boxes = torch.stack([ys * ph, xs * pw, (ys + 1) * ph, (xs + 1) * pw], dim=-1)
    return ReceptiveField(boxes=boxes, input_size=(H, W), size=(ph, pw), stride=(ph, pw))


def check_shape(raw: Tensor, info: LayerInfo) -> None:
    channel_dim = {"NHWC": 3, "NLC": 2}.get(info.layout, 1)
    if raw.dim() == len(info.raw_shape) + 1 and raw.shape[channel_dim] != info.channels:
        raise ValueError(
            f"This batch gives the layer {info.name!r} {raw.shape[channel_dim]} channels but earlier "
            f"batches gave {info.channels}; every batch must go through the same model and layer."
        )
    if raw.shape[1:] != torch.Size(info.raw_shape):
        raise ValueError(
            f"Layer {info.name!r} gave shape {tuple(raw.shape[1:])} for this batch but "
            f"{info.raw_shape} for the first batch of the same input size; every batch must go "
            "through the same model and layer."
        )


def canonical(raw: Tensor, info: LayerInfo, prefix_info: Optional[LayerInfo] = None) -> Dict[str, Tensor]:
    r"""The activation(s) of a raw output as ``(N, C, h, w)`` or ``(N, C)``: a channels-last map
    permuted (a view), tokens split into the patch map and the prefix column."""
    if info.layout == "NHWC":
        return {info.name: raw.permute(0, 3, 1, 2)}
    if info.layout == "NLC":
        patches, head = split_tokens(raw, info.prefix_tokens, info.grid)
        out = {info.name: patches}
        if head is not None and prefix_info is not None:
            out[prefix_info.name] = head
        return out
    return {info.name: raw}
