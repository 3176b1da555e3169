r"""The ONNX Runtime activation source: chosen tensors of an ONNX graph made outputs of a
pruned copy (ONNX Runtime stops after the deepest one), run on image batches.

Receptive fields come from the export sidecar (``<file>.onnx.json``) for the input size it was
exported at, else they are measured through ONNX Runtime
(:func:`~captum_topk.onnx.runtime.onnx_receptive_fields`, cached), on the first batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import onnx  # the real package
from torch import Tensor

from ..core.sources.base import ActivationSource, LayerInfo
from .graph import ModelLike, load_onnx, resolve_tensors
from .runtime import OnnxForward, model_digest, onnx_receptive_fields
from .sidecar import Sidecar, load_sidecar

__all__ = ["OnnxSource"]


class OnnxSource(ActivationSource):
    r"""Activations of tensors of an ONNX model, computed by ONNX Runtime.

    Args:
        onnx_model (str, bytes or onnx.ModelProto): an ONNX file (its sidecar is read when
            present), its bytes or proto.
        layers (str or list of str, optional): exported layer names or any intermediate tensor
            / node name; default: every layer the sidecar lists.
        providers (list of str, optional): execution providers in order of preference; default
            CUDA, then CPU, filtered to those available.
        input_layout (str): ``"auto"``, ``"NCHW"`` or ``"NHWC"`` (images are always given NCHW).
        activation_layout (str): ``"NCHW"`` or ``"NHWC"``: layout of the chosen 4-D tensors.
        threads (int, optional): ONNX Runtime intra-op threads.
        rf_batch_size (int): images per run of the receptive-field probe.
        progress (bool): a progress bar while probing receptive fields.

    Example::
        >>> source = OnnxSource("onnx_models/mnv2.onnx", ["features.3"])
        >>> source(images)["features.3"].shape
        torch.Size([8, 24, 56, 56])
    """

    def __init__(
        self,
        onnx_model: ModelLike,
        layers: Optional[Union[str, Sequence[str]]] = None,
        *,
        providers: Optional[Sequence[str]] = None,
        input_layout: str = "auto",
        activation_layout: str = "NCHW",
        threads: Optional[int] = None,
        rf_batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        self.onnx_path = None if isinstance(onnx_model, (bytes, bytearray, onnx.ModelProto)) else str(onnx_model)
        self.sidecar: Optional[Sidecar] = load_sidecar(self.onnx_path) if self.onnx_path else None
        self.proto = load_onnx(onnx_model)
        if layers is None:
            if self.sidecar is None:
                raise ValueError("Pass layers=[...]: this ONNX model has no export sidecar listing them "
                                 "(see `captum-topk layers MODEL.onnx`).")
            layers = list(self.sidecar.layers)
        names = [layers] if isinstance(layers, str) else list(layers)
        self.pairs: List[Tuple[str, str]] = resolve_tensors(self.proto, names)
        self.names = [layer for layer, _ in self.pairs]
        self.forward = OnnxForward(self.proto, [t for _, t in self.pairs], providers,
                                   input_layout, activation_layout, True, threads)
        self.provider: str = self.forward.provider
        self.providers: List[str] = self.forward.providers
        self._providers_wanted = providers
        self.activation_layout = activation_layout.upper()
        self.rf_batch_size = int(rf_batch_size)
        self.progress = progress
        self._digest: Optional[str] = None
        self._infos: Dict[Tuple[int, int, int], Dict[str, LayerInfo]] = {}

    def __call__(self, images: Tensor, additional_forward_args: Any = None) -> Dict[str, Tensor]:
        if additional_forward_args is not None:
            raise ValueError("An ONNX model takes the images only: additional_forward_args is not supported.")
        outs = self.forward(images)
        infos = self._infos_for(images, outs)
        for name, out in zip(self.names, outs):
            if tuple(out.shape[1:]) != infos[name].raw_shape:
                raise ValueError(f"Tensor {name!r} gave shape {tuple(out.shape[1:])} for this batch but "
                                 f"{infos[name].raw_shape} for the first batch of the same input size.")
        return dict(zip(self.names, outs))

    def attribute(self, inputs: Any, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False) -> Any:
        if attribute_to_layer_input:
            raise ValueError("attribute_to_layer_input is not available for ONNX models.")
        if additional_forward_args is not None:
            raise ValueError("An ONNX model takes the images only: additional_forward_args is not supported.")
        outs = self.forward(inputs)
        return outs[0] if len(outs) == 1 else outs

    def check_images(self, images: Tensor) -> None:
        self.forward.check(images)

    def layer_infos(self, images: Tensor) -> Dict[str, LayerInfo]:
        key = (int(images.shape[2]), int(images.shape[3]), int(images.shape[1]))
        if key not in self._infos:
            self._infos_for(images[:1], self.forward(images[:1]))
        return self._infos[key]

    def _infos_for(self, images: Tensor, outs: Sequence[Tensor]) -> Dict[str, LayerInfo]:
        key = (int(images.shape[2]), int(images.shape[3]), int(images.shape[1]))
        if key in self._infos:
            return self._infos[key]
        size = (key[0], key[1])
        for name, out in zip(self.names, outs):
            if out.dim() not in (2, 4):
                raise ValueError(f"Tensor {name!r} has shape {tuple(out.shape)}; only (N, C, H, W) feature "
                                 "maps and (N, C) vectors can be mined.")
        spatial = [name for name, out in zip(self.names, outs) if out.dim() == 4]
        fields = self._fields(spatial, size)
        infos = {}
        for name, out in zip(self.names, outs):
            shape = tuple(int(d) for d in out.shape[1:])
            if out.dim() == 2:
                infos[name] = LayerInfo(name, "NC", shape[0], (1, 1), shape, size, None, "image")
            else:
                infos[name] = LayerInfo(name, self.activation_layout, shape[0], (shape[1], shape[2]), shape,
                                        size, fields[name], "receptive_field")
        self._infos[key] = infos
        return infos

    def _fields(self, names: Sequence[str], size: Tuple[int, int]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        sc = self.sidecar
        for name in names:
            rf = sc.receptive_fields.get(name) if sc is not None else None
            if rf is not None and tuple(rf.input_size) == tuple(size):
                out[name] = rf
        todo = [n for n in names if n not in out]
        if todo:
            if self._digest is None:
                self._digest = model_digest(self.proto)
            tensor_of = dict(self.pairs)
            probed = onnx_receptive_fields(
                self.proto, [tensor_of[n] for n in todo], size,
                input_layout=self.forward.spec.layout, activation_layout=self.activation_layout,
                providers=self._providers_wanted, batch_size=self.rf_batch_size,
                progress=self.progress, digest=self._digest)
            out.update({n: probed[tensor_of[n]] for n in todo})
        return out

    def describe(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = {
            "model": Path(self.onnx_path).name if self.onnx_path else "onnx model",
            "backend": "onnxruntime", "provider": self.provider, "providers": list(self.providers),
            "onnx_path": self.onnx_path, "tensors": {layer: tensor for layer, tensor in self.pairs},
        }
        if self.sidecar is not None:
            meta.update(mean=list(self.sidecar.mean) if self.sidecar.mean else None,
                        std=list(self.sidecar.std) if self.sidecar.std else None,
                        input_size=list(self.sidecar.input_size))
        return meta
