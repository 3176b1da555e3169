r"""Layer resolution and hook-based capture of intermediate activations.

Shared by the miner, the receptive-field probe and the Captum-style ``attribute``.
Every hook registered here is removed in a ``finally`` block, including when the
forward raises, and the forward is cut short once the deepest requested layer ran.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..utils.modules import root_module

LayerSpec = Union[str, nn.Module]
LayersSpec = Union[LayerSpec, Sequence[LayerSpec], Mapping[str, nn.Module]]


class _StopForward(Exception):
    """Raised from a forward hook once every requested layer has produced its output."""


def resolve_layers(forward_func: Callable, layer: LayersSpec) -> List[Tuple[str, nn.Module]]:
    r"""Turn one or several layer specs into ``(name, module)`` pairs.

    Names: a layer given by dotted name keeps it; a module is named by its dotted name in
    ``forward_func``'s module tree. A ``{name: module}`` mapping names modules explicitly (the
    way to name the layers of a plain forward function, which has no module tree). A module
    given to a plain forward function without a name is called ``"<class>_<position>"``
    (``conv2d_0``: the lower-cased class name and its position in the list); records and
    results use that name.

    Args:
        forward_func (Callable): the model (or a bound method of it) whose submodules are named,
            or any forward function.
        layer (str, nn.Module, list of them, or dict of str to nn.Module): a dotted name from
            ``model.named_modules()``, the module object itself, several of them, or modules
            under names of your choosing.

    Returns:
        list of (str, nn.Module): in the order given, duplicates removed.

    Raises:
        ValueError: for an unknown name, listing the closest valid names.
        TypeError: for a spec that is neither a name nor a module.

    Example::
        >>> resolve_layers(model, ["features.3", model.features[7]])
        [('features.3', InvertedResidual(...)), ('features.7', InvertedResidual(...))]
        >>> resolve_layers(lambda x: model(x), {"early": model.features[3]})
        [('early', InvertedResidual(...))]
    """
    if isinstance(layer, Mapping):
        bad = [k for k, m in layer.items() if not isinstance(k, str) or not k or not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"A layer mapping takes non-empty names to modules; check {bad}.")
        out = []
        for name, module in layer.items():
            if all(module is not m for _, m in out):
                out.append((name, module))
        if not out:
            raise ValueError("No layer given: pass a module or a name from model.named_modules().")
        return out
    specs = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not specs:
        raise ValueError("No layer given: pass a module or a name from model.named_modules().")
    root = root_module(forward_func)
    named: Dict[str, nn.Module] = dict(root.named_modules()) if root is not None else {}
    by_id = {id(m): n for n, m in named.items()}
    out: List[Tuple[str, nn.Module]] = []
    for spec in specs:
        if isinstance(spec, str):
            if root is None:
                raise TypeError(
                    f"Layer {spec!r} is given by name but forward_func is not an nn.Module; "
                    "pass the module object, or name it: layer={" + repr(spec) + ": module}."
                )
            if spec not in named or spec == "":
                valid = [n for n in named if n]
                close = difflib.get_close_matches(spec, valid, n=8, cutoff=0.4)
                hint = close or valid[:8]
                raise ValueError(
                    f"Unknown layer {spec!r}. Closest valid names: {', '.join(hint)}. "
                    "See captum_topk.list_layers(model) or `captum-topk layers` for all of them."
                )
            pair = (spec, named[spec])
        elif isinstance(spec, nn.Module):
            name = by_id.get(id(spec))
            if name is None:
                if root is not None:
                    raise ValueError(
                        f"Module {spec.__class__.__name__} is not a submodule of the model."
                    )
                name = f"{spec.__class__.__name__.lower()}_{len(out)}"
            pair = (name or spec.__class__.__name__.lower(), spec)
        else:
            raise TypeError(f"A layer is a module or its dotted name, got {type(spec).__name__}.")
        if all(pair[1] is not m for _, m in out):
            out.append(pair)
    return out


def _first_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(
        f"The layer produced {type(value).__name__}, not a single tensor; choose a layer whose "
        "output (or input) is one tensor."
    )


@contextmanager
def capture_hooks(
    modules: Sequence[nn.Module],
    attribute_to_layer_input: bool = False,
    stop_early: bool = True,
    raw: bool = False,
) -> Iterator[Dict[int, Any]]:
    r"""Context manager collecting each module's output (or input), keyed by ``id(module)``.

    With ``stop_early``, the forward is aborted by :class:`_StopForward` once all modules
    have run; :func:`run_capture` swallows it. Hooks are removed on exit, whatever happens.
    With several devices (``DataParallel``), outputs are kept per device in a dict.
    """
    store: Dict[int, Any] = {}
    ids = [id(m) for m in modules]
    handles = []

    def make_hook(mod_id: int):
        def keep(value: Any) -> None:
            value = value if raw else _first_tensor(value)
            dev = value.device if isinstance(value, Tensor) else None
            slot = store.setdefault(mod_id, {})
            # Per device, so that DataParallel replicas each run up to the deepest layer.
            last = stop_early and all(dev in store.get(i, ()) or i == mod_id for i in ids)
            # The forward goes on after every layer but the last one, and may change their
            # outputs in place (ResNet: bn1 -> ReLU(inplace=True)): keep a copy of those.
            slot[dev] = value if last or not isinstance(value, Tensor) else value.clone()
            if last:
                raise _StopForward

        if attribute_to_layer_input:

            def pre_hook(_m, args, kwargs=None):
                keep(args if len(args) != 1 else args[0])

            return pre_hook

        def fwd_hook(_m, _args, output):
            keep(output)

        return fwd_hook

    try:
        for m in modules:
            hook = make_hook(id(m))
            if attribute_to_layer_input:
                handles.append(m.register_forward_pre_hook(hook))
            else:
                handles.append(m.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def _call(forward_func: Callable, inputs: Any, additional_forward_args: Any) -> Any:
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    if additional_forward_args is not None:
        extra = (
            additional_forward_args
            if isinstance(additional_forward_args, tuple)
            else (additional_forward_args,)
        )
        args = args + extra
    return forward_func(*args)


def run_capture(
    forward_func: Callable,
    modules: Sequence[nn.Module],
    inputs: Any,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    stop_early: bool = True,
    raw: bool = False,
    device_ids: Sequence[int] | None = None,
) -> List[Any]:
    r"""Run ``forward_func`` on ``inputs`` and return each module's output, in ``modules`` order.

    The forward stops right after the last of ``modules`` ran (``stop_early``), so no work
    is done past the deepest requested layer. Outputs from several devices are concatenated
    along the batch dimension in ``device_ids`` order.

    Raises:
        RuntimeError: when a module never ran during the forward.
    """
    with capture_hooks(modules, attribute_to_layer_input, stop_early, raw) as store:
        try:
            _call(forward_func, inputs, additional_forward_args)
        except _StopForward:
            pass
        except Exception as exc:  # DataParallel re-raises worker exceptions with their type
            if type(exc).__name__ != "_StopForward":
                raise
    out = []
    for m in modules:
        per_dev = store.get(id(m))
        if not per_dev:
            raise RuntimeError(
                f"Layer {m.__class__.__name__} did not run during the forward pass; is it used "
                "by the model's forward()?"
            )
        if len(per_dev) == 1:
            out.append(next(iter(per_dev.values())))
        else:
            order = sorted(per_dev, key=lambda d: (device_ids or []).index(d.index)
                           if device_ids and d.index in device_ids else (d.index or 0))
            out.append(torch.cat([per_dev[d].to(order[0]) for d in order], dim=0))
    return out


def minable_layers(model: nn.Module) -> List[str]:
    r"""Dotted names of every submodule of ``model`` (the candidates for ``layer=``)."""
    return [n for n, _ in model.named_modules() if n]
