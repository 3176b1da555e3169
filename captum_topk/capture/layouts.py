r"""Is a 4-D layer output really ``(N, C, H, W)``? A check that needs no knowledge of the model.

Some CNNs run parts of a block channels-last: torchvision's ConvNeXt permutes to
``(N, H, W, C)`` for its LayerNorm / Linear / GELU and back, Swin and MaxViT do the same. A
module inside such a stretch outputs a 4-D tensor whose dimension 1 is an image axis, and
mining it "per channel" would silently rank image rows. The check reuses three images of the
receptive-field probe (:func:`captum_topk.receptive_field.fields_from_probe`): the input's top
row set to NaN, its bottom row, its left column. In an ``(N, C, H, W)`` map NaN spreads across channels (convolutions mix them), so
both images reach overlapping channel sets. In an ``(N, H, W, C)`` map the top row only
reaches a leading run of dimension 1 and the bottom row only a trailing run: disjoint prefix
and suffix, the signature of an image axis. (Channel layouts such as PixelUnshuffle or a
YOLO "Focus" stem give interleaved sets, not a prefix and a suffix, and the left column
reaches only part of them, so they are not flagged.)

Two more looks settle what NaN leaves undecided (:func:`captum_topk.receptive_field.probe.probe_masks`,
on the full probe before its ``H + W + 1`` images, not after). NaN over-reaches where a model
multiplies by an exact zero (``0 * NaN`` is NaN: Swin's shifted-window mask carries a NaN top
row to the bottom of the map), and a map whose every position sees the whole image has no
locality to read. So, for the 4-D outputs NaN did not flag: one input twice as tall (dimension
1 growing alone means an image axis, dimension 2 growing alone means channels-first), then,
where the shape says neither (a map pooled to a fixed size, a model refusing the size), the
three images again with *finite* changes instead of NaN (only where they agree with NaN). A
model that refuses the taller input is read from its shape at ``(H, W)`` where that is
unmistakable (one common stride on dimensions 1-2, strides at least 2x apart on 2-3).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch import Tensor


def _prefix(mask: Tensor) -> bool:
    k = int(mask.sum())
    return k > 0 and bool(mask[:k].all())


def looks_channels_last(nan: Tensor) -> bool:
    r"""Whether dimension 1 of a 4-D output behaves like an image axis.

    Args:
        nan (Tensor): ``(3, D1)`` bool: which entries of dimension 1 hold NaN (anywhere in
            dimensions 2 and 3) when the input's top row, bottom row and left column are NaN.

    Returns:
        bool: True when the top row's NaN reach a leading run of dimension 1, the bottom
        row's a trailing run, the two runs are disjoint, and the left column's NaN reach
        every entry of dimension 1 (an image column crosses every image row; this rules out
        a single-channel space-to-depth, whose channels split by row *and* column parity).
    """
    if nan.dim() != 2 or nan.shape[0] != 3 or nan.shape[1] < 2:
        return False
    top, bottom, left = nan[0].cpu(), nan[1].cpu(), nan[2].cpu()
    return (_prefix(top) and _prefix(bottom.flip(0)) and not bool((top & bottom).any())
            and bool(left.all()))


def channels_last_message(name: str, shape: Sequence[int]) -> str:
    r"""The error for a channels-last layer; ``shape`` is its output shape (batch size first)."""
    dims = ", ".join(["N", *(str(int(d)) for d in list(shape)[1:])])
    return (
        f"Layer {name!r} outputs shape ({dims}), but its dimension 1 behaves like an image "
        "axis (the input's top row reaches only its first entries and the bottom row only its "
        "last, or it grows with the input's height, or the shape says so): this looks like a channels-last (N, H, W, C) tensor, e.g. inside a ConvNeXt, "
        "Swin or MaxViT block between its Permute modules. Channels would be image rows. Mine a "
        "module whose output is (N, C, H, W): the block itself, or the Permute back to channels-first."
    )


class ChannelsLastError(ValueError):
    r"""Raised by the receptive-field probe for channels-last 4-D outputs.

    Attributes:
        layers (list of str): every probed layer that looks channels-last (the message
            describes the first).
        fields (dict or None): where the trace found the layout, the receptive fields
            measured in the same call, name -> ``ReceptiveField`` (``layers`` read as their
            permutation ``(N, C, H, W)``), so that a caller reading them so need not measure
            again; None otherwise.
    """

    def __init__(self, layers: Sequence[str], shape: Sequence[int], fields: Optional[Dict[str, Any]] = None) -> None:
        self.layers = list(layers)
        self.fields = fields
        more = f" (also: {', '.join(self.layers[1:])})" if len(self.layers) > 1 else ""
        super().__init__(channels_last_message(self.layers[0], shape) + more)
