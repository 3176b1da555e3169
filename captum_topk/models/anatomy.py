r"""Model anatomy: the blocks of a network in forward order, its final classifier, replacing a submodule.
"""

from __future__ import annotations

import math
from typing import List, Tuple
import torch
from torch import nn



def model_blocks(model: nn.Module) -> List[str]:
    r"""Dotted names of the model's blocks, in forward order (what ``unfreeze`` counts).

    Returns:
        list of str: ``features.0 ... features.18`` for MobileNetV2; ``conv1, bn1, relu,
        maxpool, layer1 ... layer4`` for a ResNet.

    Raises:
        ValueError: when no block structure is recognised.
    """
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats) > 0:
        return [f"features.{n}" for n, _ in feats.named_children()]
    children = list(model.named_children())
    has_conv = [any(isinstance(m, nn.Conv2d) for m in c.modules()) for _, c in children]
    if any(has_conv):
        last = max(i for i, h in enumerate(has_conv) if h)
        return [n for n, _ in children[: last + 1]]
    raise ValueError(
        f"Cannot find the blocks of {type(model).__name__}: expected a `features` "
        "nn.Sequential or top-level convolutional children. Use unfreeze='all'."
    )


def final_linear(model: nn.Module) -> Tuple[str, nn.Linear]:
    r"""The classifier: the last ``nn.Linear`` in module order.

    Returns:
        (str, nn.Linear): its dotted name (``"classifier.1"`` for MobileNetV2) and module.

    Raises:
        ValueError: when the model has no ``nn.Linear`` (e.g. SqueezeNet's 1x1-conv head).
    """
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace.")
    return last  # type: ignore[return-value]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def replace_head(model: nn.Module, num_classes: int, seed: int = 0) -> str:
    r"""Replace the final classifier by a new one with ``num_classes`` outputs, in place.

    The new layer keeps the old one's name, so that a checkpoint's ``state_dict`` keys stay
    those of the architecture and :func:`captum_topk.models.load_model` reads the class
    count from the shape of its weight.

    Returns:
        str: the dotted name of the replaced layer.
    """
    name, old = final_linear(model)
    gen = torch.Generator().manual_seed(seed)
    new = nn.Linear(old.in_features, num_classes, bias=True)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(old.in_features)
        new.weight.uniform_(-bound, bound, generator=gen)
        if new.bias is not None:
            new.bias.zero_()
    _set_module(model, name, new.to(old.weight.device))
    return name
