"""The evaluation protocol of transfer learning: three-way (grouped) splits, the epoch chosen on
validation, the test split read once at the end (tiny models, synthetic data: fast)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from captum_topk.data.elpv import elpv_available
from captum_topk.transfer import (classification_metrics, evaluate, finetune, fit_linear_head,
                                  stratified_split, train_val_test_split)
from captum_topk.transfer.split import _stratified_folds

needs_elpv = pytest.mark.skipif(
    not elpv_available(),
    reason="the ELPV solar-cell set is not installed: pip install --no-deps elpv-dataset==1.0.0.post1")


def _labels(n=301, k=3, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


# ------------------------------------------------------------------ splits


def _two_way_twin(labels, val_fraction, seed):
    """The two-way split by its definition (brute-force twin): per class in order, a seeded
    permutation; its first round(n * fraction) items (at least 1, at most n - 1) validate."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in sorted(set(y[y >= 0].tolist())):
        idx = [i for i in range(len(y)) if y[i] == c]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        n_val = min(max(int(round(len(idx) * val_fraction)), 1), len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


@pytest.mark.parametrize("fraction,seed", [(0.25, 0), (0.1, 3), (0.5, 7)])
def test_two_way_split_equals_its_definition(fraction, seed):
    labels = _labels().tolist() + [-1, -1]
    tr, va = stratified_split(labels, fraction, seed=seed)
    ref_tr, ref_va = _two_way_twin(labels, fraction, seed)
    assert tr.tolist() == ref_tr and va.tolist() == ref_va
    assert tr.dtype == np.int64 and va.dtype == np.int64


def test_three_way_split_is_disjoint_stratified_and_deterministic():
    labels = _labels().tolist() + [-1] * 4
    y = np.asarray(labels)
    tr, va, te = train_val_test_split(labels, 0.2, 0.15, seed=4)
    again = train_val_test_split(labels, 0.2, 0.15, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert set(tr) | set(va) | set(te) == set(np.flatnonzero(y >= 0))  # -1 items left out
    for c in range(3):
        n_c = int((y == c).sum())
        assert int((y[te] == c).sum()) == round(n_c * 0.15)
        assert int((y[va] == c).sum()) == round(n_c * 0.2)
    assert not np.array_equal(te, train_val_test_split(labels, 0.2, 0.15, seed=5)[2])
    # a class of three still reaches every split
    tiny = [0] * 20 + [1] * 3
    tr, va, te = train_val_test_split(tiny, 0.1, 0.1, seed=0)
    assert all(1 in np.asarray(tiny)[s] for s in (tr, va, te))


def test_split_errors_say_what_to_change():
    with pytest.raises(ValueError, match="sum must be below 1"):
        train_val_test_split([0, 1] * 10, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        stratified_split([0, 1] * 10, 1.5)
    with pytest.raises(ValueError, match="one group per item"):
        train_val_test_split([0, 1] * 10, groups=[0] * 19)
    with pytest.raises(ValueError, match="cannot fill 3 splits"):
        train_val_test_split([0, 1] * 10, groups=[0] * 10 + [1] * 10)


def _grouped_data(seed=0):
    """40 groups of 5-20 items whose defect share varies a lot (as ELPV modules do)."""
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for g in range(40):
        n, p = int(rng.integers(5, 21)), float(rng.uniform(0.0, 0.9))
        groups += [f"module-{g}"] * n
        labels += (rng.uniform(size=n) < p).astype(int).tolist()
    return np.asarray(labels), np.asarray(groups)


def test_grouped_split_keeps_groups_whole_and_balances_classes():
    y, g = _grouped_data()
    tr, va, te = train_val_test_split(y, 0.2, 0.2, seed=1, groups=g)
    assert not (set(g[tr]) & set(g[va]) or set(g[tr]) & set(g[te]) or set(g[va]) & set(g[te]))
    assert len(tr) + len(va) + len(te) == len(y)
    assert np.array_equal(te, train_val_test_split(y, 0.2, 0.2, seed=1, groups=g)[2])
    assert not np.array_equal(te, train_val_test_split(y, 0.2, 0.2, seed=2, groups=g)[2])
    # every split's count of each class is within one (largest) group of its target
    biggest = max(np.bincount(np.unique(g, return_inverse=True)[1]))
    for split, f in ((tr, 0.6), (va, 0.2), (te, 0.2)):
        for c in (0, 1):
            assert abs(int((y[split] == c).sum()) - f * int((y == c).sum())) <= biggest
    # the class balance beats a random assignment of whole groups by far
    def imbalance(splits):
        return sum(abs(y[s].mean() - y.mean()) for s in splits)

    rng = np.random.default_rng(0)
    names = np.unique(g)
    random_scores = []
    for _ in range(50):
        pick = rng.permutation(names)
        parts = [np.flatnonzero(np.isin(g, pick[a:b])) for a, b in ((0, 24), (24, 32), (32, 40))]
        random_scores.append(imbalance(parts))
    assert imbalance((tr, va, te)) < np.percentile(random_scores, 10)


def test_grouped_split_of_singleton_groups_hits_the_targets():
    # analytic twin: with one item per group, the greedy matches every class count to its
    # target to within one item
    y = _labels(200, 2, seed=3)
    tr, va, te = train_val_test_split(y, 0.25, 0.15, seed=0, groups=np.arange(len(y)))
    for split, f in ((tr, 0.6), (va, 0.25), (te, 0.15)):
        for c in (0, 1):
            assert abs(int((y[split] == c).sum()) - f * int((y == c).sum())) <= 1
    two = stratified_split(y, 0.25, seed=0, groups=np.arange(len(y)))
    assert sum(map(len, two)) == len(y) and not set(two[0]) & set(two[1])


def test_grouped_cross_validation_folds_keep_groups_whole():
    y, g = _grouped_data(seed=4)
    folds = _stratified_folds(y, 3, 0, groups=g)
    assert sorted(itertools.chain(*map(list, folds))) == list(range(len(y)))
    for a, b in itertools.combinations(folds, 2):
        assert not set(g[a]) & set(g[b])
    x = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 0] += 2 * torch.as_tensor(y)
    _, info = fit_linear_head(x, y, 2, groups=g, max_iter=5)
    assert info["l2"] in (1000.0, 100.0, 10.0, 1.0) and info["cv_accuracy"]
    with pytest.raises(ValueError, match="groups has"):
        fit_linear_head(x, y, 2, groups=g[:-1], max_iter=5)


@needs_elpv
def test_elpv_modules_are_the_44_panels():
    from captum_topk.data.elpv import _labels_csv, _read_labels, elpv_modules

    modules = elpv_modules()
    kinds = np.asarray([kind for _, _, kind in _read_labels(_labels_csv())])
    assert modules.shape == (2624,) and modules.min() == 0 and modules.max() == 43
    assert np.all(np.diff(modules) >= 0) and np.all(np.diff(modules) <= 1)  # contiguous blocks
    per_module = [set(kinds[modules == m]) for m in range(44)]
    assert all(len(k) == 1 for k in per_module)  # one cell type per module
    assert sum(k == {"mono"} for k in per_module) == 18  # Deitsch et al.: 18 mono, 26 poly
    sizes = np.bincount(modules)
    assert sizes.max() == 72 and sizes.min() == 48 and (sizes == 60).sum() == 40


# ------------------------------------------------------------------ choose on val, test once


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


class _Logged(torch.utils.data.Dataset):
    """Bright-vs-dark images; records which items were read, in order."""

    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = [i % 2 for i in range(n)]
        self.images = torch.randn(n, 3, 12, 12, generator=g) * 0.5 + torch.tensor(
            self.labels, dtype=torch.float32).view(-1, 1, 1, 1) * 1.5
        self.log = []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.log.append(int(i))
        return self.images[i], self.labels[i], f"img{i:03d}"


def test_epoch_is_chosen_on_validation_and_test_is_read_once_at_the_end(tmp_path):
    data = _Logged()
    reference = _Logged()  # same images, unlogged: for the brute-force twins
    tr, va, te = train_val_test_split(data.labels, 0.25, 0.25, seed=0)
    seen_before_end = []
    per_epoch = {}
    sabotage = {}

    def on_epoch_end(epoch, net, record):
        assert "test" not in record
        seen_before_end.extend(data.log)
        per_epoch[epoch] = {"val": evaluate(net, reference, va), "test": evaluate(net, reference, te),
                            "state": {k: v.clone() for k, v in net.state_dict().items()}}
        if epoch == 1:  # wreck the head: later epochs (lr 0) answer "dark" for every image
            with torch.no_grad():
                net.classifier.weight.zero_()
                net.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
            sabotage["done"] = True

    res = finetune(_Tiny(), data, tr, va, ["dark", "bright"], unfreeze=1, epochs=3, lr=0.0,
                   head_lr=0.0, batch_size=8, flip=False, probe_l2=1.0, test_index=te,
                   out=tmp_path / "tiny-finetuned.pt", meta={"arch": "tiny"}, progress=False,
                   on_epoch_end=on_epoch_end)
    # the test images were not read before every epoch was scored and chosen
    assert sabotage and not set(seen_before_end) & set(te.tolist())
    assert set(data.log) & set(te.tolist()) == set(te.tolist())
    # every epoch's validation figure is the model's on the validation split
    for h in res.history:
        assert h["val"]["accuracy"] == pytest.approx(per_epoch[h["epoch"]]["val"]["accuracy"])
        assert h["val"]["confusion"] == per_epoch[h["epoch"]]["val"]["confusion"]
    accs = [h["val"]["accuracy"] for h in res.history]
    assert accs[0] > 0.9 and accs[1] == accs[2] == 0.5  # the sabotage shows on validation
    assert res.selected_epoch == 1 == int(np.argmax(accs)) + 1
    # the final model is epoch 1's weights (restored), not the last epoch's
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, per_epoch[1]["state"][k]), k
    assert res.final["val"] == res.history[0]["val"] and res.final["selected_by"] == "val accuracy"
    # test figures: the chosen model's and the probe's, computed on the test split
    assert res.final["test"]["confusion"] == per_epoch[1]["test"]["confusion"]
    assert res.probe["test"]["confusion"] == evaluate(res.probe_model, reference, te)["confusion"]
    # the checkpoint and the summary carry the choice, validation and test separately
    raw = torch.load(tmp_path / "tiny-finetuned.pt", map_location="cpu", weights_only=True)
    assert raw["epoch"] == 1 and raw["selection"] == {"epoch": 1, "selected_by": "val accuracy"}
    assert raw["metrics"]["val"] == res.final["val"] and raw["metrics"]["test"] == res.final["test"]
    assert raw["metrics"]["linear_probe_test"] == res.probe["test"]
    assert raw["split"]["test_index"] == te.tolist() and raw["split"]["val_index"] == va.tolist()
    for k, v in raw["state_dict"].items():
        assert torch.equal(v, per_epoch[1]["state"][k]), k
    epoch3 = torch.load(tmp_path / "tiny-finetuned-epoch03.pt", map_location="cpu", weights_only=True)
    assert "test" not in epoch3["metrics"] and epoch3["metrics"]["val"] == res.history[2]["val"]
    probe_ckpt = torch.load(res.probe_checkpoint, map_location="cpu", weights_only=True)
    assert probe_ckpt["metrics"]["test"] == res.probe["test"]


def test_select_last_and_loss_and_no_test_split():
    data = _Logged(n=40, seed=1)
    tr, va, te = train_val_test_split(data.labels, 0.25, 0.25, seed=1)
    res = finetune(_Tiny(), data, tr, va, ["dark", "bright"], unfreeze=2, epochs=3, lr=0.05,
                   head_lr=0.05, optimizer="sgd", batch_size=8, flip=False, probe_l2=1.0,
                   select="last", progress=False)
    assert res.selected_epoch == 3 and res.final["test"] is None and res.probe["test"] is None
    assert len(res.test_index) == 0 and set(data.log).isdisjoint(te.tolist())
    assert res.final["val"] == res.history[-1]["val"]
    res = finetune(_Tiny(), data, tr, va, ["dark", "bright"], unfreeze=2, epochs=3, lr=0.05,
                   head_lr=0.05, optimizer="sgd", batch_size=8, flip=False, probe_l2=1.0,
                   select="loss", test_index=te, progress=False)
    losses = [h["val"]["loss"] for h in res.history]
    assert res.selected_epoch == int(np.argmin(losses)) + 1
    assert res.final["test"]["loss"] == pytest.approx(evaluate(res.model, data, te)["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="share 2 image"):
        finetune(_Tiny(), data, tr, np.concatenate([va, tr[:2]]), ["a", "b"], epochs=0,
                 progress=False)
    with pytest.raises(ValueError, match="select must be one of"):
        finetune(_Tiny(), data, tr, va, ["a", "b"], select="test", progress=False)


def test_evaluate_matches_a_plain_forward_and_restores_the_mode():
    data = _Logged(n=20)
    net = _Tiny().train()
    net.classifier = nn.Linear(8, 2)
    idx = [3, 5, 8, 13, 19]
    m = evaluate(net, data, idx, batch_size=2)
    assert net.training  # mode restored
    with torch.no_grad():
        net.eval()
        ref = classification_metrics(net(data.images[idx]), torch.tensor([data.labels[i] for i in idx]))
    assert m == ref
