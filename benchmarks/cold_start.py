r"""Cold start of the dashboard as a newcomer meets it after ``make run``: empty folders (no run,
no receptive-field cache, no exported ONNX model), ``streamlit run`` from scratch, one headless
Chromium page.

Prints, measured in one run:

* ``server``: seconds until Streamlit answers its health check;
* ``first page``: seconds from navigation until the first page is rendered (title, no spinner);
* ``default run``: seconds from navigation until the embedded default run (MobileNetV2 on the
  packaged photos) is mined in the background and its top-9 patches are on the page;
* ``warm page``: the same page loaded again once everything is cached, and the ratio
  ``first page / warm page``.

Needs Chromium (``apt install chromium``); uses ``tests/_browser.py``. Run::

    .venv/bin/python benchmarks/cold_start.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _browser import Browser, find_chromium, running_app  # noqa: E402

from captum_topk.dashboard import ENV_VARS, Roots  # noqa: E402


def wait_for_default_run(browser: Browser, url: str, runs_root: Path, timeout: float) -> float:
    r"""Seconds until a finished run folder exists and the reloaded page shows pictures."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        done = [p for p in runs_root.rglob("run.json")
                if json.loads(p.read_text()).get("status") == "done"]
        if done:
            state = browser.load(url, timeout=max(10.0, timeout - (time.monotonic() - start)))
            if state.get("imgs", 0) > 0:
                return time.monotonic() - start
        time.sleep(1.0)
    raise TimeoutError(f"the default run was not ready after {timeout:.0f} s")


def main() -> int:
    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found: apt install chromium (or set CHROMIUM=/path/to/chrome)")
        return 1
    with tempfile.TemporaryDirectory(prefix="captum-topk-cold-") as base:
        roots = Roots.from_env(base)
        env = {var: str(getattr(roots, key)) for key, var in ENV_VARS.items()}
        env["CAPTUM_TOPK_CACHE_DIR"] = str(Path(base) / "rf-cache")
        os.environ.update(env)
        t0 = time.monotonic()
        with running_app(env=env, timeout=180) as url:
            server = time.monotonic() - t0
            with Browser(chromium) as browser:
                first = browser.load(url, timeout=300)
                default = first["ready_s"] + wait_for_default_run(browser, url, Path(roots.runs), timeout=900)
                warm = browser.load(url, timeout=120)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"server answers        {server:7.1f} s")
    print(f"first page (cold)     {first['ready_s']:7.1f} s")
    print(f"default run on page   {default:7.1f} s after navigation")
    print(f"same page (warm)      {warm['ready_s']:7.1f} s")
    print(f"ratio first/warm page {first['ready_s'] / max(warm['ready_s'], 1e-3):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
