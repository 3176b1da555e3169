"""The dashboard's Concepts page: its library side (captum_topk.dashboard.concepts: the learning
job in the job queue, concept files under the roots, the run mined again with the concepts,
importance, heatmaps, matching) against the concepts library, and the page driven headless
with streamlit.testing (AppTest) on the tiny dashboard world."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_topk import dashboard as dd
from captum_topk.concepts import Concepts, learn_concepts, match_concepts

from ._dashboard_fixture import TINY_SPEC, restore_env, roots_of, set_env

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(Path(__file__).resolve().parent.parent / "app_streamlit" / "main.py")
TIMEOUT = 180
SPEC = dd.ConceptJobSpec(run=TINY_SPEC.run_name(), layer="layer2", method="nmf", n_concepts=4)


@pytest.fixture(scope="module")
def world(dashboard_env):
    old = set_env(dashboard_env)
    try:
        yield roots_of(dashboard_env)
    finally:
        restore_env(old)


@pytest.fixture(scope="module")
def learned(world):
    r"""SPEC learned through the job queue (as the page submits it), and the run mined again with it."""
    queue = dd.job_queue(world)
    job = queue.submit(SPEC)
    queue.wait(job, timeout=TIMEOUT)
    assert job.status == "done", job.error
    file = job.folder
    assert file == world.runs / TINY_SPEC.run_name() / "concepts" / "layer2-nmf4-s0.pt"
    run = dd.open_run(world.runs / TINY_SPEC.run_name(), world)
    mine = dd.concept_mining_spec(run, file, world)
    job = queue.submit(mine)
    queue.wait(job, timeout=TIMEOUT)
    assert job.status == "done", job.error
    yield {"file": file, "run": run, "mined": dd.open_run(job.folder, world), "spec": mine}
    shutil.rmtree(job.folder, ignore_errors=True)
    shutil.rmtree(file.parent, ignore_errors=True)


def test_learning_job_saves_what_the_library_learns(world, learned):
    run = learned["run"]
    saved = Concepts.load(learned["file"])
    direct = learn_concepts(run.model, "layer2", run.dataset, method="nmf", n_concepts=4, progress=False,
                            batch_size=SPEC.batch_size, negatives="clamp")
    torch.testing.assert_close(saved.directions, direct.directions, rtol=1e-4, atol=1e-5)
    rel = f"{TINY_SPEC.run_name()}/concepts/layer2-nmf4-s0.pt"
    assert rel in dd.list_concept_files(world)
    assert dd.load_concepts_file(world, rel)[0] == saved
    with pytest.raises(dd.UnsafePathError):
        dd.load_concepts_file(world, "../outside.pt")
    bad = learned["file"].parent / "bad.pt"
    for content in (b"not a torch file", None):
        if content is None:
            torch.save({"weights": torch.zeros(2)}, bad)  # a torch file, not concepts
        else:
            bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a concepts file"):
            dd.load_concepts_file(world, f"{TINY_SPEC.run_name()}/concepts/bad.pt")
    bad.unlink()
    # a second submission finds the file: no learning, progress says done at once
    reports = []
    assert dd.learn_job(SPEC, world, progress=lambda *a: reports.append(a)) == learned["file"]
    assert reports == [("done", 1, 1)]


def test_learning_job_reports_progress_and_cancels_without_saving(world, learned):
    spec = dd.ConceptJobSpec(run=TINY_SPEC.run_name(), layer="layer1", method="pca", n_concepts=3, batch_size=4)
    reports = []
    assert dd.learn_job(spec, world, progress=lambda *a: reports.append(a), should_stop=lambda: len(reports) > 2) is None
    assert not dd.concepts_path(spec, world).exists()
    assert reports == [("loading", 0, None), ("learning", 4, 12), ("learning", 8, 12)]  # stopped before the last batch
    with pytest.raises(ValueError, match="concept layer"):
        dd.ConceptJobSpec(run=TINY_SPEC.run_name(), layer="layer2:nmf4")
    with pytest.raises(ValueError, match="method"):
        dd.ConceptJobSpec(run=TINY_SPEC.run_name(), layer="layer2", method="ica")


def test_the_run_mined_again_has_the_concept_layer(world, learned):
    run, mined, concepts = learned["run"], learned["mined"], Concepts.load(learned["file"])
    assert dd.concept_layer(run, concepts) is None
    assert dd.concept_layer(mined, concepts) == "layer2:nmf4"
    assert mined.result.n_images == run.result.n_images
    # each concept's top-1 record holds its largest encoded activation over the images
    images = torch.stack([run.dataset[i][0] for i in range(len(run.dataset))])
    from captum_topk.concepts.stream import make_source

    src, name = make_source(run.model, "layer2")
    with torch.no_grad():
        u = concepts.encode(src(images)[name])
    for c in range(4):
        recs = mined.result.records("layer2:nmf4", c)
        assert len(recs) == TINY_SPEC.k
        assert recs[0].value == pytest.approx(float(u[:, c].max()), rel=1e-4, abs=1e-6)
    assert dd.find_job(learned["spec"], world) == mined.path


def test_importance_heatmaps_and_matching_equal_the_library(world, learned):
    run, concepts = learned["run"], Concepts.load(learned["file"])
    images = torch.stack([run.dataset[i][0] for i in range(8)])
    want = concepts.importance(run.model, images, 1)
    np.testing.assert_allclose(dd.concept_importance(run, concepts, 1, max_images=8), want.double().numpy(),
                               rtol=1e-5, atol=1e-7)
    maps = dd.concept_heatmaps(run, concepts, 2, [0, 5])
    assert maps.shape == (2, 64, 64, 3) and maps.dtype == np.uint8
    raw = concepts.heatmaps(run.model, images[[0, 5]])[:, 2]
    from captum_topk.viz.overlay import overlay

    for k in range(2):  # one colour scale for the images shown together
        want_rgb = overlay(images[[0, 5]][k], raw[k], mean=run.info.mean, std=run.info.std, scale=float(raw.max()))
        np.testing.assert_array_equal(maps[k], want_rgb)
    assert not np.array_equal(maps[0], maps[1])
    pca = Concepts.from_vectors("layer2", torch.randn(3, 128, generator=torch.Generator().manual_seed(0)))
    m = dd.match_files(concepts, pca)
    ref = match_concepts(concepts, pca)
    assert (m.kept, m.dropped, m.created) == (ref.kept, ref.dropped, ref.created)
    rows = dd.matching_rows(m)
    assert sorted(r["status"] for r in rows) == sorted(["kept"] * len(ref.kept) + ["dropped"] * len(ref.dropped)
                                                       + ["created"] * len(ref.created))
    same = dd.match_files(concepts, concepts, "correlation", run, learned["mined"], max_images=8)
    assert [k[:2] for k in same.kept] == [(i, i) for i in range(4)]


# ---------------------------------------------------------------- the page
def _app():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["run"] = TINY_SPEC.run_name()
    return at


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_concepts_page_learns_in_the_background(world):
    spec = dd.ConceptJobSpec(run=TINY_SPEC.run_name(), layer="layer1", method="pca", n_concepts=3)
    target = dd.concepts_path(spec, world)
    try:
        at = _app().run()
        at.switch_page("pages/concepts.py").run()
        _ok(at)
        assert at.title[0].value == "Concepts"
        at.selectbox(key="cc_layer").set_value("layer1").run()
        at.selectbox(key="cc_method").set_value("pca")
        at.number_input(key="cc_n").set_value(3).run()
        _ok(at)
        at.button(key="cc_learn").click().run()
        _ok(at)
        job = next(j for j in dd.job_queue(world).jobs() if j.spec == spec)
        dd.job_queue(world).wait(job, timeout=TIMEOUT)
        assert job.status == "done" and target.is_file()
        at.run()
        _ok(at)
        assert any("Learned before" in c.value for c in at.caption)
        assert any("not mined with these concepts" in i.value for i in at.info)
        assert [b for b in at.button if b.key == "cc_mine"]
    finally:
        target.unlink(missing_ok=True)


def test_concepts_page_gallery_of_a_mined_run(world, learned, monkeypatch):
    import captum_topk.runs.visualize as runs_vis

    monkeypatch.setitem(runs_vis.VIS_SETTINGS, "steps", 4)
    monkeypatch.setitem(runs_vis.VIS_SETTINGS, "size", 32)
    at = _app().run()
    at.switch_page("pages/concepts.py").run()
    at.selectbox(key="cc_layer").set_value("layer2").run()
    at.number_input(key="cc_n").set_value(4).run()
    _ok(at)
    mined = learned["mined"]
    assert any(mined.path.name in c.value for c in at.caption)  # patches from the run mined with them
    assert sum("not visualized yet" in i.value for i in at.info) == 4
    assert "Importance and heatmaps" in [s.value for s in at.subheader]
    # importance for the class picked, as the library computes it
    at.number_input(key="cc_imp_images").set_value(8).run()
    _ok(at)
    run = learned["run"]
    want = Concepts.load(learned["file"]).importance(run.model, torch.stack([run.dataset[i][0] for i in range(8)]), 0)
    first = int(torch.argmax(want))
    assert any(f"most important: concept {first} ({float(want[first]):+.3g})" in c.value for c in at.caption)
    # the matching of the file with itself: everything kept
    at.selectbox(key="cc_match_b").set_value(f"{TINY_SPEC.run_name()}/concepts/layer2-nmf4-s0.pt")
    at.button(key="cc_match").click().run()
    _ok(at)
    assert any(m.value.startswith("**4 kept, 0 dropped, 0 created**") for m in at.markdown)
    # feature visualization of the directions, cached in the run folder
    at.button(key="cc_vis").click().run()
    _ok(at)
    assert not any("not visualized yet" in i.value for i in at.info)


def test_jobspec_concepts_field_keeps_old_folders_and_stays_under_the_runs_root(world):
    import hashlib
    import json

    plain = dd.JobSpec(layers=("layer1",))
    d = plain.to_dict()
    del d["concepts"]  # what a JobSpec without the field hashed: its runs keep their folders
    old = hashlib.sha1(json.dumps({**d, "format": dd.JOB_FORMAT}, sort_keys=True).encode()).hexdigest()[:8]
    assert plain.key() == old
    with_c = dd.JobSpec(layers=("layer1",), concepts=("run/concepts/a.pt",))
    assert with_c.key() != plain.key() and dd.JobSpec.from_dict(json.loads(json.dumps(with_c.to_dict()))) == with_c
    with pytest.raises(dd.UnsafePathError):
        dd.run_spec(dd.JobSpec(layers=("layer1",), concepts=("../elsewhere.pt",)), world)
