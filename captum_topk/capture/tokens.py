r"""Token layouts: ``(N, prefix + h * w, C)`` outputs of ViT-style encoders as maps on their grid.

A transformer block of a Vision Transformer outputs one vector per token: ``prefix`` tokens
first (class token, distillation token, registers), then one token per image patch in row-major
order. Mined per channel, the patch tokens form an ``(N, C, h, w)`` map on the patch grid and
the prefix tokens an ``(N, C, prefix, 1)`` column of their own (whole-image records).

How many prefix tokens and which grid: given explicitly (``prefix_tokens=``, ``token_grid=``),
read from the model the way torchvision and timm expose them (torchvision
``VisionTransformer``: ``patch_size`` and ``class_token``; timm: ``num_prefix_tokens`` and
``patch_embed.patch_size`` / ``grid_size``), or inferred from the token count and the input
size when exactly one patch size fits (``L - prefix == (H / p) * (W / p)`` for a ``prefix`` of 0
to 8 tokens). Anything else is refused with an error naming these arguments.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from torch import Tensor, nn

__all__ = ["token_layout", "split_tokens", "TokenLayoutError"]


class TokenLayoutError(ValueError):
    r"""The prefix count or the patch grid of a token output cannot be determined."""


def _pair(v: Any) -> Optional[Tuple[int, int]]:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    try:
        a, b = (int(x) for x in v)
        return (a, b)
    except (TypeError, ValueError):
        return None


def _from_model(model: Optional[nn.Module]) -> Tuple[Optional[int], Optional[Tuple[int, int]]]:
    r"""(prefix tokens, patch size) as the model exposes them, each None when it does not."""
    if model is None:
        return None, None
    prefix = getattr(model, "num_prefix_tokens", None)  # timm
    patch = None
    embed = getattr(model, "patch_embed", None)
    if embed is not None:
        patch = _pair(getattr(embed, "patch_size", None))
    if patch is None and isinstance(getattr(model, "patch_size", None), (int, tuple, list)):
        patch = _pair(model.patch_size)  # torchvision VisionTransformer
    if prefix is None and isinstance(getattr(model, "class_token", None), (nn.Parameter, Tensor)):
        prefix = 1 + (1 if isinstance(getattr(model, "dist_token", None), (nn.Parameter, Tensor)) else 0)
    return (int(prefix) if prefix is not None else None), patch


def token_layout(
    tokens: int,
    input_size: Tuple[int, int],
    model: Optional[nn.Module] = None,
    prefix_tokens: Optional[int] = None,
    token_grid: Optional[Tuple[int, int]] = None,
    name: str = "layer",
) -> Tuple[int, Tuple[int, int]]:
    r"""The prefix count and the ``(h, w)`` patch grid of an output with ``tokens`` tokens.

    Args:
        tokens (int): ``L``, the output's token dimension.
        input_size (tuple of int): ``(H, W)`` of the model input.
        model (nn.Module, optional): read for ``num_prefix_tokens`` / ``class_token`` /
            ``patch_size`` / ``patch_embed.patch_size``.
        prefix_tokens (int, optional), token_grid (tuple of int, optional): given explicitly.
        name (str): the layer, for messages.
    Returns:
        (int, (int, int)): ``prefix`` and ``(h, w)`` with ``prefix + h * w == tokens``.
    Raises:
        TokenLayoutError: when they cannot be determined or do not add up.
    Example::
        >>> token_layout(197, (224, 224))      # ViT-B/16: class token + 14 x 14 patches
        (1, (14, 14))
    """
    H, W = input_size
    m_prefix, m_patch = _from_model(model)
    prefix = prefix_tokens if prefix_tokens is not None else m_prefix
    grid = _pair(token_grid)
    if grid is None and m_patch is not None and H % m_patch[0] == 0 and W % m_patch[1] == 0:
        candidate = (H // m_patch[0], W // m_patch[1])
        if prefix is None or prefix + candidate[0] * candidate[1] == tokens:
            grid = candidate
    if grid is not None and prefix is None:
        prefix = tokens - grid[0] * grid[1]
    if grid is None:
        fits = []
        for p in ([prefix] if prefix is not None else range(0, 9)):
            n = tokens - p
            for size in range(1, min(H, W) + 1):
                if H % size == 0 and W % size == 0 and (H // size) * (W // size) == n:
                    fits.append((p, (H // size, W // size)))
        if len({f for f in fits}) == 1:
            prefix, grid = fits[0]
        elif fits:
            raise TokenLayoutError(
                f"Layer {name!r} outputs {tokens} tokens for a {H}x{W} input, which fits several patch "
                f"grids ({', '.join(f'{p} prefix + {g[0]}x{g[1]}' for p, g in fits[:4])}): pass "
                "layout='NLC' with token_grid=(h, w) and prefix_tokens=n."
            )
    if grid is None or prefix is None or prefix < 0 or prefix + grid[0] * grid[1] != tokens:
        raise TokenLayoutError(
            f"Layer {name!r} outputs {tokens} tokens for a {H}x{W} input and its patch grid cannot be "
            "determined: pass layout='NLC' with token_grid=(h, w) and prefix_tokens=n (the number of "
            "class / distillation / register tokens before the patches)."
        )
    return int(prefix), (int(grid[0]), int(grid[1]))


def split_tokens(x: Tensor, prefix: int, grid: Tuple[int, int]) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Patch tokens as a map and prefix tokens as a column.

    Args:
        x (Tensor): ``(N, prefix + h * w, C)``.
        prefix (int), grid (tuple of int): from :func:`token_layout`.
    Returns:
        (Tensor, Tensor or None): ``(N, C, h, w)`` patch-token map (``map[n, c, y, x]`` is token
        ``prefix + y * w + x``) and ``(N, C, prefix, 1)`` prefix tokens (None without prefix).
    """
    n, _, c = x.shape
    patches = x[:, prefix:, :].transpose(1, 2).reshape(n, c, grid[0], grid[1])
    head = x[:, :prefix, :].transpose(1, 2).unsqueeze(-1) if prefix else None
    return patches, head
