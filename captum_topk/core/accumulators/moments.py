r"""Streaming per-channel co-moments of paired activations (two models on the same images):
the Pearson correlation of each channel of A with the same channel of B.

Samples are every (image, position) of a channel. A batch's moments are folded in with Chan et
al.'s pairwise formulas in float64 (the same combination merges two shards), so the result does
not depend on how the data is batched or sharded and stays accurate for large means.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch import Tensor

from .base import Accumulator

__all__ = ["ChannelMoments", "combine_moments", "is_constant"]


def combine_moments(n: int, mean_a: Tensor, mean_b: Tensor, m2_a: Tensor, m2_b: Tensor, c_ab: Tensor,
                    m: int, ma: Tensor, mb: Tensor, m2a: Tensor, m2b: Tensor, cab: Tensor,
                    cross: Callable[[Tensor, Tensor], Tensor] = torch.mul):
    r"""Chan, Golub & LeVeque's pairwise combination of the centred moments of ``n`` samples
    with those of ``m`` others (float64; exact up to rounding whatever the split).

    Args:
        n, mean_a, mean_b, m2_a, m2_b, c_ab: the moments so far (means, sums of squared
            deviations, sum of cross deviations).
        m, ma, mb, m2a, m2b, cab: the other samples' moments.
        cross (callable): how the two sides' deviations pair: ``torch.mul`` channel by channel
            (:class:`ChannelMoments`), ``torch.outer`` every channel of A with every channel of B
            (:class:`~.crosscorr.CrossCorrelation`).
    Returns:
        tuple: ``(n + m, mean_a, mean_b, m2_a, m2_b, c_ab)`` combined (new tensors).
    """
    tot = n + m
    if tot == 0:
        return 0, mean_a, mean_b, m2_a, m2_b, c_ab
    delta_a, delta_b = ma - mean_a, mb - mean_b
    w = n * m / tot
    return (tot, mean_a + delta_a * (m / tot), mean_b + delta_b * (m / tot),
            m2_a + m2a + delta_a * delta_a * w, m2_b + m2b + delta_b * delta_b * w,
            c_ab + cab + cross(delta_a, delta_b) * w)


def is_constant(m2: Tensor, mean: Tensor, n: int) -> Tensor:
    r"""Which channels were constant over their ``n`` samples: a sum of squared deviations at
    float64 rounding level of the mean."""
    return m2 <= 1e-24 * (1.0 + mean.abs() ** 2) * max(n, 1)


_MOMENTS = ("mean_a", "mean_b", "m2_a", "m2_b", "c_ab")


def _merge_moments(mine: Dict[str, Any], theirs: Dict[str, Any]) -> Dict[str, Any]:
    r"""The declared merge of :class:`ChannelMoments`: :func:`combine_moments` of both sides."""
    merged = combine_moments(mine["n"], *(mine[k] for k in _MOMENTS), theirs["n"], *(theirs[k] for k in _MOMENTS))
    return dict(zip(("n",) + _MOMENTS, merged))


class ChannelMoments(Accumulator):
    r"""Streaming per-channel means, variances and covariance of paired activations.

    Args:
        channels (int): ``C``.

    Example::

        >>> mom = ChannelMoments(16)
        >>> mom.update(acts_a, acts_b)      # (N, 16, H, W) each, the same images
        >>> mom.compute().shape              # correlation per channel
        torch.Size([16])
    """

    settings = ("channels",)

    def __init__(self, channels: int) -> None:
        self.channels = int(channels)
        self.add_state("n", 0, merge=_merge_moments)
        for name in _MOMENTS:
            self.add_state(name, torch.zeros(self.channels, dtype=torch.float64), merge=_merge_moments)

    def update(self, a: Tensor, b: Tensor) -> None:
        r"""Add a batch: ``a`` and ``b`` are ``(N, C, ...)`` activations of the same images."""
        if a.shape != b.shape:
            raise ValueError(f"Paired activations need the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
        if a.shape[1] != self.channels:
            raise ValueError(f"Expected {self.channels} channels, got {a.shape[1]}.")
        c = a.shape[1]
        xa = a.detach().double().transpose(0, 1).reshape(c, -1).cpu()
        xb = b.detach().double().transpose(0, 1).reshape(c, -1).cpu()
        m = xa.shape[1]
        if m == 0:
            return
        ma, mb = xa.mean(1), xb.mean(1)
        da, db = xa - ma[:, None], xb - mb[:, None]
        self._combine(m, ma, mb, (da * da).sum(1), (db * db).sum(1), (da * db).sum(1))

    def _combine(self, m: int, ma: Tensor, mb: Tensor, m2a: Tensor, m2b: Tensor, cab: Tensor) -> None:
        (self.n, self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab) = combine_moments(
            self.n, self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab, m, ma, mb, m2a, m2b, cab)

    def correlation(self) -> Tensor:
        r"""``(C,)`` Pearson correlations. A channel constant over the data in both models gets 1
        when the two constants are equal, else 0; constant in only one model: 0."""
        denom = torch.sqrt(self.m2_a * self.m2_b)
        r = torch.where(denom > 0, self.c_ab / denom.clamp_min(1e-300), torch.zeros_like(denom))
        const_a, const_b = is_constant(self.m2_a, self.mean_a, self.n), is_constant(self.m2_b, self.mean_b, self.n)
        both = const_a & const_b
        same = torch.isclose(self.mean_a, self.mean_b, rtol=1e-9, atol=1e-12)
        r = torch.where(both, same.double(), r)
        r = torch.where(const_a ^ const_b, torch.zeros_like(r), r)
        return r.clamp(-1.0, 1.0)

    def compute(self) -> Tensor:
        r"""The ``(C,)`` correlations (:meth:`correlation`)."""
        return self.correlation()
