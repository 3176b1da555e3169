"""Regenerate the dashboard screenshots of docs/dashboard.md (docs/images/dashboard_*.png).

Runs the real dashboard on the embedded default (MobileNetV2-ImageNet on the packaged photos,
mined first if missing: ``captum_topk.dashboard.ensure_default_run``) and, for the Compare
page, the fine-tuned checkpoint found under the checkpoints root mined the same way (else the
default mined through ONNX Runtime), and SqueezeNet 1.1 against MobileNetV2 for the
cross-architecture view (the Compare page's matched units), in headless Chromium with the helpers of
tests/test_browser.py. Prints how long each page took to be ready.

    .venv/bin/python docs/make_dashboard_screenshots.py

Needs Chromium (``apt-get install -y chromium``). Each PNG is quantised to 256 colours so
that it stays small (< 400 KB); it is written atomically.
"""

from __future__ import annotations

import dataclasses

import os
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from _browser import Browser, find_chromium, png_stats, running_app  # noqa: E402

from captum_topk import dashboard as dd  # noqa: E402

OUT = REPO / "docs" / "images"
MAX_BYTES = 400_000


def shrink(src: Path, dest: Path) -> Path:
    r"""Quantise a screenshot to 256 colours (median cut) and write it atomically."""
    img = Image.open(src).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                   dither=Image.Dither.NONE)
    tmp = dest.with_name(f".{dest.name}.tmp")
    img.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, dest)
    return dest


def main() -> int:
    chromium = find_chromium()
    if chromium is None:
        print("No Chromium found: apt-get install -y chromium (or set CHROMIUM=/path).", file=sys.stderr)
        return 1
    roots = dd.Roots.from_env(REPO)
    default = dd.ensure_default_run(roots, progress=lambda phase, done, total: None)
    # feature visualizations shown by the Top-k and Microscope pages (cached in the run folder)
    run = dd.open_run(default)
    dd.channel_visualizations(run, "features.3", list(range(8)))
    pages = {
        "topk": "?layer=features.3&channel=6&rank=0",  # a "bright spot on dark" detector
        "microscope": "microscope",
        "filters": "filters",
        "embeddings": "embeddings?layer=features.11",
        "data_jobs": "data_jobs",
    }
    finetuned = dd.find_finetuned(roots)
    other = None
    if finetuned is not None:  # pretrained vs fine-tuned, mined on the same photos, at the
        # depths fine-tuning changes (the default fine-tune trains features.11-18)
        default = dd.mine_job(dataclasses.replace(dd.DEFAULT_SPEC, layers=("features.7", "features.14", "features.17")),
                              roots)
        other = dd.mine_job(dd.like_run(dd.open_run(default), finetuned, roots), roots)
    elif dd.onnx_available() is None:  # else PyTorch vs ONNX Runtime
        other = dd.mine_job(dd.export_for_ort(dd.DEFAULT_SPEC, roots), roots)
    if other is not None:
        a, b = default.relative_to(roots.runs).as_posix(), other.relative_to(roots.runs).as_posix()
        run_a, run_b = dd.open_run(default), dd.open_run(other)
        layer, channel = "features.7", 12
        if finetuned is not None:  # show the deepest shared layer's most changed channel
            layer = dd.matching_layers(run_a, run_b)[-1]
            ranked = dd.compare_runs(run_a, run_b)["channels"].get(layer) or [{"channel": channel}]
            channel = int(ranked[0]["channel"])
        pages["compare"] = f"compare?a={a}&b={b}&layer={layer}&channel={channel}"
    # two architectures unit by unit: MobileNetV2 vs SqueezeNet 1.1 on the same photos
    squeeze = dd.mine_job(dataclasses.replace(dd.DEFAULT_SPEC, model="squeezenet1_1-imagenet",
                                              layers=("features.4", "features.7", "features.10")), roots)
    pages["compare_models"] = (f"compare?a={dd.DEFAULT_SPEC.run_name()}&b={squeeze.relative_to(roots.runs).as_posix()}")
    sizes = {"topk": (1400, 2100), "microscope": (1400, 1500), "embeddings": (1400, 1150), "compare": (1400, 2700),
             "compare_models": (1400, 2400)}
    tmp = OUT / ".screens"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {dd.ENV_VARS[k]: str(getattr(roots, k)) for k in dd.ENV_VARS}
    with running_app(env) as url:
        for name, path in pages.items():
            width, height = sizes.get(name, (1400, 1000))
            with Browser(chromium, width, height) as browser:
                state = browser.load(f"{url}/{path}", timeout=300, settle=1.5)
                raw = browser.screenshot(tmp / f"{name}.png")
            dest = shrink(raw, OUT / f"dashboard_{name}.png")
            stats = png_stats(dest)
            first = state.get("first_image_s")
            print(f"{dest.relative_to(REPO)}: {stats['bytes'] / 1e3:.0f} KB, {stats['width']}x{stats['height']}; "
                  f"page complete in {state['ready_s']:.1f} s"
                  + (f", first image after {first:.1f} s" if first is not None else ""))
            if stats["bytes"] > MAX_BYTES:
                print(f"  warning: larger than {MAX_BYTES / 1e3:.0f} KB", file=sys.stderr)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
