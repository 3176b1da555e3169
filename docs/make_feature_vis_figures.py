#!/usr/bin/env python
r"""Figures of docs/feature_visualization.md: samples from the model beside parts of real images.

MobileNetV2 with torchvision's ImageNet weights (``load_model("mobilenet_v2-imagenet")``,
shipped by a package) is mined on the packaged real photos (``demo_images()``, 44 photos) at
three depths. For each layer, the four channels with the strongest mean top-9 activation (the
channels of docs/projections.md) are visualized by optimisation (``featvis.visualize``: 128 px,
256 Adam steps, seed 0) and drawn beside their dataset top-9 patches (``featvis.sheet``). One
more figure shows three diverse samples per channel (``samples=3, diversity=...``). Nothing is
downloaded; every figure is a PNG under ``docs/images/featvis_*.png`` (< 300 KB each).

Usage::

    .venv/bin/python docs/make_feature_vis_figures.py              # all figures (minutes on a CPU)
    .venv/bin/python docs/make_feature_vis_figures.py --steps 64   # a quick preview
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.data import demo_images, make_loader  # noqa: E402
from captum_topk.featvis import visualize  # noqa: E402
from captum_topk.featvis.sheet import sheet  # noqa: E402
from captum_topk.models import load_model  # noqa: E402
from captum_topk.viz.plot import save_png  # noqa: E402

OUT = Path(__file__).resolve().parent / "images"
LAYERS = ["features.3", "features.7", "features.11"]  # receptive fields 19, 75, 203 px
PATCH_PX = {"features.3": 38, "features.7": 40, "features.11": 40}
N_CHANNELS = 4
MAX_KB = 300


def strongest_channels(result, layer: str, n: int):
    r"""The ``n`` channels with the highest mean top-9 activation (deterministic, data-driven)."""
    v = result.values(layer)
    mean = torch.where(torch.isfinite(v), v, torch.zeros_like(v)).mean(dim=1)
    return sorted(torch.argsort(mean, descending=True, stable=True)[:n].tolist())


def save_checked(image, path: Path) -> None:
    save_png(image, path)
    kb = path.stat().st_size / 1024
    if kb > MAX_KB:
        raise SystemExit(f"{path} is {kb:.0f} KB, over {MAX_KB} KB: lower the sizes.")
    print(f"{path.relative_to(OUT.parent.parent)}  {image.shape[1]}x{image.shape[0]}  {kb:.0f} KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    model, info = load_model("mobilenet_v2-imagenet")
    dataset = demo_images(transform=info.transform)
    result = LayerTopKPatches(model, LAYERS, k=9).mine(make_loader(dataset, batch_size=16))
    for layer in LAYERS:
        chans = strongest_channels(result, layer, N_CHANNELS)
        t0 = time.perf_counter()
        vis = visualize(model, layer, chans, info=info, size=args.size, steps=args.steps, seed=0)
        print(f"{layer}: channels {chans}, objective {[round(float(v), 2) for v in vis.values]} "
              f"({time.perf_counter() - t0:.0f} s)")
        patches = {c: result.patches(dataset, layer, c) for c in chans}
        values = {c: [r.value for r in result.records(layer, c)] for c in chans}
        image = sheet(vis, patches, values, mean=info.mean, std=info.std, vis_px=112,
                      patch_px=PATCH_PX[layer], ncols=2, fmt="{:.2f}",
                      title=f"MobileNetV2-ImageNet {layer}: optimised image (channel mean) | "
                            "dataset top-9 patches (44 photos)")
        save_checked(image, OUT / f"featvis_{layer.replace('.', '_')}.png")
    # Several samples of one channel, pushed apart by the diversity term.
    layer = "features.7"
    chans = strongest_channels(result, layer, N_CHANNELS)[:2]
    vis = visualize(model, layer, chans, info=info, size=args.size, steps=args.steps, seed=0,
                    samples=3, diversity=2.0)
    image = sheet(vis, vis_px=96, ncols=1, fmt="{:.2f}",
                  title=f"{layer}: 3 samples per channel, diversity 2.0")
    save_checked(image, OUT / "featvis_diversity.png")


if __name__ == "__main__":
    main()
