"""The dashboard's model choices: a timm architecture, a transformers save_pretrained folder under
the checkpoints root, an allowed Python factory (JobSpec -> RunSpec, and the Data and jobs page
driven headless with AppTest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captum_topk import dashboard as dd

from ._dashboard_fixture import restore_env, roots_of, set_env
from ._models import save_hf_vit

pytest.importorskip("timm")
pytest.importorskip("transformers")
AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(Path(__file__).resolve().parent.parent / "app_streamlit" / "main.py")
TIMEOUT = 180
FACTORY = "tests._models:tiny_timm_vit"


@pytest.fixture(scope="module")
def world(dashboard_env):
    old = set_env(dashboard_env)
    try:
        roots = roots_of(dashboard_env)
        if not (roots.checkpoints / "hf" / "vit" / "config.json").is_file():
            save_hf_vit(roots.checkpoints / "hf" / "vit")
        yield roots
    finally:
        restore_env(old)


def test_job_specs_of_library_models(world, monkeypatch):
    assert dd.list_model_folders(world.checkpoints) == ["hf/vit"]
    spec = dd.JobSpec(model="hf:hf/vit", layers=("vit.layers.0",), backend="torch")
    run = dd.run_spec(spec, world)
    assert run.model == f"hf:{(world.checkpoints / 'hf' / 'vit').resolve()}" and run.weights_files()
    assert dd.model_source(spec) == "hf" and spec.run_name().startswith("hf-vit-demo-")
    with pytest.raises(dd.UnsafePathError):
        dd.run_spec(dd.JobSpec(model="hf:../../etc", layers=("x",)), world)
    with pytest.raises(ValueError, match="own weights"):
        dd.run_spec(dd.JobSpec(model="hf:hf/vit", checkpoint="r18-random.pt", layers=("x",)), world)
    factory = dd.JobSpec(model=FACTORY, layers=("blocks.0",))
    monkeypatch.delenv(dd.FACTORIES_ENV, raising=False)
    with pytest.raises(ValueError, match=dd.FACTORIES_ENV):
        dd.run_spec(factory, world)
    monkeypatch.setenv(dd.FACTORIES_ENV, f"{FACTORY}, not a spec")
    assert dd.allowed_factories() == [FACTORY]
    assert dd.run_spec(factory, world).model == FACTORY
    timm_spec = dd.JobSpec(model="timm:resnet10t", checkpoint=None, layers=("layer1",))
    assert dd.model_source(timm_spec) == "timm" and dd.run_spec(timm_spec, world).model == "timm:resnet10t"
    assert "layer4" in dd.job_layers(timm_spec, world)


def test_data_jobs_page_offers_and_mines_library_models(world, monkeypatch):
    monkeypatch.delenv(dd.FACTORIES_ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/data_jobs.py").run()
    assert not at.exception
    assert {"timm", "Hugging Face folder", "Python factory"} <= set(at.radio(key="jobs_source").options)

    at.radio(key="jobs_source").set_value("Python factory").run()
    assert not at.exception and dd.FACTORIES_ENV in at.info[0].value  # none allowed: said, not built

    at.radio(key="jobs_source").set_value("timm").run()
    assert not at.exception and not at.error
    assert at.text_input(key="jobs_timm").value == "resnet18d"
    at.text_input(key="jobs_timm").set_value("resnet10tt").run()
    assert not at.exception and "Did you mean: resnet10t" in at.error[0].value

    at.radio(key="jobs_source").set_value("Hugging Face folder").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="jobs_hf").value == "hf/vit"
    assert "vit.layers.0" in at.multiselect[0].options
    at.text_input(key="jobs_hf_text").set_value("../../").run()
    assert not at.exception and "outside the configured root" in at.error[0].value
    at.text_input(key="jobs_hf_text").set_value("").run()
    at.multiselect[0].set_value(["vit.layers.0"])
    at.number_input(key="jobs_max").set_value(4)
    at.radio(key="jobs_backend").set_value("PyTorch")
    at.button(key="jobs_mine").click().run()
    assert not at.exception and not at.error
    spec = dd.JobSpec(model="hf:hf/vit", layers=("vit.layers.0",), max_images=4, backend="torch")
    queue = dd.job_queue(world)
    job = next(j for j in queue.jobs() if j.spec == spec)
    assert queue.wait(job, timeout=TIMEOUT).status == "done", job.error
    recorded = json.loads((job.folder / "run.json").read_text())["spec"]
    assert recorded["model"] == f"hf:{(world.checkpoints / 'hf' / 'vit').resolve()}"
    assert recorded["weights_sha1"]
