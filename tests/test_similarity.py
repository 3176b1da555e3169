"""Similarity measures (CKA, Procrustes, SVCCA, PWCCA): brute-force twins, invariances that must
hold and must not, and chance baselines."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from captum_topk.compare.similarity import (
    INVARIANCES,
    MEASURES,
    PWCCA,
    SVCCA,
    LinearCKA,
    Procrustes,
    _permutations,
    chance_baseline,
    get_measure,
    similarity,
    similarity_matrices,
)
from captum_topk.core.accumulators.cka import linear_cka


def _related(n=400, seed=0):
    """X: 8 units with very unequal variances; Y: a noisy non-linear read-out of X's three
    weakest directions and one strong one (so that variance truncation and unit weights matter)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8))
    x = z * np.array([10.0, 6.0, 3.0, 2.0, 1.0, 0.3, 0.2, 0.1])
    y = np.column_stack([z[:, 0] + 0.5 * z[:, 1], z[:, 5], z[:, 6] + 0.3 * z[:, 7], np.tanh(z[:, 7]),
                         z[:, 2], z[:, 5] - z[:, 6]]) @ rng.standard_normal((6, 6))
    return x, y + 0.4 * rng.standard_normal((n, 6))


ALL = [LinearCKA(), Procrustes(), SVCCA(), PWCCA(), SVCCA(keep=1.0), PWCCA(keep=1.0)]


def _transform(kind, x, rng):
    d = x.shape[1]
    if kind == "orthogonal":
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return x @ q
    if kind == "isotropic_scaling":
        return 3.7 * x
    if kind == "translation":
        return x + rng.standard_normal(d) * 50.0
    if kind == "permutation":
        return x[:, rng.permutation(d)]
    if kind == "invertible_linear":  # for X: whitening-like, equalises the variances
        scale = 1.0 / np.array([10.0, 6.0, 3.0, 2.0, 1.0, 0.3, 0.2, 0.1]) if d == 8 else np.linspace(0.1, 10, d)
        return x @ np.diag(scale) @ (np.eye(d) + 0.3 * np.triu(np.ones((d, d)), 1))
    raise AssertionError(kind)


@pytest.mark.parametrize("measure", ALL, ids=repr)
@pytest.mark.parametrize("kind", INVARIANCES)
def test_invariances_hold_exactly_where_documented_and_fail_elsewhere(measure, kind):
    x, y = _related()
    rng = np.random.default_rng(1)
    base = measure.fit_score(x, y)
    moved_x = measure.fit_score(_transform(kind, x, rng), y)
    moved_y = measure.fit_score(x, _transform(kind, y, rng))
    assert 0.2 < base < 0.999  # a non-trivial similarity
    if measure.invariances[kind]:
        assert moved_x == pytest.approx(base, rel=1e-7, abs=1e-9), kind
        assert moved_y == pytest.approx(base, rel=1e-7, abs=1e-9), kind
    else:  # the transform of one side or the other changes the value
        assert max(abs(moved_x - base), abs(moved_y - base)) > 3e-4, (kind, base, moved_x, moved_y)
    # the fit / score path (netrep style) agrees with the fast in-sample path
    assert measure.fit(x, y).score(x, y) == pytest.approx(base, rel=1e-7)


@pytest.mark.parametrize("measure", ALL, ids=repr)
def test_symmetric_and_one_for_identical(measure):
    x, y = _related(seed=3)
    assert measure.fit_score(x, y) == pytest.approx(measure.fit_score(y, x), rel=1e-7)
    assert measure.fit_score(x, x) == pytest.approx(1.0, abs=1e-7)
    # a rotated, scaled, shifted copy is the same representation for the rotation-invariant ones
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((8, 8)))
    if measure.invariances["orthogonal"]:
        assert measure.fit_score(x, 2.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-7)


# ------------------------------------------------------------------ brute-force twins


def test_cka_wraps_linear_cka():
    x, y = _related(seed=5)
    ref = float(linear_cka(torch.from_numpy(x), torch.from_numpy(y)))
    assert LinearCKA().fit_score(x, y) == pytest.approx(ref, rel=1e-10)
    assert LinearCKA().fit(x, y).score(x, y) == pytest.approx(ref, rel=1e-12)
    assert LinearCKA().distance(x, y) == pytest.approx(np.arccos(ref), rel=1e-9)


def test_procrustes_equals_scipy_orthogonal_procrustes_on_padded_data():
    x, y = _related(seed=6)
    xc, yc = x - x.mean(0), y - y.mean(0)
    yp = np.column_stack([yc, np.zeros((yc.shape[0], 2))])  # zero-pad Y to X's 8 columns
    r, _ = scipy.linalg.orthogonal_procrustes(xc, yp)
    ref = np.sum((xc @ r) * yp) / (np.linalg.norm(xc) * np.linalg.norm(yc))
    p = Procrustes()
    assert p.fit_score(x, y) == pytest.approx(ref, rel=1e-9)
    assert p.fit(x, y).score(x, y) == pytest.approx(ref, rel=1e-9)
    assert p.distance(x, y) == pytest.approx(np.arccos(ref), rel=1e-9)
    # held-out images: the fitted means and rotation applied to new rows, by hand
    xt, yt = _related(n=50, seed=7)
    xtc, ytc = xt - x.mean(0), yt - y.mean(0)
    u, _, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
    ref_test = np.sum((xtc @ (u @ vt)) * ytc) / (np.linalg.norm(xtc) * np.linalg.norm(ytc))
    assert p.score(xt, yt) == pytest.approx(ref_test, rel=1e-9)


def _svd_truncated(x, keep):
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    frac = np.cumsum(s ** 2) / np.sum(s ** 2)
    k = int(np.argmax(frac >= keep - 1e-12)) + 1
    return xc @ vt[:k].T  # the data in its top-k singular directions


def _inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w ** -0.5) @ v.T


def _cca_textbook(a, b):
    """Canonical correlations and X-side canonical weights from the covariance matrices."""
    a, b = a - a.mean(0), b - b.mean(0)
    saa, sbb, sab = a.T @ a, b.T @ b, a.T @ b
    m = _inv_sqrt(saa) @ sab @ _inv_sqrt(sbb)
    u, rho, _ = np.linalg.svd(m, full_matrices=False)
    return rho, _inv_sqrt(saa) @ u  # canonical variates: a @ weights


@pytest.mark.parametrize("keep", [0.99, 1.0])
def test_svcca_equals_textbook_svd_then_cca(keep):
    x, y = _related(seed=8)
    rho, _ = _cca_textbook(_svd_truncated(x, keep), _svd_truncated(y, keep))
    assert SVCCA(keep=keep).fit_score(x, y) == pytest.approx(rho.mean(), rel=1e-8)
    s = SVCCA(keep=keep).fit(x, y)
    assert s.score(x, y) == pytest.approx(rho.mean(), rel=1e-8)
    assert SVCCA(keep=keep).distance(x, y) == pytest.approx(1 - rho.mean(), rel=1e-7)


@pytest.mark.parametrize("keep", [0.99, 1.0])
def test_pwcca_equals_the_projection_weighted_definition_written_with_loops(keep):
    x, y = _related(seed=9)  # X has 8 units, Y 6: the weights come from Y (fewer units)
    xs, ys = _svd_truncated(x, keep), _svd_truncated(y, keep)
    rho, wy = _cca_textbook(ys, xs)
    h = (ys - ys.mean(0)) @ wy  # canonical variates of Y's side, one column each
    units = y - y.mean(0)
    alpha = []
    for i in range(len(rho)):
        hi = h[:, i] / np.linalg.norm(h[:, i])
        alpha.append(sum(abs(float(hi @ units[:, j])) for j in range(units.shape[1])))
    alpha = np.asarray(alpha) / sum(alpha)
    ref = float(np.sum(alpha * rho))
    assert PWCCA(keep=keep).fit_score(x, y) == pytest.approx(ref, rel=1e-7)
    assert PWCCA(keep=keep).fit(x, y).score(x, y) == pytest.approx(ref, rel=1e-7)


def test_max_dims_caps_the_cca_directions():
    x, y = _related(seed=10)
    rho, _ = _cca_textbook(_svd_truncated(x, 1.0)[:, :2], _svd_truncated(y, 1.0)[:, :2])
    assert SVCCA(keep=1.0, max_dims=2).fit_score(x, y) == pytest.approx(rho.mean(), rel=1e-8)
    assert SVCCA(keep=1.0, max_dims=2).invariances["invertible_linear"] is False


# ------------------------------------------------------------------ chance baselines


def test_chance_near_zero_for_unrelated_and_true_score_well_above_for_related():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((400, 4)), rng.standard_normal((400, 5))
    rx = rng.standard_normal((400, 6))
    ry = np.tanh(rx @ rng.standard_normal((6, 5))) + 0.3 * rng.standard_normal((400, 5))
    for name in MEASURES:
        un = similarity(x, y, name, permutations=12, seed=0)
        assert un.chance_mean < 0.2 and un.value < 0.2, (name, un)
        assert un.chance.shape == (12,) and un.chance_high >= un.chance_mean
        rel = similarity(rx, ry, name, permutations=12, seed=0)
        assert rel.chance_mean < 0.2, (name, rel)
        assert rel.value > rel.chance_high + 0.2 and rel.above_chance, (name, rel)


def test_chance_exposes_the_small_sample_bias_of_cca():
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((40, 30)), rng.standard_normal((40, 30))  # unrelated, d ~ n
    s = similarity(x, y, SVCCA(), permutations=20, seed=0)
    assert s.value > 0.7  # CCA fits noise: a high similarity of unrelated data...
    assert s.chance_mean > 0.7 and not s.above_chance  # ...that the baseline gives away
    capped = similarity(x, y, SVCCA(max_dims=4), permutations=20, seed=0)
    assert capped.chance_mean < s.chance_mean - 0.3


def test_baseline_is_seeded_and_leaves_global_rngs_alone():
    x, y = _related(n=60, seed=14)
    np.random.seed(123)
    torch.manual_seed(123)
    before_np, before_torch = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = chance_baseline("procrustes", x, y, permutations=5, seed=3)
    b = chance_baseline(Procrustes(), x, y, permutations=5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, chance_baseline("procrustes", x, y, permutations=5, seed=4))
    np.testing.assert_array_equal(np.random.get_state()[1], before_np)
    assert torch.equal(torch.get_rng_state(), before_torch)
    # each value is the measure on Y with its rows shuffled by that seed's generator
    perm = np.random.default_rng(3).permutation(60)
    assert a[0] == pytest.approx(Procrustes().fit_score(x, y[perm]), rel=1e-12)


def test_similarity_matrices_equal_pairwise_similarity():
    rng = np.random.default_rng(15)
    reps_a = [rng.standard_normal((30, d)) for d in (3, 7)]
    reps_b = [reps_a[0] @ rng.standard_normal((3, 4)), torch.from_numpy(rng.standard_normal((30, 2, 2, 2)))]
    mats = similarity_matrices(reps_a, reps_b, ["cka", SVCCA(keep=1.0), "pwcca"], permutations=4,
                               seed=2, progress=False)
    objs = {"cka": LinearCKA(), "svcca (100% var)": SVCCA(keep=1.0), "pwcca": PWCCA()}
    assert set(mats) == set(objs)
    for name, m in mats.items():
        assert m.value.shape == (2, 2) and m.settings == repr(objs[name])
        for i, xa in enumerate(reps_a):
            for j, xb in enumerate(reps_b):
                one = similarity(xa, xb, objs[name], permutations=4, seed=2)
                assert m.value[i, j] == pytest.approx(one.value, rel=1e-10)
                assert m.chance_mean[i, j] == pytest.approx(one.chance_mean, rel=1e-10)
                assert m.chance_high[i, j] == pytest.approx(one.chance_high, rel=1e-10)
    # B's first layer is an injective linear map of A's first: CCA without truncation sees the
    # same representation, CKA (not invariant to non-orthogonal maps) does not
    assert mats["svcca (100% var)"].value[0, 0] == pytest.approx(1.0, abs=1e-9)
    assert mats["cka"].value[0, 0] < 0.99
    js = mats["svcca (100% var)"].to_json()
    assert js["permutations"] == 4 and len(js["chance_p95"]) == 2


def test_errors_say_what_is_wrong():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same images"):
        LinearCKA().fit_score(x, np.zeros((11, 3)))
    with pytest.raises(ValueError, match="Unknown similarity measure"):
        get_measure("rsa")
    with pytest.raises(ValueError, match="at least 3"):
        Procrustes().fit_score(x[:2], x[:2])
    with pytest.raises(RuntimeError, match="fit"):
        Procrustes().score(x, x)
    with pytest.raises(ValueError, match="keep"):
        SVCCA(keep=0.0)
    rng = np.random.default_rng(0)
    const = np.ones((10, 3))
    assert np.isnan(SVCCA().fit_score(const, rng.standard_normal((10, 2))))
    assert np.isnan(Procrustes().fit_score(const, rng.standard_normal((10, 2))))


def test_group_shuffles_keep_the_photo_structure_of_augmented_views():
    rng = np.random.default_rng(16)
    photos, views = 20, 5
    groups = np.repeat(np.arange(photos), views)
    # two representations that share nothing but "which photo": each a different random
    # code of the photo, plus view-level noise
    x = rng.standard_normal((photos, 12))[groups] + 0.1 * rng.standard_normal((100, 12))
    y = rng.standard_normal((photos, 12))[groups] + 0.1 * rng.standard_normal((100, 12))
    rows = similarity(x, y, SVCCA(), permutations=10, seed=0)
    grouped = similarity(x, y, SVCCA(), permutations=10, seed=0, groups=groups)
    assert rows.above_chance  # shuffling single views: looks like shared structure...
    assert not grouped.above_chance  # ...shuffling photos: only the shared photo identity
    assert grouped.chance_mean > rows.chance_mean + 0.3
    # each grouped shuffle maps whole photos onto photos, views in order
    for p in _permutations(100, 3, 0, groups):
        blocks = p.reshape(photos, views)
        assert (np.diff(blocks, axis=1) == 1).all() and (blocks[:, 0] % views == 0).all()
        assert sorted(blocks[:, 0] // views) == list(range(photos))
    with pytest.raises(ValueError, match="same size"):
        chance_baseline(LinearCKA(), x[:99], y[:99], groups=groups[:99])
