r"""The optimisation loop of feature visualization, and :func:`visualize`.

:func:`visualize` optimises one image per requested channel (``samples`` per channel), all in
one batch: image ``i`` maximises its own channel's objective and nothing else. At every step
the images (:class:`~captum_topk.featvis.param.FourierImage`) go through random transforms
(:mod:`~captum_topk.featvis.transforms`), the model's normalisation, and the model up to the
requested layer only (the forward is stopped there by
:func:`~captum_topk.capture.hooks.capture_hooks`); Adam updates the Fourier coefficients.

While it runs the model is put in eval mode and its parameters stop requiring gradients (no
weight gradients are computed); both are restored afterwards, per module and per parameter,
also when the loop raises. The hook is removed likewise. Randomness comes from one
``torch.Generator`` per image, seeded from ``(seed, channel, sample)``: the same call gives the
same images, the global RNGs are not touched, and a channel's image does not depend on which
other channels share its batch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..capture.hooks import LayerSpec, _StopForward, capture_hooks, resolve_layers
from ..models.info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo
from ..utils.modules import eval_mode
from .fold import fold_batchnorm
from .objectives import Objective, diversity as diversity_objective, from_name
from .param import FourierImage
from .layouts import fixed_input_size
from .transforms import Compose, Resize, Transform, default_transforms

__all__ = ["FeatureVisualization", "visualize", "render", "responses", "image_seed"]

Layout = Callable[[Tensor], Tensor]

#: Default images per batch on a CPU (MobileNetV2, 2 cores: 8 images cost less per image than
#: 16, whose activations no longer stay in cache).
CPU_BATCH = 8
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
    """

    images: Tensor
    values: Tensor
    channels: List[int]
    layer: str
    objective: str
    samples: int = 1
    settings: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def image_channels(self) -> List[int]:
        r"""The channel of each image: ``(n,)`` list."""
        return [c for c in self.channels for _ in range(self.samples)]

    def of(self, channel: int) -> Tensor:
        r"""The images of one channel: ``(samples, 3, size, size)``."""
        if channel not in self.channels:
            raise KeyError(f"Channel {channel} was not visualized; channels: {self.channels}.")
        i = self.channels.index(channel) * self.samples
        return self.images[i : i + self.samples]

    def values_of(self, channel: int) -> Tensor:
        r"""The objective values of one channel's images: ``(samples,)``."""
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


def _default_layout(acts: Tensor) -> Tensor:
    if acts.dim() in (2, 4):
        return acts
    raise ValueError(
        f"The layer outputs shape {tuple(acts.shape)}: only (N, C, H, W) and (N, C) outputs are "
        "understood. Pass layout= a function mapping the output to (N, C, H, W) or (N, C), e.g. "
        "layout=lambda t: t.permute(0, 3, 1, 2) for channels-last (N, H, W, C), or "
        "layout=lambda t: t.transpose(1, 2) for tokens (N, L, C) -> (N, C, L) (then one more "
        "dimension: .unsqueeze(-1))."
    )


def _resolve(model: nn.Module, layer: LayerSpec, size: int,
             layout: Optional[Union[str, Layout]]) -> Tuple[str, nn.Module, Optional[Layout]]:
    r"""``(name, module, layout function)``; a layout given by name is the miner's
    (:func:`~captum_topk.featvis.layouts.layer_layout`)."""
    if isinstance(layout, str):
        from .layouts import layer_layout

        module, fn, _ = layer_layout(model, layer, size, layout)
        return resolve_layers(model, module)[0][0], module, fn
    name, module = resolve_layers(model, layer)[0]
    return name, module, layout


def _layer_forward(model: nn.Module, store: Dict[int, Any], module: nn.Module, x: Tensor,
                   layout: Optional[Layout]) -> Tensor:
    r"""Run ``model`` on ``x`` until ``module`` ran (inside ``capture_hooks``); its output,
    mapped by ``layout`` (default: 4-D and 2-D as they are)."""
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
    acts = next(iter(slot.values()))
    out = (layout or _default_layout)(acts)
    if out.dim() not in (2, 4) or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"layout= must return (N, C, H, W) or (N, C) with N = {x.shape[0]}, got shape "
            f"{tuple(out.shape)}."
        )
    return out


def _try_channels_last(copy: nn.Module, module: nn.Module, size: int, dev: torch.device,
                       layout: Optional[Layout]) -> bool:
    r"""Convert our folded copy to channels-last memory (on a CPU ~15 % faster per step for
    MobileNetV2: 1x1 convolutions become plain matrix products), unless its forward up to the
    layer then fails (a ``.view`` that needs contiguous memory): then convert it back."""
    copy.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), capture_hooks([module], stop_early=True) as store:
            _layer_forward(copy, store, module, torch.zeros(2, 3, size, size, device=dev), layout)
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
    layout: Optional[Layout] = None,
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
        transforms (Transform, optional): applied every step; default none.
        steps (int): optimisation steps.
        lr (float): Adam's learning rate.
        layout (Callable, optional): maps the layer output to (N, C, H, W) / (N, C).
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


@torch.no_grad()
def responses(
    model: nn.Module,
    layer: LayerSpec,
    images: Tensor,
    channels: Sequence[int],
    *,
    info: Optional[ModelInfo] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    objective: ObjectiveSpec = "channel",
    layout: Optional[Union[str, Layout]] = None,
    batch_size: int = 32,
) -> Tensor:
    r"""Every channel's objective on every image: the response matrix ``R[c, i]``.

    Args:
        model (nn.Module): the model (put in eval mode for the call, restored after).
        layer (str or nn.Module): the layer.
        images (Tensor): ``(n, 3, h, w)`` RGB in [0, 1], un-normalised.
        channels (sequence of int): the channels (rows of ``R``).
        info, mean, std: the normalisation, as in :func:`visualize`.
        objective (str or Callable): as in :func:`visualize`.
        layout (Callable, optional): as in :func:`visualize`.
        batch_size (int): images per forward.

    Returns:
        Tensor: ``(len(channels), n)`` float32 on the CPU.
    """
    name, module, layout = _resolve(model, layer, int(images.shape[-1]), layout)
    m, s = _normalisation(info, mean, std)
    device = _model_device(model)
    mt = torch.tensor(m, device=device).view(1, 3, 1, 1)
    st = torch.tensor(s, device=device).view(1, 3, 1, 1)
    rows = []
    with eval_mode(model, frozen=True), capture_hooks([module], stop_early=True) as store:
        for chunk in images.split(batch_size):
            x = (chunk.to(device, torch.float32) - mt) / st
            acts = _layer_forward(model, store, module, x, layout)
            per = [from_name(objective, c)(acts) for c in channels]
            rows.append(torch.stack(per).float().cpu())
    return torch.cat(rows, dim=1)


def _normalisation(info: Optional[ModelInfo], mean: Optional[Sequence[float]],
                   std: Optional[Sequence[float]]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    if info is not None and (mean is not None or std is not None):
        raise ValueError("Give info= or mean= / std=, not both (info supplies mean and std).")
    if info is not None:
        return _stats(info.mean, IMAGENET_MEAN, "mean"), _stats(info.std, IMAGENET_STD, "std")
    return _stats(mean, IMAGENET_MEAN, "mean"), _stats(std, IMAGENET_STD, "std")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def visualize(
    model: nn.Module,
    layer: LayerSpec,
    channels: Union[int, Sequence[int]],
    *,
    info: Optional[ModelInfo] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    size: int = 128,
    steps: int = 256,
    seed: int = 0,
    objective: ObjectiveSpec = "channel",
    lr: float = 0.05,
    batch_size: Optional[int] = None,
    samples: int = 1,
    diversity: float = 0.0,
    layout: Optional[Union[str, Layout]] = None,
    transforms: Optional[Transform] = None,
    decorrelate: bool = True,
    fold_bn: bool = True,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> FeatureVisualization:
    r"""Feature visualization by optimisation (Olah, Mordvintsev & Schubert 2017): for each
    channel, an image optimised to drive it, the counterpart of the dataset top-k patches
    (parts of real images) that :class:`~captum_topk.LayerTopKPatches` mines.

    Args:
        model (nn.Module): any PyTorch model taking ``(N, 3, H, W)`` normalised images.
        layer (str or nn.Module): the layer, by dotted name or module.
        channels (int or sequence of int): the channels to visualize.
        info (ModelInfo, optional): supplies ``mean`` / ``std`` (from
            :func:`captum_topk.models.load_model`).
        mean, std (sequence of 3 float, optional): the model's input normalisation when
            ``info`` is not given; default ImageNet's.
        size (int): side of the optimised images in pixels. Default 128.
        steps (int): Adam steps. Default 256.
        seed (int): the seed; the same seed gives the same images. Default 0.
        objective (str or Callable): ``"channel"`` (mean over positions, default),
            ``"neuron"`` (the centre position), ``"-channel"`` / ``"-neuron"`` (drive it
            negative), or a callable ``channels -> Objective``
            (:mod:`captum_topk.featvis.objectives`) given the ``(n,)`` per-image channels.
        lr (float): Adam's learning rate on the Fourier coefficients. Default 0.05.
        batch_size (int, optional): most images optimised at once (a channel's samples stay
            together); default all of them on a GPU, :data:`CPU_BATCH` (8) on a CPU, where
            larger batches are slower per image. It does not change the images.
        samples (int): images per channel. Default 1.
        diversity (float): weight of the :func:`~captum_topk.featvis.objectives.diversity`
            term among a channel's samples (only with ``samples > 1``). Default 0.
        layout (str or Callable, optional): how the layer's raw output is read:
            ``"auto"``, ``"NCHW"``, ``"NHWC"``, ``"NLC"`` or ``"NC"`` as the miner reads it
            (:func:`~captum_topk.featvis.layouts.layer_layout`: channels-last maps, ViT tokens
            on their patch grid; ``"<layer>[prefix]"`` for a token layer's prefix tokens), or a
            function mapping it to ``(N, C, H, W)`` / ``(N, C)``. Default None: 4-D outputs are
            ``(N, C, H, W)``, 2-D ``(N, C)``, anything else an error.
        transforms (Transform, optional): the robustness transforms; default
            :func:`~captum_topk.featvis.transforms.default_transforms` (pad, jitter, scale,
            rotate). Pass ``Compose([])`` for none.
        decorrelate (bool): optimise in decorrelated ImageNet colour space. Default True.
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
        ``.settings``.

    Raises:
        ValueError: bad sizes / counts, an unknown objective, a layer output that is neither
            4-D nor 2-D without ``layout=``, or both ``info`` and ``mean``/``std``.
        IndexError: a channel outside the layer.

    Example::

        >>> from captum_topk.models import load_model
        >>> from captum_topk.featvis import visualize
        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> vis = visualize(model, "features.7", [3, 12], info=info, size=64, steps=32)
        >>> vis.images.shape, vis.values.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2]))
    """
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8 px, got {size}.")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}.")
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples}.")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    chans = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if not chans:
        raise ValueError("No channels given: pass a channel index or a list of them.")
    if len(set(chans)) != len(chans):
        raise ValueError(f"Channels must be distinct, got {chans} (use samples= for several images).")
    if diversity and samples < 2:
        raise ValueError("diversity= works among a channel's samples: set samples >= 2.")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}.")
    size, steps, samples = int(size), int(steps), int(samples)
    name, module, layout = _resolve(model, layer, size, layout)
    m, s = _normalisation(info, mean, std)
    model_dev = _model_device(model)
    dev = torch.device(device) if device is not None else model_dev
    if dev.type != model_dev.type or (dev.index is not None and dev.index != model_dev.index):
        raise ValueError(f"The model is on {model_dev} but device={dev}: move it first (model.to({str(dev)!r})).")
    transforms = default_transforms() if transforms is None else transforms
    fixed = fixed_input_size(model)
    if fixed is not None:  # a ViT takes one input size: the transformed images are brought back to it
        transforms = Compose([transforms, Resize(fixed)])
    obj_name = objective if isinstance(objective, str) else getattr(objective, "__name__", "custom")
    mt = torch.tensor(m, device=dev).view(1, 3, 1, 1)
    st = torch.tensor(s, device=dev).view(1, 3, 1, 1)

    if batch_size is None:  # a CPU is fastest per image on small batches (cache-resident)
        batch_size = len(chans) * samples if dev.type != "cpu" else CPU_BATCH
    per_chunk = max(1, int(batch_size) // samples)
    chunks = [chans[i : i + per_chunk] for i in range(0, len(chans), per_chunk)]
    images: List[Tensor] = []
    values: List[Tensor] = []
    t0 = time.perf_counter()
    work, work_module = model, module
    if fold_bn:
        work, n_folded = fold_batchnorm(model, keep={name})
        if n_folded:
            work_module = dict(work.named_modules())[name]
            if dev.type == "cpu":
                _try_channels_last(work, work_module, size, dev, layout)
    with eval_mode(model, work, frozen=True):
        # A grey image first: checks the layer's layout and the channel range before any work.
        with torch.no_grad(), capture_hooks([module], stop_early=True) as store:
            probe = _layer_forward(model, store, module, torch.zeros(1, 3, size, size, device=dev), layout)
        n_ch = probe.shape[1]
        bad = [c for c in chans if not 0 <= c < n_ch]
        if bad:
            raise IndexError(f"Channel {bad[0]} out of range: layer {name!r} has {n_ch} channels (0..{n_ch - 1}).")
        bar = tqdm(total=steps * len(chunks), desc=f"featvis {name}", disable=not progress, leave=False)
        try:
            for chunk in chunks:
                per_image = [c for c in chunk for _ in range(samples)]
                sample_ids = [j for _ in chunk for j in range(samples)]
                gens = [torch.Generator().manual_seed(image_seed(seed, c, j))
                        for c, j in zip(per_image, sample_ids)]
                param = FourierImage(len(per_image), size, generators=gens, decorrelate=decorrelate, device=dev)
                base = from_name(objective, per_image)
                full = base + diversity * diversity_objective(per_image) if diversity else base
                render(work, work_module, full, param, gens, mean=mt, std=st, transforms=transforms,
                       steps=steps, lr=lr, layout=layout, progress=bar)
                with torch.no_grad(), capture_hooks([module], stop_early=True) as store:
                    final = param().detach()
                    acts = _layer_forward(model, store, module, (final - mt) / st, layout)
                    values.append(base(acts).float().cpu())
                images.append(final.float().cpu())
        finally:
            bar.close()
    seconds = time.perf_counter() - t0
    settings = dict(size=size, steps=steps, seed=int(seed), objective=obj_name, lr=float(lr),
                    samples=samples, diversity=float(diversity), mean=list(m), std=list(s),
                    transforms=repr(transforms), decorrelate=bool(decorrelate),
                    param=f"FourierImage(decay_power=1, sd=0.01, saturation={FourierImage.SATURATION})")
    return FeatureVisualization(images=torch.cat(images), values=torch.cat(values), channels=chans,
                                layer=name, objective=obj_name, samples=samples, settings=settings,
                                seconds=seconds)
