r"""Streaming per-channel dataset statistics of a layer, at constant memory.

:class:`ChannelStats` is gathered in the same pass as the top-k records
(``LayerTopKPatches(..., stats=True)``): for every channel, a histogram of its activations
over fixed bin edges (plus underflow / overflow counts), the mean, the fraction of positions
whose activation is > 0, the minimum, the maximum and the number of values seen. Its memory is
O(channels x bins), whatever the size of the dataset, and shards merge exactly
(:meth:`ChannelStats.merge`): counts are integers, sums float64.

Which classes drive a channel is read from the labels of its top-k records at query time:
:func:`label_histogram`.

Histogram convention: with edges ``e_0 < e_1 < ... < e_B``, bin ``i`` holds the values ``v``
with ``e_i <= v < e_{i+1}``; ``underflow`` counts ``v < e_0`` (``-inf`` included) and
``overflow`` counts ``v >= e_B`` (``+inf`` included). NaN activations are counted apart
(:attr:`ChannelStats.nan_count`) and enter no other statistic. Every position of a feature
map is one value: a batch of ``N`` images of a ``(C, H, W)`` layer adds ``N * H * W`` values
to each channel; a 2-D ``(N, C)`` layer adds ``N``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from .base import Accumulator

__all__ = ["ChannelStats", "default_edges", "check_same_edges", "label_histogram", "DEFAULT_BINS", "DEFAULT_RANGE"]

DEFAULT_BINS = 64
DEFAULT_RANGE = 16.0
EdgesLike = Union[None, Sequence[float], Tensor]

_KEYS = ("edges", "hist", "sum", "positive", "nan", "min", "max", "n_images")


def default_edges(bins: int = DEFAULT_BINS, range: float = DEFAULT_RANGE) -> Tensor:
    r"""``bins + 1`` evenly spaced edges over the symmetric range ``[-range, range]``.

    Args:
        bins (int): number of bins. Default: 64.
        range (float): half-width of the range. Default: 16.0 (bins 0.5 wide), which covers
            post-ReLU / ReLU6 / batch-normalised activations of torchvision ImageNet models;
            values outside it land in the underflow / overflow counts.
    Returns:
        Tensor: (bins + 1,) float32 edges.
    Example::
        >>> default_edges(4, 2.0)
        tensor([-2., -1.,  0.,  1.,  2.])
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}.")
    if not range > 0:
        raise ValueError(f"range must be > 0, got {range!r}.")
    return torch.linspace(-float(range), float(range), bins + 1, dtype=torch.float32)


def _as_edges(edges: EdgesLike) -> Tensor:
    if edges is None:
        return default_edges()
    e = torch.as_tensor(edges, dtype=torch.float32).detach().cpu().flatten()
    if e.numel() < 2 or not torch.isfinite(e).all() or not bool((e[1:] > e[:-1]).all()):
        raise ValueError(
            "Histogram edges must be at least 2 finite, strictly increasing numbers, e.g. "
            "torch.linspace(-8, 8, 65) or captum_topk.core.accumulators.stats.default_edges(bins=64, range=8)."
        )
    return e.contiguous()


def check_same_edges(edges: Tensor, expected: EdgesLike, layer: Optional[str] = None) -> None:
    r"""Statistics combine exactly (merged shards, a resumed run) only when they were gathered
    over the same histogram edges: raise otherwise.

    Args:
        edges (Tensor): (B + 1,) the edges of the statistics to combine.
        expected (Tensor, sequence of float or None): the edges they must equal; None: the
            default edges (:func:`default_edges`).
        layer (str, optional): the layer named in the error.
    Raises:
        ValueError: when the edges differ, with both ranges and bin counts.
    """
    expected = _as_edges(expected)
    if not torch.equal(edges.cpu(), expected):
        what = f"Statistics of {layer!r}" if layer is not None else "These statistics"
        raise ValueError(
            f"{what} were gathered with other histogram edges ({_describe(edges)}, not "
            f"{_describe(expected)}): gather every shard / resumed run with the same stats option."
        )


def _describe(edges: Tensor) -> str:
    return f"{edges.numel() - 1} bins over [{float(edges[0]):g}, {float(edges[-1]):g}]"


class ChannelStats(Accumulator):
    r"""
    Streaming statistics of every channel of one layer over a dataset.

    Feed it activations batch by batch with :meth:`update`, combine shards with
    :meth:`merge` (exact: integer counts, float64 sums), persist it with
    :meth:`to_payload` / :meth:`from_payload` (tensors only, safe for
    ``torch.load(weights_only=True)``). Memory is O(channels x bins).

    The histogram uses fixed edges (see the module docstring for the bin convention);
    fixed edges are what makes shards mergeable: edges cannot adapt to the data.
    The cost of :meth:`update` is one ``bucketize`` and one ``bincount`` over the batch,
    plus the per-channel reductions for the mean, the positive count and min / max.

    Attributes:
        edges (Tensor): (B + 1,) float32 bin edges.
        hist (Tensor): (C, B + 2) int64 counts: column 0 is the underflow, columns
            1..B the bins, column B + 1 the overflow.
        sum (Tensor): (C,) float64 sum of the (non-NaN) values.
        positive (Tensor): (C,) int64 number of values > 0.
        nan (Tensor): (C,) int64 number of NaN values (excluded from everything else).
        min, max (Tensor): (C,) float64 extremes (``+inf`` / ``-inf`` before any value).
        n_images (int): images seen.
    """

    settings = ("channels", "edges")

    def __init__(
        self,
        channels: int,
        edges: EdgesLike = None,
        bins: int = DEFAULT_BINS,
        range: float = DEFAULT_RANGE,
    ) -> None:
        r"""
        Args:
            channels (int): number of channels C of the layer.
            edges (Tensor or sequence of float, optional): the B + 1 strictly increasing
                bin edges. Default: ``default_edges(bins, range)``.
            bins (int): number of bins when ``edges`` is not given. Default: 64.
            range (float): half-width of the symmetric default range. Default: 16.0.
        Example::
            >>> stats = ChannelStats(64, edges=torch.linspace(0, 6, 25))   # ReLU6 layer
            >>> stats.update(acts)                 # (N, 64, H, W) or (N, 64)
            >>> stats.mean, stats.fraction_positive, stats.counts.shape
        """
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}.")
        self.channels = channels
        self.edges = _as_edges(edges if edges is not None else default_edges(bins, range))
        c, nb = self.channels, self.edges.numel() + 1
        self.add_state("hist", torch.zeros(c, nb, dtype=torch.int64), merge="sum")
        self.add_state("sum", torch.zeros(c, dtype=torch.float64), merge="sum")
        self.add_state("positive", torch.zeros(c, dtype=torch.int64), merge="sum")
        self.add_state("nan", torch.zeros(c, dtype=torch.int64), merge="sum")
        self.add_state("min", torch.full((c,), float("inf"), dtype=torch.float64), merge="min")
        self.add_state("max", torch.full((c,), float("-inf"), dtype=torch.float64), merge="max")
        self.add_state("n_images", 0, merge="sum")

    # ------------------------------------------------------------------ streaming
    @property
    def bins(self) -> int:
        return self.edges.numel() - 1

    def _to(self, device: torch.device) -> None:
        if self.hist.device != device:
            for name in ("hist", "sum", "positive", "nan", "min", "max"):
                setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def update(self, acts: Tensor, indices: Optional[Tensor] = None) -> "ChannelStats":
        r"""Fold one batch of activations into the statistics.

        Args:
            acts (Tensor): (N, C, H, W) feature maps or (N, C) vectors of this layer.
            indices (Tensor, optional): the images' global indices (unused: statistics do not
                depend on which images they are; accepted so that one call feeds every
                accumulator of a layer).
        Returns:
            self
        """
        if not isinstance(acts, Tensor) or acts.dim() not in (2, 4) or acts.shape[1] != self.channels:
            shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
            raise ValueError(
                f"ChannelStats for {self.channels} channels needs (N, {self.channels}, H, W) or "
                f"(N, {self.channels}) activations, got {shape}."
            )
        n, c = acts.shape[0], self.channels
        x = acts.detach().reshape(n, c, -1).contiguous()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        if x.numel() == 0:
            self.n_images += n
            return self
        self._to(x.device)
        nb = self.bins + 2
        sums = x.sum(dim=(0, 2), dtype=torch.float64)
        bucket = torch.bucketize(x, self.edges.to(x.device, x.dtype), right=True)
        bucket += (torch.arange(c, device=x.device) * nb).view(1, c, 1)
        lo, hi = x.amin(dim=(0, 2)), x.amax(dim=(0, 2))
        if torch.isnan(sums).any():  # rare: only then pay for masking
            bad = torch.isnan(x)
            self.nan += bad.sum(dim=(0, 2))
            bucket.masked_fill_(bad, c * nb)  # one extra slot, dropped below
            sums = x.nansum(dim=(0, 2), dtype=torch.float64)
            lo = x.masked_fill(bad, float("inf")).amin(dim=(0, 2))
            hi = x.masked_fill(bad, float("-inf")).amax(dim=(0, 2))
        counts = torch.bincount(bucket.view(-1), minlength=c * nb + 1)[: c * nb]
        self.hist += counts.view(c, nb)
        self.sum += sums
        self.positive += (x > 0).sum(dim=(0, 2))
        self.min = torch.minimum(self.min, lo.double())
        self.max = torch.maximum(self.max, hi.double())
        self.n_images += n
        return self

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        r"""Fold the statistics of other (disjoint) data into these (the derived merge), after
        checking the histogram edges with an error that names both ranges."""
        if isinstance(other, ChannelStats):
            check_same_edges(other.edges, self.edges)
        return super().merge(other)

    def compute(self) -> Dict[str, Tensor]:
        r"""The statistics as tensors: ``mean`` (C,), ``fraction_positive`` (C,), ``counts``
        (C, B), ``underflow`` / ``overflow`` / ``count`` / ``nan_count`` (C,), ``min`` / ``max``
        (C,), ``edges`` (B + 1,)."""
        return {"mean": self.mean, "fraction_positive": self.fraction_positive, "counts": self.counts,
                "underflow": self.underflow, "overflow": self.overflow, "count": self.count,
                "nan_count": self.nan_count, "min": self.min.cpu().clone(), "max": self.max.cpu().clone(),
                "edges": self.edges.clone()}

    # ------------------------------------------------------------------ read-out
    @property
    def counts(self) -> Tensor:
        r"""(C, B) int64 in-range bin counts."""
        return self.hist[:, 1:-1].cpu()

    @property
    def underflow(self) -> Tensor:
        r"""(C,) int64 number of values below ``edges[0]``."""
        return self.hist[:, 0].cpu()

    @property
    def overflow(self) -> Tensor:
        r"""(C,) int64 number of values at or above ``edges[-1]``."""
        return self.hist[:, -1].cpu()

    @property
    def count(self) -> Tensor:
        r"""(C,) int64 number of (non-NaN) values seen per channel (images x positions)."""
        return self.hist.sum(dim=1).cpu()

    @property
    def nan_count(self) -> Tensor:
        r"""(C,) int64 number of NaN values skipped per channel."""
        return self.nan.cpu()

    @property
    def mean(self) -> Tensor:
        r"""(C,) float64 mean activation per channel (NaN before any value)."""
        cnt = self.count.to(torch.float64)
        return torch.where(cnt > 0, self.sum.cpu() / cnt.clamp(min=1), torch.full_like(cnt, float("nan")))

    @property
    def fraction_positive(self) -> Tensor:
        r"""(C,) float64 fraction of values > 0 per channel (how often the channel fires)."""
        cnt = self.count.to(torch.float64)
        return torch.where(cnt > 0, self.positive.cpu() / cnt.clamp(min=1), torch.full_like(cnt, float("nan")))

    def quantile(self, q: float) -> Tensor:
        r"""``(C,)`` float64 value below which a fraction ``q`` of each channel's values lie,
        read off the histogram (linear inside the bin; values outside the edges count at the
        edges). NetDissect thresholds a unit's activation map at its top quantile
        (``q = 0.995``).

        Args:
            q (float): in [0, 1].
        Returns:
            Tensor: (C,) float64; NaN for a channel without values.
        Example::
            >>> stats.quantile(0.995)[12]     # the top 0.5 % of channel 12 lie above this
        """
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}.")
        hist = self.hist.cpu().to(torch.float64)  # (C, B + 2): underflow, bins, overflow
        total = hist.sum(dim=1)
        cum = hist.cumsum(dim=1)
        target = (float(q) * total).unsqueeze(1)
        j = torch.searchsorted(cum, target).clamp(max=hist.shape[1] - 1).squeeze(1)  # column holding it
        edges = self.edges.to(torch.float64)
        lo = torch.cat([edges[:1], edges])[j]  # underflow and overflow collapse onto the edges
        hi = torch.cat([edges, edges[-1:]])[j]
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0).unsqueeze(1)).squeeze(1), torch.zeros_like(total))
        inside = hist.gather(1, j.unsqueeze(1)).squeeze(1)
        frac = torch.where(inside > 0, (target.squeeze(1) - before) / inside.clamp(min=1), torch.zeros_like(total))
        out = lo + frac.clamp(0, 1) * (hi - lo)
        return torch.where(total > 0, out, torch.full_like(out, float("nan")))

    def density(self) -> Tensor:
        r"""(C, B) float64 in-range histogram normalised to a probability density
        (each row integrates to the fraction of values inside the edges)."""
        cnt = self.count.to(torch.float64).clamp(min=1).unsqueeze(1)
        widths = (self.edges[1:] - self.edges[:-1]).to(torch.float64)
        return self.counts.to(torch.float64) / cnt / widths

    # ------------------------------------------------------------------ persistence
    def to_payload(self) -> Dict[str, Tensor]:
        r"""The state as a dict of CPU tensors only (the channels are ``hist``'s rows), the form
        result files store (``torch.load(weights_only=True)``-safe)."""
        state = self.state_dict()
        del state["channels"]
        state["n_images"] = torch.tensor(state["n_images"], dtype=torch.int64)
        return state

    @classmethod
    def from_payload(cls, payload: Dict[str, Any]) -> "ChannelStats":
        r"""Inverse of :meth:`to_payload`."""
        missing = [k for k in _KEYS if k not in payload]
        if missing:
            raise ValueError(f"Not a ChannelStats payload: missing {missing}.")
        hist = torch.as_tensor(payload["hist"])
        if hist.dim() != 2:
            raise ValueError(f"ChannelStats payload: hist {tuple(hist.shape)} is not (channels, bins + 2).")
        return cls.from_state_dict({**payload, "channels": int(hist.shape[0])})

    def __repr__(self) -> str:
        return (
            f"ChannelStats(channels={self.channels}, bins={self.bins}, "
            f"range=[{float(self.edges[0]):g}, {float(self.edges[-1]):g}), n_images={self.n_images})"
        )


def label_histogram(
    result: Any,
    layer: str,
    channel: Optional[int] = None,
    which: str = "top",
    num_classes: Optional[int] = None,
) -> Tensor:
    r"""Which classes drive a channel: the labels of the images of its top-k (or bottom-k) records.

    Computed at query time from the records (records of images with unknown label, -1,
    are not counted).

    Args:
        result (TopKResult): a mined result.
        layer (str): a mined layer.
        channel (int, optional): one channel; default: every channel.
        which (str): "top" or "bottom".
        num_classes (int, optional): length of the histogram; default: the number of
            ``metadata["categories"]``: the model's classes (runs record them) or the mined
            dataset's ``classes`` (recorded by ``mine``). Never guessed from the labels seen.
    Returns:
        Tensor: (num_classes,) int64 counts for one channel, (C, num_classes) for all.
    Example::
        >>> h = result.label_histogram("features.14", 7)
        >>> [(info.categories[i], int(h[i])) for i in h.argsort(descending=True)[:3]]
    """
    channels = [channel] if channel is not None else list(range(result.num_channels(layer)))
    labels = [[r.label for r in result.records(layer, c, which) if r.label >= 0] for c in channels]
    if num_classes is None:
        cats = (getattr(result, "metadata", None) or {}).get("categories")
        if not cats:
            raise ValueError(
                "The number of classes is unknown (the result records no categories): pass "
                "num_classes=, e.g. len(dataset.classes) or the model's output size."
            )
        num_classes = len(cats)
    out = torch.zeros(len(channels), max(int(num_classes), 0), dtype=torch.int64)
    for row, ls in enumerate(labels):
        for lab in ls:
            if lab >= out.shape[1]:
                raise ValueError(f"Label {lab} does not fit num_classes={num_classes}.")
            out[row, lab] += 1
    return out[0] if channel is not None else out
