"""The command line on models of other libraries: ``--model timm:NAME``, ``hf:DIR``,
``package.module:factory`` and ``--onnx FILE``; ``captum-topk show`` draws their runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captum_topk.cli.main import main
from captum_topk.runs.folder import open_run

from ._models import save_hf_vit, tiny_hf_vit

pytest.importorskip("timm")
pytest.importorskip("transformers")

FACTORY = "tests._models:tiny_timm_vit"


@pytest.fixture(autouse=True)
def _onnx_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_ONNX_ROOT", str(tmp_path / "onnx_models"))
    monkeypatch.chdir(tmp_path)


def _mine(*args: str) -> Path:
    assert main(["mine", "--data", "demo", "--no-progress", "--k", "3", *args]) == 0
    out = Path(args[args.index("--out") + 1])
    assert (out / "result.pt").is_file()
    return out


def _show(run: Path, *args: str) -> list:
    before = set(run.glob("*.png"))
    assert main(["show", str(run), "--max-channels", "3", *args]) == 0
    return sorted(set(run.glob("*.png")) - before)


def _spec(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["spec"]


def test_timm_model_mines_and_shows(tmp_path):
    run = _mine("--model", "timm:resnet18d", "--max-images", "4", "--input-size", "64", "--backend", "torch",
                "--layers", "layer1", "layer3", "--out", str(tmp_path / "t"))
    spec = _spec(run)
    assert spec["model"] == "timm:resnet18d" and spec["weights_sha1"] is None  # seeded random weights
    opened = open_run(run)
    assert opened.result.layers == ["layer1", "layer3"] and opened.result.n_images == 4
    # a reopened run has the model that mined it (seeded): its top record is reproduced
    rec = opened.result.records("layer3", 0)[0]
    maps = opened.result.activation_maps(opened.image_source(), "layer3", 0, model=opened.model, n=1)
    assert float(maps[0, rec.y, rec.x]) == pytest.approx(rec.value, rel=1e-5, abs=1e-5)
    pngs = [p.name for p in _show(run, "--overlay")]
    assert {"layer1_top3.png", "layer3_top3.png", "layer3_top3_overlay.png"} <= set(pngs)


def test_hf_folder_mines_through_onnxruntime_and_resume_sees_new_weights(tmp_path, capsys):
    folder = save_hf_vit(tmp_path / "vit-folder")
    run = _mine("--model", f"hf:{folder}", "--max-images", "4", "--layers", "vit.layers.1",
                "--out", str(tmp_path / "h"))
    spec = _spec(run)
    assert spec["model"] == f"hf:{Path(folder).resolve()}" and spec["backend"] == "onnxruntime"
    assert spec["weights_sha1"] is not None
    opened = open_run(run)
    assert opened.info.input_size == (32, 32)
    assert opened.result.layers == ["vit.layers.1", "vit.layers.1[prefix]"]  # 16 patch tokens + the class token
    assert opened.result.states["vit.layers.1"].out_size == (4, 4)
    assert any(p.name == "vit_layers_1_top3.png" for p in _show(run, "--overlay"))
    # other weights under the same folder: resume refuses with the reason
    other = tiny_hf_vit()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    other.save_pretrained(folder)
    assert main(["mine", "--model", f"hf:{folder}", "--data", "demo", "--max-images", "4", "--k", "3",
                 "--layers", "vit.layers.1", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "weights file changed" in capsys.readouterr().err


def test_factory_model_mines_and_layers_are_listed(tmp_path, capsys):
    run = _mine("--model", FACTORY, "--max-images", "4", "--backend", "torch", "--layers", "blocks.0", "blocks.1",
                "--out", str(tmp_path / "f"))
    spec = _spec(run)
    assert spec["model"] == FACTORY and spec["weights_sha1"]  # the factory's module file
    assert open_run(run).info.input_size == (32, 32)  # timm's patch_embed.img_size
    assert _show(run)
    capsys.readouterr()
    for model in (FACTORY, "timm:resnet18d"):
        assert main(["layers", model]) == 0
        out = capsys.readouterr().out
        assert ("blocks.1" in out) if model == FACTORY else ("layer4" in out)


def test_hf_and_onnx_layers_listing(tmp_path, capsys):
    folder = save_hf_vit(tmp_path / "vit-folder")
    assert main(["layers", f"hf:{folder}"]) == 0
    out = capsys.readouterr().out
    assert "vit.layers.0" in out and "NLC" in out


def test_onnx_file_mines_and_overlays_through_onnxruntime(tmp_path, capsys):
    onnx_file = tmp_path / "vit.onnx"
    assert main(["export", FACTORY, "--layers", "blocks.0", "--out", str(onnx_file), "--no-progress"]) == 0
    run = _mine("--onnx", str(onnx_file), "--max-images", "4", "--out", str(tmp_path / "o"))
    spec = _spec(run)
    assert spec["onnx"] == str(onnx_file.resolve()) and spec["model"] == "" and spec["backend"] == "onnxruntime"
    opened = open_run(run)
    assert not opened.has_torch_model
    # the maps come from ONNX Runtime and hold the records' values at their positions
    rec = opened.result.records("blocks.0", 1)[0]
    maps = opened.result.activation_maps(opened.image_source(), "blocks.0", 1,
                                         model=opened.activation_source(["blocks.0"]))
    assert float(maps[0, rec.y, rec.x]) == pytest.approx(rec.value, rel=1e-5, abs=1e-6)
    assert "blocks_0_top3_overlay.png" in [p.name for p in _show(run, "--overlay", "--layer", "blocks.0")]
    from captum_topk.dashboard.views import channel_overlays  # the dashboard's Top-k page draws them too

    assert channel_overlays(opened, "blocks.0", 1).shape == (3, 32, 32, 3)
    # an ONNX file given as --model is mined the same way
    again = _mine("--model", str(onnx_file), "--max-images", "4", "--out", str(tmp_path / "o2"))
    assert _spec(again)["onnx"] == spec["onnx"]
    assert torch.equal(open_run(again).result.values("blocks.0"), opened.result.values("blocks.0"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["timm:resnet18d", "timm:vit_tiny_patch16_224"])
def test_acceptance_commands(tmp_path, model):
    run = _mine("--model", model, "--max-images", "8", "--out", str(tmp_path / "t"))
    assert any(p.name.endswith("_top3.png") for p in _show(run))
