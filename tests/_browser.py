"""Drive the real dashboard in headless Chromium: start ``streamlit run`` on a free port, load
pages through the Chrome DevTools Protocol (no Playwright / Selenium: a websocket, which
Streamlit already depends on), wait until the app has finished rendering, screenshot.

Used by ``tests/test_browser.py`` and ``docs/make_dashboard_screenshots.py``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app_streamlit" / "main.py"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Ready: the app's script is not running, no spinner / skeleton / progress is left, every
# <img> has loaded, plotly charts have drawn, and the page has a title.
_READY_JS = """(() => {
  const q = s => document.querySelectorAll(s).length;
  const sw = document.querySelector('[data-testid="stStatusWidget"]');
  const running = !!sw && /Running|Stop|Connecting/.test(sw.innerText || '');
  const busy = q('[data-testid="stSpinner"]') + q('[data-testid="stSkeleton"]') + q('.stSpinner');
  const imgs = Array.from(document.images);
  const loaded = imgs.every(i => i.complete && i.naturalWidth > 0);
  const plots = q('.js-plotly-plot'), drawn = q('.js-plotly-plot .main-svg');
  const titled = q('h1') > 0;
  return JSON.stringify({ready: !running && busy === 0 && loaded && drawn >= plots && titled,
                         imgs: imgs.length, plots: plots, busy: busy, running: running, titled: titled,
                         text: document.body.innerText.length});
})()"""


def find_chromium() -> Optional[str]:
    r"""Path of a Chromium / Chrome binary, or None (``CHROMIUM`` env var first)."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (localhost only)
        return r.read()


@contextlib.contextmanager
def running_app(env: Optional[Dict[str, str]] = None, port: Optional[int] = None,
                timeout: float = 120.0, command: Optional[List[str]] = None,
                cwd: Optional[Path] = None) -> Iterator[str]:
    r"""Run ``streamlit run app_streamlit/main.py`` headless on a free port; yields its URL.

    ``command`` replaces that command line (``--port PORT`` is appended: e.g. an installed
    ``captum-topk dashboard``), run in ``cwd`` (default the checkout). Waits for
    ``/_stcore/health``; the server (and its process group) is always killed on exit.
    """
    port = port or free_port()
    if command is None:
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--client.toolbarMode", "viewer"]
    else:
        cmd = [*command, "--port", str(port)]
    log = tempfile.NamedTemporaryFile(prefix="streamlit-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=cwd or REPO, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                if _get(f"http://127.0.0.1:{port}/_stcore/health", 2.0).strip() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on port {port} within {timeout:.0f} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        _kill(proc)
        log.close()
        os.unlink(log.name)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Browser:
    r"""One headless Chromium page driven over the DevTools Protocol."""

    def __init__(self, chromium: str, width: int = 1400, height: int = 1000) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Chromium did not start its DevTools endpoint.")
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            pages = [t for t in json.loads(_get(f"http://127.0.0.1:{port}/json/list")) if t["type"] == "page"]
            self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=20).__enter__()
            self._ids = itertools.count(1)
            self.send("Page.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def send(self, method: str, params: Optional[dict] = None, timeout: float = 60.0) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def load(self, url: str, timeout: float = 120.0, settle: float = 1.5) -> dict:
        r"""Navigate and wait until the app is ready (see ``_READY_JS``) for ``settle`` seconds.

        Returns the last readiness state plus ``ready_s`` (seconds until ready) and
        ``first_image_s`` (until the first image was on screen, None if the page has none)."""
        self.send("Page.navigate", {"url": url})
        start = time.monotonic()
        deadline = start + timeout
        ready_since = first_image = None
        state: dict = {}
        time.sleep(0.5)
        while time.monotonic() < deadline:
            state = json.loads(self.evaluate(_READY_JS) or "{}")
            if first_image is None and state.get("titled") and state.get("imgs", 0) > 0:
                first_image = time.monotonic() - start  # the first picture is on screen
            if state.get("ready"):
                ready_since = ready_since or time.monotonic()
                if time.monotonic() - ready_since >= settle:
                    state.update(first_image_s=first_image, ready_s=ready_since - start)
                    return state
            else:
                ready_since = None
            time.sleep(0.25)
        raise TimeoutError(f"{url} not ready after {timeout:.0f} s: {state}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(base64.b64decode(data))
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        _kill(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def png_stats(path: Path) -> Dict[str, float]:
    r"""Size and pixel spread of a screenshot: ``bytes``, ``std`` (grey-level standard
    deviation), ``colours`` (distinct RGB values in a 4x-subsampled copy), ``non_white``
    (fraction of pixels that are not near-white)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    grey = rgb.mean(axis=2)
    small = rgb[::4, ::4].reshape(-1, 3)
    return {"bytes": Path(path).stat().st_size, "std": float(grey.std()),
            "colours": int(len(np.unique(small, axis=0))),
            "non_white": float((grey < 240).mean()), "width": rgb.shape[1], "height": rgb.shape[0]}
