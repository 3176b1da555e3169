"""The wheel carries everything a user runs: library, CLI, dashboard.

Built from this checkout (``pip wheel``), installed in a fresh virtual environment outside the
checkout, and used from a folder that is not the checkout: ``captum-topk --help``, a tiny
``mine`` and ``show``, the dashboard's files and command line, and (slow) the served dashboard's
health and first page in headless Chromium.

The fresh venv has only the wheel installed in it; its third-party dependencies (torch, captum,
streamlit, ...: 6 GB, minutes to install) are read from the project's venv through a ``.pth``
path line. A path line adds a folder to ``sys.path`` without running the ``.pth`` files in it,
so the checkout's editable install is not seen: every ``captum_topk`` module comes from the
wheel, which the tests check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, env, timeout=300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    r"""(venv's bin folder, environment, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(REPO)], REPO, clean_env)
    (wheel,) = dist.glob("captum_topk-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, clean_env)
    bin_dir = venv / "bin"
    purelib = Path(subprocess.check_output(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    # the dependencies: the project's venv, as a plain path line (its .pth files are not run)
    (purelib / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps", "--no-index",
          "-q", str(wheel)], tmp, clean_env)
    work = tmp / "user"
    work.mkdir()
    env = {**clean_env, "PATH": f"{bin_dir}{os.pathsep}{clean_env.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("CAPTUM_TOPK_CACHE_DIR", None)  # the user's own cache, under the working folder
    env["XDG_CACHE_HOME"] = str(work / ".cache")
    return bin_dir, env, work, purelib


def test_the_wheel_holds_the_library_the_cli_and_the_app(installed):
    bin_dir, env, work, purelib = installed
    where = json.loads(_run([str(bin_dir / "python"), "-c", (
        "import json, captum_topk, captum_topk.cli.dashboard as d; "
        "print(json.dumps([captum_topk.__file__, str(d.APP), d.APP.is_file()]))")], work, env))
    assert Path(where[0]).is_relative_to(purelib), where  # the wheel's package, not the checkout's
    assert Path(where[1]) == purelib / "app_streamlit" / "main.py" and where[2], where
    for page in ("topk", "microscope", "filters", "compare", "embeddings", "data_jobs"):
        assert (purelib / "app_streamlit" / "pages" / f"{page}.py").is_file(), page
    assert "mine" in _run([str(bin_dir / "captum-topk"), "--help"], work, env)
    dry = _run([str(bin_dir / "captum-topk"), "dashboard", "--dry-run", "--base", str(work)], work, env)
    assert str(purelib / "app_streamlit" / "main.py") in dry and "127.0.0.1" in dry


def test_the_installed_cli_mines_and_draws(installed):
    bin_dir, env, work, _ = installed
    out = work / "runs" / "tiny"
    _run([str(bin_dir / "captum-topk"), "mine", "--model", "mobilenet_v2-imagenet", "--layers", "features.3", "--data", "demo",
          "--max-images", "4", "--input-size", "64", "--k", "2", "--backend", "torch", "--no-progress",
          "--out", str(out)], work, env)
    info = json.loads((out / "run.json").read_text())
    assert info["spec"]["layers"] == ["features.3"] and (out / "result.pt").is_file()
    _run([str(bin_dir / "captum-topk"), "show", str(out), "--max-channels", "2"], work, env)
    assert list(out.rglob("*.png")), "show drew no PNG"


@pytest.mark.slow
def test_the_installed_dashboard_serves_its_first_page(installed, tmp_path):
    from ._browser import Browser, find_chromium, running_app

    bin_dir, env, work, _ = installed
    base = tmp_path / "base"
    base.mkdir()
    command = [str(bin_dir / "captum-topk"), "dashboard", "--base", str(base)]
    with running_app(env, command=command, cwd=work, timeout=180) as url:
        chromium = find_chromium()
        if chromium is None:
            pytest.skip("no Chromium binary: the health check passed, the page was not drawn")
        with Browser(chromium, 1200, 900) as browser:
            browser.load(url, timeout=150)
            page = json.loads(browser.evaluate(
                "JSON.stringify({h1: (document.querySelector('h1') || {}).innerText || '',"
                " exceptions: document.querySelectorAll('[data-testid=\"stException\"]').length})"))
    assert page["exceptions"] == 0 and page["h1"].strip(), page
    assert (base / "results").is_dir()  # the app's roots are the user's folder, not site-packages
