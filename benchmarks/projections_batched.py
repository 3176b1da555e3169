#!/usr/bin/env python
r"""Batched vs per-record Zeiler & Fergus projections: one backward pass for a channel's k
records (a callable Captum neuron selector) against one pass per record.

The packaged MobileNetV2 (real ImageNet weights) is mined at one layer on the packaged photos;
then, for ``--channels`` channels, ``result.projections(...)`` is timed with ``batch=True`` and
``batch=False``, interleaved channel by channel (so load from elsewhere on a shared machine hits
both alike). Prints the seconds per channel of each and their ratio, and the largest difference
between the two attributions relative to their scale (they are the same up to float order).

Usage::

    .venv/bin/python benchmarks/projections_batched.py                      # the documented run
    .venv/bin/python benchmarks/projections_batched.py --channels 2 --k 4   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.data import demo_images, make_loader  # noqa: E402
from captum_topk.models import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", default="features.7")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--method", default="guided_backprop", choices=["guided_backprop", "deconvolution", "gradient"])
    args = p.parse_args()
    model, info = load_model("mobilenet_v2-imagenet")
    dataset = demo_images(transform=info.transform)
    result = LayerTopKPatches(model, [args.layer], k=args.k).mine(make_loader(dataset, batch_size=16), progress=False)
    times = {True: 0.0, False: 0.0}
    worst = 0.0
    for c in range(args.channels):
        out = {}
        for batch in ((True, False) if c % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            out[batch] = result.projections(dataset, args.layer, c, args.method, model=model, progress=False,
                                            batch=batch).attributions
            times[batch] += time.perf_counter() - t0
        scale = float(out[False].abs().max()) or 1.0
        worst = max(worst, float((out[True] - out[False]).abs().max()) / scale)
    n = args.channels
    print(f"MobileNetV2 {args.layer}, {args.method}, {n} channels x {args.k} records, torch threads "
          f"{torch.get_num_threads()}")
    print(f"  per record (k passes): {times[False] / n:.3f} s/channel")
    print(f"  batched (1 pass):      {times[True] / n:.3f} s/channel")
    print(f"  speed-up per-record / batched: {times[False] / times[True]:.2f}x")
    print(f"  max |batched - per record| / max |attribution| = {worst:.1e}")


if __name__ == "__main__":
    main()
