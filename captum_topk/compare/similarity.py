r"""Representational similarity measures of two layers over the same images, with chance baselines.

A representation is an ``(n, d)`` matrix: one row per image (pooled activations, or flattened
maps; ``(n, ...)`` inputs are flattened), the same ``n`` images in the same order on both
sides; ``d`` may differ. Each measure is an object in the style of netrep (Williams et al.
2021, github.com/ahwillia/netrep): :meth:`~SimilarityMeasure.fit` learns the alignment on
some images, :meth:`~SimilarityMeasure.score` evaluates it on the same or on held-out images,
:meth:`~SimilarityMeasure.fit_score` does both on one set (the usual in-sample definition,
computed by a faster exact path). Unlike netrep, ``score`` is a **similarity** (1 = same up to
the measure's invariances); :meth:`~SimilarityMeasure.distance` gives the matching distance.

=============  ===========  =========  ===========  ===========  ====================
measure        orthogonal   isotropic  translation  permutation  invertible linear
               rotation     scaling    (centred)    of units     map
=============  ===========  =========  ===========  ===========  ====================
``cka``        yes          yes        yes          yes          no
``procrustes`` yes          yes        yes          yes          no
``svcca``      yes          yes        yes          yes          only with ``keep=1``
``pwcca``      **no**       yes        yes          yes          no
=============  ===========  =========  ===========  ===========  ====================

* :class:`LinearCKA`: linear centred kernel alignment (Kornblith et al. 2019), the existing
  :func:`~captum_topk.core.accumulators.cka.linear_cka`; distance ``arccos(CKA)`` (netrep).
* :class:`Procrustes`: orthogonal Procrustes on centred, norm-scaled representations:
  ``max_Q <X_c Q, Y_c> / (||X_c|| ||Y_c||) = ||X_c^T Y_c||_* / (||X_c||_F ||Y_c||_F)`` in
  ``[0, 1]`` (``Q`` a rotation, the narrower side zero-padded; ``||.||_*`` the nuclear norm);
  distance: the angular shape distance ``arccos(similarity)`` of Williams et al. (2021)
  (the Euclidean one is ``sqrt(2 - 2 similarity)``).
* :class:`SVCCA` (Raghu et al. 2017): each side reduced by SVD to the top directions that hold
  ``keep`` (99 %) of its variance, then CCA; the mean canonical correlation. Distance
  ``1 - similarity``.
* :class:`PWCCA` (Morcos, Raghu & Bengio 2018): CCA (after the same SVD reduction; ``keep=1``
  for the original, unreduced form), canonical correlations averaged with weights
  ``alpha_i ∝ sum_j |<h_i, x_j>|``: how much of the units ``x_j`` each canonical variate
  ``h_i`` accounts for, on the side with fewer units (so PWCCA is symmetric). The weights
  depend on the unit basis: PWCCA is **not** rotation invariant. Distance ``1 - similarity``.

**Small samples.** CCA fits ``min(k_x, k_y)`` directions to ``n`` images: with ``k`` not much
below ``n`` the canonical correlations approach 1 for *any* two representations, and
Procrustes and CKA are also biased upwards when ``d`` is large against ``n``. That is why every
similarity here comes with a **chance baseline** (:func:`chance_baseline`): the same measure
with the image pairing destroyed (rows of ``Y`` permuted, a local seeded generator), several
permutations, reported as their mean and 95th percentile. A similarity is only evidence of
shared structure where it clearly exceeds its chance level; ``max_dims`` caps the CCA
dimensions (e.g. ``n // 10``) when too few images are available.

**Augmented views.** Several views of one photo (flips, crops) are not independent images:
their pooled activations cluster by photo in every layer, and a measure that fits a linear map
(CCA above all) can match "which photo" between any two layers that tell the photos apart.
Shuffling single rows breaks that shared cluster structure too, so it under-estimates chance.
``groups=`` (a photo label per row, equal-sized groups) shuffles whole photos instead: the
baseline then keeps the cluster structure and asks whether the layers share more than it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.accumulators.cka import linear_cka

__all__ = ["SimilarityMeasure", "LinearCKA", "Procrustes", "SVCCA", "PWCCA", "MEASURES",
           "get_measure", "chance_baseline", "similarity", "SimilarityScore",
           "SimilarityMatrix", "similarity_matrices"]

ArrayLike = Union[np.ndarray, torch.Tensor]
INVARIANCES = ("orthogonal", "isotropic_scaling", "translation", "permutation", "invertible_linear")


def _as_matrix(x: ArrayLike, name: str = "X") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} must be (n_images, features), got shape {x.shape}.")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 3:
        raise ValueError(f"{name} has {x.shape[0]} images: a similarity needs at least 3.")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return x


def _paired_matrices(x: ArrayLike, y: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    r"""``X`` and ``Y`` as 2-D float64 arrays, refused unless they hold the same images (rows)."""
    x, y = _as_matrix(x, "X"), _as_matrix(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must hold the same images (rows): {x.shape[0]} vs {y.shape[0]}.")
    return x, y


@dataclass
class _Prepared:
    r"""A centred representation and its thin SVD ``centred = u * s @ vt`` (``vt`` on demand)."""

    centred: np.ndarray
    u: np.ndarray  # (n, r) orthonormal columns
    s: np.ndarray  # (r,) decreasing singular values
    norm: float

    @property
    def reduced(self) -> np.ndarray:
        r"""``(n, r)`` coordinates ``u * s``: the same rows up to a rotation of the features."""
        return self.u * self.s

    @property
    def vt(self) -> np.ndarray:
        r"""``(r, d)`` right singular vectors."""
        return (self.u.T @ self.centred) / self.s[:, None]

    def permuted(self, perm: np.ndarray) -> "_Prepared":
        return _Prepared(self.centred[perm], self.u[perm], self.s, self.norm)

    def head(self, k: int) -> "_Prepared":
        return _Prepared(self.centred, self.u[:, :k], self.s[:k], self.norm)


def _prepare(x: np.ndarray) -> _Prepared:
    r"""Centre ``x`` and take its thin SVD through the smaller Gram matrix (``eigh`` of an
    ``min(n, d)``-square matrix: several times faster than an SVD of ``x``; directions with
    singular values below ``1e-7`` of the largest are dropped as numerically zero)."""
    xc = x - x.mean(0)
    n, d = xc.shape
    lam, vec = np.linalg.eigh(xc @ xc.T if n <= d else xc.T @ xc)
    lam, vec = lam[::-1], vec[:, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    r = int((s > 1e-7 * s[0]).sum()) if s.size and s[0] > 0 else 0
    s, vec = s[:r], vec[:, :r]
    u = vec if n <= d else (xc @ vec) / s
    return _Prepared(xc, u, s, float(np.sqrt((s ** 2).sum())))


class SimilarityMeasure:
    r"""Base class: a similarity of two ``(n, d_x)``, ``(n, d_y)`` representations.

    Subclasses set :attr:`name`, :attr:`invariances` and implement :meth:`fit`, :meth:`score`
    and the fast in-sample path ``_score_prepared``.
    """

    name: str = ""
    #: invariance -> whether the similarity is unchanged by it (see the module table).
    invariances: Dict[str, bool] = {}

    def fit(self, X: ArrayLike, Y: ArrayLike) -> "SimilarityMeasure":
        r"""Learn the alignment of ``Y`` to ``X`` (means, rotations, canonical directions).

        Args:
            X (array): ``(n, d_x)``; Y (array): ``(n, d_y)``, the same images.

        Returns:
            self
        """
        raise NotImplementedError

    def score(self, X: ArrayLike, Y: ArrayLike) -> float:
        r"""The similarity of ``X`` and ``Y`` under the fitted alignment (same or held-out images).

        Returns:
            float: 1 for identical representations up to the invariances.
        """
        raise NotImplementedError

    def fit_score(self, X: ArrayLike, Y: ArrayLike) -> float:
        r"""Fit and score on the same images: the measure's usual definition (fast exact path).

        Returns:
            float: the similarity; NaN when a side is constant.
        """
        x, y = _paired_matrices(X, Y)
        return self._score_prepared(self.prepare(x), self.prepare(y))

    def distance(self, X: ArrayLike, Y: ArrayLike) -> float:
        r"""The measure's distance on the same images (``fit`` + ``score``, then converted)."""
        return self._to_distance(self.fit_score(X, Y))

    @property
    def label(self) -> str:
        r"""Short name with the non-default settings (the key in :func:`similarity_matrices`)."""
        return self.name

    def prepare(self, x: np.ndarray) -> Any:
        r"""Per-representation work shared by all pairings (used by permutation baselines)."""
        return _prepare(x)

    def _score_prepared(self, px: Any, py: Any) -> float:
        raise NotImplementedError

    def _to_distance(self, sim: float) -> float:
        return 1.0 - sim

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearCKA(SimilarityMeasure):
    r"""Linear CKA (Kornblith et al. 2019): :func:`~captum_topk.core.accumulators.cka.linear_cka`.

    Nothing to fit. Invariant to rotations, isotropic scaling and translation of either side,
    not to other invertible linear maps. Distance: ``arccos(CKA)`` (a metric, as in netrep).

    Example::

        >>> LinearCKA().fit_score(acts_a.mean((2, 3)), acts_b.mean((2, 3)))
    """

    name = "cka"
    invariances = {"orthogonal": True, "isotropic_scaling": True, "translation": True,
                   "permutation": True, "invertible_linear": False}

    def fit(self, X: ArrayLike, Y: ArrayLike) -> "LinearCKA":
        _paired_matrices(X, Y)
        return self

    def score(self, X: ArrayLike, Y: ArrayLike) -> float:
        x, y = _paired_matrices(X, Y)
        return float(linear_cka(torch.from_numpy(x), torch.from_numpy(y)))

    def _score_prepared(self, px: _Prepared, py: _Prepared) -> float:
        if px.norm == 0.0 or py.norm == 0.0:
            return float("nan")
        # CKA is rotation invariant: the reduced coordinates (n x rank) give the same value
        return float(linear_cka(torch.from_numpy(px.reduced), torch.from_numpy(py.reduced)))

    def _to_distance(self, sim: float) -> float:
        return float(np.arccos(np.clip(sim, -1.0, 1.0)))


class Procrustes(SimilarityMeasure):
    r"""Orthogonal Procrustes similarity of centred representations, scaled to unit norm.

    ``fit`` learns the means and the rotation ``Q = U V^T`` (``X_c^T Y_c = U S V^T``, a
    ``d_x x d_y`` partial isometry: the narrower side zero-padded); ``score`` is
    ``<(X - m_x) Q, Y - m_y>_F / (||X - m_x||_F ||Y - m_y||_F)``, on the fitted images
    ``||X_c^T Y_c||_* / (||X_c||_F ||Y_c||_F)`` in ``[0, 1]``. Distance: the angular shape
    metric ``arccos(similarity)`` (Williams et al. 2021).

    Example::

        >>> p = Procrustes().fit(train_a, train_b)
        >>> p.score(test_a, test_b), p.distance(train_a, train_b)
    """

    name = "procrustes"
    invariances = {"orthogonal": True, "isotropic_scaling": True, "translation": True,
                   "permutation": True, "invertible_linear": False}

    def fit(self, X: ArrayLike, Y: ArrayLike) -> "Procrustes":
        x, y = _paired_matrices(X, Y)
        self.mean_x_, self.mean_y_ = x.mean(0), y.mean(0)
        u, _, vt = np.linalg.svd((x - self.mean_x_).T @ (y - self.mean_y_), full_matrices=False)
        self.rotation_ = u @ vt
        return self

    def score(self, X: ArrayLike, Y: ArrayLike) -> float:
        x, y = _paired_matrices(X, Y)
        if not hasattr(self, "rotation_"):
            raise RuntimeError("Call fit(X, Y) before score(X, Y).")
        xc, yc = x - self.mean_x_, y - self.mean_y_
        denom = np.linalg.norm(xc) * np.linalg.norm(yc)
        return float(np.sum((xc @ self.rotation_) * yc) / denom) if denom > 0 else float("nan")

    def _score_prepared(self, px: _Prepared, py: _Prepared) -> float:
        if px.norm == 0.0 or py.norm == 0.0:
            return float("nan")
        nuclear = _singular_values(px.reduced, py.reduced).sum()  # those of X_c^T Y_c
        return float(min(1.0, nuclear / (px.norm * py.norm)))

    def _to_distance(self, sim: float) -> float:
        return float(np.arccos(np.clip(sim, -1.0, 1.0)))


def _singular_values(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    r"""Singular values of ``p^T q`` (``p``: ``(n, a)``, ``q``: ``(n, b)``), decreasing, from the
    eigenvalues of its smaller Gram matrix."""
    c = p.T @ q
    g = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
    return np.sqrt(np.clip(np.linalg.eigvalsh(g)[::-1], 0.0, None))


def _kept_dims(s: np.ndarray, keep: float, max_dims: Optional[int]) -> int:
    if s.size == 0:
        return 0
    var = s ** 2
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), keep - 1e-12) + 1)
    k = min(k, s.size)
    return min(k, max_dims) if max_dims is not None else k


class _CCA(SimilarityMeasure):
    r"""SVD reduction to ``keep`` of the variance (at most ``max_dims`` directions), then CCA."""

    def __init__(self, keep: float = 0.99, max_dims: Optional[int] = None) -> None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep is a fraction of variance in (0, 1], got {keep}.")
        if max_dims is not None and max_dims < 1:
            raise ValueError(f"max_dims must be >= 1, got {max_dims}.")
        self.keep, self.max_dims = float(keep), max_dims

    @property
    def invariances(self) -> Dict[str, bool]:  # type: ignore[override]
        exact = self.keep >= 1.0 and self.max_dims is None
        return {"orthogonal": True, "isotropic_scaling": True, "translation": True,
                "permutation": True, "invertible_linear": exact}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keep={self.keep}, max_dims={self.max_dims})"

    @property
    def label(self) -> str:
        extra = ([] if self.keep == 0.99 else [f"{100 * self.keep:g}% var"]) + (
            [] if self.max_dims is None else [f"<={self.max_dims} dims"])
        return f"{self.name} ({', '.join(extra)})" if extra else self.name

    def prepare(self, x: np.ndarray) -> _Prepared:
        p = _prepare(x)
        return p.head(_kept_dims(p.s, self.keep, self.max_dims))

    @staticmethod
    def _cca(px: _Prepared, py: _Prepared) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Canonical directions (in each side's basis) and correlations, decreasing."""
        a, rho, bt = np.linalg.svd(px.u.T @ py.u, full_matrices=False)
        return a, np.clip(rho, 0.0, 1.0), bt.T

    @staticmethod
    def _cca_side(pu: np.ndarray, qu: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        r"""Canonical correlations and the directions on ``pu``'s side only, from the
        eigen-decomposition of the smaller Gram of ``pu^T qu`` (cheaper than its SVD)."""
        c = pu.T @ qu
        m = min(c.shape)
        lam, vec = np.linalg.eigh(c @ c.T)
        lam, vec = lam[::-1][:m], vec[:, ::-1][:, :m]
        return np.sqrt(np.clip(lam, 0.0, 1.0)), vec

    def fit(self, X: ArrayLike, Y: ArrayLike) -> "_CCA":
        x, y = _paired_matrices(X, Y)
        px, py = self.prepare(x), self.prepare(y)
        if px.s.size == 0 or py.s.size == 0:
            raise ValueError("A constant representation has no canonical directions.")
        a, rho, b = self._cca(px, py)
        self.mean_x_, self.mean_y_ = x.mean(0), y.mean(0)
        # canonical variates u_k a = X_c v_k s_k^-1 a: weights mapping centred data to them
        self.weights_x_ = (px.vt.T / px.s) @ a
        self.weights_y_ = (py.vt.T / py.s) @ b
        self.side_ = "x" if x.shape[1] <= y.shape[1] else "y"
        return self

    def _variates(self, X: ArrayLike, Y: ArrayLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        r"""Correlations of the fitted canonical variates on ``X``, ``Y``, the unit-norm variates
        and the centred data."""
        x, y = _paired_matrices(X, Y)
        if not hasattr(self, "weights_x_"):
            raise RuntimeError("Call fit(X, Y) before score(X, Y).")
        xc, yc = x - self.mean_x_, y - self.mean_y_
        hx, hy = xc @ self.weights_x_, yc @ self.weights_y_
        hx, hy = hx - hx.mean(0), hy - hy.mean(0)
        nx, ny = np.linalg.norm(hx, axis=0), np.linalg.norm(hy, axis=0)
        ok = (nx > 0) & (ny > 0)
        rho = np.where(ok, (hx * hy).sum(0) / np.where(ok, nx * ny, 1.0), 0.0)
        hx, hy = hx / np.where(nx > 0, nx, 1.0), hy / np.where(ny > 0, ny, 1.0)
        return rho, hx, hy, (xc, yc)


class SVCCA(_CCA):
    r"""SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017): SVD then CCA, mean correlation.

    Each centred side is reduced to its top singular directions holding ``keep`` of its
    variance (at most ``max_dims``); the similarity is the mean of the ``min(k_x, k_y)``
    canonical correlations. Invariant to rotations, isotropic scaling and translation; to any
    invertible linear map only without truncation (``keep=1``, ``max_dims=None``), since the
    truncation keeps high-*variance* directions. Distance ``1 - similarity``.

    Args:
        keep (float): fraction of each side's variance kept (default 0.99).
        max_dims (int, optional): at most this many directions per side (see "Small samples"
            in the module doc).

    Example::

        >>> SVCCA(keep=0.99).fit_score(reps_a, reps_b)
    """

    name = "svcca"

    def score(self, X: ArrayLike, Y: ArrayLike) -> float:
        rho = self._variates(X, Y)[0]
        return float(rho.mean())

    def _score_prepared(self, px: _Prepared, py: _Prepared) -> float:
        if px.s.size == 0 or py.s.size == 0:
            return float("nan")
        return float(np.clip(_singular_values(px.u, py.u), 0.0, 1.0).mean())


class PWCCA(_CCA):
    r"""Projection-weighted CCA (Morcos, Raghu & Bengio 2018).

    CCA as in :class:`SVCCA` (``keep=1`` for the unreduced original), then the weighted mean
    ``sum_i alpha_i rho_i`` with ``alpha_i ∝ sum_j |<h_i, x_j>|``, ``h_i`` the unit-norm
    canonical variate and ``x_j`` the centred activations of unit ``j``, on the side with fewer
    units (google/svcca's choice; it makes PWCCA symmetric). Canonical directions that carry
    much of the units' activity weigh more than noise directions. The weights are sums of
    absolute values over units: invariant to permuting units, flipping their signs and
    isotropic scaling, **not** to rotations. Distance ``1 - similarity``.

    Args:
        keep (float): fraction of variance kept by the SVD step (default 0.99).
        max_dims (int, optional): at most this many directions per side.
    """

    name = "pwcca"

    def __init__(self, keep: float = 0.99, max_dims: Optional[int] = None) -> None:
        super().__init__(keep, max_dims)

    @property
    def invariances(self) -> Dict[str, bool]:  # type: ignore[override]
        return {"orthogonal": False, "isotropic_scaling": True, "translation": True,
                "permutation": True, "invertible_linear": False}

    @staticmethod
    def _weighted(rho: np.ndarray, h: np.ndarray, units: np.ndarray) -> float:
        w = np.abs(units.T @ h).sum(0)
        total = w.sum()
        return float((w / total * rho).sum()) if total > 0 else float("nan")

    def score(self, X: ArrayLike, Y: ArrayLike) -> float:
        rho, hx, hy, (xc, yc) = self._variates(X, Y)
        return self._weighted(rho, hx, xc) if self.side_ == "x" else self._weighted(rho, hy, yc)

    def _score_prepared(self, px: _Prepared, py: _Prepared) -> float:
        if px.s.size == 0 or py.s.size == 0:
            return float("nan")
        if px.centred.shape[1] <= py.centred.shape[1]:
            rho, a = self._cca_side(px.u, py.u)
            return self._weighted(rho, px.u @ a, px.centred)
        rho, b = self._cca_side(py.u, px.u)
        return self._weighted(rho, py.u @ b, py.centred)


MEASURES = {"cka": LinearCKA, "procrustes": Procrustes, "svcca": SVCCA, "pwcca": PWCCA}


def get_measure(measure: Union[str, SimilarityMeasure]) -> SimilarityMeasure:
    r"""A measure object from its name (``"cka"``, ``"procrustes"``, ``"svcca"``, ``"pwcca"``)
    with default settings, or the object itself.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(measure, SimilarityMeasure):
        return measure
    if measure not in MEASURES:
        raise ValueError(f"Unknown similarity measure {measure!r}; choose from {', '.join(MEASURES)}.")
    return MEASURES[measure]()


def _permutations(n: int, permutations: int, seed: int, groups: Optional[Sequence[Any]] = None) -> List[np.ndarray]:
    r"""Row permutations from ``numpy.random.default_rng(seed)``; with ``groups``, permutations
    that move whole groups onto each other (rows within a group keep their order)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.permutation(n) for _ in range(permutations)]
    labels = np.asarray(list(groups))
    if labels.shape != (n,):
        raise ValueError(f"groups needs one label per image ({n}), got {labels.shape[0]}.")
    uniq = list(dict.fromkeys(labels.tolist()))
    members = [np.flatnonzero(labels == g) for g in uniq]
    sizes = {m.size for m in members}
    if len(sizes) != 1:
        raise ValueError(
            f"groups must all have the same size (e.g. the same number of augmented views per "
            f"photo), got sizes {sorted(sizes)}.")
    out = []
    for _ in range(permutations):
        perm = np.empty(n, dtype=np.int64)
        for src, dst in zip(members, rng.permutation(len(members))):
            perm[src] = members[dst]
        out.append(perm)
    return out


def chance_baseline(measure: Union[str, SimilarityMeasure], X: ArrayLike, Y: ArrayLike,
                    permutations: int = 20, seed: int = 0,
                    groups: Optional[Sequence[Any]] = None) -> np.ndarray:
    r"""The measure with the image pairing shuffled: ``fit_score(X, Y[perm])`` per permutation.

    What the measure gives for two representations with these marginal statistics (sizes,
    spectra) but no correspondence between images: its level of chance at this ``n`` and
    these dimensions. Rows of ``Y`` are permuted with ``numpy.random.default_rng(seed)``
    (local: the global RNG is untouched).

    Args:
        measure (str or SimilarityMeasure): see :func:`get_measure`.
        X (array): ``(n, d_x)``; Y (array): ``(n, d_y)``.
        permutations (int): how many shuffles.
        seed (int): seed of the local generator.
        groups (sequence, optional): a group label per image (e.g. the photo of each augmented
            view, equal-sized groups): shuffle whole groups instead of single rows (see
            "Augmented views" in the module doc).

    Returns:
        numpy.ndarray: ``(permutations,)`` similarities.
    """
    m = get_measure(measure)
    x, y = _paired_matrices(X, Y)
    px, py = m.prepare(x), m.prepare(y)
    return np.asarray([m._score_prepared(px, py.permuted(p))
                       for p in _permutations(x.shape[0], permutations, seed, groups)])


@dataclass
class SimilarityScore:
    r"""A similarity with its chance baseline.

    Attributes:
        measure (str): the measure's name.
        value (float): ``fit_score(X, Y)``.
        chance_mean (float): mean over the shuffled pairings.
        chance_high (float): their ``quantile`` (95th percentile by default).
        chance (numpy.ndarray): every shuffled value.
        quantile (float): the quantile of ``chance_high``.
    """

    measure: str
    value: float
    chance_mean: float
    chance_high: float
    chance: np.ndarray = field(repr=False)
    quantile: float = 0.95

    @property
    def above_chance(self) -> bool:
        r"""Whether ``value`` exceeds ``chance_high``."""
        return bool(self.value > self.chance_high)

    def to_json(self) -> Dict[str, Any]:
        return {"measure": self.measure, "value": _num(self.value), "chance_mean": _num(self.chance_mean),
                f"chance_p{round(100 * self.quantile)}": _num(self.chance_high),
                "permutations": int(self.chance.size)}


def _num(v: Any) -> Optional[float]:
    r"""A number for JSON: ``float(v)``, or None for NaN (JSON has no NaN)."""
    v = float(v)
    return None if math.isnan(v) else v


def _summary(values: np.ndarray, quantile: float) -> Tuple[float, float]:
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return float("nan"), float("nan")
    return float(ok.mean()), float(np.quantile(ok, quantile))


def similarity(X: ArrayLike, Y: ArrayLike, measure: Union[str, SimilarityMeasure] = "cka",
               permutations: int = 20, seed: int = 0, quantile: float = 0.95,
               groups: Optional[Sequence[Any]] = None) -> SimilarityScore:
    r"""One similarity of two representations with its chance baseline.

    Args:
        X (array): ``(n, d_x)`` representation of n images; Y (array): ``(n, d_y)``, the same images.
        measure (str or SimilarityMeasure): ``"cka"`` (default), ``"procrustes"``, ``"svcca"``,
            ``"pwcca"`` or a configured object (e.g. ``SVCCA(max_dims=20)``).
        permutations (int): shuffles for the baseline (0: none, chance NaN).
        seed (int): seed of the local generator of the shuffles.
        quantile (float): the upper chance level reported (default 95th percentile).
        groups (sequence, optional): shuffle whole groups of rows (see :func:`chance_baseline`).

    Returns:
        SimilarityScore

    Example::

        >>> s = similarity(feats_a, feats_b, "procrustes")
        >>> s.value, s.chance_mean, s.chance_high, s.above_chance
    """
    m = get_measure(measure)
    x, y = _paired_matrices(X, Y)
    px, py = m.prepare(x), m.prepare(y)
    value = m._score_prepared(px, py)
    chance = np.asarray([m._score_prepared(px, py.permuted(p))
                         for p in _permutations(x.shape[0], permutations, seed, groups)], dtype=np.float64)
    mean, high = _summary(chance, quantile)
    return SimilarityScore(m.name, value, mean, high, chance, quantile)


@dataclass
class SimilarityMatrix:
    r"""One measure over every layer of A x every layer of B, with chance baselines.

    Attributes:
        measure (str): the measure's name; settings (str): its ``repr``.
        value (numpy.ndarray): ``(P, Q)`` similarities.
        chance_mean, chance_high (numpy.ndarray): ``(P, Q)`` mean and ``quantile`` of the
            shuffled pairings (the same permutations for every cell).
        permutations (int), quantile (float), invariances (dict).
    """

    measure: str
    settings: str
    value: np.ndarray
    chance_mean: np.ndarray
    chance_high: np.ndarray
    permutations: int
    quantile: float
    invariances: Dict[str, bool]

    def to_json(self) -> Dict[str, Any]:
        rows = lambda m: [[_num(v) for v in r] for r in m]  # noqa: E731
        return {"measure": self.measure, "settings": self.settings, "matrix": rows(self.value),
                "chance_mean": rows(self.chance_mean),
                f"chance_p{round(100 * self.quantile)}": rows(self.chance_high),
                "permutations": self.permutations, "invariances": dict(self.invariances)}


def similarity_matrices(reps_a: Sequence[ArrayLike], reps_b: Sequence[ArrayLike],
                        measures: Sequence[Union[str, SimilarityMeasure]] = ("cka", "procrustes", "svcca", "pwcca"),
                        permutations: int = 10, seed: int = 0, quantile: float = 0.95,
                        groups: Optional[Sequence[Any]] = None,
                        progress: bool = True) -> Dict[str, SimilarityMatrix]:
    r"""Every measure for every pair of representations, with chance baselines.

    Each representation is prepared once (centring, SVD) for all its pairings and
    permutations.

    Args:
        reps_a (sequence of array): ``P`` representations ``(n, d)`` of model A's layers.
        reps_b (sequence of array): ``Q`` representations of model B's layers, same images.
        measures (sequence): names or :class:`SimilarityMeasure` objects.
        permutations (int): shuffled pairings per cell; seed (int); quantile (float); groups
            (sequence, optional): see :func:`similarity`.
        progress (bool): tqdm bar over the cells.

    Returns:
        dict: measure label (``"cka"``, ``"svcca"``, ``"svcca (<=10 dims)"``, ...) ->
        :class:`SimilarityMatrix`.
    """
    xs = [_as_matrix(r, f"reps_a[{i}]") for i, r in enumerate(reps_a)]
    ys = [_as_matrix(r, f"reps_b[{j}]") for j, r in enumerate(reps_b)]
    ns = {x.shape[0] for x in xs + ys}
    if len(ns) != 1:
        raise ValueError(f"Every representation must hold the same images, got row counts {sorted(ns)}.")
    (n,) = ns
    perms = _permutations(n, permutations, seed, groups)
    out: Dict[str, SimilarityMatrix] = {}
    objs = [get_measure(m) for m in measures]
    bar = tqdm(total=len(objs) * len(xs) * len(ys), desc="similarity", unit="pair", disable=not progress)
    try:
        for m in objs:
            pa, pb = [m.prepare(x) for x in xs], [m.prepare(y) for y in ys]
            shape = (len(xs), len(ys))
            value, cmean, chigh = np.empty(shape), np.empty(shape), np.empty(shape)
            for i, px in enumerate(pa):
                for j, py in enumerate(pb):
                    value[i, j] = m._score_prepared(px, py)
                    ch = np.asarray([m._score_prepared(px, py.permuted(p)) for p in perms])
                    cmean[i, j], chigh[i, j] = _summary(ch, quantile)
                    bar.update(1)
            key = m.label if m.label not in out else repr(m)
            out[key] = SimilarityMatrix(m.name, repr(m), value, cmean, chigh, permutations,
                                           quantile, dict(m.invariances))
    finally:
        bar.close()
    return out
