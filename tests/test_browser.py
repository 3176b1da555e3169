"""The real dashboard in a real browser: ``streamlit run`` in a subprocess, headless Chromium
over the DevTools Protocol, a screenshot of every page that must show a rendered page (not a
blank one, not a Streamlit exception). Skipped only where no Chromium binary is found."""

from __future__ import annotations

import json

import pytest

from ._browser import Browser, find_chromium, png_stats, running_app
from ._dashboard_fixture import make_world

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (apt-get install -y chromium chromium-driver, or set CHROMIUM=/path)")

RUN = "resnet18 + checkpoint r18-random.pt; 12 images (shapes)"
PAGES = {  # url path -> (h1 title, text shown, at least this many <img>, at least this many plotly charts)
    "": ("Top-k patches", RUN, 3, 2),
    "filters": ("Filters", RUN, 0, 2),
    "compare": ("Compare", RUN, 2, 0),
    "embeddings": ("Embeddings", RUN, 6, 1),
    "concepts": ("Concepts", "Learn from this run", 0, 0),
    "data_jobs": ("Data and jobs", "New mining job", 0, 0),
}


@pytest.mark.slow
def test_every_page_renders_in_chromium(tmp_path):
    env = make_world(tmp_path / "world")
    shots = tmp_path / "shots"
    with running_app(env) as url, Browser(CHROMIUM, 1400, 1000) as browser:
        for path, (title, text, n_img, n_plot) in PAGES.items():
            state = browser.load(f"{url}/{path}", timeout=150)
            page = json.loads(browser.evaluate(
                "JSON.stringify({h1: (document.querySelector('h1') || {}).innerText || '',"
                " exceptions: document.querySelectorAll('[data-testid=\"stException\"]').length,"
                " errors: Array.from(document.querySelectorAll('[data-testid=\"stAlertContentError\"]'))"
                "   .map(e => e.innerText), body: document.body.innerText})"))
            assert page["h1"].strip() == title, (path, page["h1"])
            assert page["exceptions"] == 0 and page["errors"] == [], (path, page["errors"])
            assert state["imgs"] >= n_img and state["plots"] >= n_plot, (path, state)
            assert text in page["body"], (path, page["body"][:500])
            png = browser.screenshot(shots / f"dashboard_{path or 'topk'}.png")
            stats = png_stats(png)
            # a rendered page: real pixels (not blank / one colour), many colours (images, charts)
            assert (stats["width"], stats["height"]) == (1400, 1000)
            assert stats["bytes"] > 30_000 and stats["std"] > 15 and stats["colours"] > 300, (path, stats)
            assert 0.02 < stats["non_white"] < 0.9, (path, stats)
