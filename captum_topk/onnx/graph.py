r"""ONNX graph utilities: safe loading, the image input, intermediate tensors and their
shapes, exposing chosen tensors as graph outputs (with pruning) and a NaN-safe rewrite
used to probe receptive fields through ONNX Runtime.

Nothing here runs a model: see :mod:`captum_topk.onnx.runtime` for that.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import difflib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import onnx  # the real package: absolute import, never this subpackage
from onnx import TensorProto, helper, numpy_helper, shape_inference

ModelLike = Union[str, os.PathLike, bytes, onnx.ModelProto]
Dim = Union[int, str, None]

_FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16",
                TensorProto.DOUBLE: "float64", TensorProto.BFLOAT16: "bfloat16"}
_TWO_GB = 2 ** 31


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def load_onnx(model: ModelLike, check: bool = True) -> onnx.ModelProto:
    r"""Read an ONNX model with clear errors for a missing, corrupt or truncated file.

    Args:
        model (str, PathLike, bytes or onnx.ModelProto): a ``.onnx`` file (external data
            beside it is loaded too), its bytes, or an already loaded proto (returned as is).
        check (bool): run ``onnx.checker.check_model`` on it.
    Returns:
        onnx.ModelProto
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid ONNX model (not protobuf, truncated, empty,
            or rejected by the checker), naming the file and the reason.
    Example::
        >>> proto = load_onnx("onnx_models/resnet18.onnx")
    """
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "the given ModelProto"
    else:
        where = "the given bytes" if isinstance(model, (bytes, bytearray)) else str(model)
        if not isinstance(model, (bytes, bytearray)):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            proto = (onnx.load_model_from_string(bytes(model)) if isinstance(model, (bytes, bytearray))
                     else onnx.load(str(model)))
        except Exception as exc:  # DecodeError, truncated external data, ...
            raise ValueError(
                f"{where} is not a readable ONNX model (corrupt or truncated file?): "
                f"{type(exc).__name__}: {exc}. Re-export or re-download it."
            ) from exc
    if check:
        if not proto.graph.node and not proto.graph.output:
            raise ValueError(
                f"{where} is not a valid ONNX model: it holds no graph (an empty or truncated "
                "file?). Re-export or re-download it."
            )
        on_disk = isinstance(model, (str, os.PathLike))
        # the checker takes a path for models over protobuf's 2 GB limit
        target = str(model) if on_disk and Path(model).stat().st_size >= _TWO_GB else proto
        try:
            onnx.checker.check_model(target)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"{where} is not a valid ONNX model (corrupt or truncated file?): onnx.checker: {first}"
            ) from exc
    return proto


def opset_version(model: onnx.ModelProto) -> int:
    r"""The default-domain (``ai.onnx``) opset the model imports."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 1


# --------------------------------------------------------------------------------------
# the image input
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    r"""The image input of an ONNX model.

    Attributes:
        name (str): the graph input name.
        shape (tuple): its declared dims (int, symbolic name, or None when unknown).
        layout (str): ``"NCHW"`` or ``"NHWC"``: how images must be fed.
        channels (int or None): image channels when static.
        size (tuple[int, int] or None): static ``(H, W)``, None when dynamic.
        batch (int or None): a fixed batch size, None when the batch dim is dynamic.
        dtype (str): numpy dtype name of the input.
    """

    name: str
    shape: Tuple[Dim, ...]
    layout: str
    channels: Optional[int]
    size: Optional[Tuple[int, int]]
    batch: Optional[int]
    dtype: str = "float32"

    def describe(self) -> str:
        dims = ["N" if self.batch is None else str(self.batch)]
        c = str(self.channels) if self.channels else "C"
        hw = [str(s) for s in self.size] if self.size else ["H", "W"]
        dims += [c, *hw] if self.layout == "NCHW" else [*hw, c]
        return f"{self.name}: {'x'.join(dims)} ({self.layout})"


def _dims(value_info: onnx.ValueInfoProto) -> Optional[Tuple[Dim, ...]]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: List[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def graph_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    r"""The real inputs of the graph (initializer-backed inputs of old IR versions excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_spec(model: onnx.ModelProto, layout: str = "auto") -> InputSpec:
    r"""Describe the single image input of ``model``.

    Args:
        model (onnx.ModelProto): the model.
        layout (str): ``"auto"`` (``NHWC`` when the last dim is 1 or 3 and the second is
            not, else ``NCHW``), ``"NCHW"`` or ``"NHWC"``.
    Returns:
        InputSpec
    Raises:
        ValueError: the model has several inputs, or its input is not a 4-D float tensor.
    """
    ins = graph_inputs(model)
    if len(ins) != 1:
        raise ValueError(
            f"captum-topk mines image models with exactly one input; this ONNX model has "
            f"{len(ins)}: {', '.join(i.name for i in ins) or '(none)'}."
        )
    vi = ins[0]
    elem = vi.type.tensor_type.elem_type
    if elem not in _FLOAT_TYPES:
        raise ValueError(
            f"The ONNX input {vi.name!r} has element type "
            f"{TensorProto.DataType.Name(elem) if elem else 'unknown'}; an image input must be float."
        )
    dims = _dims(vi)
    if dims is None or len(dims) != 4:
        raise ValueError(
            f"The ONNX input {vi.name!r} has shape {dims}; captum-topk needs a 4-D image input "
            "(N, C, H, W) or (N, H, W, C)."
        )
    layout = layout.upper()
    if layout == "AUTO":
        layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}.")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    return InputSpec(
        name=vi.name,
        shape=dims,
        layout=layout,
        channels=c if isinstance(c, int) and c > 0 else None,
        size=(h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None,
        batch=dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None,
        dtype=_FLOAT_TYPES[elem],
    )


# --------------------------------------------------------------------------------------
# intermediate tensors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    r"""One tensor of the graph that a node produces.

    Attributes:
        name (str): the tensor (value) name: what to pass as a layer.
        op_type (str): the producing node's operator.
        node (str): the producing node's name.
        shape (tuple or None): inferred dims (batch first), None when unknown.
        dtype (str): element type name (``"float32"``...).
        depends_on_input (bool): whether the image input reaches it (False for folded constants).
        is_output (bool): whether it is a graph output.
    """

    name: str
    op_type: str
    node: str
    shape: Optional[Tuple[Dim, ...]]
    dtype: str
    depends_on_input: bool
    is_output: bool

    @property
    def minable(self) -> bool:
        r"""A float tensor reached by the input with a 2-D (N, C) vector, 3-D (N, tokens, C) or 4-D
        (N, C, H, W) / (N, H, W, C) map shape."""
        return (self.depends_on_input and self.dtype.startswith(("float", "bfloat"))
                and self.shape is not None and len(self.shape) in (2, 3, 4))


def _subgraph_inputs(node: onnx.NodeProto) -> Set[str]:
    names: Set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names.update(_subgraph_inputs(n))
    return names


_SHAPES: "OrderedDict[str, Dict[str, Tuple[Optional[Tuple[Dim, ...]], int]]]" = OrderedDict()


def infer_shapes(model: onnx.ModelProto) -> Dict[str, Tuple[Optional[Tuple[Dim, ...]], int]]:
    r"""``name -> (dims or None, elem_type)`` for every typed value, by ONNX shape inference.

    Inference runs once per model: results are kept (a few models, least recently used first
    out) under the SHA-1 of the serialised model, so listing, resolving, pruning and rewriting
    one model share it."""
    key = hashlib.sha1(model.SerializeToString()).hexdigest()
    hit = _SHAPES.get(key)
    if hit is not None:
        _SHAPES.move_to_end(key)
        return dict(hit)
    out = _infer_shapes(model)
    _SHAPES[key] = out
    while len(_SHAPES) > 8:
        _SHAPES.popitem(last=False)
    return dict(out)


def _infer_shapes(model: onnx.ModelProto) -> Dict[str, Tuple[Optional[Tuple[Dim, ...]], int]]:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # models > 2 GB, unknown custom ops: fall back to what is declared
        inferred = model
    g = inferred.graph
    out: Dict[str, Tuple[Optional[Tuple[Dim, ...]], int]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            out[vi.name] = (_dims(vi), vi.type.tensor_type.elem_type)
    return out


def list_tensors(model: onnx.ModelProto, minable_only: bool = True) -> List[TensorInfo]:
    r"""Every tensor produced by a node, in graph order, with its inferred shape.

    Args:
        model (onnx.ModelProto): the model.
        minable_only (bool): keep only float 2-D / 4-D tensors that depend on the input.
    Returns:
        list[TensorInfo]
    Example::
        >>> [t.name for t in list_tensors(load_onnx("vgg16.onnx"))][:2]
        ['functional_1/block1_conv1_1/BiasAdd:0', 'functional_1/block1_conv1_1/Relu:0']
    """
    shapes = infer_shapes(model)
    reached = {i.name for i in graph_inputs(model)}
    outputs = {o.name for o in model.graph.output}
    rows: List[TensorInfo] = []
    for node in model.graph.node:
        uses = set(node.input) | _subgraph_inputs(node)
        dep = bool(uses & reached)
        for name in node.output:
            if not name:
                continue
            if dep:
                reached.add(name)
            dims, elem = shapes.get(name, (None, 0))
            info = TensorInfo(
                name=name, op_type=node.op_type, node=node.name, shape=dims,
                dtype=_FLOAT_TYPES.get(elem, TensorProto.DataType.Name(elem).lower() if elem else "unknown"),
                depends_on_input=dep, is_output=name in outputs,
            )
            if info.minable or not minable_only:
                rows.append(info)
    return rows


def resolve_tensors(
    model: onnx.ModelProto, layers: Union[str, Sequence[str]], aliases: Optional[Dict[str, str]] = None
) -> List[Tuple[str, str]]:
    r"""Map layer names to tensor names of the graph.

    A layer is a graph output name (an exported layer such as ``"features.3"``), any
    tensor name, or a node name (its first output). ``aliases`` maps extra names to
    tensors.

    Returns:
        list of (layer, tensor) pairs, in the order given, duplicates removed.
    Raises:
        ValueError: a name that is not in the graph (fused away by an optimiser, renamed by
            the exporter, or a typo), with the closest valid names; a tensor the input does
            not reach (a constant folded at export) or that is not 2-D / 4-D float.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("No layer given: pass graph output / tensor names (see `captum-topk layers X.onnx`).")
    tensors = {t.name: t for t in list_tensors(model, minable_only=False)}
    by_node = {}
    for t in tensors.values():
        by_node.setdefault(t.node, t.name)
    inputs = {i.name for i in graph_inputs(model)}
    aliases = dict(aliases or {})
    out: List[Tuple[str, str]] = []
    for layer in names:
        if not isinstance(layer, str):
            raise TypeError(f"ONNX layers are tensor names (str), got {type(layer).__name__}.")
        tensor = aliases.get(layer) or (layer if layer in tensors or layer in inputs else by_node.get(layer))
        if tensor is None:
            valid = [t.name for t in tensors.values() if t.minable]
            close = difflib.get_close_matches(layer, valid + list(aliases), n=6, cutoff=0.3)
            raise ValueError(
                f"Layer {layer!r} is not a tensor of this ONNX graph: it was fused away or "
                f"renamed when the model was exported / optimised, or it is misspelt. Closest "
                f"tensors: {', '.join(close) or ', '.join(valid[:6])}. List them all with "
                "`captum-topk layers MODEL.onnx`."
            )
        info = tensors.get(tensor)
        if info is not None and not info.depends_on_input:
            raise ValueError(
                f"Layer {layer!r} (tensor {tensor!r}) does not depend on the input: it was "
                "constant-folded away at export, so it has nothing to mine."
            )
        if info is not None and info.shape is not None and len(info.shape) not in (2, 3, 4):
            raise ValueError(
                f"Layer {layer!r} (tensor {tensor!r}) has shape {info.shape}; only (N, C, H, W) / "
                "(N, H, W, C) maps, (N, tokens, C) tokens and (N, C) vectors can be mined."
            )
        if all(tensor != t for _, t in out):
            out.append((layer, tensor))
    return out


# --------------------------------------------------------------------------------------
# rewriting
# --------------------------------------------------------------------------------------


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    r"""A copy of ``model`` whose outputs are exactly the tensors ``names``, pruned of every
    node and initializer they do not need (so ONNX Runtime stops after the deepest one).

    Args:
        model (onnx.ModelProto): the model (left untouched).
        names (list of str): tensor names, see :func:`resolve_tensors`.
    Returns:
        onnx.ModelProto
    """
    shapes = infer_shapes(model)
    m = _copy(model)
    g = m.graph
    needed: Set[str] = set(names)
    keep: List[onnx.NodeProto] = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    init_names = {i.name for i in inits}
    ins = [i for i in g.input if i.name not in {x.name for x in model.graph.initializer} or i.name in init_names]
    del g.input[:]
    g.input.extend(ins)
    del g.output[:]
    for name in names:
        dims, elem = shapes.get(name, (None, TensorProto.FLOAT))
        g.output.append(helper.make_tensor_value_info(name, elem or TensorProto.FLOAT, None))
    vis = [v for v in g.value_info if v.name in needed and v.name not in set(names)]
    del g.value_info[:]
    g.value_info.extend(vis)
    return m


_NAN_UNSAFE = ("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin")


def nan_safe(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, List[str]]:
    r"""A copy of ``model`` in which every operator that ONNX Runtime lets *drop* a NaN
    carries it on, for receptive-field probing by NaN propagation.

    ONNX Runtime's ``MaxPool``, ``GlobalMaxPool`` and ``ReduceMax`` / ``ReduceMin`` return a
    finite value when a window holds a NaN (measured: a NaN in a 2x2 stride-2 window
    vanishes), so a probe would see receptive fields that are too small. Each such ``Y =
    op(X)`` becomes ``Y = op(X) + 0 * twin(X)``, ``twin`` being the summing operator over
    exactly the same windows (``AveragePool`` with the same kernel / strides / pads /
    ceil_mode, ``GlobalAveragePool``, ``ReduceSum`` over the same axes): finite inputs give
    the same ``Y``, and a NaN anywhere in a window makes that output NaN.

    Returns:
        (onnx.ModelProto, list of str): the rewritten copy, and the names of nodes that
        could not be rewritten (dilated max pooling before opset 19), whose receptive
        fields may come out too small.
    """
    m = _copy(model)
    g = m.graph
    opset = opset_version(m)
    shapes = infer_shapes(model)
    zeros: Dict[int, str] = {}
    skipped: List[str] = []

    def zero(elem: int) -> str:
        if elem not in zeros:
            name = f"__captum_topk_zero_{elem}"
            np_dtype = helper.tensor_dtype_to_np_dtype(elem)
            g.initializer.append(numpy_helper.from_array(np.zeros((), np_dtype), name))
            zeros[elem] = name
        return zeros[elem]

    new_nodes: List[onnx.NodeProto] = []
    for i, node in enumerate(g.node):
        new_nodes.append(node)
        if node.domain not in ("", "ai.onnx") or node.op_type not in _NAN_UNSAFE or not node.output[0]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, y = node.input[0], node.output[0]
        tag = f"__captum_topk_{i}"
        if node.op_type == "MaxPool":
            if any(d != 1 for d in attrs.get("dilations", [])) and opset < 19:
                skipped.append(node.name or y)
                continue
            keep = {k: v for k, v in attrs.items()
                    if k in ("auto_pad", "ceil_mode", "kernel_shape", "pads", "strides", "dilations")}
            if all(d == 1 for d in keep.get("dilations", [])):
                keep.pop("dilations", None)  # AveragePool takes dilations from opset 19 only
            twins = [helper.make_node("AveragePool", [x], [tag + "_sum"], **keep)]
        elif node.op_type == "GlobalMaxPool":
            twins = [helper.make_node("GlobalAveragePool", [x], [tag + "_sum"])]
        else:  # ReduceMax / ReduceMin -> ReduceSum over the same axes
            keepdims = attrs.get("keepdims", 1)
            axes_input = node.input[1] if len(node.input) > 1 and node.input[1] else None
            axes = attrs.get("axes")
            if opset >= 13:
                inputs = [x]
                if axes_input is not None:
                    inputs.append(axes_input)
                elif axes is not None:
                    axes_name = tag + "_axes"
                    g.initializer.append(numpy_helper.from_array(
                        np.asarray(axes, dtype=np.int64), axes_name))
                    inputs.append(axes_name)
                extra = {"noop_with_empty_axes": attrs["noop_with_empty_axes"]} if "noop_with_empty_axes" in attrs else {}
                twins = [helper.make_node("ReduceSum", inputs, [tag + "_sum"], keepdims=keepdims, **extra)]
            else:
                kw = {"keepdims": keepdims}
                if axes is not None:
                    kw["axes"] = axes
                twins = [helper.make_node("ReduceSum", [x], [tag + "_sum"], **kw)]
        elem = shapes.get(x, (None, TensorProto.FLOAT))[1] or TensorProto.FLOAT
        raw = tag + "_raw"
        node.output[0] = raw
        new_nodes.extend(twins)
        new_nodes.append(helper.make_node("Mul", [tag + "_sum", zero(elem)], [tag + "_zero"]))
        new_nodes.append(helper.make_node("Add", [raw, tag + "_zero"], [y]))
    del g.node[:]
    g.node.extend(new_nodes)
    if skipped:
        warnings.warn(
            f"Dilated max pooling {', '.join(skipped)} cannot be made NaN-safe at opset {opset}: "
            "receptive fields of layers after it may be measured too small.",
            RuntimeWarning,
            stacklevel=2,
        )
    return m, skipped
