r"""Which layers to mine: every minable layer of a model with its output shape, stride and
receptive field (``captum-topk layers``), and a sensible default choice for any model."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence
import torch
from torch import Tensor
from ..capture.layouts import ChannelsLastError
from ..capture.hooks import run_capture
from ..models.registry import load_model
from ..receptive_field.probe import receptive_fields
from ..models.registry import DEFAULT_LAYERS, DEFAULT_MODEL
from ..utils.files import PathLike



def describe_layers(model: str = DEFAULT_MODEL, checkpoint: Optional[PathLike] = None,
                    input_size: Optional[int] = None, all_modules: bool = False) -> List[Dict[str, Any]]:
    r"""Every minable layer with its output shape, stride and receptive-field size.

    Returns:
        list of dict: keys ``layer``, ``type``, ``output`` (C x H x W), ``stride``, ``rf``.
    """
    net, info = load_model(model, checkpoint=str(checkpoint) if checkpoint else None)
    size = (input_size, input_size) if input_size else tuple(info.input_size)
    named = [(n, m) for n, m in net.named_modules() if n]
    with torch.no_grad():
        outs = run_capture(net, [m for _, m in named], torch.zeros(1, 3, *size),
                           stop_early=False, raw=True)
    shapes = {n: (tuple(o.shape[1:]) if isinstance(o, Tensor) else None) for (n, _), o in zip(named, outs)}
    spatial = [n for n, s in shapes.items() if s is not None and len(s) == 3]
    channels_last: List[str] = []
    try:
        rfs = receptive_fields(net, spatial, size) if spatial else {}
    except ChannelsLastError as exc:  # list them as such; measure the others
        channels_last = exc.layers
        spatial = [n for n in spatial if n not in channels_last]
        rfs = receptive_fields(net, spatial, size) if spatial else {}
    rows = []
    for n, m in named:
        s = shapes[n]
        minable = s is not None and len(s) in (1, 3) and n not in channels_last
        if not all_modules and (not minable or n.count(".") > 1):
            continue  # default: blocks (depth <= 2); --all lists every module
        rf = rfs.get(n)
        rows.append({
            "layer": n,
            "type": m.__class__.__name__,
            "output": "x".join(map(str, s)) if s is not None else "(not one tensor)",
            "stride": f"{rf.stride[0]}x{rf.stride[1]}" if rf else "-",
            "rf": (f"{rf.size[0]}x{rf.size[1]}" + (" (clipped: >= image)" if tuple(rf.size) == tuple(size) else "")
                   if rf else ("whole image" if s and len(s) == 1
                               else "channels-last: not minable" if n in channels_last else "-")),
        })
    return rows


def suggest_layers(names: Sequence[str], n: int = 3) -> List[str]:
    r"""A sensible default choice of ``n`` layers among a model's layer names.

    :data:`~captum_topk.models.registry.DEFAULT_LAYERS` when all present (MobileNetV2), else
    ResNet-style stages (``layer1``...), else an early, a middle and a late block of
    ``features`` (VGG, EfficientNet, ConvNeXt, SqueezeNet...), else the first names (ONNX
    graph outputs come first).

    Args:
        names (sequence of str): candidate layer names, in forward order.
        n (int): how many.
    Returns:
        list of str
    Example::
        >>> suggest_layers([n for n, _ in torchvision.models.resnet18().named_modules() if n])
        ['layer1', 'layer2', 'layer3']
    """
    names = list(names)
    if all(d in names for d in DEFAULT_LAYERS):
        return list(DEFAULT_LAYERS)
    stages = [x for x in names if re.fullmatch(r"layer\d+", x)]
    if stages:
        return stages[:n]
    blocks = [x for x in names if re.fullmatch(r"features\.\d+", x)]
    if len(blocks) >= n:
        picks = [blocks[round(i * (len(blocks) - 1) * 0.6 / max(1, n - 1)) + len(blocks) // 8] for i in range(n)]
        return list(dict.fromkeys(picks))
    return names[:n]
