r"""Token layouts: ``(N, prefix + h * w, C)`` outputs of ViT-style encoders as maps on their grid.

A transformer block of a Vision Transformer outputs one vector per token: ``prefix`` tokens
first (class token, distillation token, registers), then one token per image patch in row-major
order. Mined per channel, the patch tokens form an ``(N, C, h, w)`` map on the patch grid and
the prefix tokens an ``(N, C, prefix, 1)`` column of their own (whole-image records).

How many prefix tokens and which grid, per layer: given explicitly (``prefix_tokens=``,
``token_grid=``, one value or a dict by layer), else from the model's own description
(:func:`model_token_facts`: timm ``num_prefix_tokens`` and the patch embedding's stride,
torchvision ``class_token`` / ``patch_size``, transformers ``config.patch_size`` and its class,
distillation and register tokens) and the layer's own token count: the prefix is 0 or the
model's prefix count (a patch embedding's output has none, a block's output has them all),
never a remainder; the grid is ``(H / s, W / s)`` (rounded down or up) for a stride ``s`` that
is the model's patch stride times a power of two (hierarchical stages: Swin, PVT), or any
stride when the model names none. Exactly one fit is taken; several or none are refused with
an error naming the arguments that settle it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from torch import Tensor, nn

__all__ = ["token_layout", "model_token_facts", "split_tokens", "vision_config", "TokenLayoutError"]


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


def vision_config(model: nn.Module) -> Any:
    r"""A transformers model's ``config`` (its vision tower's ``vision_config`` when nested, as
    in CLIP); None for a model without one."""
    config = getattr(model, "config", None)
    return getattr(config, "vision_config", None) or config


_CLASS_NAMES = ("cls_token", "class_token", "class_embedding")
_DIST_NAMES = ("dist_token", "distillation_token")
_REGISTER_NAMES = ("register_tokens", "reg_token")


def model_token_facts(model: Optional[nn.Module]) -> Tuple[Optional[int], Optional[Tuple[int, int]]]:
    r"""The prefix count and the patch stride a model declares, each None where it declares none.

    Prefix: timm's ``num_prefix_tokens``; else the class, distillation and register token
    parameters the model holds (timm / torchvision ``cls_token`` / ``class_token``,
    transformers ``embeddings.cls_token``, ``class_embedding`` (CLIP),
    ``distillation_token`` (DeiT), ``register_tokens`` (DINOv2 with registers)); 0 for a model
    with a patch embedding and none of them. Stride: the patch embedding convolution's stride
    (timm ``patch_embed.proj``: 16 for ViT-B/16, 4 for PVT-v2's overlapping 7x7 embedding),
    else ``patch_size`` (torchvision ``VisionTransformer``, transformers ``config.patch_size``).

    Args:
        model (nn.Module, optional): the network.
    Returns:
        (int or None, (int, int) or None): prefix tokens, patch stride.
    Example::
        >>> model_token_facts(timm.create_model("vit_tiny_patch16_224"))
        (1, (16, 16))
    """
    if model is None:
        return None, None
    config = vision_config(model)
    stride = None
    embed = getattr(model, "patch_embed", None)
    proj = getattr(embed, "proj", None) if embed is not None else None
    if isinstance(proj, nn.Conv2d):
        stride = _pair(proj.stride)
    if stride is None and embed is not None:
        stride = _pair(getattr(embed, "patch_size", None))
    if stride is None and isinstance(getattr(model, "patch_size", None), (int, tuple, list)):
        stride = _pair(model.patch_size)  # torchvision VisionTransformer
    if stride is None and config is not None:
        strides = getattr(config, "strides", None)  # SegFormer-style overlapping embeddings
        stride = _pair(strides[0]) if isinstance(strides, (list, tuple)) and strides else _pair(
            getattr(config, "patch_size", None))
    prefix = getattr(model, "num_prefix_tokens", None)  # timm
    if isinstance(prefix, int):
        return prefix, stride
    count, found = 0, False
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _CLASS_NAMES + _DIST_NAMES:
            count, found = count + 1, True
        elif leaf in _REGISTER_NAMES:
            count, found = count + (int(param.shape[-2]) if param.dim() >= 2 else 1), True
    if not found and isinstance(getattr(config, "num_register_tokens", None), int):
        count += int(config.num_register_tokens)
    if found or stride is not None:
        return count, stride
    return None, None


def _grids(n: int, size: Tuple[int, int], stride: Optional[Tuple[int, int]]) -> List[Tuple[int, int]]:
    r"""The ``(h, w)`` grids with ``h * w == n`` for an input ``size``: ``(H / s, W / s)`` rounded
    down or up, ``s`` the model's patch stride times ``1, 2, 4, ... 64``, or any ``s``."""
    H, W = size
    if stride is not None:
        steps = [(stride[0] << k, stride[1] << k) for k in range(7)]
    else:
        steps = [(s, s) for s in range(1, max(H, W) + 1)]
    out = []
    for sh, sw in steps:
        for h, w in ((H // sh, W // sw), (-(-H // sh), -(-W // sw))):
            if h * w == n and h > 0 and (h, w) not in out:
                out.append((h, w))
    return out


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
        model (nn.Module, optional): read by :func:`model_token_facts`.
        prefix_tokens (int, optional), token_grid (tuple of int, optional): this layer's,
            given explicitly.
        name (str): the layer, for messages.
    Returns:
        (int, (int, int)): ``prefix`` and ``(h, w)`` with ``prefix + h * w == tokens``.
    Raises:
        TokenLayoutError: when they cannot be determined or do not add up.
    Example::
        >>> token_layout(196, (224, 224))      # 14 x 14 patches, no prefix
        (0, (14, 14))
        >>> token_layout(197, (224, 224), vit_b_16)      # its class token + 14 x 14 patches
        (1, (14, 14))
    """
    H, W = input_size
    m_prefix, stride = model_token_facts(model)
    grid = _pair(token_grid)
    hint = ("pass layout='NLC' with token_grid=(h, w) and prefix_tokens=n (the class / distillation / "
            "register tokens before the patches; a dict by layer name for several layers)")
    if prefix_tokens is not None:
        prefixes = [int(prefix_tokens)]
    else:
        prefixes = sorted({0, m_prefix or 0})  # a prefix is one the model declares, never a remainder
    if grid is not None:
        fits = [(p, grid) for p in prefixes if p + grid[0] * grid[1] == tokens]
    else:
        fits = [(p, g) for p in prefixes if tokens - p > 0 for g in _grids(tokens - p, (H, W), stride)]
    if len(fits) == 1:
        return int(fits[0][0]), (int(fits[0][1][0]), int(fits[0][1][1]))
    where = f"Layer {name!r} outputs {tokens} tokens for a {H}x{W} input"
    if fits:
        raise TokenLayoutError(
            f"{where}, which fits several layouts ({', '.join(f'{p} prefix + {g[0]}x{g[1]}' for p, g in fits[:4])}): "
            f"{hint}.")
    if m_prefix is None and stride is None:
        told = "the model declares neither prefix tokens nor a patch size"
    else:
        told = f"the model declares {m_prefix or 0} prefix tokens"
    if stride is not None:
        told += f" and a patch stride of {stride[0]}x{stride[1]}"
    given = f", token_grid={grid}" if grid is not None else ""
    raise TokenLayoutError(
        f"{where}{given} and no patch grid fits ({told}; grids are the input size over the patch "
        f"stride times a power of two): {hint}.")


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
