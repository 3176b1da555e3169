#!/usr/bin/env python
r"""What a channel's independence from its batch costs: MobileNetV2 (real ImageNet weights,
offline) channels optimised each in a forward of its own (``visualize``'s default) against all
in one batch (``batch_size=n``), measured in this one run: CPU seconds of each, their ratio,
and how far the batched images drift from the independent ones (the batch-size-dependent
rounding the optimisation amplifies; 0 between two independent runs).

Usage::

    .venv/bin/python benchmarks/feature_vis_batch.py --threads 1
    .venv/bin/python benchmarks/feature_vis_batch.py --layer features.11 --size 128 --steps 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk.featvis import visualize  # noqa: E402
from captum_topk.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="features.7")
    ap.add_argument("--channels", type=int, nargs="+", default=[0, 5, 12, 20, 33, 41, 50, 63])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = load_model("mobilenet_v2-imagenet")
    kw = dict(info=info, size=args.size, steps=args.steps, progress=False)
    visualize(model, args.layer, args.channels[:1], **{**kw, "steps": 1})  # layouts and fields, once
    runs = {}
    for name, extra in (("one forward per channel", {}), ("one batch", {"batch_size": len(args.channels)})):
        c0, t0 = time.process_time(), time.perf_counter()
        vis = visualize(model, args.layer, args.channels, **kw, **extra)
        runs[name] = (vis, time.process_time() - c0, time.perf_counter() - t0)
        print(f"{name:24s} CPU {runs[name][1]:6.2f} s   wall {runs[name][2]:6.2f} s")
    alone = visualize(model, args.layer, args.channels[1:2], **kw)
    (ind, cpu_i, _), (bat, cpu_b, _) = runs.values()
    print(f"\n{len(args.channels)} channels of {args.layer}, {args.size} px, {args.steps} steps, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"CPU ratio independent / batched: {cpu_i / cpu_b:.2f}x")
    print(f"channel {args.channels[1]} alone vs among the others (independent): "
          f"{(alone.images - ind.of(args.channels[1])).abs().max().item():.3g} max |difference|")
    print(f"batched vs independent images: {(bat.images - ind.images).abs().max().item():.3g} max |difference|")


if __name__ == "__main__":
    main()
