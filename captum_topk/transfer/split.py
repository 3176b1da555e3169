r"""Deterministic stratified splits of a labelled dataset: train / validation (/ test), and
cross-validation folds, optionally *grouped* (whole groups, e.g. the solar module a cell was
cut from, go to one split).

Why groups: items of one group share more than their label (the same panel, camera,
exposure, degradation history; for ELPV the inferred module explains 38 % of the variance of
the binary label). Splitting such items at random puts near-copies of a validation item in
the training set and overstates how well a model does on a *new* group.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple
import numpy as np


def stratified_split(
    labels: Sequence[int],
    val_fraction: float = 0.25,
    seed: int = 0,
    *,
    groups: Optional[Sequence] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    r"""A deterministic stratified train / validation split.

    Without ``groups``: per class, the indices are shuffled with
    ``numpy.random.default_rng(seed)`` (one generator, classes in increasing order) and the
    first ``round(n_c * val_fraction)`` go to validation (at least one when the class has
    two or more images). With ``groups``: whole groups are assigned, see
    :func:`train_val_test_split`.

    Args:
        labels (sequence of int): class of each item (``-1`` items are left out of both).
        val_fraction (float): share of each class held out, in (0, 1).
        seed (int): random seed.
        groups (sequence, optional): group of each item (any hashable values); items of one
            group never land in two splits.

    Returns:
        (numpy.ndarray, numpy.ndarray): sorted train and validation indices (int64).

    Example::

        >>> train_idx, val_idx = stratified_split(dataset.labels, 0.25, seed=0)
    """
    _check_fractions(val_fraction)
    y = _labels(labels)
    if groups is not None:
        train, val = _grouped_split(y, _groups(groups, len(y)), [1.0 - val_fraction, val_fraction],
                                    seed)
        return train, val
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


def train_val_test_split(
    labels: Sequence[int],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    groups: Optional[Sequence] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""A deterministic stratified train / validation / test split, optionally grouped.

    Use validation to choose (an epoch, a recipe, a threshold) and look at test once, at
    the end: the test figure is then an unbiased estimate of the chosen model's accuracy.

    Without ``groups``, per class (classes in increasing order, one
    ``numpy.random.default_rng(seed)``), the indices are shuffled; the first
    ``round(n_c * test_fraction)`` go to test, the next ``round(n_c * val_fraction)`` to
    validation, the rest to train (each of the three gets at least one item of a class that
    has three or more).

    With ``groups``, whole groups are assigned so that each split's class counts come as
    close as possible to ``fraction x class total``: the groups are shuffled with the seed,
    sorted by decreasing size (stable, so the shuffle breaks ties) and each in turn goes
    to the split whose squared deviation from its targets, summed over classes with each
    class scaled by its total, grows least. The fractions then hold only approximately
    (groups are indivisible) and the class balance is as close as whole groups allow.

    Args:
        labels (sequence of int): class of each item (``-1`` items are left out of all).
        val_fraction (float), test_fraction (float): shares held out; both in (0, 1),
            their sum below 1.
        seed (int): random seed.
        groups (sequence, optional): group of each item (hashable values, e.g. the ELPV
            module of each cell from :func:`~captum_topk.data.elpv.elpv_modules`).

    Returns:
        (numpy.ndarray, numpy.ndarray, numpy.ndarray): sorted train, validation and test
        indices (int64), disjoint.

    Raises:
        ValueError: for fractions out of range, no labelled item, or fewer groups than
            splits.

    Example::

        >>> tr, va, te = train_val_test_split(ds.labels, 0.2, 0.2, seed=0, groups=elpv_modules())
    """
    _check_fractions(val_fraction, test_fraction)
    y = _labels(labels)
    if groups is not None:
        tr, va, te = _grouped_split(
            y, _groups(groups, len(y)), [1.0 - val_fraction - test_fraction, val_fraction,
                                         test_fraction], seed)
        return tr, va, te
    rng = np.random.default_rng(seed)
    parts: List[List[np.ndarray]] = [[], [], []]
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 3:
            n_test = min(max(n_test, 1), n - 2)
            n_val = min(max(n_val, 1), n - n_test - 1)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    if not parts[0]:
        raise ValueError("No labelled item (all labels are -1): cannot split for training.")
    tr, va, te = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return tr, va, te


def _check_fractions(*fractions: float) -> None:
    for f in fractions:
        if not 0.0 < f < 1.0:
            raise ValueError(f"Split fractions must be in (0, 1), got {f}.")
    if sum(fractions) >= 1.0:
        raise ValueError(f"The held-out fractions {fractions} leave nothing to train on: "
                         "their sum must be below 1.")


def _labels(labels: Sequence[int]) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not (y >= 0).any():
        raise ValueError("No labelled item (all labels are -1): cannot split for training.")
    return y


def _groups(groups: Sequence, n: int) -> np.ndarray:
    g = np.asarray(groups).reshape(-1)
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} labels: give one group per item.")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def _grouped_split(y: np.ndarray, g: np.ndarray, fractions: Sequence[float], seed: int
                   ) -> List[np.ndarray]:
    r"""Assign whole groups to ``len(fractions)`` splits, matching class counts greedily."""
    keep = y >= 0
    classes = np.unique(y[keep])
    group_ids = np.unique(g[keep])
    if len(group_ids) < len(fractions):
        raise ValueError(f"{len(group_ids)} group(s) cannot fill {len(fractions)} splits: "
                         "give more groups or split without groups.")
    # counts[j, c]: items of class c in group group_ids[j]
    col = np.searchsorted(classes, y[keep])
    row = np.searchsorted(group_ids, g[keep])
    counts = np.zeros((len(group_ids), len(classes)), dtype=np.float64)
    np.add.at(counts, (row, col), 1.0)
    totals = counts.sum(0)
    target = np.asarray(fractions, dtype=np.float64)[:, None] * totals[None, :]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_ids))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    have = np.zeros_like(target)
    assign = np.empty(len(group_ids), dtype=np.int64)
    for j in order:
        before = (((have - target) / totals) ** 2).sum(1)
        after = (((have + counts[j] - target) / totals) ** 2).sum(1)
        s = int(np.argmin(after - before))
        assign[j] = s
        have[s] += counts[j]
    split_of_item = np.full(len(y), -1, dtype=np.int64)
    split_of_item[keep] = assign[row]
    out = [np.flatnonzero(split_of_item == s).astype(np.int64) for s in range(len(fractions))]
    empty = [s for s, idx in enumerate(out) if len(idx) == 0]
    if empty:
        raise ValueError(f"Split(s) {empty} got no group (fractions {list(fractions)}, "
                         f"{len(group_ids)} groups): raise the fractions or give more groups.")
    return out


def _stratified_folds(y: np.ndarray, folds: int, seed: int,
                      groups: Optional[np.ndarray] = None) -> List[np.ndarray]:
    if groups is not None:
        return _grouped_split(np.asarray(y), _groups(groups, len(y)), [1.0 / folds] * folds, seed)
    rng = np.random.default_rng(seed)
    out: List[List[int]] = [[] for _ in range(folds)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        for j, i in enumerate(idx):
            out[j % folds].append(int(i))
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in out]
