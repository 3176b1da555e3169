r"""Linear centered kernel alignment (CKA) between representations, exact and minibatch.

* :func:`linear_cka`: the full-data linear CKA of Kornblith et al. (2019), feature-space
  formula ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` (``X_c``, ``Y_c``
  column-centred); equal to :func:`gram_cka` on the linear Grams ``K = X X^T``,
  ``L = Y Y^T`` with the biased HSIC ``tr(K H L H) / (n - 1)^2``.
* :class:`MinibatchCKA`: the minibatch CKA of Nguyen, Raghu & Kornblith (2021, "Do wide and
  deep networks learn the same things?"): over minibatches ``i`` of the same images,

  ``CKA = sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) * sum_i HSIC_1(L_i, L_i))``

  with ``HSIC_1`` the *unbiased* estimator of Song et al. (2012) (:func:`hsic_unbiased`).
  Because every minibatch gives an unbiased HSIC estimate, the result does not depend on
  the batch size in expectation and converges to the population linear CKA; the state is
  three small sums, so memory is independent of the dataset size. Layers are compared all
  against all (``P x Q`` matrix) from one Gram matrix per layer and batch.

The kernel is linear; representations are ``(n, ...)`` tensors flattened to ``(n, D)``.
Linear CKA is invariant to orthogonal transforms and isotropic scaling of either
representation (not to arbitrary invertible linear maps), and, being centred, to adding a
constant vector.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Accumulator

__all__ = [
    "gram_linear",
    "hsic_unbiased",
    "hsic_unbiased_many",
    "gram_cka",
    "linear_cka",
    "MinibatchCKA",
]


def _as2d(x: Tensor) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise ValueError(f"A representation is (n, ...) with one row per example, got {tuple(x.shape)}.")
    return x.reshape(x.shape[0], -1).double()


def gram_linear(x: Tensor) -> Tensor:
    r"""Linear-kernel Gram matrix of a representation.

    Args:
        x (Tensor): ``(n, ...)``, flattened to ``(n, D)``.

    Returns:
        Tensor: ``(n, n)`` float64 ``X X^T``.
    """
    x = _as2d(x)
    return x @ x.t()


def hsic_unbiased_many(k: Tensor, l: Tensor) -> Tensor:
    r"""Unbiased HSIC (Song et al. 2012) of every pair of Gram matrices of two stacks.

    ``HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
    - 2 / (n-2) 1^T K~ L~ 1] / (n (n-3))``, ``K~``, ``L~``: ``K``, ``L`` with zero diagonal.

    Args:
        k (Tensor): ``(P, n, n)`` symmetric Gram matrices.
        l (Tensor): ``(Q, n, n)`` symmetric Gram matrices of the same ``n`` examples.

    Returns:
        Tensor: ``(P, Q)`` float64.

    Raises:
        ValueError: for ``n < 4`` (the estimator divides by ``n - 3``).
    """
    n = k.shape[-1]
    if n < 4 or l.shape[-1] != n:
        raise ValueError(f"The unbiased HSIC needs the same n >= 4 examples, got {n} and {l.shape[-1]}.")
    eye = torch.eye(n, dtype=torch.bool)
    kt = k.double().masked_fill(eye, 0.0)
    lt = l.double().masked_fill(eye, 0.0)
    trace = kt.reshape(kt.shape[0], -1) @ lt.reshape(lt.shape[0], -1).t()  # tr(K~ L~), symmetric
    rk, rl = kt.sum(2), lt.sum(2)  # K~ 1, L~ 1
    sums = torch.outer(rk.sum(1), rl.sum(1))  # (1^T K~ 1)(1^T L~ 1)
    cross = rk @ rl.t()  # 1^T K~ L~ 1
    return (trace + sums / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    r"""Unbiased HSIC of two ``(n, n)`` Gram matrices (see :func:`hsic_unbiased_many`).

    Returns:
        Tensor: a float64 scalar.
    """
    return hsic_unbiased_many(k[None], l[None])[0, 0]


def gram_cka(k: Tensor, l: Tensor) -> Tensor:
    r"""CKA of two Gram matrices with the biased HSIC (centred Grams, Kornblith et al. 2019).

    ``CKA = tr(K_c L_c) / sqrt(tr(K_c K_c) tr(L_c L_c))``, ``K_c = H K H``,
    ``H = I - 11^T / n``.

    Returns:
        Tensor: a float64 scalar.
    """
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kc, lc = h @ k.double() @ h, h @ l.double() @ h
    return (kc * lc).sum() / torch.sqrt((kc * kc).sum() * (lc * lc).sum())


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    r"""Full-data linear CKA, feature-space formula (Kornblith et al. 2019).

    Args:
        x (Tensor): ``(n, ...)`` representation of n examples.
        y (Tensor): ``(n, ...)`` another representation of the same examples.

    Returns:
        Tensor: float64 scalar in ``[0, 1]``.

    Example::

        >>> linear_cka(acts_a.mean((2, 3)), acts_b.mean((2, 3)))
    """
    x, y = _as2d(x), _as2d(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"Both representations need the same examples: {x.shape[0]} vs {y.shape[0]} rows.")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = torch.linalg.matrix_norm(y.t() @ x) ** 2
    return cross / (torch.linalg.matrix_norm(x.t() @ x) * torch.linalg.matrix_norm(y.t() @ y))


class MinibatchCKA(Accumulator):
    r"""Streaming minibatch linear CKA of ``P`` representations against ``Q`` others.

    Feed the representations of each minibatch (the same images in all of them) with
    :meth:`update`; :meth:`compute` gives the ``(P, Q)`` CKA matrix. State: three sums of
    unbiased HSIC values (``P x Q``, ``P``, ``Q``); batches with fewer than 4 examples are
    skipped (the estimator needs ``n >= 4``) and counted in :attr:`skipped`.

    Args:
        num_a (int): number of representations on the first side (``P``).
        num_b (int): number on the second side (``Q``).

    Example::

        >>> cka = MinibatchCKA(2, 3)
        >>> for xa, xb in batches:          # lists of (n, ...) tensors
        ...     cka.update([xa[0], xa[1]], [xb[0], xb[1], xb[2]])
        >>> cka.compute()                    # (2, 3)
    """

    settings = ("num_a", "num_b")

    def __init__(self, num_a: int, num_b: int) -> None:
        self.num_a, self.num_b = int(num_a), int(num_b)
        self.add_state("hsic_ab", torch.zeros(self.num_a, self.num_b, dtype=torch.float64), merge="sum")
        self.add_state("hsic_aa", torch.zeros(self.num_a, dtype=torch.float64), merge="sum")
        self.add_state("hsic_bb", torch.zeros(self.num_b, dtype=torch.float64), merge="sum")
        self.add_state("batches", 0, merge="sum")
        self.add_state("examples", 0, merge="sum")
        self.add_state("skipped", 0, merge="sum")

    def update(self, reps_a: Sequence[Tensor], reps_b: Sequence[Tensor]) -> None:
        r"""Add one minibatch.

        Args:
            reps_a (sequence of Tensor): ``P`` tensors ``(n, ...)``.
            reps_b (sequence of Tensor): ``Q`` tensors ``(n, ...)``, the same ``n`` examples.
        """
        if len(reps_a) != self.num_a or len(reps_b) != self.num_b:
            raise ValueError(f"Expected {self.num_a} and {self.num_b} representations, got "
                             f"{len(reps_a)} and {len(reps_b)}.")
        n = {int(r.shape[0]) for r in list(reps_a) + list(reps_b)}
        if len(n) != 1:
            raise ValueError(f"All representations of a batch need the same examples, got sizes {sorted(n)}.")
        (n,) = n
        if n < 4:
            self.skipped += n
            return
        ka = torch.stack([gram_linear(r) for r in reps_a])
        kb = torch.stack([gram_linear(r) for r in reps_b])
        self.hsic_ab += hsic_unbiased_many(ka, kb)
        self.hsic_aa += torch.diagonal(hsic_unbiased_many(ka, ka))
        self.hsic_bb += torch.diagonal(hsic_unbiased_many(kb, kb))
        self.batches += 1
        self.examples += n

    def compute(self) -> Tensor:
        r"""The ``(P, Q)`` minibatch CKA matrix (float64).

        Raises:
            ValueError: when no batch of at least 4 examples was seen.
        """
        if self.batches == 0:
            raise ValueError("No minibatch of at least 4 images was seen: CKA is undefined.")
        denom = torch.sqrt(torch.outer(self.hsic_aa, self.hsic_bb).clamp_min(0.0))
        return self.hsic_ab / denom
