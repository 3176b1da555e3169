"""Streaming per-channel statistics against brute-force twins; miner integration, save / load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from captum_topk import ChannelStats, LayerTopKPatches, TopKResult
from captum_topk.core.accumulators.stats import default_edges, label_histogram

from ._reference import full_activations


# ------------------------------------------------------------------ brute-force twin
def brute_stats(acts: torch.Tensor, edges: torch.Tensor) -> dict:
    """Everything the slow, obvious way: numpy float64, one channel and one bin at a time."""
    a = acts.detach().double().numpy()
    if a.ndim == 2:
        a = a[:, :, None, None]
    e = edges.double().numpy()
    out = {"hist": [], "mean": [], "fpos": [], "count": [], "nan": [], "min": [], "max": []}
    for c in range(a.shape[1]):
        v = a[:, c].reshape(-1)
        nan = np.isnan(v)
        v = v[~nan]
        row = [int(np.sum(v < e[0]))]
        for i in range(len(e) - 1):
            row.append(int(np.sum((v >= e[i]) & (v < e[i + 1]))))
        row.append(int(np.sum(v >= e[-1])))
        out["hist"].append(row)
        out["count"].append(v.size)
        out["nan"].append(int(nan.sum()))
        with np.errstate(invalid="ignore"):  # inf + -inf in one channel: mean NaN, as ours
            out["mean"].append(float(np.mean(v)) if v.size else float("nan"))
        out["fpos"].append(float(np.sum(v > 0)) / v.size if v.size else float("nan"))
        out["min"].append(float(v.min()) if v.size else float("inf"))
        out["max"].append(float(v.max()) if v.size else float("-inf"))
    return out


def assert_matches(stats: ChannelStats, ref: dict) -> None:
    hist = torch.tensor(ref["hist"], dtype=torch.int64)
    assert torch.equal(stats.hist.cpu(), hist)
    assert torch.equal(stats.underflow, hist[:, 0])
    assert torch.equal(stats.overflow, hist[:, -1])
    assert torch.equal(stats.counts, hist[:, 1:-1])
    assert stats.count.tolist() == ref["count"]
    assert stats.nan_count.tolist() == ref["nan"]
    assert stats.fraction_positive.tolist() == pytest.approx(ref["fpos"], abs=0, rel=1e-15, nan_ok=True)
    np.testing.assert_allclose(stats.mean.numpy(), np.array(ref["mean"]), rtol=0, atol=1e-6)
    assert stats.min.tolist() == pytest.approx(ref["min"], abs=0)
    assert stats.max.tolist() == pytest.approx(ref["max"], abs=0)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality, NaN == NaN (inf + -inf sums are NaN on both sides)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        torch.nan_to_num(a, nan=12345.0), torch.nan_to_num(b, nan=12345.0)
    ) and torch.equal(torch.isnan(a), torch.isnan(b))


def _random_acts(n: int, c: int, hw: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g) * 6
    x = torch.where(torch.rand(x.shape, generator=g) < 0.3, torch.zeros_like(x), x)  # many exact 0
    x[:, 0] = torch.round(x[:, 0] * 2) / 2  # values exactly on the 0.5-wide edges
    x[0, 1, 0, 0], x[0, 1, 0, 1] = float("inf"), float("-inf")
    x[1, 1, 0, 0] = 16.0  # the last edge: overflow
    x[1, 1, 0, 1] = -16.0  # the first edge: first bin
    x[2, 1, 0, :] = 1e30
    return x


def test_streaming_equals_brute_force_with_edge_values_and_infinities():
    x = _random_acts(11, 5, 7, seed=0)
    stats = ChannelStats(5)
    for s in range(0, 11, 3):
        stats.update(x[s : s + 3])
    assert stats.n_images == 11
    assert_matches(stats, brute_stats(x, stats.edges))
    assert int(stats.overflow[1]) >= 1 + 7 and int(stats.underflow[1]) >= 1


def test_merged_shards_equal_one_pass_and_brute_force():
    x = _random_acts(14, 4, 5, seed=1)
    edges = torch.linspace(-3, 9, 13)
    one = ChannelStats(4, edges)
    one.update(x[:6]).update(x[6:])
    a, b = ChannelStats(4, edges), ChannelStats(4, edges)
    a.update(x[9:])
    b.update(x[:4]).update(x[4:9])
    merged = a.merge(b)
    assert_matches(merged, brute_stats(x, edges))
    assert torch.equal(merged.hist, one.hist)
    assert torch.equal(merged.positive, one.positive)
    assert merged.n_images == one.n_images == 14


def test_nan_is_counted_apart_and_excluded():
    x = _random_acts(6, 3, 4, seed=2)
    x[0, 2, 1, 1] = float("nan")
    x[3, 2] = float("nan")
    x[4, 0, 0, 0] = float("nan")
    stats = ChannelStats(3, torch.linspace(-10, 10, 21)).update(x[:3]).update(x[3:])
    ref = brute_stats(x, stats.edges)
    assert ref["nan"] == [1, 0, 17]
    assert_matches(stats, ref)


def test_two_d_activations_and_float64_input():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(40, 6, generator=g, dtype=torch.float64) * 3).round(decimals=1)
    stats = ChannelStats(6, torch.linspace(-4, 4, 17)).update(x[:25]).update(x[25:])
    assert_matches(stats, brute_stats(x, stats.edges))


def test_default_edges_and_bad_input():
    e = default_edges()
    assert e.numel() == 65 and float(e[0]) == -16.0 and float(e[-1]) == 16.0 and float(e[32]) == 0.0
    assert torch.equal(default_edges(4, 2.0), torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    for bad in ([1.0], [0.0, 0.0], [1.0, 0.0], [0.0, float("inf")]):
        with pytest.raises(ValueError, match="strictly increasing"):
            ChannelStats(2, bad)
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        ChannelStats(2).update(torch.zeros(3, 4, 5, 5))
    with pytest.raises(ValueError,
                       match=r"other histogram edges \(2 bins over \[0, 1\], not 64 bins over \[-16, 16\]\)"):
        ChannelStats(2).merge(ChannelStats(2, torch.linspace(0, 1, 3)))
    with pytest.raises(ValueError, match="different channels"):
        ChannelStats(2).merge(ChannelStats(3))


def test_payload_round_trip_is_weights_only_safe(tmp_path):
    x = _random_acts(5, 3, 4, seed=4)
    stats = ChannelStats(3, torch.linspace(-5, 5, 11)).update(x)
    torch.save(stats.to_payload(), tmp_path / "s.pt")
    back = ChannelStats.from_payload(torch.load(tmp_path / "s.pt", weights_only=True))
    for name in ("edges", "hist", "sum", "positive", "nan", "min", "max"):
        assert same(getattr(back, name), getattr(stats, name)), name
    assert back.n_images == 5
    with pytest.raises(ValueError, match="missing"):
        ChannelStats.from_payload({"edges": stats.edges})


# ------------------------------------------------------------------ with the miner
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.Flatten(), nn.Linear(5 * 8 * 8, 4),
    ).eval()


def _data(n=17, seed=5):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return images, labels


def _batches(images, labels, bs):
    return [(images[i : i + bs], labels[i : i + bs]) for i in range(0, images.shape[0], bs)]


def _acts(model, layer, batches):
    """Full activations computed with the miner's own batches (conv results depend on the
    batch size in the last ulp, and the min / max must match bit for bit)."""
    module = dict(model.named_modules())[layer]
    return torch.cat([full_activations(model, module, b[0], batch_size=len(b[0])) for b in batches])


LAYERS = ["1", "3", "5"]  # post-ReLU maps, signed maps, a 2-D Linear


def test_miner_stats_equal_brute_force_and_survive_save_load(tmp_path):
    model = _net()
    images, labels = _data()
    edges3 = torch.linspace(-2, 2, 9)
    miner = LayerTopKPatches(model, LAYERS, k=3, stats={"1": True, "3": edges3, "5": None})
    batches = _batches(images, labels, 5)
    result = miner.mine(batches, progress=False)
    for layer in LAYERS:
        acts = _acts(model, layer, batches)
        stats = result.stats(layer)
        assert torch.equal(stats.edges, edges3 if layer == "3" else default_edges())
        assert_matches(stats, brute_stats(acts, stats.edges))
        assert stats.n_images == 17
    result.save(tmp_path / "r.pt")
    back = TopKResult.load(tmp_path / "r.pt")
    for layer in LAYERS:
        for name in ("edges", "hist", "sum", "positive", "nan", "min", "max"):
            assert same(getattr(back.stats(layer), name), getattr(result.stats(layer), name))


def test_results_without_stats_still_load(tmp_path):
    model = _net()
    images, labels = _data()
    result = LayerTopKPatches(model, ["1"], k=2).mine(_batches(images, labels, 8), progress=False)
    assert result.channel_stats == {}
    with pytest.raises(KeyError, match="stats=True"):
        result.stats("1")
    # A file written before statistics existed: no "stats" entry in the header at all.
    payload = result.to_payload()
    header = json.loads(payload["header"])
    del header["stats"]
    payload["header"] = json.dumps(header)
    torch.save(payload, tmp_path / "old.pt")
    old = TopKResult.load(tmp_path / "old.pt")
    assert old.channel_stats == {} and old.records("1", 0) == result.records("1", 0)


def test_shards_merge_exactly_in_miner_and_result():
    model = _net()
    images, labels = _data(n=21, seed=6)
    batches = _batches(images[:9], labels[:9], 4) + _batches(images[9:], labels[9:], 4)
    whole = LayerTopKPatches(model, LAYERS, k=3, stats=True).mine(batches, progress=False)
    halves = []
    for lo, hi in ((0, 9), (9, 21)):
        m = LayerTopKPatches(model, LAYERS, k=3, stats=True)
        for im, lab in _batches(images[lo:hi], labels[lo:hi], 4):
            m.update((im, lab), indices=torch.arange(lo, lo + im.shape[0]))
            lo += im.shape[0]
        halves.append(m)
    merged_miner = halves[0].merge(halves[1]).compute()
    a = LayerTopKPatches(model, LAYERS, k=3, stats=True).mine(_batches(images[:9], labels[:9], 4), progress=False)
    m2 = LayerTopKPatches(model, LAYERS, k=3, stats=True)
    for im, lab in _batches(images[9:], labels[9:], 4):
        m2.update((im, lab), indices=torch.arange(9 + (m2.n_images), 9 + m2.n_images + im.shape[0]))
    merged_result = a.merge(m2.compute())
    for layer in LAYERS:
        ref = brute_stats(_acts(model, layer, batches), default_edges())
        for merged in (merged_miner, merged_result):
            assert_matches(merged.stats(layer), ref)
            assert torch.equal(merged.stats(layer).hist, whole.stats(layer).hist)


def test_mixing_stats_and_no_stats_is_refused():
    model = _net()
    images, labels = _data(n=8)
    with_stats = LayerTopKPatches(model, ["1"], k=2, stats=True).mine(images, progress=False)
    without = LayerTopKPatches(model, ["1"], k=2).mine(images, progress=False)
    with pytest.raises(ValueError, match="same stats option"):
        with_stats.merge(without)
    miner = LayerTopKPatches(model, ["1"], k=2, stats=True)
    with pytest.raises(ValueError, match="same stats option"):
        miner.load_state(without)
    other_edges = LayerTopKPatches(model, ["1"], k=2, stats=torch.linspace(0, 1, 5)).mine(images, progress=False)
    with pytest.raises(ValueError, match="other histogram edges"):
        miner.merge(other_edges)
    with pytest.raises(ValueError, match=r"Statistics of '1' were gathered with other histogram edges "
                                         r"\(64 bins over \[-16, 16\], not 4 bins"):
        other_edges.merge(with_stats)
    with pytest.raises(ValueError, match="not mined"):
        LayerTopKPatches(model, ["1"], k=2, stats={"3": True})


def test_resume_from_snapshot_keeps_exact_stats(tmp_path):
    model = _net()
    images, labels = _data(n=15, seed=7)
    batches = _batches(images, labels, 4)
    whole = LayerTopKPatches(model, ["3"], k=2, stats=True).mine(batches, progress=False)
    first = LayerTopKPatches(model, ["3"], k=2, stats=True)
    for b in batches[:2]:
        first.update(b)
    first.save_state(tmp_path / "snap.pt")
    resumed = LayerTopKPatches(model, ["3"], k=2, stats=True)
    resumed.load_state(tmp_path / "snap.pt")
    result = resumed.mine(batches[2:], progress=False, reset=False)
    assert torch.equal(result.stats("3").hist, whole.stats("3").hist)
    assert torch.equal(result.stats("3").positive, whole.stats("3").positive)
    assert result.stats("3").mean.tolist() == pytest.approx(whole.stats("3").mean.tolist(), abs=1e-12)


def test_label_histogram_of_top_k_images():
    model = _net()
    images, labels = _data(n=19, seed=8)
    result = LayerTopKPatches(model, ["3", "5"], k=4).mine(_batches(images, labels, 6), progress=False)
    with pytest.raises(ValueError, match="num_classes="):  # never guessed from the labels seen
        result.label_histogram("3")
    result.metadata["categories"] = ["a", "b", "c", "d"]  # as the run layer records the model's
    assert result.label_histogram("3", 0).shape == (4,)
    for layer in ("3", "5"):
        full = result.label_histogram(layer, num_classes=3)
        assert full.shape == (result.num_channels(layer), 3)
        for c in range(result.num_channels(layer)):
            expected = [0, 0, 0]
            for i in result.indices(layer)[c].tolist():  # brute force from the raw index table
                expected[int(labels[i])] += 1
            assert full[c].tolist() == expected
            assert result.label_histogram(layer, c, num_classes=3).tolist() == expected
            assert label_histogram(result, layer, c, "bottom", num_classes=5).sum() == 4
