#!/usr/bin/env python
r"""Figures of docs/architectures.md: a Vision Transformer's channels, mined on real photos.

torchvision's ``vit_b_32`` with **random weights** (seeded: no ImageNet weights for a ViT ship in
any package here, and nothing is downloaded) is mined at ``encoder.layers.encoder_layer_5`` on
the packaged photos (44) with per-channel statistics. For the three channels with the strongest
mean top-9 activation it writes their top-9 token footprints (the 32 x 32 patch each token
stands for) and the same nine images with the channel's whole activation map on them (not
thresholded: a random network's maps are flat enough that the NetDissect threshold lights only
the peak tokens).

Usage::

    .venv/bin/python docs/make_architecture_figures.py      # writes docs/images/vit_*.png
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.data import demo_images, make_loader  # noqa: E402
from captum_topk.runs.models import load_run_model  # noqa: E402
from captum_topk.viz import channel_sheet, fit_patches, record_overlays, save_png  # noqa: E402

OUT = Path(__file__).resolve().parent / "images"
LAYER = "encoder.layers.encoder_layer_5"


def main() -> None:
    model, info = load_run_model("vit_b_32", random_init=True)
    model.eval()
    dataset = demo_images(transform=info.transform)
    result = LayerTopKPatches(model, LAYER, k=9, stats=True).mine(make_loader(dataset, batch_size=8))
    v = result.values(LAYER)
    channels = sorted(torch.argsort(v.mean(dim=1), descending=True)[:3].tolist())
    feet = {c: fit_patches(result.patches(dataset, LAYER, c), 48) for c in channels}
    values = {c: [r.value for r in result.records(LAYER, c)] for c in channels}
    sheet = channel_sheet(feet, values, mean=info.mean, std=info.std, scale=1,
                          title=f"ViT-B/32 (random weights) {LAYER}: top-9 token footprints (32x32 px)")
    save_png(sheet, OUT / "vit_top9_footprints.png")
    maps = {}
    for c in channels:
        rgb = record_overlays(result, dataset, LAYER, c, model=model, mean=info.mean, std=info.std, quantile=None)
        maps[c] = fit_patches(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255, 96)
    sheet = channel_sheet(maps, values, title=f"ViT-B/32 (random weights) {LAYER}: the same images with the "
                                             "channel's activation map over every token")
    save_png(sheet, OUT / "vit_top9_overlays.png")
    print("channels", channels, "->", OUT / "vit_top9_footprints.png", OUT / "vit_top9_overlays.png")


if __name__ == "__main__":
    main()
