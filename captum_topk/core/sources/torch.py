r"""The PyTorch activation source: forward hooks on named modules of any ``nn.Module`` or
forward function (``DataParallel`` included), the forward stopped after the deepest layer."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from captum.attr import LayerActivation
from torch import Tensor, nn

from ...capture.hooks import LayersSpec, resolve_layers, run_capture
from ...capture.layouts import ChannelsLastError
from ...utils.modules import device_dtype, first_conv, in_training, root_module
from .mapped import MappedSource
from .layouts import LAYOUT_CHOICES, check_per_layer, per_layer

__all__ = ["TorchSource", "layer_infos"]




class TorchSource(MappedSource):
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
        layout (str or dict): ``"auto"`` (default), ``"NCHW"``, ``"NHWC"``, ``"NLC"`` or
            ``"NC"``, for every layer or per layer name. ``"auto"``: 2-D outputs are ``NC``,
            3-D outputs tokens ``NLC``, 4-D outputs ``NCHW`` unless the receptive-field probe
            finds dimension 1 behaving like an image axis (channels-last: ``NHWC``).
        token_grid (tuple of int or dict, optional): ``(h, w)`` patch grid of token layers, when
            the model and the token count do not settle it (see :mod:`captum_topk.capture.tokens`);
            one for every layer or a dict by layer name.
        prefix_tokens (int or dict, optional): tokens before the patch grid (class, distillation,
            registers), one count or a dict by layer name; mined as a layer of their own,
            ``"<name>[prefix]"``.
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
        layout: Union[str, Dict[str, str]] = "auto",
        token_grid: Union[None, Tuple[int, int], Dict[str, Tuple[int, int]]] = None,
        prefix_tokens: Union[None, int, Dict[str, int]] = None,
        probe_batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        for value in (layout.values() if isinstance(layout, dict) else [layout]):
            if value not in LAYOUT_CHOICES:
                raise ValueError(f"layout must be one of {LAYOUT_CHOICES} (or a dict of them by layer), got {value!r}.")
        self.forward_func = forward_func
        self.named: List[Tuple[str, nn.Module]] = resolve_layers(forward_func, layer)
        self.names = [n for n, _ in self.named]
        self.device_ids = list(device_ids) if device_ids else None
        self.attribute_to_layer_input = bool(attribute_to_layer_input)
        if isinstance(layout, dict) and set(layout) - set(self.names):
            raise ValueError(f"layout names layers {sorted(set(layout) - set(self.names))} that are not mined.")
        self.layout = layout
        check_per_layer("token_grid", token_grid, self.names)
        check_per_layer("prefix_tokens", prefix_tokens, self.names)
        self.token_grid = token_grid
        self.prefix_tokens = prefix_tokens
        self.probe_batch_size = int(probe_batch_size)
        self.progress = progress
        self.root = root_module(forward_func)
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
                               stop_early=True, device_ids=self.device_ids, names=self.names)
        except RuntimeError as exc:
            hint = self._channel_hint(images)
            if hint is not None and "channel" in str(exc):
                raise ValueError(hint) from exc
            raise

    def attribute(self, inputs: Any, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False) -> Any:
        r"""As ``captum.attr.LayerActivation``; a layer returning a tuple or a ``ModelOutput``
        (transformers blocks) gives its hidden state (:func:`~captum_topk.capture.hooks.hidden_state`),
        which Captum's hook cannot copy (it clones every element, ``None`` included)."""
        layer = self.modules[0] if len(self.modules) == 1 else self.modules
        try:
            return LayerActivation(self.forward_func, layer, self.device_ids).attribute(
                inputs, additional_forward_args, attribute_to_layer_input)
        except (AttributeError, TypeError) as exc:
            if "clone" not in str(exc) and "tuple" not in str(exc):
                raise
        outs = run_capture(self.forward_func, self.modules, inputs, additional_forward_args,
                           attribute_to_layer_input=attribute_to_layer_input, stop_early=True,
                           device_ids=self.device_ids, names=self.names)
        return outs[0] if len(outs) == 1 else outs

    # ------------------------------------------------------------------ checks
    def check_images(self, images: Tensor) -> None:
        if not self._warned_training and in_training(self.root):
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
    def _wanted(self, name: str, raw: Tensor) -> str:
        return self.layout.get(name, "auto") if isinstance(self.layout, dict) else self.layout

    def _token_options(self, name: str) -> Tuple[Any, Optional[int], Optional[Tuple[int, int]]]:
        return self.root, per_layer(self.prefix_tokens, name), per_layer(self.token_grid, name)

    def _token_fields(self, tokens: Dict[str, Tuple[int, Tuple[int, int]]], size: Tuple[int, int],
                      channels: int) -> Dict[str, Any]:
        r"""Global token layers keep their patch footprint; window-local ones (Swin, patch
        embeddings) get their measured field (:func:`~captum_topk.receptive_field.probe.token_fields`)."""
        module_of = dict(self.named)
        from ...receptive_field.probe import token_fields  # the prober loads when first needed

        return token_fields(self.forward_func, [(n, module_of[n], p, g) for n, (p, g) in tokens.items()], size,
                            attribute_to_layer_input=self.attribute_to_layer_input, in_channels=channels,
                            batch_size=self.probe_batch_size, progress=self.progress)

    def _fields(self, names: Sequence[str], layouts: Dict[str, str], size: Tuple[int, int],
                channels: int) -> Dict[str, Any]:
        r"""Exact receptive fields of the 4-D layers; ``"auto4"`` layers the probe finds
        channels-last are measured as such and listed under ``"__channels_last__"``."""
        if not names:
            return {}
        from ...receptive_field.probe import receptive_fields  # the tracer loads when first needed

        module_of = dict(self.named)
        last = [n for n in names if layouts[n] == "NHWC"]

        def measure(which: Sequence[str], nhwc: Sequence[str]) -> Dict[str, Any]:
            got = receptive_fields(
                self.forward_func, [module_of[n] for n in which], size,
                attribute_to_layer_input=self.attribute_to_layer_input,
                in_channels=channels,  # what is mined, whatever the first conv takes
                batch_size=self.probe_batch_size,  # the probe's peak memory stays below a batch's
                progress=self.progress, channels_last=[module_of[n] for n in nhwc])
            return dict(zip(which, got.values()))

        try:
            return measure(names, last)
        except ChannelsLastError as exc:
            # the probe names layers as resolve_layers does: map them back to ours, in order
            probed = [n for n, _ in resolve_layers(self.forward_func, [module_of[n] for n in names])]
            ours = dict(zip(probed, names))
            found = [ours[n] for n in exc.layers if n in ours]
            forced = [n for n in found if layouts[n] == "NCHW"]
            if forced or not found:
                raise
            got = {ours[n]: rf for n, rf in (exc.fields or {}).items() if n in ours}
            # the trace found the layout and measured every field already; else measure again
            fields = {n: got[n] for n in names} if set(got) >= set(names) else measure(names, last + found)
            fields["__channels_last__"] = found
            return fields

    def describe(self) -> Dict[str, Any]:
        root = self.root
        return {"backend": "pytorch",
                "model": root.__class__.__name__ if root is not None
                else getattr(self.forward_func, "__name__", "forward_func")}


def layer_infos(
    model: Callable[..., Any],
    layers: LayersSpec,
    input_size: Union[int, Tuple[int, int]],
    *,
    in_channels: int = 3,
    layout: Union[str, Dict[str, str]] = "auto",
    token_grid: Union[None, Tuple[int, int], Dict[str, Tuple[int, int]]] = None,
    prefix_tokens: Union[None, int, Dict[str, int]] = None,
) -> Dict[str, Any]:
    r"""What the miner finds for each layer at one input size, without mining: layout, channels,
    grid, prefix tokens, boxes (a :class:`~.base.LayerInfo` per layer, and per ``"<layer>[prefix]"``).

    The detection is the miner's (one zero image through the model, then the layout checks and
    receptive fields, cached per architecture): feature visualization and other tools that hook
    a layer read its layout here rather than guess it.

    Args:
        model (nn.Module or Callable): the network.
        layers: as in :class:`TorchSource`.
        input_size (int or tuple of int): ``H`` or ``(H, W)``.
        in_channels (int): input channels. Default: 3.
        layout, token_grid, prefix_tokens: as in :class:`TorchSource` (one value or a dict by layer).
    Returns:
        dict of str to LayerInfo.
    Raises:
        ValueError: a layer whose layout cannot be mined (the message says what to pass).
    Example::
        >>> info = layer_infos(vit, "blocks.3", 224)["blocks.3"]
        >>> info.layout, info.prefix_tokens, info.grid
        ('NLC', 1, (14, 14))
    """
    import torch

    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    source = TorchSource(model, layers, layout=layout, token_grid=token_grid, prefix_tokens=prefix_tokens,
                         progress=False)
    device, dtype = device_dtype(source.root) if source.root is not None else (None, None)
    images = torch.zeros(1, in_channels, *size, device=device, dtype=dtype or torch.float32)
    return source.layer_infos(images)
