"""Streaming cross-correlation and unit matching across models, against brute-force twins; the
cross-architecture comparison end to end (library, report and CLI)."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from captum_topk.compare import (
    CrossCorrelation,
    UnitMatching,
    compare_models,
    match_layers,
    match_units,
    save_report,
)
from captum_topk.compare.comparison import auto_pairs
from captum_topk.core.accumulators.crosscorr import paired_positions


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ brute-force twins


def _adaptive_pool_loops(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Adaptive average pooling by its definition: bin i covers [floor(i H / h), ceil((i+1) H / h))."""
    n, c, h, w = x.shape
    out = np.empty((n, c, out_h, out_w))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def _samples(x: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N*h*w, C), image-major then row-major cells."""
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def _corr_brute(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    full = np.corrcoef(np.concatenate([xa, xb], axis=1), rowvar=False)
    return full[: xa.shape[1], xa.shape[1]:]


def test_cross_correlation_equals_numpy_corrcoef_sharded_merged_or_one_pass():
    g = _gen(0)
    a = torch.randn(11, 4, 7, 9, generator=g) * 3 + 1000.0  # large mean: needs the stable update
    b = 0.5 * torch.nn.functional.adaptive_avg_pool2d(a[:, :3], (3, 4)) - 999.0 + 0.3 * torch.randn(11, 3, 3, 4, generator=g)
    ref = _corr_brute(_samples(_adaptive_pool_loops(a.double().numpy(), 3, 4)), _samples(b.double().numpy()))
    one = CrossCorrelation(4, 3)
    one.update(a, b)
    shards = [CrossCorrelation(4, 3) for _ in range(3)]
    for acc, (lo, hi) in zip(shards, ((0, 1), (1, 5), (5, 11))):
        acc.update(a[lo:hi], b[lo:hi])
    merged = shards[0].merge(shards[1]).merge(shards[2])
    np.testing.assert_allclose(one.compute().numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(merged.compute().numpy(), ref, atol=1e-9)
    assert merged.samples == one.samples == 11 * 12 and merged.images == 11
    assert abs(ref).max() > 0.5  # a real correlation in the data, not only noise
    # pooled: one sample per image, the global averages
    pooled = CrossCorrelation(4, 3, positions="pooled")
    pooled.update(a, b)
    ref_p = _corr_brute(a.double().mean((2, 3)).numpy(), b.double().mean((2, 3)).numpy())
    np.testing.assert_allclose(pooled.compute().numpy(), ref_p, atol=1e-9)


def test_paired_positions_resample_the_finer_map_to_the_coarser_grid_per_axis():
    g = _gen(1)
    a, b = torch.randn(2, 3, 6, 5, generator=g), torch.randn(2, 4, 4, 8, generator=g)
    xa, xb = paired_positions(a, b)
    assert xa.shape == (2 * 4 * 5, 3) and xb.shape == (2 * 4 * 5, 4)  # grid (min H, min W) = (4, 5)
    np.testing.assert_allclose(xa.numpy(), _samples(_adaptive_pool_loops(a.double().numpy(), 4, 5)), atol=1e-6)
    np.testing.assert_allclose(xb.numpy(), _samples(_adaptive_pool_loops(b.double().numpy(), 4, 5)), atol=1e-6)
    va, vb = paired_positions(a, torch.randn(2, 4, generator=g))  # a vector is a 1 x 1 grid
    np.testing.assert_allclose(va.numpy(), a.double().mean((2, 3)).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="same N"):
        paired_positions(a, b[:1])
    with pytest.raises(ValueError, match="positions"):
        paired_positions(a, b, "nearest")


def test_dead_channels_are_zero_and_flagged():
    g = _gen(2)
    a = torch.randn(6, 3, 4, 4, generator=g)
    a[:, 1] = 2.5  # a constant (dead) unit
    acc = CrossCorrelation(3, 3)
    acc.update(a, a)
    r = acc.compute()
    assert acc.constant_a.tolist() == [False, True, False]
    assert r[1].abs().max() == 0 and r[:, 1].abs().max() == 0
    assert r[0, 0] == pytest.approx(1.0) and r[2, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 samples"):
        CrossCorrelation(2, 2).compute()
    with pytest.raises(ValueError, match=r"\(N, 2, ...\)"):
        CrossCorrelation(2, 2).update(a, a)


def test_state_dict_round_trip_through_torch_save_weights_only(tmp_path):
    g = _gen(3)
    a, b = torch.randn(8, 5, 6, 6, generator=g), torch.randn(8, 2, 3, 3, generator=g)
    first = CrossCorrelation(5, 2)
    first.update(a[:4], b[:4])
    torch.save(first.state_dict(), tmp_path / "xc.pt")
    back = CrossCorrelation.from_state_dict(torch.load(tmp_path / "xc.pt", weights_only=True))
    back.update(a[4:], b[4:])  # resume
    whole = CrossCorrelation(5, 2)
    whole.update(a, b)
    torch.testing.assert_close(back.compute(), whole.compute(), rtol=0, atol=1e-12)
    assert back.images == 8 and back.positions == "resampled"
    with pytest.raises(ValueError, match="different positions"):
        whole.merge(CrossCorrelation(5, 2, positions="pooled"))
    with pytest.raises(TypeError):
        whole.merge(object())  # type: ignore[arg-type]
    whole.reset()
    assert whole.samples == 0 and whole.c_ab.abs().sum() == 0


# ------------------------------------------------------------------ matching


def test_assignment_is_the_best_one_to_one_matching_brute_force():
    rng = np.random.default_rng(4)
    for shape in ((4, 4), (5, 3), (3, 5)):
        r = rng.uniform(-1, 1, shape)
        m = UnitMatching.from_correlation(r)
        ca, cb = shape
        best_total, best = -np.inf, None
        if ca <= cb:
            for cols in itertools.permutations(range(cb), ca):
                total = sum(r[i, j] for i, j in enumerate(cols))
                if total > best_total:
                    best_total, best = total, list(cols)
        else:
            for rows in itertools.permutations(range(ca), cb):
                total = sum(r[i, j] for j, i in enumerate(rows))
                if total > best_total:
                    best_total, best = total, [-1] * ca
                    for j, i in enumerate(rows):
                        best[i] = j
        assert m.assignment.tolist() == best
        matched = m.assignment >= 0
        assert matched.sum() == min(ca, cb)
        np.testing.assert_allclose(m.correlation[matched], r[np.flatnonzero(matched), m.assignment[matched]])
        assert np.isnan(m.correlation[~matched]).all()
        np.testing.assert_array_equal(m.best, r.argmax(1))
        np.testing.assert_allclose(m.best_correlation, r.max(1))
        poor = m.poorly_matched(2)
        worst = int(np.nanargmin(m.correlation))
        assert poor[0]["unit"] == worst and poor[0]["correlation"] == pytest.approx(m.correlation[worst])
        assert poor[0]["correlation"] <= poor[1]["correlation"] and poor[0]["match"] >= 0
        assert m.unmatched() == np.flatnonzero(~matched).tolist()


def _net(width=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(),
        nn.Conv2d(5, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3),
    ).eval()


def _images(n=24, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=_gen(seed))


def test_match_units_recovers_a_permutation_with_scaling_and_bias():
    a = _net(width=8)
    b = copy.deepcopy(a)
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])  # B's channel j is A's channel perm[j]
    scale = torch.linspace(0.5, 3.0, 8)
    with torch.no_grad():
        b[2].weight.copy_(a[2].weight[perm] * scale[:, None, None, None])
        b[2].bias.copy_(a[2].bias[perm] * scale + torch.linspace(-2, 2, 8))
    m = match_units(a, b, _images(), "2", "2", batch_size=7, progress=False)
    inverse = torch.argsort(perm)
    assert m.assignment.tolist() == inverse.tolist()
    np.testing.assert_allclose(m.correlation, 1.0, atol=1e-9)
    np.testing.assert_array_equal(m.best, m.assignment)
    assert m.samples == 24 * 8 * 8 and m.images == 24 and m.matrix.shape == (8, 8)
    # pooled positions: the same permutation, from 24 samples
    mp = match_units(a, b, _images(), "2", "2", positions="pooled", progress=False, keep_matrix=False)
    assert mp.assignment.tolist() == inverse.tolist() and mp.matrix is None and mp.samples == 24


def test_match_units_gives_back_models_in_mixed_modes_unchanged():
    a, b = _net(width=4), _net(width=4, seed=1)
    a.train()
    a[2].eval()  # one layer in eval inside a training model
    modes = [m.training for m in a.modules()], [m.training for m in b.modules()]
    m = match_units(a, b, _images(8), "2", "2", progress=False)
    assert m.images == 8
    assert ([m.training for m in a.modules()], [m.training for m in b.modules()]) == modes


class _Up(nn.Module):
    """B: A's first conv, then upsampled x2 (a finer grid than A's layer)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.mix = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.mix(self.up(self.conv(x)))


def test_resampling_between_grid_sizes_matches_brute_force():
    a = _net()
    b = _Up(copy.deepcopy(a[0])).eval()
    imgs = _images(10, size=15)  # A's "0" is 15 x 15, B's "mix" 30 x 30
    m = match_units(a, b, imgs, "0", "mix", batch_size=4, progress=False)
    with torch.no_grad():
        xa = a[0](imgs).double().numpy()
        xb = _adaptive_pool_loops(b(imgs).double().numpy(), 15, 15)
    np.testing.assert_allclose(m.matrix, _corr_brute(_samples(xa), _samples(xb)), atol=1e-9)
    assert m.samples == 10 * 15 * 15


def test_input_map_b_is_applied_to_b_only():
    a = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3)).eval()
    b = copy.deepcopy(a)
    imgs = _images(8)
    same = match_units(a, b, imgs, "1", "1", progress=False)
    np.testing.assert_allclose(np.diag(same.matrix), 1.0, atol=1e-9)
    mapped = match_units(a, b, imgs, "1", "1", input_map_b=lambda x: x - 1.0, progress=False)
    with torch.no_grad():  # A sees the images, B the images - 1: ReLU makes them differ
        xa, xb = a(imgs).double().numpy(), b(imgs - 1.0).double().numpy()
    np.testing.assert_allclose(mapped.matrix, _corr_brute(_samples(xa), _samples(xb)), atol=1e-9)
    assert np.abs(np.diag(mapped.matrix) - 1.0).max() > 1e-3


def test_hooks_removed_after_an_exception_and_modes_restored():
    a, b = _net(), _net(seed=1)

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    b[1] = Boom()
    a.train()
    with pytest.raises(RuntimeError, match="boom"):
        match_units(a, b, _images(8), "2", "2", batch_size=4, progress=False)
    for net in (a, b):
        for mod in net.modules():
            assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert a.training and not b.training
    with pytest.raises(ValueError, match="Unknown layer"):
        match_units(a, b, _images(8), "2", "nope", progress=False)


def test_match_layers_one_pass_for_several_pairs_and_stops_after_the_deepest_layer():
    a, b = _net(), _net(seed=2)
    calls = {"head": 0}
    b[6].register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    out = match_layers(a, b, _images(12), ["0:0", ("2", "2"), ("2", "0")], batch_size=6, progress=False)
    assert list(out) == [("0", "0"), ("2", "2"), ("2", "0")]
    assert calls["head"] == 0  # B's forward never reached its head
    assert out[("0", "0")].matrix.shape == (5, 5) and out[("2", "0")].matrix.shape == (6, 5)
    single = match_units(a, b, _images(12), "2", "2", batch_size=5, progress=False)
    np.testing.assert_allclose(out[("2", "2")].matrix, single.matrix, atol=1e-12)


# ------------------------------------------------------------------ across architectures


class _OtherNet(nn.Module):
    """Another architecture: 5x5 stem, pooling, a branch-and-concat block."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.left = nn.Conv2d(4, 3, 1)
        self.right = nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(torch.cat([self.left(x), self.right(x)], 1))
        return self.head(x.mean((2, 3)))


def test_auto_pairs_greedy_distinct_layers():
    cka = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.3], [0.1, 0.7, 0.6]])
    assert auto_pairs(cka, ["a0", "a1", "a2"], ["b0", "b1", "b2"], 3) == [("a0", "b0"), ("a2", "b1"), ("a1", "b2")]
    assert auto_pairs(cka, ["a0", "a1", "a2"], ["b0", "b1", "b2"], 1) == [("a0", "b0")]


def test_compare_models_across_architectures_end_to_end(tmp_path):
    a, b = _net(), _OtherNet().eval()
    imgs = _images(20)
    cmp = compare_models(a, b, imgs, ["1", "3"], ["stem", "right", "head"][:2], k=4, batch_size=5,
                         names=("net", "other"), progress=False, measures=["cka", "procrustes", "svcca", "pwcca"],
                         permutations=3, match=["1:stem", "3:right"])
    assert cmp.channels == {} and not cmp.same_architecture  # no per-channel ranking across architectures
    assert set(cmp.similarity) == {"cka", "procrustes", "svcca", "pwcca"}
    # the measures' pooled representations are the layers' global averages
    with torch.no_grad():
        pa = a[:2](imgs).mean((2, 3)).double()
        pb = b.stem(imgs).mean((2, 3)).double()
    from captum_topk.compare import linear_cka

    assert cmp.similarity["cka"].value[0, 0] == pytest.approx(float(linear_cka(pa, pb)), rel=1e-6)
    m = cmp.matchings[("1", "stem")]  # A: 5 units at 16 x 16, B: 4 units at 8 x 8
    with torch.no_grad():
        xa = _adaptive_pool_loops(a[:2](imgs).double().numpy(), 8, 8)
        xb = b.stem(imgs).double().numpy()
    np.testing.assert_allclose(m.matrix, _corr_brute(_samples(xa), _samples(xb)), atol=1e-6)
    assert (m.assignment == -1).sum() == 1  # 5 units of A, 4 of B
    written = {p.name for p in save_report(cmp, tmp_path, images_source=imgs, top=2)}
    assert {"compare.json", "cka.png", "similarity.png", "matched_1__stem.png", "matched_3__right.png"} <= written
    report = json.loads((tmp_path / "compare.json").read_text())
    sim = report["similarity"]["measures"]["procrustes"]
    assert len(sim["matrix"]) == 2 and len(sim["chance_p95"][0]) == 2 and sim["permutations"] == 3
    assert sim["invariances"]["orthogonal"] is True
    match = report["matching"][0]
    assert match["layer_a"] == "1" and match["layer_b"] == "stem"
    assert len(match["unmatched"]) == 1 and match["assignment"][match["unmatched"][0]] == -1
    assert match["poorly_matched"][0]["correlation"] == pytest.approx(np.nanmin(m.correlation))
    assert match["mean_correlation"] == pytest.approx(m.mean_correlation)
    with pytest.raises(ValueError, match="must be compared"):
        compare_models(a, b, imgs, ["1"], ["stem"], match=["3:stem"], progress=False)


def test_compare_models_auto_match_takes_the_highest_cka_pairs():
    a, b = _net(), _OtherNet().eval()
    cmp = compare_models(a, b, _images(16), ["1", "3"], ["stem", "right"], k=3, batch_size=8,
                         progress=False, match="auto", match_top=2)
    assert list(cmp.matchings) == auto_pairs(cmp.cka, ["1", "3"], ["stem", "right"], 2)
    assert len(cmp.matchings) == 2 and not math.isnan(next(iter(cmp.matchings.values())).mean_correlation)


def _have(*names):
    from captum_topk.models.registry import list_models

    return all(n in list_models() for n in names)


@pytest.mark.slow  # two real models (~5 s)
@pytest.mark.skipif(not _have("mobilenet_v2-imagenet", "efficientnet_lite0-imagenet"),
                    reason="needs the packaged MobileNetV2 and EfficientNet-Lite0 weights")
def test_cli_compare_two_architectures_with_other_normalisations(tmp_path, capsys):
    from captum_topk.cli.main import main

    out = tmp_path / "cmp"
    assert main(["compare", "mobilenet_v2-imagenet", "efficientnet_lite0-imagenet", "--data", "demo",
                 "--max-images", "12", "--input-size", "48", "--resize-size", "48",
                 "--layers", "features.2", "features.4", "--layers-b", "_blocks.1", "_blocks.3",
                 "--k", "3", "--batch-size", "6", "--permutations", "3", "--measures", "cka", "svcca",
                 "--match", "features.4:_blocks.3", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["channels"] == {} and report["n_images"] == 12
    assert set(report["similarity"]["measures"]) == {"cka", "svcca"}
    (match,) = report["matching"]
    assert (match["layer_a"], match["layer_b"]) == ("features.4", "_blocks.3")
    assigned = match["assignment"]  # 32 units of A, each matched to a different one of B's 40
    assert len(assigned) == 32 and len(set(assigned)) == 32 and all(0 <= v < 40 for v in assigned)
    from captum_topk.utils.naming import slug

    assert (out / f"matched_{slug('features.4')}__{slug('_blocks.3')}.png").exists()
    printed = capsys.readouterr().out
    assert "matched features.4 -> _blocks.3: mean r" in printed and "svcca:" in printed


def test_chance_level_pairs_each_image_with_another():
    a = _net(width=8)
    b = copy.deepcopy(a)
    imgs = _images(12)
    m = match_units(a, b, imgs, "2", "2", batch_size=6, chance=True, progress=False)
    assert m.mean_correlation == pytest.approx(1.0)
    with torch.no_grad():  # the twin: within each batch of 6, image i against image i - 3 of B
        xa = a[:3](imgs).double().numpy()
        xb = np.concatenate([np.roll(a[:3](imgs[s:s + 6]).double().numpy(), 3, axis=0) for s in (0, 6)])
    ref = UnitMatching.from_correlation(_corr_brute(_samples(xa), _samples(xb)))
    assert m.chance_correlation == pytest.approx(ref.mean_correlation, abs=1e-9)
    assert m.chance_best_correlation == pytest.approx(ref.mean_best_correlation, abs=1e-9)
    assert m.chance_correlation < 0.5
    assert math.isnan(match_units(a, b, imgs, "2", "2", progress=False).chance_correlation)


def test_compare_models_chance_groups_are_passed_to_the_baselines():
    from captum_topk.compare import similarity

    a, b = _net(), _OtherNet().eval()
    imgs = _images(16)
    groups = np.repeat(np.arange(8), 2)  # e.g. two augmented views per photo
    cmp = compare_models(a, b, imgs, ["3"], ["right"], k=2, batch_size=8, progress=False,
                         measures=["cka"], permutations=4, groups=groups)
    with torch.no_grad():
        pa, pb = a[:4](imgs).mean((2, 3)), b.right(b.stem(imgs)).mean((2, 3))
    ref = similarity(pa, pb, "cka", permutations=4, seed=0, groups=groups)
    m = cmp.similarity["cka"]
    assert m.value[0, 0] == pytest.approx(ref.value, rel=1e-6)
    assert m.chance_mean[0, 0] == pytest.approx(ref.chance_mean, rel=1e-6)
    assert m.chance_high[0, 0] == pytest.approx(ref.chance_high, rel=1e-6)
