"""CKA estimators against brute-force twins, and the model comparison (channels, report, CLI)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from captum_topk.core.accumulators.cka import (
    MinibatchCKA,
    gram_cka,
    gram_linear,
    hsic_unbiased,
    hsic_unbiased_many,
    linear_cka,
)
from captum_topk.compare import (
    ChannelMoments,
    change_score,
    channel_weights,
    compare_models,
    save_report,
)


def _rand(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _related_reps(n=200, seed=0):
    x = _rand(n, 12, seed)
    y = torch.tanh(x @ _rand(12, 7, seed + 1)) + 0.3 * _rand(n, 7, seed + 2)
    return x, y


# ------------------------------------------------------------------ brute-force twins


def _hsic_u_statistic(k: torch.Tensor, l: torch.Tensor) -> float:
    """HSIC_1 as its definition: a U-statistic over all ordered 4-tuples of distinct indices,
    of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq (Song et al. 2012), O(n^4)."""
    n = k.shape[0]
    k, l = k.tolist(), l.tolist()
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i][j] * l[i][j] + k[i][j] * l[q][r] - 2.0 * k[i][j] * l[i][q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def _hsic_loops(k: torch.Tensor, l: torch.Tensor) -> float:
    """Song et al.'s closed form with explicit O(n^2) loops (no matrix algebra)."""
    n = k.shape[0]
    kt = [[0.0 if i == j else float(k[i, j]) for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else float(l[i, j]) for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sk = sum(map(sum, kt))
    sl = sum(map(sum, lt))
    rk = [sum(row) for row in kt]
    rl = [sum(row) for row in lt]
    cross = sum(rk[i] * rl[i] for i in range(n))
    return (trace + sk * sl / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


@pytest.mark.parametrize("n", [4, 5, 8])
def test_unbiased_hsic_equals_its_u_statistic_definition(n):
    x, y = _related_reps(n, seed=n)
    k, l = gram_linear(x), gram_linear(y)
    ref = _hsic_u_statistic(k, l)
    assert float(hsic_unbiased(k, l)) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert float(hsic_unbiased(k, l)) == pytest.approx(_hsic_loops(k, l), rel=1e-10)


def test_hsic_many_matches_pairwise():
    reps = [_rand(9, d, s) for s, d in enumerate((3, 5, 2))]
    grams = torch.stack([gram_linear(r) for r in reps])
    m = hsic_unbiased_many(grams, grams[:2])
    for i, j in itertools.product(range(3), range(2)):
        assert float(m[i, j]) == pytest.approx(_hsic_loops(grams[i], grams[j]), rel=1e-10)


def test_full_gram_cka_equals_feature_space_formula():
    x, y = _related_reps(60)
    assert float(linear_cka(x, y)) == pytest.approx(float(gram_cka(gram_linear(x), gram_linear(y))),
                                                    rel=1e-10)
    # and both equal the textbook definition written out with numpy
    xc = x.numpy() - x.numpy().mean(0)
    yc = y.numpy() - y.numpy().mean(0)
    ref = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert float(linear_cka(x, y)) == pytest.approx(ref, rel=1e-10)


def _minibatch_brute(x, y, bs):
    """Minibatch CKA by its definition: per batch, HSIC_1 as a U-statistic."""
    ab = aa = bb = 0.0
    for s in range(0, x.shape[0], bs):
        k, l = gram_linear(x[s : s + bs]), gram_linear(y[s : s + bs])
        if k.shape[0] < 4:
            continue
        ab += _hsic_u_statistic(k, l)
        aa += _hsic_u_statistic(k, k)
        bb += _hsic_u_statistic(l, l)
    return ab / math.sqrt(aa * bb)


def _minibatch(x, y, bs):
    cka = MinibatchCKA(1, 1)
    for s in range(0, x.shape[0], bs):
        cka.update([x[s : s + bs]], [y[s : s + bs]])
    return float(cka.compute()[0, 0])


def test_minibatch_cka_equals_its_brute_force_definition():
    x, y = _related_reps(23, seed=3)  # batches of 7, 7, 7 and a skipped last batch of 2
    assert _minibatch(x, y, 7) == pytest.approx(_minibatch_brute(x, y, 7), rel=1e-9)


def test_minibatch_cka_converges_to_full_linear_cka():
    x, y = _related_reps(6000, seed=5)
    full = float(linear_cka(x, y))
    assert 0.2 < full < 0.95  # a non-trivial similarity
    assert _minibatch(x, y, 250) == pytest.approx(full, abs=0.02)
    # and the unbiased minibatch estimate does not depend on the batch size in expectation
    assert _minibatch(x, y, 60) == pytest.approx(full, abs=0.03)


def test_cka_self_is_one_and_invariances():
    x, y = _related_reps(120, seed=7)
    assert _minibatch(x, x, 16) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(_rand(7, 7, 11))  # random orthogonal matrix
    base = _minibatch(x, y, 16)
    assert _minibatch(x, y @ q, 16) == pytest.approx(base, rel=1e-10)
    assert _minibatch(3.7 * x, y, 16) == pytest.approx(base, rel=1e-10)
    assert _minibatch(x + 5.0, y - 2.0, 16) == pytest.approx(base, rel=1e-8)  # centred
    assert float(linear_cka(x, 0.1 * y @ q)) == pytest.approx(float(linear_cka(x, y)), rel=1e-10)
    # not invariant to a general invertible map: this is a real check, not a constant
    a = torch.diag(torch.linspace(0.1, 10, 7, dtype=torch.float64))
    assert abs(_minibatch(x, y @ a, 16) - base) > 1e-3


def test_minibatch_cka_merge_and_errors():
    x, y = _related_reps(64, seed=2)
    one = MinibatchCKA(1, 1)
    two = MinibatchCKA(1, 1)
    for s in range(0, 32, 8):
        one.update([x[s : s + 8]], [y[s : s + 8]])
    for s in range(32, 64, 8):
        two.update([x[s : s + 8]], [y[s : s + 8]])
    assert float(one.merge(two).compute()[0, 0]) == pytest.approx(_minibatch(x, y, 8), rel=1e-12)
    with pytest.raises(ValueError, match="No minibatch"):
        MinibatchCKA(1, 1).compute()
    with pytest.raises(ValueError, match="same examples"):
        MinibatchCKA(1, 1).update([x[:5]], [y[:6]])


# ------------------------------------------------------------------ per-channel statistics


def test_channel_moments_match_numpy_corrcoef_whatever_the_batching():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(13, 4, 3, 5, generator=g) * 3 + 100.0  # large mean: needs stable updates
    b = 0.5 * a + torch.randn(13, 4, 3, 5, generator=g)
    b[:, 3] = 7.0  # constant in B only -> 0
    mom = ChannelMoments(4)
    for lo, hi in ((0, 1), (1, 6), (6, 13)):
        mom.update(a[lo:hi], b[lo:hi])
    r = mom.correlation()
    for c in range(3):
        ref = np.corrcoef(a[:, c].double().flatten().numpy(), b[:, c].double().flatten().numpy())[0, 1]
        assert float(r[c]) == pytest.approx(ref, abs=1e-9)
    assert float(r[3]) == 0.0
    same = ChannelMoments(1)
    z = torch.zeros(5, 1, 2, 2)
    same.update(z, z)  # a dead channel in both models is unchanged
    assert float(same.correlation()[0]) == 1.0


def test_change_score_definition():
    r = torch.tensor([1.0, -1.0, 0.5, float("nan")], dtype=torch.float64)
    j = torch.tensor([1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    d = torch.tensor([0.0, 2.0, 0.1, float("nan")], dtype=torch.float64)
    s = change_score(r, j, d)
    expected = [0.0, 1.0, ((0.25) + 0.5 + 0.05) / 3, 0.0]
    assert s.tolist() == pytest.approx(expected)


# ------------------------------------------------------------------ comparing models


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ).eval()


def _images(n=30, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


LAYERS = ["0", "3", "5"]


def test_identical_models_overlap_one_correlation_one_drift_zero():
    a, b = _net(), _net()
    cmp = compare_models(a, b, _images(), LAYERS, k=4, batch_size=8, progress=False)
    assert set(cmp.channels) == set(LAYERS)
    for name, ch in cmp.channels.items():
        np.testing.assert_allclose(ch.correlation, 1.0, atol=1e-9)
        np.testing.assert_array_equal(ch.jaccard, 1.0)
        np.testing.assert_allclose(ch.drift, 0.0, atol=1e-12)
        np.testing.assert_allclose(ch.score, 0.0, atol=1e-9)
    np.testing.assert_allclose(np.diag(cmp.cka), 1.0, atol=1e-9)


def test_one_perturbed_filter_ranks_first():
    a, b = _net(), _net()
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        b[3].weight[6] = torch.randn(b[3].weight[6].shape, generator=g)  # filter 6 of conv "3"
    imgs = _images(40)
    cmp = compare_models(a, b, imgs, LAYERS, k=5, batch_size=10, progress=False)
    ch = cmp.channels["3"]
    assert int(ch.order[0]) == 6
    assert ch.drift[6] > 0.2 and ch.correlation[6] < 0.9
    others = [c for c in range(8) if c != 6]
    np.testing.assert_allclose(ch.drift[others], 0.0, atol=1e-12)
    np.testing.assert_allclose(ch.correlation[others], 1.0, atol=1e-9)
    # the untouched layer before is unchanged; the correlation is the brute-force one
    np.testing.assert_allclose(cmp.channels["0"].score, 0.0, atol=1e-9)
    with torch.no_grad():
        xa = a[:4](imgs)[:, 6].flatten().double().numpy()
        xb = b[:4](imgs)[:, 6].flatten().double().numpy()
    assert ch.correlation[6] == pytest.approx(np.corrcoef(xa, xb)[0, 1], abs=1e-9)
    # Jaccard against the brute-force top-k sets (k distinct images by max activation)
    with torch.no_grad():
        ma = a[:4](imgs)[:, 6].flatten(1).max(1).values
        mb = b[:4](imgs)[:, 6].flatten(1).max(1).values
    ta, tb = set(ma.argsort(descending=True)[:5].tolist()), set(mb.argsort(descending=True)[:5].tolist())
    assert ch.jaccard[6] == pytest.approx(len(ta & tb) / len(ta | tb))
    assert cmp.most_changed(1)[0]["layer"] == "3" and cmp.most_changed(1)[0]["channel"] == 6


def test_cka_matrix_matches_brute_force_minibatch_on_gap():
    a, b = _net(0), _net(1)  # different weights, same architecture
    imgs = _images(24)
    cmp = compare_models(a, b, imgs, ["3", "5"], ["0", "3", "5"], batch_size=8, progress=False)
    assert cmp.cka.shape == (2, 3)
    feats = lambda m, i: m[: int(i) + 1](imgs).mean((2, 3)).double()  # noqa: E731
    with torch.no_grad():
        for i, la in enumerate(["3", "5"]):
            for j, lb in enumerate(["0", "3", "5"]):
                ref = _minibatch(feats(a, la), feats(b, lb), 8)
                assert cmp.cka[i, j] == pytest.approx(ref, rel=1e-9)


def test_weight_change_tells_apart_what_the_cosine_distance_rounds_to_zero():
    a, b = _net(), _net()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # a gentle fine-tuning: every filter of conv "3" moves by 0.1 % to 3 %
        w = b[3].weight
        steps = torch.linspace(0.001, 0.03, 8)
        for c in range(8):
            noise = torch.randn(w[c].shape, generator=g)
            if c != 5:
                w[c] += steps[c] * w[c].norm() * noise / noise.norm()
        w[5] *= 1.5  # rescaled: cosine distance 0, weight change 50 %
    cmp = compare_models(a, b, _images(12), ["3"], k=3, batch_size=6, progress=False)
    ch = cmp.channels["3"]
    wa, wb = a[3].weight.detach().double().flatten(1), b[3].weight.detach().double().flatten(1)
    ref = ((wb - wa).norm(dim=1) / wa.norm(dim=1)).numpy()
    np.testing.assert_allclose(ch.weight_change, ref, rtol=1e-12)
    assert ch.weight_change[5] == pytest.approx(0.5, rel=1e-6) and ch.drift[5] < 1e-12
    assert ch.drift.max() < 1e-3  # the cosine distance: quadratic, ~0 for every channel
    others = [c for c in range(8) if c != 5]
    assert np.all(np.diff(ch.weight_change[others]) > 0)  # ...the relative change orders them
    row = next(r for r in ch.rows() if r["channel"] == 5)
    assert row["weight_change"] == pytest.approx(0.5, rel=1e-6)


def test_channel_weights_rule():
    net = _net()
    name, w = channel_weights(net, "4", 8)  # a ReLU: the closest conv before it with 8 outputs
    assert name == "3" and w.shape == (8, 6 * 9)
    assert channel_weights(net, "0", 6)[0] == "0"


def test_hooks_removed_after_exception_during_compare():
    a, b = _net(), _net()

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    b[2] = Boom()  # B fails inside the pass, after A and B's first hooks ran
    with pytest.raises(RuntimeError, match="boom"):
        compare_models(a, b, _images(8), LAYERS, batch_size=4, progress=False)
    for net in (a, b):
        for m in net.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks


def test_report_files(tmp_path):
    a, b = _net(), _net()
    with torch.no_grad():
        b[5].weight[2] *= -1.0
    imgs = _images(20)
    cmp = compare_models(a, b, imgs, LAYERS, k=4, batch_size=5, names=("before", "after"),
                         progress=False)
    written = save_report(cmp, tmp_path, images_source=imgs, top=2, settings={"x": 1})
    names = {p.name for p in written}
    assert {"compare.json", "topk_a.pt", "topk_b.pt", "cka.png", "most_changed.png",
            "changed_patches.png"} <= names
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["most_changed"][0]["layer"] == "5" and report["most_changed"][0]["channel"] == 2
    assert report["settings"] == {"x": 1}
    assert len(report["cka"]["matrix"]) == 3
    from PIL import Image

    for png in ("cka.png", "most_changed.png", "changed_patches.png"):
        with Image.open(tmp_path / png) as im:
            assert im.width > 50 and im.height > 50
