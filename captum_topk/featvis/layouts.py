r"""What feature visualization needs to know about a model before it optimises: the layer's
layout, found by the miner's own detection (:class:`~captum_topk.core.sources.torch.TorchSource`:
a raw output mapped to the ``(N, C, h, w)`` / ``(N, C)`` the miner ranks, channels-last maps
permuted, token patches on their grid, prefix tokens as a column), and the input size the
model needs (a fixed size from its description, a multiple of its patch size)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..capture.hooks import LayerSpec, resolve_layers
from ..capture.tokens import vision_config
from ..core.sources.layouts import PREFIX_SUFFIX, base_layer, canonical
from ..core.sources.torch import layer_infos

__all__ = ["layer_layout", "fixed_input_size", "declared_input_size", "size_multiple", "model_input_size"]


def _side(size: Any) -> Optional[Tuple[int, int]]:
    r"""``(h, w)`` of an int, an ``(h, w)`` pair or a ``(C, h, w)`` triple; None otherwise."""
    if isinstance(size, bool):
        return None
    if isinstance(size, int):
        return (size, size) if size > 0 else None
    if isinstance(size, (tuple, list)) and len(size) in (2, 3) and all(isinstance(v, int) for v in size):
        h, w = size[-2:]
        return (int(h), int(w)) if h > 0 and w > 0 else None
    return None


def fixed_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    r"""The one input size a model accepts, when its description says so: torchvision's
    ``VisionTransformer.image_size``; timm's ``patch_embed.img_size`` when the patch embedding
    is strict (``strict_img_size``) and the model not ``dynamic_img_size`` (ViT, DeiT, Swin);
    transformers' ``config.image_size`` (a vision tower's ``vision_config.image_size``). None
    for models that take other sizes (CNNs, dynamic-size ViTs).

    Returns:
        (int, int) or None: ``(H, W)``.
    """
    if isinstance(getattr(model, "image_size", None), int) and hasattr(model, "patch_size"):
        return _side(model.image_size)  # torchvision VisionTransformer
    embed = getattr(model, "patch_embed", None)
    if (embed is not None and getattr(embed, "strict_img_size", False)
            and not getattr(model, "dynamic_img_size", False) and not getattr(embed, "dynamic_img_pad", False)):
        return _side(getattr(embed, "img_size", None))
    config = vision_config(model)
    if config is not None and not isinstance(config, dict):
        return _side(getattr(config, "image_size", None))
    return None


def declared_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    r"""The input size a model was built for, where it says so without requiring it: timm's
    ``img_size`` attribute (MaxViT) or ``patch_embed.img_size``, else its
    ``pretrained_cfg["input_size"]``; the fallback when a model refuses the size asked for
    (windows that must divide the feature maps, attention biases tied to one resolution)."""
    fixed = fixed_input_size(model)
    if fixed is not None:
        return fixed
    for size in (getattr(model, "img_size", None), getattr(getattr(model, "patch_embed", None), "img_size", None),
                 (getattr(model, "pretrained_cfg", None) or {}).get("input_size")):
        if _side(size) is not None:
            return _side(size)
    return None


def size_multiple(model: nn.Module) -> int:
    r"""What a flexible-size model's input sides must be a multiple of, when its description
    says so: the patch size of a timm ``dynamic_img_size`` ViT without ``dynamic_img_pad``
    (e.g. DINOv2 with registers); 1 otherwise."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or not getattr(model, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad", False):
        return 1
    patch = _side(getattr(embed, "patch_size", None))
    return max(patch) if patch is not None else 1


def model_input_size(model: nn.Module, size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    r"""The size at which the model sees an image of ``size``: its fixed size
    (:func:`fixed_input_size`) when it has one, else ``size`` rounded down to the model's
    :func:`size_multiple`.

    Args:
        model (nn.Module): the network.
        size (int or (int, int)): side, or ``(H, W)``, of the image.
    Returns:
        (int, int): ``(H, W)`` of the model input.
    Example::
        >>> model_input_size(timm.create_model("vit_tiny_patch16_224"), 128)
        (224, 224)
    """
    fixed = fixed_input_size(model)
    if fixed is not None:
        return fixed
    m = size_multiple(model)
    h, w = (size, size) if isinstance(size, int) else size
    return max(m, h - h % m), max(m, w - w % m)


def layer_layout(
    model: nn.Module,
    layer: LayerSpec,
    size: Union[int, Tuple[int, int]],
    layout: str = "auto",
    token_grid: Optional[Tuple[int, int]] = None,
    prefix_tokens: Optional[int] = None,
) -> Tuple[nn.Module, Callable[[Tensor], Tensor], str]:
    r"""The module to hook, the map from its raw output to the mined layout, and a cache key.

    Args:
        model (nn.Module): the network.
        layer (str or nn.Module): a mined layer name (``"<layer>[prefix]"`` for a token layer's
            prefix tokens) or module.
        size (int or (int, int)): the model input's side, or ``(H, W)``.
        layout, token_grid, prefix_tokens: as in :class:`~captum_topk.LayerTopKPatches`.
    Returns:
        (nn.Module, callable, str): the module whose output is hooked, ``raw -> (N, C, h, w) /
        (N, C)``, and a string naming the layout for cache keys.
    Example::
        >>> module, to_mined, key = layer_layout(vit, "encoder.layers.encoder_layer_5", 224)
        >>> key
        'NLC:1:7x7'
    """
    name = layer if isinstance(layer, str) else resolve_layers(model, layer)[0][0]
    base = base_layer(name)
    with torch.no_grad():
        infos = layer_infos(model, [base], size, layout=layout, token_grid=token_grid, prefix_tokens=prefix_tokens)
    info, head = infos[base], infos.get(base + PREFIX_SUFFIX)
    if name not in infos:
        raise ValueError(f"Layer {base!r} has no prefix tokens: {name!r} does not exist.")

    def to_mined(raw: Tensor) -> Tensor:
        return canonical(raw, info, head)[name]

    key = f"{info.layout}:{info.prefix_tokens}:{info.grid[0]}x{info.grid[1]}"
    return resolve_layers(model, base)[0][1], to_mined, key
