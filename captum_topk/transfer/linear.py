r"""The linear probe: an L2-regularised multinomial logistic regression on frozen features, its strength chosen by cross-validation.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from .split import _stratified_folds
from .metrics import classification_metrics



_L2_GRID = (1000.0, 100.0, 10.0, 1.0)  # strongest first: each fit warm-starts the next


def _fit_logreg(z: Tensor, y: Tensor, k: int, l2: float, max_iter: int,
                init: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
    n, d = z.shape
    w0, b0 = init if init is not None else (torch.zeros(k, d, dtype=torch.float64),
                                            torch.zeros(k, dtype=torch.float64))
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.t() + b, y) + 0.5 * l2 * (w * w).sum() / n
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_linear_head(
    features: Union[Tensor, np.ndarray],
    labels: Union[Tensor, np.ndarray, Sequence[int]],
    num_classes: Optional[int] = None,
    l2: Optional[float] = None,
    max_iter: int = 100,
    seed: int = 0,
    groups: Optional[Sequence] = None,
) -> Tuple[nn.Linear, Dict[str, Any]]:
    r"""Fit a linear classifier on fixed features (the linear probe of a frozen base).

    Multinomial logistic regression on standardised features (per-dimension mean / std of
    the training features), loss ``CE + l2 / (2 N) * ||W||^2``, fitted by full-batch
    L-BFGS in float64 from zero (deterministic). The standardisation is folded into the
    returned layer, which takes the raw features.

    Args:
        features (Tensor or ndarray): ``(N, D)`` training features (e.g. from
            :func:`captum_topk.transfer.embed.embed`).
        labels: ``(N,)`` classes in ``[0, num_classes)``.
        num_classes (int, optional): default ``max(labels) + 1``.
        l2 (float, optional): L2 strength (``1 / C`` of scikit-learn's
            ``LogisticRegression``); ``None`` picks the best of ``(1000, 100, 10, 1)`` by
            stratified 3-fold cross-validation accuracy on these features (ties to the
            stronger penalty; along the path each fit starts from the previous solution).
        max_iter (int): L-BFGS iterations.
        seed (int): seed of the cross-validation folds.
        groups (sequence, optional): ``(N,)`` group of each item (e.g. the ELPV module):
            the cross-validation folds then keep each group whole (see
            :func:`~captum_topk.transfer.split.train_val_test_split`), so that the chosen L2
            is the one that generalises to new groups.

    Returns:
        (nn.Linear, dict): the layer ``(D -> num_classes)`` in float32, and ``{"l2": ...,
        "cv_accuracy": {l2: acc}, "train": metrics}``.

    Example::

        >>> head, info = fit_linear_head(train_emb, train_labels)
        >>> pred = head(torch.from_numpy(val_emb)).argmax(1)
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if x.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"Need (N, D) features and N labels, got {tuple(x.shape)} and {tuple(y.shape)}.")
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"Labels must lie in [0, {k}); got {int(y.min())}..{int(y.max())}.")

    def standardise(xs: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        mu = xs.mean(0)
        sd = xs.std(0, unbiased=False).clamp_min(1e-6)
        return (xs - mu) / sd, mu, sd

    cv: Dict[str, float] = {}
    if l2 is None:
        g = None if groups is None else np.asarray(groups).reshape(-1)
        if g is not None and len(g) != len(y):
            raise ValueError(f"groups has {len(g)} entries for {len(y)} labels.")
        folds = _stratified_folds(y.numpy(), 3, seed, groups=g)
        correct = {lam: 0 for lam in _L2_GRID}
        for f in folds:
            tr = np.setdiff1d(np.arange(len(y)), f)
            z, mu, sd = standardise(x[tr])
            zf = (x[f] - mu) / sd
            wb = None
            for lam in _L2_GRID:  # the regularisation path, warm-started
                wb = _fit_logreg(z, y[tr], k, lam, max_iter, init=wb)
                correct[lam] += int((zf @ wb[0].t() + wb[1]).argmax(1).eq(y[f]).sum())
        cv = {repr(lam): correct[lam] / len(y) for lam in _L2_GRID}
        l2 = max(_L2_GRID, key=lambda lam: (correct[lam], lam))
    z, mu, sd = standardise(x)
    w, b = _fit_logreg(z, y, k, float(l2), max_iter)
    head = nn.Linear(x.shape[1], k)
    with torch.no_grad():
        w_raw = w / sd  # logits = ((x - mu) / sd) W^T + b = x (W / sd)^T + (b - (W / sd) mu)
        head.weight.copy_(w_raw.float())
        head.bias.copy_((b - w_raw @ mu).float())
        train = classification_metrics((x @ w_raw.t() + (b - w_raw @ mu)), y, k)
    return head, {"l2": float(l2), "cv_accuracy": cv, "train": train}
