#!/usr/bin/env python
r"""``match_units`` memory does not grow with the number of images.

Two small random-weight CNNs of *different* architectures, each with a 256-channel layer
(A: 16 x 16 grid, B: 32 x 32 grid, resampled to A's), matched over 500 and over 2,000 images
in one streamed pass each. The images are random tensors generated batch by batch from a
seeded generator (never all held in memory). Each size runs in its own process, so that the
peak resident set size (``ru_maxrss``) is that pass's own; the script prints, per size, the
time, the peak RSS, its growth during the pass (peak minus the RSS before the pass: models,
libraries and the first batch are already there) and the accumulator's state, then the ratios
2,000 / 500. A pass that kept the samples would need ``images x 256 cells x 512 channels x 8``
bytes (printed for scale).

Usage::

    .venv/bin/python benchmarks/match_units.py                  # the documented run
    .venv/bin/python benchmarks/match_units.py --sizes 64 128   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk.compare import match_units  # noqa: E402


def _models():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()
    b = nn.Sequential(nn.Conv2d(3, 48, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(48, 256, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()
    return a, b  # at 64 x 64 input: A's "5" is 256 x 16 x 16, B's "4" is 256 x 32 x 32


def _batches(n: int, batch_size: int, size: int):
    g = torch.Generator().manual_seed(1)
    for start in range(0, n, batch_size):
        yield torch.randn(min(batch_size, n - start), 3, size, size, generator=g)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(n: int, batch_size: int, size: int) -> None:
    a, b = _models()
    with torch.no_grad():  # warm up: libraries, allocator, one batch through both models
        a(torch.randn(batch_size, 3, size, size))
        b(torch.randn(batch_size, 3, size, size))
    before = _rss_mb()
    t0 = time.perf_counter()
    m = match_units(a, b, _batches(n, batch_size, size), "5", "4", progress=False, keep_matrix=True)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    state = 8 * (256 * 256 + 4 * 256)  # the CrossCorrelation co-moments, float64
    print(json.dumps({"images": m.images, "samples": m.samples, "seconds": secs, "peak_mb": peak,
                      "before_mb": before, "state_bytes": state,
                      "mean_correlation": m.mean_correlation}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs=2, default=[500, 2000], metavar=("SMALL", "LARGE"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input", type=int, default=64, help="image side (default 64)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.batch_size, args.input)
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--batch-size", str(args.batch_size),
                              "--input", str(args.input)], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    cells = (args.input // 4) ** 2
    print(f"match_units: 256 x 256 channels, {args.input} px images, {cells} cells per image, batch {args.batch_size}")
    print(f"{'images':>7} {'samples':>9} {'time s':>7} {'img/s':>6} {'peak RSS MiB':>13} {'growth MiB':>11} "
          f"{'state KiB':>10} {'kept samples would need MiB':>28}")
    for r in rows:
        growth = r["peak_mb"] - r["before_mb"]
        naive = r["images"] * cells * 512 * 8 / 2 ** 20
        print(f"{r['images']:>7} {r['samples']:>9} {r['seconds']:>7.1f} {r['images'] / r['seconds']:>6.1f} "
              f"{r['peak_mb']:>13.1f} {growth:>11.1f} {r['state_bytes'] / 1024:>10.1f} {naive:>28.0f}")
    small, large = rows
    print(f"ratio {large['images']} / {small['images']} images: peak RSS x{large['peak_mb'] / small['peak_mb']:.3f}, "
          f"growth during the pass x{(large['peak_mb'] - large['before_mb']) / max(small['peak_mb'] - small['before_mb'], 1e-9):.3f}, "
          f"time x{large['seconds'] / small['seconds']:.2f} (images x{large['images'] / small['images']:.1f})")


if __name__ == "__main__":
    main()
