r"""Facts about an ``nn.Module`` that several layers need: its device and dtype, its first
convolution, the module behind a forward function, replacing a submodule."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ["root_module", "device_dtype", "first_conv", "set_module", "in_training"]


def in_training(module: Optional[nn.Module]) -> bool:
    r"""Whether a module computes in training mode: any of its leaf modules (those that hold
    dropout, batch statistics) is in training mode. A wrapper left in training mode around a
    model in eval mode computes in eval mode: False."""
    if module is None:
        return False
    return any(m.training for m in module.modules() if next(m.children(), None) is None)


def root_module(forward_func: Callable[..., Any]) -> Optional[nn.Module]:
    r"""The ``nn.Module`` a forward function belongs to: the function itself when it is a
    module, the owner of a bound method (``model.forward``), else None (a plain function)."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def device_dtype(module: Optional[nn.Module]) -> Tuple[Optional[torch.device], torch.dtype]:
    r"""Device and floating dtype of a module's first floating parameter or buffer.

    Returns:
        (torch.device or None, torch.dtype): ``(None, float32)`` for a module without
        parameters or buffers (or ``None``); the device of a non-floating tensor with float32.
    """
    if module is None:
        return None, torch.float32
    tensors = [*module.parameters(), *module.buffers()]
    for t in tensors:
        if t.is_floating_point():
            return t.device, t.dtype
    return (tensors[0].device if tensors else None), torch.float32


def first_conv(model: Optional[nn.Module]) -> Optional[Tuple[str, nn.Conv2d]]:
    r"""``(dotted name, module)`` of the first ``nn.Conv2d`` in ``model.modules()`` order, or None."""
    if model is None:
        return None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    r"""Replace the submodule at dotted ``name`` of ``root`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
