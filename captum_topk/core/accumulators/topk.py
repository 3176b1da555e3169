r"""Streaming top-k / bottom-k state of one layer, O(channels x k) memory.

The order used everywhere is a strict total order on candidates:
higher value first, then lower image ``index``, then lower position ``y * W + x``.
Because the order is total, the k best of a union are the k best of the per-part k best,
which is what makes batches, shards and resumed runs merge to exactly one pass's result.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import Tensor

from .base import Accumulator

__all__ = ["TopKState"]

_EMPTY = -1
_SIDES = ("top", "bottom")
_FIELDS = ("values", "index", "y", "x")


def _select(values: Tensor, key: Tensor, k: int) -> Tensor:
    r"""Column indices of the ``k`` best candidates per row: value desc, then ``key`` asc.

    Args:
        values (Tensor): (C, M) float, ``-inf`` for empty slots.
        key (Tensor): (C, M) int64 tie-break key, increasing in (index, y, x).
    Returns:
        Tensor: (C, min(k, M)) int64 column indices, best first.
    """
    by_key = torch.argsort(key, dim=1, stable=True)
    v = torch.gather(values, 1, by_key)
    by_value = torch.argsort(v, dim=1, descending=True, stable=True)
    return torch.gather(by_key, 1, by_value)[:, :k]


def _first_k_of_rows(values: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    r"""Exact per-row top-k of a wide (C, M) matrix with ties going to the lower column.

    ``torch.topk`` is not stable on ties; this keeps everything strictly above the k-th
    value plus the first (lowest-column) entries equal to it.

    Returns:
        (values, columns): both (C, k'), k' = min(k, M), columns ascending within a row.
    """
    kk = min(k, values.shape[1])
    kth = torch.topk(values, kk, dim=1, sorted=True).values[:, -1:]
    above = values > kth
    tied = values == kth
    need = kk - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, dim=1) <= need))
    cols = keep.nonzero()[:, 1].view(values.shape[0], kk)
    return torch.gather(values, 1, cols), cols


class TopKState(Accumulator):
    r"""Top-k and bottom-k of every channel of one layer: an :class:`~.base.Accumulator`.

    All slot tensors are (C, k): ``values`` float32 (``-inf`` marks an empty slot in ``top`` and
    ``+inf`` in ``bottom``), ``index`` int64 (position of the image in iteration order,
    -1 when empty), ``y`` and ``x`` int64 positions in the layer's output grid. They are the
    declared states ``{top,bottom}_{values,index,y,x}`` (also read as the dict :attr:`tensors`),
    merged together under the strict total order; ``nan_count`` (NaN activations skipped)
    adds up and ``out_size`` (the layer's grid, ``None`` for ``(N, C)`` outputs) is the first
    one known.

    Args:
        k (int): slots per channel and side.
        channels (int): C.
        spatial (bool): the layer has a grid ((N, C, H, W) activations) rather than (N, C).
        distinct_images (bool): one slot per image per channel (its best position).

    Example::

        >>> state = TopKState(k=2, channels=3, spatial=True)
        >>> state.update(torch.randn(4, 3, 5, 5), torch.arange(4))
        >>> state.compute()["top_index"].shape
        torch.Size([3, 2])
    """

    settings = ("k", "channels", "spatial", "distinct_images")

    def __init__(self, k: int, channels: int, spatial: bool, distinct_images: bool = True) -> None:
        self.k, self.channels = int(k), int(channels)
        self.spatial, self.distinct_images = bool(spatial), bool(distinct_images)
        shape = (self.channels, self.k)
        for side, fill in (("top", float("-inf")), ("bottom", float("inf"))):
            self.add_state(f"{side}_values", torch.full(shape, fill), merge=self._merge_slots)
            for name in ("index", "y", "x"):
                self.add_state(f"{side}_{name}", torch.full(shape, _EMPTY, dtype=torch.int64),
                               merge=self._merge_slots)
        self.add_state("nan_count", 0, merge="sum")
        self.add_state("out_size", None, merge=_first_known)

    @property
    def tensors(self) -> Dict[str, Tensor]:
        r"""The slot tensors by name ``"{top,bottom}_{values,index,y,x}"`` (the live ones)."""
        return {f"{side}_{f}": getattr(self, f"{side}_{f}") for side in _SIDES for f in _FIELDS}

    def compute(self) -> Dict[str, Tensor]:
        r"""The slots: ``(C, k)`` tensors ``{top,bottom}_{values,index,y,x}`` (copies)."""
        return {name: t.clone() for name, t in self.tensors.items()}

    # ------------------------------------------------------------------ update
    def update(self, acts: Tensor, indices: Tensor) -> None:
        r"""Fold one batch of activations into the state.

        Args:
            acts (Tensor): (B, C, H, W) or (B, C) activations of this layer.
            indices (Tensor): (B,) int64 global image indices of the batch (iteration order).
        """
        if acts.dim() not in (2, 4):
            raise ValueError(
                f"Can only mine 2-D (N, C) or 4-D (N, C, H, W) layer outputs, got shape "
                f"{tuple(acts.shape)}; pick a convolutional or linear layer."
            )
        if acts.shape[1] != self.channels:
            raise ValueError(
                f"This batch gives the layer {acts.shape[1]} channels but earlier batches gave "
                f"{self.channels}; every batch must go through the same model and layer."
            )
        b = acts.shape[0]
        if acts.dim() == 4:
            h, w = acts.shape[2], acts.shape[3]
            if self.out_size is None:
                self.out_size = (h, w)
        else:
            h, w = 1, 1
        flat = acts.detach().reshape(b, self.channels, h * w)
        if flat.dtype != torch.float32:
            flat = flat.float()
        indices = indices.to(device=flat.device, dtype=torch.int64)
        for side in ("top", "bottom"):
            self._update_side(side, flat, indices, w)

    def _update_side(self, side: str, flat: Tensor, indices: Tensor, width: int) -> None:
        b, c, hw = flat.shape
        device = flat.device
        top = side == "top"
        if self.distinct_images:
            # (B, C); the first extreme is the lowest (y, x). No negated copy of the batch.
            best, pos = flat.max(dim=2) if top else flat.min(dim=2)
            if torch.isnan(best).any():  # max/min propagate NaN: only then pay for a cleanup
                bad = torch.isnan(flat)
                if top:
                    self._warn_nan(int(bad.sum()))
                fill = float("-inf") if top else float("inf")
                clean = flat.masked_fill(bad, fill)
                best, pos = clean.max(dim=2) if top else clean.min(dim=2)
            cand_v = best.t() if top else -best.t()
            cand_pos = pos.t()
            cand_idx = indices.expand(c, b)
        else:
            wide = flat.permute(1, 0, 2).reshape(c, b * hw)
            wide = wide if top else -wide
            bad = torch.isnan(wide)
            if bad.any():
                if top:
                    self._warn_nan(int(bad.sum()))
                wide = wide.masked_fill(bad, float("-inf"))
            cand_v, cols = _first_k_of_rows(wide, self.k)
            cand_idx = indices[cols // hw]
            cand_pos = cols % hw
        t = self.tensors
        sign = 1.0 if top else -1.0
        values = torch.cat([(t[f"{side}_values"] * sign).to(device), cand_v.float()], dim=1)
        index = torch.cat([t[f"{side}_index"].to(device), cand_idx], dim=1)
        y = torch.cat([t[f"{side}_y"].to(device), cand_pos // width], dim=1)
        x = torch.cat([t[f"{side}_x"].to(device), cand_pos % width], dim=1)
        self._store(side, values, index, y, x)

    def _store(self, side: str, values: Tensor, index: Tensor, y: Tensor, x: Tensor) -> None:
        for name, t in self._select_slots(side, values, index, y, x).items():
            setattr(self, name, t)

    def _select_slots(self, side: str, values: Tensor, index: Tensor, y: Tensor, x: Tensor) -> Dict[str, Tensor]:
        r"""The k best of ``side``'s candidates (values sign-flipped for ``bottom``), on the CPU."""
        # Tie-break key (index, y, x) packed in int64: y, x < 2**14 and index < 2**35.
        key = torch.where(index < 0, torch.full_like(index, -1), (index << 28) + (y << 14) + x)
        cols = _select(values, key, self.k)
        v = torch.gather(values, 1, cols)
        empty = torch.isinf(v) & (v < 0)
        sign = 1.0 if side == "top" else -1.0
        out = {f"{side}_values": (v * sign).cpu()}
        for name, src in (("index", index), ("y", y), ("x", x)):
            out[f"{side}_{name}"] = torch.gather(src, 1, cols).masked_fill(empty, _EMPTY).cpu()
        return out

    def _warn_nan(self, n: int) -> None:
        self.nan_count += n
        warnings.warn(
            f"{n} NaN activations skipped (never ranked); check the model and its inputs.",
            RuntimeWarning,
            stacklevel=5,
        )

    # ------------------------------------------------------------------ merge
    def _merge_slots(self, mine: Dict[str, Tensor], theirs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        r"""The k best of both sides' slots under the strict total order (exact, order-free)."""
        out: Dict[str, Tensor] = {}
        for side in _SIDES:
            sign = 1.0 if side == "top" else -1.0
            cat = {f: torch.cat([mine[f"{side}_{f}"], theirs[f"{side}_{f}"]], dim=1) for f in _FIELDS}
            out.update(self._select_slots(side, cat["values"] * sign, cat["index"], cat["y"], cat["x"]))
        return out

    def live_indices(self) -> Tensor:
        r"""Sorted unique image indices referenced by any slot."""
        idx = torch.cat([self.tensors["top_index"].flatten(), self.tensors["bottom_index"].flatten()])
        return torch.unique(idx[idx >= 0])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r"""As :meth:`Accumulator.load_state_dict`; ``out_size`` comes back as a tuple."""
        super().load_state_dict(state)
        self.out_size = tuple(int(v) for v in self.out_size) if self.out_size else None

    def __repr__(self) -> str:
        return (f"TopKState(k={self.k}, channels={self.channels}, spatial={self.spatial}, "
                f"distinct_images={self.distinct_images})")



def _first_known(mine: Dict[str, Any], theirs: Dict[str, Any]) -> Dict[str, Any]:
    r"""A layer's grid is the same in every shard: keep the one known."""
    return {"out_size": mine["out_size"] if mine["out_size"] is not None else theirs["out_size"]}
