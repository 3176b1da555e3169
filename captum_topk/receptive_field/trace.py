r"""Receptive fields by interval arithmetic along a ``torch.fx`` trace.

The model is traced symbolically with ``torch.fx`` (in eval mode, so that training-only
branches are not taken), then its graph is run once on a batch of two images (a *shape
pass*: every node's real output, hence its shape and the real values of its arguments such
as an interpolation size computed from ``x.shape``). Alongside, every node's dependency
sets (:class:`~captum_topk.receptive_field.intervals.Deps`) are computed from its inputs'
by the rule of its operation: convolutions, poolings (``ceil_mode``, dilation, padding,
``"same"`` / ``"valid"``), adaptive poolings, interpolation, padding, normalisations,
activations, additions and products (residuals, squeeze-excitation), concatenations,
reshapes, permutations, slicing, reductions, linear layers (the rules and their registries
are in :mod:`.ops`). An operation that is not known, or one a rule cannot represent exactly, marks
every node computed from it as *unsupported*, with the reason; the layers reached only
through supported operations get their sets.

The results are predictions: :func:`captum_topk.receptive_field.probe.confirm_predictions`
checks them against a few NaN probes before they are used, and the full probe measures the
layers the trace could not predict or the probes contradicted.
"""

from __future__ import annotations

import inspect
import operator
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, fx, nn

from .intervals import Deps, Unsupported
from .ops import METHODS, MODULES, Call, flat, function_rule

Prediction = Tuple[Tensor, Tensor]
"""``(rows, cols)``: ``(h, H)`` and ``(w, W)`` bool sets of a layer output."""


class ChannelsLastPrediction(tuple):
    r"""The :data:`Prediction` of a layer the trace finds channels-last although it was not
    declared so: its output's dimensions 1 and 2 are the image's rows and columns (the trace
    followed the permutations, e.g. inside a ConvNeXt block), and the sets are those of its
    permutation ``(N, C, H, W)``. ``shape`` is the raw output's shape (batch of the shape pass)."""

    shape: Tuple[int, ...]

    def __new__(cls, sets: Prediction, shape: Sequence[int]) -> "ChannelsLastPrediction":
        out = super().__new__(cls, sets)
        out.shape = tuple(int(s) for s in shape)
        return out


_TRACE_LOCK = threading.RLock()


class _Poison:
    """Stands in for the deps of a node whose dependencies are not known exactly."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def traceable_root(model: Any) -> Optional[nn.Module]:
    r"""The module whose ``forward`` ``model`` runs: ``model`` itself, or the owner of a bound
    ``forward``; None for a plain function or another bound method (not traceable)."""
    if isinstance(model, nn.Module):
        return model
    owner = getattr(model, "__self__", None)
    func = getattr(model, "__func__", None)
    if isinstance(owner, nn.Module) and func is not None and func is getattr(type(owner).forward, "__func__", type(owner).forward):
        return owner
    return None


def trace_fields(
    model: Any,
    pairs: Sequence[Tuple[str, nn.Module]],
    size: Tuple[int, int],
    channels: int,
    attribute_to_layer_input: bool,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: frozenset = frozenset(),
) -> Dict[str, Union[Prediction, Unsupported]]:
    r"""Predicted dependency sets of the outputs (or inputs) of ``pairs``.

    Runs the model's forward once symbolically and once, through the traced graph, on a
    batch of 2 images of ``(channels, *size)``. Call it in eval mode and under
    ``torch.no_grad`` (:func:`~captum_topk.utils.modules.eval_mode`).

    Args:
        model (nn.Module or bound forward): the network.
        pairs (list of (str, nn.Module)): the layers.
        size (tuple): ``(H, W)``.
        channels (int): input channels.
        attribute_to_layer_input (bool): predict the layers' inputs.
        device, dtype: of the shape-pass images.
        channels_last (frozenset of str): layers whose 4-D output is ``(N, H, W, C)``: read
            as its permutation ``(N, C, H, W)``. A 4-D output that is not declared so but
            whose dimensions 1 and 2 the trace follows to the image's rows and columns is
            read the same way, its prediction a :class:`ChannelsLastPrediction`.

    Returns:
        dict name -> ``(rows, cols)`` (``(h, H)``, ``(w, W)`` bool) or the
        :class:`~captum_topk.receptive_field.intervals.Unsupported` saying why not
        (:class:`~captum_topk.receptive_field.intervals.LayoutUnsupported` for an output
        that is not ``(N, C, h, w)`` / ``(N, C)``).
    """
    root = traceable_root(model)
    if root is None:
        why = Unsupported("a plain forward function (not an nn.Module or its bound forward) cannot be traced")
        return {name: why for name, _ in pairs}
    tracer = _Tracer({id(m): name for name, m in pairs})
    try:
        with _TRACE_LOCK:  # torch.fx patches torch.nn.Module.__call__ while it traces
            graph = tracer.trace(root, concrete_args=_concrete_args(root))
    except Exception as exc:  # TraceError, data-dependent control flow, NameError, ...
        why = Unsupported(f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return {name: why for name, _ in pairs}

    out: Dict[str, Union[Prediction, Unsupported]] = {}
    wanted: Dict[fx.Node, List[str]] = {}
    for name, _ in pairs:
        calls = tracer.calls.get(name, [])
        if len(calls) != 1:
            out[name] = Unsupported(f"the layer runs {len(calls)} times in the traced forward")
            continue
        args, kwargs, result = calls[0]
        value = (args[0] if len(args) == 1 else None) if attribute_to_layer_input else result
        if isinstance(value, (tuple, list)) and len(value) == 1:
            value = value[0]
        if not isinstance(value, fx.Proxy):
            out[name] = Unsupported("the layer's " + ("input" if attribute_to_layer_input else "output")
                                    + " is not one tensor of the traced graph")
            continue
        wanted.setdefault(value.node, []).append(name)
    if wanted:
        image = torch.zeros(2, channels, *size, device=device, dtype=dtype) + 0.5
        try:
            results = _Evaluator(root, graph, wanted).run(image)
        except Exception as exc:  # the traced graph does not run as the model does
            why = Unsupported(f"the traced graph fails on real tensors ({type(exc).__name__}: {exc})")
            results = {node: _Poison(str(why)) for node in wanted}
        for node, names in wanted.items():
            deps = results.get(node)
            for name in names:
                if isinstance(deps, _Poison):
                    out[name] = Unsupported(deps.reason)
                elif not isinstance(deps, Deps):
                    out[name] = Unsupported("the layer does not depend on the input image")
                else:
                    try:
                        if name in channels_last and len(deps.dims) == 4:
                            out[name] = deps.permute((0, 3, 1, 2)).field_sets()
                        elif _channels_last(deps):
                            out[name] = ChannelsLastPrediction(deps.permute((0, 3, 1, 2)).field_sets(), deps.shape)
                        else:
                            out[name] = deps.field_sets()
                    except Unsupported as exc:
                        out[name] = exc
    return {name: out[name] for name, _ in pairs}


def _channels_last(deps: Deps) -> bool:
    """Dimensions 1 and 2 of a 4-D tensor are the image's rows and columns, 3 the channels."""
    return len(deps.dims) == 4 and deps.dims[:3] == ("n", "h", "w") and deps.dims[3] is None


class _Tracer(fx.Tracer):
    """Records, for the wanted modules, the arguments and the result of each call."""

    def __init__(self, wanted: Dict[int, str]) -> None:
        super().__init__()
        self._wanted = wanted
        self.calls: Dict[str, List[Tuple[tuple, dict, Any]]] = {}

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        result = super().call_module(m, forward, args, kwargs)
        name = self._wanted.get(id(m))
        if name is not None:
            self.calls.setdefault(name, []).append((args, kwargs, result))
        return result


def _concrete_args(root: nn.Module) -> Optional[Dict[str, Any]]:
    """Parameters after the first that have defaults are traced at their default."""
    try:
        params = list(inspect.signature(root.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    extra = {p.name: p.default for p in params[1:]
             if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return extra or None


# --------------------------------------------------------------------------------------
# the shape pass with dependency sets
# --------------------------------------------------------------------------------------


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Evaluator:
    """Runs the traced graph on real tensors and computes every node's :class:`Deps`."""

    def __init__(self, root: nn.Module, graph: fx.Graph, wanted: Dict[fx.Node, Any]) -> None:
        self.root = root
        self.graph = graph
        self.wanted = set(wanted)

    def run(self, image: Tensor) -> Dict[fx.Node, Any]:
        nodes = list(self.graph.nodes)
        last_use: Dict[fx.Node, int] = {}
        for i, node in enumerate(nodes):
            for arg in node.all_input_nodes:
                last_use[arg] = i
        env: Dict[fx.Node, Any] = {}
        denv: Dict[fx.Node, Any] = {}
        results: Dict[fx.Node, Any] = {}
        remaining = set(self.wanted)
        first_placeholder = True
        for i, node in enumerate(nodes):
            if node.op == "output":
                break
            if node.op == "placeholder":
                if first_placeholder:
                    value, deps = image, Deps.image(image.shape)
                    first_placeholder = False
                elif node.args:
                    value, deps = node.args[0], None
                else:
                    raise Unsupported(f"the forward takes a second input {node.target!r}")
            elif node.op == "get_attr":
                value, deps = _fetch_attr(self.root, str(node.target)), None
            else:
                args = fx.node.map_arg(node.args, env.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
                value = self._execute(node, args, kwargs)
                deps = self._deps(node, args, kwargs, value, denv)
                self._in_place(node, args, value, deps, env, denv)
            env[node] = value
            denv[node] = deps
            if node in remaining:
                results[node] = deps
                remaining.discard(node)
                if not remaining:
                    break
            for arg in node.all_input_nodes:  # free what no later node reads
                if last_use.get(arg) == i:
                    env.pop(arg, None)
                    denv.pop(arg, None)
        return results

    def _execute(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, str(node.target))(*rest, **kwargs)
        if node.op == "call_module":
            return self.root.get_submodule(str(node.target))(*args, **kwargs)
        raise Unsupported(f"fx node kind {node.op!r}")

    def _deps(self, node: fx.Node, args: tuple, kwargs: dict, value: Any, denv: Dict[fx.Node, Any]) -> Any:
        def deps_of(a: Any) -> Any:
            return denv.get(a) if isinstance(a, fx.Node) else None

        dargs = fx.node.map_aggregate(node.args, deps_of)
        dkwargs = fx.node.map_aggregate(node.kwargs, deps_of)
        found = [d for d in flat((dargs, dkwargs)) if d is not None]
        for d in found:
            if isinstance(d, _Poison):
                return d
        if not found:  # nothing here depends on the image
            return None
        try:
            rule, params, what = self._rule(node)
            call = Call(params, args, kwargs, dargs, dkwargs, value, what)
            deps = rule(call)
            _check(deps, value)
            return deps
        except Unsupported as exc:
            return _Poison(f"{exc} (at {_describe(node, self.root)})")
        except Exception as exc:  # a rule met arguments it does not expect
            return _Poison(f"{type(exc).__name__}: {exc} (at {_describe(node, self.root)})")

    def _rule(self, node: fx.Node) -> Tuple[Callable[[Call], Any], Sequence[str], Any]:
        if node.op == "call_function":
            entry = function_rule(node.target)
            if entry is not None:
                return entry[0], entry[1], node.target
        elif node.op == "call_method":
            entry = METHODS.get(str(node.target))
            if entry is not None:
                return entry[0], ("input",) + tuple(entry[1]), node.target
        elif node.op == "call_module":
            module = self.root.get_submodule(str(node.target))
            for cls in type(module).__mro__:
                rule = MODULES.get(cls)
                if rule is not None:
                    if type(module).forward is not cls.forward:
                        break  # a subclass with its own forward: unknown
                    return (lambda c, m=module, r=rule: r(m, c)), ("input",), module
        raise Unsupported("unknown operation")

    def _in_place(self, node: fx.Node, args: tuple, value: Any, deps: Any, env: Dict[fx.Node, Any],
                  denv: Dict[fx.Node, Any]) -> None:
        """An operation that wrote into one of its inputs (``x.add_(y)``, ``relu(inplace)``,
        ``x[...] = y``): later readers of that input see the new dependencies; other live
        views of the same memory become unknown."""
        if not (node.op == "call_function" and node.target is operator.setitem):
            if not isinstance(value, Tensor):
                return
            targets = [a for a in node.all_input_nodes if env.get(a) is value]
            if not targets:
                return
        else:
            targets = [a for a in node.all_input_nodes if a is node.args[0]]
            deps = _Poison(f"an indexed assignment (at {_describe(node, self.root)})")
            value = env.get(targets[0]) if targets else None
        if not isinstance(value, Tensor):
            return
        changed = False
        for t in targets:
            if not _same(denv.get(t), deps):
                denv[t] = deps
                changed = True
        if not changed:
            return
        ptr = value.untyped_storage().data_ptr()
        for other, v in env.items():
            if other in targets or not isinstance(v, Tensor) or v is value:
                continue
            if v.untyped_storage().data_ptr() == ptr and denv.get(other) is not None:
                denv[other] = _Poison(f"a view of a tensor changed in place (at {_describe(node, self.root)})")


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Deps) and isinstance(b, Deps):
        return (a.dims == b.dims and a.shape == b.shape and a.uniform == b.uniform
                and torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols))
    return False


def _describe(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"module {node.target} ({type(root.get_submodule(str(node.target))).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}() ({node.name})"
    target = node.target
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)
    mod = getattr(target, "__module__", None) or ""
    return f"{mod + '.' if mod else ''}{name} ({node.name})"


def _check(deps: Any, value: Any) -> None:
    if isinstance(deps, Deps):
        if not isinstance(value, Tensor):
            raise Unsupported("internal: deps for a non-tensor")
        deps.check(value.shape)
    elif isinstance(deps, tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(deps):
            raise Unsupported("internal: deps for a different structure")
        for d, v in zip(deps, value):
            _check(d, v)
