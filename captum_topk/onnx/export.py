r"""Export a PyTorch CNN to ONNX with its intermediate layers as extra graph outputs.

The exported graph's outputs are the model output followed by the activations of the
requested layers, each named after its layer (``"features.3"``), so that any ONNX runtime
can serve both predictions and dataset top-k mining. Beside the file a JSON sidecar
(:mod:`captum_topk.onnx.sidecar`) records preprocessing and exact receptive fields.

**Exporter.** ``torch.onnx.export(..., dynamo=False)``: the TorchScript-based exporter. It
works offline with no extra dependency, and it is what torch 2.14 still ships (with a
deprecation warning, silenced here). The ``dynamo=True`` exporter needs the ``onnxscript``
package, which is not a dependency of this project.

**Intermediate layers.** A wrapper module runs the model with a forward hook on every
requested layer (registered before the export, removed in ``finally``); each hook keeps a
*clone* of the layer's first output (the clone shields it from in-place operations that
follow, such as ``ReLU(inplace=True)``), and the wrapper returns ``(output, *layers)``. The
model's own output may be a ``ModelOutput`` (transformers) or a tuple: its ``.logits``, else its
first tensor, is the graph's ``output``.

**Steps** (:func:`export`): a dry run in eager mode (:func:`_dry_run`), the export
(:func:`_torch_export`), the graph's checks (:func:`_verified_graph`), ONNX Runtime against
PyTorch (:func:`_parity`), layouts and receptive fields (:func:`_layouts_and_fields`), the
sidecar (:func:`_sidecar`) and the atomic writes.
"""

from __future__ import annotations

import io
import json
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx  # the real package
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..utils.files import atomic_open
from ..capture.hooks import LayerSpec, resolve_layers
from .._version import __version__
from ..models.info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, make_transform
from ..models.ecosystem import output_tensor
from ..models.registry import load_model
from ..receptive_field.field import ReceptiveField, _parse_size
from ..core.sources.torch import TorchSource
from .graph import list_tensors, load_onnx
from .runtime import make_session, resolve_providers
from .sidecar import Sidecar, sidecar_path
from ..utils.files import PathLike
from ..utils.modules import device_dtype, eval_mode, first_conv

DEFAULT_DIR = "onnx_models"
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript-based)"


@dataclass
class OnnxExport:
    r"""What :func:`export` wrote and measured.

    Attributes:
        path (Path): the ONNX file.
        sidecar_path (Path): its JSON sidecar (``<path>.json``).
        layers (list[str]): the exported layer names (graph outputs of the same names).
        output_names (list[str]): all graph outputs, the model output first.
        max_abs_diff (dict[str, float]): measured max |ONNX Runtime - PyTorch| per output
            on the check images (empty when ``check_images=0``).
        tolerance (dict[str, float]): the tolerance each output was held to.
        provider (str or None): the ONNX Runtime provider of the check.
        sidecar (Sidecar): the sidecar's content.
    """

    path: Path
    sidecar_path: Path
    layers: List[str]
    output_names: List[str]
    max_abs_diff: Dict[str, float] = field(default_factory=dict)
    tolerance: Dict[str, float] = field(default_factory=dict)
    provider: Optional[str] = None
    sidecar: Optional[Sidecar] = None


class _Tap(nn.Module):
    r"""Runs ``model`` and returns ``(output, *captured layer outputs)``; the hooks that fill
    ``store`` are owned (registered / removed) by :func:`export`."""

    def __init__(self, model: nn.Module, names: Sequence[str], store: Dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.store = store

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        self.store.clear()
        out = output_tensor(self.model(x))  # the logits of a ModelOutput, the first tensor of a tuple
        return (out, *(self.store[n] for n in self.names))


def _check_images(size: Tuple[int, int], channels: int, mean, std, n: int) -> Tuple[Tensor, str]:
    r"""``n`` real photos (captum_topk.data.demo_images) through the model's transform;
    random images when the model does not take RGB or no photo is installed."""
    if n <= 0:
        return torch.empty(0), "none"
    try:
        from ..data.demo import demo_images

        ds = demo_images(transform=make_transform(size, mean=mean, std=std), validate="header")
        if len(ds) and channels in (1, 3):
            picks = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
            images = torch.stack([ds[int(i)][0] for i in dict.fromkeys(picks.tolist())])
            if channels == 1:
                images = images.mean(dim=1, keepdim=True)
            return images, "demo_images"
    except Exception:  # no photo package: fall back to random images below
        pass
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, *size, generator=g), "random normal images"



def _rename_tensors(proto: Any, renames: Dict[str, str]) -> None:
    r"""Rename tensors of an ONNX graph in place: node inputs / outputs, graph outputs and
    value_info (a layer's tensor may feed later nodes as well as being a graph output)."""
    if not renames:
        return
    g = proto.graph
    for node in g.node:
        for i, n in enumerate(node.input):
            if n in renames:
                node.input[i] = renames[n]
        for i, n in enumerate(node.output):
            if n in renames:
                node.output[i] = renames[n]
    for vi in [*g.output, *g.value_info]:
        if vi.name in renames:
            vi.name = renames[vi.name]

def export(
    model: Union[nn.Module, str],
    layers: Union[LayerSpec, Sequence[LayerSpec]],
    path: Optional[PathLike] = None,
    input_size: Optional[Union[int, Tuple[int, int]]] = None,
    dynamic_batch: bool = True,
    *,
    info: Optional[ModelInfo] = None,
    checkpoint: Optional[str] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    opset: int = 17,
    check_images: int = 4,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    with_receptive_fields: bool = True,
    providers: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> OnnxExport:
    r"""
    Export ``model`` to ONNX with the activations of ``layers`` as extra outputs.

    The graph takes ``input`` (N, C, H, W) and returns ``output`` (the model output) plus
    one output per layer, named after the layer. The export is checked with
    ``onnx.checker.check_model`` and by running ONNX Runtime against PyTorch on real photos
    (``captum_topk.data.demo_images`` through the model's transform); nothing is written
    when they disagree. The file and its sidecar are written atomically.

    Args:
        model (nn.Module or str): the network, or a name for
            :func:`captum_topk.models.load_model` (with ``checkpoint``).
        layers (str, nn.Module or list of them): layers to expose, by dotted name or module.
        path (str, optional): the ``.onnx`` file; default ``onnx_models/<name>.onnx``
            (``<name>`` the model name or class, lower case).
        input_size (int or (H, W), optional): the input size; default ``info.input_size``,
            else 224. The graph has this static spatial size.
        dynamic_batch (bool): a dynamic batch dimension (True) or a fixed batch of 1.
        info (ModelInfo, optional): preprocessing (mean, std, input size, categories).
        checkpoint (str, optional): weights for a model given by name.
        mean, std (sequence of float, optional): normalisation recorded in the sidecar and
            used for the check images; default ``info``'s, else ImageNet's.
        opset (int): ONNX opset. Default 17.
        check_images (int): photos for the ONNX Runtime / PyTorch comparison (0 skips it).
        atol, rtol (float): an output passes when max |ORT - torch| <= atol + rtol * max |torch|.
        with_receptive_fields (bool): store exact receptive fields in the sidecar
            (measured in PyTorch by NaN probing, cached).
        providers (list of str, optional): ONNX Runtime providers for the check.
        progress (bool): a tqdm bar over the export steps.
    Returns:
        OnnxExport: paths, layer / output names, measured differences.
    Raises:
        ValueError: a layer that does not run, whose output is not one 2-D / 3-D / 4-D float
            tensor, or that was constant-folded away (named); a model whose output holds no
            tensor (a ``ModelOutput``'s ``.logits`` or a tuple's first tensor is exported);
            an input size the model cannot take; an exporter failure; outputs of ONNX Runtime
            and PyTorch differing beyond tolerance (with the measured max abs difference).
    Example::
        >>> from captum_topk.onnx import export
        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> exp = export(model, ["features.3", "features.7"], info=info)
        >>> exp.path, exp.output_names, exp.max_abs_diff["features.7"]
        (PosixPath('onnx_models/mobilenet_v2-imagenet.onnx'), ['output', 'features.3', 'features.7'], 2.1e-06)
    """
    model, info, name_hint = _as_module(model, info, checkpoint)
    size = _parse_size(input_size if input_size is not None else (info.input_size if info else 224))
    mean = tuple(float(v) for v in (mean if mean is not None else (info.mean if info else IMAGENET_MEAN)))
    std = tuple(float(v) for v in (std if std is not None else (info.std if info else IMAGENET_STD)))
    named = resolve_layers(model, layers)
    names = [n for n, _ in named]
    output_name = "output" if "output" not in names else "model_output"
    conv = first_conv(model)
    channels = int(conv[1].in_channels) if conv else 3
    path = Path(path) if path is not None else Path(DEFAULT_DIR) / f"{(name_hint or type(model).__name__).lower()}.onnx"
    device = device_dtype(model)[0] or torch.device("cpu")

    store: Dict[str, Any] = {}
    calls: Dict[str, int] = {}
    modes = ExitStack()  # every module's training flag, restored in finally
    handles = []
    steps = ["check layers", "export", "verify graph", "compare with onnxruntime", "receptive fields", "write"]
    bar = tqdm(total=len(steps), desc="onnx export", unit="step", disable=not progress)

    def step(i: int) -> None:
        bar.set_postfix_str(steps[i])
        if i:
            bar.update(1)

    try:
        modes.enter_context(eval_mode(model))
        for name, module in named:
            handles.append(module.register_forward_hook(_keep_first_output(name, store, calls)))
        # eval(): the exporter restores the wrapper's own mode recursively after exporting
        tap = _Tap(model, names, store).eval()
        step(0)
        batch = 2 if dynamic_batch else 1
        dummy = torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(0)).to(device)
        out = _dry_run(model, names, dummy, store, calls)
        shapes = {output_name: list(out.shape[1:]), **{n: list(store[n].shape[1:]) for n in names}}
        step(1)
        export_names = [output_name, *(f"captum_topk_layer_{i}" for i in range(len(names)))]
        data = _torch_export(tap, dummy, export_names, dynamic_batch, opset, names, size)
        step(2)
        proto = _verified_graph(data, export_names, names)
        meta = proto.metadata_props.add()
        meta.key, meta.value = "captum_topk", json.dumps({"layers": names, "output_name": output_name,
                                                          "input_size": list(size), "mean": mean, "std": std})
        step(3)
        images, source = _check_images(size, channels, mean, std, check_images)
        parity = _parity(proto, tap, images, source, [output_name, *names], dynamic_batch, device,
                         atol, rtol, providers, size)
        step(4)
        rfs, layouts = (_layouts_and_fields(model, named, channels, size, device)
                        if with_receptive_fields else ({}, {}))
        step(5)
    finally:
        for h in handles:
            h.remove()
        modes.close()
        bar.close()

    sidecar = _sidecar(names, size, output_name, channels, dynamic_batch, mean, std, shapes, rfs, layouts,
                       parity, opset, info, model, path)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    side = sidecar.save(sidecar_path(path))
    return OnnxExport(path=path, sidecar_path=side, layers=names, output_names=[output_name, *names],
                      max_abs_diff=parity["max_abs_diff"], tolerance=parity["tolerance"],
                      provider=parity["provider"], sidecar=sidecar)


def _as_module(model: Union[nn.Module, str], info: Optional[ModelInfo],
               checkpoint: Optional[str]) -> Tuple[nn.Module, Optional[ModelInfo], Optional[str]]:
    r"""``(module, info, name)``: a model spec is loaded (:func:`~captum_topk.models.load_model`)."""
    name_hint = None
    if isinstance(model, str):
        name_hint = model
        model, loaded = load_model(model, checkpoint=checkpoint)
        info = info or loaded
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a model name, got {type(model).__name__}.")
    if info is not None:
        name_hint = name_hint or info.name
    return model, info, name_hint


def _keep_first_output(name: str, store: Dict[str, Any], calls: Dict[str, int]):
    r"""A forward hook counting a layer's calls and keeping a clone of its first output (the
    clone shields it from in-place operations that follow, such as ``ReLU(inplace=True)``)."""
    def hook(_m: nn.Module, _args: Any, output: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        if name not in store:  # the first call, as LayerTopKPatches mines it
            store[name] = output.clone() if isinstance(output, Tensor) else output
    return hook


def _dry_run(model: nn.Module, names: Sequence[str], dummy: Tensor, store: Dict[str, Any],
             calls: Dict[str, int]) -> Tensor:
    r"""Step 1, eager: the model takes the input and gives a tensor (the logits of a
    ``ModelOutput``, the first tensor of a tuple); every layer runs and gives one 2-D / 3-D /
    4-D float tensor. Returns the model output."""
    calls.clear()
    store.clear()
    channels, size = dummy.shape[1], tuple(dummy.shape[2:])
    try:
        with torch.no_grad():
            raw = model(dummy)
    except Exception as exc:
        raise ValueError(
            f"{type(model).__name__} cannot take a {channels}x{size[0]}x{size[1]} input "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). "
            "Export at the input size the model was built for (e.g. input_size=224)."
        ) from exc
    try:
        out = output_tensor(raw)
    except TypeError as exc:
        raise ValueError(
            f"{type(model).__name__} returns {type(raw).__name__} without a tensor; wrap it in a module "
            "whose forward returns the tensor to export as the model output."
        ) from exc
    for name in names:
        value = store.get(name)
        if name not in store:
            raise ValueError(f"Layer {name!r} did not run during the forward pass: it cannot be exported.")
        if not isinstance(value, Tensor):
            raise ValueError(
                f"Layer {name!r} outputs {type(value).__name__}, not one tensor: it cannot be "
                "exported as a graph output; pick one of its submodules instead."
            )
        if value.dim() not in (2, 3, 4) or not value.is_floating_point():
            raise ValueError(
                f"Layer {name!r} outputs a {value.dtype} tensor of shape {tuple(value.shape)}; "
                "only (N, C, H, W) / (N, H, W, C) maps, (N, tokens, C) token sequences and (N, C) "
                "float activations can be exported for mining."
            )
        if calls.get(name, 0) > 1:
            warnings.warn(
                f"Layer {name!r} runs {calls[name]} times per forward pass; its first output is "
                "exported (as LayerTopKPatches mines it).",
                UserWarning,
                stacklevel=3,
            )
    return out


def _torch_export(tap: nn.Module, dummy: Tensor, export_names: Sequence[str], dynamic_batch: bool,
                  opset: int, names: Sequence[str], size: Tuple[int, int]) -> bytes:
    r"""Step 2: ``torch.onnx.export`` (TorchScript-based) to bytes. TorchScript refuses some names
    as outputs (a Sequential child ``"0"``): the layers are exported under placeholders and
    renamed in step 3 (any string is valid in ONNX)."""
    axes = {k: {0: "batch"} for k in ["input", *export_names]} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
            # shape checks traced as constants: the parity check below catches a graph that differs
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                tap, (dummy,), buffer, dynamo=False, input_names=["input"],
                output_names=list(export_names), dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"torch.onnx could not export {type(tap.model).__name__} with layers {list(names)} at "
            f"{size[0]}x{size[1]} (opset {opset}): {msg}"
        ) from exc
    return buffer.getvalue()


def _verified_graph(data: bytes, export_names: Sequence[str], names: Sequence[str]) -> Any:
    r"""Step 3: the graph passes ``onnx.checker``, its layer outputs get the layer names, and
    every layer is a graph output that depends on the input."""
    proto = load_onnx(data)
    _rename_tensors(proto, dict(zip(export_names[1:], names)))
    got = [o.name for o in proto.graph.output]
    missing = [n for n in [export_names[0], *names] if n not in got]
    if missing:
        raise ValueError(
            f"Layer(s) {missing} are missing from the exported graph's outputs {got}: the "
            "exporter fused them away or renamed them."
        )
    produced = {t.name: t for t in list_tensors(proto, minable_only=False)}
    for name in names:
        t = produced.get(name)
        if t is None or not t.depends_on_input:
            raise ValueError(
                f"Layer {name!r} was constant-folded away at export: its output does not "
                "depend on the input, so there is nothing to mine."
            )
    return proto


def _parity(proto: Any, tap: nn.Module, images: Tensor, source: str, all_outputs: Sequence[str],
            dynamic_batch: bool, device: torch.device, atol: float, rtol: float,
            providers: Optional[Sequence[str]], size: Tuple[int, int]) -> Dict[str, Any]:
    r"""Step 4: ONNX Runtime against PyTorch on ``images``; an output passes when
    ``max |ORT - torch| <= atol + rtol * max |torch|``. Returns the sidecar's ``parity`` entry."""
    diffs: Dict[str, float] = {}
    tols: Dict[str, float] = {}
    provider = None
    if images.numel():
        session = make_session(proto, resolve_providers(providers))
        provider = session.get_providers()[0]
        refs: List[List[np.ndarray]] = []
        onnx_outs: List[List[np.ndarray]] = []
        chunks = [images] if dynamic_batch else [images[i : i + 1] for i in range(images.shape[0])]
        for chunk in chunks:
            with torch.no_grad():
                refs.append([t.detach().cpu().numpy() for t in tap(chunk.to(device))])
            onnx_outs.append(session.run(list(all_outputs), {"input": chunk.numpy()}))
        for i, name in enumerate(all_outputs):
            ref = np.concatenate([r[i] for r in refs])
            got_i = np.concatenate([o[i] for o in onnx_outs])
            diffs[name] = float(np.abs(ref.astype(np.float64) - got_i).max())
            tols[name] = float(atol + rtol * np.abs(ref).max())
        bad = {n: (diffs[n], tols[n]) for n in all_outputs if not diffs[n] <= tols[n]}
        if bad:
            detail = ", ".join(f"{n}: max |diff| = {d:.3g} > tolerance {t:.3g}" for n, (d, t) in bad.items())
            raise ValueError(
                f"ONNX Runtime ({provider}) and PyTorch disagree on {images.shape[0]} {source} at "
                f"{size[0]}x{size[1]}: {detail}. The export is not faithful (an operator "
                "exported with other semantics, data-dependent control flow frozen by tracing?); "
                "nothing was written. Pass check_images=0 to skip this check."
            )
    return {"images": int(images.shape[0]) if images.numel() else 0, "source": source,
            "provider": provider, "max_abs_diff": diffs, "tolerance": tols}


def _layouts_and_fields(model: nn.Module, named: Sequence[Tuple[str, nn.Module]], channels: int,
                        size: Tuple[int, int], device: torch.device
                        ) -> Tuple[Dict[str, ReceptiveField], Dict[str, Dict[str, Any]]]:
    r"""Step 5: layouts and receptive fields, as the PyTorch source finds them (NaN probe, cached):
    ``(fields of the layers with a receptive-field box, layouts other than NCHW / NC)``."""
    rfs: Dict[str, ReceptiveField] = {}
    layouts: Dict[str, Dict[str, Any]] = {}
    infos = TorchSource(model, dict(named), progress=False).layer_infos(torch.zeros(1, channels, *size, device=device))
    for n, _ in named:
        li = infos[n]
        if li.box_kind == "receptive_field":
            rfs[n] = li.field
        if li.layout not in ("NCHW", "NC"):
            layouts[n] = {"layout": li.layout, "prefix_tokens": li.prefix_tokens, "grid": list(li.grid)}
    return rfs, layouts


def _sidecar(names: List[str], size: Tuple[int, int], output_name: str, channels: int, dynamic_batch: bool,
             mean: Tuple[float, ...], std: Tuple[float, ...], shapes: Dict[str, List[int]],
             rfs: Dict[str, ReceptiveField], layouts: Dict[str, Dict[str, Any]], parity: Dict[str, Any],
             opset: int, info: Optional[ModelInfo], model: nn.Module, path: Path) -> Sidecar:
    r"""Step 6: what the sidecar records (preprocessing, shapes, fields, parity, versions)."""
    import onnxruntime

    return Sidecar(
        layers=names, input_size=size, input_name="input", output_name=output_name,
        channels=channels, dynamic_batch=dynamic_batch, mean=mean, std=std,
        output_shapes=shapes, receptive_fields=rfs, layouts=layouts, parity=parity,
        exporter={"name": EXPORTER, "opset": opset, "torch": torch.__version__,
                  "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "captum_topk": __version__},
        categories=list(info.categories) if info is not None and info.categories else None,
        model=type(model).__name__, onnx_file=path.name,
    )
