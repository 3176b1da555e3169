r"""Receptive fields of ONNX tensors by interval arithmetic over the graph, confirmed through
ONNX Runtime.

An ONNX graph is already a trace: its nodes are topologically sorted and ONNX shape
inference (with the input fixed to the probed size) gives every tensor's shape. Along the
nodes, the per-axis dependency sets of :class:`~captum_topk.receptive_field.intervals.Deps`
are propagated with the rules PyTorch's tracer uses (:mod:`captum_topk.receptive_field.intervals`:
windows, adaptive bins, padding, resizing, unions, reshapes): ``Conv``, ``ConvTranspose``,
``MaxPool`` / ``AveragePool`` / ``LpPool`` (``ceil_mode``, ``auto_pad``, dilations),
``Global*Pool``, element-wise operators (``Relu``, ``Clip``, ``BatchNormalization``,
``Add``, ``Mul``, ...), ``Concat``, ``Resize`` / ``Upsample`` (ONNX Runtime's coordinate
transforms), ``Pad``, ``Slice``, ``Split``, ``Flatten`` / ``Reshape`` / ``Squeeze`` /
``Unsqueeze`` / ``Transpose``, reductions, ``Softmax``, normalisations, ``Gemm`` /
``MatMul``, ``DepthToSpace`` / ``SpaceToDepth``. Tensors computed only from constants and
shapes (``Shape``, ``Gather`` of a shape, ...) depend on no pixel.

:func:`traced_fields` confirms the predictions with a few NaN probes through ONNX Runtime
(:func:`~captum_topk.receptive_field.probe.confirm_predictions`, on the NaN-safe graph
the full probe uses); :func:`captum_topk.onnx.onnx_receptive_fields` probes fully the
tensors it could not predict or confirm.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx  # the real package
import torch
from onnx import TensorProto, helper, numpy_helper

from ..receptive_field.field import ReceptiveField
from ..receptive_field.intervals import (
    Deps,
    Unsupported,
    apply_maps,
    mix_features,
    pad_map,
    pixel_shuffle,
    pixel_unshuffle,
    resize_map,
    sliding_windows,
    transposed_window_map,
)
from ..receptive_field.probe import confirm_traced
from .graph import graph_inputs, infer_shapes, opset_version

Prediction = Tuple[torch.Tensor, torch.Tensor]
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def code_hash() -> str:
    r"""Hash of this module's source (a key of cached ONNX fields: a changed tracer
    invalidates them; the shared rules are hashed with the receptive-field package)."""
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]


class _Poison:
    def __init__(self, reason: str) -> None:
        self.reason = reason


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------


def traced_fields(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    size: Tuple[int, int],
    channels: int,
    *,
    input_layout: str,
    activation_layout: str,
    forward_for: Callable[[List[str]], Callable[[torch.Tensor], Sequence[torch.Tensor]]],
    batch_size: int,
) -> Tuple[Dict[str, ReceptiveField], Dict[str, str]]:
    r"""Fields of ``tensors`` traced over the graph and confirmed through ONNX Runtime.

    Args:
        model (onnx.ModelProto): the model (not the NaN-safe rewrite: both trace alike).
        tensors (list of str): tensor names.
        size (tuple): ``(H, W)``.
        channels (int): input channels.
        input_layout (str): ``"NCHW"`` or ``"NHWC"``.
        activation_layout (str): ``"NCHW"`` or ``"NHWC"`` (how the 4-D tensors are read).
        forward_for (callable): tensor names -> a forward running them on ``(n, C, H, W)``
            images (an :class:`~captum_topk.onnx.OnnxForward` on the NaN-safe graph).
        batch_size (int): confirmation images per run.

    Returns:
        (dict, dict): tensor -> :class:`ReceptiveField` (``method="trace"``) for the
        confirmed ones; tensor -> reason for the others (to be probed fully).

    Raises:
        ValueError, ChannelsLastError: as the full probe (the confirmation runs its checks).
    """
    predicted = trace_onnx(model, tensors, size, input_layout=input_layout, activation_layout=activation_layout)
    return confirm_traced(forward_for, list(tensors), predicted, size, channels, batch_size)


def trace_onnx(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    size: Tuple[int, int],
    *,
    input_layout: str = "NCHW",
    activation_layout: str = "NCHW",
) -> Dict[str, Union[Prediction, Unsupported]]:
    r"""Predicted dependency sets of ``tensors`` (no model is run).

    Returns:
        dict tensor -> ``(rows, cols)`` (``(h, H)``, ``(w, W)`` bool) or the
        :class:`~captum_topk.receptive_field.intervals.Unsupported` saying why not.
    """
    try:
        tracer = _OnnxTracer(model, size, input_layout)
    except Unsupported as exc:
        return {t: exc for t in tensors}
    deps = tracer.run(set(tensors))
    out: Dict[str, Union[Prediction, Unsupported]] = {}
    for t in tensors:
        d = deps.get(t)
        if isinstance(d, _Poison):
            out[t] = Unsupported(d.reason)
        elif not isinstance(d, Deps):
            out[t] = Unsupported("the tensor does not depend on the input image" if t in deps
                                 else "the tensor is not produced by the graph")
        else:
            try:
                if activation_layout.upper() == "NHWC" and len(d.shape) == 4:
                    d = d.permute([0, 3, 1, 2])
                out[t] = d.field_sets()
            except Unsupported as exc:
                out[t] = exc
    return out


# --------------------------------------------------------------------------------------
# the tracer
# --------------------------------------------------------------------------------------


class _OnnxTracer:
    def __init__(self, model: onnx.ModelProto, size: Tuple[int, int], layout: str) -> None:
        inputs = graph_inputs(model)
        if len(inputs) != 1:
            raise Unsupported(f"a graph with {len(inputs)} inputs")
        self.graph = model.graph
        self.opset = opset_version(model)
        self.layout = layout.upper()
        vi = inputs[0]
        dims = vi.type.tensor_type.shape.dim
        batch = dims[0].dim_value if len(dims) == 4 and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 2
        c_dim = dims[1] if self.layout == "NCHW" else dims[3]
        channels = c_dim.dim_value if c_dim.HasField("dim_value") and c_dim.dim_value > 0 else 3
        shape = [batch, channels, *size] if self.layout == "NCHW" else [batch, *size, channels]
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
        for vi_fixed in graph_inputs(fixed):
            if vi_fixed.name == vi.name:
                vi_fixed.type.tensor_type.ClearField("shape")
                for s in shape:
                    vi_fixed.type.tensor_type.shape.dim.add().dim_value = int(s)
        self.input = vi.name
        self.input_shape = tuple(shape)
        self.consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        # Shape inference, then constant folding of what only depends on constants and
        # shapes (pads, sizes, axes computed at run time), then inference again with the
        # folded values as initializers, until nothing new is folded.
        for _ in range(4):
            self.shapes = infer_shapes(fixed)
            folded = [n for n in fixed.graph.node if self._fold(n)]
            if not folded:
                break
            done = {id(n) for n in folded}
            keep = [n for n in fixed.graph.node if id(n) not in done]
            del fixed.graph.node[:]
            fixed.graph.node.extend(keep)
            for n in folded:
                for name in n.output:
                    if name and name in self.consts:
                        fixed.graph.initializer.append(numpy_helper.from_array(self.consts[name], name))

    # -- helpers -------------------------------------------------------------------------

    def shape(self, name: str) -> Tuple[int, ...]:
        if name in self.consts:
            return tuple(int(d) for d in self.consts[name].shape)
        dims, _ = self.shapes.get(name, (None, 0))
        if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise Unsupported(f"ONNX shape inference gives no static shape for {name!r}")
        return tuple(int(d) for d in dims)

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise Unsupported(f"input {name!r} is not a constant")
        return self.consts[name]

    def _fold(self, node: onnx.NodeProto) -> bool:
        """Compute a node from constants and known shapes only (``Shape`` of a tensor that
        shape inference knows, or any operator whose inputs are all constants, by the ONNX
        reference runtime); True when its outputs joined :attr:`consts`."""
        if not node.output or all(o in self.consts for o in node.output if o):
            return False
        if node.op_type in ("Shape", "Size") and node.input:
            try:
                dims = self.input_shape if node.input[0] == self.input else self.shape(node.input[0])
            except Unsupported:
                return False
            shape = np.asarray(dims, dtype=np.int64)
            if node.op_type == "Size":
                self.consts[node.output[0]] = np.asarray(shape.prod(), dtype=np.int64)
            else:
                a = _attrs(node)
                self.consts[node.output[0]] = shape[a.get("start", 0): a.get("end", len(shape))]
            return True
        if any(i and i not in self.consts for i in node.input) or node.domain not in ("", "ai.onnx"):
            return False
        try:
            from onnx.reference import ReferenceEvaluator  # imported only when needed (slow)

            evaluator = ReferenceEvaluator(node, opsets={"": self.opset})
            values = evaluator.run(None, {i: self.consts[i] for i in node.input if i})
        except Exception:  # an operator the reference runtime lacks: left unknown
            return False
        for name, value in zip(node.output, values):
            if name:
                self.consts[name] = np.asarray(value)
        return True

    def run(self, wanted: set) -> Dict[str, Any]:
        deps: Dict[str, Any] = {self.input: Deps.image(self.input_shape, self.layout)}
        remaining = set(wanted) - {self.input}
        for node in self.graph.node:
            if not remaining:
                break
            ins = [deps.get(i) if i else None for i in node.input]
            poison = next((d for d in ins if isinstance(d, _Poison)), None)
            if poison is not None:
                outs: List[Any] = [poison] * len(node.output)
            elif all(d is None for d in ins):
                outs = [None] * len(node.output)
            else:
                try:
                    if node.domain not in ("", "ai.onnx"):
                        raise Unsupported(f"custom operator {node.domain}.{node.op_type}")
                    rule = _RULES.get(node.op_type)
                    if rule is None:
                        raise Unsupported("unknown operator")
                    got = rule(self, node, ins)
                    outs = list(got) if isinstance(got, (list, tuple)) else [got]
                    outs += [None] * (len(node.output) - len(outs))
                    for name, d in zip(node.output, outs):
                        if isinstance(d, Deps) and name:
                            d.check(self.shape(name))
                except Unsupported as exc:
                    outs = [_Poison(f"{exc} (at {node.op_type} node {node.name or node.output[0]!r})")] * len(node.output)
            for name, d in zip(node.output, outs):
                if name:
                    deps[name] = d
                    remaining.discard(name)
        return deps


def _attrs(node: onnx.NodeProto) -> Dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _only(ins: Sequence[Any], k: int = 0) -> Deps:
    for i, d in enumerate(ins):
        if i != k and d is not None:
            raise Unsupported("a weight / parameter input depends on the image")
    d = ins[k]
    if not isinstance(d, Deps):
        raise Unsupported("internal: no deps for the data input")
    return d


def _pads(a: Dict[str, Any], in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> Tuple[List[int], List[int]]:
    n = len(in_sizes)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * 2 * n))
        return pads[:n], pads[n:]
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            out = -(-in_sizes[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i])
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin, end
    raise Unsupported(f"auto_pad {auto!r}")


# --------------------------------------------------------------------------------------
# rules: (tracer, node, input deps) -> output deps (one or a list)
# --------------------------------------------------------------------------------------


def _conv(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    a = _attrs(node)
    xs, ws, ys = t.shape(node.input[0]), t.shape(node.input[1]), t.shape(node.output[0])
    if len(xs) != 4:
        raise Unsupported("a convolution that is not 2-D")
    kernel = list(a.get("kernel_shape", ws[2:]))
    strides, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    begin, end = _pads(a, xs[2:], kernel, strides, dil)
    d = mix_features(d, 1, ys[1], full=int(a.get("group", 1)) == 1)
    return sliding_windows(d, xs, ys, kernel, strides, begin, end, dil)


def _conv_transpose(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    a = _attrs(node)
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in a:
        raise Unsupported("ConvTranspose with auto_pad / output_shape")
    xs, ws, ys = t.shape(node.input[0]), t.shape(node.input[1]), t.shape(node.output[0])
    if len(xs) != 4:
        raise Unsupported("a transposed convolution that is not 2-D")
    kernel = list(a.get("kernel_shape", ws[2:]))
    strides, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    d = mix_features(d, 1, ys[1], full=int(a.get("group", 1)) == 1)
    return apply_maps(d, {dim: transposed_window_map(xs[dim], ys[dim], kernel[i], strides[i], pads[i], dil[i])
                          for i, dim in enumerate((2, 3))})


def _pool(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Any:
    d = _only(ins)
    a = _attrs(node)
    xs, ys = t.shape(node.input[0]), t.shape(node.output[0])
    if len(xs) != 4:
        raise Unsupported("a pooling that is not 2-D")
    kernel = list(a["kernel_shape"])
    strides, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    begin, end = _pads(a, xs[2:], kernel, strides, dil)
    out = sliding_windows(d, xs, ys, kernel, strides, begin, end, dil, bool(a.get("ceil_mode", 0)))
    return [out, out]


def _global_pool(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    return d.reduce(list(range(2, len(d.shape))), keepdim=True)


def _elementwise(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    out = Deps.union([d for d in ins if d is not None], t.shape(node.output[0]))
    assert out is not None
    return out


def _unary(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Any:
    d = _only(ins)
    if node.op_type == "BatchNormalization" and int(_attrs(node).get("training_mode", 0)):
        raise Unsupported("batch norm in training mode")
    if node.op_type == "Cast" and int(_attrs(node)["to"]) not in _FLOATS:
        raise Unsupported("a cast to a type that cannot hold NaN")
    return Deps.union([d], t.shape(node.output[0]))


def _pow(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    if ins[1] is None and np.any(t.const(node.input[1]) == 0):
        raise Unsupported("a power with exponent 0 (NaN ** 0 == 1)")
    return _elementwise(t, node, ins)


def _concat(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Optional[Deps]:
    axis = int(_attrs(node)["axis"])
    return Deps.cat(ins, [t.shape(i) for i in node.input], axis, t.shape(node.output[0]))


def _reshape(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    return _only(ins).reshape(t.shape(node.output[0]))


def _transpose(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    perm = _attrs(node).get("perm", list(range(len(d.shape)))[::-1])
    return d.permute(list(perm))


def _axes(t: _OnnxTracer, node: onnx.NodeProto, a: Dict[str, Any], ndim: int) -> Optional[List[int]]:
    if len(node.input) > 1 and node.input[1]:
        axes = [int(x) for x in np.atleast_1d(t.const(node.input[1]))]
    else:
        axes = a.get("axes")
    return None if axes is None else [int(x) % ndim for x in axes]


def _reduce(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    a = _attrs(node)
    axes = _axes(t, node, a, len(d.shape))
    if not axes:
        if axes is not None and int(a.get("noop_with_empty_axes", 0)):
            return d
        axes = list(range(len(d.shape)))
    return d.reduce(axes, keepdim=bool(int(a.get("keepdims", 1))))


def _softmax(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    nd = len(d.shape)
    if t.opset < 13:
        axis = int(_attrs(node).get("axis", 1)) % nd
        return d.mix(list(range(axis, nd)))
    return d.mix([int(_attrs(node).get("axis", -1)) % nd])


def _gemm(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    if int(_attrs(node).get("transA", 0)) or len(d.shape) != 2:
        raise Unsupported("Gemm with a transposed image operand")
    return mix_features(d, 1, t.shape(node.output[0])[1])


def _matmul(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    ys = t.shape(node.output[0])
    if len(t.shape(node.input[1])) != 2 or ys[:-1] != d.shape[:-1]:
        raise Unsupported("a MatMul other than a linear map of the last dimension")
    return mix_features(d, -1, ys[-1])


def _mix_from(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Any:
    d = _only(ins)
    nd = len(d.shape)
    if node.op_type == "LayerNormalization":
        axis = int(_attrs(node).get("axis", -1)) % nd
        out = d.mix(list(range(axis, nd)))
        return [out] + [out.reduce(list(range(axis, nd)), keepdim=True)] * (len(node.output) - 1)
    return d.mix(list(range(2, nd)))  # InstanceNormalization, GroupNormalization, MeanVarianceNormalization


def _channel_local(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    if len(d.dims) < 2 or d.dims[1] is not None:
        raise Unsupported("a channel operation on a tensor whose dimension 1 is not channels")
    return Deps.union([d], t.shape(node.output[0]))


def _resize(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    a = _attrs(node)
    xs, ys = t.shape(node.input[0]), t.shape(node.output[0])
    mode = a.get("mode", "nearest")
    if node.op_type == "Upsample" or t.opset < 11:
        coord, nearest = "asymmetric", "simple"
        scales_name = node.input[1] if len(node.input) > 1 else ""
        scales = a.get("scales") if not scales_name else t.const(scales_name)
    else:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
        if int(a.get("antialias", 0)) or "axes" in a or int(a.get("exclude_outside", 0)):
            raise Unsupported("Resize with antialias / axes / exclude_outside")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Unsupported("Resize keeping the aspect ratio")
        scales_name = node.input[2] if len(node.input) > 2 else ""
        scales = t.const(scales_name) if scales_name else None
        if scales is not None and scales.size == 0:
            scales = None
    if len(xs) != 4 or xs[:2] != ys[:2]:
        raise Unsupported("a Resize of other dimensions than the last two")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"Resize mode {mode!r}")
    maps = {}
    for dim in (2, 3):
        scale = float(np.asarray(scales, dtype=np.float32).reshape(-1)[dim]) if scales is not None else None
        maps[dim] = resize_map(xs[dim], ys[dim], mode, coord, nearest=nearest, scale=scale)
    return apply_maps(d, maps)


def _pad(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    a = _attrs(node)
    if len(node.input) > 3 and node.input[3]:
        raise Unsupported("Pad with axes")
    pads = a.get("pads") if t.opset < 11 else t.const(node.input[1]).tolist()
    mode = a.get("mode", "constant")
    nd = len(d.shape)
    for dim in range(nd):
        before, after = int(pads[dim]), int(pads[dim + nd])
        if before or after:
            index_map = pad_map(d.shape[dim], before, after, mode)
            shape = list(d.shape)
            shape[dim] = index_map.shape[0]
            d = d.map_dim(dim, index_map, shape)
    return d


def _slice(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    nd = len(d.shape)
    if t.opset < 10:
        a = _attrs(node)
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts = t.const(node.input[1]).tolist()
        ends = t.const(node.input[2]).tolist()
        axes = t.const(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
        steps = t.const(node.input[4]).tolist() if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = int(ax) % nd
        n = d.shape[ax]
        d = d.select(ax, range(*slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)), int(st)).indices(n)))
    return d


def _split(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> List[Deps]:
    d = _only(ins)
    axis = int(_attrs(node).get("axis", 0)) % len(d.shape)
    out, start = [], 0
    for name in node.output:
        n = t.shape(name)[axis]
        out.append(d.select(axis, range(start, start + n)))
        start += n
    return out


def _gather(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    d = _only(ins)
    axis = int(_attrs(node).get("axis", 0)) % len(d.shape)
    idx = t.const(node.input[1])
    if idx.ndim == 0:
        return d.drop(axis, int(idx))
    if idx.ndim == 1:
        return d.select(axis, [int(i) % d.shape[axis] for i in idx])
    raise Unsupported("Gather with multi-dimensional indices")


def _expand(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    out = Deps.union([_only(ins)], t.shape(node.output[0]))
    assert out is not None
    return out


def _depth_to_space(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    return pixel_shuffle(_only(ins), t.shape(node.output[0]), int(_attrs(node)["blocksize"]))


def _space_to_depth(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> Deps:
    return pixel_unshuffle(_only(ins), t.shape(node.output[0]), int(_attrs(node)["blocksize"]))


def _shape_only(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> None:
    return None


def _dropout(t: _OnnxTracer, node: onnx.NodeProto, ins: List[Any]) -> List[Any]:
    return [Deps.union([_only(ins)], t.shape(node.output[0])), None]


_RULES: Dict[str, Callable[[_OnnxTracer, onnx.NodeProto, List[Any]], Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "GlobalLpPool": _global_pool,
    "Concat": _concat,
    "Flatten": _reshape,
    "Reshape": _reshape,
    "Squeeze": _reshape,
    "Unsqueeze": _reshape,
    "Transpose": _transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "LayerNormalization": _mix_from,
    "InstanceNormalization": _mix_from,
    "GroupNormalization": _mix_from,
    "MeanVarianceNormalization": _mix_from,
    "LRN": _channel_local,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "Slice": _slice,
    "Split": _split,
    "Gather": _gather,
    "Expand": _expand,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "Shape": _shape_only,
    "Size": _shape_only,
    "Dropout": _dropout,
    "Pow": _pow,
}
for _op in ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
            "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs",
            "Identity", "Clip", "Cast", "BatchNormalization", "Floor", "Ceil", "Round"):
    _RULES[_op] = _unary
for _op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"):
    _RULES[_op] = _elementwise
for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
            "ReduceProd", "ReduceSumSquare", "ReduceLogSum"):
    _RULES[_op] = _reduce
