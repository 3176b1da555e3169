r"""Streaming cross-correlation of every channel of one layer with every channel of another.

The two layers belong to two models run on the same images (or to one model); a *sample* is
one image at one position of a common grid. Two ways to put activations at corresponding
positions (:func:`paired_positions`):

* ``positions="resampled"`` (default): both maps are brought to the **coarser** grid, per
  spatial axis ``(min(H_a, H_b), min(W_a, W_b))``, by **adaptive average pooling of the finer
  map** (``torch.nn.functional.adaptive_avg_pool2d``; when the finer side is not a multiple of
  the coarser one, adaptive pooling's bins overlap by one row / column); the coarser map is
  left as it is. A sample is then one (image, cell of that grid): ``N * h * w`` samples per
  batch. This keeps *where* in the image a unit fires, so two units that respond to the same
  thing at the same place correlate, and gives many more samples than images. An ``(N, C)``
  input counts as a ``1 x 1`` grid (the other map is then averaged over all positions).
* ``positions="pooled"``: both maps are global-average-pooled first; one sample per image.

The state is float64 centred co-moments merged with Chan et al.'s pairwise update (as
:class:`~captum_topk.core.accumulators.moments.ChannelMoments` does per channel, here for the
whole ``C_a x C_b`` matrix), so the result does not depend on how the data is batched or
sharded and stays accurate for activations with large means. Memory is
``O(C_a * C_b)``, independent of the number of images; an update temporarily holds the
batch's samples, ``(N * h * w) x (C_a + C_b)`` float64.

Reference: Li, Yosinski, Clune, Lipson & Hopcroft (2016), "Convergent learning: do different
neural networks learn the same representations?" (ICLR): units of two networks are compared
by the correlation of their activations over images and positions.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Accumulator
from .moments import is_constant

__all__ = ["CrossCorrelation", "paired_positions", "POSITIONS"]

POSITIONS = ("resampled", "pooled")


def _check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
    return positions


def _pool_to(x: Tensor, size: Tuple[int, ...]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(size)]
    return pool(x, size)


def paired_positions(a: Tensor, b: Tensor, positions: str = "resampled") -> Tuple[Tensor, Tensor]:
    r"""The samples of two paired activations at corresponding positions, one row per sample.

    Args:
        a (Tensor): ``(N, C_a)`` or ``(N, C_a, *S_a)`` activations (``S`` 1 to 3 spatial axes).
        b (Tensor): ``(N, C_b)`` or ``(N, C_b, *S_b)`` activations of the same ``N`` images
            (same number of spatial axes as ``a``, or none).
        positions (str): ``"resampled"`` (the finer map adaptive-average-pooled to the
            coarser grid, axis by axis) or ``"pooled"`` (global average pooling of both).

    Returns:
        (Tensor, Tensor): ``(M, C_a)`` and ``(M, C_b)`` float64, row ``m`` of both the same
        image and grid cell (``M = N * prod(grid)``, image-major then row-major cells).

    Raises:
        ValueError: different ``N``, mismatched spatial ranks or a bad ``positions``.

    Example::

        >>> xa, xb = paired_positions(torch.rand(2, 8, 14, 14), torch.rand(2, 5, 27, 27))
        >>> xa.shape, xb.shape          # B pooled to 14 x 14
        (torch.Size([392, 8]), torch.Size([392, 5]))
    """
    _check_positions(positions)
    if a.dim() < 2 or b.dim() < 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"Paired activations are (N, C, ...) of the same N images, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}.")
    # Widen first: a float32 average of activations with a large mean loses the digits the
    # correlation is made of.
    a, b = a.detach().double(), b.detach().double()
    if positions == "pooled" or a.dim() == 2 or b.dim() == 2:
        a = a.flatten(2).mean(2) if a.dim() > 2 else a
        b = b.flatten(2).mean(2) if b.dim() > 2 else b
        return a, b
    if a.dim() != b.dim() or a.dim() > 5:
        raise ValueError(
            f"Cannot put maps of shapes {tuple(a.shape)} and {tuple(b.shape)} on one grid: "
            "give both the same number (1 to 3) of spatial axes, or use positions='pooled'.")
    grid = tuple(min(sa, sb) for sa, sb in zip(a.shape[2:], b.shape[2:]))
    a, b = _pool_to(a, grid), _pool_to(b, grid)
    return a.movedim(1, -1).reshape(-1, a.shape[1]), b.movedim(1, -1).reshape(-1, b.shape[1])


class CrossCorrelation(Accumulator):
    r"""Streaming ``(C_a, C_b)`` Pearson correlation matrix of two layers' channels.

    Feed paired activations of the same images with :meth:`update`; :meth:`compute` gives
    ``R[i, j] = corr(a_i, b_j)`` over every sample (image and grid cell, see the module doc).
    A channel constant over all samples (a dead unit) has no defined correlation: its row
    (or column) is 0, and it is flagged in :attr:`constant_a` / :attr:`constant_b`.

    Args:
        channels_a (int): ``C_a``.
        channels_b (int): ``C_b``.
        positions (str): ``"resampled"`` (default) or ``"pooled"`` (see :func:`paired_positions`).

    Attributes:
        samples (int): samples folded in (``N * h * w`` per batch).
        images (int): images folded in.

    Example::

        >>> acc = CrossCorrelation(64, 256)
        >>> for batch in loader:
        ...     acc.update(layer_a(batch), layer_b(batch))      # (N, 64, 14, 14), (N, 256, 27, 27)
        >>> acc.compute().shape
        torch.Size([64, 256])
    """

    settings = ("channels_a", "channels_b", "positions")

    def __init__(self, channels_a: int, channels_b: int, positions: str = "resampled") -> None:
        self.channels_a, self.channels_b = int(channels_a), int(channels_b)
        if self.channels_a < 1 or self.channels_b < 1:
            raise ValueError(f"Channel counts must be >= 1, got {channels_a} and {channels_b}.")
        self.positions = _check_positions(positions)
        ca, cb = self.channels_a, self.channels_b
        # Co-moments only combine together (Chan et al.): one merge for all of them.
        for name, default in (("samples", 0), ("images", 0),
                              ("mean_a", torch.zeros(ca, dtype=torch.float64)),
                              ("mean_b", torch.zeros(cb, dtype=torch.float64)),
                              ("m2_a", torch.zeros(ca, dtype=torch.float64)),
                              ("m2_b", torch.zeros(cb, dtype=torch.float64)),
                              ("c_ab", torch.zeros(ca, cb, dtype=torch.float64))):
            self.add_state(name, default, merge=self._merge_comoments)

    # ------------------------------------------------------------------ protocol

    def update(self, a: Tensor, b: Tensor) -> None:
        r"""Fold in one batch of paired activations.

        Args:
            a (Tensor): ``(N, C_a, ...)`` or ``(N, C_a)`` activations of the first layer.
            b (Tensor): ``(N, C_b, ...)`` or ``(N, C_b)`` activations of the second layer on
                the same ``N`` images, in the same order.

        Raises:
            ValueError: wrong channel counts or unpairable shapes (see :func:`paired_positions`).
        """
        if a.dim() < 2 or b.dim() < 2 or a.shape[1] != self.channels_a or b.shape[1] != self.channels_b:
            raise ValueError(
                f"Expected (N, {self.channels_a}, ...) and (N, {self.channels_b}, ...) activations, got "
                f"{tuple(a.shape)} and {tuple(b.shape)}.")
        xa, xb = paired_positions(a.cpu(), b.cpu(), self.positions)
        m = xa.shape[0]
        if m == 0:
            return
        ma, mb = xa.mean(0), xb.mean(0)
        da, db = xa - ma, xb - mb
        self._fold(m, int(a.shape[0]), ma, mb, (da * da).sum(0), (db * db).sum(0), da.t() @ db)

    def _merge_comoments(self, mine: Dict[str, Any], theirs: Dict[str, Any]) -> Dict[str, Any]:
        r"""The declared merge: the other samples' co-moments folded in with :meth:`_fold`."""
        if theirs["samples"]:
            self._fold(theirs["samples"], theirs["images"], theirs["mean_a"], theirs["mean_b"],
                       theirs["m2_a"], theirs["m2_b"], theirs["c_ab"])
        return {name: getattr(self, name) for name in mine}

    def compute(self) -> Tensor:
        r"""The correlation matrix.

        Returns:
            Tensor: ``(C_a, C_b)`` float64 in ``[-1, 1]``; rows of constant channels of A and
            columns of constant channels of B are 0.

        Raises:
            ValueError: when fewer than 2 samples were seen.
        """
        if self.samples < 2:
            raise ValueError(f"A correlation needs at least 2 samples, {self.samples} seen.")
        sa, sb = self.m2_a.clamp_min(0.0).sqrt(), self.m2_b.clamp_min(0.0).sqrt()
        live_a, live_b = ~self.constant_a, ~self.constant_b
        denom = torch.outer(torch.where(live_a, sa, torch.ones_like(sa)),
                            torch.where(live_b, sb, torch.ones_like(sb)))
        r = self.c_ab / denom
        r = r * torch.outer(live_a.double(), live_b.double())
        return r.clamp(-1.0, 1.0)

    @property
    def constant_a(self) -> Tensor:
        r"""``(C_a,)`` bool: channels of A constant over every sample seen (dead units)."""
        return self._constant(self.m2_a, self.mean_a)

    @property
    def constant_b(self) -> Tensor:
        r"""``(C_b,)`` bool: channels of B constant over every sample seen."""
        return self._constant(self.m2_b, self.mean_b)

    def _constant(self, m2: Tensor, mean: Tensor) -> Tensor:
        return is_constant(m2, mean, self.samples)  # the rule of ChannelMoments

    # ------------------------------------------------------------------ Chan et al.

    def _fold(self, m: int, images: int, ma: Tensor, mb: Tensor, m2a: Tensor, m2b: Tensor,
              cab: Tensor) -> None:
        r"""Chan, Golub & LeVeque's pairwise update with the moments of ``m`` other samples."""
        n = self.samples
        tot = n + m
        delta_a, delta_b = ma - self.mean_a, mb - self.mean_b
        w = n * m / tot
        self.mean_a += delta_a * (m / tot)
        self.mean_b += delta_b * (m / tot)
        self.m2_a += m2a + delta_a * delta_a * w
        self.m2_b += m2b + delta_b * delta_b * w
        self.c_ab += cab + torch.outer(delta_a, delta_b) * w
        self.samples = tot
        self.images += images
