r"""Facts about an ``nn.Module`` that several layers need: its device and dtype, its first
convolution, the module behind a forward function, replacing a submodule, eval mode for the
length of a block (:func:`eval_mode`)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

__all__ = ["root_module", "device_dtype", "first_conv", "set_module", "eval_mode", "in_training"]


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


@contextmanager
def eval_mode(*modules: nn.Module, frozen: bool = False, catch_calls: bool = False) -> Iterator[None]:
    r"""Eval mode inside the block; on exit, also after an exception, every submodule gets back
    its own ``training`` flag (a model whose submodules were in mixed modes, e.g. a frozen
    BatchNorm in eval inside a training model, comes back exactly as it was).

    Args:
        *modules (nn.Module): the modules put in eval mode, with all their submodules.
        frozen (bool): also switch off ``requires_grad`` of their parameters inside the
            block (each parameter's flag restored on exit). Default False.
        catch_calls (bool): also put in eval mode every module that runs in this thread
            inside the block (caught by a global forward pre-hook: a plain forward function may
            call modules nobody passed in). Default False.
    Example::
        >>> with eval_mode(model), torch.no_grad():
        ...     logits = model(images)
    """
    flags: Dict[int, Tuple[nn.Module, bool]] = {}
    grads: Dict[int, Tuple[nn.Parameter, bool]] = {}

    def to_eval(module: nn.Module) -> None:
        for m in module.modules():
            if id(m) not in flags:
                flags[id(m)] = (m, m.training)
                m.training = False
        if frozen:
            for p in module.parameters():
                if id(p) not in grads:
                    grads[id(p)] = (p, p.requires_grad)
                    p.requires_grad_(False)

    handle = None
    thread = threading.get_ident()
    try:
        for module in modules:
            to_eval(module)
        if catch_calls:

            def pre_hook(module: nn.Module, _args: Any) -> None:
                if threading.get_ident() == thread and id(module) not in flags:
                    to_eval(module)

            handle = register_module_forward_pre_hook(pre_hook)
        yield
    finally:
        if handle is not None:
            handle.remove()
        for m, flag in flags.values():
            m.training = flag
        for p, flag in grads.values():
            p.requires_grad_(flag)
