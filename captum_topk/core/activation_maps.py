r"""A channel's whole activation map on the images of its records.

A record says where a channel fires most in an image; the map says where else it fires. For
token layers (ViT) the map on the patch grid is what makes a channel readable: a token's exact
receptive field is the whole image, but its map shows which patches drive the channel.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..utils.modules import root_module
from .records import ImageSource, record_image
from .sources.base import ActivationSource
from .sources.concepts import ConceptSource, find_concepts
from .sources.layouts import base_layer
from .sources.torch import TorchSource

__all__ = ["activation_maps", "maps_source", "recorded_layout"]


def recorded_layout(result: Any, layer: str) -> Dict[str, Any]:
    r"""The :class:`~.sources.torch.TorchSource` options that read ``layer`` as it was mined: its
    recorded layout and, for a token layer, its patch grid and prefix count (a grid or a prefix
    given to the miner is not detected again).

    Args:
        result (TopKResult): a mined result.
        layer (str): a mined layer (``"<layer>[prefix]"`` gives its base layer's options).
    Returns:
        dict: ``layout``, ``token_grid``, ``prefix_tokens``.
    """
    base = base_layer(layer)
    meta = result.layer_info.get(base, {})
    layout = meta.get("layout", "auto")
    if layout != "NLC":
        return {"layout": layout, "token_grid": None, "prefix_tokens": None}
    grid = result.states[base].out_size if base in result.states else None
    return {"layout": layout, "token_grid": tuple(grid) if grid else None, "prefix_tokens": meta.get("prefix_tokens")}


def maps_source(result: Any, layer: str, model: Any, concepts: Optional[Sequence[Any]] = None,
                layer_module: Optional[nn.Module] = None) -> ActivationSource:
    r"""The source that computes ``layer``'s maps: ``model`` itself when it is a source, a miner's
    source, else a :class:`~.sources.torch.TorchSource` on the layer's recorded layout (wrapped in
    a :class:`~.sources.concepts.ConceptSource` with the matching ``concepts`` for a concept layer);
    ``layer_module`` names the layer's module when ``model`` is a plain function."""
    if isinstance(model, ActivationSource):
        return model
    source = getattr(model, "source", None)  # a miner
    if isinstance(source, ActivationSource):
        return source
    if model is None or not callable(model):
        raise ValueError("activation_maps needs the model (model=...), a miner or an activation source that ran it "
                         "(an OnnxSource for a model mined through ONNX Runtime).")
    concept = (result.layer_info.get(layer) or {}).get("concept")
    if concept:  # a concept layer: its base layer's activations, encoded
        found = find_concepts(concepts, layer, concept)
        return ConceptSource(maps_source(result, concept["layer"], model, layer_module=layer_module), [found])
    base = base_layer(layer)
    if layer_module is None and root_module(model) is None:
        raise ValueError(f"model is a plain function, whose layers have no names: pass layer_module= (the module "
                         f"mined as {base!r}), or the miner that mined it.")
    return TorchSource(model, {base: layer_module} if layer_module is not None else [base], progress=False,
                       **recorded_layout(result, base))


@torch.no_grad()
def activation_maps(
    result: Any,
    images_source: ImageSource,
    layer: str,
    channel: int,
    model: Any = None,
    which: str = "top",
    n: Optional[int] = None,
    transform: Optional[Any] = None,
    concepts: Optional[Sequence[Any]] = None,
    layer_module: Optional[nn.Module] = None,
) -> Tensor:
    r"""The raw activation maps of one channel on the images of its records.

    Args:
        result (TopKResult): a mined result.
        images_source: the images as the model saw them (as for :meth:`TopKResult.patches`).
        layer (str): a mined layer (``"<layer>[prefix]"`` for a token layer's prefix tokens).
        channel (int): channel index.
        model (nn.Module, callable, ActivationSource or miner): what runs the images: a model
            or a forward function is wrapped in a :class:`~.sources.torch.TorchSource` with the
            layer's recorded layout; an activation source (an
            :class:`~captum_topk.onnx.source.OnnxSource` for ONNX Runtime) or a miner is used
            as it is.
        which (str): ``"top"`` or ``"bottom"``.
        n (int, optional): only the ``n`` strongest records.
        transform (callable, optional): applied to PIL items of ``images_source``.
        concepts (list, optional): for a concept layer (``"<layer>:<name>"``) with ``model`` a
            model: the concepts it was mined with (checked against the recorded digest); a miner
            or its source brings its own.
        layer_module (nn.Module, optional): the layer's module, when ``model`` is a plain
            function (which has no module tree to find ``layer`` in).
    Returns:
        Tensor: ``(n, h, w)`` float32 on the layer's grid: ``maps[i, y, x]`` is the channel's
        activation at ``(y, x)`` in record ``i``'s image, so ``maps[i, r.y, r.x] == r.value``
        (and it is the map's maximum for top records mined with ``distinct_images``).
        ``(n, 1, 1)`` for a vector layer.
    Example::
        >>> maps = result.activation_maps(dataset, "encoder.layers.encoder_layer_11", 7, model=vit)
        >>> maps.shape                       # (9, 14, 14): the patch grid of a ViT-B/16
    """
    records = result.records(layer, channel, which)[:n]
    if not records:
        return torch.empty(0)
    images = torch.stack([record_image(images_source, r, transform) for r in records])
    acts = maps_source(result, layer, model, concepts, layer_module)(images)[layer]
    maps = acts[:, channel].float().cpu()
    return maps if maps.dim() == 3 else maps.reshape(-1, 1, 1)
