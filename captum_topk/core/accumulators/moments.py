r"""Streaming per-channel co-moments of paired activations (two models on the same images): Pearson correlation per channel.
"""

from __future__ import annotations

import torch
from torch import Tensor



class ChannelMoments:
    r"""Streaming per-channel means, variances and covariance of paired activations.

    Samples are every (image, position) of a channel; updates merge batch moments with
    Chan et al.'s pairwise formulas in float64, so the result does not depend on how the
    data is batched and stays accurate for large means.

    Args:
        channels (int): ``C``.
    """

    def __init__(self, channels: int) -> None:
        self.n = 0
        z = lambda: torch.zeros(channels, dtype=torch.float64)  # noqa: E731
        self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab = z(), z(), z(), z(), z()

    def update(self, a: Tensor, b: Tensor) -> None:
        r"""Add a batch: ``a`` and ``b`` are ``(N, C, ...)`` activations of the same images."""
        if a.shape != b.shape:
            raise ValueError(f"Paired activations need the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
        c = a.shape[1]
        xa = a.detach().double().transpose(0, 1).reshape(c, -1)
        xb = b.detach().double().transpose(0, 1).reshape(c, -1)
        m = xa.shape[1]
        if m == 0:
            return
        ma, mb = xa.mean(1), xb.mean(1)
        da, db = xa - ma[:, None], xb - mb[:, None]
        m2a, m2b, cab = (da * da).sum(1), (db * db).sum(1), (da * db).sum(1)
        n = self.n
        tot = n + m
        delta_a, delta_b = ma - self.mean_a, mb - self.mean_b
        w = n * m / tot
        self.mean_a += delta_a * (m / tot)
        self.mean_b += delta_b * (m / tot)
        self.m2_a += m2a + delta_a * delta_a * w
        self.m2_b += m2b + delta_b * delta_b * w
        self.c_ab += cab + delta_a * delta_b * w
        self.n = tot

    def correlation(self) -> Tensor:
        r"""``(C,)`` Pearson correlations, with the constant-channel rules of the module doc."""
        denom = torch.sqrt(self.m2_a * self.m2_b)
        r = torch.where(denom > 0, self.c_ab / denom.clamp_min(1e-300), torch.zeros_like(denom))
        const_a = self.m2_a <= 1e-24 * (1 + self.mean_a.abs() ** 2) * max(self.n, 1)
        const_b = self.m2_b <= 1e-24 * (1 + self.mean_b.abs() ** 2) * max(self.n, 1)
        both = const_a & const_b
        same = torch.isclose(self.mean_a, self.mean_b, rtol=1e-9, atol=1e-12)
        r = torch.where(both, same.double(), r)
        r = torch.where(const_a ^ const_b, torch.zeros_like(r), r)
        return r.clamp(-1.0, 1.0)
