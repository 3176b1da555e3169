r"""Layer resolution and hook-based capture of intermediate activations.

Shared by the miner, the receptive-field probe and the Captum-style ``attribute``.
Every hook registered here is removed in a ``finally`` block, including when the
forward raises, and the forward is cut short once the deepest requested layer ran.
"""

from __future__ import annotations

import difflib
import warnings
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


_UNWRAPPED: set = set()


def hidden_state(value: Any, name: str = "layer") -> Tensor:
    r"""The one tensor of a layer's output: the output itself, or the hidden state of a tuple or
    a ``ModelOutput``.

    transformers blocks and attention modules return ``(hidden, None)``, ``(hidden, (h, w))``
    or a ``ModelOutput``; the hidden state is the first tensor (``last_hidden_state`` of a
    ``ModelOutput``) when nothing else in the output is a tensor. Said once per layer (a
    ``UserWarning`` naming it).

    Args:
        value: the layer's output (or input tuple).
        name (str): the layer, for messages.
    Returns:
        Tensor: the hidden state.
    Raises:
        TypeError: an output with several tensors or none (the message names the layer).
    Example::
        >>> hidden_state((torch.zeros(2, 17, 8), None), "layers.0.attention").shape
        torch.Size([2, 17, 8])
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):  # a ModelOutput (an OrderedDict of its non-None fields)
        items = list(value.items())
        first = value.get("last_hidden_state", items[0][1] if items else None)
        others = [k for k, v in items if isinstance(v, Tensor) and v is not first]
    elif isinstance(value, (tuple, list)):
        first = value[0] if value else None
        others = [str(i) for i, v in enumerate(value) if isinstance(v, Tensor) and i > 0]
    else:
        first, others = None, []
    if isinstance(first, Tensor) and not others:
        if not isinstance(value, (tuple, list)) or len(value) != 1:
            key = (name, type(value).__name__)
            if key not in _UNWRAPPED:
                _UNWRAPPED.add(key)
                warnings.warn(f"Layer {name!r} returns a {type(value).__name__}; its hidden state (the "
                              f"{'last_hidden_state' if isinstance(value, Mapping) else 'first element'}, "
                              f"shape {tuple(first.shape)}) is mined.", UserWarning, stacklevel=2)
        return first
    what = (f"{type(value).__name__} with several tensors (also at {', '.join(others[:4])})" if others
            else type(value).__name__)
    raise TypeError(
        f"Layer {name!r} produced a {what}, not one tensor (a hidden state alone, or with None / "
        "non-tensor companions, is taken); choose a layer whose output (or input) is one tensor, "
        "e.g. a submodule of this one."
    )


@contextmanager
def capture_hooks(
    modules: Sequence[nn.Module],
    attribute_to_layer_input: bool = False,
    stop_early: bool = True,
    raw: bool = False,
    names: Sequence[str] | None = None,
) -> Iterator[Dict[int, Any]]:
    r"""Context manager collecting each module's output (or input), keyed by ``id(module)``.

    With ``stop_early``, the forward is aborted by :class:`_StopForward` once all modules
    have run; :func:`run_capture` swallows it. Hooks are removed on exit, whatever happens.
    With several devices (``DataParallel``), outputs are kept per device in a dict. Outputs
    are reduced to one tensor by :func:`hidden_state` (``raw=False``); ``names`` name the
    modules in its messages.
    """
    store: Dict[int, Any] = {}
    ids = [id(m) for m in modules]
    handles = []

    label = {id(m): (names[i] if names is not None else m.__class__.__name__) for i, m in enumerate(modules)}

    def make_hook(mod_id: int):
        def keep(value: Any) -> None:
            value = value if raw else hidden_state(value, label[mod_id])
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
    names: Sequence[str] | None = None,
) -> List[Any]:
    r"""Run ``forward_func`` on ``inputs`` and return each module's output, in ``modules`` order.

    The forward stops right after the last of ``modules`` ran (``stop_early``), so no work
    is done past the deepest requested layer. Outputs from several devices are concatenated
    along the batch dimension in ``device_ids`` order.

    ``names`` name the modules in messages (default: their class names).

    Raises:
        RuntimeError: when a module never ran during the forward.
        TypeError: a module's output is not one tensor (:func:`hidden_state`).
    """
    with capture_hooks(modules, attribute_to_layer_input, stop_early, raw, names) as store:
        try:
            _call(forward_func, inputs, additional_forward_args)
        except _StopForward:
            pass
        except Exception as exc:  # DataParallel re-raises worker exceptions with their type
            if type(exc).__name__ != "_StopForward":
                raise
    out = []
    for i, m in enumerate(modules):
        per_dev = store.get(id(m))
        if not per_dev:
            raise RuntimeError(
                f"Layer {names[i] if names is not None else m.__class__.__name__!r} did not run during the forward pass; is it used "
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
