"""The captum-topk CLI: mining a folder, resume after SIGKILL, show, layers, filters, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_topk import TopKResult
from captum_topk.cli import main
from ._tolerance import assert_same_records

PY = sys.executable


def _folder(root: Path, n: int = 40, size: int = 72) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        Image.fromarray(arr).save(cls / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18_random.pt"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("data"))


def _mine_args(data, checkpoint, out, *extra):
    return ["mine", "--model", "resnet18", "--checkpoint", str(checkpoint), "--layers",
            "layer1", "layer2", "--data", str(data), "--k", "4", "--batch-size", "4",
            "--input-size", "64", "--out", str(out), "--no-progress", *extra]


def _same(a: TopKResult, b: TopKResult) -> None:
    assert a.n_images == b.n_images
    for layer in a.layers:
        for name, t in a.states[layer].tensors.items():
            assert torch.equal(t, b.states[layer].tensors[name]), (layer, name)
        for c in range(a.num_channels(layer)):
            assert a.records(layer, c) == b.records(layer, c)


def test_mine_show_and_records_name_their_images(tmp_path, data, checkpoint):
    out = tmp_path / "run"
    assert main(_mine_args(data, checkpoint, out)) == 0
    result = TopKResult.load(out / "result.pt")
    assert result.n_images == 40
    rec = result.records("layer2", 3)[0]
    assert rec.image_id.startswith("class") and rec.label == int(rec.image_id[5])
    assert json.loads((out / "run.json").read_text())["spec"]["layers"] == ["layer1", "layer2"]
    assert main(["show", str(out), "--layer", "layer2", "--channels", "0", "3"]) == 0
    sheet = Image.open(out / "layer2_top4.png")  # k=4: named and titled by the real k
    assert sheet.size[0] > 100 and sheet.size[1] > 100
    assert (out / "layer2_top1.png").exists()


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, data, checkpoint):
    full = tmp_path / "full"
    assert main(_mine_args(data, checkpoint, full)) == 0
    cut = tmp_path / "cut"
    env = dict(os.environ, CAPTUM_TOPK_THROTTLE_S="0.3")  # slow batches so the kill lands mid-run
    proc = subprocess.Popen([PY, "-m", "captum_topk", *_mine_args(data, checkpoint, cut, "--snapshot-every", "0")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    snap = cut / "snapshot.pt"
    deadline = time.time() + 120
    seen = 0
    while time.time() < deadline:
        if snap.exists():
            try:
                seen = TopKResult.load(snap).n_images
            except ValueError:
                seen = 0
            if seen >= 8:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 8 <= seen < 40, f"the kill should land mid-run (snapshot had {seen} images)"
    assert not (cut / "result.pt").exists()
    assert main(_mine_args(data, checkpoint, cut, "--resume")) == 0
    _same(TopKResult.load(full / "result.pt"), TopKResult.load(cut / "result.pt"))


def test_resume_with_other_settings_is_refused(tmp_path, data, checkpoint, capsys):
    out = tmp_path / "run"
    assert main(_mine_args(data, checkpoint, out, "--max-images", "8")) == 0
    assert main(_mine_args(data, checkpoint, out, "--resume")) == 2
    assert "--resume refused: other settings: max_images 8 -> None" in capsys.readouterr().err


def test_resume_with_a_replaced_checkpoint_is_refused(tmp_path, data, checkpoint, capsys):
    ckpt = tmp_path / "ft.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "run"
    assert main(_mine_args(data, ckpt, out, "--max-images", "8")) == 0
    assert main(_mine_args(data, ckpt, out, "--max-images", "8", "--resume")) == 0  # same bytes: fine
    torch.manual_seed(1)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict()}, ckpt)
    capsys.readouterr()
    assert main(_mine_args(data, ckpt, out, "--max-images", "8", "--resume")) == 2
    err = capsys.readouterr().err
    assert "--resume refused" in err and "weights file changed" in err


def test_layers_lists_shapes_strides_and_receptive_fields(capsys, checkpoint):
    assert main(["layers", "resnet18", "--checkpoint", str(checkpoint), "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("layer1 "))
    # resnet18 layer1 at 64 px: 64 x 16 x 16, stride 4, receptive field 43 (clipped < 64)
    assert "64x16x16" in line and "4x4" in line and "43x43" in line
    assert any(ln.startswith("fc ") and "whole image" in ln for ln in out.splitlines())


def test_filters_png(tmp_path, checkpoint):
    out = tmp_path / "f.png"
    assert main(["filters", "resnet18", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 7 * 8


def test_clear_errors(tmp_path, capsys, checkpoint):
    assert main(["mine", "--model", "no_such_net", "--out", str(tmp_path / "x")]) == 2
    assert "no_such_net" in capsys.readouterr().err
    assert main(["mine", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "captum-topk mine" in capsys.readouterr().err


def test_layers_listing_gives_channels_last_and_token_layouts():
    from captum_topk.runs import describe_layers

    # an architecture name without checkpoint: listed with random weights (structure only)
    rows = {r["layer"]: r for r in describe_layers("convnext_tiny", input_size=32, all_modules=True)}
    assert rows["features.1.0.block.3"]["layout"] == "NHWC"  # the Linear, (N, H, W, C)
    assert rows["features.1.0.block.3"]["output"] == "8x8x384"
    assert rows["features.1.0.block.3"]["rf"] == rows["features.1.0.block"]["rf"] == "28x28"  # 4x4/4 stem + 7x7 dw
    assert rows["features.1.0.block"]["layout"] == "NCHW" and rows["features.1.0.block"]["stride"] == "4x4"
    vit = {r["layer"]: r for r in describe_layers("vit_b_32")}
    row = vit["encoder.layers.encoder_layer_3"]
    assert (row["layout"], row["output"], row["stride"]) == ("NLC", "50x768", "32x32")
    assert row["rf"] == "token footprint 32x32 (7x7 grid, 1 prefix)"


def test_backend_auto_mines_through_onnxruntime_with_a_cached_export(tmp_path, data, checkpoint, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_ONNX_ROOT", str(tmp_path / "onnx"))
    args = ["--max-images", "12", "--input-size", "64"]
    assert main(_mine_args(data, checkpoint, tmp_path / "torch", "--backend", "torch", *args)) == 0
    assert main(_mine_args(data, checkpoint, tmp_path / "auto", *args)) == 0
    info = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert info["backend"] == info["spec"]["backend"] == "onnxruntime" and "parity" in info["backend_reason"]
    export = Path(info["onnx_export"])
    assert export.parent == tmp_path / "onnx" and export.is_file()
    a, b = TopKResult.load(tmp_path / "torch" / "result.pt"), TopKResult.load(tmp_path / "auto" / "result.pt")
    for layer in ("layer1", "layer2"):  # the same records, up to near ties
        assert_same_records(b, a, layer)
    stamp = export.stat().st_mtime_ns
    assert main(_mine_args(data, checkpoint, tmp_path / "auto2", *args)) == 0
    assert export.stat().st_mtime_ns == stamp  # the export is reused


def test_backend_auto_falls_back_to_pytorch_and_says_why(tmp_path, data, checkpoint, monkeypatch):
    import importlib

    onnx_export = importlib.import_module("captum_topk.onnx.export")  # the module (the package's .export is the function)

    def broken(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::magic' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(onnx_export, "export", broken)
    monkeypatch.setenv("CAPTUM_TOPK_ONNX_ROOT", str(tmp_path / "onnx"))
    with pytest.warns(RuntimeWarning, match="aten::magic"):
        assert main(_mine_args(data, checkpoint, tmp_path / "run", "--max-images", "4", "--input-size", "64")) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["backend"] == "torch" and "aten::magic" in info["backend_reason"]


def test_show_vis_writes_visualizations_beside_the_patches(tmp_path, data, checkpoint, monkeypatch):
    import captum_topk.runs.visualize as runs_vis

    monkeypatch.setitem(runs_vis.VIS_SETTINGS, "steps", 4)
    monkeypatch.setitem(runs_vis.VIS_SETTINGS, "size", 32)
    out = tmp_path / "run"
    assert main(_mine_args(data, checkpoint, out, "--max-images", "8", "--backend", "torch")) == 0
    assert main(["show", str(out), "--layer", "layer1", "--channels", "0", "3", "--vis"]) == 0
    assert (out / "layer1_vis.png").is_file()
    cached = sorted(p.name for p in (out / "featvis").rglob("*.pt"))
    assert len(cached) == 2  # one file per channel, keyed by the weights' digest and the settings


@pytest.mark.parametrize("arch, expected", [
    ("resnet18", ["layer1", "layer2", "layer3"]),
    ("vit_b_16", ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_4",
                  "encoder.layers.encoder_layer_8"]),
    ("regnet_x_400mf", ["trunk_output.block1", "trunk_output.block2", "trunk_output.block3"]),
    ("maxvit_t", ["blocks.0", "blocks.1", "blocks.2"]),              # not the classifier's Sequential
    ("densenet121", ["features.denseblock1", "features.denseblock2", "features.denseblock3"]),
    ("googlenet", ["conv2", "inception3b", "inception4d"]),           # top level, pools / fc left out
    ("vgg11", ["features.3", "features.8", "features.13"]),           # convolutions, not ReLU / pooling
    ("alexnet", ["features.0", "features.3", "features.6"]),
])
def test_default_layers_are_blocks_of_the_trunk(arch, expected):
    from captum_topk.runs.layers import suggest_layers

    kwargs = {"init_weights": False} if arch == "googlenet" else {}
    net = torchvision.models.get_model(arch, **kwargs)
    names = [n for n, _ in net.named_modules() if n]
    assert suggest_layers(names, model=net) == expected
    types = dict(net.named_modules())
    assert not any(isinstance(types[x], (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.BatchNorm2d)) for x in expected)
    wrapped = torch.nn.Sequential()
    wrapped.add_module("backbone", net)            # the same trunk one level down
    assert suggest_layers([n for n, _ in wrapped.named_modules() if n], model=wrapped) == [f"backbone.{x}" for x in expected]


def test_default_layers_of_flat_models_onnx_tensors_and_other_counts():
    from captum_topk.runs.layers import suggest_layers

    flat = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    names = [n for n, _ in flat.named_modules() if n]
    assert suggest_layers(names, model=flat) == ["0", "3", "6"]          # the convolutions
    vit = [n for n, _ in torchvision.models.vit_b_16().named_modules() if n]
    assert suggest_layers(vit, 2) == ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_8"]
    assert len(suggest_layers(vit, 5)) == 5
    mnv2 = torchvision.models.mobilenet_v2()
    assert suggest_layers([n for n, _ in mnv2.named_modules() if n], 2, model=mnv2) == ["features.2", "features.13"]
    onnx = ["/conv1/Conv_output_0", "/layer1/layer1.0/relu/Relu_output_0", "/maxpool/MaxPool_output_0",
            "/avgpool/GlobalAveragePool_output_0"]   # tensors of a graph: its first names
    assert suggest_layers(onnx) == onnx[:3]
