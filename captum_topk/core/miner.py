r"""``LayerTopKPatches``: Zeiler & Fergus dataset top-k patches as a Captum layer method."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import LayerActivation, LayerAttribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._version import __version__
from ..capture.hooks import LayerSpec, _root_module, resolve_layers, run_capture
from .accumulators.topk import LayerState
from ..receptive_field.probe import receptive_fields
from .result import TopKResult
from .accumulators.stats import ChannelStats
from ..capture.batch import Batch, cut_batch, split_batch

StatsSpec = Union[bool, None, Sequence[float], Tensor, Dict[str, Any]]

def _model_device(root: Optional[nn.Module]) -> Optional[torch.device]:
    if root is None:
        return None
    for p in root.parameters():
        return p.device
    for b in root.buffers():
        return b.device
    return None


def _expected_in_channels(root: Optional[nn.Module]) -> Optional[int]:
    if root is None:
        return None
    for m in root.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


class LayerTopKPatches(LayerAttribution):
    r"""
    Dataset top-k patches (Zeiler & Fergus, 2013) for every channel of one or several layers.

    Every image of a dataset is pushed through the network; for each channel (feature map)
    of each chosen layer the k strongest activations are kept, in a streaming state of
    O(layers x channels x k), together with the exact receptive field of each, so that the
    part of the real image that drives the channel can be cropped. The k most negative
    activations (bottom-k) are kept too.

    Like a torchmetrics ``Metric`` the state streams: :meth:`update` one batch at a time,
    :meth:`compute` the :class:`TopKResult`, :meth:`reset`, and :meth:`merge` states mined
    on disjoint images (shards, resumed runs) into exactly the single-pass result.
    :meth:`attribute` behaves like :class:`captum.attr.LayerActivation`.

    Ordering: higher activation first, ties to the lower image index, then the lower
    (y, x). ``index`` is the 0-based position of the image in iteration order across
    batches. With ``distinct_images=True`` (default) each image contributes its best
    position only, so a channel's top-k come from k different images.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: Union[LayerSpec, Sequence[LayerSpec]],
        device_ids: Union[None, List[int]] = None,
        k: int = 9,
        distinct_images: bool = True,
        attribute_to_layer_input: bool = False,
        stats: StatsSpec = False,
    ) -> None:
        r"""
        Args:
            forward_func (Callable or nn.Module): the model, or any function running it.
                Layer names are resolved in ``forward_func.named_modules()``.
            layer (str, nn.Module or list of them): the layer(s) to mine, by dotted name
                (``"features.3"``) or module (``model.features[7]``).
            device_ids (list[int], optional): as in Captum, for a ``DataParallel`` forward.
            k (int): how many records per channel (top and bottom). Default: 9.
            distinct_images (bool): one record per image per channel (its best position)
                when True; several positions of one image may be kept when False.
            attribute_to_layer_input (bool): mine the layer's input instead of its output.
            stats (bool, edges or dict): also gather per-channel dataset statistics in the
                same pass (:class:`~captum_topk.stats.ChannelStats`: histogram, mean, fraction
                > 0, count; read them with ``result.stats(layer)``). ``True`` uses the default
                edges (64 bins over [-16, 16]); a 1-D sequence / tensor gives the bin edges of
                every layer; a dict maps layer names to edges (``True`` / None for the
                default). Default False: mining stays at forward speed.
        Example::
            >>> model = torchvision.models.mobilenet_v2().eval()
            >>> miner = LayerTopKPatches(model, ["features.3", model.features[7]], k=9)
            >>> result = miner.mine(loader)
            >>> result.records("features.3", 12)[0].box
            (40, 8, 59, 27)
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        self._named_layers = self._resolve_layers(forward_func, layer)
        self._single = not isinstance(layer, (list, tuple))
        modules: Union[nn.Module, List[nn.Module]] = (
            self._named_layers[0][1] if self._single else [m for _, m in self._named_layers]
        )
        LayerAttribution.__init__(self, forward_func, modules, device_ids)
        self.k = k
        self.distinct_images = distinct_images
        self.attribute_to_layer_input = attribute_to_layer_input
        self._stats_edges = self._parse_stats(stats)
        self._root = _root_module(forward_func)
        self._in_channels = _expected_in_channels(self._root)
        self._rf_cache: Dict[Tuple[int, int], Dict[str, Any]] = {}
        self._progress = True
        self.reset()

    # ------------------------------------------------------------------ captum
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, ...], List[Union[Tensor, Tuple[Tensor, ...]]]]:
        r"""The layer activations of one batch, exactly as ``captum.attr.LayerActivation``.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): (N, C, H, W) images (or a tuple of inputs).
            additional_forward_args (Any, optional): extra arguments of ``forward_func``.
            attribute_to_layer_input (bool): activations of the layer input instead.
        Returns:
            Tensor (N, C_l, H_l, W_l) for one layer, a list of them for several layers.
        Example::
            >>> acts = LayerTopKPatches(model, "features.3").attribute(images)
        """
        return LayerActivation(self.forward_func, self.layer, self.device_ids).attribute(
            inputs, additional_forward_args, attribute_to_layer_input
        )

    # ------------------------------------------------------------------ backend hooks
    # The forward-specific steps, overridden by captum_topk.onnx.OnnxTopKPatches (ONNX Runtime).
    def _resolve_layers(self, forward_func: Callable, layer: Any) -> List[Tuple[str, nn.Module]]:
        r"""``(name, module)`` pairs of the layers to mine."""
        return resolve_layers(forward_func, layer)

    def _layer_outputs(self, images: Tensor, additional_forward_args: Optional[object] = None) -> List[Tensor]:
        r"""Each mined layer's output (N, C, H, W) or (N, C) for one batch, in layer order."""
        device = _model_device(self._root)
        if device is not None and images.device != device and not self.device_ids:
            images = images.to(device, non_blocking=True)
        return run_capture(
            self.forward_func,
            [m for _, m in self._named_layers],
            images,
            additional_forward_args,
            attribute_to_layer_input=self.attribute_to_layer_input,
            stop_early=True,
            device_ids=self.device_ids,
        )

    def _layer_receptive_fields(self, spatial: Sequence[Tuple[str, nn.Module]], size: Tuple[int, int]) -> Dict[str, Any]:
        r"""Receptive fields of the spatial layers ``spatial`` at input ``size``, in that order."""
        return receptive_fields(
            self.forward_func,
            [m for _, m in spatial],
            size,
            attribute_to_layer_input=self.attribute_to_layer_input,
            in_channels=self._image_channels,  # what was mined, whatever the first conv takes
            batch_size=8,  # the probe's peak memory stays below a mining batch's
            progress=self._progress,
        )

    # ------------------------------------------------------------------ streaming state
    def _parse_stats(self, stats: StatsSpec) -> Optional[Dict[str, Optional[Tensor]]]:
        r"""``None`` (no statistics) or layer name -> histogram edges (None: the default)."""
        names = [n for n, _ in self._named_layers]
        if stats is None or stats is False:
            return None
        if stats is True:
            return {n: None for n in names}
        if isinstance(stats, dict):
            unknown = set(stats) - set(names)
            if unknown:
                raise ValueError(f"stats names layers {sorted(unknown)} that are not mined: {names}.")
            out = {}
            for n, e in stats.items():
                if e is False:
                    continue
                out[n] = None if e is True or e is None else ChannelStats(1, e).edges
            return out or None
        edges = ChannelStats(1, stats).edges  # validates
        return {n: edges for n in names}

    @property
    def layer_names(self) -> List[str]:
        return [n for n, _ in self._named_layers]

    @property
    def n_images(self) -> int:
        return self._n

    def reset(self) -> None:
        r"""Forget everything seen so far."""
        self._states: Dict[str, LayerState] = {}
        self._stats: Dict[str, ChannelStats] = {}
        self._images: Dict[int, Dict[str, Any]] = {}
        self._n = 0  # images seen
        self._next = 0  # default index of the next image
        self._warned_training = False
        self._image_channels: Optional[int] = None  # of the images mined (for the probe)

    def _channel_hint(self, images: Tensor) -> Optional[str]:
        r"""A hint when the images' channels differ from the first convolution's (used only
        if the forward then fails: a space-to-depth stem legitimately changes the count)."""
        if self._in_channels is not None and images.dim() == 4 and images.shape[1] != self._in_channels:
            return (
                f"The batch has {images.shape[1]} channels but the model's first convolution "
                f"takes {self._in_channels}; convert images first (e.g. PIL .convert('RGB') or "
                f"transforms.Grayscale(num_output_channels={self._in_channels}))."
            )
        return None

    def _check_images(self, images: Tensor) -> None:
        if self._root is not None and self._root.training and not self._warned_training:
            self._warned_training = True
            warnings.warn(
                "The model is in training mode (dropout, batch statistics): call model.eval() "
                "before mining for deterministic results.",
                UserWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def update(
        self,
        batch: Batch,
        additional_forward_args: Optional[object] = None,
        indices: Optional[Union[Sequence[int], Tensor]] = None,
    ) -> None:
        r"""Fold one batch into the state.

        Args:
            batch: an (N, C, H, W) tensor, ``(images, labels[, ids])`` or a dict.
            additional_forward_args (Any, optional): extra arguments of ``forward_func``.
            indices (sequence of int, optional): global indices of the batch's images;
                default: a dict batch's ``"indices"``, else the next N indices in iteration
                order.
        """
        images, labels, ids, batch_indices = split_batch(batch)
        if indices is None:
            indices = batch_indices  # batches of a sharded (distributed) loader
        self._check_images(images)
        n = images.shape[0]
        if indices is None:
            idx = torch.arange(self._next, self._next + n, dtype=torch.int64)
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
            if idx.numel() != n:
                raise ValueError(f"{idx.numel()} indices given for a batch of {n} images.")
        try:
            outs = self._layer_outputs(images, additional_forward_args)
        except RuntimeError as exc:
            hint = self._channel_hint(images)
            if hint is not None and "channel" in str(exc):
                raise ValueError(hint) from exc
            raise
        if images.dim() == 4:
            self._image_channels = int(images.shape[1])
        for (name, _), out in zip(self._named_layers, outs):
            state = self._states.get(name)
            if state is None:
                if out.dim() not in (2, 4):
                    raise ValueError(
                        f"Layer {name!r} outputs shape {tuple(out.shape)}; only (N, C, H, W) "
                        "feature maps and (N, C) vectors can be mined."
                    )
                state = LayerState(self.k, out.shape[1], out.dim() == 4, self.distinct_images)
                self._states[name] = state
            state.update(out, idx)
            if self._stats_edges is not None and name in self._stats_edges:
                cs = self._stats.get(name)
                if cs is None:
                    cs = self._stats[name] = ChannelStats(out.shape[1], self._stats_edges[name])
                cs.update(out)
        self._remember(idx, labels, ids, tuple(images.shape[-2:]))
        self._n += n
        self._next = max(self._next, int(idx.max()) + 1)

    def _remember(
        self, idx: Tensor, labels: Optional[List[int]], ids: Optional[List[str]], size: Tuple[int, int]
    ) -> None:
        live = torch.unique(torch.cat([s.live_indices() for s in self._states.values()]))
        live_set = set(live.tolist())
        for j, i in enumerate(idx.tolist()):
            if i in live_set:
                info: Dict[str, Any] = {"size": size, "label": labels[j] if labels else -1}
                if ids is not None:
                    info["id"] = ids[j]
                self._images[i] = info
        if len(self._images) > 2 * len(live_set) + 64:
            self._images = {i: v for i, v in self._images.items() if i in live_set}

    def _snapshot(self) -> TopKResult:
        result = TopKResult(
            states={n: s.clone() for n, s in self._states.items()},
            images=dict(self._images),
            n_images=self._n,
            metadata=self._metadata(),
            channel_stats={n: s.clone() for n, s in self._stats.items()},
        )
        result.prune_images()
        return result

    def _metadata(self) -> Dict[str, Any]:
        root = self._root
        return {
            "model": root.__class__.__name__ if root is not None else getattr(
                self.forward_func, "__name__", "forward_func"),
            "layers": self.layer_names,
            "k": self.k,
            "distinct_images": self.distinct_images,
            "attribute_to_layer_input": self.attribute_to_layer_input,
            "stats": sorted(self._stats_edges or {}),
            "image_channels": self._image_channels,
            "captum_topk_version": __version__,
        }

    def compute(self) -> TopKResult:
        r"""The :class:`TopKResult` of everything seen since the last :meth:`reset`.

        Returns:
            TopKResult: records per layer and channel, with their receptive fields.
        Raises:
            ValueError: when no image was seen.
        """
        if self._n == 0 or not self._states:
            raise ValueError(
                "No images were mined: the data yielded nothing. Check the dataset path, "
                "its file extensions and the DataLoader (drop_last with a tiny dataset?)."
            )
        if self._n < self.k:
            warnings.warn(
                f"k={self.k} is larger than the {self._n} images mined: each channel holds "
                f"{self._n} records.", UserWarning, stacklevel=2)
        result = self._snapshot()
        sizes = {tuple(v["size"]) for v in result.images.values()}
        spatial = [(n, m) for n, m in self._named_layers if self._states[n].spatial]
        for size in sorted(sizes):
            if size not in self._rf_cache and spatial:
                self._rf_cache[size] = self._layer_receptive_fields(spatial, size)
            for (name, _), rf in zip(spatial, self._rf_cache.get(size, {}).values()):
                result.receptive_fields.setdefault(name, {})[size] = rf
        return result

    def merge(self, other: Union["LayerTopKPatches", TopKResult]) -> "LayerTopKPatches":
        r"""Fold the state of another miner (or a saved :class:`TopKResult`) mined on other
        images into this one. Merged shards give exactly the result of one pass.

        Returns:
            self
        """
        snap = other._snapshot() if isinstance(other, LayerTopKPatches) else other
        self._check_stats(snap)
        for name, cs in snap.channel_stats.items():
            if name in self._stats:
                self._stats[name].merge(cs)
            elif self._stats_edges is not None and name in self._stats_edges:
                self._stats[name] = cs.clone()
        for name, st in snap.states.items():
            if name not in self._states:
                self._states[name] = st.clone()
            else:
                self._states[name].merge(st)
        self._images.update(snap.images)
        if self._image_channels is None:
            self._image_channels = snap.metadata.get("image_channels")
        self._n += snap.n_images
        self._next = max([self._next, *(i + 1 for i in snap.images)])
        return self

    def _check_stats(self, snap: TopKResult) -> None:
        r"""Statistics can only be combined exactly when both sides gathered them, with the
        same edges, over all their images."""
        for name in (self._stats_edges or {}):
            if name not in snap.states:
                continue
            cs = snap.channel_stats.get(name)
            if cs is None:
                raise ValueError(
                    f"This miner gathers statistics of {name!r} but the state to merge / load has "
                    "none (mined with stats=False): its images would be missing from them. Use "
                    "the same stats option for every shard / resumed run."
                )
            want = self._stats_edges[name]
            want = want if want is not None else ChannelStats(1).edges
            if not torch.equal(cs.edges, want):
                raise ValueError(f"Statistics of {name!r} were gathered with other histogram edges.")

    # ------------------------------------------------------------------ snapshots
    def save_state(self, path: Union[str, os.PathLike]) -> None:
        r"""Write the streaming state atomically (see :meth:`TopKResult.save`)."""
        self._snapshot().save(path)

    def load_state(self, path_or_result: Union[str, os.PathLike, TopKResult]) -> None:
        r"""Replace the state by a snapshot written with :meth:`save_state` (for ``--resume``)."""
        snap = (
            path_or_result
            if isinstance(path_or_result, TopKResult)
            else TopKResult.load(path_or_result)
        )
        if set(snap.states) - set(self.layer_names):
            raise ValueError(
                f"The snapshot holds layers {sorted(snap.states)} but this miner mines "
                f"{self.layer_names}."
            )
        if snap.states and snap.k != self.k:
            raise ValueError(f"The snapshot was mined with k={snap.k}, this miner has k={self.k}.")
        self._check_stats(snap)
        self.reset()
        self._stats = {n: s.clone() for n, s in snap.channel_stats.items() if n in (self._stats_edges or {})}
        self._states = {n: s.clone() for n, s in snap.states.items()}
        self._images = dict(snap.images)
        self._n = self._next = snap.n_images
        self._image_channels = snap.metadata.get("image_channels")

    # ------------------------------------------------------------------ whole dataset
    def mine(
        self,
        data: Union[Iterable[Batch], Tensor],
        additional_forward_args: Optional[object] = None,
        batch_size: int = 64,
        progress: bool = True,
        reset: bool = True,
        snapshot_path: Optional[Union[str, os.PathLike]] = None,
        snapshot_every: float = 60.0,
        max_images: Optional[int] = None,
        finalize: bool = True,
    ) -> Optional[TopKResult]:
        r"""Push every batch of ``data`` through the model and return the top-k result.

        Args:
            data: a DataLoader or any iterable of batches (tensor, ``(images, labels)``,
                ``(images, labels, ids)`` or dict), or one (N, C, H, W) tensor that is cut
                into ``batch_size`` chunks.
            additional_forward_args (Any, optional): extra arguments of ``forward_func``.
            batch_size (int): chunk size when ``data`` is a tensor.
            progress (bool): show a tqdm bar with images/s.
            reset (bool): start from an empty state (False continues, e.g. after
                :meth:`load_state`; indices continue from :attr:`n_images`).
            snapshot_path (str, optional): where to write periodic state snapshots
                (atomically), every ``snapshot_every`` seconds and at the end.
            max_images (int, optional): stop after this many images.
            finalize (bool): return :meth:`compute`'s result; False only streams (e.g. a
                distributed rank whose state rank 0 gathers) and returns None.
        Returns:
            TopKResult: see :meth:`compute`. When k exceeds the number of images, channels
            hold as many records as there are images (fewer than k).
        Raises:
            ValueError: when ``data`` yields no image.
        Example::
            >>> result = LayerTopKPatches(model, "layer3", k=9).mine(loader)
            >>> crops = result.patches(loader.dataset, "layer3", 0)   # 9 x 3 x h x w
        """
        if reset:
            self.reset()
        self._progress = progress
        if isinstance(data, Tensor):
            data = [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
        total = getattr(data, "num_images", None)
        try:
            if total is None and hasattr(data, "dataset"):
                total = len(data.dataset)  # type: ignore[union-attr]
        except TypeError:
            total = None
        if max_images is not None:
            total = min(total, max_images) if total is not None else max_images
        bar = tqdm(total=total, unit="img", desc="mining", disable=not progress, smoothing=0.1)
        last = time.monotonic()
        seen = 0
        try:
            for batch in data:
                if max_images is not None and seen >= max_images:
                    break
                if max_images is not None:
                    batch = cut_batch(batch, max_images - seen)
                before = self._n
                self.update(batch, additional_forward_args)
                seen += self._n - before
                bar.update(self._n - before)
                if snapshot_path is not None and time.monotonic() - last >= snapshot_every:
                    self.save_state(snapshot_path)
                    last = time.monotonic()
        finally:
            bar.close()
        if snapshot_path is not None and self._n:
            self.save_state(snapshot_path)
        return self.compute() if finalize else None
