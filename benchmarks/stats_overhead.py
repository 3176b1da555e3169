#!/usr/bin/env python
r"""Cost of ``LayerTopKPatches(..., stats=True)``: the streaming per-channel statistics.

ResNet-18 (random init, eval) mined at ``layer2`` on synthetic 224 x 224 images, batch 32.
Two miners, one with ``stats=True`` and one without, get the *same* batches, interleaved (order
alternating batch by batch, so load from elsewhere on a shared machine hits both alike); the
time of their ``update()`` calls is summed per miner, and the best of ``--repeats`` passes is
kept. Because an A/B difference of a few percent drowns in the noise of a loaded machine, it
also times, for every batch, ``ChannelStats.update`` on that batch's activations right after
an ``update()`` without statistics, and reports the median ratio: the statistics' share.

Usage::

    .venv/bin/python benchmarks/stats_overhead.py                 # the documented run
    .venv/bin/python benchmarks/stats_overhead.py --batches 2 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import ChannelStats, LayerTopKPatches  # noqa: E402
from captum_topk.capture.hooks import run_capture  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--layer", default="layer2")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(args.batch_size, 3, args.size, args.size, generator=g) for _ in range(args.batches)]
    module = dict(model.named_modules())[args.layer]
    best = {False: float("inf"), True: float("inf")}
    ratios = []
    for _ in range(args.repeats):
        miners = {s: LayerTopKPatches(model, args.layer, k=9, stats=s) for s in (False, True)}
        spent = {False: 0.0, True: 0.0}
        for i, b in enumerate(batches):
            for s in ((False, True) if i % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                miners[s].update(b)
                spent[s] += time.perf_counter() - t0
            # Component view, measured right next to each other: ChannelStats.update on this
            # batch's activations against the update() of the miner without statistics.
            with torch.no_grad():
                acts = run_capture(model, [module], b)[0]
            cs = ChannelStats(acts.shape[1])
            t0 = time.perf_counter()
            miners[False].update(b)
            t_update = time.perf_counter() - t0
            t0 = time.perf_counter()
            cs.update(acts)
            ratios.append((time.perf_counter() - t0) / t_update)
        for s in spent:
            best[s] = min(best[s], spent[s])
    n = args.batches * args.batch_size
    ratios.sort()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet18 {args.layer} "
          f"{tuple(acts.shape[1:])} at {args.size}px, {n} images in batches of {args.batch_size}")
    print(f"update() without stats : {best[False]:.3f} s  ({n / best[False]:.1f} img/s)")
    print(f"update() with stats    : {best[True]:.3f} s  ({n / best[True]:.1f} img/s)")
    print(f"end-to-end overhead    : {100 * (best[True] / best[False] - 1):+.1f} % (A/B, best of {args.repeats})")
    print(f"ChannelStats.update / update(): median {100 * ratios[len(ratios) // 2]:.1f} %, "
          f"range {100 * ratios[0]:.1f}-{100 * ratios[-1]:.1f} % over {len(ratios)} batches")


if __name__ == "__main__":
    main()
