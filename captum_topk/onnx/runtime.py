r"""Mining through ONNX Runtime: dataset top-k patches need forward activations only.

:class:`OnnxTopKPatches` has the streaming contract of :class:`~captum_topk.LayerTopKPatches`
(``update`` / ``compute`` / ``reset`` / ``merge`` / ``mine`` / ``save_state`` /
``load_state``) and runs the same state code (:class:`~captum_topk.core.accumulators.topk.TopKState`), so it
returns a :class:`~captum_topk.TopKResult` of exactly the same format. Only the forward pass
differs: the chosen tensors become the outputs of a pruned copy of the graph (ONNX Runtime
stops after the deepest one) and run in an ``onnxruntime.InferenceSession``.

Receptive fields come from the export sidecar (``<file>.onnx.json``) when it has them, else
they are measured by NaN probing through ONNX Runtime (:func:`onnx_receptive_fields`), on a
NaN-safe rewrite of the graph (:func:`~captum_topk.onnx.graph.nan_safe`).
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx  # the real package
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..receptive_field.field import ReceptiveField, _parse_size
from ..receptive_field.cache import _disk_get, _disk_put
from ..receptive_field.probe import fields_from_probe
from ..capture.layouts import ChannelsLastError
from ..receptive_field.intervals import TraceError
from . import trace as _trace
from .graph import InputSpec, ModelLike, input_spec, list_tensors, load_onnx, nan_safe, resolve_tensors, with_outputs
from .sidecar import load_sidecar

PROVIDER_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")
_PROBE_VERSION = 1
_RF_CACHE: Dict[tuple, ReceptiveField] = {}
_RF_LOCK = threading.Lock()
_ORT_NAN_CHECKED: Dict[str, bool] = {}


def _ort():
    import onnxruntime

    return onnxruntime


# --------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------


def resolve_providers(providers: Optional[Sequence[str]] = None) -> List[str]:
    r"""Execution providers to use, in order.

    Args:
        providers (list of str, optional): the wanted order; default CUDA then CPU. Names
            this ONNX Runtime build lacks are dropped with a warning.
    Returns:
        list of str: the available ones, in the wanted order.
    Raises:
        ValueError: none of them is available.
    """
    available = list(_ort().get_available_providers())
    wanted = list(providers) if providers else list(PROVIDER_ORDER)
    if isinstance(providers, str):
        wanted = [providers]
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing and providers:
        warnings.warn(
            f"ONNX Runtime providers {missing} are not available in this build "
            f"(available: {available}); using {chosen or 'none'}.",
            RuntimeWarning,
            stacklevel=3,
        )
    if not chosen:
        raise ValueError(
            f"None of the execution providers {wanted} is available; this onnxruntime build "
            f"has {available}. Install onnxruntime-gpu for CUDA, or pass providers=['CPUExecutionProvider']."
        )
    return chosen


def make_session(
    model: Union[onnx.ModelProto, bytes],
    providers: Optional[Sequence[str]] = None,
    optimize: bool = True,
    threads: Optional[int] = None,
):
    r"""An ``onnxruntime.InferenceSession`` on ``model``.

    Args:
        model (onnx.ModelProto or bytes): the model.
        providers (list of str, optional): see :func:`resolve_providers`.
        optimize (bool): all graph optimisations (True) or none (False, used for probing).
        threads (int, optional): intra-op threads (default: ONNX Runtime's, the core count).
    Returns:
        onnxruntime.InferenceSession
    Raises:
        ValueError: ONNX Runtime refuses the model (unsupported operator, opset...).
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    # No busy-waiting between runs: the idle thread pool would otherwise steal the CPU from
    # PyTorch, the DataLoader and everything else in this process.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else bytes(model)
    try:
        return ort.InferenceSession(data, so, providers=resolve_providers(providers))
    except Exception as exc:
        if isinstance(exc, ValueError) and "execution providers" in str(exc):
            raise
        raise ValueError(f"ONNX Runtime cannot load this model: {exc}") from exc


class OnnxForward:
    r"""Callable running chosen tensors of an ONNX model on (N, C, H, W) torch images.

    Args:
        model (onnx.ModelProto): the full model.
        tensors (list of str): tensor names to return (made graph outputs; the graph is
            pruned after the deepest).
        providers (list of str, optional): execution providers (default CUDA, then CPU).
        input_layout (str): ``"auto"``, ``"NCHW"`` or ``"NHWC"`` (images are always given
            NCHW; they are transposed for an NHWC model).
        activation_layout (str): ``"NCHW"`` (default) or ``"NHWC"``: the layout of the
            chosen 4-D tensors, returned as (N, C, H, W).
        optimize (bool), threads (int): see :func:`make_session`.
    Returns (when called):
        list of Tensor: one (N, C, h, w) or (N, C) CPU tensor per chosen tensor.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Sequence[str],
        providers: Optional[Sequence[str]] = None,
        input_layout: str = "auto",
        activation_layout: str = "NCHW",
        optimize: bool = True,
        threads: Optional[int] = None,
    ) -> None:
        if activation_layout.upper() not in ("NCHW", "NHWC"):
            raise ValueError(f"activation_layout must be 'NCHW' or 'NHWC', got {activation_layout!r}.")
        self.spec: InputSpec = input_spec(model, input_layout)
        self.tensors = list(tensors)
        self.activation_layout = activation_layout.upper()
        self.session = make_session(with_outputs(model, self.tensors), providers, optimize, threads)
        self.providers = list(self.session.get_providers())
        import onnxruntime

        # A refused input (the probe's twice-as-tall image on a graph with a fixed-size constant)
        # raises below with ONNX Runtime's message; its logger would print it to stderr as well.
        self._run_options = onnxruntime.RunOptions()
        self._run_options.log_severity_level = 4
        self.provider = self.providers[0]
        self._dtype = np.dtype(self.spec.dtype) if self.spec.dtype != "bfloat16" else np.float32

    def check(self, images: Tensor) -> None:
        r"""Raise a clear ``ValueError`` when ``images`` do not fit the model's input."""
        spec = self.spec
        if images.dim() != 4:
            raise ValueError(f"Expected (N, C, H, W) images, got shape {tuple(images.shape)}.")
        c, h, w = images.shape[1:]
        if spec.channels is not None and c != spec.channels:
            raise ValueError(
                f"The batch has {c} channels but the ONNX model takes {spec.channels} "
                f"({spec.describe()}); convert the images first."
            )
        if spec.size is not None and (h, w) != tuple(spec.size):
            raise ValueError(
                f"The ONNX model takes {spec.size[0]}x{spec.size[1]} images "
                f"({spec.describe()}) but the batch is {h}x{w}: resize / crop to that size "
                "(the sidecar's transform() does), or re-export at the size you need."
            )

    def __call__(self, images: Tensor) -> List[Tensor]:
        self.check(images)
        x = images.detach().to("cpu", torch.float32).numpy()
        if self.spec.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=self._dtype)
        n = x.shape[0]
        step = self.spec.batch or n
        parts: List[List[np.ndarray]] = []
        for s in range(0, n, max(1, step)):
            chunk = x[s : s + step]
            if self.spec.batch and chunk.shape[0] < step:  # a fixed batch size: pad, then drop
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - chunk.shape[0], axis=0)])
            try:
                out = self.session.run(self.tensors, {self.spec.name: chunk}, self._run_options)
            except Exception as exc:
                raise ValueError(
                    f"ONNX Runtime failed on a batch of shape {tuple(images.shape)} "
                    f"(the model takes {self.spec.describe()}): {str(exc).strip()}"
                ) from exc
            parts.append([o[: min(step, n - s)] for o in out])
        outs = []
        for i in range(len(self.tensors)):
            a = np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i]
            t = torch.from_numpy(np.ascontiguousarray(a))
            if t.dim() == 4 and self.activation_layout == "NHWC":
                t = t.permute(0, 3, 1, 2)
            outs.append(t.float() if t.dtype != torch.float32 else t)
        return outs


# --------------------------------------------------------------------------------------
# receptive fields by NaN probing through ONNX Runtime
# --------------------------------------------------------------------------------------


def _check_ort_nan_propagation(providers: List[str]) -> None:
    r"""Known-answer check of the NaN-safe rewrite on this ONNX Runtime build: a 2x2 stride-2
    max pooling (which drops NaN in ONNX Runtime) and a global max pooling must report
    exact receptive fields."""
    key = ",".join(providers)
    if _ORT_NAN_CHECKED.get(key):
        return
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"]),
        helper.make_node("GlobalMaxPool", ["x"], ["g"]),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "g")]
    model = helper.make_model(helper.make_graph(nodes, "nan_check", [x], outs),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    safe, _ = nan_safe(model)
    fwd = OnnxForward(safe, ["y", "g"], providers, optimize=False)
    rf = _probe(fwd, ["y", "g"], (8, 8), 1, batch_size=17, progress=False)
    ok = all(rf["y"].box(i, j) == (2 * i, 2 * j, 2 * i + 2, 2 * j + 2) for i in range(4) for j in range(4))
    ok = ok and rf["g"].box(0, 0) == (0, 0, 8, 8)
    if not ok:
        raise RuntimeError(
            "ONNX Runtime drops NaN even in the NaN-safe rewrite on "
            f"{providers[0]}: receptive fields cannot be probed through it. Export the model "
            "with captum_topk.onnx.export (the sidecar carries exact fields) instead."
        )
    _ORT_NAN_CHECKED[key] = True


def _probe(
    forward: OnnxForward,
    names: Sequence[str],
    size: Tuple[int, int],
    channels: int,
    batch_size: int,
    progress: bool,
) -> Dict[str, ReceptiveField]:
    r"""The probe of :mod:`captum_topk.receptive_field` (same images, same box extraction:
    :func:`~captum_topk.receptive_field.fields_from_probe`), run through ``forward``."""
    total = 1 + size[0] + size[1]
    with tqdm(total=total, unit="probe", desc="receptive fields (onnxruntime)", disable=not progress) as bar:
        return fields_from_probe(forward, names, size, channels, batch_size, bar=bar)


def onnx_digest(model: onnx.ModelProto) -> str:
    r"""SHA-1 of the serialised model (receptive-field cache key)."""
    return hashlib.sha1(model.SerializeToString()).hexdigest()


def onnx_receptive_fields(
    model: ModelLike,
    tensors: Union[str, Sequence[str]],
    input_size: Optional[Union[int, Tuple[int, int]]] = None,
    *,
    input_layout: str = "auto",
    activation_layout: str = "NCHW",
    providers: Optional[Sequence[str]] = None,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = True,
    digest: Optional[str] = None,
    method: str = "auto",
) -> Dict[str, ReceptiveField]:
    r"""Exact receptive fields of ONNX tensors, traced over the graph or NaN-probed through
    ONNX Runtime.

    ``method="auto"`` (default) first propagates dependency sets along the graph's nodes
    (:mod:`captum_topk.onnx.trace`) and confirms them with a few NaN probes through ONNX
    Runtime; tensors it cannot predict or confirm are probed fully (``"trace"`` raises
    :class:`~captum_topk.receptive_field.intervals.TraceError` instead, ``"probe"`` always
    probes fully). The full probe is the one of :func:`captum_topk.receptive_fields` (``H + W + 1`` images,
    NaN in one input row or column each) run on a NaN-safe rewrite of the graph
    (:func:`~captum_topk.onnx.graph.nan_safe`: ONNX Runtime's max pooling drops NaN) with
    graph optimisations off. A known-answer check runs first. Results are cached in memory
    and on disk (the receptive-field cache folder), keyed by a hash of the model bytes.

    Args:
        model (str, bytes or onnx.ModelProto): the ONNX model.
        tensors (str or list of str): tensor / layer names (see :func:`resolve_tensors`).
        input_size (int or (H, W), optional): default the model's static input size.
        input_layout, activation_layout: see :class:`OnnxForward`.
        providers (list of str, optional): execution providers.
        batch_size (int): probe images per run.
        cache (bool): use the in-memory / disk cache.
        progress (bool): tqdm bar.
        digest (str, optional): precomputed :func:`onnx_digest` of ``model``.
        method (str): ``"auto"``, ``"trace"`` or ``"probe"`` (see above).
    Returns:
        dict[str, ReceptiveField]: keyed by the names given (2-D tensors get the whole image).
    Example::
        >>> rfs = onnx_receptive_fields("vgg16.onnx", ["functional_1/block1_pool_1/MaxPool2d:0"])
    """
    if method not in ("auto", "trace", "probe"):
        raise ValueError(f"method must be 'auto', 'trace' or 'probe', got {method!r}.")
    proto = load_onnx(model)
    pairs = resolve_tensors(proto, tensors)
    spec = input_spec(proto, input_layout)
    if input_size is None:
        if spec.size is None:
            raise ValueError("The ONNX input has a dynamic size: pass input_size=(H, W).")
        size = tuple(spec.size)
    else:
        size = _parse_size(input_size)
    channels = spec.channels or 3
    digest = digest or onnx_digest(proto)
    results: Dict[str, ReceptiveField] = {}
    keys = {}
    for layer, tensor in pairs:
        key = ("onnx-rf", _PROBE_VERSION, _trace.code_hash(), digest, tensor, size, spec.layout, activation_layout.upper(), channels)
        keys[layer] = key
        if cache:
            with _RF_LOCK:
                hit = _RF_CACHE.get(key)
            if hit is None:
                hit = _disk_get(key)
            if hit is not None and method in ("auto", hit.method):
                results[layer] = hit
    todo = [(layer, tensor) for layer, tensor in pairs if layer not in results]
    if todo:
        prov = resolve_providers(providers)
        _check_ort_nan_propagation(prov)
        safe, _ = nan_safe(proto)

        def forward_for(names: List[str]) -> OnnxForward:
            return OnnxForward(safe, names, prov, input_layout=spec.layout,
                               activation_layout=activation_layout, optimize=False)

        names = list(dict.fromkeys(t for _, t in todo))
        fresh: Dict[str, ReceptiveField] = {}
        if method != "probe":
            fresh, reasons = _trace.traced_fields(
                proto, names, size, channels, input_layout=spec.layout,
                activation_layout=activation_layout, forward_for=forward_for, batch_size=batch_size)
            if method == "trace" and reasons:
                raise TraceError(reasons)
        rest = [t for t in names if t not in fresh]
        if rest:
            fresh.update(_probe(forward_for(rest), rest, size, channels, batch_size, progress))
        for layer, tensor in todo:
            rf = fresh[tensor]
            results[layer] = rf
            if cache:
                with _RF_LOCK:
                    _RF_CACHE[keys[layer]] = rf
                _disk_put(keys[layer], rf)
    return {layer: ReceptiveField(results[layer].boxes.clone(), results[layer].input_size,
                                  results[layer].size, results[layer].stride, results[layer].method)
            for layer, _ in pairs}


# --------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------


def describe_onnx_layers(
    path: ModelLike,
    input_size: Optional[int] = None,
    all_tensors: bool = False,
    probe_rf: bool = False,
    providers: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    r"""The tensors of an ONNX model that can be mined, for ``captum-topk layers X.onnx``.

    Shapes come from ONNX shape inference. Stride and receptive field come from the export
    sidecar when there is one, or from NaN probing through ONNX Runtime with
    ``probe_rf=True`` (one probe for all tensors: slow for big models at full size).

    Args:
        path (str): the ONNX file.
        input_size (int, optional): probe size for a model with a dynamic input size.
        all_tensors (bool): list every tensor a node produces, not only minable ones.
        probe_rf (bool): measure receptive fields of tensors the sidecar lacks.
        providers (list of str, optional): execution providers for the probe.
    Returns:
        list of dict: keys ``layer`` (the name to pass as a layer), ``type`` (operator,
        ``output`` for a graph output), ``output`` (C x H x W), ``stride``, ``rf``.
    """
    proto = load_onnx(path)
    sidecar = load_sidecar(path) if not isinstance(path, (bytes, bytearray, onnx.ModelProto)) else None
    tensors = list_tensors(proto, minable_only=not all_tensors)
    rfs: Dict[str, ReceptiveField] = dict(sidecar.receptive_fields) if sidecar else {}
    channels_last: List[str] = []
    if probe_rf:
        spatial = [t.name for t in tensors if t.minable and len(t.shape) == 4 and t.name not in rfs]
        size = (input_size, input_size) if input_size else None
        try:
            if spatial:
                rfs.update(onnx_receptive_fields(proto, spatial, size, providers=providers))
        except ChannelsLastError as exc:  # list them as such; measure the others
            channels_last = exc.layers
            spatial = [n for n in spatial if n not in channels_last]
            if spatial:
                rfs.update(onnx_receptive_fields(proto, spatial, size, providers=providers))
            rfs.update(onnx_receptive_fields(proto, channels_last, size, providers=providers,
                                             activation_layout="NHWC"))
    rows = []
    for t in tensors:
        rf = rfs.get(t.name)
        shape = "x".join(str(d) for d in t.shape[1:]) if t.shape is not None else "?"
        dims = len(t.shape) if t.shape is not None else 0
        declared = (sidecar.layouts.get(t.name, {}).get("layout") if sidecar is not None else None)
        layout = declared or ("NHWC" if t.name in channels_last else {2: "NC", 3: "NLC", 4: "NCHW"}.get(dims, "-"))
        rows.append({
            "layer": t.name,
            "type": t.op_type + (" (output)" if t.is_output else ""),
            "output": shape if t.minable or t.shape is not None else "?",
            "layout": layout,
            "stride": f"{rf.stride[0]}x{rf.stride[1]}" if rf else "-",
            "rf": (f"{rf.size[0]}x{rf.size[1]}" if rf else "whole image" if dims == 2
                   else "token footprint" if layout == "NLC" else "-"),
        })
    return rows
