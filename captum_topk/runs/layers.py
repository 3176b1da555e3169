r"""``captum-topk layers``: every minable layer of a model with its output shape, stride and receptive field.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional
import torch
from torch import Tensor
from ..capture.layouts import ChannelsLastError
from ..capture.hooks import run_capture
from ..models.registry import load_model
from ..receptive_field.probe import receptive_fields
from ..models.registry import DEFAULT_MODEL
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
