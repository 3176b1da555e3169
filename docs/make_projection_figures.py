#!/usr/bin/env python
r"""Figures of docs/projections.md: Zeiler & Fergus Fig. 2 with real ImageNet weights.

MobileNetV2 with torchvision's ImageNet weights (``load_model("mobilenet_v2-imagenet")``,
shipped by a package) is mined on the packaged real photos (``demo_images()``, 44 photos) at
three depths, with per-channel statistics gathered in the same pass. For each layer, the four
channels with the strongest mean top-9 activation are shown: their top-9 image patches beside
the projection of each of those nine neurons, once with guided backprop
(``NeuronGuidedBackprop``) and once with the deconvnet of Zeiler & Fergus
(``NeuronDeconvolution``), both with the ReLU6 rule of :mod:`captum_topk.core.projections`. A
histogram figure of the statistics completes the set. Nothing is downloaded.

Usage::

    .venv/bin/python docs/make_projection_figures.py               # writes docs/images/*.png
    .venv/bin/python docs/make_projection_figures.py --stats-only  # only stats_features_7.png
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.utils.files import atomic_open  # noqa: E402
from captum_topk.data import demo_images, make_loader  # noqa: E402
from captum_topk.models import load_model  # noqa: E402
from captum_topk.viz.plot import projection_sheet, save_png  # noqa: E402
from captum_topk.core.projections import symmetric_rgb  # noqa: E402
from captum_topk.viz.plot import fit_patches  # noqa: E402

OUT = Path(__file__).resolve().parent / "images"
LAYERS = ["features.3", "features.7", "features.11"]  # receptive fields 19, 75, 203 px
PATCH_PX = {"features.3": 57, "features.7": 64, "features.11": 80}
N_CHANNELS = 4
MAX_KB = 400
STATS_EDGES = torch.linspace(-4, 4, 65)  # features.7: 0.125-wide bins


def strongest_channels(result, layer: str, n: int):
    r"""The ``n`` channels with the highest mean top-9 activation (deterministic, data-driven)."""
    v = result.values(layer)
    mean = torch.where(torch.isfinite(v), v, torch.zeros_like(v)).mean(dim=1)
    return sorted(torch.argsort(mean, descending=True, stable=True)[:n].tolist())


def sheet(result, dataset, model, info, layer, channels, method):
    px = PATCH_PX[layer]
    pairs, values = {}, {}
    for c in channels:
        proj = result.projections(dataset, layer, c, method, model=model, progress=False)
        patches = fit_patches(result.patches(dataset, layer, c), px)
        rgb, _ = symmetric_rgb(fit_patches(proj.attributions, px))
        pairs[c], values[c] = (patches, rgb), [r.value for r in proj.records]
    side = max(p.shape[-1] for p, _ in pairs.values())
    name = method.replace("_", " ")
    return projection_sheet(pairs, values, ncols=2, mean=info.mean, std=info.std,
                            scale=max(1, px // side), method=name,
                            title=f"MobileNetV2-ImageNet {layer}: top-9 patches | {name} projections")


def save_checked(image, path: Path) -> None:
    save_png(image, path)
    kb = path.stat().st_size / 1024
    if kb > MAX_KB:
        raise SystemExit(f"{path} is {kb:.0f} KB, over {MAX_KB} KB: lower PATCH_PX or N_CHANNELS.")
    print(f"{path.relative_to(OUT.parent.parent)}  {image.size[0]}x{image.size[1]}  {kb:.0f} KB")


def stats_figure(result, info, layer: str, channels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = result.stats(layer)
    centres = (st.edges[1:] + st.edges[:-1]) / 2
    fig, axes = plt.subplots(1, len(channels), figsize=(3.2 * len(channels), 2.6), sharey=True)
    for ax, c in zip(axes, channels):
        frac = st.counts[c].double() / st.count[c]
        ax.bar(centres, frac, width=float(st.edges[1] - st.edges[0]), color="#4c72b0")
        ax.set_yscale("log")
        ax.set_xlim(float(st.edges[0]), float(st.edges[-1]))
        top = result.label_histogram(layer, c)
        best = [f"{info.categories[i].split(',')[0]} x{int(top[i])}"
                for i in top.argsort(descending=True, stable=True)[:2] if top[i] > 0]
        ax.set_title(f"ch {c}: mean {float(st.mean[c]):.2f}, >0 {100 * float(st.fraction_positive[c]):.0f}%\n"
                     f"top-9 labels: {', '.join(best) or '-'}", fontsize=8)
        ax.set_xlabel("activation", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("fraction of positions", fontsize=8)
    fig.suptitle(f"{layer}: activation histograms over {st.n_images} photos "
                 f"({int(st.count[0])} positions per channel, {st.bins} bins; "
                 f"under/overflow {int(st.underflow.sum())}/{int(st.overflow.sum())})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path = OUT / f"stats_{layer.replace('.', '_')}.png"
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    print(f"{path.relative_to(OUT.parent.parent)}  {path.stat().st_size / 1024:.0f} KB")


def main(projections: bool = True) -> None:
    torch.manual_seed(0)
    model, info = load_model("mobilenet_v2-imagenet")
    dataset = demo_images(transform=info.transform)
    # Default histogram edges (64 bins over [-16, 16)) except for features.7, whose
    # activations stay within a few units: finer bins there, for the statistics figure.
    miner = LayerTopKPatches(model, LAYERS, k=9, stats={"features.3": True, "features.7": STATS_EDGES,
                                                         "features.11": True})
    result = miner.mine(make_loader(dataset, batch_size=16))
    chosen = {layer: strongest_channels(result, layer, N_CHANNELS) for layer in LAYERS}
    for layer in LAYERS if projections else []:
        for method in ("guided_backprop", "deconvolution"):
            image = sheet(result, dataset, model, info, layer, chosen[layer], method)
            save_checked(image, OUT / f"projection_{layer.replace('.', '_')}_{method}.png")
    stats_figure(result, info, "features.7", chosen["features.7"])
    for layer in LAYERS:
        st = result.stats(layer)
        print(f"{layer}: channels {chosen[layer]}  mean {[round(float(st.mean[c]), 3) for c in chosen[layer]]}  "
              f">0 {[round(float(st.fraction_positive[c]), 3) for c in chosen[layer]]}  "
              f"overflow {int(st.overflow.sum())}  underflow {int(st.underflow.sum())}")
        for c in chosen[layer]:
            h = result.label_histogram(layer, c)
            top = [(info.categories[i], int(h[i])) for i in h.argsort(descending=True)[:3] if h[i] > 0]
            print(f"   ch {c}: top-9 labels {top}")


if __name__ == "__main__":
    main(projections="--stats-only" not in sys.argv[1:])
