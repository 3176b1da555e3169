r"""Is a 4-D layer output really ``(N, C, H, W)``? A check that needs no knowledge of the model.

Some CNNs run parts of a block channels-last: torchvision's ConvNeXt permutes to
``(N, H, W, C)`` for its LayerNorm / Linear / GELU and back, Swin and MaxViT do the same. A
module inside such a stretch outputs a 4-D tensor whose dimension 1 is an image axis, and
mining it "per channel" would silently rank image rows. The check: one image with its top
input row set to NaN and one with its bottom row set to NaN (and one with its left column) go through the model (eval mode,
no grad). In an ``(N, C, H, W)`` map NaN spreads across channels (convolutions mix them), so
both images reach overlapping channel sets. In an ``(N, H, W, C)`` map the top row only
reaches a leading run of dimension 1 and the bottom row only a trailing run: disjoint prefix
and suffix, the signature of an image axis. (Channel layouts such as PixelUnshuffle or a
YOLO "Focus" stem give interleaved sets, not a prefix and a suffix, and the left column
reaches only part of them, so they are not flagged.)
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor


def row_probe_pair(images: Tensor) -> Tensor:
    r"""Three copies of the first image: top row NaN, bottom row NaN, left column NaN.

    Args:
        images (Tensor): ``(N, C, H, W)`` floating point batch, ``H >= 2``.

    Returns:
        Tensor: ``(3, C, H, W)``.
    """
    probes = images[:1].detach().expand(3, *images.shape[1:]).clone()
    probes[0, :, 0, :] = float("nan")
    probes[1, :, -1, :] = float("nan")
    probes[2, :, :, 0] = float("nan")
    return probes


def _prefix(mask: Tensor) -> bool:
    k = int(mask.sum())
    return k > 0 and bool(mask[:k].all())


def looks_channels_last(out: Tensor) -> bool:
    r"""Whether the outputs of :func:`row_probe_pair` show dimension 1 to be an image axis.

    Args:
        out (Tensor): ``(3, D1, D2, D3)`` output of the layer for the three probes.

    Returns:
        bool: True when the top row's NaN reach a leading run of dimension 1, the bottom
        row's a trailing run, the two runs are disjoint, and the left column's NaN reach
        every entry of dimension 1 (an image column crosses every image row; this rules out
        a single-channel space-to-depth, whose channels split by row *and* column parity).
    """
    if out.dim() != 4 or out.shape[0] != 3 or out.shape[1] < 2:
        return False
    nan = torch.isnan(out).flatten(2).any(-1).cpu()  # (3, D1)
    top, bottom, left = nan[0], nan[1], nan[2]
    return (_prefix(top) and _prefix(bottom.flip(0)) and not bool((top & bottom).any())
            and bool(left.all()))


def channels_last_message(name: str, shape: Sequence[int]) -> str:
    return (
        f"Layer {name!r} outputs shape {tuple(shape)}, but its dimension 1 behaves like an image "
        "axis (NaN in the input's top row reaches only its first entries, in the bottom row only "
        "its last): this looks like a channels-last (N, H, W, C) tensor, e.g. inside a ConvNeXt, "
        "Swin or MaxViT block between its Permute modules. Channels would be image rows. Mine a "
        "module whose output is (N, C, H, W): the block itself, or the Permute back to channels-first."
    )


def channels_last_layers(names: Sequence[str], outs: Sequence[Tensor]) -> List[str]:
    r"""Names whose probe output :func:`looks_channels_last`."""
    return [n for n, o in zip(names, outs) if isinstance(o, Tensor) and looks_channels_last(o)]
