"""captum_topk.dashboard: safe paths, runs on disk, mining jobs and the views the app shows,
each checked against an independent computation."""

from __future__ import annotations

import json
import shutil
import os

import numpy as np
import pytest
import torch

from captum_topk import dashboard as dd
from captum_topk.data import image_folder, make_loader
from captum_topk.core.miner import LayerTopKPatches
from captum_topk.models import load_model, make_transform
from captum_topk.viz.plot import to_display

from ._dashboard_fixture import TINY_SPEC, roots_of
from ._tolerance import assert_backends_close, assert_same_records


@pytest.fixture(scope="module")
def world(dashboard_env):
    roots = roots_of(dashboard_env)
    run = dd.open_run(roots.runs / TINY_SPEC.run_name())
    return roots, run


# ---------------------------------------------------------------------------- paths
def test_open_run_within_refuses_runs_outside_the_roots(world, tmp_path):
    roots, run = world
    inside = dd.open_run_within(roots.runs / TINY_SPEC.run_name(), roots)
    assert torch.equal(inside.result.values("layer1"), run.result.values("layer1"))
    copy = tmp_path / "copied_run"
    shutil.copytree(roots.runs / TINY_SPEC.run_name(), copy)
    with pytest.raises(dd.UnsafePathError, match="outside the runs root"):
        dd.open_run_within(copy, roots)
    assert torch.equal(dd.open_run(copy).result.values("layer1"), run.result.values("layer1"))


def test_resolve_under_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f.pt").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pt").write_bytes(b"s")
    os.symlink(outside / "secret.pt", root / "link_out.pt")
    os.symlink(root / "a" / "f.pt", root / "link_in.pt")
    os.symlink(outside, root / "dir_out")

    assert dd.resolve_under(root, "a/f.pt", kind="file") == (root / "a" / "f.pt").resolve()
    assert dd.resolve_under(root, "a/../a/f.pt") == (root / "a" / "f.pt").resolve()
    assert dd.resolve_under(root, str(root / "a" / "f.pt")) == (root / "a" / "f.pt").resolve()
    assert dd.resolve_under(root, "link_in.pt") == (root / "a" / "f.pt").resolve()
    for bad in ("../outside/secret.pt", "a/../../outside", str(outside / "secret.pt"), "link_out.pt",
                "dir_out/secret.pt", "/etc/passwd"):
        with pytest.raises(dd.UnsafePathError, match="outside the configured root"):
            dd.resolve_under(root, bad)
    with pytest.raises(FileNotFoundError):
        dd.resolve_under(root, "a/missing.pt")
    with pytest.raises(ValueError, match="not a folder"):
        dd.resolve_under(root, "a/f.pt", kind="dir")
    with pytest.raises(ValueError, match="Empty path"):
        dd.resolve_under(root, "  ")
    # listings never show what leaves the root
    assert dd.list_files(root, [".pt"]) == ["a/f.pt", "link_in.pt"]


def test_roots_from_env(tmp_path):
    env = {"CAPTUM_TOPK_RUNS_ROOT": str(tmp_path / "elsewhere")}
    roots = dd.Roots.from_env(tmp_path, env=env)
    assert roots.runs == (tmp_path / "elsewhere").resolve()
    assert roots.data == (tmp_path / "data").resolve()
    assert roots.checkpoints == (tmp_path / "checkpoints").resolve()
    assert roots.onnx == (tmp_path / "onnx_models").resolve()


def test_list_data_folders(tmp_path):
    from PIL import Image

    (tmp_path / "set" / "cats").mkdir(parents=True)
    (tmp_path / "set" / "dogs").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    for sub in ("cats", "dogs"):
        Image.new("RGB", (4, 4)).save(tmp_path / "set" / sub / "a.png")
    assert dd.list_data_folders(tmp_path) == [".", "set", "set/cats", "set/dogs"]


# ---------------------------------------------------------------------------- jobs and runs
def test_jobspec_key_and_roundtrip():
    a = dd.JobSpec(layers=("features.3",))
    b = dd.JobSpec.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b and a.key() == b.key()
    assert dd.JobSpec(layers=("features.7",)).key() != a.key()
    assert TINY_SPEC.run_name().startswith("resnet18-r18-random-shapes-")
    assert dd.suggest_layers(["conv1", "layer1", "layer2", "fc"]) == ["layer1", "layer2"]
    assert dd.suggest_layers(["x", *dd.DEFAULT_LAYERS]) == list(dd.DEFAULT_LAYERS)


def test_mined_job_equals_direct_mining(world):
    roots, run = world
    ckpt = str(roots.checkpoints / "r18-random.pt")
    net, info = load_model("resnet18", checkpoint=ckpt)
    tf = make_transform(64, mean=info.mean, std=info.std)
    ds = image_folder(str(roots.data / "shapes"), transform=tf)
    direct = LayerTopKPatches(net, ["layer1", "layer2"], k=4).mine(make_loader(ds, batch_size=5), progress=False)
    for layer in ("layer1", "layer2"):
        for side in ("top", "bottom"):
            torch.testing.assert_close(run.result.values(layer, side), direct.values(layer, side))
            assert torch.equal(run.result.indices(layer, side), direct.indices(layer, side))
    assert run.result.n_images == len(ds) == 12
    assert run.categories == ["discs", "stripes"]
    entry = next(e for e in dd.list_runs(roots.runs) if e.name == TINY_SPEC.run_name())
    assert (entry.model, entry.layers, entry.n_images, entry.stats) == ("resnet18", ["layer1", "layer2"], 12, True)
    assert entry.spec == dd.run_spec(TINY_SPEC, roots).resolve()  # weights and images digested
    assert entry.data == "shapes" and entry.error is None


def test_histogram_matches_brute_force(world):
    roots, run = world
    acts = []
    hook = run.model.layer2.register_forward_hook(lambda m, a, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            for images, _, _ in make_loader(run.dataset, batch_size=6):
                run.model(images)
    finally:
        hook.remove()
    a = torch.cat(acts)
    channel = 7
    h = dd.channel_histogram(run, "layer2", channel)
    edges = run.result.stats("layer2").edges.double().numpy()
    values = a[:, channel].flatten().double().numpy()
    counts, _ = np.histogram(values, bins=edges)
    nz = np.flatnonzero(counts)
    assert np.array_equal(h["counts"], counts[nz[0]:nz[-1] + 1])
    assert np.allclose(h["edges"], edges[nz[0]:nz[-1] + 2])
    assert h["count"] == values.size
    assert h["mean"] == pytest.approx(values.mean(), rel=1e-5)
    assert h["fraction_positive"] == pytest.approx((values > 0).mean())
    assert h["max"] == pytest.approx(values.max(), rel=1e-6)
    assert run.result.values("layer2")[channel, 0].item() == pytest.approx(values.max(), rel=1e-6)


def test_patches_and_record_image_match_the_box(world):
    _, run = world
    tiles, recs = dd.channel_patches(run, "layer2", 3)
    assert tiles.dtype == np.uint8 and len(tiles) == len(recs) == 4
    for tile, r in zip(tiles, recs):
        image = run.dataset[run.dataset.index_of(r.image_id)][0]
        rgb = to_display(image, mean=run.info.mean, std=run.info.std)[0]
        top, left, bottom, right = r.box
        crop = rgb[top:bottom, left:right]
        rf = run.result.receptive_fields["layer2"][(64, 64)]
        # the crop sits in the tile where padded_crop puts it; everything else is black padding
        ys = [y for y in range(tile.shape[0]) if tile[y].any()]
        xs = [x for x in range(tile.shape[1]) if tile[:, x].any()]
        placed = tile[ys[0]:ys[0] + crop.shape[0], xs[0]:xs[0] + crop.shape[1]]
        assert np.array_equal(placed, crop), r
        assert tile.shape[:2] == rf.size
        boxed = dd.record_image(run, r, color=(255, 0, 255), width=1)
        assert tuple(boxed[top, left]) == (255, 0, 255)
        assert tuple(boxed[bottom - 1, right - 1]) == (255, 0, 255)
        if bottom - top > 2 and right - left > 2:
            assert np.array_equal(boxed[top + 1, left + 1], rgb[top + 1, left + 1])
    grid, shown = dd.top1_grid(run, "layer2", range(5))
    assert shown == [0, 1, 2, 3, 4] and grid.ndim == 3


def test_classes_and_shared_images(world):
    _, run = world
    recs = run.result.records("layer1", 2)
    expected = {}
    for r in recs:
        name = ["discs", "stripes"][r.label]
        expected[name] = expected.get(name, 0) + 1
    got = dd.channel_classes(run, "layer1", 2)
    assert dict(got) == expected
    assert [c for _, c in got] == sorted(expected.values(), reverse=True)
    assert dd.shared_images(run.result, run.result, "layer1", 2) == len(recs)


def test_projections_are_rendered_per_record(world):
    _, run = world
    rgb = dd.channel_projections(run, "layer1", 0, "deconvolution")
    tiles, recs = dd.channel_patches(run, "layer1", 0)
    assert rgb.shape == tiles.shape and rgb.dtype == np.uint8
    assert (rgb != 128).any()


def test_filter_view_hover_names_each_tile(world):
    _, run = world
    v = dd.filter_view(run.model)
    w = run.model.conv1.weight.detach()
    assert v["layer"] == "conv1" and v["mode"] == "rgb" and v["shape"] == (64, 3, 7, 7)
    np.testing.assert_allclose(v["l2_norm"], w.flatten(1).norm(dim=1).double().numpy(), rtol=1e-6)
    assert v["image"].shape[:2] == v["hover"].shape
    ncols = 8  # ceil(sqrt(64))
    for j in (0, 9, 63):
        r, c = divmod(j, ncols)
        y, x = 1 + r * 8 + 3, 1 + c * 8 + 3  # centre of tile j (7 px tiles, 1 px separators)
        assert v["hover"][y, x].startswith(f"channel {j}<br>")
    assert v["hover"][0, 0] == ""
    n = dd.filter_view(run.model, "layer1.0.conv1", "norm")
    assert n["image"].shape[:2] == (64, 64) and n["hover"][5, 9].startswith("channel 5 ← input 9")


def test_embeddings_pca_and_neighbours(world):
    roots, run = world
    emb, ids, labels = dd.run_embeddings(run, "layer2")
    acts = []
    with torch.no_grad():
        for images, _, _ in make_loader(run.dataset, batch_size=12):
            x = run.model.maxpool(run.model.relu(run.model.bn1(run.model.conv1(images))))
            acts.append(run.model.layer2(run.model.layer1(x)).mean(dim=(2, 3)))
    np.testing.assert_allclose(emb, torch.cat(acts).numpy(), rtol=1e-4, atol=1e-5)
    assert ids == run.dataset.ids and labels == run.dataset.labels
    assert (run.path / "embeddings").is_dir()  # cached on disk, read back the second time
    again, _, _ = dd.run_embeddings(run, "layer2")
    assert np.array_equal(again, emb)

    xy, var = dd.pca_2d(emb)
    centred = emb.astype(np.float64) - emb.mean(axis=0)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(evals)[::-1][:2]
    ref = centred @ evecs[:, order]
    np.testing.assert_allclose(np.abs(xy), np.abs(ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, evals[order] / evals.sum(), rtol=1e-6)

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit[3]
    brute = [j for j in np.argsort(-sims, kind="stable") if j != 3][:4]
    got = dd.nearest_neighbours(emb, 3, 4)
    assert [j for j, _ in got] == brute
    assert [s for _, s in got] == pytest.approx([sims[j] for j in brute], rel=1e-6)


def test_job_reuse_progress_and_hostile_inputs(world, tmp_path):
    roots, _ = world
    calls = []
    folder = dd.mine_job(TINY_SPEC, roots, progress=lambda *a: calls.append(a))
    assert folder == roots.runs / TINY_SPEC.run_name() and calls == [("done", 1, 1)]  # reused

    spec = dd.JobSpec(model="resnet18", checkpoint="r18-random.pt", layers=("layer1",), data="shapes",
                      k=2, batch_size=5, input_size=64, max_images=7, backend="torch")
    calls.clear()
    folder = dd.mine_job(spec, roots, progress=lambda *a: calls.append(a))
    mined = [c for c in calls if c[0] == "mining"]
    assert [c[1] for c in mined] == [0, 5, 7] and all(c[2] == 7 for c in mined)
    assert calls[-1] == ("done", 7, 7)
    assert json.loads((folder / "run.json").read_text())["n_total"] == 7

    try:  # files added to the shared world are removed again: other modules list this root
        (roots.checkpoints / "corrupt.pt").write_bytes(b"not a checkpoint at all")
        with pytest.raises(ValueError, match="not a PyTorch checkpoint or is corrupt"):
            dd.mine_job(dd.JobSpec(model="resnet18", checkpoint="corrupt.pt", layers=("layer1",)), roots)
        torch.save(torch.nn.Linear(2, 2).state_dict(), roots.checkpoints / "wrong.pt")
        with pytest.raises(ValueError, match="does not fit"):
            dd.mine_job(dd.JobSpec(model="resnet18", checkpoint="wrong.pt", layers=("layer1",)), roots)
        with pytest.raises(dd.UnsafePathError):
            dd.mine_job(dd.JobSpec(model="resnet18", checkpoint="../../../etc/passwd", layers=("layer1",)), roots)
        (roots.data / "junk").mkdir()
        (roots.data / "junk" / "x.jpg").write_bytes(b"no image")
        with pytest.warns(UserWarning):
            with pytest.raises(ValueError, match="No readable image"):
                dd.mine_job(dd.JobSpec(model="resnet18", checkpoint="r18-random.pt", layers=("layer1",),
                                       data="junk", input_size=64), roots)
    finally:
        for name in ("corrupt.pt", "wrong.pt"):
            (roots.checkpoints / name).unlink(missing_ok=True)
        shutil.rmtree(roots.data / "junk", ignore_errors=True)


def test_a_replaced_checkpoint_makes_its_runs_stale(tmp_path):
    # A new fine-tune written under the same name must not be shown with the old run's patches.
    import torchvision

    from ._dashboard_fixture import make_images

    roots = dd.Roots(data=tmp_path / "data", runs=tmp_path / "runs", checkpoints=tmp_path / "ckpt",
                     onnx=tmp_path / "onnx")
    make_images(roots.data / "shapes", n_per_class=3, size=48)
    roots.checkpoints.mkdir()
    ckpt = roots.checkpoints / "net-finetuned.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), ckpt)
    spec = dd.JobSpec(model="resnet18", checkpoint="net-finetuned.pt", layers=("layer1",), data="shapes",
                      k=2, batch_size=6, input_size=48)
    first = dd.mine_job(spec, roots)
    values_before = dd.open_run(first).result.values("layer1").clone()
    emb_before = dd.run_embeddings(dd.open_run(first), "layer1")[0].copy()
    assert (first / "embeddings").is_dir()
    assert dd.find_job(spec, roots) == first  # same file: reused

    net = torchvision.models.resnet18(num_classes=2)
    torch.manual_seed(1)
    net.load_state_dict({k: v * 2 if v.is_floating_point() else v for k, v in torch.load(ckpt).items()})
    torch.save(net.state_dict(), ckpt)  # same name, other weights
    assert dd.find_job(spec, roots) is None
    with pytest.raises(ValueError, match="changed since this run was mined"):
        dd.open_run(first)
    again = dd.mine_job(spec, roots)  # mined again, not reused
    assert again == first
    fresh = dd.open_run(again)
    assert not torch.equal(fresh.result.values("layer1"), values_before)
    assert not (again / "embeddings").exists()  # the old weights' embeddings are gone
    assert not np.allclose(dd.run_embeddings(fresh, "layer1")[0], emb_before)
    miner = LayerTopKPatches(fresh.model, ["layer1"], k=2)
    for batch in make_loader(fresh.dataset, batch_size=6):
        miner.update(batch)
    # the run went through the `auto` backend (ONNX Runtime here): the parity bound, not allclose's defaults
    assert_backends_close(fresh.result.values("layer1"), miner.compute().values("layer1"))


def test_damaged_runs_are_listed_with_their_problem(world):
    roots, _ = world
    bad = roots.runs / "broken"
    bad.mkdir()
    (bad / "result.pt").write_bytes(b"garbage")
    (bad / "run.json").write_text("{not json")
    entry = next(e for e in dd.list_runs(roots.runs) if e.name == "broken")
    assert entry.error.startswith("damaged run.json")
    with pytest.raises(ValueError, match="not a readable captum-topk result"):
        dd.open_run(bad)


def test_like_run_and_finetuned_checkpoint(world):
    roots, run = world
    assert dd.find_finetuned(roots) is None
    names = ("m-finetuned-epoch01.pt", "m-linear-probe.pt", "m-finetuned.pt")
    try:
        for name in names:
            (roots.checkpoints / name).write_bytes(b"x")
        assert dd.find_finetuned(roots) == "m-finetuned.pt"
        spec = dd.like_run(run, "m-finetuned.pt", roots)
        assert (spec.model, spec.checkpoint, spec.layers, spec.data, spec.k, spec.input_size) == (
            "resnet18", "m-finetuned.pt", ("layer1", "layer2"), "shapes", 4, 64)
    finally:  # the shared world's checkpoints root is listed by the other modules
        for name in names:
            (roots.checkpoints / name).unlink(missing_ok=True)


@pytest.mark.skipif(dd.onnx_available() is not None, reason="ONNX Runtime backend not installed")
def test_onnx_runtime_job_gives_the_pytorch_records(world):
    roots, run = world
    spec = dd.JobSpec(model="resnet18", checkpoint="r18-random.pt", layers=("layer1",), data="shapes",
                      k=4, batch_size=6, input_size=64, backend="onnxruntime")
    ort = dd.open_run(dd.mine_job(spec, roots))
    exports = list(roots.onnx.glob("resnet18+r18-random-*.onnx"))
    assert len(exports) == 1 and ort.settings["onnx_export"] == str(exports[0])  # cached under the onnx root
    assert ort.backend == "onnxruntime" and ort.model is not None  # an export of a PyTorch model: it reloads
    ort_spec = dd.JobSpec(onnx=exports[0].name, layers=("layer1",), data="shapes", k=4, batch_size=6)
    user = dd.open_run(dd.mine_job(ort_spec, roots))  # a user's ONNX file: no PyTorch model
    assert user.backend == "onnxruntime" and user.model is None
    agree = assert_same_records(ort.result, run.result, "layer1")  # PyTorch vs ONNX Runtime: up to near ties
    assert torch.equal(user.result.indices("layer1"), ort.result.indices("layer1"))  # one backend: exact
    channel = int(agree.all(dim=1).nonzero()[0])  # a channel whose records agree: the same patches
    tiles, _ = dd.channel_patches(user, "layer1", channel)
    ref, _ = dd.channel_patches(run, "layer1", channel)
    assert np.array_equal(tiles, ref)
    with pytest.raises(ValueError, match="ONNX Runtime"):
        dd.channel_projections(user, "layer1", 1)
    assert "layer1" in dd.job_layers(ort_spec, roots)


def test_matching_layers_only_pairs_corresponding_channels():
    from types import SimpleNamespace as NS

    def run(arch, widths):
        return NS(info=NS(arch=arch), layers=list(widths),
                  result=NS(num_channels=lambda layer: widths[layer]))

    mnv2 = run("mobilenet_v2", {"features.3": 24, "features.7": 64})
    tuned = run("mobilenet_v2", {"features.3": 24, "features.7": 64, "features.11": 96})
    squeeze = run("squeezenet1_1", {"features.3": 128, "features.7": 256})
    ort = run("onnx", {"features.3": 24, "features.7": 32})
    assert dd.matching_layers(mnv2, tuned) == ["features.3", "features.7"]
    assert dd.matching_layers(mnv2, squeeze) == []  # same names, unrelated channels
    assert dd.matching_layers(mnv2, ort) == ["features.3"]  # widths must agree too


def test_tile_grid_scales_tiles_to_the_target():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (4, 10, 10, 3), dtype=np.uint8)
    big = rng.integers(0, 255, (4, 200, 100, 3), dtype=np.uint8)
    s = dd.tile_grid(small, None, target_px=35, ncols=2)  # x3 nearest: 30 px cells, pad 2
    assert s.shape == (2 * 30 + 3 * 2, 2 * 30 + 3 * 2, 3)
    assert np.array_equal(s[2:5, 2:5], np.broadcast_to(small[0, 0, 0], (3, 3, 3)))
    b = dd.tile_grid(big, None, target_px=50, ncols=4)  # down to 50 x 25
    assert b.shape == (50 + 2 * 2, 4 * 25 + 5 * 2, 3)
    assert dd.tile_grid(np.zeros((0, 5, 5, 3), np.uint8)).shape == (8, 8, 3)
