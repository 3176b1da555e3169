#!/usr/bin/env python
r"""What layout handling (detection, shape checks, the channels-last permutation, splitting
tokens into the patch grid and the prefix column) adds to ``LayerTopKPatches.update()``.

For each layer kind, in one run, interleaved batch by batch (random init, fixed seed):

``update``  one ``update(images)`` call: the source's forward, its layout handling, the
            accumulation on the canonical tensors the source hands over (a permuted view for
            channels-last layers, the patch-token grid and the prefix column for tokens);
``native``  the same ``update()`` call on a twin miner whose source runs the same forward
            (the same hooks, the raw outputs) but hands over ``(N, C, h, w)`` tensors that are
            *already* contiguous NCHW (made before the clock starts), skipping layout
            detection, shape checks and conversion: what update() would cost if the layer had
            no layout to handle.

It prints ``update / native - 1``, the overhead of layout handling (the issue's budget: 5 %),
per layer kind: NCHW (resnet18 ``layer3``), NHWC (convnext_tiny's ``nn.Linear`` inside a block,
swin_t's stage output) and NLC (a ViT-S/16 encoder layer, class token as a prefix).

Usage::

    .venv/bin/python benchmarks/layout_overhead.py            # the documented run
    .venv/bin/python benchmarks/layout_overhead.py --quick    # smoke run (small images, 2 batches)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torchvision
from torch import nn

from captum_topk import LayerTopKPatches
from captum_topk.core.sources.layouts import PREFIX_SUFFIX


def vit_small() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=6, num_heads=6,
                                                hidden_dim=384, mlp_dim=1536)


CASES: List[Tuple[str, str, Callable[[], nn.Module], str]] = [
    ("NCHW", "resnet18", torchvision.models.resnet18, "layer3"),
    ("NHWC", "convnext_tiny", torchvision.models.convnext_tiny, "features.5.0.block.3"),
    ("NHWC", "swin_t", torchvision.models.swin_t, "features.5"),
    ("NLC", "vit_s16 (6 layers)", vit_small, "encoder.layers.encoder_layer_5"),
]


def contiguous_nchw(acts: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {name: a.contiguous() for name, a in acts.items()}


class _Precomputed:
    r"""The twin's source: the real source's forward (``_raw``), then the canonical tensors
    made beforehand; every other attribute is the real source's."""

    def __init__(self, source) -> None:
        self._source = source
        self.ready: Dict[str, torch.Tensor] = {}

    def __call__(self, images, additional_forward_args=None):
        self._source._raw(images, additional_forward_args)
        return self.ready

    def __getattr__(self, name):
        return getattr(self._source, name)


def measure(build: Callable[[], nn.Module], layer: str, batches: List[torch.Tensor]) -> Tuple[float, float]:
    r"""Median seconds per batch of ``update()`` and of its layout-free twin."""
    torch.manual_seed(0)
    model = build().eval()
    with_layout = LayerTopKPatches(model, [layer], k=9)
    native = LayerTopKPatches(model, [layer], k=9)
    source = native.source
    with_layout.update(batches[0])  # first batch: receptive fields / layouts, not timed
    native.update(batches[0])
    twin = native.source = _Precomputed(source)
    t_update: List[float] = []
    t_native: List[float] = []
    offset = batches[0].shape[0]
    for i, images in enumerate(batches[1:]):
        idx = torch.arange(offset, offset + images.shape[0])
        offset += images.shape[0]
        with torch.no_grad():
            twin.ready = contiguous_nchw(source(images))  # the layout-free input, made off the clock
        for turn in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate the order: load hits both alike
            if turn == 0:
                t0 = time.perf_counter()
                with_layout.update(images, indices=idx)
                t_update.append(time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                native.update(images, indices=idx)
                t_native.append(time.perf_counter() - t0)
    for name, acc in with_layout._acc.items():  # the twin mined the same records
        assert torch.equal(acc["topk"].tensors["top_index"], native._acc[name]["topk"].tensors["top_index"]), name
    return statistics.median(t_update), statistics.median(t_native)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=7, help="timed batches (+1 untimed first batch)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 timed batches of 4 images")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.batches = 4, 2
    torch.manual_seed(0)
    batches = [torch.rand(args.batch, 3, 224, 224) for _ in range(args.batches + 1)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; batch {args.batch} x {args.batches} timed batches, 224 px")
    print(f"{'layout':6} {'model':20} {'layer':32} {'update ms':>10} {'native ms':>10} {'overhead':>9}")
    for layout, model, build, layer in CASES:
        upd, nat = measure(build, layer, batches)
        print(f"{layout:6} {model:20} {layer:32} {upd * 1e3:10.1f} {nat * 1e3:10.1f} {upd / nat - 1:+9.1%}")
    print(f"(NLC rows also mine the prefix column '{PREFIX_SUFFIX}'; both sides accumulate it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
