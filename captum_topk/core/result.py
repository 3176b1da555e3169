r"""Mined top-k results: records, receptive-field crops, safe atomic save / load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .accumulators.topk import TopKState
from ..utils.files import atomic_torch_save
from ..receptive_field.field import ReceptiveField
from .accumulators.stats import ChannelStats, check_same_edges, label_histogram
from .records import Box, ImageSource, PatchRecord, record_image

FORMAT = "captum-topk/2"
#: Largest k and channel count a result file may declare (a damaged or hostile file is refused).
MAX_K, MAX_CHANNELS = 4096, 1_000_000
_READABLE = ("captum-topk/1", FORMAT)  # /1: before layer_info (layouts)


@dataclass
class TopKResult:
    r"""What :meth:`LayerTopKPatches.mine` returns: the top-k and bottom-k of every channel.

    Memory is O(layers x channels x k). Use :meth:`records` for the records of a channel,
    :meth:`patches` for their receptive-field crops, :meth:`save` / :meth:`load` to persist.
    """

    states: Dict[str, TopKState]
    images: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    receptive_fields: Dict[str, Dict[Tuple[int, int], ReceptiveField]] = field(default_factory=dict)
    n_images: int = 0
    metadata: Dict[str, Any] = field(default_factory=dict)
    channel_stats: Dict[str, ChannelStats] = field(default_factory=dict)
    layer_info: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ access
    @property
    def layers(self) -> List[str]:
        return list(self.states)

    @property
    def k(self) -> int:
        return next(iter(self.states.values())).k if self.states else 0

    def num_channels(self, layer: str) -> int:
        return self._state(layer).channels

    def layout(self, layer: str) -> str:
        r"""The layer's raw output layout: ``"NCHW"``, ``"NHWC"``, ``"NLC"`` or ``"NC"``."""
        self._state(layer)
        return str(self.layer_info.get(layer, {}).get("layout", "NCHW"))

    def box_kind(self, layer: str) -> str:
        r"""What the layer's boxes are: ``"receptive_field"``, ``"token"`` (patch footprints) or
        ``"image"`` (see :class:`PatchRecord`)."""
        state = self._state(layer)
        return str(self.layer_info.get(layer, {}).get("box_kind", "receptive_field" if state.spatial else "image"))

    def ranked_by(self, layer: str) -> Optional[Dict[str, Any]]:
        r"""How the layer's records were ranked: None for activations, else
        ``{"method": "LayerGradientXActivation", "target": 207, "ranked": "per-position layer
        attribution"}`` (``LayerTopKPatches(..., rank_by=..., target=...)``): its values are
        attributions toward the target (see :mod:`captum_topk.core.relevance`)."""
        self._state(layer)
        ranked = self.layer_info.get(layer, {}).get("ranked_by")
        return dict(ranked) if isinstance(ranked, dict) else None

    def concept(self, layer: str) -> Optional[Dict[str, Any]]:
        r"""For a concept layer (``"<layer>:<name>"``, mined with ``concepts=``): ``{"layer",
        "name", "result_layer", "n_concepts", "method", "digest"}``; None for a model layer."""
        self._state(layer)
        meta = self.layer_info.get(layer, {}).get("concept")
        return dict(meta) if isinstance(meta, dict) else None

    def _state(self, layer: str) -> TopKState:
        if layer not in self.states:
            raise KeyError(f"Layer {layer!r} was not mined; mined layers: {', '.join(self.states)}.")
        return self.states[layer]

    def values(self, layer: str, which: str = "top") -> Tensor:
        r"""(C, k) activation values, best first per channel (NaN-free; ±inf in empty slots)."""
        return self._state(layer).tensors[f"{_side(which)}_values"]

    def indices(self, layer: str, which: str = "top") -> Tensor:
        r"""(C, k) image indices, -1 in empty slots."""
        return self._state(layer).tensors[f"{_side(which)}_index"]

    def box(self, layer: str, index: int, y: int, x: int) -> Box:
        r"""Input box of position (y, x) of ``layer`` for image ``index``."""
        size = tuple(self.images.get(index, {}).get("size", (0, 0)))
        state = self._state(layer)
        if not state.spatial:
            return (0, 0, size[0], size[1])
        rf = self.receptive_fields.get(layer, {}).get(size)
        if rf is None:
            raise RuntimeError(f"No receptive field stored for layer {layer!r} at input {size}.")
        return rf.box(y, x)

    def records(self, layer: str, channel: int, which: str = "top") -> List[PatchRecord]:
        r"""The mined records of one channel, strongest first.

        Args:
            layer (str): a mined layer name.
            channel (int): channel index.
            which (str): "top" (highest first) or "bottom" (most negative first).
        Returns:
            list[PatchRecord]: at most k records (fewer when the data had fewer images).
        """
        state = self._state(layer)
        if not 0 <= channel < state.channels:
            raise IndexError(f"Channel {channel} out of range: layer {layer!r} has {state.channels}.")
        side = _side(which)
        t = state.tensors
        out = []
        for rank in range(state.k):
            idx = int(t[f"{side}_index"][channel, rank])
            if idx < 0:
                break
            y, x = int(t[f"{side}_y"][channel, rank]), int(t[f"{side}_x"][channel, rank])
            info = self.images.get(idx, {})
            out.append(
                PatchRecord(
                    layer=layer,
                    channel=channel,
                    rank=rank,
                    value=float(t[f"{side}_values"][channel, rank]),
                    index=idx,
                    y=y,
                    x=x,
                    box=self.box(layer, idx, y, x),
                    label=int(info.get("label", -1)),
                    image_id=info.get("id"),
                    input_size=tuple(info.get("size", (0, 0))),
                    which=side,
                    box_kind=self.box_kind(layer),
                )
            )
        return out

    def iter_records(self, layer: str, which: str = "top") -> Iterator[PatchRecord]:
        for c in range(self._state(layer).channels):
            yield from self.records(layer, c, which)

    def patches(
        self,
        images_source: ImageSource,
        layer: str,
        channel: int,
        which: str = "top",
        transform: Optional[Callable] = None,
        fill: float = 0.0,
        n: Optional[int] = None,
    ) -> Tensor:
        r"""Crop the exact receptive field of each of a channel's records from its image.

        Args:
            images_source: the images as the model saw them: an (N, C, H, W) tensor, a
                dataset / sequence (items may be tensors or ``(image, label, ...)``
                tuples), or a callable ``index -> image``; indexed by record ``index``.
            layer (str), channel (int), which (str): as in :meth:`records`.
            transform (Callable, optional): applied to PIL items before cropping.
            fill (float): value of the padding added to boxes clipped at the border.
            n (int, optional): crop only the ``n`` strongest records.
        Returns:
            Tensor: (n, C, h, w), n <= k records, (h, w) the layer's receptive-field size;
            boxes clipped at the border are padded on the clipped side so grids line up.
        Example::
            >>> crops = result.patches(dataset, "features.3", 12)   # 9 x 3 x h x w
        """
        recs = self.records(layer, channel, which)[:n]
        crops = []
        for r in recs:
            image = record_image(images_source, r, transform)
            if self._state(layer).spatial:
                rf = self.receptive_fields[layer][tuple(r.input_size)]
                crops.append(rf.padded_crop(image, r.y, r.x, fill=fill))
            else:
                crops.append(image)
        if not crops:
            return torch.empty(0)
        return torch.stack(crops)

    # ------------------------------------------------------------------ statistics, neurons
    def stats(self, layer: str) -> ChannelStats:
        r"""Per-channel dataset statistics of ``layer`` (histogram, mean, fraction > 0, count),
        gathered during mining with ``LayerTopKPatches(..., stats=True)``.

        Returns:
            ChannelStats: see :mod:`captum_topk.core.accumulators.stats`.
        Example::
            >>> s = result.stats("features.7")
            >>> s.mean.shape, s.fraction_positive.shape, s.counts.shape   # (C,), (C,), (C, B)
        """
        self._state(layer)
        if layer not in self.channel_stats:
            raise KeyError(
                f"No statistics for layer {layer!r}: mine with LayerTopKPatches(..., stats=True) "
                "(or `captum-topk mine --stats`)."
            )
        return self.channel_stats[layer]

    def label_histogram(self, layer: str, channel: Optional[int] = None, which: str = "top",
                        num_classes: Optional[int] = None) -> Tensor:
        r"""Label counts of a channel's top-k images: (num_classes,), or (C, num_classes) for
        every channel. See :func:`captum_topk.core.accumulators.stats.label_histogram`."""
        return label_histogram(self, layer, channel, which, num_classes)

    def activation_maps(self, images_source: ImageSource, layer: str, channel: int, model: Any = None,
                        which: str = "top", n: Optional[int] = None, transform: Optional[Callable] = None,
                        concepts: Optional[List[Any]] = None, layer_module: Any = None) -> Tensor:
        r"""``(n, h, w)`` raw maps of a channel on its records' images (``maps[i, y, x]`` is record
        i's value at its position). See :func:`captum_topk.core.activation_maps.activation_maps`.

        Example::
            >>> maps = result.activation_maps(dataset, "features.7", 12, model=model)   # (9, 28, 28)
        """
        from .activation_maps import activation_maps

        return activation_maps(self, images_source, layer, channel, model, which, n, transform, concepts,
                               layer_module)

    def neurons(self, layer: str, channel: int, which: str = "top", n: Optional[int] = None) -> List[Any]:
        r"""``(record, neuron_selector)`` pairs of a channel, for any Captum neuron method.
        See :func:`captum_topk.core.projections.neurons`."""
        from .projections import neurons

        return neurons(self, layer, channel, which, n)

    def projections(self, images_source: ImageSource, layer: str, channel: int,
                    method: Any = "deconvolution", model: Any = None, which: str = "top",
                    n: Optional[int] = None, **kwargs: Any) -> Any:
        r"""Zeiler & Fergus projections of a channel's records, cropped like :meth:`patches`.
        See :func:`captum_topk.core.projections.projections`.

        Example::
            >>> proj = result.projections(dataset, "features.7", 12, model=model)
            >>> proj.attributions.shape, proj.rgb.shape      # (9, 3, h, w), (9, h, w, 3)
        """
        from .projections import projections

        return projections(self, images_source, layer, channel, method, model, which, n, **kwargs)

    # ------------------------------------------------------------------ merge
    def merge(self, other: "TopKResult") -> "TopKResult":
        r"""Fold a result mined on other (disjoint) images into this one, in place; returns self."""
        if set(other.states) != set(self.states):
            raise ValueError("Cannot merge results mined on different layers.")
        if set(other.channel_stats) != set(self.channel_stats):
            raise ValueError(
                "Cannot merge a result mined with stats=True with one mined without (or on "
                "other layers): mine every shard with the same stats option."
            )
        for name in self.states:
            mine, theirs = self.layer_info.get(name, {}), other.layer_info.get(name, {})
            for key in ("ranked_by", "concept"):  # what the values are must agree
                if mine.get(key) != theirs.get(key):
                    raise ValueError(f"Layer {name!r}: cannot merge values of {theirs.get(key) or 'activations'} "
                                     f"into values of {mine.get(key) or 'activations'} (other rank_by / concepts).")
        for name, cs in other.channel_stats.items():  # validate all before changing anything
            check_same_edges(cs.edges, self.channel_stats[name].edges, name)
        for name, cs in other.channel_stats.items():
            self.channel_stats[name].merge(cs)
        for name, st in other.states.items():
            self.states[name].merge(st)
        self.images.update(other.images)
        for name, meta in other.layer_info.items():
            self.layer_info.setdefault(name, dict(meta))
        skipped = [*self.metadata.get("skipped", []), *other.metadata.get("skipped", [])]
        if skipped:
            self.metadata["skipped"] = skipped
        for name, per_size in other.receptive_fields.items():
            self.receptive_fields.setdefault(name, {}).update(per_size)
        self.n_images += other.n_images
        self.prune_images()
        return self

    def prune_images(self) -> None:
        r"""Forget the per-image info of images no longer referenced by any slot."""
        live = set()
        for st in self.states.values():
            live.update(st.live_indices().tolist())
        self.images = {i: v for i, v in self.images.items() if i in live}

    # ------------------------------------------------------------------ save / load
    def to_payload(self) -> Dict[str, Any]:
        r"""A dict of tensors and plain JSON text: loadable with ``torch.load(weights_only=True)``."""
        tensors: Dict[str, Tensor] = {}
        layers = {}
        for name, st in self.states.items():
            layers[name] = {
                "k": st.k,
                "channels": st.channels,
                "spatial": st.spatial,
                "distinct_images": st.distinct_images,
                "nan_count": st.nan_count,
                "out_size": list(st.out_size) if st.out_size else None,
            }
            for tname, t in st.tensors.items():
                tensors[f"state/{name}/{tname}"] = t.contiguous()
        rfs = []
        for name, per_size in self.receptive_fields.items():
            for size, rf in per_size.items():
                key = f"rf/{name}/{size[0]}x{size[1]}"
                tensors[key] = rf.boxes.contiguous()
                rfs.append({"layer": name, "key": key, "input_size": list(rf.input_size),
                            "size": list(rf.size), "stride": list(rf.stride)})
        for name, cs in self.channel_stats.items():
            for tname, t in cs.to_payload().items():
                tensors[f"stats/{name}/{tname}"] = t.contiguous()
        header = {
            "format": FORMAT,
            "n_images": self.n_images,
            "layers": layers,
            "receptive_fields": rfs,
            "stats": sorted(self.channel_stats),
            "layer_info": self.layer_info,
            "images": {str(i): v for i, v in self.images.items()},
            "metadata": self.metadata,
        }
        return {"header": json.dumps(header), "tensors": tensors}

    @classmethod
    def from_payload(cls, payload: Dict[str, Any]) -> "TopKResult":
        r"""Inverse of :meth:`to_payload`, checking everything it reads (shapes, value ranges,
        sizes): a damaged or tampered file raises ``ValueError`` saying what is wrong."""
        try:
            return cls._from_payload(payload)
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, json.JSONDecodeError) as exc:
            raise ValueError(f"damaged captum-topk result ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _from_payload(cls, payload: Dict[str, Any]) -> "TopKResult":
        if not isinstance(payload, dict) or not isinstance(payload.get("header"), str):
            raise ValueError("damaged captum-topk result: no header.")
        header = json.loads(payload["header"])
        if not isinstance(header, dict) or header.get("format") not in _READABLE:
            raise ValueError(f"Not a captum-topk result (format {header.get('format') if isinstance(header, dict) else None!r}).")
        tensors = payload["tensors"]
        if not isinstance(tensors, dict) or not all(isinstance(t, Tensor) for t in tensors.values()):
            raise ValueError("damaged captum-topk result: its tensors are not a dict of tensors.")
        n_images = header["n_images"]
        if not isinstance(n_images, int) or n_images < 0:
            raise ValueError(f"damaged captum-topk result: n_images {n_images!r}.")
        states = {}
        for name, info in header["layers"].items():
            k, channels = info["k"], info["channels"]
            if not (isinstance(k, int) and 1 <= k <= MAX_K and isinstance(channels, int) and 1 <= channels <= MAX_CHANNELS):
                raise ValueError(f"damaged captum-topk result: layer {name!r} declares k={k!r}, {channels!r} channels.")
            prefix = f"state/{name}/"
            st_tensors = {k_[len(prefix):]: v for k_, v in tensors.items() if k_.startswith(prefix)}
            state = TopKState.from_state_dict({
                **st_tensors, "k": k, "channels": channels, "spatial": bool(info["spatial"]),
                "distinct_images": bool(info["distinct_images"]), "nan_count": info.get("nan_count", 0),
                "out_size": info.get("out_size") or None})
            _check_state(name, state)
            states[name] = state
        rfs: Dict[str, Dict[Tuple[int, int], ReceptiveField]] = {}
        for r in header["receptive_fields"]:
            rf = ReceptiveField(
                boxes=tensors[r["key"]], input_size=tuple(r["input_size"]),
                size=tuple(r["size"]), stride=tuple(r["stride"]),
            )
            H, W = rf.input_size
            b = rf.boxes
            if not (bool((b >= 0).all()) and bool((b[..., 2] <= H).all()) and bool((b[..., 3] <= W).all())
                    and r["layer"] in states):
                raise ValueError(f"damaged captum-topk result: receptive field of {r['layer']!r} outside a {H}x{W} input.")
            st = states[r["layer"]]
            if st.out_size is not None and tuple(b.shape[:2]) != tuple(st.out_size):
                raise ValueError(f"damaged captum-topk result: receptive field of {r['layer']!r} has grid "
                                 f"{tuple(b.shape[:2])}, the layer {tuple(st.out_size)}.")
            rfs.setdefault(r["layer"], {})[tuple(r["input_size"])] = rf
        images = {}
        for i, v in header["images"].items():
            v = dict(v)
            size = tuple(int(x) for x in v.get("size", (0, 0)))
            if len(size) != 2 or min(size) < 0 or not isinstance(v.get("label", -1), int):
                raise ValueError(f"damaged captum-topk result: image {i} has size {size} / label {v.get('label')!r}.")
            v["size"] = size
            images[int(i)] = v
        channel_stats = {}
        for name in header.get("stats", []):  # absent in files written before statistics
            prefix = f"stats/{name}/"
            cs = ChannelStats.from_payload({k_[len(prefix):]: v for k_, v in tensors.items() if k_.startswith(prefix)})
            if name not in states or cs.channels != states[name].channels or bool((cs.hist < 0).any()):
                raise ValueError(f"damaged captum-topk result: statistics of {name!r} do not fit the layer.")
            channel_stats[name] = cs
        layer_info = {n: dict(v) for n, v in (header.get("layer_info") or {}).items()}
        for name, st in states.items():  # files of format /1: channels-first maps or vectors
            layer_info.setdefault(name, {"layout": "NCHW" if st.spatial else "NC", "channels": st.channels,
                                         "box_kind": "receptive_field" if st.spatial else "image",
                                         "prefix_tokens": 0})
        metadata = header.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("damaged captum-topk result: metadata is not a dict.")
        return cls(states=states, images=images, receptive_fields=rfs, n_images=n_images, metadata=metadata,
                   channel_stats=channel_stats, layer_info=layer_info)

    def save(self, path: Union[str, os.PathLike]) -> None:
        r"""Write atomically (temp file in the same folder, then rename): never a half file."""
        atomic_torch_save(self.to_payload(), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "TopKResult":
        r"""Load a saved result with ``torch.load(weights_only=True)`` (no arbitrary pickle)."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{path} is not a readable captum-topk result: {exc}") from exc
        if not isinstance(payload, dict) or "header" not in payload:
            raise ValueError(f"{path} is not a captum-topk result.")
        return cls.from_payload(payload)

    def __repr__(self) -> str:
        layers = ", ".join(f"{n}[{s.channels}]" for n, s in self.states.items())
        return f"TopKResult(k={self.k}, n_images={self.n_images}, layers=({layers}))"


def _side(which: str) -> str:
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be 'top' or 'bottom', got {which!r}.")
    return which


def _check_state(name: str, state: TopKState) -> None:
    r"""Values ordered and NaN-free, positions inside the grid, indices >= -1: or ``ValueError``."""
    t = state.tensors
    for side in ("top", "bottom"):
        v, idx = t[f"{side}_values"], t[f"{side}_index"]
        if bool(torch.isnan(v).any()):
            raise ValueError(f"damaged captum-topk result: layer {name!r} holds NaN {side} values.")
        ordered = (v[:, :-1] >= v[:, 1:]) if side == "top" else (v[:, :-1] <= v[:, 1:])
        if v.shape[1] > 1 and not bool(ordered.all()):
            raise ValueError(f"damaged captum-topk result: layer {name!r} has unordered {side} values.")
        if bool((idx < -1).any()):
            raise ValueError(f"damaged captum-topk result: layer {name!r} has negative image indices.")
        if state.out_size is not None:
            y, x = t[f"{side}_y"], t[f"{side}_x"]
            h, w = state.out_size
            if bool(((y < -1) | (y >= h) | (x < -1) | (x >= w)).any()):
                raise ValueError(f"damaged captum-topk result: layer {name!r} has positions outside its {h}x{w} grid.")
