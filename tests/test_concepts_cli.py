"""``captum-topk concepts learn | show | compare`` on a tiny world (random ResNet-18 at 64 px,
16 images): the files equal what the library makes, show renders the concept layer of a run
mined with the concepts (and refuses a run mined without them), compare prints the matching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_topk.cli import main
from captum_topk.cli.main import build_parser
from captum_topk.concepts import Concepts, learn_concepts, match_concepts
from captum_topk.data.descriptor import open_dataset
from captum_topk.runs.models import load_run_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts_cli")
    rng = np.random.default_rng(0)
    for i in range(16):
        d = root / "data" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(d / f"i{i:02d}.png")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), root / "r18.pt")
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), root / "r18b.pt")
    return root


def _model_args(world: Path, checkpoint: str = "r18.pt"):
    return ["--model", "resnet18", "--checkpoint", str(world / checkpoint), "--data", str(world / "data"),
            "--input-size", "64", "--batch-size", "8"]


def _learn(world: Path, method: str, out: Path, *extra: str) -> Concepts:
    assert main(["concepts", "learn", *_model_args(world), "--layer", "layer2", "--method", method, "--n", "4",
                 "--out", str(out), "--no-progress", *extra]) == 0
    return Concepts.load(out)


@pytest.fixture(scope="module")
def files(world):
    return {"nmf": _learn(world, "nmf", world / "nmf4.pt"), "pca": _learn(world, "pca", world / "pca4.pt")}


def test_learn_writes_what_the_library_learns(world, files, capsys):
    model, info = load_run_model("resnet18", str(world / "r18.pt"), 64)
    dataset, _ = open_dataset(str(world / "data"), info.transform)
    for method in ("nmf", "pca"):
        direct = learn_concepts(model, "layer2", dataset, method=method, n_concepts=4, progress=False, batch_size=8)
        saved = files[method]
        assert (saved.layer, saved.method, saved.name, saved.n_concepts, saved.channels) == \
            ("layer2", method, f"{method}4", 4, 128)
        torch.testing.assert_close(saved.directions, direct.directions, rtol=1e-4, atol=1e-5)
    assert main(["concepts", "show", str(world / "nmf4.pt")]) == 0
    out = capsys.readouterr().out
    assert "4 nmf concepts of layer2 (128 channels)" in out and "'layer2:nmf4'" in out


def test_learn_takes_mines_model_data_and_layout_options():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    learn = sub["concepts"]._actions[-1].choices["learn"]
    mine_opts = {s for a in sub["mine"]._actions for s in a.option_strings}
    learn_opts = {s for a in learn._actions for s in a.option_strings}
    shared = {"--model", "--checkpoint", "--data", "--max-images", "--batch-size", "--input-size", "--random-init",
              "--layout", "--token-grid", "--prefix-tokens"}
    assert shared <= mine_opts and shared <= learn_opts


def test_show_renders_the_concept_layer_of_a_run_mined_with_them(world, files, capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["mine", *_model_args(world), "--layers", "layer2", "--k", "4", "--out", str(run),
                 "--no-progress", "--concepts", str(world / "nmf4.pt"), "--backend", "torch"]) == 0
    capsys.readouterr()
    assert main(["concepts", "show", str(world / "nmf4.pt"), "--run", str(run), "--concepts", "0", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert str(run / "layer2_nmf4_top4.png") in printed and str(run / "layer2_nmf4_top1.png") in printed
    assert Image.open(run / "layer2_nmf4_top4.png").size[0] > 100
    # another concepts file of the same layer: refused with the command that mines it
    assert main(["concepts", "show", str(world / "pca4.pt"), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not mined with these concepts" in err and "--concepts" in err


def test_compare_prints_the_matching(world, files, capsys):
    assert main(["concepts", "compare", str(world / "nmf4.pt"), str(world / "pca4.pt"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = match_concepts(files["nmf"], files["pca"]).to_json()
    assert got["a"] == "layer2:nmf4" and got["b"] == "layer2:pca4"
    assert got["kept"] == [list(k) for k in want["kept"]]
    assert got["dropped"] == want["dropped"] and got["created"] == want["created"]
    assert len(got["rows"]) == len(want["kept"]) + len(want["dropped"]) + len(want["created"])
    assert main(["concepts", "compare", str(world / "nmf4.pt"), str(world / "nmf4.pt")]) == 0
    out = capsys.readouterr().out
    assert "4 kept, 0 dropped, 0 created" in out
    for i in range(4):
        assert f"kept     a{i} -> b{i}  1.000" in out


def test_compare_by_correlation_across_checkpoints(world, files, capsys):
    args = ["concepts", "compare", str(world / "nmf4.pt"), str(world / "nmf4.pt"), "--by", "correlation",
            *_model_args(world), "--json"]
    assert main(args) == 0
    same = json.loads(capsys.readouterr().out)
    assert [k[:2] for k in same["kept"]] == [[i, i] for i in range(4)]
    assert all(abs(k[2] - 1.0) < 1e-6 for k in same["kept"])
    # B encoded on other weights: the library's numbers, model B given by --checkpoint-b
    assert main(args + ["--checkpoint-b", str(world / "r18b.pt")]) == 0
    other = json.loads(capsys.readouterr().out)
    model_a, info = load_run_model("resnet18", str(world / "r18.pt"), 64)
    model_b, _ = load_run_model("resnet18", str(world / "r18b.pt"), 64)
    dataset, _ = open_dataset(str(world / "data"), info.transform)
    want = match_concepts(files["nmf"], files["nmf"], by="correlation", model_a=model_a, model_b=model_b,
                          data=dataset, batch_size=8)
    assert other["mean_similarity"] == pytest.approx(want.units.mean_correlation, abs=1e-6)
    assert other["mean_similarity"] < same["mean_similarity"]
