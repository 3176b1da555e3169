"""Test-wide settings: a private persistent receptive-field cache per session."""

import atexit
import os
import runpy
import shutil
import tempfile

# Tests must measure the probe, not a cache left by an earlier run or by the user.
_CACHE = tempfile.mkdtemp(prefix="captum-topk-cache-")
os.environ["CAPTUM_TOPK_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Under pytest-xdist (`make test` runs one worker per core) each worker computes with one
# thread: two workers x two threads would fight over the two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


if os.environ.get("CAPTUM_TOPK_TEST_ORT_JITTER"):  # another CPU's kernels, simulated (tests/_tolerance.py)
    _JITTER_SITE = os.path.join(os.path.dirname(__file__), "_ort_jitter")
    runpy.run_path(os.path.join(_JITTER_SITE, "sitecustomize.py"))  # this process

    # and every Python process the tests start (CLI runs, torchrun workers)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_JITTER_SITE, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def dashboard_env(tmp_path_factory):
    r"""One dashboard world for the whole session (roots in a temp folder, a labelled image
    folder, a random ResNet-18 checkpoint and the tiny run mined once): the env vars of its roots.
    Tests may add runs to it; none removes what another relies on."""
    from ._dashboard_fixture import make_world

    return make_world(tmp_path_factory.mktemp("dashboard-world"))
