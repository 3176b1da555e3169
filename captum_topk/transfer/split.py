r"""Stratified splits of a labelled dataset (train / validation / test, cross-validation folds).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple
import numpy as np



def stratified_split(
    labels: Sequence[int], val_fraction: float = 0.25, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    r"""A deterministic stratified train / validation split.

    Per class, the indices are shuffled with ``numpy.random.default_rng(seed)`` (one
    generator, classes in increasing order) and the first ``round(n_c * val_fraction)``
    go to validation (at least one when the class has two or more images).

    Args:
        labels (sequence of int): class of each item (``-1`` items are left out of both).
        val_fraction (float): share of each class held out, in (0, 1).
        seed (int): random seed.

    Returns:
        (numpy.ndarray, numpy.ndarray): sorted train and validation indices (int64).

    Example::

        >>> train_idx, val_idx = stratified_split(dataset.labels, 0.25, seed=0)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    if not train:
        raise ValueError("No labelled item (all labels are -1): cannot split for training.")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out: List[List[int]] = [[] for _ in range(folds)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        for j, i in enumerate(idx):
            out[j % folds].append(int(i))
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in out]
