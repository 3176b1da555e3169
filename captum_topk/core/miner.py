r"""``LayerTopKPatches``: Zeiler & Fergus dataset top-k patches as a Captum layer method.

A thin facade: an activation source (:mod:`captum_topk.core.sources`) gives each batch's
activations in a canonical layout with a :class:`~captum_topk.core.sources.LayerInfo` per layer
(receptive fields included, measured on the first batch), and per layer an
:class:`~captum_topk.core.accumulators.AccumulatorCollection` folds them in (the top-k state,
optionally channel statistics). :meth:`LayerTopKPatches.compute` reads the
:class:`~captum_topk.core.result.TopKResult` off those states (cheap); :meth:`~LayerTopKPatches.mine`
feeds a whole dataset through :func:`captum_topk.core.loop.feed`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import LayerAttribution
from torch import Tensor

from .._version import __version__
from ..capture.batch import Batch, split_batch
from ..capture.hooks import LayersSpec
from ..receptive_field.field import ReceptiveField
from .accumulators.base import AccumulatorCollection
from .accumulators.stats import ChannelStats, check_same_edges
from .accumulators.topk import TopKState
from .loop import feed
from .result import TopKResult
from .sources.base import ActivationSource, LayerInfo
from .sources.layouts import base_layer
from .sources.torch import TorchSource

StatsSpec = Union[bool, None, Sequence[float], Tensor, Dict[str, Any]]

__all__ = ["LayerTopKPatches"]


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
        layer: LayersSpec,
        device_ids: Union[None, List[int]] = None,
        *,
        k: int = 9,
        distinct_images: bool = True,
        attribute_to_layer_input: bool = False,
        stats: StatsSpec = False,
        layout: Union[str, Dict[str, str]] = "auto",
        token_grid: Optional[Tuple[int, int]] = None,
        prefix_tokens: Optional[int] = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable or nn.Module): the model, or any function running it.
                Layer names are resolved in ``forward_func.named_modules()``.
            layer (str, nn.Module, list of them, or dict of name to module): the layer(s) to
                mine, by dotted name (``"features.3"``) or module (``model.features[7]``), or
                ``{name: module}`` to choose the names (e.g. for a plain forward function,
                whose modules are otherwise called ``"<class>_<position>"``, e.g. ``conv2d_0``).
            device_ids (list[int], optional): as in Captum, for a ``DataParallel`` forward.
            k (int, keyword-only): how many records per channel (top and bottom). Default: 9.
            distinct_images (bool): one record per image per channel (its best position)
                when True; several positions of one image may be kept when False.
            attribute_to_layer_input (bool): mine the layer's input instead of its output (and
                :meth:`attribute` returns it).
            stats (bool, edges or dict): also gather per-channel dataset statistics in the
                same pass (:class:`~captum_topk.core.accumulators.stats.ChannelStats`:
                histogram, mean, fraction > 0, count; read them with ``result.stats(layer)``).
                ``True`` uses the default edges (64 bins over [-16, 16]); a 1-D sequence /
                tensor gives the bin edges of every layer; a dict maps layer names to edges
                (``True`` / None for the default). Default False: mining stays at forward speed.
            layout (str or dict): the layers' output layout: ``"auto"`` (default), ``"NCHW"``,
                ``"NHWC"`` (channels-last maps: ConvNeXt block internals, Swin stages),
                ``"NLC"`` (tokens of ViT-style encoders) or ``"NC"``; one for all layers or a
                dict by layer name. Every layout is mined as its ``(N, C, h, w)`` /
                ``(N, C)`` equivalent; see :class:`~captum_topk.core.sources.torch.TorchSource`.
            token_grid (tuple of int, optional): ``(h, w)`` patch grid of token layers whose
                model does not expose it.
            prefix_tokens (int, optional): class / distillation / register tokens before the
                patches; they are mined as a layer of their own, ``"<layer>[prefix]"``.
        Raises:
            TypeError: ``device_ids`` given as an int (``LayerTopKPatches(model, layer, 3)``:
                ``k`` is keyword-only: write ``k=3``).
        Example::
            >>> model = torchvision.models.mobilenet_v2().eval()
            >>> miner = LayerTopKPatches(model, ["features.3", model.features[7]], k=9)
            >>> result = miner.mine(loader)
            >>> result.records("features.3", 12)[0].box
            (40, 8, 59, 27)
        """
        _check_device_ids(device_ids)
        source = TorchSource(forward_func, layer, device_ids=device_ids,
                             attribute_to_layer_input=attribute_to_layer_input, layout=layout,
                             token_grid=token_grid, prefix_tokens=prefix_tokens)
        modules = source.modules
        LayerAttribution.__init__(self, forward_func, modules[0] if _single(layer) else modules, device_ids)
        self._bind(source, k=k, distinct_images=distinct_images, stats=stats, single=_single(layer))
        self.attribute_to_layer_input = bool(attribute_to_layer_input)

    @classmethod
    def from_source(cls, source: ActivationSource, *, k: int = 9, distinct_images: bool = True,
                    stats: StatsSpec = False) -> "LayerTopKPatches":
        r"""A miner over any :class:`~.sources.base.ActivationSource` (PyTorch hooks, ONNX
        Runtime, or one of your own).

        Example::
            >>> source = TorchSource(model, ["features.3", "features.7"])
            >>> miner = LayerTopKPatches.from_source(source, k=9)
        """
        miner = cls.__new__(cls)
        LayerAttribution.__init__(miner, source, source.names)
        miner._bind(source, k=k, distinct_images=distinct_images, stats=stats, single=len(source.names) == 1)
        return miner

    def _bind(self, source: ActivationSource, *, k: int, distinct_images: bool, stats: StatsSpec,
              single: bool) -> None:
        r"""Attach a source and the accumulator settings (shared by every facade)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        self.source = source
        self.k = k
        self.distinct_images = bool(distinct_images)
        self._single = single
        self._stats_edges = _parse_stats(stats, source.names)
        self._progress = True
        self.attribute_to_layer_input = False
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
            attribute_to_layer_input (bool): activations of the layer input instead (also when
                the miner was built with ``attribute_to_layer_input=True``).
        Returns:
            Tensor (N, C_l, H_l, W_l) for one layer, a list of them for several layers.
        Example::
            >>> acts = LayerTopKPatches(model, "features.3").attribute(images)
        """
        return self.source.attribute(inputs, additional_forward_args,
                                     attribute_to_layer_input or self.attribute_to_layer_input)

    # ------------------------------------------------------------------ streaming state
    @property
    def layer_names(self) -> List[str]:
        return list(self.source.names)

    @property
    def n_images(self) -> int:
        r"""Images mined so far."""
        return self._n

    @property
    def n_skipped(self) -> int:
        r"""Images a loader reported as unreadable (``batch["skipped"]``) so far; with
        :attr:`n_images` it counts the images a run has gone through (resuming)."""
        return len(self._skipped)

    def _record_skipped(self, entries: Sequence[Any]) -> None:
        r"""Keep ``(source, reason[, index, id])`` of images a loader skipped, sorted by index."""
        self._skipped.extend(list(e) for e in entries)
        self._skipped.sort(key=lambda r: (r[2] if len(r) > 2 and isinstance(r[2], int) else -1, str(r[0])))

    def reset(self) -> None:
        r"""Forget everything seen so far."""
        self._acc: Dict[str, AccumulatorCollection] = {}
        self._infos: Dict[str, Dict[Tuple[int, int], LayerInfo]] = {}
        self._fields: Dict[str, Dict[Tuple[int, int], ReceptiveField]] = {}
        self._layer_meta: Dict[str, Dict[str, Any]] = {}
        self._images: Dict[int, Dict[str, Any]] = {}
        self._skipped: List[List[Any]] = []
        self.categories: Optional[List[str]] = None  # class names of the labels, when known
        self._n = 0  # images seen
        self._next = 0  # default index of the next image

    def _gathers_stats(self, name: str) -> bool:
        return self._stats_edges is not None and base_layer(name) in self._stats_edges

    def _accumulators(self, info: LayerInfo) -> AccumulatorCollection:
        acc = self._acc.get(info.name)
        if acc is None:
            members = {"topk": TopKState(self.k, info.channels, info.spatial, self.distinct_images)}
            if self._gathers_stats(info.name):
                members["stats"] = ChannelStats(info.channels, self._stats_edges[base_layer(info.name)])
            acc = self._acc[info.name] = AccumulatorCollection(members)
            self._layer_meta[info.name] = info.describe()
        elif acc["topk"].channels != info.channels:
            raise ValueError(
                f"This batch gives the layer {info.name!r} {info.channels} channels but earlier "
                f"batches gave {acc['topk'].channels}; every batch must go through the same model and layer."
            )
        return acc

    @torch.no_grad()
    def update(
        self,
        batch: Batch,
        additional_forward_args: Optional[object] = None,
        indices: Optional[Union[Sequence[int], Tensor]] = None,
    ) -> None:
        r"""Fold one batch into the state.

        The first batch of each input size also measures the layers' receptive fields (and
        detects layouts that cannot be mined, before any work is wasted).

        Args:
            batch: an (N, C, H, W) tensor, ``(images, labels[, ids])`` or a dict (``images``,
                ``labels``, ``ids``, ``indices``; ``skipped``: images a loader could not read,
                recorded in the result).
            additional_forward_args (Any, optional): extra arguments of ``forward_func``.
            indices (sequence of int, optional): global indices of the batch's images;
                default: a dict batch's ``"indices"``, else the next N indices in iteration
                order.
        """
        images, labels, ids, batch_indices = split_batch(batch)
        if isinstance(batch, dict) and batch.get("skipped"):
            self._record_skipped(batch["skipped"])
        if indices is None:
            indices = batch_indices
        n = images.shape[0]
        if indices is None:
            idx = torch.arange(self._next, self._next + n, dtype=torch.int64)
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
            if idx.numel() != n:
                raise ValueError(f"{idx.numel()} indices given for a batch of {n} images.")
        if n == 0:  # every image of the batch failed to load: nothing to mine
            return
        self.source.check_images(images)
        acts = self.source(images, additional_forward_args)
        self.accumulate(acts, self.source.layer_infos(images), idx, labels, ids)

    def accumulate(
        self,
        activations: Dict[str, Tensor],
        infos: Dict[str, LayerInfo],
        indices: Tensor,
        labels: Optional[List[int]] = None,
        ids: Optional[List[str]] = None,
    ) -> None:
        r"""Fold activations computed elsewhere (by this miner's source, e.g. in a pass that also
        feeds other statistics) into the state: what :meth:`update` does after the forward.

        Args:
            activations (dict): layer name -> canonical ``(N, C, h, w)`` / ``(N, C)`` tensor,
                as the source returns them.
            infos (dict): the source's :meth:`~.sources.base.ActivationSource.layer_infos` for
                these images.
            indices (Tensor): ``(N,)`` global image indices.
            labels (list of int, optional), ids (list of str, optional): per image.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n = int(idx.numel())
        size = None
        for name, act in activations.items():
            info = infos[name]
            size = tuple(info.input_size)
            if act.shape[0] != n:
                raise ValueError(f"{n} indices for {act.shape[0]} activations of {name!r}.")
            if info.field is not None:
                self._fields.setdefault(name, {})[size] = info.field
            self._accumulators(info).update(act, idx.to(act.device))
        self._remember(idx, labels, ids, size)
        self._n += n
        self._next = max(self._next, int(idx.max()) + 1)

    def _remember(self, idx: Tensor, labels: Optional[List[int]], ids: Optional[List[str]],
                  size: Tuple[int, int]) -> None:
        r"""Keep the label, id and size of the images some slot refers to (and only those)."""
        live = torch.unique(torch.cat([a["topk"].live_indices() for a in self._acc.values()]))
        live_set = set(live.tolist())
        for j, i in enumerate(idx.tolist()):
            if i in live_set:
                info: Dict[str, Any] = {"size": size, "label": labels[j] if labels else -1}
                if ids is not None:
                    info["id"] = ids[j]
                self._images[i] = info
        if len(self._images) > 2 * len(live_set) + 64:
            self._images = {i: v for i, v in self._images.items() if i in live_set}

    def snapshot(self) -> TopKResult:
        r"""The current state as a :class:`TopKResult` (copies; also with no image yet)."""
        result = TopKResult(
            states={n: a["topk"].clone() for n, a in self._acc.items()},
            images=dict(self._images),
            n_images=self._n,
            metadata=self._metadata(),
            channel_stats={n: a["stats"].clone() for n, a in self._acc.items() if "stats" in a},
            layer_info={n: dict(m) for n, m in self._layer_meta.items()},
        )
        result.prune_images()
        sizes = {tuple(v["size"]) for v in result.images.values()}
        for name, per_size in self._fields.items():
            kept = {s: rf for s, rf in per_size.items() if s in sizes}
            if kept:
                result.receptive_fields[name] = kept
        return result

    def _metadata(self) -> Dict[str, Any]:
        return {
            **self.source.describe(),
            "layers": self.layer_names,
            "k": self.k,
            "distinct_images": self.distinct_images,
            "attribute_to_layer_input": self.attribute_to_layer_input,
            "stats": sorted(self._stats_edges or {}),
            "skipped": [list(s) for s in self._skipped],
            **({"categories": list(self.categories)} if self.categories else {}),
            "captum_topk_version": __version__,
        }

    def compute(self) -> TopKResult:
        r"""The :class:`TopKResult` of everything seen since the last :meth:`reset` (cheap:
        receptive fields were measured with the first batch).

        Returns:
            TopKResult: records per layer and channel, with their receptive fields.
        Raises:
            ValueError: when no image was seen.
        """
        if self._n == 0 or not self._acc:
            raise ValueError(
                "No images were mined: the data yielded nothing. Check the dataset path, "
                "its file extensions and the DataLoader (drop_last with a tiny dataset?)."
            )
        if self._n < self.k:
            warnings.warn(
                f"k={self.k} is larger than the {self._n} images mined: each channel holds "
                f"{self._n} records.", UserWarning, stacklevel=2)
        return self.snapshot()

    def merge(self, other: Union["LayerTopKPatches", TopKResult]) -> "LayerTopKPatches":
        r"""Fold the state of another miner (or a saved :class:`TopKResult`) mined on other
        images into this one. Merged shards give exactly the result of one pass; the rules
        are those of :meth:`TopKResult.merge` (same layers, same statistics).

        Returns:
            self
        """
        snap = other.snapshot() if isinstance(other, LayerTopKPatches) else other
        self._check_stats(snap)
        if self._n == 0 and not self._acc:
            mine = snap
        else:
            mine = self.snapshot()
            mine.merge(snap)
        self._adopt(mine)
        return self

    def _check_stats(self, snap: TopKResult) -> None:
        r"""Statistics can only be combined exactly when both sides gathered them, with the
        same edges, over all their images."""
        unknown = {base_layer(n) for n in snap.states} - set(self.layer_names)
        if unknown:
            raise ValueError(f"The state holds layers {sorted(snap.states)} but this miner mines "
                             f"{self.layer_names}.")
        if snap.states and snap.k != self.k:
            raise ValueError(f"The state was mined with k={snap.k}, this miner has k={self.k}.")
        for name in snap.states:
            wanted = self._gathers_stats(name)
            cs = snap.channel_stats.get(name)
            if wanted and cs is None:
                raise ValueError(
                    f"This miner gathers statistics of {name!r} but the state to merge / load has "
                    "none (mined with stats=False): its images would be missing from them. Use "
                    "the same stats option for every shard / resumed run."
                )
            if wanted:
                check_same_edges(cs.edges, self._stats_edges[base_layer(name)], name)

    def _adopt(self, snap: TopKResult) -> None:
        r"""Replace the state by ``snap``'s (which this miner's settings accept)."""
        self.reset()
        for name, st in snap.states.items():
            members = {"topk": st.clone()}
            if self._gathers_stats(name):
                members["stats"] = snap.channel_stats[name].clone()
            self._acc[name] = AccumulatorCollection(members)
            self._layer_meta[name] = dict(snap.layer_info.get(name) or {})
        self._fields = {n: dict(per) for n, per in snap.receptive_fields.items()}
        self._images = dict(snap.images)
        self._skipped = [list(s) for s in snap.metadata.get("skipped", [])]
        self.categories = snap.metadata.get("categories")
        self._n = snap.n_images
        self._next = max([snap.n_images, *(i + 1 for i in snap.images)])

    # ------------------------------------------------------------------ snapshots
    def save_state(self, path: Union[str, os.PathLike]) -> None:
        r"""Write the streaming state atomically (see :meth:`TopKResult.save`)."""
        self.snapshot().save(path)

    def load_state(self, path_or_result: Union[str, os.PathLike, TopKResult]) -> None:
        r"""Replace the state by a snapshot written with :meth:`save_state` (for ``--resume``)."""
        snap = path_or_result if isinstance(path_or_result, TopKResult) else TopKResult.load(path_or_result)
        self._check_stats(snap)
        self._adopt(snap)

    # ------------------------------------------------------------------ whole dataset
    def mine(
        self,
        data: Any,
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
            max_images (int, optional): stop after this many images (labels, ids and indices
                of the last batch are cut with it).
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
        if hasattr(self.source, "progress"):
            self.source.progress = bool(progress)  # the receptive-field bar of the first batch
        save = (lambda: self.save_state(snapshot_path)) if snapshot_path is not None else None
        feed(self, data, additional_forward_args=additional_forward_args, batch_size=batch_size,
             progress=progress, max_images=max_images, snapshot=save, snapshot_every=snapshot_every)
        if save is not None and self._n:
            save()
        return self.compute() if finalize else None


def _single(layer: Any) -> bool:
    return not isinstance(layer, (list, tuple, dict))


def _check_device_ids(device_ids: Any) -> None:
    if isinstance(device_ids, (bool, int)) and device_ids is not None:
        raise TypeError(
            f"device_ids must be a list of GPU ids (as in Captum), got {device_ids!r}. The number "
            f"of records per channel is keyword-only: LayerTopKPatches(model, layer, k={device_ids!r})."
        )


def _parse_stats(stats: StatsSpec, names: Sequence[str]) -> Optional[Dict[str, Optional[Tensor]]]:
    r"""``None`` (no statistics) or layer name -> histogram edges (None: the default)."""
    names = list(names)
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
