r"""The optimisation loop of feature visualization, and :func:`visualize`.

:func:`visualize` optimises one image per requested channel (``samples`` per channel), or per
direction in channel space (a concept, a CAV: a ``(K, C)`` tensor or any object with
``.directions`` and ``.layer``): image ``i`` maximises its own unit's objective and nothing
else. At every step the images (:class:`~captum_topk.featvis.param.FourierImage`) go through
random transforms (:mod:`~captum_topk.featvis.transforms`) and a final
:class:`~captum_topk.featvis.transforms.Fit` to the one input size the model sees, the model's
normalisation, and the model up to the requested layer only (the forward is stopped there by
:func:`~captum_topk.capture.hooks.capture_hooks`); Adam updates the Fourier coefficients.

The layer's output is read the way the miner reads it (channels-last maps, token grids, prefix
tokens: :func:`~captum_topk.featvis.layouts.layer_layout`), at the input size the model needs
(:func:`~captum_topk.featvis.layouts.model_input_size`).

A unit's image does not depend on which other units are requested: its randomness comes from
its own ``torch.Generator`` per image, seeded from ``(seed, unit, sample)``, and by default each
unit's images go through the model in a forward of their own (``batch_size = samples``), because
convolution and matrix kernels choose their algorithm (and so their rounding) by batch size and
the optimisation amplifies a difference of one rounding into a visibly different image.

While it runs the model is put in eval mode and its parameters stop requiring gradients (no
weight gradients are computed); both are restored afterwards, per module and per parameter,
also when the loop raises. The hook is removed likewise; the global RNGs are not touched.
"""

from __future__ import annotations

import hashlib
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..capture.hooks import LayerSpec, _StopForward, capture_hooks, resolve_layers
from ..core.sources.layouts import PREFIX_SUFFIX, base_layer
from ..models.info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo
from ..utils.modules import device_dtype, eval_mode
from .fold import fold_batchnorm
from .layouts import declared_input_size, fixed_input_size, layer_layout, model_input_size
from .objectives import Objective, direction_from_name, diversity as diversity_objective, from_name
from .param import FourierImage
from .transforms import Compose, Fit, Transform, default_transforms

__all__ = ["FeatureVisualization", "visualize", "render", "responses", "image_seed",
           "channel_list", "as_directions", "direction_digest", "default_size"]

Layout = Callable[[Tensor], Tensor]

#: Default side of the optimised images for models that take any size.
DEFAULT_SIZE = 128
ObjectiveSpec = Union[str, Callable[[Any], Objective]]


@dataclass
class FeatureVisualization:
    r"""What :func:`visualize` returns.

    Attributes:
        images (Tensor): ``(n, 3, size, size)`` float32 RGB in [0, 1], *before* the model's
            normalisation; channel-major: the ``samples`` images of ``channels[0]`` first.
        values (Tensor): ``(n,)`` the objective reached by each image, measured on the final
            image without transforms.
        channels (list of int): the requested channels, in order.
        layer (str): the layer's dotted name.
        objective (str): the objective's name (``"channel"``, ``"-neuron"``, ...).
        samples (int): images per channel.
        settings (dict): every setting that determines the images (size, steps, seed, lr,
            diversity, mean, std, transforms, parametrization).
        seconds (float): wall time of the optimisation.
        directions (Tensor, optional): ``(K, C)`` the visualized directions, when directions
            were given instead of channels; ``channels`` are then their indices ``0..K-1``.
    """

    images: Tensor
    values: Tensor
    channels: List[int]
    layer: str
    objective: str
    samples: int = 1
    settings: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    directions: Optional[Tensor] = None

    @property
    def image_channels(self) -> List[int]:
        r"""The channel of each image: ``(n,)`` list."""
        return [c for c in self.channels for _ in range(self.samples)]

    def of(self, channel: int) -> Tensor:
        r"""The images of one channel (or direction index): ``(samples, 3, size, size)``."""
        channel = operator.index(channel)
        if channel not in self.channels:
            raise KeyError(f"Channel {channel} was not visualized; channels: {self.channels}.")
        i = self.channels.index(channel) * self.samples
        return self.images[i : i + self.samples]

    def values_of(self, channel: int) -> Tensor:
        r"""The objective values of one channel's images: ``(samples,)``."""
        channel = operator.index(channel)
        if channel not in self.channels:
            raise KeyError(f"Channel {channel} was not visualized; channels: {self.channels}.")
        i = self.channels.index(channel) * self.samples
        return self.values[i : i + self.samples]

    def __repr__(self) -> str:
        return (
            f"FeatureVisualization(layer={self.layer!r}, channels={self.channels}, "
            f"samples={self.samples}, objective={self.objective!r}, images={tuple(self.images.shape)}, "
            f"seconds={self.seconds:.1f})"
        )


def image_seed(seed: int, channel: int, sample: int = 0) -> int:
    r"""The seed of the generator of one image: a stable 63-bit hash of ``(seed, channel,
    sample)`` (the same in every process and Python version).
    """
    digest = hashlib.sha256(f"featvis:{int(seed)}:{int(channel)}:{int(sample)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def channel_list(channels: Any) -> List[int]:
    r"""Channels given as one integer or a sequence of them, of any integer type (``int``,
    ``numpy.int64``, a 0-d or 1-d integer ``torch`` tensor), as a list of ``int``.

    Raises:
        TypeError: a value that is not an integer (``5.0``, a float tensor).
    """
    if isinstance(channels, Tensor):
        if channels.is_floating_point() or channels.is_complex():
            raise TypeError(f"Channels must be integers, got a {channels.dtype} tensor (a float (K, C) "
                            "tensor is read as directions).")
        return [int(c) for c in channels.flatten().tolist()]
    try:
        return [operator.index(channels)]
    except TypeError:
        pass
    try:
        items = list(channels)
    except TypeError:
        raise TypeError(f"channels must be an integer or a sequence of integers, got {type(channels).__name__}.") from None
    out = []
    for c in items:
        try:
            out.append(operator.index(c))
        except TypeError:
            raise TypeError(f"Channel {c!r} is not an integer ({type(c).__name__}).") from None
    return out


def as_directions(units: Any) -> Optional[Tuple[Tensor, Optional[str]]]:
    r"""``(directions, layer)`` when ``units`` are directions: a float ``(K, C)`` tensor
    (layer None), or an object with a ``.directions`` ``(K, C)`` tensor and a ``.layer`` (e.g.
    a ``Concepts``); None when they are channels.

    Raises:
        ValueError: directions that are not ``(K, C)`` with ``K >= 1``, or not finite.
    """
    layer = None
    if hasattr(units, "directions") and not isinstance(units, Tensor):
        vecs, layer = units.directions, getattr(units, "layer", None)
    elif isinstance(units, Tensor) and units.is_floating_point():
        vecs = units
    else:
        return None
    vecs = torch.as_tensor(vecs).detach()
    if vecs.dim() != 2 or vecs.shape[0] < 1 or not vecs.is_floating_point():
        raise ValueError(f"Directions must be a float (K, C) tensor, one direction per row, got shape "
                         f"{tuple(vecs.shape)} ({vecs.dtype}).")
    if not bool(torch.isfinite(vecs).all()):
        raise ValueError("Directions must be finite.")
    return vecs.float().cpu(), (layer if isinstance(layer, str) or layer is None else str(layer))


def direction_digest(vector: Tensor) -> str:
    r"""SHA-1 of a direction's float32 values (16 hex digits): its identity in seeds and caches,
    so the same direction gets the same image in any set of directions."""
    v = vector.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(v.numpy().tobytes()).hexdigest()[:16]


def _layer_forward(model: nn.Module, store: Dict[int, Any], module: nn.Module, x: Tensor,
                   layout: Layout) -> Tensor:
    r"""Run ``model`` on ``x`` until ``module`` ran (inside ``capture_hooks``); its output,
    mapped by ``layout`` to ``(N, C, h, w)`` / ``(N, C)``."""
    store.clear()
    try:
        model(x)
    except _StopForward:
        pass
    slot = store.get(id(module))
    if not slot:
        raise RuntimeError(
            f"Layer {module.__class__.__name__} did not run during the forward pass; is it used "
            "by the model's forward()?"
        )
    out = layout(next(iter(slot.values())))
    if not isinstance(out, Tensor) or out.dim() not in (2, 4) or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"layout= must return (N, C, H, W) or (N, C) with N = {x.shape[0]}, got {shape}.")
    return out


@dataclass
class _Setup:
    r"""What :func:`_setup` found: the layer's name and module, the map from its raw output to
    ``(N, C, h, w)`` / ``(N, C)``, its channel count, and the model's input size."""

    name: str
    module: nn.Module
    layout: Layout
    channels: int
    input_size: Tuple[int, int]
    kind: str = "custom"  # the raw output's layout ("NCHW", "NLC", ...) or "custom"


def _grey_forward(model: nn.Module, module: nn.Module, input_size: Tuple[int, int], layout: Layout,
                  dev: torch.device) -> Tensor:
    with torch.no_grad(), capture_hooks([module], stop_early=True) as store:
        return _layer_forward(model, store, module, torch.full((1, 3, *input_size), 0.5, device=dev), layout)


def _setup_at(model: nn.Module, layer: LayerSpec, input_size: Tuple[int, int],
              layout: Union[str, Layout], dev: torch.device) -> _Setup:
    kind = "custom"
    if isinstance(layout, str):  # the miner's own detection, at the size the model will see
        module, fn, key = layer_layout(model, layer, input_size, layout)
        name = layer if isinstance(layer, str) and layer.endswith(PREFIX_SUFFIX) else resolve_layers(model, module)[0][0]
        kind = key.split(":")[0]
    else:
        name, module = resolve_layers(model, layer)[0]
        fn = layout
    probe = _grey_forward(model, module, input_size, fn, dev)
    return _Setup(name, module, fn, int(probe.shape[1]), input_size, kind)


def _setup(model: nn.Module, layer: LayerSpec, size: Union[int, Tuple[int, int]],
           layout: Optional[Union[str, Layout]], dev: torch.device) -> _Setup:
    r"""The layer, its layout and the model's input size for images of ``size``, checked by one
    forward of a grey image: at :func:`model_input_size`, or, when the model refuses that, at
    the size it was built for (:func:`declared_input_size`)."""
    layout = "auto" if layout is None else layout
    if isinstance(layer, str):
        resolve_layers(model, base_layer(layer))  # an unknown layer is not a size problem
    first = model_input_size(model, size)
    try:
        return _setup_at(model, layer, first, layout, dev)
    except Exception as exc:  # noqa: BLE001 -- a size the model refuses raises anything
        other = declared_input_size(model)
        if other is None or other == first:
            raise
        try:
            return _setup_at(model, layer, other, layout, dev)
        except Exception:  # noqa: BLE001
            raise exc from None


def _optimisation_setup(model: nn.Module, layer: LayerSpec, size: int, chain: Transform,
                        final: _Setup, layout: Union[str, Layout], dev: torch.device) -> _Setup:
    r"""Where the model sees the transformed images. A model that takes the image at its own
    size (``final``, a CNN) also takes the chain's larger output (Lucid's pad and jitter: 140 px
    for 128), rounded to its patch multiple, when it accepts that size; otherwise (a fixed-size
    ViT, windows that must divide the map) the transformed images are brought back to the size
    ``final`` was checked at."""
    if final.input_size != (size, size):
        return final
    grown = model_input_size(model, chain.output_size((size, size)))
    if grown == final.input_size:
        return final
    try:
        if final.kind == "NLC":  # a token grid depends on the size: read it again
            return _setup_at(model, layer, grown, "auto" if layout is None else layout, dev)
        _grey_forward(model, final.module, grown, final.layout, dev)  # maps and vectors: any size
        return _Setup(final.name, final.module, final.layout, final.channels, grown, final.kind)
    except Exception:  # noqa: BLE001 -- refused: back to the size that works
        return final


def _try_channels_last(copy: nn.Module, module: nn.Module, size: Tuple[int, int], dev: torch.device,
                       layout: Layout) -> bool:
    r"""Convert our folded copy to channels-last memory (on a CPU ~15 % faster per step for
    MobileNetV2: 1x1 convolutions become plain matrix products), unless its forward up to the
    layer then fails (a ``.view`` that needs contiguous memory): then convert it back."""
    copy.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), capture_hooks([module], stop_early=True) as store:
            _layer_forward(copy, store, module, torch.zeros(2, 3, *size, device=dev), layout)
        return True
    except RuntimeError:
        copy.to(memory_format=torch.contiguous_format)
        return False


def _stats(values: Optional[Sequence[float]], default: Sequence[float], name: str) -> Tuple[float, ...]:
    out = tuple(float(v) for v in (default if values is None else values))
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), got {len(out)}.")
    return out


def render(
    model: nn.Module,
    module: nn.Module,
    objective: Objective,
    image: FourierImage,
    generators: Sequence[torch.Generator],
    *,
    mean: Tensor,
    std: Tensor,
    transforms: Optional[Transform] = None,
    steps: int = 256,
    lr: float = 0.05,
    layout: Layout = lambda t: t,
    progress: Any = None,
) -> None:
    r"""Optimise ``image`` in place: ``steps`` Adam steps maximising ``objective(layer output)``
    summed over the batch. The caller sets the model up (eval mode, frozen parameters:
    :func:`~captum_topk.utils.modules.eval_mode`).

    Args:
        model (nn.Module): the model, on the device of ``image``.
        module (nn.Module): the layer; the forward stops after it.
        objective (Objective): per-image objective on the layer output.
        image (FourierImage): the parametrised images, optimised in place.
        generators (sequence of torch.Generator): one per image, for the transforms.
        mean, std (Tensor): ``(1, 3, 1, 1)`` normalisation; the model sees ``(x - mean) / std``.
        transforms (Transform, optional): applied every step, ending with the size the model
            takes (:class:`~captum_topk.featvis.transforms.Fit`); default none.
        steps (int): optimisation steps.
        lr (float): Adam's learning rate.
        layout (Callable): maps the layer output to (N, C, H, W) / (N, C); default as it is.
        progress (tqdm, optional): a bar to advance by one per step.
    """
    opt = torch.optim.Adam(image.parameters(), lr=lr)
    with capture_hooks([module], stop_early=True) as store:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            x = image()
            if transforms is not None:
                x = transforms(x, generators)
            acts = _layer_forward(model, store, module, (x - mean) / std, layout)
            loss = -objective(acts).sum()
            loss.backward()
            opt.step()
            if progress is not None:
                progress.update(1)


def default_size(model: nn.Module) -> int:
    r"""The image side ``visualize(size=None)`` optimises at: the model's fixed input side
    (:func:`~captum_topk.featvis.layouts.fixed_input_size`) when it is square, else
    :data:`DEFAULT_SIZE` (128)."""
    fixed = fixed_input_size(model)
    return fixed[0] if fixed is not None and fixed[0] == fixed[1] else DEFAULT_SIZE


def _normalisation(info: Optional[ModelInfo], mean: Optional[Sequence[float]],
                   std: Optional[Sequence[float]]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    if info is not None and (mean is not None or std is not None):
        raise ValueError("Give info= or mean= / std=, not both (info supplies mean and std).")
    if info is not None:
        return _stats(info.mean, IMAGENET_MEAN, "mean"), _stats(info.std, IMAGENET_STD, "std")
    return _stats(mean, IMAGENET_MEAN, "mean"), _stats(std, IMAGENET_STD, "std")


def _device(model: nn.Module, device: Optional[Union[str, torch.device]]) -> torch.device:
    model_dev = device_dtype(model)[0] or torch.device("cpu")
    dev = torch.device(device) if device is not None else model_dev
    if dev.type != model_dev.type or (dev.index is not None and dev.index != model_dev.index):
        raise ValueError(f"The model is on {model_dev} but device={dev}: move it first (model.to({str(dev)!r})).")
    return dev


@dataclass
class _Units:
    r"""What is visualized: channels, or directions (``vectors`` ``(K, C)``; ``ids`` 0..K-1)."""

    ids: List[int]
    vectors: Optional[Tensor] = None
    layer: Optional[str] = None

    @classmethod
    def parse(cls, units: Any) -> "_Units":
        found = as_directions(units)
        if found is not None:
            return cls(list(range(found[0].shape[0])), found[0], found[1])
        return cls(channel_list(units))

    def key(self, unit: int) -> int:
        r"""The unit's identity in its images' seeds: the channel, or the direction's digest."""
        if self.vectors is None:
            return unit
        return int(direction_digest(self.vectors[unit]), 16)

    def objective(self, spec: ObjectiveSpec, per_image: Sequence[int], cossim_pow: float) -> Objective:
        if self.vectors is None:
            return from_name(spec, list(per_image))
        return direction_from_name(spec, self.vectors[list(per_image)], cossim_pow)

    def check(self, name: str, channels: int) -> None:
        if self.vectors is not None:
            if self.vectors.shape[1] != channels:
                raise ValueError(f"The directions have {self.vectors.shape[1]} components but layer {name!r} "
                                 f"has {channels} channels.")
            return
        bad = [c for c in self.ids if not 0 <= c < channels]
        if bad:
            raise IndexError(f"Channel {bad[0]} out of range: layer {name!r} has {channels} channels "
                             f"(0..{channels - 1}).")


def _layer_of(layer: Optional[LayerSpec], units: _Units) -> LayerSpec:
    if layer is None:
        if units.layer is None:
            raise ValueError("No layer given: pass layer=, or directions that carry their .layer.")
        return units.layer
    if units.layer is not None and isinstance(layer, str) and layer != units.layer:
        raise ValueError(f"The directions belong to layer {units.layer!r}, not {layer!r}.")
    return layer


@torch.no_grad()
def responses(
    model: nn.Module,
    layer: Optional[LayerSpec],
    images: Tensor,
    channels: Any,
    *,
    info: Optional[ModelInfo] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    objective: ObjectiveSpec = "channel",
    layout: Optional[Union[str, Layout]] = "auto",
    cossim_pow: float = 0.0,
    batch_size: int = 32,
) -> Tensor:
    r"""Every unit's objective on every image: the response matrix ``R[c, i]``.

    Args:
        model (nn.Module): the model (put in eval mode for the call, restored after).
        layer (str or nn.Module): the layer (None: the directions' ``.layer``).
        images (Tensor): ``(n, 3, h, w)`` RGB in [0, 1], un-normalised; brought to the model's
            input size as :func:`visualize` brings its images.
        channels: channels (integers of any kind) or directions, as in :func:`visualize`.
        info, mean, std, objective, layout, cossim_pow: as in :func:`visualize`.
        batch_size (int): images per forward.

    Returns:
        Tensor: ``(len(channels), n)`` float32 on the CPU.
    """
    units = _Units.parse(channels)
    dev = _device(model, None)
    m, s = _normalisation(info, mean, std)
    mt = torch.tensor(m, device=dev).view(1, 3, 1, 1)
    st = torch.tensor(s, device=dev).view(1, 3, 1, 1)
    h, w = images.shape[-2:]
    rows = []
    with eval_mode(model, frozen=True):
        setup = _setup(model, _layer_of(layer, units), int(w), layout, dev)
        units.check(setup.name, setup.channels)
        fit = Fit(setup.input_size, scale=(setup.input_size[0] / h, setup.input_size[1] / w))
        with capture_hooks([setup.module], stop_early=True) as store:
            for chunk in images.split(batch_size):
                x = fit(chunk.to(dev, torch.float32), [])
                acts = _layer_forward(model, store, setup.module, (x - mt) / st, setup.layout)
                per = [units.objective(objective, [u] * acts.shape[0], cossim_pow)(acts) for u in units.ids]
                rows.append(torch.stack(per).float().cpu())
    return torch.cat(rows, dim=1)


def visualize(
    model: nn.Module,
    layer: Optional[LayerSpec],
    channels: Any,
    *,
    info: Optional[ModelInfo] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    size: Optional[int] = None,
    steps: int = 256,
    seed: int = 0,
    objective: ObjectiveSpec = "channel",
    lr: float = 0.05,
    batch_size: Optional[int] = None,
    samples: int = 1,
    diversity: float = 0.0,
    layout: Optional[Union[str, Layout]] = "auto",
    transforms: Optional[Transform] = None,
    decorrelate: bool = True,
    cossim_pow: float = 0.0,
    fold_bn: bool = True,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> FeatureVisualization:
    r"""Feature visualization by optimisation (Olah, Mordvintsev & Schubert 2017): for each
    channel, or each direction in channel space, an image optimised to drive it, the
    counterpart of the dataset top-k patches (parts of real images) that
    :class:`~captum_topk.LayerTopKPatches` mines.

    Args:
        model (nn.Module): any PyTorch model taking ``(N, 3, H, W)`` normalised images (torchvision,
            timm, a transformers vision model, your own).
        layer (str or nn.Module): the layer, by dotted name or module; any layer the miner takes
            (``"<layer>[prefix]"`` for a token layer's prefix tokens). None: the directions'
            ``.layer``.
        channels: the units to visualize: a channel index or a sequence of them (integers of any
            kind: ``int``, ``numpy.int64``, integer tensors), or **directions**: a float ``(K, C)``
            tensor, or an object with a ``.directions`` ``(K, C)`` tensor and a ``.layer`` (a
            ``Concepts``); one image per direction, ``channels`` of the result ``0..K-1``.
        info (ModelInfo, optional): supplies ``mean`` / ``std`` (from
            :func:`captum_topk.models.load_model`).
        mean, std (sequence of 3 float, optional): the model's input normalisation when
            ``info`` is not given; default ImageNet's.
        size (int, optional): side of the optimised images in pixels. Default: the model's own
            input side when it takes one size only, else 128. The model always sees one size
            (:func:`~captum_topk.featvis.layouts.model_input_size`: its fixed size, ``size``
            rounded to its patch size, or the size it was built for when it refuses ``size``);
            the transformed images are cropped (and rescaled when that size differs from
            ``size``) to it.
        steps (int): Adam steps. Default 256.
        seed (int): the seed; the same seed gives the same images. Default 0.
        objective (str or Callable): ``"channel"`` (mean over positions, default),
            ``"neuron"`` (the centre position), ``"-channel"`` / ``"-neuron"`` (drive it
            negative), or a callable ``channels -> Objective``
            (:mod:`captum_topk.featvis.objectives`) given the ``(n,)`` per-image channels (for
            directions: the ``(n, C)`` per-image directions; ``"channel"`` is then
            :func:`~captum_topk.featvis.objectives.direction`'s mean over positions, ``"neuron"``
            its value at the centre).
        lr (float): Adam's learning rate on the Fourier coefficients. Default 0.05.
        batch_size (int, optional): images per forward. Default ``samples``: each unit's images
            alone, so that a unit's images are exactly the same whichever other units are
            requested (kernels round differently for different batch sizes, and the optimisation
            amplifies that). Larger values are faster on a GPU, but the images then depend on
            their batch companions; :func:`~captum_topk.featvis.cache.cached_visualize` refuses them.
        samples (int): images per unit. Default 1.
        diversity (float): weight of the :func:`~captum_topk.featvis.objectives.diversity`
            term among a unit's samples (only with ``samples > 1``). Default 0.
        layout (str or Callable): how the layer's raw output is read: ``"auto"`` (default: as
            the miner reads it, :func:`~captum_topk.featvis.layouts.layer_layout`: channels-last
            maps, tokens on their patch grid), ``"NCHW"``, ``"NHWC"``, ``"NLC"`` or ``"NC"``, or a
            function mapping it to ``(N, C, H, W)`` / ``(N, C)``. None is ``"auto"``.
        transforms (Transform, optional): the robustness transforms; default
            :func:`~captum_topk.featvis.transforms.default_transforms` (pad, jitter, scale,
            rotate). Pass ``Compose([])`` for none. A final
            :class:`~captum_topk.featvis.transforms.Fit` to the model's input size is always added.
        decorrelate (bool): optimise in decorrelated ImageNet colour space. Default True.
        cossim_pow (float): for directions, weight each dot product by its cosine to this power
            (Lucid's ``direction_neuron``); 0 (default) is the plain dot product.
        fold_bn (bool): optimise through a copy of the model with eval BatchNorm folded into
            the convolutions (:func:`~captum_topk.featvis.fold.fold_batchnorm`; ~30 % faster
            on a CPU, where the copy also gets channels-last weights when its forward allows:
            ~15 % more). The same function up to float rounding; ``.values`` are always
            measured on ``model`` itself. Default True.
        progress (bool): a tqdm bar over the steps.
        device (str or torch.device, optional): where to optimise; default the model's
            device. The model must already be there.

    Returns:
        FeatureVisualization: ``.images`` ``(len(channels) * samples, 3, size, size)`` in
        [0, 1] (before normalisation), ``.values`` ``(n,)``, ``.channels``, ``.layer``,
        ``.settings`` (with ``input_size``, the size the model saw), ``.directions``.

    Raises:
        ValueError: bad sizes / counts, an unknown objective, a layer the miner cannot read
            (the message says what to pass), both ``info`` and ``mean``/``std``, directions
            whose length is not the layer's channel count.
        IndexError: a channel outside the layer.
        TypeError: a channel that is not an integer.

    Example::

        >>> from captum_topk.models import load_model
        >>> from captum_topk.featvis import visualize
        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> vis = visualize(model, "features.7", [3, 12], info=info, size=64, steps=32)
        >>> vis.images.shape, vis.values.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2]))
    """
    size = default_size(model) if size is None else size
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8 px, got {size}.")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}.")
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples}.")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    units = _Units.parse(channels)
    chans = units.ids
    if not chans:
        raise ValueError("No channels given: pass a channel index or a list of them.")
    if len(set(chans)) != len(chans):
        raise ValueError(f"Channels must be distinct, got {chans} (use samples= for several images).")
    if diversity and samples < 2:
        raise ValueError("diversity= works among a channel's samples: set samples >= 2.")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}.")
    size, steps, samples = int(size), int(steps), int(samples)
    layer = _layer_of(layer, units)
    m, s = _normalisation(info, mean, std)
    dev = _device(model, device)
    chain = default_transforms() if transforms is None else transforms
    obj_name = objective if isinstance(objective, str) else getattr(objective, "__name__", "custom")
    mt = torch.tensor(m, device=dev).view(1, 3, 1, 1)
    st = torch.tensor(s, device=dev).view(1, 3, 1, 1)

    per_chunk = max(1, int(batch_size or samples) // samples)
    chunks = [chans[i : i + per_chunk] for i in range(0, len(chans), per_chunk)]
    images: List[Tensor] = []
    values: List[Tensor] = []
    t0 = time.perf_counter()
    with eval_mode(model, frozen=True):
        # One grey image first: the layer's layout, the input size and the units, before any work.
        final = _setup(model, layer, size, layout, dev)
        units.check(final.name, final.channels)
        name, module = final.name, final.module
        opt = _optimisation_setup(model, layer, size, chain, final, layout, dev)
        scale = (final.input_size[0] / size, final.input_size[1] / size)
        fit_final = Fit(final.input_size, scale=scale)  # the final image, as the model takes it
        steps_chain = Compose([chain, Fit(opt.input_size, scale=scale)])
        work, work_module = model, module
        if fold_bn:
            work, n_folded = fold_batchnorm(model, keep={base_layer(name)})
            if n_folded:
                work_module = dict(work.named_modules())[resolve_layers(model, module)[0][0]]
                if dev.type == "cpu":
                    _try_channels_last(work, work_module, opt.input_size, dev, opt.layout)
        bar = tqdm(total=steps * len(chunks), desc=f"featvis {name}", disable=not progress, leave=False)
        try:
            with eval_mode(work, frozen=True):
                for chunk in chunks:
                    per_image = [c for c in chunk for _ in range(samples)]
                    sample_ids = [j for _ in chunk for j in range(samples)]
                    gens = [torch.Generator().manual_seed(image_seed(seed, units.key(c), j))
                            for c, j in zip(per_image, sample_ids)]
                    param = FourierImage(len(per_image), size, generators=gens, decorrelate=decorrelate, device=dev)
                    base = units.objective(objective, per_image, cossim_pow)
                    full = base + diversity * diversity_objective(per_image) if diversity else base
                    render(work, work_module, full, param, gens, mean=mt, std=st, transforms=steps_chain,
                           steps=steps, lr=lr, layout=opt.layout, progress=bar)
                    with torch.no_grad(), capture_hooks([module], stop_early=True) as store:
                        last = param().detach()
                        acts = _layer_forward(model, store, module, (fit_final(last, gens) - mt) / st,
                                              final.layout)
                        values.append(base(acts).float().cpu())
                    images.append(last.float().cpu())
        finally:
            bar.close()
    seconds = time.perf_counter() - t0
    settings = dict(size=size, input_size=list(final.input_size), steps=steps, seed=int(seed), objective=obj_name,
                    lr=float(lr), samples=samples, diversity=float(diversity), mean=list(m), std=list(s),
                    transforms=chain.config(), param=FourierImage.config(decorrelate=bool(decorrelate)),
                    layout=layout if isinstance(layout, str) or layout is None else "custom")
    if units.vectors is not None:
        settings["cossim_pow"] = float(cossim_pow)
    return FeatureVisualization(images=torch.cat(images), values=torch.cat(values), channels=chans,
                                layer=name, objective=obj_name, samples=samples, settings=settings,
                                seconds=seconds, directions=units.vectors)
