r"""Directions given by other tools: a linear classifier's class weights, Captum's TCAV CAVs."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..core.sources.torch import TorchSource

__all__ = ["classifier_weights", "tcav_directions", "pool_flat_weights"]


def classifier_weights(classifier: Any) -> Tensor:
    r"""The ``(classes, C)`` weight of a linear head: an ``nn.Linear``, the last ``nn.Linear`` of a
    module (a ``Sequential(Dropout, Linear)``, a whole model), or a weight tensor."""
    if isinstance(classifier, Tensor):
        w = classifier
    elif isinstance(classifier, nn.Linear):
        w = classifier.weight
    elif isinstance(classifier, nn.Module):
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{classifier.__class__.__name__} has no nn.Linear: pass the head or its weight.")
        w = linears[-1].weight
    else:
        raise TypeError(f"classifier must be an nn.Linear, an nn.Module or a (classes, C) tensor, "
                        f"got {type(classifier).__name__}.")
    w = w.detach().float().cpu()
    if w.dim() != 2:
        raise ValueError(f"a classifier's weight is (classes, C), got {tuple(w.shape)}.")
    return w


def pool_flat_weights(weights: Tensor, layout: str, raw_shape: Sequence[int]) -> Tensor:
    r"""``(K, D)`` weights over a flattened raw activation (``D = prod(raw_shape)``) summed over
    positions into ``(K, C)``: the channel axis is 0 for ``NCHW`` / ``NC``, last for ``NHWC`` and
    tokens ``NLC`` (every token, prefix tokens included)."""
    raw_shape = tuple(int(s) for s in raw_shape)
    if weights.shape[1] != int(torch.tensor(raw_shape).prod()):
        raise ValueError(f"{weights.shape[1]} weights for a raw activation of shape {raw_shape}.")
    w = weights.reshape(weights.shape[0], *raw_shape)
    if layout in ("NCHW", "NC"):
        return w.flatten(2).sum(2) if w.dim() > 2 else w
    return w.reshape(weights.shape[0], -1, raw_shape[-1]).sum(1)


def tcav_directions(model: nn.Module, layer: str, concepts: Sequence[Any], random_concept: Any, *,
                    save_path: Optional[str] = None, **tcav_kw: Any) -> Tuple[Tensor, List[str]]:
    r"""One direction per concept from Captum's TCAV (each concept against ``random_concept``).

    Returns:
        (Tensor, list of str): ``(K, C)`` directions (CAV weights summed over positions, see
        :func:`pool_flat_weights`) and the concepts' names.
    """
    from captum.concept import TCAV

    if not concepts:
        raise ValueError("from_tcav needs at least one concept.")
    ids = [c.id for c in concepts]
    if random_concept.id in ids or len(set(ids)) != len(ids):
        raise ValueError(f"concept ids must be distinct (got {ids} and random {random_concept.id}).")
    seen: List[Tensor] = []  # one input, to read the layer's raw layout (iterators are not re-read)

    def keep_input(_: nn.Module, args: Any) -> None:
        if not seen and args and isinstance(args[0], Tensor):
            seen.append(args[0][:1].detach())

    tmp = save_path or tempfile.mkdtemp(prefix="captum-topk-tcav-")
    handle = model.register_forward_pre_hook(keep_input)
    try:
        tcav = TCAV(model, layers=[layer], save_path=tmp, **tcav_kw)
        cavs = tcav.compute_cavs([[c, random_concept] for c in concepts], force_train=True)
        rows = []
        for c in concepts:
            key = "-".join(str(x) for x in (c.id, random_concept.id))
            cav = cavs[key][layer]
            weights = cav.stats["weights"].detach().float().cpu()
            classes = [int(x) for x in cav.stats["classes"]]
            rows.append(weights[classes.index(c.id)])
    finally:
        handle.remove()
        if save_path is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not seen:
        raise ValueError("the concepts' data_iter gave no input tensor.")
    source = TorchSource(model, layer, progress=False)
    info = source.layer_infos(seen[0])[source.names[0]]
    return pool_flat_weights(torch.stack(rows), info.layout, info.raw_shape), [str(c.name) for c in concepts]
