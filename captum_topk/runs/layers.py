r"""Which layers to mine: every minable layer of a model with its output shape, stride and
receptive field (``captum-topk layers``), and a sensible default choice for any model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
import torch
from torch import Tensor, nn
from ..capture.hooks import run_capture
from ..models.registry import list_models, load_model
from ..capture.tokens import TokenLayoutError
from ..core.sources.torch import TorchSource
from ..models.registry import DEFAULT_LAYERS, DEFAULT_MODEL
from ..utils.files import PathLike



def _listed(named: Sequence[Tuple[str, nn.Module]], all_modules: bool) -> List[str]:
    r"""The modules a listing shows: every one with ``all_modules``, else blocks: at most two
    dots deep, or the items of a container at most two dots deep (ViT encoder layers, stages)."""
    if all_modules:
        return [n for n, _ in named]
    modules = dict(named)
    out = []
    for n, _ in named:
        parent = n.rpartition(".")[0]
        if n.count(".") <= 1 or (n.count(".") == 2 and isinstance(modules.get(parent), (nn.Sequential, nn.ModuleList))):
            out.append(n)
    return out


def describe_layers(model: str = DEFAULT_MODEL, checkpoint: Optional[PathLike] = None,
                    input_size: Optional[int] = None, all_modules: bool = False) -> List[Dict[str, Any]]:
    r"""Every minable layer with its output shape, layout, stride and box size.

    Layouts are found as the miner finds them (:class:`~captum_topk.core.sources.torch.TorchSource`):
    channels-first and channels-last maps get their exact receptive field, token outputs their
    patch grid and footprint, vectors the whole image.

    Args:
        model (str): built-in, torchvision architecture or checkpoint path.
        checkpoint (str, optional): weights for ``model``.
        input_size (int, optional): input side in pixels (default: the model's).
        all_modules (bool): every module, not only blocks.
    Returns:
        list of dict: keys ``layer``, ``type``, ``output`` (raw shape without the batch),
        ``layout``, ``stride``, ``rf`` (box size, or why the layer cannot be mined).
    Example::
        >>> rows = describe_layers("mobilenet_v2-imagenet")
        >>> next(r for r in rows if r["layer"] == "features.7")["rf"]
        '75x75'
    """
    # Layouts, shapes and fields depend on the structure only: an architecture name without a
    # checkpoint is listed with random weights (nothing can be downloaded here).
    structure_only = checkpoint is None and model not in list_models(available_only=False) and not Path(model).is_file()
    net, info = load_model(model, checkpoint=str(checkpoint) if checkpoint else None, random_init=structure_only)
    net.eval()
    size = (input_size, input_size) if input_size else tuple(info.input_size)
    named = [(n, m) for n, m in net.named_modules() if n]
    listed = set(_listed(named, all_modules))
    named = [(n, m) for n, m in named if n in listed]
    images = torch.zeros(1, 3, *size)
    try:
        with torch.no_grad():
            outs = run_capture(net, [m for _, m in named], images, stop_early=False, raw=True)
    except (AssertionError, RuntimeError) as exc:
        raise ValueError(f"{model} does not run on a {size[0]}x{size[1]} input ({str(exc).strip()}); "
                         f"use its own input size (default {tuple(info.input_size)}).") from exc
    shapes = {n: (tuple(o.shape[1:]) if isinstance(o, Tensor) else None) for (n, _), o in zip(named, outs)}
    infos: Dict[str, Any] = {}
    problems: Dict[str, str] = {}
    maps = {n: m for n, m in named if shapes[n] is not None and len(shapes[n]) in (1, 3)}
    if maps:
        infos.update(TorchSource(net, maps).layer_infos(images))
    for n, m in named:
        if shapes[n] is not None and len(shapes[n]) == 2:
            try:
                infos.update(TorchSource(net, {n: m}).layer_infos(images))
            except TokenLayoutError as exc:
                problems[n] = "tokens: grid unknown (pass --token-grid)" if "grid" in str(exc) else str(exc)
            except ValueError as exc:  # windowed attention: (N * k, L, C), not one image's tokens
                if "batch reshaped" not in str(exc):
                    raise
                problems[n] = "windows: batch reshaped (mine the block)"
    rows = []
    for n, m in named:
        s = shapes[n]
        li = infos.get(n)
        if li is None and not all_modules:
            continue
        rf = li.field if li is not None else None
        if li is None:
            what = problems.get(n, "-" if s is not None else "(not one tensor)")
        elif li.box_kind == "token":
            what = f"token footprint {rf.size[0]}x{rf.size[1]} ({li.grid[0]}x{li.grid[1]} grid, {li.prefix_tokens} prefix)"
        elif li.box_kind == "image":
            what = "whole image"
        else:
            what = f"{rf.size[0]}x{rf.size[1]}" + (" (clipped: >= image)" if tuple(rf.size) == tuple(size) else "")
        rows.append({
            "layer": n,
            "type": m.__class__.__name__,
            "output": "x".join(map(str, s)) if s is not None else "(not one tensor)",
            "layout": li.layout if li is not None else "-",
            "stride": f"{rf.stride[0]}x{rf.stride[1]}" if rf is not None and li.box_kind != "image" else "-",
            "rf": what,
        })
    return rows


# Last name components that are not feature blocks worth mining by default.
_NOT_A_BLOCK = re.compile(
    r"(drop\w*|\w*pool\w*|fc\d*|classifier|heads?|\w*norm\d*|ln\w*|bn\d*|act\w*|relu\d*|gelu|silu|"
    r"sigmoid|flatten|identity|softmax|aux\w*|logits)", re.IGNORECASE)


#: Module types that are never a default layer (their output is a block's, re-scaled or cut).
_NOT_A_BLOCK_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                      nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Linear,
                      nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                      nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_ACTIVATIONS = "torch.nn.modules.activation"


def _is_a_block(module: Optional[nn.Module]) -> bool:
    return module is None or not (isinstance(module, _NOT_A_BLOCK_TYPES)
                                  or type(module).__module__ == _ACTIVATIONS)


def _spread(blocks: List[str], n: int) -> List[str]:
    r"""An early, a middle and a late one of ``blocks`` (never the very last when avoidable: too
    abstract to crop, too coarse a grid), ``min(n, len(blocks))`` distinct ones in order."""
    picks = [blocks[round(i * (len(blocks) - 1) * 0.6 / max(1, n - 1)) + len(blocks) // 8] for i in range(n)]
    picks = list(dict.fromkeys(picks))
    for extra in blocks:  # rounding merged two picks: top up with the unused blocks, in order
        if len(picks) >= min(n, len(blocks)):
            break
        if extra not in picks:
            picks.append(extra)
    return [b for b in blocks if b in picks]


def _children(names: Sequence[str]) -> Dict[str, List[str]]:
    r"""Parent name -> its direct children that look like feature blocks, in forward order."""
    present = set(names)
    out: Dict[str, List[str]] = {}
    for name in names:
        parent, _, _ = name.rpartition(".")
        inside_a_head = any(_NOT_A_BLOCK.fullmatch(part) for part in name.split("."))
        if (parent == "" or parent in present) and not inside_a_head:
            out.setdefault(parent, []).append(name)
    return out


def _numbered(names: Sequence[str], suffix: str) -> List[str]:
    r"""The names that end in ``suffix`` (a regex over whole name components, e.g.
    ``features\.\d+``), under the shallowest parent that has any: a wrapped model's
    ``backbone.features.3`` as well as ``features.3``."""
    groups: Dict[str, List[str]] = {}
    for x in names:
        m = re.fullmatch(rf"(?:(.*)\.)?(?:{suffix})", x)
        if m:
            groups.setdefault(m.group(1) or "", []).append(x)
    return min(groups.values(), key=lambda g: g[0].count(".")) if groups else []


def suggest_layers(names: Sequence[str], n: int = 3, model: Optional[nn.Module] = None) -> List[str]:
    r"""A sensible default choice of ``n`` layers among a model's layer names.

    :data:`~captum_topk.models.registry.DEFAULT_LAYERS` for MobileNetV2 (``features.0-18``),
    else ResNet-style stages (``layer1``... under one parent), else an early, a middle and a
    late block of ``features`` (VGG, EfficientNet, ConvNeXt, Swin, SqueezeNet...), else of the
    shallowest container with at least ``max(n, 3)`` blocks (ViT's ``encoder.layers``, RegNet's
    ``trunk_output``, MaxViT's ``blocks``, GoogLeNet's top level; dropout, pooling, norm,
    activation and head modules left out), else the first names (ONNX graph outputs come
    first: names with ``/`` are tensors, not modules). With ``model``, normalisation,
    activation, dropout, pooling, ``Linear`` and ``Identity`` modules are never chosen.

    Args:
        names (sequence of str): candidate layer names (module names), in forward order.
        n (int): how many.
        model (nn.Module, optional): the model the names belong to (module types).
    Returns:
        list of str
    Example::
        >>> suggest_layers([n for n, _ in torchvision.models.resnet18().named_modules() if n])
        ['layer1', 'layer2', 'layer3']
        >>> suggest_layers([n for n, _ in torchvision.models.vit_b_16().named_modules() if n])
        ['encoder.layers.encoder_layer_1', 'encoder.layers.encoder_layer_4', 'encoder.layers.encoder_layer_8']
    """
    names = list(names)
    if model is not None:
        modules = dict(model.named_modules())
        names = [x for x in names if _is_a_block(modules.get(x))]
    if (n == len(DEFAULT_LAYERS) and all(d in names for d in DEFAULT_LAYERS)
            and "features.18" in names and "features.19" not in names):
        return list(DEFAULT_LAYERS)
    modules_only = [x for x in names if "/" not in x]  # ONNX tensor names are not module paths
    stages = _numbered(modules_only, r"layer\d+")
    if stages:
        return stages[:n]
    blocks = _numbered(modules_only, r"features\.\d+")
    if len(blocks) >= n:
        return _spread(blocks, n)
    containers = [(parent.count(".") + bool(parent), -len(kids), kids)
                  for parent, kids in _children(modules_only).items() if len(kids) >= max(n, 3)]
    if containers:
        return _spread(min(containers, key=lambda c: c[:2])[2], n)
    return names[:n]
