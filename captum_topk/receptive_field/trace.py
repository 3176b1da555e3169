r"""Receptive fields by interval arithmetic along a ``torch.fx`` trace.

The model is traced symbolically with ``torch.fx`` (in eval mode, so that training-only
branches are not taken), then its graph is run once on a batch of two images (a *shape
pass*: every node's real output, hence its shape and the real values of its arguments such
as an interpolation size computed from ``x.shape``). Alongside, every node's dependency
sets (:class:`~captum_topk.receptive_field.intervals.Deps`) are computed from its inputs'
by the rule of its operation: convolutions, poolings (``ceil_mode``, dilation, padding,
``"same"`` / ``"valid"``), adaptive poolings, interpolation, padding, normalisations,
activations, additions and products (residuals, squeeze-excitation), concatenations,
reshapes, permutations, slicing, reductions, linear layers (see the registries at the end
of this file). An operation that is not known, or one a rule cannot represent exactly, marks
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

from .intervals import (
    Deps,
    Unsupported,
    adaptive_map,
    apply_maps,
    mix_features,
    pad_map,
    pixel_shuffle,
    pixel_unshuffle,
    resize_map,
    select_map,
    sliding_windows,
    transposed_window_map,
)

Prediction = Tuple[Tensor, Tensor]
"""``(rows, cols)``: ``(h, H)`` and ``(w, W)`` bool sets of a layer output."""


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
) -> Dict[str, Union[Prediction, Unsupported]]:
    r"""Predicted dependency sets of the outputs (or inputs) of ``pairs``.

    Runs the model's forward once symbolically and once, through the traced graph, on a
    batch of 2 images of ``(channels, *size)``. Call it in eval mode and under
    ``torch.no_grad`` (the probe's :func:`~captum_topk.receptive_field.probe._eval_mode`).

    Args:
        model (nn.Module or bound forward): the network.
        pairs (list of (str, nn.Module)): the layers.
        size (tuple): ``(H, W)``.
        channels (int): input channels.
        attribute_to_layer_input (bool): predict the layers' inputs.
        device, dtype: of the shape-pass images.

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
                        out[name] = deps.field_sets()
                    except Unsupported as exc:
                        out[name] = exc
    return {name: out[name] for name, _ in pairs}


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


def _flat(value: Any) -> List[Any]:
    out: List[Any] = []
    fx.node.map_aggregate(value, out.append)
    return out


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
        flat = [d for d in _flat((dargs, dkwargs)) if d is not None]
        for d in flat:
            if isinstance(d, _Poison):
                return d
        if not flat:  # nothing here depends on the image
            return None
        try:
            rule, params, what = self._rule(node)
            call = _Call(params, args, kwargs, dargs, dkwargs, value, what)
            deps = rule(call)
            _check(deps, value)
            return deps
        except Unsupported as exc:
            return _Poison(f"{exc} (at {_describe(node, self.root)})")
        except Exception as exc:  # a rule met arguments it does not expect
            return _Poison(f"{type(exc).__name__}: {exc} (at {_describe(node, self.root)})")

    def _rule(self, node: fx.Node) -> Tuple[Callable[["_Call"], Any], Sequence[str], Any]:
        if node.op == "call_function":
            entry = _FUNCTIONS.get(node.target)
            if entry is not None:
                return entry[0], entry[1], node.target
        elif node.op == "call_method":
            entry = _METHODS.get(str(node.target))
            if entry is not None:
                return entry[0], ("input",) + tuple(entry[1]), node.target
        elif node.op == "call_module":
            module = self.root.get_submodule(str(node.target))
            for cls in type(module).__mro__:
                rule = _MODULES.get(cls)
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


class _Call:
    """One call's arguments by parameter name: real values and deps."""

    def __init__(self, params: Sequence[str], args: tuple, kwargs: dict, dargs: tuple, dkwargs: dict,
                 out: Any, what: Any) -> None:
        self.args, self.kwargs, self.dargs, self.out, self.what = args, kwargs, dargs, out, what
        self.values: Dict[str, Any] = {}
        self.deps_of: Dict[str, Any] = {}
        self.extra = list(zip(args[len(params):], dargs[len(params):]))
        for name, a, d in zip(params, args, dargs):
            self.values[name], self.deps_of[name] = a, d
        for k, v in kwargs.items():
            self.values[k], self.deps_of[k] = v, dkwargs.get(k)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def deps(self, name: str = "input") -> Optional[Deps]:
        d = self.deps_of.get(name)
        if d is not None and not isinstance(d, Deps):
            raise Unsupported(f"argument {name!r} is not a single tensor")
        return d

    def only_input(self) -> Deps:
        """The input's deps, refusing image-dependent values in any other argument."""
        for name, d in self.deps_of.items():
            if name != "input" and any(x is not None for x in _flat(d)):
                raise Unsupported(f"argument {name!r} depends on the image")
        for _, d in self.extra:
            if any(x is not None for x in _flat(d)):
                raise Unsupported("an argument depends on the image")
        d = self.deps("input")
        if d is None:
            raise Unsupported("internal: no input deps")
        return d

    @property
    def shape(self) -> Tuple[int, ...]:
        if not isinstance(self.out, Tensor):
            raise Unsupported("the result is not a tensor")
        return tuple(self.out.shape)


# --------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------


def _pair(v: Any, n: int = 2) -> Tuple[int, ...]:
    if isinstance(v, (int, float)):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def _elementwise(c: _Call) -> Optional[Deps]:
    if not isinstance(c.out, Tensor) or not (c.out.is_floating_point() or c.out.is_complex()):
        raise Unsupported("a result that cannot hold NaN")
    operands = [d for d in _flat((c.dargs, [c.deps_of.get(k) for k in c.kwargs])) if d is not None]
    for d in operands:
        if not isinstance(d, Deps):
            raise Unsupported("a non-tensor operand depends on the image")
    return Deps.union(operands, c.shape)


def _pow(c: _Call) -> Optional[Deps]:
    base, exponent = c.get("input"), c.get("exponent")
    if (not isinstance(exponent, Tensor) and exponent == 0) or (not isinstance(base, Tensor) and base == 1):
        raise Unsupported("a power that is 1 whatever the image (NaN ** 0 == 1)")
    return _elementwise(c)


def _conv_pads(padding: Any, kernel: Sequence[int], dilation: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
        raise Unsupported(f"padding {padding!r}")
    p = _pair(padding)
    return p, p


def _conv(c: _Call) -> Deps:
    d = c.only_input()
    x, weight = c.get("input"), c.get("weight")
    if x.dim() != 4 or weight.dim() != 4:
        raise Unsupported("a convolution that is not 2-D")
    kernel = tuple(weight.shape[2:])
    stride, dilation = _pair(c.get("stride", 1)), _pair(c.get("dilation", 1))
    begin, end = _conv_pads(c.get("padding", 0), kernel, dilation)
    groups = int(c.get("groups", 1))
    d = mix_features(d, 1, c.shape[1], full=groups == 1)
    return sliding_windows(d, x.shape, c.shape, kernel, stride, begin, end, dilation)


def _conv_transpose(c: _Call) -> Deps:
    d = c.only_input()
    x, weight = c.get("input"), c.get("weight")
    if x.dim() != 4 or weight.dim() != 4:
        raise Unsupported("a transposed convolution that is not 2-D")
    kernel = tuple(weight.shape[2:])
    stride, dilation, padding = _pair(c.get("stride", 1)), _pair(c.get("dilation", 1)), _pair(c.get("padding", 0))
    groups = int(c.get("groups", 1))
    d = mix_features(d, 1, c.shape[1], full=groups == 1)
    maps = {}
    for i, dim in enumerate((2, 3)):
        n_in, n_out = x.shape[dim], c.shape[dim]
        base = (n_in - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1
        if not base <= n_out < base + max(stride[i], dilation[i]):
            raise Unsupported("a transposed convolution of unexpected output size")
        maps[dim] = transposed_window_map(n_in, n_out, kernel[i], stride[i], padding[i], dilation[i])
    return apply_maps(d, maps)


def _pool(c: _Call, dilation_ok: bool = True) -> Any:
    d = c.only_input()
    x = c.get("input")
    kernel = _pair(c.get("kernel_size"))
    stride = _pair(c.get("stride") or kernel)
    padding = _pair(c.get("padding", 0))
    dilation = _pair(c.get("dilation", 1)) if dilation_ok else (1, 1)
    out = c.out[0] if isinstance(c.out, tuple) else c.out
    d = sliding_windows(d, x.shape, out.shape, kernel, stride, padding, padding, dilation, bool(c.get("ceil_mode", False)))
    return (d, d) if isinstance(c.out, tuple) else d


def _max_pool(c: _Call) -> Any:
    return _pool(c)


def _avg_pool(c: _Call) -> Any:
    return _pool(c, dilation_ok=False)


def _lp_pool(c: _Call) -> Any:
    d = c.only_input()
    kernel = _pair(c.get("kernel_size"))
    stride = _pair(c.get("stride") or kernel)
    return sliding_windows(d, c.get("input").shape, c.shape, kernel, stride, (0, 0), (0, 0), (1, 1),
                      bool(c.get("ceil_mode", False)))


def _adaptive(c: _Call) -> Any:
    d = c.only_input()
    x = c.get("input")
    out = c.out[0] if isinstance(c.out, tuple) else c.out
    nd = x.dim()
    maps = {dim: adaptive_map(x.shape[dim], out.shape[dim]) for dim in (nd - 2, nd - 1)}
    d = apply_maps(d, maps)
    return (d, d) if isinstance(c.out, tuple) else d


def _interpolate_deps(d: Deps, x: Tensor, out: Tensor, mode: str, align_corners: Optional[bool],
                      scale_factor: Any, recompute: Optional[bool], antialias: bool) -> Deps:
    if x.dim() != 4:
        raise Unsupported("an interpolation that is not 2-D")
    if antialias:
        raise Unsupported("antialiased interpolation")
    scales: Sequence[Optional[float]] = (None, None)
    if scale_factor is not None and not recompute:
        scales = (float(scale_factor),) * 2 if isinstance(scale_factor, (int, float)) else tuple(float(s) for s in scale_factor)
    maps = {}
    for i, dim in enumerate((2, 3)):
        n_in, n_out = int(x.shape[dim]), int(out.shape[dim])
        if mode == "nearest":
            maps[dim] = resize_map(n_in, n_out, "nearest", "torch_nearest", scale=scales[i])
        elif mode == "nearest-exact":
            maps[dim] = resize_map(n_in, n_out, "nearest", "torch_nearest_exact", scale=scales[i])
        elif mode == "bilinear":
            coord = "torch_align_corners" if align_corners else "torch_linear"
            maps[dim] = resize_map(n_in, n_out, "linear", coord, scale=scales[i])
        elif mode == "area":
            maps[dim] = adaptive_map(n_in, n_out)
        else:
            raise Unsupported(f"interpolation mode {mode!r}")
    return apply_maps(d, maps)


def _interpolate(c: _Call) -> Deps:
    return _interpolate_deps(c.only_input(), c.get("input"), c.out, c.get("mode", "nearest"),
                             c.get("align_corners"), c.get("scale_factor"),
                             c.get("recompute_scale_factor"), bool(c.get("antialias", False)))


def _upsample_nearest(c: _Call) -> Deps:
    return _interpolate_deps(c.only_input(), c.get("input"), c.out, "nearest", None, c.get("scale_factor"), None, False)


def _upsample_bilinear(c: _Call) -> Deps:
    return _interpolate_deps(c.only_input(), c.get("input"), c.out, "bilinear", True, c.get("scale_factor"), None, False)


def _pad_deps(d: Deps, pad: Sequence[int], mode: str) -> Deps:
    pad = [int(p) for p in pad]
    if len(pad) % 2:
        raise Unsupported("an odd padding list")
    for k in range(len(pad) // 2):
        dim = len(d.shape) - 1 - k
        before, after = pad[2 * k], pad[2 * k + 1]
        if before == after == 0:
            continue
        index_map = pad_map(d.shape[dim], before, after, mode)
        new = list(d.shape)
        new[dim] = index_map.shape[0]
        d = d.map_dim(dim, index_map, new)
    return d


def _pad(c: _Call) -> Deps:
    mode = c.get("mode", "constant")
    return _pad_deps(c.only_input(), c.get("pad"), mode)


def _batch_norm(c: _Call) -> Deps:
    if c.get("training", False) or c.get("running_mean") is None:
        raise Unsupported("batch norm with batch statistics (mixes the images of a batch)")
    return Deps.union([c.only_input()], c.shape)


def _layer_norm(c: _Call) -> Deps:
    d = c.only_input()
    n = len(_pair(c.get("normalized_shape"), 1))
    return d.mix(list(range(len(d.shape) - n, len(d.shape))))


def _group_norm(c: _Call) -> Deps:
    d = c.only_input()
    return d.mix(list(range(2, len(d.shape))))


def _instance_norm(c: _Call) -> Deps:
    d = c.only_input()
    if c.get("use_input_stats", True):
        return d.mix(list(range(2, len(d.shape))))
    return d


def _channel_local(c: _Call) -> Deps:
    """Local response norm, channel shuffle: channels with channels only."""
    d = c.only_input()
    if len(d.dims) < 2 or d.dims[1] is not None:
        raise Unsupported("a channel operation on a tensor whose dimension 1 is not channels")
    return Deps.union([d], c.shape)


def _normalize(c: _Call) -> Deps:
    return c.only_input().mix([int(c.get("dim", 1))])


def _softmax(c: _Call) -> Deps:
    dim = c.get("dim")
    if dim is None:
        raise Unsupported("softmax with an implicit dimension")
    return c.only_input().mix([int(dim)])


def _linear(c: _Call) -> Deps:
    return mix_features(c.only_input(), -1, c.shape[-1])


def _dims_arg(value: Any, ndim: int) -> List[int]:
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return list(range(ndim))
    if isinstance(value, int):
        return [value % ndim]
    return [int(v) % ndim for v in value]


def _reduction(c: _Call) -> Any:
    d = c.only_input()
    dim = c.get("dim")
    if isinstance(dim, Tensor):  # torch.max(a, b): element-wise
        return _elementwise(c)
    dims = _dims_arg(dim, len(d.shape))
    keep = bool(c.get("keepdim", False))
    r = d.reduce(dims, keepdim=keep)
    if isinstance(c.out, tuple):  # (values, indices)
        return tuple(r for _ in c.out)
    return r


def _reshape(c: _Call) -> Deps:
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: reshape of a constant")
    return d.reshape(c.shape)


def _expand(c: _Call) -> Deps:
    return Deps.union([c.only_input()], c.shape)


def _repeat(c: _Call) -> Deps:
    d = c.only_input()
    reps = list(c.args[1:]) or [c.get("repeats")]
    if len(reps) == 1 and isinstance(reps[0], (tuple, list, torch.Size)):
        reps = list(reps[0])
    reps = [int(r) for r in reps]
    padded = (1,) * (len(reps) - len(d.shape)) + d.shape
    d = d.reshape(padded)
    for dim, r in enumerate(reps):
        if r != 1:
            n = d.shape[dim]
            new = list(d.shape)
            new[dim] = n * r
            d = d.map_dim(dim, select_map(n, [i % n for i in range(n * r)]), new)
    return d


def _permute_order(c: _Call, ndim: int) -> List[int]:
    name = c.what if isinstance(c.what, str) else getattr(c.what, "__name__", "")
    rest = list(c.args[1:])
    if name == "permute":
        dims = c.get("dims")
        if dims is None:
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        return [int(x) % ndim for x in dims]
    if name in ("transpose", "swapaxes", "swapdims"):
        a = rest[0] if len(rest) > 0 else c.get("dim0", c.get("axis0"))
        b = rest[1] if len(rest) > 1 else c.get("dim1", c.get("axis1"))
        order = list(range(ndim))
        a, b = int(a) % ndim, int(b) % ndim
        order[a], order[b] = order[b], order[a]
        return order
    if name == "movedim":
        src = rest[0] if rest else c.get("source")
        dst = rest[1] if len(rest) > 1 else c.get("destination")
        src = [int(s) % ndim for s in ([src] if isinstance(src, int) else src)]
        dst = [int(s) % ndim for s in ([dst] if isinstance(dst, int) else dst)]
        order = [i for i in range(ndim) if i not in src]
        for s, t in sorted(zip(dst, src)):
            order.insert(s, t)
        return order
    if name == "t":
        return list(range(ndim))[::-1]
    raise Unsupported(f"permutation {name!r}")


def _permute(c: _Call) -> Deps:
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: permute of a constant")
    return d.permute(_permute_order(c, len(d.shape)))


def _cat(c: _Call) -> Optional[Deps]:
    tensors = list(c.get("tensors"))
    deps = c.deps_of.get("tensors")
    if deps is None or len(deps) != len(tensors):
        raise Unsupported("a concatenation of something else than a list of tensors")
    dim = int(c.get("dim", c.get("axis", 0)))
    for d in deps:
        if d is not None and not isinstance(d, Deps):
            raise Unsupported("a concatenation of non-tensors")
    return Deps.cat(list(deps), [t.shape for t in tensors], dim, c.shape)


def _stack(c: _Call) -> Optional[Deps]:
    tensors = list(c.get("tensors"))
    deps = c.deps_of.get("tensors")
    dim = int(c.get("dim", 0)) % (tensors[0].dim() + 1)
    parts, shapes = [], []
    for t, d in zip(tensors, deps):
        s = list(t.shape)
        s.insert(dim, 1)
        shapes.append(s)
        parts.append(d.reshape(s) if isinstance(d, Deps) else None)
    return Deps.cat(parts, shapes, dim, c.shape)


def _getitem(c: _Call) -> Any:
    obj, idx = c.args[0], c.args[1]
    dobj = c.dargs[0]
    if not isinstance(obj, Tensor):
        if isinstance(dobj, (tuple, list)):
            return dobj[idx]
        raise Unsupported("indexing a non-tensor that depends on the image")
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: indexing a constant")
    if any(x is not None for x in _flat(c.dargs[1])):
        raise Unsupported("an index that depends on the image")
    items = list(idx) if isinstance(idx, tuple) else [idx]
    full = len(d.shape) - sum(1 for it in items if it is not None and it is not Ellipsis)
    dim = 0
    for it in items:
        if it is None:
            shape = list(d.shape)
            shape.insert(dim, 1)
            d = d.reshape(shape)
            dim += 1
        elif it is Ellipsis:
            dim += full
        elif isinstance(it, bool) or not isinstance(it, (int, slice)):
            raise Unsupported(f"advanced indexing with {type(it).__name__}")
        elif isinstance(it, int):
            d = d.drop(dim, it)
        else:
            d = d.select(dim, range(*it.indices(d.shape[dim])))
            dim += 1
    return d


def _pieces(c: _Call, dim_name: str = "dim", default_dim: int = 0) -> Tuple[Deps, ...]:
    d = c.only_input()
    dim = c.get(dim_name)
    if dim is None:
        dim = c.args[2] if len(c.args) > 2 else default_dim
    dim = int(dim) % len(d.shape)
    if not isinstance(c.out, (tuple, list)):
        raise Unsupported("internal: pieces")
    out, start = [], 0
    for piece in c.out:
        n = piece.shape[dim]
        out.append(d.select(dim, range(start, start + n)))
        start += n
    return tuple(out)


def _unbind(c: _Call) -> Tuple[Deps, ...]:
    d = c.only_input()
    dim = int(c.get("dim", 0)) % len(d.shape)
    return tuple(d.drop(dim, i) for i in range(d.shape[dim]))


def _narrow(c: _Call) -> Deps:
    d = c.only_input()
    dim, start, length = int(c.get("dim")), int(c.get("start")), int(c.get("length"))
    dim %= len(d.shape)
    start %= d.shape[dim]
    return d.select(dim, range(start, start + length))


def _select(c: _Call) -> Deps:
    d = c.only_input()
    return d.drop(int(c.get("dim")), int(c.get("index")))


def _identity(c: _Call) -> Deps:
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: identity of a constant")
    if isinstance(c.out, Tensor) and not (c.out.is_floating_point() or c.out.is_complex()):
        raise Unsupported(f"a conversion to {c.out.dtype}, which cannot hold NaN")
    return Deps.union([d], c.shape)


def _metadata(c: _Call) -> None:
    return None


def _getattr(c: _Call) -> Any:
    name = c.args[1]
    if name in ("shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout", "is_sparse"):
        return None
    d = c.deps("input")
    if name in ("T", "mT"):
        nd = len(d.shape)
        order = list(range(nd))[::-1] if name == "T" else list(range(nd - 2)) + [nd - 1, nd - 2]
        return d.permute(order)
    if name == "data":
        return d
    raise Unsupported(f"attribute {name!r}")


def _pixel_shuffle(c: _Call) -> Deps:
    return pixel_shuffle(c.only_input(), c.shape, int(c.get("upscale_factor")))


def _pixel_unshuffle(c: _Call) -> Deps:
    return pixel_unshuffle(c.only_input(), c.shape, int(c.get("downscale_factor")))


def _stochastic_depth(c: _Call) -> Deps:
    return Deps.union([c.only_input()], c.shape)


# -- modules -----------------------------------------------------------------------------


def _m_conv(m: nn.Conv2d, c: _Call) -> Deps:
    d = c.only_input()
    x = c.get("input")
    if x.dim() != 4:
        raise Unsupported("an unbatched convolution input")
    kernel, stride, dilation = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
    if m.padding_mode != "zeros":
        pad = m._reversed_padding_repeated_twice
        padded = list(x.shape)
        padded[2] += pad[2] + pad[3]
        padded[3] += pad[0] + pad[1]
        d = _pad_deps(d, pad, m.padding_mode)
        begin = end = (0, 0)
        in_shape = padded
    else:
        begin, end = _conv_pads(m.padding, kernel, dilation)
        in_shape = list(x.shape)
    d = mix_features(d, 1, c.shape[1], full=m.groups == 1)
    return sliding_windows(d, in_shape, c.shape, kernel, stride, begin, end, dilation)


def _m_conv_transpose(m: nn.ConvTranspose2d, c: _Call) -> Deps:
    call = _Call(("input", "weight", "stride", "padding", "dilation", "groups"),
                 (c.get("input"), m.weight, m.stride, m.padding, m.dilation, m.groups),
                 {}, (c.deps("input"), None, None, None, None, None), {}, c.out, m)
    if c.extra or len(c.kwargs) > 0:
        raise Unsupported("ConvTranspose2d with an output_size argument")
    return _conv_transpose(call)


def _with_params(c: _Call, **params: Any) -> _Call:
    """``c`` with module attributes as further keyword arguments."""
    out = _Call(("input",), c.args[:1], {}, c.dargs[:1], {}, c.out, c.what)
    out.values.update(params)
    out.deps_of.update({k: None for k in params})
    if c.extra or c.kwargs:
        raise Unsupported("a module called with extra arguments")
    return out


def _m_max_pool(m: nn.MaxPool2d, c: _Call) -> Any:
    return _pool(_with_params(c, kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation, ceil_mode=m.ceil_mode))


def _m_avg_pool(m: nn.AvgPool2d, c: _Call) -> Any:
    return _pool(_with_params(c, kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                              ceil_mode=m.ceil_mode), dilation_ok=False)


def _m_lp_pool(m: nn.LPPool2d, c: _Call) -> Any:
    return _lp_pool(_with_params(c, kernel_size=m.kernel_size, stride=m.stride, ceil_mode=m.ceil_mode))


def _m_adaptive(m: nn.Module, c: _Call) -> Any:
    return _adaptive(_with_params(c))


def _m_batch_norm(m: nn.modules.batchnorm._BatchNorm, c: _Call) -> Deps:
    if m.training or m.running_mean is None:
        raise Unsupported("batch norm with batch statistics (mixes the images of a batch)")
    return Deps.union([c.only_input()], c.shape)


def _m_group_norm(m: nn.Module, c: _Call) -> Deps:
    return _group_norm(_with_params(c))


def _m_instance_norm(m: nn.modules.instancenorm._InstanceNorm, c: _Call) -> Deps:
    return _instance_norm(_with_params(c, use_input_stats=m.training or not m.track_running_stats))


def _m_layer_norm(m: nn.LayerNorm, c: _Call) -> Deps:
    return _layer_norm(_with_params(c, normalized_shape=m.normalized_shape))


def _m_channel_local(m: nn.Module, c: _Call) -> Deps:
    return _channel_local(_with_params(c))


def _m_linear(m: nn.Linear, c: _Call) -> Deps:
    return _linear(_with_params(c))


def _m_reshape(m: nn.Module, c: _Call) -> Deps:
    return _reshape(_with_params(c))


def _m_elementwise(m: nn.Module, c: _Call) -> Deps:
    if c.extra or c.kwargs:
        raise Unsupported("a module called with extra arguments")
    return Deps.union([c.only_input()], c.shape)


def _m_softmax(m: nn.Module, c: _Call) -> Deps:
    dim = -3 if isinstance(m, nn.Softmax2d) else m.dim
    return _softmax(_with_params(c, dim=dim))


def _m_upsample(m: nn.Upsample, c: _Call) -> Deps:
    d = c.only_input()
    mode = m.mode
    align = m.align_corners
    if isinstance(m, nn.UpsamplingBilinear2d):
        align = True
    return _interpolate_deps(d, c.get("input"), c.out, mode, align, m.scale_factor,
                             getattr(m, "recompute_scale_factor", None), False)


def _m_pad(m: nn.Module, c: _Call) -> Deps:
    mode = {nn.ZeroPad2d: "constant", nn.ConstantPad2d: "constant", nn.ReflectionPad2d: "reflect",
            nn.ReplicationPad2d: "replicate"}.get(type(m))
    if mode is None and type(m).__name__ == "CircularPad2d":
        mode = "circular"
    if mode is None:
        raise Unsupported(f"padding module {type(m).__name__}")
    return _pad_deps(c.only_input(), m.padding, mode)


def _m_pixel_shuffle(m: nn.PixelShuffle, c: _Call) -> Deps:
    return _pixel_shuffle(_with_params(c, upscale_factor=m.upscale_factor))


def _m_pixel_unshuffle(m: nn.PixelUnshuffle, c: _Call) -> Deps:
    return _pixel_unshuffle(_with_params(c, downscale_factor=m.downscale_factor))


# --------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------

_FUNCTIONS: Dict[Any, Tuple[Callable[[_Call], Any], Sequence[str]]] = {}
_METHODS: Dict[str, Tuple[Callable[[_Call], Any], Sequence[str]]] = {}
_MODULES: Dict[type, Callable[[Any, _Call], Any]] = {}


def _register(targets: Sequence[Any], rule: Callable[[_Call], Any], params: Sequence[str]) -> None:
    for t in targets:
        if t is not None:
            _FUNCTIONS[t] = (rule, tuple(params))


def _methods(names: Sequence[str], rule: Callable[[_Call], Any], params: Sequence[str] = ()) -> None:
    for n in names:
        _METHODS[n] = (rule, tuple(params))


def _t(*names: str) -> List[Any]:
    """torch / torch.nn.functional callables by dotted name (missing ones skipped)."""
    out = []
    for name in names:
        obj: Any = torch
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            out.append(obj)
    return out


_UNARY = ("relu", "relu_", "sigmoid", "tanh", "exp", "abs", "neg", "sqrt", "rsqrt", "square",
          "erf", "log", "reciprocal", "clamp", "clip", "clamp_min", "clamp_max")
_register([*_t(*(f"nn.functional.{n}" for n in (
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "silu", "gelu", "mish",
    "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_", "softplus", "logsigmoid", "sigmoid",
    "tanh", "softsign", "tanhshrink", "prelu", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout"))), *_t(*_UNARY)], _elementwise, ("input",))
_register([operator.neg, operator.pos], _elementwise, ("input",))
_BINARY = ("add", "sub", "mul", "div", "true_divide", "maximum", "minimum", "rsub", "floor_divide")
_register([operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
           operator.iadd, operator.isub, operator.imul, operator.itruediv, *_t(*_BINARY)],
          _elementwise, ("input", "other"))
_register([operator.pow, *_t("pow")], _pow, ("input", "exponent"))
_register(_t("nn.functional.conv2d", "conv2d"), _conv,
          ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
_register(_t("nn.functional.conv_transpose2d", "conv_transpose2d"), _conv_transpose,
          ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"))
_register(_t("nn.functional.max_pool2d", "max_pool2d", "nn.functional.max_pool2d_with_indices"), _max_pool,
          ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))
_register(_t("nn.functional.avg_pool2d", "_C._nn.avg_pool2d"), _avg_pool,
          ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"))
_register(_t("nn.functional.lp_pool2d"), _lp_pool, ("input", "norm_type", "kernel_size", "stride", "ceil_mode"))
_register(_t("nn.functional.adaptive_avg_pool2d", "adaptive_avg_pool2d", "nn.functional.adaptive_max_pool2d",
             "nn.functional.adaptive_max_pool2d_with_indices", "adaptive_max_pool2d"), _adaptive,
          ("input", "output_size", "return_indices"))
_register(_t("nn.functional.interpolate", "nn.functional.upsample"), _interpolate,
          ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"))
_register(_t("nn.functional.upsample_nearest"), _upsample_nearest, ("input", "size", "scale_factor"))
_register(_t("nn.functional.upsample_bilinear"), _upsample_bilinear, ("input", "size", "scale_factor"))
_register(_t("nn.functional.pad"), _pad, ("input", "pad", "mode", "value"))
_register(_t("nn.functional.batch_norm"), _batch_norm,
          ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
_register(_t("nn.functional.layer_norm"), _layer_norm, ("input", "normalized_shape", "weight", "bias", "eps"))
_register(_t("nn.functional.group_norm"), _group_norm, ("input", "num_groups", "weight", "bias", "eps"))
_register(_t("nn.functional.instance_norm"), _instance_norm,
          ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps"))
_register(_t("nn.functional.local_response_norm", "nn.functional.channel_shuffle", "channel_shuffle"),
          _channel_local, ("input", "size"))
_register(_t("nn.functional.normalize"), _normalize, ("input", "p", "dim", "eps"))
_register(_t("nn.functional.softmax", "nn.functional.log_softmax", "nn.functional.softmin", "softmax",
             "log_softmax"), _softmax, ("input", "dim"))
_register(_t("nn.functional.linear"), _linear, ("input", "weight", "bias"))
_REDUCE = ("mean", "sum", "amax", "amin", "max", "min", "logsumexp", "prod", "std", "var", "nansum")
_register(_t(*_REDUCE), _reduction, ("input", "dim", "keepdim"))
_register(_t("flatten", "reshape", "squeeze", "unsqueeze", "unflatten"), _reshape, ("input",))
_register(_t("permute", "transpose", "swapaxes", "swapdims", "movedim", "t"), _permute, ("input",))
_register(_t("cat", "concat", "concatenate"), _cat, ("tensors", "dim"))
_register(_t("stack"), _stack, ("tensors", "dim"))
_register([operator.getitem], _getitem, ("input", "index"))
_register(_t("chunk", "split", "tensor_split"), _pieces, ("input", "chunks"))
_register(_t("unbind"), _unbind, ("input", "dim"))
_register(_t("narrow"), _narrow, ("input", "dim", "start", "length"))
_register(_t("select"), _select, ("input", "dim", "index"))
_register(_t("broadcast_to"), _expand, ("input", "size"))
_register(_t("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"), _metadata, ("input",))
_register([getattr], _getattr, ("input", "name"))
_register(_t("nn.functional.pixel_shuffle", "pixel_shuffle"), _pixel_shuffle, ("input", "upscale_factor"))
_register(_t("nn.functional.pixel_unshuffle", "pixel_unshuffle"), _pixel_unshuffle, ("input", "downscale_factor"))
try:  # torch.fx.wrap-ped by torchvision (EfficientNet, ConvNeXt, ...)
    from torchvision.ops import stochastic_depth as _tv_stochastic_depth

    _register([_tv_stochastic_depth], _stochastic_depth, ("input", "p", "mode", "training"))
except ImportError:  # pragma: no cover
    pass

_methods(_UNARY + ("relu_", "sigmoid_", "tanh_", "clamp_", "clip_", "contiguous", "clone", "detach",
                   "float", "half", "double", "bfloat16", "requires_grad_"), _elementwise)
_methods(("to", "type", "type_as"), _identity)
_methods(tuple(_BINARY) + ("add_", "sub_", "mul_", "div_"), _elementwise, ("other",))
_methods(("pow",), _pow, ("exponent",))
_methods(_REDUCE, _reduction, ("dim", "keepdim"))
_methods(("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"), _reshape)
_methods(("permute", "transpose", "swapaxes", "swapdims", "movedim", "t"), _permute)
_methods(("expand", "expand_as", "broadcast_to"), _expand)
_methods(("repeat",), _repeat, ("repeats",))
_methods(("chunk", "split", "tensor_split"), _pieces, ("chunks",))
_methods(("unbind",), _unbind, ("dim",))
_methods(("narrow",), _narrow, ("dim", "start", "length"))
_methods(("select",), _select, ("dim", "index"))
_methods(("size", "dim", "numel", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor",
          "get_device", "is_contiguous"), _metadata)
_methods(("softmax", "log_softmax"), _softmax, ("dim",))

for _cls in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
             nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid,
             nn.Softsign, nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
             nn.AlphaDropout, nn.FeatureAlphaDropout):
    _MODULES[_cls] = _m_elementwise
_MODULES[nn.Conv2d] = _m_conv
_MODULES[nn.ConvTranspose2d] = _m_conv_transpose
_MODULES[nn.MaxPool2d] = _m_max_pool
_MODULES[nn.AvgPool2d] = _m_avg_pool
_MODULES[nn.LPPool2d] = _m_lp_pool
_MODULES[nn.AdaptiveAvgPool2d] = _m_adaptive
_MODULES[nn.AdaptiveMaxPool2d] = _m_adaptive
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
    _MODULES[_cls] = _m_batch_norm
_MODULES[nn.GroupNorm] = _m_group_norm
for _cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    _MODULES[_cls] = _m_instance_norm
_MODULES[nn.LayerNorm] = _m_layer_norm
for _cls in (nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.ChannelShuffle):
    _MODULES[_cls] = _m_channel_local
_MODULES[nn.Linear] = _m_linear
_MODULES[nn.Flatten] = _m_reshape
_MODULES[nn.Unflatten] = _m_reshape
for _cls in (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d):
    _MODULES[_cls] = _m_softmax
for _cls in (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d):
    _MODULES[_cls] = _m_upsample
for _cls in (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
             getattr(nn, "CircularPad2d", None)):
    if _cls is not None:
        _MODULES[_cls] = _m_pad
_MODULES[nn.PixelShuffle] = _m_pixel_shuffle
_MODULES[nn.PixelUnshuffle] = _m_pixel_unshuffle
