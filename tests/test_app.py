"""The Streamlit dashboard driven headless with streamlit.testing (AppTest): every page runs
without exception, shows the expected widgets, and what it shows follows the selection and
equals the mined result (read independently from result.pt)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from captum_topk import dashboard as dd
from captum_topk.core.result import TopKResult

from ._dashboard_fixture import TINY_SPEC, restore_env, roots_of, set_env

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(Path(__file__).resolve().parent.parent / "app_streamlit" / "main.py")
TIMEOUT = 180


@pytest.fixture(scope="module")
def world(dashboard_env):
    env = dashboard_env
    old = set_env(env)
    try:
        yield roots_of(env)
    finally:
        restore_env(old)


def _app(run: str = TINY_SPEC.run_name()) -> "AppTest":
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if run:
        at.session_state["run"] = run  # what the sidebar picker shows first
    return at


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _labels(at) -> set:
    return {w.label for kind in ("selectbox", "number_input", "radio", "toggle", "multiselect",
                                 "text_input", "button") for w in getattr(at, kind)}


def _table_values(at):
    return at.dataframe[0].value["activation"].tolist()


def test_topk_page_follows_the_selection(world):
    result = TopKResult.load(world.runs / TINY_SPEC.run_name() / "result.pt")
    at = _app().run()
    _ok(at)
    assert at.title[0].value == "Top-k patches"
    assert {"Run", "Layer", "Channel (0-63)", "Records", "View", "Projection (Captum)", "Patch"} <= _labels(at)
    assert at.selectbox(key="run_widget").value == TINY_SPEC.run_name()

    def expected(layer, channel, which="top"):
        return [round(r.value, 4) for r in result.records(layer, channel, which)]

    assert _table_values(at) == expected("layer1", 0)
    at.number_input(key="topk_channel").set_value(5).run()
    _ok(at)
    assert _table_values(at) == expected("layer1", 5) != expected("layer1", 0)
    at.selectbox(key="topk_layer").set_value("layer2").run()
    _ok(at)
    assert at.number_input(key="topk_channel").label == "Channel (0-127)"
    assert _table_values(at) == expected("layer2", 5)
    at.radio(key="topk_which").set_value("bottom").run()
    _ok(at)
    assert _table_values(at) == expected("layer2", 5, "bottom")
    assert all(a < 0 for a in _table_values(at)) or min(_table_values(at)) <= expected("layer2", 5)[-1]
    # the source image follows the chosen patch
    rec = result.records("layer2", 5, "bottom")[2]
    at.radio(key="topk_rank").set_value(2).run()
    _ok(at)
    assert any(f"**{rec.image_id}**" in c.value and str(tuple(rec.box)) not in c.value for c in at.caption)
    assert any(f"rows {rec.box[0]}-{rec.box[2] - 1}, columns {rec.box[1]}-{rec.box[3] - 1}" in c.value
               for c in at.caption)
    assert "Activation histogram" in [s.value for s in at.subheader]
    assert "Projections" in [s.value for s in at.subheader]


def test_topk_grid_view_opens_a_channel(world):
    at = _app().run()
    at.radio(key="topk_view").set_value("Grid of channels").run()
    _ok(at)
    assert at.number_input(key="topk_page").label.startswith("Channels page (1-2")
    at.selectbox(key="topk_grid_pick").set_value(7)
    at.button(key="topk_open").click().run()
    _ok(at)
    assert at.radio(key="topk_view").value == "One channel"
    assert at.number_input(key="topk_channel").value == 7


def test_filters_page(world):
    at = _app().run()
    at.switch_page("pages/filters.py").run()
    _ok(at)
    assert at.title[0].value == "Filters"
    model = torchvision.models.resnet18(num_classes=2)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert at.selectbox(key="filters_layer").options == [f"{convs[0]} (layer 1)", *convs[1:]]
    assert "conv1: 64 filters of 3x7x7 (rgb view" in " ".join(c.value for c in at.caption)
    at.selectbox(key="filters_layer").set_value("layer2.0.conv2").run()
    _ok(at)
    assert "layer2.0.conv2: 128 filters of 128x3x3 (mean view" in " ".join(c.value for c in at.caption)
    at.radio(key="filters_mode").set_value("norm").run()
    _ok(at)
    at.radio(key="filters_mode").set_value("rgb").run()  # impossible here: a message, not a crash
    assert not at.exception and "needs filters with 3 input channels" in at.error[0].value


def test_compare_page_mines_the_finetuned_checkpoint(world):
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), world.checkpoints / "r18-finetuned.pt")
    spec = dd.like_run(dd.open_run(world.runs / TINY_SPEC.run_name()), "r18-finetuned.pt", world)
    try:
        at = _app().run()
        at.switch_page("pages/compare.py").run()
        _ok(at)
        assert at.title[0].value == "Compare"
        assert any("r18-finetuned.pt" in i.value and "not mined yet" in i.value for i in at.info)
        at.button(key="cmp_mine_ft").click().run()
        _ok(at)
        assert at.selectbox(key="cmp_b").value == spec.run_name()
        assert at.selectbox(key="cmp_a").value == TINY_SPEC.run_name()
        at.number_input(key="cmp_channel").set_value(3).run()
        _ok(at)
        a = TopKResult.load(world.runs / TINY_SPEC.run_name() / "result.pt")
        b = TopKResult.load(world.runs / spec.run_name() / "result.pt")
        shared = len({r.index for r in a.records("layer1", 3)} & {r.index for r in b.records("layer1", 3)})
        assert any(c.value.startswith(f"{shared} of run A's top-4 images") for c in at.caption)
        assert len(at.image) >= 2
        # CKA and the ranking of changed channels (captum_topk.compare over both models)
        subheaders = [h.value for h in at.subheader]
        assert {"Layer similarity", "Matched units", "Channels that changed most"} <= set(subheaders)
        from captum_topk.compare import compare_models

        ra, rb = dd.open_run(world.runs / TINY_SPEC.run_name()), dd.open_run(world.runs / spec.run_name())
        ref = compare_models(ra.model, rb.model, ra.dataset, ["layer1", "layer2"], k=4, batch_size=16,
                             progress=False)
        assert at.selectbox(key="cmp_rank_layer").value == "layer2"
        top = [int(c) for c in ref.channels["layer2"].order[:4]]
        shown = [m.value for m in at.markdown if m.value.startswith("**#")]
        assert [int(v.split("channel ")[1].split("**")[0]) for v in shown] == top
    finally:
        (world.checkpoints / "r18-finetuned.pt").unlink()
        shutil.rmtree(world.runs / spec.run_name(), ignore_errors=True)


def test_compare_page_matches_units_of_two_architectures(world):
    torch.manual_seed(2)
    torch.save(torchvision.models.mobilenet_v2(num_classes=2).state_dict(), world.checkpoints / "mnv2-random.pt")
    spec_b = dd.JobSpec(model="mobilenet_v2", checkpoint="mnv2-random.pt", layers=("features.4", "features.7"),
                        data="shapes", k=4, batch_size=8, input_size=64, backend="torch")
    try:
        dd.mine_job(spec_b, world)
        at = _app().run()
        at.switch_page("pages/compare.py").run()
        at.selectbox(key="cmp_a").set_value(TINY_SPEC.run_name()).run()
        at.selectbox(key="cmp_b").set_value(spec_b.run_name()).run()
        _ok(at)
        assert any("no layer whose channels correspond" in i.value for i in at.info)
        assert {"Layer similarity", "Matched units"} <= {h.value for h in at.subheader}
        # the page shows what captum_topk.compare computes: CKA-ranked layer pairs, units matched one to one
        from captum_topk.compare import compare_models
        from captum_topk.compare.inputs import normalisation_map

        ra, rb = dd.open_run(world.runs / TINY_SPEC.run_name()), dd.open_run(world.runs / spec_b.run_name())
        ref = compare_models(ra.model, rb.model, ra.dataset, ["layer1", "layer2"], ["features.4", "features.7"],
                             k=4, batch_size=16, progress=False, match="auto",
                             input_map_b=normalisation_map(ra.info.mean, ra.info.std, rb.info.mean, rb.info.std))
        (la, lb), m = next(iter(ref.matchings.items()))
        assert at.selectbox(key="cmp_match_pair").value == 0
        shown = [x.value for x in at.markdown if x.value.startswith("**A unit")]
        want = [f"**A unit {u} ↔ B unit {v}**: correlation {r:.3f}" for u, v, r in m.pairs(3)]
        assert shown == want
        assert m.assignment.shape == (ra.result.num_channels(la),) and lb in ("features.4", "features.7")
        poorly = at.dataframe[0].value
        assert [int(u) for u in poorly["unit"]] == [row["unit"] for row in m.poorly_matched(10)]
        # the other measures, each with its chance baseline
        at.radio(key="cmp_measure").set_value("Procrustes").run()
        _ok(at)
        assert any("shuffled pairings" in c.value for c in at.caption)
    finally:
        (world.checkpoints / "mnv2-random.pt").unlink()
        shutil.rmtree(world.runs / spec_b.run_name(), ignore_errors=True)


def test_embeddings_page(world):
    at = _app().run()
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    assert at.title[0].value == "Embeddings"
    assert at.selectbox(key="emb_layer").value == "layer2"
    run = dd.open_run(world.runs / TINY_SPEC.run_name())
    emb, ids, _ = dd.run_embeddings(run, "layer2")
    image = ids[4]
    at.selectbox(key="emb_image").set_value(image).run()
    _ok(at)
    near = dd.nearest_neighbours(emb, 4, 5)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    caps = [c.value for c in at.caption]
    for j, _ in near:
        assert f"{ids[j]} · cos {float(unit[j] @ unit[4]):.2f}" in caps
    assert f"**{image}** (discs)" in caps
    assert "12 images, 128 channels of layer2" in " ".join(caps)


def test_data_jobs_page_mines_and_refuses_hostile_input(world):
    at = _app().run()
    at.switch_page("pages/data_jobs.py").run()
    _ok(at)
    assert at.title[0].value == "Data and jobs"
    assert {"Images", "Model", "Backend", "k (records per channel)", "Mine"} <= _labels(at)
    assert at.dataframe[0].value["run"].tolist()[0] in {e.name for e in dd.list_runs(world.runs)}

    at.selectbox(key="jobs_data").set_value("shapes")
    at.radio(key="jobs_source").set_value("Checkpoint").run()
    # a plain state dict does not name its architecture: the page says so and waits for one
    assert not at.exception and "does not say which architecture" in at.error[0].value
    at.selectbox(key="jobs_ckpt").set_value("r18-random.pt")
    at.selectbox(key="jobs_arch").set_value("resnet18")
    at.number_input(key="jobs_size").set_value(64)
    at.number_input(key="jobs_k").set_value(3).run()
    _ok(at)
    layers = at.multiselect[0]
    assert layers.value == ["layer1", "layer2", "layer3"]
    layers.set_value(["layer1"])
    at.radio(key="jobs_backend").set_value("PyTorch")
    at.button(key="jobs_mine").click().run()
    _ok(at)
    spec = dd.JobSpec(model="resnet18", checkpoint="r18-random.pt", layers=("layer1",), data="shapes", k=3,
                      input_size=64, backend="torch")
    queue = dd.job_queue(world)
    job = next(j for j in queue.jobs() if j.spec == spec)  # mined in the background: the page did not block
    assert queue.wait(job, timeout=TIMEOUT).status == "done"
    at.run()  # the jobs panel sees it done and makes it the run shown
    _ok(at)
    folder = dd.find_job(spec, world)
    assert folder is not None and folder == job.folder
    assert at.session_state["run"] == folder.name  # the new run is now the one shown
    assert TopKResult.load(folder / "result.pt").k == 3
    assert any("cached on disk" in s.value for s in at.success)

    # hostile / broken input: an error box, never an exception, and the page keeps working
    at.text_input(key="jobs_ckpt_text").set_value("../../../../etc/passwd").run()
    assert not at.exception and "outside the configured root" in at.error[0].value
    (world.checkpoints / "corrupt.pt").write_bytes(b"\x00garbage")
    at.text_input(key="jobs_ckpt_text").set_value("corrupt.pt").run()
    assert not at.exception and "Cannot use this model" in at.error[0].value
    at.text_input(key="jobs_ckpt_text").set_value("").run()
    at.text_input(key="jobs_data_text").set_value("../").run()
    assert not at.exception and "outside the configured root" in at.error[0].value
    at.text_input(key="jobs_data_text").set_value("").run()
    _ok(at)


def test_a_broken_run_gives_an_error_box_not_a_crash(world):
    bad = world.runs / "zz-broken"
    bad.mkdir()
    (bad / "result.pt").write_bytes(b"not a torch file")
    try:
        at = _app().run()
        _ok(at)
        at.selectbox(key="run_widget").set_value("zz-broken").run()
        assert not at.exception
        assert "Cannot open the run zz-broken" in at.error[0].value
        at.switch_page("pages/embeddings.py").run()
        assert not at.exception and "Cannot open the run zz-broken" in at.error[0].value
        at.switch_page("pages/topk.py").run()
        at.selectbox(key="run_widget").set_value(TINY_SPEC.run_name()).run()
        _ok(at)
        assert at.title[0].value == "Top-k patches"
    finally:
        shutil.rmtree(bad)


def test_real_default_model_on_the_packaged_photos(tmp_path):
    r"""The real MobileNetV2-ImageNet on the real packaged photos (one early layer, the first 20
    photos at 96 px, to stay fast): the labelled ones show their ImageNet class names."""
    roots = dd.Roots(data=tmp_path / "data", runs=tmp_path / "runs", checkpoints=tmp_path / "ck",
                     onnx=tmp_path / "onnx")
    spec = dd.JobSpec(layers=("features.3",), max_images=20, input_size=96)
    folder = dd.mine_job(spec, roots)
    old = set_env({dd.ENV_VARS[k]: str(getattr(roots, k)) for k in dd.ENV_VARS})
    try:
        at = _app(run="")
        at.session_state["topk_projection"] = "none"  # projections are tested on the tiny model
        at.run()
        _ok(at)
        assert at.selectbox(key="run_widget").value == folder.name
        result = TopKResult.load(folder / "result.pt")
        at.number_input(key="topk_channel").set_value(11).run()
        _ok(at)
        assert _table_values(at) == [round(r.value, 4) for r in result.records("features.3", 11)]
        labels = at.dataframe[0].value["label"].tolist()
        from captum_topk.models import imagenet_categories

        cats = imagenet_categories()
        assert labels == [cats[r.label] if r.label >= 0 else "unlabelled"
                          for r in result.records("features.3", 11)]
        assert "Which classes drive it" in [s.value for s in at.subheader]
        assert any("mobilenet_v2-imagenet; 20 images (packaged photos); top-9 per channel; input 96x96" in c.value
                   for c in at.caption)
    finally:
        restore_env(old)


def test_topk_page_on_a_vit_run_shows_token_footprints_and_activation_maps(world):
    from captum_topk.runs import RunSpec, mine_run

    layer = "encoder.layers.encoder_layer_3"
    spec = RunSpec(model="vit_b_32", random_init=True, layers=(layer,), data=str(world.data / "shapes"),
                   k=3, batch_size=6, max_images=6, stats_bins=64)
    mine_run(spec, world.runs / "vit", progress=False)
    result = TopKResult.load(world.runs / "vit" / "result.pt")
    assert result.layers == [layer, layer + "[prefix]"] and result.box_kind(layer) == "token"
    at = _app("vit").run()
    _ok(at)
    assert at.selectbox(key="topk_layer").value == layer
    assert _table_values(at) == [round(r.value, 4) for r in result.records(layer, 0)]
    captions = " ".join(c.value for c in at.caption)
    assert "NLC layer" in captions and "patch footprint (32x32 px)" in captions
    assert "Activation maps" in [s.value for s in at.subheader]
    assert "top 0.5 %" in captions  # thresholded: the run has statistics
    at.selectbox(key="topk_layer").set_value(layer + "[prefix]").run()
    _ok(at)
    assert "whole image (a vector layer or a class / register token)" in " ".join(c.value for c in at.caption)


def test_exposure_is_said_on_the_page_and_loopback_is_the_default(world):
    from captum_topk.cli.dashboard import streamlit_argv

    argv = streamlit_argv("127.0.0.1", 8501)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    at = _app()
    at.run()
    assert any("every network interface" in w.value for w in at.warning)  # streamlit's own default: exposed
    private = _app()
    private.session_state["run"] = TINY_SPEC.run_name()
    from streamlit import config

    old = config.get_option("server.address")
    config._set_option("server.address", "127.0.0.1", "test")  # what `--server.address 127.0.0.1` sets
    try:
        private.run()
    finally:
        config._set_option("server.address", old, "test")
    assert not any("network interface" in w.value for w in private.warning)


def _tampered(world, name, edit_payload):
    dst = world.runs / name
    shutil.copytree(world.runs / TINY_SPEC.run_name(), dst)
    payload = torch.load(dst / "result.pt", weights_only=True)
    edit_payload(payload)
    torch.save(payload, dst / "result.pt")
    return dst


def _set_header(payload, fn):
    header = json.loads(payload["header"])
    fn(header)
    payload["header"] = json.dumps(header)


@pytest.mark.parametrize("case,message", [
    ("shapes", "has shape (3, 3), expected (64, 4)"),
    ("nan", "NaN top values"),
    ("absurd-k", "declares k=1000000"),
    ("outside", "outside the configured root"),
])
def test_tampered_run_folders_give_an_error_box(world, case, message):
    layer = "layer1"
    edits = {
        "shapes": dict(edit_payload=lambda p: p["tensors"].__setitem__(f"state/{layer}/top_values", torch.zeros(3, 3))),
        "nan": dict(edit_payload=lambda p: p["tensors"][f"state/{layer}/top_values"].__setitem__((0, 0), float("nan"))),
        "absurd-k": dict(edit_payload=lambda p: _set_header(p, lambda h: h["layers"][layer].__setitem__("k", 1_000_000))),
        "outside": dict(edit_payload=lambda p: _set_header(
            p, lambda h: h["metadata"].__setitem__("checkpoint", "/etc/passwd"))),
    }
    name = f"zz-tampered-{case}"
    folder = _tampered(world, name, **edits[case])
    try:
        at = _app(name).run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
        at.selectbox(key="run_widget").set_value(TINY_SPEC.run_name()).run()
        _ok(at)  # the app lives on
    finally:
        shutil.rmtree(folder)


def test_microscope_and_feature_visualizations(world, monkeypatch):
    import captum_topk.runs.visualize as runs_vis

    monkeypatch.setitem(runs_vis.VIS_SETTINGS, "steps", 4)  # the page's settings, shortened for the test
    monkeypatch.setitem(runs_vis.VIS_SETTINGS, "size", 32)
    at = _app()
    at.session_state["topk_projection"] = "none"
    at.run()
    at.switch_page("pages/microscope.py").run()
    _ok(at)
    assert at.title[0].value == "Microscope"
    assert sum("not visualized yet" in i.value for i in at.info) == 8
    at.button(key="micro_compute").click().run()
    _ok(at)
    assert not any("not visualized yet" in i.value for i in at.info)
    run = dd.open_run_within(world.runs / TINY_SPEC.run_name(), world)
    assert runs_vis.visualized_channels(run, "layer1", range(8)) == list(range(8))  # cached in the run folder
    # the Top-k page shows the cached visualization of a channel without recomputing it
    at.switch_page("pages/topk.py").run()
    _ok(at)
    assert "Feature visualization" in [s.value for s in at.subheader]
    assert not [b for b in at.button if b.key == "topk_vis"]  # channel 0 is cached: no button


def test_first_start_shows_a_page_at_once_and_mines_the_default_in_the_background(tmp_path, monkeypatch):
    roots = dd.Roots(data=tmp_path / "data", runs=tmp_path / "runs", checkpoints=tmp_path / "ck",
                     onnx=tmp_path / "onnx")
    small = dd.JobSpec(layers=("features.3",), max_images=4, input_size=64, backend="torch")
    monkeypatch.setattr(dd, "DEFAULT_SPEC", small)  # the embedded default, shortened for the test
    old = set_env({dd.ENV_VARS[k]: str(getattr(roots, k)) for k in dd.ENV_VARS})
    try:
        at = _app(run="")
        at.run()
        _ok(at)
        assert at.title[0].value == "captum-topk" and "First start" in at.info[0].value
        job = next(j for j in dd.job_queue(roots).jobs() if j.spec == small)
        assert dd.job_queue(roots).wait(job, timeout=TIMEOUT).status == "done"
        at.run()
        _ok(at)
        assert at.title[0].value == "Top-k patches" and at.selectbox(key="run_widget").value == small.run_name()
    finally:
        restore_env(old)
