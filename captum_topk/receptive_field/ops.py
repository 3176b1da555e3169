r"""The rules of the ``torch.fx`` tracer (:mod:`.trace`): for every known function, tensor
method and leaf module, how the dependency sets of its result follow from its arguments'.

A rule receives a :class:`Call` (the real argument values of the shape pass, by parameter
name, and the :class:`~.intervals.Deps` of those that depend on the image) and returns the
result's deps (a tuple for a tuple of tensors), or raises
:class:`~.intervals.Unsupported`. The registries at the end map ``torch`` /
``torch.nn.functional`` callables (:data:`FUNCTIONS`, read through :func:`function_rule`,
which registers the rules of optional packages such as ``torchvision.ops`` on first use),
tensor method names (:data:`METHODS`) and ``nn.Module`` classes (:data:`MODULES`, used only
when the module's ``forward`` is the class's own) to their rules. The per-axis index maps and the joins are
those of :mod:`.intervals`, shared with the ONNX tracer.
"""

from __future__ import annotations

import importlib
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


def flat(value: Any) -> List[Any]:
    out: List[Any] = []
    fx.node.map_aggregate(value, out.append)
    return out


class Call:
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
            if name != "input" and any(x is not None for x in flat(d)):
                raise Unsupported(f"argument {name!r} depends on the image")
        for _, d in self.extra:
            if any(x is not None for x in flat(d)):
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


def _int_tuple(v: Any, n: int = 2) -> Tuple[int, ...]:
    r"""A size / stride / padding argument as a tuple of ints: a number repeated ``n`` times,
    a 1-tuple repeated ``n`` times, a longer sequence as it is."""
    if isinstance(v, (int, float)):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def _elementwise(c: Call) -> Optional[Deps]:
    if not isinstance(c.out, Tensor) or not (c.out.is_floating_point() or c.out.is_complex()):
        raise Unsupported("a result that cannot hold NaN")
    operands = [d for d in flat((c.dargs, [c.deps_of.get(k) for k in c.kwargs])) if d is not None]
    for d in operands:
        if not isinstance(d, Deps):
            raise Unsupported("a non-tensor operand depends on the image")
    return Deps.union(operands, c.shape)


def _pow(c: Call) -> Optional[Deps]:
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
    p = _int_tuple(padding)
    return p, p


def _conv(c: Call) -> Deps:
    d = c.only_input()
    x, weight = c.get("input"), c.get("weight")
    if x.dim() != 4 or weight.dim() != 4:
        raise Unsupported("a convolution that is not 2-D")
    kernel = tuple(weight.shape[2:])
    stride, dilation = _int_tuple(c.get("stride", 1)), _int_tuple(c.get("dilation", 1))
    begin, end = _conv_pads(c.get("padding", 0), kernel, dilation)
    groups = int(c.get("groups", 1))
    d = mix_features(d, 1, c.shape[1], full=groups == 1)
    return sliding_windows(d, x.shape, c.shape, kernel, stride, begin, end, dilation)


def _conv_transpose(c: Call) -> Deps:
    d = c.only_input()
    x, weight = c.get("input"), c.get("weight")
    if x.dim() != 4 or weight.dim() != 4:
        raise Unsupported("a transposed convolution that is not 2-D")
    kernel = tuple(weight.shape[2:])
    stride, dilation = _int_tuple(c.get("stride", 1)), _int_tuple(c.get("dilation", 1))
    padding = _int_tuple(c.get("padding", 0))
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


def _pool(c: Call, dilation_ok: bool = True) -> Any:
    d = c.only_input()
    x = c.get("input")
    kernel = _int_tuple(c.get("kernel_size"))
    stride = _int_tuple(c.get("stride") or kernel)
    padding = _int_tuple(c.get("padding", 0))
    dilation = _int_tuple(c.get("dilation", 1)) if dilation_ok else (1, 1)
    out = c.out[0] if isinstance(c.out, tuple) else c.out
    d = sliding_windows(d, x.shape, out.shape, kernel, stride, padding, padding, dilation, bool(c.get("ceil_mode", False)))
    return (d, d) if isinstance(c.out, tuple) else d


def _max_pool(c: Call) -> Any:
    return _pool(c)


def _avg_pool(c: Call) -> Any:
    return _pool(c, dilation_ok=False)


def _lp_pool(c: Call) -> Any:
    d = c.only_input()
    kernel = _int_tuple(c.get("kernel_size"))
    stride = _int_tuple(c.get("stride") or kernel)
    return sliding_windows(d, c.get("input").shape, c.shape, kernel, stride, (0, 0), (0, 0), (1, 1),
                      bool(c.get("ceil_mode", False)))


def _adaptive(c: Call) -> Any:
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


def _interpolate(c: Call) -> Deps:
    return _interpolate_deps(c.only_input(), c.get("input"), c.out, c.get("mode", "nearest"),
                             c.get("align_corners"), c.get("scale_factor"),
                             c.get("recompute_scale_factor"), bool(c.get("antialias", False)))


def _upsample_nearest(c: Call) -> Deps:
    return _interpolate_deps(c.only_input(), c.get("input"), c.out, "nearest", None, c.get("scale_factor"), None, False)


def _upsample_bilinear(c: Call) -> Deps:
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


def _pad(c: Call) -> Deps:
    mode = c.get("mode", "constant")
    return _pad_deps(c.only_input(), c.get("pad"), mode)


def _batch_norm(c: Call) -> Deps:
    if c.get("training", False) or c.get("running_mean") is None:
        raise Unsupported("batch norm with batch statistics (mixes the images of a batch)")
    return Deps.union([c.only_input()], c.shape)


def _layer_norm(c: Call) -> Deps:
    d = c.only_input()
    n = len(_int_tuple(c.get("normalized_shape"), 1))
    return d.mix(list(range(len(d.shape) - n, len(d.shape))))


def _group_norm(c: Call) -> Deps:
    d = c.only_input()
    return d.mix(list(range(2, len(d.shape))))


def _instance_norm(c: Call) -> Deps:
    d = c.only_input()
    if c.get("use_input_stats", True):
        return d.mix(list(range(2, len(d.shape))))
    return d


def _channel_local(c: Call) -> Deps:
    """Local response norm, channel shuffle: channels with channels only."""
    d = c.only_input()
    if len(d.dims) < 2 or d.dims[1] is not None:
        raise Unsupported("a channel operation on a tensor whose dimension 1 is not channels")
    return Deps.union([d], c.shape)


def _normalize(c: Call) -> Deps:
    return c.only_input().mix([int(c.get("dim", 1))])


def _softmax(c: Call) -> Deps:
    dim = c.get("dim")
    if dim is None:
        raise Unsupported("softmax with an implicit dimension")
    return c.only_input().mix([int(dim)])


def _linear(c: Call) -> Deps:
    return mix_features(c.only_input(), -1, c.shape[-1])


def _dims_arg(value: Any, ndim: int) -> List[int]:
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return list(range(ndim))
    if isinstance(value, int):
        return [value % ndim]
    return [int(v) % ndim for v in value]


def _reduction(c: Call) -> Any:
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


def _reshape(c: Call) -> Deps:
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: reshape of a constant")
    return d.reshape(c.shape)


def _expand(c: Call) -> Deps:
    return Deps.union([c.only_input()], c.shape)


def _repeat(c: Call) -> Deps:
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


def _permute_order(c: Call, ndim: int) -> List[int]:
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


def _permute(c: Call) -> Deps:
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: permute of a constant")
    return d.permute(_permute_order(c, len(d.shape)))


def _cat(c: Call) -> Optional[Deps]:
    tensors = list(c.get("tensors"))
    deps = c.deps_of.get("tensors")
    if deps is None or len(deps) != len(tensors):
        raise Unsupported("a concatenation of something else than a list of tensors")
    dim = int(c.get("dim", c.get("axis", 0)))
    for d in deps:
        if d is not None and not isinstance(d, Deps):
            raise Unsupported("a concatenation of non-tensors")
    return Deps.cat(list(deps), [t.shape for t in tensors], dim, c.shape)


def _stack(c: Call) -> Optional[Deps]:
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


def _getitem(c: Call) -> Any:
    obj, idx = c.args[0], c.args[1]
    dobj = c.dargs[0]
    if not isinstance(obj, Tensor):
        if isinstance(dobj, (tuple, list)):
            return dobj[idx]
        raise Unsupported("indexing a non-tensor that depends on the image")
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: indexing a constant")
    if any(x is not None for x in flat(c.dargs[1])):
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


def _pieces(c: Call, dim_name: str = "dim", default_dim: int = 0) -> Tuple[Deps, ...]:
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


def _unbind(c: Call) -> Tuple[Deps, ...]:
    d = c.only_input()
    dim = int(c.get("dim", 0)) % len(d.shape)
    return tuple(d.drop(dim, i) for i in range(d.shape[dim]))


def _narrow(c: Call) -> Deps:
    d = c.only_input()
    dim, start, length = int(c.get("dim")), int(c.get("start")), int(c.get("length"))
    dim %= len(d.shape)
    start %= d.shape[dim]
    return d.select(dim, range(start, start + length))


def _select(c: Call) -> Deps:
    d = c.only_input()
    return d.drop(int(c.get("dim")), int(c.get("index")))


def _identity(c: Call) -> Deps:
    d = c.deps("input")
    if d is None:
        raise Unsupported("internal: identity of a constant")
    if isinstance(c.out, Tensor) and not (c.out.is_floating_point() or c.out.is_complex()):
        raise Unsupported(f"a conversion to {c.out.dtype}, which cannot hold NaN")
    return Deps.union([d], c.shape)


def _metadata(c: Call) -> None:
    return None


def _getattr(c: Call) -> Any:
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


def _pixel_shuffle(c: Call) -> Deps:
    return pixel_shuffle(c.only_input(), c.shape, int(c.get("upscale_factor")))


def _pixel_unshuffle(c: Call) -> Deps:
    return pixel_unshuffle(c.only_input(), c.shape, int(c.get("downscale_factor")))


def _stochastic_depth(c: Call) -> Deps:
    return Deps.union([c.only_input()], c.shape)


# -- modules -----------------------------------------------------------------------------


def _m_conv(m: nn.Conv2d, c: Call) -> Deps:
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


def _m_conv_transpose(m: nn.ConvTranspose2d, c: Call) -> Deps:
    call = Call(("input", "weight", "stride", "padding", "dilation", "groups"),
                 (c.get("input"), m.weight, m.stride, m.padding, m.dilation, m.groups),
                 {}, (c.deps("input"), None, None, None, None, None), {}, c.out, m)
    if c.extra or len(c.kwargs) > 0:
        raise Unsupported("ConvTranspose2d with an output_size argument")
    return _conv_transpose(call)


def _with_params(c: Call, **params: Any) -> Call:
    """``c`` with module attributes as further keyword arguments."""
    out = Call(("input",), c.args[:1], {}, c.dargs[:1], {}, c.out, c.what)
    out.values.update(params)
    out.deps_of.update({k: None for k in params})
    if c.extra or c.kwargs:
        raise Unsupported("a module called with extra arguments")
    return out


def _m_max_pool(m: nn.MaxPool2d, c: Call) -> Any:
    return _pool(_with_params(c, kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation, ceil_mode=m.ceil_mode))


def _m_avg_pool(m: nn.AvgPool2d, c: Call) -> Any:
    return _pool(_with_params(c, kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                              ceil_mode=m.ceil_mode), dilation_ok=False)


def _m_lp_pool(m: nn.LPPool2d, c: Call) -> Any:
    return _lp_pool(_with_params(c, kernel_size=m.kernel_size, stride=m.stride, ceil_mode=m.ceil_mode))


def _m_adaptive(m: nn.Module, c: Call) -> Any:
    return _adaptive(_with_params(c))


def _m_batch_norm(m: nn.modules.batchnorm._BatchNorm, c: Call) -> Deps:
    if m.training or m.running_mean is None:
        raise Unsupported("batch norm with batch statistics (mixes the images of a batch)")
    return Deps.union([c.only_input()], c.shape)


def _m_group_norm(m: nn.Module, c: Call) -> Deps:
    return _group_norm(_with_params(c))


def _m_instance_norm(m: nn.modules.instancenorm._InstanceNorm, c: Call) -> Deps:
    return _instance_norm(_with_params(c, use_input_stats=m.training or not m.track_running_stats))


def _m_layer_norm(m: nn.LayerNorm, c: Call) -> Deps:
    return _layer_norm(_with_params(c, normalized_shape=m.normalized_shape))


def _m_channel_local(m: nn.Module, c: Call) -> Deps:
    return _channel_local(_with_params(c))


def _m_linear(m: nn.Linear, c: Call) -> Deps:
    return _linear(_with_params(c))


def _m_reshape(m: nn.Module, c: Call) -> Deps:
    return _reshape(_with_params(c))


def _m_elementwise(m: nn.Module, c: Call) -> Deps:
    if c.extra or c.kwargs:
        raise Unsupported("a module called with extra arguments")
    return Deps.union([c.only_input()], c.shape)


def _m_softmax(m: nn.Module, c: Call) -> Deps:
    dim = -3 if isinstance(m, nn.Softmax2d) else m.dim
    return _softmax(_with_params(c, dim=dim))


def _m_upsample(m: nn.Upsample, c: Call) -> Deps:
    d = c.only_input()
    mode = m.mode
    align = m.align_corners
    if isinstance(m, nn.UpsamplingBilinear2d):
        align = True
    return _interpolate_deps(d, c.get("input"), c.out, mode, align, m.scale_factor,
                             getattr(m, "recompute_scale_factor", None), False)


def _m_pad(m: nn.Module, c: Call) -> Deps:
    mode = {nn.ZeroPad2d: "constant", nn.ConstantPad2d: "constant", nn.ReflectionPad2d: "reflect",
            nn.ReplicationPad2d: "replicate"}.get(type(m))
    if mode is None and type(m).__name__ == "CircularPad2d":
        mode = "circular"
    if mode is None:
        raise Unsupported(f"padding module {type(m).__name__}")
    return _pad_deps(c.only_input(), m.padding, mode)


def _m_pixel_shuffle(m: nn.PixelShuffle, c: Call) -> Deps:
    return _pixel_shuffle(_with_params(c, upscale_factor=m.upscale_factor))


def _m_pixel_unshuffle(m: nn.PixelUnshuffle, c: Call) -> Deps:
    return _pixel_unshuffle(_with_params(c, downscale_factor=m.downscale_factor))


# --------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------

FUNCTIONS: Dict[Any, Tuple[Callable[[Call], Any], Sequence[str]]] = {}
METHODS: Dict[str, Tuple[Callable[[Call], Any], Sequence[str]]] = {}
MODULES: Dict[type, Callable[[Any, Call], Any]] = {}


def _register(targets: Sequence[Any], rule: Callable[[Call], Any], params: Sequence[str]) -> None:
    for t in targets:
        if t is not None:
            FUNCTIONS[t] = (rule, tuple(params))


def _methods(names: Sequence[str], rule: Callable[[Call], Any], params: Sequence[str] = ()) -> None:
    for n in names:
        METHODS[n] = (rule, tuple(params))


#: Rules for functions of optional packages, by the module that defines them. They are registered
#: when a trace first meets a function of that module (which is then loaded already), so that
#: importing the tracer does not import them: ``torchvision.ops`` pulls in ``torch._dynamo``.
_OPTIONAL: Dict[str, List[Tuple[str, Callable[[Call], Any], Sequence[str]]]] = {
    # torch.fx.wrap-ped by torchvision (EfficientNet, ConvNeXt, ...)
    "torchvision.ops.stochastic_depth": [("stochastic_depth", _stochastic_depth, ("input", "p", "mode", "training"))],
}


def function_rule(target: Any) -> Optional[Tuple[Callable[[Call], Any], Sequence[str]]]:
    r"""The rule and parameter names of a ``call_function`` target, or ``None`` when none is known.

    Args:
        target (callable): a ``torch.fx`` node's target.

    Returns:
        (rule, parameter names) or ``None``.
    """
    entry = FUNCTIONS.get(target)
    if entry is None:
        module = getattr(target, "__module__", None)
        rules = _OPTIONAL.pop(module, None) if isinstance(module, str) else None
        if rules:
            defining = importlib.import_module(module)
            for name, rule, params in rules:
                _register([getattr(defining, name, None)], rule, params)
            entry = FUNCTIONS.get(target)
    return entry


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
    MODULES[_cls] = _m_elementwise
MODULES[nn.Conv2d] = _m_conv
MODULES[nn.ConvTranspose2d] = _m_conv_transpose
MODULES[nn.MaxPool2d] = _m_max_pool
MODULES[nn.AvgPool2d] = _m_avg_pool
MODULES[nn.LPPool2d] = _m_lp_pool
MODULES[nn.AdaptiveAvgPool2d] = _m_adaptive
MODULES[nn.AdaptiveMaxPool2d] = _m_adaptive
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
    MODULES[_cls] = _m_batch_norm
MODULES[nn.GroupNorm] = _m_group_norm
for _cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    MODULES[_cls] = _m_instance_norm
MODULES[nn.LayerNorm] = _m_layer_norm
for _cls in (nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.ChannelShuffle):
    MODULES[_cls] = _m_channel_local
MODULES[nn.Linear] = _m_linear
MODULES[nn.Flatten] = _m_reshape
MODULES[nn.Unflatten] = _m_reshape
for _cls in (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d):
    MODULES[_cls] = _m_softmax
for _cls in (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d):
    MODULES[_cls] = _m_upsample
for _cls in (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
             getattr(nn, "CircularPad2d", None)):
    if _cls is not None:
        MODULES[_cls] = _m_pad
MODULES[nn.PixelShuffle] = _m_pixel_shuffle
MODULES[nn.PixelUnshuffle] = _m_pixel_unshuffle
