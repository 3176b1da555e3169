#!/usr/bin/env python
r"""Feature visualization on MobileNetV2 (real ImageNet weights, offline): speed and quality.

For channels of three layers, every figure measured in this one run:

* **speed**: seconds per channel, amortised over a batch (all of a layer's channels optimised
  together), at ``--size`` px and ``--steps`` Adam steps;
* **(a) strength**: the objective each visualization reaches (the channel's mean over
  positions, on the final image without transforms, at ``--size`` px) against the same
  objective on the channel's dataset top-1 image (mined with ``LayerTopKPatches(k=1)`` on the
  44 packaged photos), measured both on the whole photo at the model's input size (224 px) and
  on the photo resized to ``--size`` px; also against the best photo *by that objective*;
* **(b) robustness**: the lowest objective of the visualization over shifted (±4 px, edges
  replicated) and rescaled (0.9x, 1.1x) copies, against the same top-1 references;
* **(c) selectivity**: the channel x image response matrix of a layer's visualizations,
  normalised per channel (divided by the channel's largest absolute response): does each
  channel respond most to its own image (row argmax on the diagonal), and by what margin.

The machine's load average is printed before and after: on a shared CPU the wall-clock
timings scale with it, so the CPU seconds this process used are printed too (with one thread,
that is the wall time an idle machine would take). ``--threads`` sets
``torch.set_num_threads`` (default: torch's choice).

Usage::

    .venv/bin/python benchmarks/feature_vis.py                      # full figures (minutes)
    .venv/bin/python benchmarks/feature_vis.py --steps 64 --channels 4   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.data import demo_images, make_loader  # noqa: E402
from captum_topk.featvis import responses, visualize  # noqa: E402
from captum_topk.models import load_model  # noqa: E402

LAYERS = ["features.3", "features.7", "features.11"]


def spread_channels(n_total: int, n: int) -> list:
    r"""``n`` channels evenly spread over ``0 .. n_total - 1`` (deterministic)."""
    return sorted({int(round(float(v))) for v in torch.linspace(0, n_total - 1, n)})


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    r"""Translate by ``(dy, dx)`` px, the uncovered border replicated (no wrap-around)."""
    p = max(abs(dy), abs(dx))
    h, w = images.shape[-2:]
    padded = F.pad(images, [p] * 4, mode="replicate")
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def rescale(images: torch.Tensor, factor: float) -> torch.Tensor:
    size = [int(round(s * factor)) for s in images.shape[-2:]]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=factor < 1).clamp(0, 1)


def perturbations(images: torch.Tensor):
    for dy, dx in [(4, 0), (-4, 0), (0, 4), (0, -4), (3, 3), (-3, -3)]:
        yield f"shift({dy:+d},{dx:+d})", shift(images, dy, dx)
    for f in (0.9, 1.1):
        yield f"scale {f}", rescale(images, f)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    ap.add_argument("--channels", type=int, default=8, help="channels per layer, spread evenly")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--neuron", action="store_true",
                    help="also optimise objective='neuron' and compare it with the mined top-1 value "
                         "(one position against one position)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"load average before: {load_average()} on {os.cpu_count()} CPUs; torch threads "
          f"{torch.get_num_threads()}; torch {torch.__version__}")
    model, info = load_model("mobilenet_v2-imagenet")
    dataset = demo_images(transform=info.transform)
    mined = LayerTopKPatches(model, args.layers, k=1).mine(make_loader(dataset, batch_size=16), progress=False)
    photos = torch.stack([dataset[i][0] for i in range(len(dataset))])  # normalised, 224 px
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    photos = (photos * std + mean).clamp(0, 1)  # back to RGB in [0, 1]
    photos_small = rescale(photos, args.size / photos.shape[-1])
    print(f"{len(dataset)} photos at {tuple(photos.shape[-2:])}; visualizations at {args.size} px, "
          f"{args.steps} steps, seed {args.seed}\n")

    summary = []
    for layer in args.layers:
        chans = spread_channels(mined.num_channels(layer), args.channels)
        cpu0 = time.process_time()
        vis = visualize(model, layer, chans, info=info, size=args.size, steps=args.steps,
                        seed=args.seed, progress=False)
        cpu_per_channel = (time.process_time() - cpu0) / len(chans)
        per_channel = vis.seconds / len(chans)
        # (a) the channel mean on every photo, at 224 px and at --size px
        on_photos = responses(model, layer, photos, chans, info=info)            # (c, 44)
        on_small = responses(model, layer, photos_small, chans, info=info)       # (c, 44)
        top1 = torch.tensor([mined.records(layer, c)[0].index for c in chans])
        rows = torch.arange(len(chans))
        ref224 = on_photos[rows, top1]
        ref_small = on_small[rows, top1]
        ref = torch.maximum(ref224, ref_small)
        top1_value = torch.tensor([mined.records(layer, c)[0].value for c in chans])  # best position
        best_photo = on_photos.max(dim=1).values
        own = vis.values
        # (b) the lowest value over shifted / rescaled copies of each visualization
        worst = own.clone()
        for _, imgs in perturbations(vis.images):
            r = responses(model, layer, imgs, chans, info=info)[rows, rows]
            worst = torch.minimum(worst, r)
        # (c) diagonal dominance of the channel x image matrix
        resp = responses(model, layer, vis.images, chans, info=info)             # (c, c)
        norm = resp / resp.abs().amax(dim=1, keepdim=True)
        off = norm.masked_fill(torch.eye(len(chans), dtype=torch.bool), float("-inf")).amax(dim=1)
        diag_ok = (norm.argmax(dim=1) == rows)
        margin = norm.diagonal() - off

        print(f"== {layer}: channels {chans}")
        print(f"   speed: {vis.seconds:.1f} s for {len(chans)} channels = {per_channel:.2f} s/channel wall, "
              f"{cpu_per_channel:.2f} CPU-s/channel (this process, all threads)")
        print("   channel  vis  | top-1 photo @224  @%d | best photo @224 | top-1 best position | "
              "worst shifted/rescaled vis | diag margin" % args.size)
        for j, c in enumerate(chans):
            print(f"   {c:7d} {own[j]:6.2f} | {ref224[j]:15.2f} {ref_small[j]:5.2f} | {best_photo[j]:15.2f} | "
                  f"{top1_value[j]:19.2f} | {worst[j]:26.2f} | {margin[j]:+.2f}")
        a = (own > ref).float().mean().item()
        b = (worst > ref).float().mean().item()
        c_ok = diag_ok.float().mean().item()
        ratio = (own / ref.clamp(min=1e-6)).median().item()
        ratio_best = (own / best_photo.clamp(min=1e-6)).median().item()
        print(f"   (a) vis > top-1 photo (both sizes): {a:.0%} of channels; median vis / top-1 = {ratio:.2f}x; "
              f"median vis / best photo = {ratio_best:.2f}x")
        print(f"   (a') vis channel mean > the top-1's single best position: {(own > top1_value).float().mean().item():.0%}")
        if args.neuron:
            nvis = visualize(model, layer, chans, info=info, size=args.size, steps=args.steps,
                             seed=args.seed, objective="neuron", progress=False)
            print(f"   (a'') objective='neuron': the optimised centre position > the top-1's best position: "
                  f"{(nvis.values > top1_value).float().mean().item():.0%}; median ratio "
                  f"{(nvis.values / top1_value.clamp(min=1e-6)).median().item():.2f}x")
        print(f"   (b) worst shifted/rescaled vis > top-1 photo: {b:.0%}; median worst / top-1 = "
              f"{(worst / ref.clamp(min=1e-6)).median().item():.2f}x")
        print(f"   (c) own image is the channel's strongest: {c_ok:.0%}; mean normalised margin "
              f"{margin.mean().item():+.2f}\n")
        summary.append((layer, per_channel, cpu_per_channel, a, ratio, b, c_ok))

    print(f"load average after: {load_average()}")
    print("\nlayer        s/channel  CPU-s/channel  (a) vis>top1  median ratio  (b) robust  (c) diagonal")
    for layer, spc, cpu, a, ratio, b, c_ok in summary:
        print(f"{layer:12s} {spc:9.2f}  {cpu:13.2f}  {a:12.0%}  {ratio:11.2f}x  {b:10.0%}  {c_ok:12.0%}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
