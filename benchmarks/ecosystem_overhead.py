#!/usr/bin/env python
r"""``update()`` against a plain forward on timm models (issue 20's acceptance: >= 0.9).

For each timm model (random init, ``pretrained=False``, fixed seed, 224 px) and its layers, in
one run, interleaved batch by batch (the order alternating, so that a burst of load from
elsewhere hits both alike):

``forward``  a ``torch.no_grad`` forward that stops right after the deepest mined layer
             (``mining_throughput.forward_step``: the least any miner of those layers computes);
``update``   ``LayerTopKPatches(model, layers, k=9).update(batch)``: the miner's forward, layout
             handling (token grids, channels-last permutations) and accumulation.

The miner's first ``update()`` (its receptive fields and layouts) runs before the clock: the
figures are warm, as every later batch and every later run (the fields are cached). It prints
``forward s / update s`` over the timed batches, i.e. the update throughput as a fraction of
the forward's: 1.0 means mining costs nothing beyond the forward.

Cases: ``vit_tiny_patch16_224`` (token layers ``(N, 1 + 196, C)``, class token as a prefix),
``convnext_atto`` (channels-first stages) and ``convnext_atto`` with ``conv_mlp=False``
(channels-last ``(N, H, W, C)`` layers inside its blocks).

Usage::

    .venv/bin/python benchmarks/ecosystem_overhead.py            # the documented run
    .venv/bin/python benchmarks/ecosystem_overhead.py --quick    # smoke run (2 batches of 4 at 224 px)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

os.environ.setdefault("CAPTUM_TOPK_CACHE_DIR", tempfile.mkdtemp(prefix="captum_topk_bench_"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mining_throughput import deepest_module, forward_step, loadavg, make_batches  # noqa: E402

from captum_topk import LayerTopKPatches  # noqa: E402


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # optional dependency: only this benchmark needs it

        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    return build


CASES: List[Tuple[str, Callable[[], nn.Module], List[str]]] = [
    ("vit_tiny_patch16_224", _timm("vit_tiny_patch16_224"), ["blocks.3", "blocks.7", "blocks.11"]),
    ("convnext_atto", _timm("convnext_atto"), ["stages.1", "stages.2", "stages.3"]),
    ("convnext_atto conv_mlp=False", _timm("convnext_atto", conv_mlp=False),
     ["stages.2.blocks.5.mlp.fc1", "stages.3"]),
]


def measure(build: Callable[[], nn.Module], layers: Sequence[str], batches: List[torch.Tensor],
            size: int) -> Dict[str, float]:
    r"""Seconds of the forwards and of the ``update()`` calls over ``batches[1:]``."""
    model = build()
    deepest = deepest_module(model, layers, size)
    miner = LayerTopKPatches(model, list(layers), k=9)
    start = time.perf_counter()
    miner.update(batches[0])  # receptive fields and layouts: not timed
    first = time.perf_counter() - start
    forward_step(model, deepest, batches[0])
    t_forward = t_update = 0.0
    for i, images in enumerate(batches[1:]):
        for turn in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if turn == 0:
                forward_step(model, deepest, images)
                t_forward += time.perf_counter() - t0
            else:
                miner.update(images)
                t_update += time.perf_counter() - t0
    return {"forward_s": t_forward, "update_s": t_update, "first_s": first,
            "images": sum(b.shape[0] for b in batches[1:])}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=6, help="timed batches (+1 untimed first batch)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: stable on a shared CPU)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 timed batches of 4 images")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.batches = 4, 2
    torch.set_num_threads(args.threads)
    batches = make_batches(args.batch * (args.batches + 1), args.batch, args.size, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {loadavg()} at the start; batch {args.batch} x {args.batches} timed batches, "
          f"{args.size} px, warm (fields measured on an untimed first batch)")
    print(f"{'model':30} {'layers':45} {'forward img/s':>14} {'update img/s':>13} {'update/forward':>15}")
    ok = True
    for name, build, layers in CASES:
        r = measure(build, layers, batches, args.size)
        ratio = r["forward_s"] / r["update_s"]
        ok &= ratio >= 0.9
        print(f"{name:30} {', '.join(layers):45} {r['images'] / r['forward_s']:14.1f} "
              f"{r['images'] / r['update_s']:13.1f} {ratio:15.2f}   (first batch {r['first_s']:.1f} s)",
              flush=True)
    print(f"load average {loadavg()} at the end; goal: update/forward >= 0.9")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
