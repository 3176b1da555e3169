r"""The miner's layouts for feature visualization: a layer's raw output mapped to the same
``(N, C, h, w)`` / ``(N, C)`` the miner ranks (channels-last maps permuted, token patches on
their grid, prefix tokens as a column), found the way the miner finds them
(:class:`~captum_topk.core.sources.torch.TorchSource`) at the visualization's size."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from ..capture.hooks import LayerSpec, resolve_layers
from ..core.sources.layouts import PREFIX_SUFFIX, base_layer, canonical
from ..core.sources.torch import TorchSource

__all__ = ["layer_layout", "fixed_input_size"]


def fixed_input_size(model: nn.Module) -> Optional[int]:
    r"""The one input side a model accepts, when it says so: torchvision's
    ``VisionTransformer.image_size``, timm's ``patch_embed.img_size`` (with ``strict_img_size``);
    None for models that take any size (CNNs)."""
    size = getattr(model, "image_size", None)
    embed = getattr(model, "patch_embed", None)
    if size is None and embed is not None and getattr(embed, "strict_img_size", False):
        size = getattr(embed, "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return int(size) if isinstance(size, int) else None


def layer_layout(
    model: nn.Module,
    layer: LayerSpec,
    size: int,
    layout: str = "auto",
    token_grid: Optional[Tuple[int, int]] = None,
    prefix_tokens: Optional[int] = None,
) -> Tuple[nn.Module, Callable[[Tensor], Tensor], str]:
    r"""The module to hook, the map from its raw output to the mined layout, and a cache key.

    Args:
        model (nn.Module): the network.
        layer (str or nn.Module): a mined layer name (``"<layer>[prefix]"`` for a token layer's
            prefix tokens) or module.
        size (int): side of the visualized images.
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
    source = TorchSource(model, [base], layout=layout, token_grid=token_grid, prefix_tokens=prefix_tokens,
                         progress=False)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        infos = source.layer_infos(torch.zeros(1, 3, size, size, device=device))
    info, head = infos[base], infos.get(base + PREFIX_SUFFIX)
    if name not in infos:
        raise ValueError(f"Layer {base!r} has no prefix tokens: {name!r} does not exist.")

    def to_mined(raw: Tensor) -> Tensor:
        return canonical(raw, info, head)[name]

    key = f"{info.layout}:{info.prefix_tokens}:{info.grid[0]}x{info.grid[1]}"
    return source.modules[0], to_mined, key
