r"""Zeiler & Fergus projections of mined neurons, and mined neurons as Captum neuron selectors.

A mined record says *where* a channel fires: channel ``c`` of a layer at ``(y, x)`` in image
``index``. Zeiler & Fergus (2013) also projected that single activation back to pixel space
(a "deconvnet") to show *what* inside the patch drives it. Captum implements the projection
methods; this module makes every mined neuron a first-class input to them:

* :func:`neurons` gives each record with its Captum ``neuron_selector`` (``(c, y, x)`` for a
  feature map, ``c`` for a 2-D layer), so that any Captum neuron method
  (``NeuronIntegratedGradients``, ``NeuronGradientShap``, ...) can be applied to it;
* :func:`projections` projects each of a channel's top-k neurons onto its image with
  ``NeuronDeconvolution`` (Zeiler & Fergus), ``NeuronGuidedBackprop`` or any Captum
  neuron-attribution class, and crops each projection to the record's receptive field, padded
  exactly like :meth:`TopKResult.patches` so that patch and projection grids line up.

Display (:func:`symmetric_rgb`): a projection is signed; like the figures of Zeiler & Fergus it
is shown with zero as mid-grey: ``rgb = round(128 + 127 * a / s)`` clipped to 0..255, where
``s`` is the 99.5th percentile of ``|a|`` of that projection over its channels and pixels
(``percentile=100``: the largest ``|a|``; ``shared_scale=True``: one ``s`` over all the
projections of the call). A few extreme pixels would otherwise squeeze everything else to
grey; the 0.5 % above ``s`` saturate. Positive evidence is brighter than grey, negative
darker; colours keep their balance since one ``s`` serves all input channels.

ReLU handling: Captum's deconvolution / guided backprop override the backward pass of
``nn.ReLU`` *modules* only. Functional calls (``F.relu`` / ``torch.relu`` inside a
``forward``) are not overridden (a Captum limitation): on such a model the "projection" is a
plain gradient through those ReLUs. Modules of the types in ``relu_types`` (default
``nn.ReLU6``, which MobileNetV2 and EfficientNet-Lite use instead of ``nn.ReLU``) get the same
rule from this module: deconvolution passes ``relu(grad_output)`` back (ignoring the forward
mask), guided backprop ``relu(grad_input)``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop
from captum.attr._utils.attribution import NeuronAttribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..capture.hooks import resolve_layers
from .sources.layouts import PREFIX_SUFFIX, base_layer
from ..utils.modules import device_dtype, in_training, root_module
from .records import ImageSource, PatchRecord, record_image

__all__ = [
    "Neuron",
    "Projections",
    "METHODS",
    "neurons",
    "projections",
    "symmetric_rgb",
    "override_relus",
]

Selector = Union[int, Tuple[int, int, int]]
MethodSpec = Union[str, Type[NeuronAttribution], NeuronAttribution]

#: Projection methods by name.
METHODS: Dict[str, Type[NeuronAttribution]] = {
    "deconvolution": NeuronDeconvolution,
    "deconvnet": NeuronDeconvolution,
    "guided_backprop": NeuronGuidedBackprop,
    "gradient": NeuronGradient,
}
_RELU_RULE = {NeuronDeconvolution: True, NeuronGuidedBackprop: False}  # use grad_output?
#: Methods whose attribution of one example depends on that example only (one backward pass
#: serves a batch of records).
_BATCHABLE = (NeuronDeconvolution, NeuronGuidedBackprop, NeuronGradient)


def _groups(recs: Sequence[PatchRecord], batched: bool) -> List[List[int]]:
    r"""Record positions to attribute together: all of one input size when batched, else one each."""
    if not batched:
        return [[i] for i in range(len(recs))]
    by_size: Dict[Tuple[int, int], List[int]] = {}
    for i, r in enumerate(recs):
        by_size.setdefault(tuple(r.input_size), []).append(i)
    return list(by_size.values())


def _per_example(selectors: Sequence[Selector]) -> Callable[[Tensor], Tensor]:
    r"""A Captum neuron selector picking example i's own neuron ``selectors[i]``: ``(n,)``."""
    index = [torch.as_tensor([s] if isinstance(s, int) else s) for s in selectors]
    cols = torch.stack([i.reshape(-1) for i in index], dim=1)  # (dims, n)

    def select(out: Tensor) -> Tensor:
        rows = torch.arange(out.shape[0], device=out.device)
        return out[(rows, *[c.to(out.device) for c in cols])]

    return select


class Neuron(NamedTuple):
    r"""A mined record with its Captum ``neuron_selector``.

    Attributes:
        record (PatchRecord): the record (its ``index`` is the image, ``box`` the crop).
        selector (int or tuple[int, int, int]): ``(channel, y, x)`` for an (N, C, H, W)
            layer, ``channel`` for an (N, C) layer: pass it as ``neuron_selector=`` to any
            Captum neuron method built on the same layer.
    """

    record: PatchRecord
    selector: Selector


def neurons(result: Any, layer: str, channel: int, which: str = "top", n: Optional[int] = None) -> List[Neuron]:
    r"""The records of one channel as Captum neuron selectors, strongest first.

    Args:
        result (TopKResult): a mined result.
        layer (str): a mined layer name.
        channel (int): channel index.
        which (str): "top" or "bottom".
        n (int, optional): only the ``n`` strongest records.
    Returns:
        list[Neuron]: ``(record, selector)`` pairs (named tuples); ``record.index`` is the
        image to attribute.
    Example::
        >>> from captum.attr import NeuronIntegratedGradients
        >>> ig = NeuronIntegratedGradients(model, model.features[7])
        >>> for record, selector in result.neurons("features.7", 12):
        ...     image = dataset[record.index][0].unsqueeze(0)          # (1, 3, 224, 224)
        ...     attr = ig.attribute(image, neuron_selector=selector)   # (1, 3, 224, 224)
    """
    recs = result.records(layer, channel, which)[:n]
    return [Neuron(r, raw_selector(result, r)) for r in recs]


def raw_selector(result: Any, record: PatchRecord) -> Selector:
    r"""A record's neuron in the layer's *raw* output, as Captum neuron methods index it:
    ``(c, y, x)`` for channels-first maps, ``(y, x, c)`` for channels-last ones, ``(token, c)``
    for tokens (``prefix + y * w + x`` for patches, ``y`` for prefix tokens) and ``c`` for vectors.
    """
    meta = result.layer_info.get(record.layer) or {}
    if meta.get("concept"):
        raise ValueError(f"{record.layer!r} is a concept layer: its units are directions, not neurons of the "
                         "model's output, so Captum neuron methods and projections do not apply to them.")
    layout = meta.get("layout", "NCHW" if result.states[record.layer].spatial else "NC")
    if layout == "NC":
        return record.channel
    if layout == "NHWC":
        return (record.y, record.x, record.channel)
    if layout == "NLC":
        if record.layer.endswith(PREFIX_SUFFIX):
            return (record.y, record.channel)
        width = result.states[record.layer].out_size[1]
        return (int(meta.get("prefix_tokens", 0)) + record.y * width + record.x, record.channel)
    return (record.channel, record.y, record.x)


@dataclass
class Projections:
    r"""The projections of a channel's records onto their images.

    Attributes:
        attributions (Tensor): (n, C, h, w) float32 attributions, each cropped to its
            record's receptive field and padded like :meth:`TopKResult.patches` (zeros in the
            padding); (n, C, H, W) uncropped with ``crop=False``.
        rgb (numpy.ndarray): (n, h, w, 3) uint8, symmetric around 0 (mid-grey): see
            :func:`symmetric_rgb`.
        records (list[PatchRecord]): the n records, strongest first.
        method (str): the Captum class used, e.g. ``"NeuronDeconvolution"``.
        scale (Tensor): (n,) the ``max |a|`` each rendering was divided by.
    """

    attributions: Tensor
    rgb: np.ndarray
    records: List[PatchRecord]
    method: str
    scale: Tensor = field(default_factory=lambda: torch.empty(0))

    def __len__(self) -> int:
        return len(self.records)


def symmetric_rgb(
    attributions: Tensor, shared_scale: bool = False, percentile: float = 99.5
) -> Tuple[np.ndarray, Tensor]:
    r"""Render signed attributions as RGB with 0 at mid-grey, as in Zeiler & Fergus' figures.

    ``rgb = round(128 + 127 * a / s)`` clipped to 0..255, ``s`` the ``percentile``-th
    percentile of ``|a|`` of each attribution over its channels and pixels (linear
    interpolation, as ``numpy.percentile``; the largest ``|a|`` when that percentile is 0);
    one ``s`` for all with ``shared_scale``. An all-zero attribution is uniform grey. Three
    channels are shown as RGB; any other channel count as grey levels of the channel sum.

    Args:
        attributions (Tensor): (n, C, h, w).
        shared_scale (bool): one scale for the n attributions (compare their strengths)
            instead of one each (see each one's structure). Default: False.
        percentile (float): in (0, 100]; 100 divides by the largest ``|a|`` (nothing
            saturates). Default: 99.5.
    Returns:
        (numpy.ndarray, Tensor): (n, h, w, 3) uint8 images and the (n,) scales used.
    Example::
        >>> rgb, s = symmetric_rgb(proj.attributions)
    """
    a = attributions.detach().to("cpu", torch.float64)
    if a.dim() != 4:
        raise ValueError(f"attributions must be (n, C, h, w), got {tuple(a.shape)}.")
    if a.shape[1] != 3:
        a = a.sum(dim=1, keepdim=True)
    if a.shape[0] == 0:
        return np.zeros((0, a.shape[2], a.shape[3], 3), np.uint8), torch.empty(0)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}.")
    mag = a.abs().flatten(1)
    if shared_scale:
        mag = mag.reshape(1, -1)
    top = mag.amax(dim=1)
    s = top if percentile == 100 else torch.quantile(mag, percentile / 100.0, dim=1)
    s = torch.where(s > 0, s, top)
    if shared_scale:
        s = s.expand(a.shape[0]).clone()
    safe = torch.where(s > 0, s, torch.ones_like(s)).view(-1, 1, 1, 1)
    rgb = torch.round(128.0 + 127.0 * a / safe).clamp_(0, 255).to(torch.uint8)
    rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy()), s.float()


# ---------------------------------------------------------------------------------------
# ReLU-like modules that Captum does not override
# ---------------------------------------------------------------------------------------


class _Slot:
    __slots__ = ("grad_out",)

    def __init__(self) -> None:
        self.grad_out: Optional[Tensor] = None


class _ReluTap(torch.autograd.Function):
    r"""Identity (a copy) in front of a ReLU-like module; its backward applies the
    deconvnet / guided-backprop rule to the gradient that reaches the module's input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, slot: _Slot, use_grad_output: bool) -> Tensor:  # type: ignore[override]
        ctx.slot, ctx.use_grad_output = slot, use_grad_output
        return x.clone()  # a fresh tensor, so that in-place modules (ReLU6(inplace=True)) are fine

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None]:  # type: ignore[override]
        if ctx.use_grad_output and ctx.slot.grad_out is not None:
            out = F.relu(ctx.slot.grad_out)  # deconvnet: ignore the forward mask
        else:
            out = F.relu(grad)  # guided backprop: the regular gradient, negatives removed
        return out, None, None


@contextmanager
def override_relus(
    model: nn.Module, relu_types: Sequence[type] = (nn.ReLU6,), use_grad_output: bool = True
) -> Iterator[List[nn.Module]]:
    r"""Apply the deconvnet (``use_grad_output=True``) or guided-backprop rule to the backward
    pass of every module of ``model`` whose type is in ``relu_types``, for the duration of the
    ``with`` block; hooks are removed on exit, whatever happens.

    The rule is Captum's rule for ``nn.ReLU``: the gradient passed to the module input is
    ``relu(grad_output)`` (deconvnet) or ``relu(grad_input)`` (guided backprop).

    Args:
        model (nn.Module): the model.
        relu_types (sequence of type): module types to override. Default ``(nn.ReLU6,)``.
        use_grad_output (bool): deconvnet rule when True, guided backprop when False.
    Returns:
        a context manager yielding the list of overridden modules.
    Example::
        >>> with override_relus(mobilenet, (nn.ReLU6,), use_grad_output=True):
        ...     attr = NeuronDeconvolution(mobilenet, layer).attribute(x, (3, 5, 5))
    """
    types = tuple(relu_types)
    targets = [m for m in model.modules() if types and isinstance(m, types)]
    handles = []

    def attach(module: nn.Module) -> None:
        current: List[_Slot] = []

        def pre_hook(_m: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
            current.clear()
            if not args or not isinstance(args[0], Tensor) or not args[0].requires_grad:
                return None
            slot = _Slot()
            current.append(slot)
            return (_ReluTap.apply(args[0], slot, use_grad_output), *args[1:])

        def fwd_hook(_m: nn.Module, _args: Any, out: Any) -> None:
            if current and isinstance(out, Tensor) and out.requires_grad:
                slot = current.pop()

                def keep(g: Tensor) -> None:
                    slot.grad_out = g

                out.register_hook(keep)

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(fwd_hook))

    try:
        for m in targets:
            attach(m)
        yield targets
    finally:
        for h in handles:
            h.remove()


_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
)


@contextmanager
def _no_hook_left(model: Optional[nn.Module]) -> Iterator[None]:
    r"""Whatever a third-party attribution does, hooks it registers during the block are
    removed on exit (Captum removes its own in ``finally``; this is a second line)."""
    if model is None:
        yield
        return
    before = {id(m): {d: set(getattr(m, d, {}) or {}) for d in _HOOK_DICTS} for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            seen = before.get(id(m), {})
            for d in _HOOK_DICTS:
                hooks = getattr(m, d, None)
                if hooks:
                    for key in [k for k in hooks if k not in seen.get(d, set())]:
                        del hooks[key]


# ---------------------------------------------------------------------------------------
# projections
# ---------------------------------------------------------------------------------------


def _make_attributor(
    method: MethodSpec, forward_func: Callable, module: nn.Module
) -> Tuple[NeuronAttribution, Optional[bool]]:
    if isinstance(method, str):
        key = method.lower().replace("-", "_").replace(" ", "_")
        if key not in METHODS:
            raise ValueError(
                f"Unknown projection method {method!r}: use one of {sorted(METHODS)} or pass a "
                "Captum neuron-attribution class such as captum.attr.NeuronGradient."
            )
        method = METHODS[key]
    if isinstance(method, type) and issubclass(method, NeuronAttribution):
        if method in _RELU_RULE and not isinstance(forward_func, nn.Module):
            root = root_module(forward_func)
            if root is None:
                raise TypeError(
                    f"{method.__name__} hooks ReLU modules and needs the model as an nn.Module; "
                    "pass model=<the nn.Module>."
                )
            forward_func = root
        attributor = method(forward_func, module)
    elif isinstance(method, NeuronAttribution):
        attributor = method
        if getattr(attributor, "layer", module) is not module:
            raise ValueError(
                "The attribution instance was built on another layer than the one asked for; "
                "build it on the mined layer or pass the class instead."
            )
    else:
        raise TypeError(
            f"method must be a name ({', '.join(sorted(METHODS))}), a Captum neuron-attribution "
            f"class or an instance of one, got {type(method).__name__}."
        )
    rule = next((v for cls, v in _RELU_RULE.items() if isinstance(attributor, cls)), None)
    return attributor, rule


def projections(
    result: Any,
    images_source: ImageSource,
    layer: str,
    channel: int,
    method: MethodSpec = "deconvolution",
    model: Optional[Union[nn.Module, Callable]] = None,
    which: str = "top",
    n: Optional[int] = None,
    transform: Optional[Callable] = None,
    crop: bool = True,
    shared_scale: bool = False,
    percentile: float = 99.5,
    relu_types: Sequence[type] = (nn.ReLU6,),
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    additional_forward_args: Optional[object] = None,
    layer_module: Optional[nn.Module] = None,
    progress: bool = True,
    batch: bool = True,
) -> Projections:
    r"""Project each of a channel's top-k neurons onto its image (Zeiler & Fergus).

    For every record, the single neuron ``(channel, y, x)`` (``channel`` for a 2-D layer; the
    raw layout's index for channels-last and token layers) is attributed to the input image
    with a Captum neuron method, and the attribution is cropped to the record's receptive field
    (padded like :meth:`TopKResult.patches`, so patch and projection grids line up). The k
    records go through one forward and one backward pass together (a callable neuron selector
    picks each image's own neuron) for deconvolution, guided backprop and gradients; other
    methods, and calls with ``additional_forward_args``, attribute one record at a time.

    Args:
        result (TopKResult): a mined result.
        images_source: the images as the model saw them, as in :meth:`TopKResult.patches`.
        layer (str): a mined layer name, resolved in ``model.named_modules()``.
        channel (int): channel index.
        method (str, class or instance): ``"deconvolution"`` (``NeuronDeconvolution``,
            Zeiler & Fergus), ``"guided_backprop"`` (``NeuronGuidedBackprop``),
            ``"gradient"`` (``NeuronGradient``), or any Captum neuron-attribution class
            (built as ``cls(model, layer_module)``) or instance built on the layer.
        model (nn.Module or Callable): the model that was mined (the result does not hold
            it). Deconvolution and guided backprop need an ``nn.Module``.
        which (str): "top" or "bottom" records.
        n (int, optional): only the ``n`` strongest records.
        transform (Callable, optional): applied to PIL items of ``images_source``.
        crop (bool): crop to the receptive field (default); False keeps the whole
            (C, H, W) attribution.
        shared_scale (bool): one display scale for all n renderings (see
            :func:`symmetric_rgb`).
        percentile (float): percentile of ``|a|`` mapped to the ends of the display range
            (see :func:`symmetric_rgb`). Default 99.5.
        relu_types (sequence of type): module types that get the deconvnet / guided-backprop
            rule besides ``nn.ReLU`` (which Captum handles). Default ``(nn.ReLU6,)``.
        attribute_kwargs (dict, optional): extra keyword arguments of ``.attribute`` (e.g.
            ``baselines``, ``n_steps`` for ``NeuronIntegratedGradients``).
        additional_forward_args (Any, optional): extra arguments of the model's forward.
        layer_module (nn.Module, optional): the layer module, when ``model`` is a plain
            function whose modules cannot be found by name.
        progress (bool): tqdm bar over the records.
        batch (bool): one backward pass for all records when the method allows it (default);
            False: one pass per record (bit-identical to calling Captum per record; the
            batched pass agrees up to float summation order).
    Returns:
        Projections: ``.attributions`` (n, C, h, w), ``.rgb`` (n, h, w, 3) uint8,
        ``.records``, ``.method``, ``.scale``.
    Example::
        >>> proj = result.projections(dataset, "features.7", 12, "deconvolution", model=model)
        >>> proj.attributions.shape, proj.rgb.shape          # (9, 3, 75, 75), (9, 75, 75, 3)
        >>> patch_grid(torch.from_numpy(proj.rgb).permute(0, 3, 1, 2))
    """
    if model is None:
        raise TypeError(
            "projections() needs the model that was mined (model=...): a TopKResult holds "
            "records, not the network."
        )
    state = result._state(layer)
    if (result.layer_info.get(layer) or {}).get("concept"):
        raise ValueError(f"{layer!r} is a concept layer: projections exist for channels of the model's layers, "
                         "not for directions (look at its patches and activation maps).")
    if layer_module is None:
        module = resolve_layers(model, base_layer(layer))[0][1]
    else:
        module = layer_module
    root = root_module(model)
    if in_training(root):
        warnings.warn(
            "The model is in training mode: projections depend on dropout / batch statistics. "
            "Call model.eval() first.", UserWarning, stacklevel=2,
        )
    recs = result.records(layer, channel, which)[:n]
    to_input = bool(result.metadata.get("attribute_to_layer_input", False))
    kwargs = dict(attribute_kwargs or {})
    device, dtype = device_dtype(root)
    attrs: List[Optional[Tensor]] = [None] * len(recs)
    name = ""
    with _no_hook_left(root):
        attributor, rule = _make_attributor(method, model, module)
        name = type(attributor).__name__
        extra = [t for t in relu_types if not issubclass(t, nn.ReLU)] if rule is not None else []
        hooked_root = root if root is not None else getattr(attributor, "forward_func", None)
        images = [record_image(images_source, r, transform) for r in recs]
        # One backward pass for all the records of one input size: each image's own neuron is
        # selected by a callable selector (images do not interact in eval mode), unless the
        # method or the extra forward arguments need the per-record loop.
        batched = batch and additional_forward_args is None and type(attributor) in _BATCHABLE
        groups = _groups(recs, batched)
        for group in tqdm(groups, desc=f"{name} {layer}[{channel}]", disable=not progress, leave=False):
            x = torch.stack([images[i] for i in group]).detach().to(device=device, dtype=dtype)
            x.requires_grad_(True)
            selectors = [raw_selector(result, recs[i]) for i in group]
            selector = selectors[0] if len(group) == 1 else _per_example(selectors)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
                with override_relus(hooked_root, extra, bool(rule)) if extra and isinstance(
                    hooked_root, nn.Module
                ) else nullcontext():
                    a = attributor.attribute(
                        x, neuron_selector=selector, additional_forward_args=additional_forward_args,
                        attribute_to_neuron_input=to_input, **kwargs,
                    )
            a = (a[0] if isinstance(a, tuple) else a).detach().float().cpu()
            for j, i in enumerate(group):
                r = recs[i]
                one = a[j]
                if crop and state.spatial:
                    rf = result.receptive_fields[layer][tuple(r.input_size)]
                    one = rf.padded_crop(one, r.y, r.x, fill=0.0)
                attrs[i] = one
    attrs = [a for a in attrs if a is not None]
    if attrs:
        stacked = torch.stack(attrs)
    else:
        stacked = torch.empty(0, 3, 0, 0)
    rgb, scale = symmetric_rgb(stacked, shared_scale=shared_scale, percentile=percentile)
    return Projections(attributions=stacked, rgb=rgb, records=list(recs), method=name, scale=scale)
