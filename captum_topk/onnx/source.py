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

from ..capture.layouts import ChannelsLastError
from ..core.sources.mapped import MappedSource
from .graph import ModelLike, load_onnx, resolve_tensors
from .runtime import OnnxForward, onnx_digest, onnx_receptive_fields
from .sidecar import Sidecar, load_sidecar

__all__ = ["OnnxSource"]


class OnnxSource(MappedSource):
    r"""Activations of tensors of an ONNX model, computed by ONNX Runtime.

    Args:
        onnx_model (str, bytes or onnx.ModelProto): an ONNX file (its sidecar is read when
            present), its bytes or proto.
        layers (str or list of str, optional): exported layer names or any intermediate tensor
            / node name; default: every layer the sidecar lists.
        providers (list of str, optional): execution providers in order of preference; default
            CUDA, then CPU, filtered to those available.
        input_layout (str): ``"auto"``, ``"NCHW"`` or ``"NHWC"`` (images are always given NCHW).
        activation_layout (str): ``"NCHW"`` or ``"NHWC"``: layout of every chosen 4-D tensor
            (one switch for all of them, used where ``layout`` is ``"auto"``; ``layout=`` says it
            per tensor).
        layout (str or dict): ``"auto"`` (default), ``"NCHW"``, ``"NHWC"``, ``"NLC"``, ``"NC"``
            for every tensor or per layer name. ``"auto"``: what the export sidecar recorded,
            else 2-D tensors are vectors, 3-D ones tokens, 4-D ones channels-first unless the
            receptive-field probe finds them channels-last.
        token_grid (tuple of int, optional), prefix_tokens (int, optional): for token tensors
            whose grid cannot be inferred from the token count.
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
        layout: Union[str, Dict[str, str]] = "auto",
        token_grid: Optional[Tuple[int, int]] = None,
        prefix_tokens: Optional[int] = None,
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
                                   input_layout, "NCHW", True, threads)  # raw tensors: layouts are ours
        self.provider: str = self.forward.provider
        self.providers: List[str] = self.forward.providers
        self._providers_wanted = providers
        if activation_layout.upper() not in ("NCHW", "NHWC"):
            raise ValueError(f"activation_layout must be 'NCHW' or 'NHWC', got {activation_layout!r}.")
        self.layout = layout
        self._maps_channels_last = activation_layout.upper() == "NHWC"
        self.token_grid, self.prefix_tokens = token_grid, prefix_tokens
        self.rf_batch_size = int(rf_batch_size)
        self.progress = progress
        self._digest: Optional[str] = None

    def _raw(self, images: Tensor, additional_forward_args: Any = None) -> List[Tensor]:
        if additional_forward_args is not None:
            raise ValueError("An ONNX model takes the images only: additional_forward_args is not supported.")
        return self.forward(images)

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

    def _wanted(self, name: str, out: Tensor) -> str:
        declared = (self.sidecar.layouts.get(name, {}) if self.sidecar is not None else {}).get("layout")
        wanted = self.layout.get(name, "auto") if isinstance(self.layout, dict) else self.layout
        if wanted == "auto" and declared:
            return declared
        if wanted == "auto" and self._maps_channels_last and out.dim() == 4:
            return "NHWC"
        return wanted

    def _token_options(self, name: str) -> Tuple[Any, Optional[int], Optional[Tuple[int, int]]]:
        declared = self.sidecar.layouts.get(name, {}) if self.sidecar is not None else {}
        prefix = self.prefix_tokens if self.prefix_tokens is not None else declared.get("prefix_tokens")
        return None, prefix, self.token_grid or declared.get("grid")

    def _fields(self, names: Sequence[str], layouts: Dict[str, str], size: Tuple[int, int],
                channels: int = 3) -> Dict[str, Any]:
        r"""Receptive fields: the sidecar's for the exported size, else probed through ONNX
        Runtime (``"auto4"`` tensors the probe finds channels-last are probed again as such)."""
        out: Dict[str, Any] = {}
        sc = self.sidecar
        for name in names:
            rf = sc.receptive_fields.get(name) if sc is not None else None
            if rf is not None and tuple(rf.input_size) == tuple(size):
                out[name] = rf
        todo = [n for n in names if n not in out]
        nchw = [n for n in todo if layouts[n] != "NHWC"]
        nhwc = [n for n in todo if layouts[n] == "NHWC"]
        try:
            out.update(self._probe(nchw, "NCHW", size))
        except ChannelsLastError as exc:
            tensor_of = dict(self.pairs)
            found = [n for n in nchw if tensor_of[n] in exc.layers or n in exc.layers]
            if not found or any(layouts[n] == "NCHW" for n in found):
                raise
            out.update(self._probe([n for n in nchw if n not in found], "NCHW", size))
            nhwc += found
            out["__channels_last__"] = found
        out.update(self._probe(nhwc, "NHWC", size))
        return out

    def _probe(self, names: Sequence[str], activation_layout: str, size: Tuple[int, int]) -> Dict[str, Any]:
        if not names:
            return {}
        if self._digest is None:
            self._digest = onnx_digest(self.proto)
        tensor_of = dict(self.pairs)
        probed = onnx_receptive_fields(
            self.proto, [tensor_of[n] for n in names], size,
            input_layout=self.forward.spec.layout, activation_layout=activation_layout,
            providers=self._providers_wanted, batch_size=self.rf_batch_size,
            progress=self.progress, digest=self._digest)
        return {n: probed[tensor_of[n]] for n in names}

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
