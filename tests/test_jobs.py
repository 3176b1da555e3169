"""Dashboard jobs in the background: one at a time per runs root, a bounded queue, cancel and
resume, a second process waits its turn, and a run folder locked against a second writer."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from captum_topk import dashboard as dd
from captum_topk.runs import RunSpec, mine_run
from captum_topk.runs.lock import RunLock, RunLockedError

from ._dashboard_fixture import TINY_SPEC, roots_of


@pytest.fixture(scope="module")
def roots(dashboard_env):
    return roots_of(dashboard_env)


def _spec(**kw):
    base = dict(model="resnet18", checkpoint="r18-random.pt", layers=("layer1",), data="shapes", k=2,
                batch_size=2, input_size=64, backend="torch")
    return dd.JobSpec(**{**base, **kw})


def test_one_job_at_a_time_bounded_queue_and_cancel_then_resume(roots, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_THROTTLE_S", "0.3")  # slow batches down so that a cancel lands mid-run
    queue = dd.JobQueue(roots)
    first = queue.submit(_spec(k=3))
    assert queue.submit(_spec(k=3)) is first  # the same job is not queued twice
    for _ in range(400):
        if first.status == "running" and first.done >= 2:
            break
        time.sleep(0.05)
    waiting = [queue.submit(_spec(k=k)) for k in (4, 5, 6)]
    with pytest.raises(dd.JobRefused, match="3 jobs already wait"):
        queue.submit(_spec(k=7))
    assert first.status == "running" and all(j.status == "queued" for j in waiting)  # one at a time
    assert queue.cancel(waiting[2].id) and waiting[2].status == "cancelled"
    assert queue.cancel(first.id)
    queue.wait(first, timeout=60)
    assert first.status == "cancelled"
    folder = roots.runs / first.spec.run_name()
    assert (folder / "snapshot.pt").is_file() and not (folder / "result.pt").is_file()
    assert json.loads((folder / "run.json").read_text())["status"] == "stopped"
    for job in waiting[:2]:
        assert queue.wait(job, timeout=120).status == "done"
    monkeypatch.delenv("CAPTUM_TOPK_THROTTLE_S")
    again = queue.wait(queue.submit(_spec(k=3)), timeout=120)  # resumes from the snapshot
    assert again.status == "done" and (folder / "result.pt").is_file()
    direct = dd.open_run(folder).result
    assert direct.n_images == 12


def test_a_job_waits_while_another_process_mines_in_the_root(roots):
    other = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time(),
             "command": "captum-topk dashboard (another process)", "token": "x"}
    (roots.runs / ".jobs.lock").write_text(json.dumps(other))
    try:
        queue = dd.JobQueue(roots, retry_s=0.1)
        job = queue.submit(_spec(k=8))
        for _ in range(100):
            if job.status == "waiting":
                break
            time.sleep(0.05)
        assert job.status == "waiting" and "another process" in job.error
    finally:
        (roots.runs / ".jobs.lock").unlink()
    assert queue.wait(job, timeout=120).status == "done"


def test_a_run_folder_has_one_writer_and_a_dead_owner_does_not_block(tmp_path, roots):
    spec = dd.run_spec(TINY_SPEC, roots)
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=r"being mined by process \d+ .*nothing was written"):
            mine_run(spec, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
    # a lock left by a killed process (a pid that no longer exists) is taken over
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname(),
                                                        "started": 0, "command": "killed"}))
    assert mine_run(spec, tmp_path / "run", progress=False).is_file()
    assert not (tmp_path / "run" / ".lock").exists()


def test_job_bounds_are_enforced_by_the_library():
    with pytest.raises(ValueError, match="k must be between 1 and 64"):
        dd.JobSpec(k=10_000)
    with pytest.raises(ValueError, match="batch_size must be between"):
        dd.JobSpec(batch_size=0)
    with pytest.raises(ValueError, match="number of layers"):
        dd.JobSpec(layers=tuple(f"l{i}" for i in range(40)))
    assert RunSpec(k=10_000).k == 10_000  # the library itself has no such limit
