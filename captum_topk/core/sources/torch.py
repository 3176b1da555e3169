r"""The PyTorch activation source: forward hooks on named modules of any ``nn.Module`` or
forward function (``DataParallel`` included), the forward stopped after the deepest layer."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from captum.attr import LayerActivation
from torch import Tensor, nn

from ...capture.hooks import LayersSpec, resolve_layers, run_capture
from ...receptive_field.probe import receptive_fields
from ...utils.modules import device_dtype, first_conv, root_module
from .base import ActivationSource, LayerInfo

__all__ = ["TorchSource"]

_LAYOUTS = ("auto", "NCHW", "NC")


class TorchSource(ActivationSource):
    r"""Activations of named layers of a PyTorch model, captured by forward hooks.

    Hooks are registered for each batch and removed in ``finally``, also when the forward
    raises; the forward stops right after the deepest requested layer ran. Outputs of layers
    that run before the deepest one are copied, so that later in-place operations cannot
    change them. Images are moved to the model's device.

    Args:
        forward_func (Callable or nn.Module): the model, or any function running it.
        layer (str, nn.Module, list of them, or dict of name to module): the layers, see
            :func:`captum_topk.capture.hooks.resolve_layers` (how layers of a plain forward
            function are named).
        device_ids (list of int, optional): as in Captum, for a ``DataParallel`` forward.
        attribute_to_layer_input (bool): the layers' inputs instead of their outputs.
        layout (str): ``"auto"``, ``"NCHW"`` or ``"NC"``.
        probe_batch_size (int): images per forward of the receptive-field probe.
        progress (bool): a progress bar while receptive fields are measured.

    Example::

        >>> source = TorchSource(model, ["features.3", "features.7"])
        >>> acts = source(images)                  # {"features.3": (N, 24, 56, 56), ...}
        >>> source.layer_infos(images)["features.7"].field.size
        (75, 75)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: LayersSpec,
        *,
        device_ids: Optional[Sequence[int]] = None,
        attribute_to_layer_input: bool = False,
        layout: str = "auto",
        probe_batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}.")
        self.forward_func = forward_func
        self.named: List[Tuple[str, nn.Module]] = resolve_layers(forward_func, layer)
        self.names = [n for n, _ in self.named]
        self.device_ids = list(device_ids) if device_ids else None
        self.attribute_to_layer_input = bool(attribute_to_layer_input)
        self.layout = layout
        self.probe_batch_size = int(probe_batch_size)
        self.progress = progress
        self.root = root_module(forward_func)
        self._infos: Dict[Tuple[int, int, int], Dict[str, LayerInfo]] = {}
        self._warned_training = False

    @property
    def modules(self) -> List[nn.Module]:
        return [m for _, m in self.named]

    # ------------------------------------------------------------------ forward
    def _raw(self, images: Tensor, additional_forward_args: Any = None) -> List[Tensor]:
        device = device_dtype(self.root)[0]
        if device is not None and images.device != device and not self.device_ids:
            images = images.to(device, non_blocking=True)
        try:
            return run_capture(self.forward_func, self.modules, images, additional_forward_args,
                               attribute_to_layer_input=self.attribute_to_layer_input,
                               stop_early=True, device_ids=self.device_ids)
        except RuntimeError as exc:
            hint = self._channel_hint(images)
            if hint is not None and "channel" in str(exc):
                raise ValueError(hint) from exc
            raise

    def __call__(self, images: Tensor, additional_forward_args: Any = None) -> Dict[str, Tensor]:
        raws = self._raw(images, additional_forward_args)
        infos = self._infos_for(images, raws)
        return {name: _canonical(raw, infos[name]) for name, raw in zip(self.names, raws)}

    def attribute(self, inputs: Any, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False) -> Any:
        layer = self.modules[0] if len(self.modules) == 1 else self.modules
        return LayerActivation(self.forward_func, layer, self.device_ids).attribute(
            inputs, additional_forward_args, attribute_to_layer_input)

    # ------------------------------------------------------------------ checks
    def check_images(self, images: Tensor) -> None:
        if self.root is not None and self.root.training and not self._warned_training:
            self._warned_training = True
            warnings.warn(
                "The model is in training mode (dropout, batch statistics): call model.eval() "
                "before mining for deterministic results.", UserWarning, stacklevel=4)

    def _channel_hint(self, images: Tensor) -> Optional[str]:
        r"""A hint when the images' channels differ from the first convolution's (given only
        when the forward fails: a space-to-depth stem legitimately changes the count)."""
        conv = first_conv(self.root)
        if conv is not None and images.dim() == 4 and images.shape[1] != conv[1].in_channels:
            c = conv[1].in_channels
            return (
                f"The batch has {images.shape[1]} channels but the model's first convolution "
                f"takes {c}; convert images first (e.g. PIL .convert('RGB') or "
                f"transforms.Grayscale(num_output_channels={c}))."
            )
        return None

    # ------------------------------------------------------------------ layer infos
    def layer_infos(self, images: Tensor) -> Dict[str, LayerInfo]:
        key = _size_key(images)
        if key not in self._infos:
            with torch.no_grad():
                self._infos_for(images[:1], self._raw(images[:1]))
        return self._infos[key]

    def _infos_for(self, images: Tensor, raws: Sequence[Tensor]) -> Dict[str, LayerInfo]:
        key = _size_key(images)
        if key in self._infos:
            return self._infos[key]
        size, channels = (key[0], key[1]), key[2]
        layouts = {name: _layout_of(name, raw, self.layout) for name, raw in zip(self.names, raws)}
        spatial = [(n, m) for n, m in self.named if layouts[n] == "NCHW"]
        fields = {}
        if spatial:
            measured = receptive_fields(
                self.forward_func, [m for _, m in spatial], size,
                attribute_to_layer_input=self.attribute_to_layer_input,
                in_channels=channels,  # what is mined, whatever the first conv takes
                batch_size=self.probe_batch_size,  # the probe's peak memory stays below a batch's
                progress=self.progress)
            fields = dict(zip([n for n, _ in spatial], measured.values()))
        infos = {}
        for name, raw in zip(self.names, raws):
            shape = tuple(int(d) for d in raw.shape[1:])
            if layouts[name] == "NC":
                infos[name] = LayerInfo(name, "NC", shape[0], (1, 1), shape, size, None, "image")
            else:
                infos[name] = LayerInfo(name, "NCHW", shape[0], (shape[1], shape[2]), shape, size,
                                        fields[name], "receptive_field")
        self._infos[key] = infos
        return infos

    def describe(self) -> Dict[str, Any]:
        root = self.root
        return {"backend": "pytorch",
                "model": root.__class__.__name__ if root is not None
                else getattr(self.forward_func, "__name__", "forward_func")}


def _size_key(images: Tensor) -> Tuple[int, int, int]:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise TypeError(f"Expected (N, C, H, W) images, got {type(images).__name__}"
                        f"{tuple(images.shape) if isinstance(images, Tensor) else ''}.")
    return int(images.shape[2]), int(images.shape[3]), int(images.shape[1])


def _layout_of(name: str, raw: Tensor, wanted: str) -> str:
    if not isinstance(raw, Tensor) or raw.dim() not in (2, 4):
        shape = tuple(raw.shape) if isinstance(raw, Tensor) else type(raw).__name__
        raise ValueError(
            f"Layer {name!r} outputs shape {shape}; only (N, C, H, W) feature maps and (N, C) "
            "vectors can be mined."
        )
    layout = "NCHW" if raw.dim() == 4 else "NC"
    if wanted not in ("auto", layout):
        raise ValueError(f"Layer {name!r} outputs shape {tuple(raw.shape)}, which is not {wanted}.")
    return layout


def _canonical(raw: Tensor, info: LayerInfo) -> Tensor:
    r"""The activation as ``(N, C, h, w)`` or ``(N, C)``."""
    if raw.dim() > 1 and raw.dim() == len(info.raw_shape) + 1 and raw.shape[1] != info.raw_shape[0]:
        raise ValueError(
            f"This batch gives the layer {info.name!r} {raw.shape[1]} channels but earlier batches "
            f"gave {info.raw_shape[0]}; every batch must go through the same model and layer."
        )
    if raw.shape[1:] != torch.Size(info.raw_shape):
        raise ValueError(
            f"Layer {info.name!r} gave shape {tuple(raw.shape[1:])} for this batch but "
            f"{info.raw_shape} for the first batch of the same input size; every batch must go "
            "through the same model and layer."
        )
    return raw
