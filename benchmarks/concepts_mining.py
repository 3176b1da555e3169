#!/usr/bin/env python
r"""Cost of mining concept directions beside the channels: ``LayerTopKPatches(..., concepts=[c])``.

The packaged ImageNet MobileNetV2 (``mobilenet_v2-imagenet``) at ``features.14`` (160 channels,
7 x 7 at 224 px) on the packaged photos. Two miners get the *same* batches, interleaved (order
alternating batch by batch, so load from elsewhere on a shared machine hits both alike): one
mines the channels alone, the other the channels plus 16 random directions
(``Concepts.from_vectors``, encoded by projection) as the layer ``"features.14:vectors16"``.
The time of their ``update()`` calls is summed per miner; the best of ``--repeats`` passes is
kept. Because an A/B difference of a few percent drowns in the noise of a loaded machine, it
also times, for every batch, what the concepts add (``encode`` of that batch's activations and
the concept layer's ``TopKState.update``) right after an ``update()`` of the channels alone, and
reports ``1 + median(added / channels alone)``. Target (issue 21): the ratio is at most 1.2.

Usage::

    nice .venv/bin/python benchmarks/concepts_mining.py                       # the documented run
    nice .venv/bin/python benchmarks/concepts_mining.py --images 16 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk import Concepts, LayerTopKPatches  # noqa: E402
from captum_topk.capture.hooks import run_capture  # noqa: E402
from captum_topk.core.accumulators.topk import TopKState  # noqa: E402
from captum_topk.data.demo import demo_images  # noqa: E402
from captum_topk.models.registry import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64, help="packaged photos to mine (at most all of them)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layer", default="features.14")
    p.add_argument("--concepts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--stats", action="store_true", help="both miners also gather statistics")
    args = p.parse_args()
    torch.manual_seed(0)
    model, info = load_model("mobilenet_v2-imagenet")
    model.eval()
    data = demo_images(transform=info.transform)
    n = min(args.images, len(data))
    images = torch.stack([data[i][0] for i in range(n)])
    batches = [images[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    channels = dict(model.named_modules())[args.layer]
    c_in = next(m for m in reversed(list(channels.modules())) if isinstance(m, torch.nn.BatchNorm2d)).num_features
    concepts = Concepts.from_vectors(args.layer, torch.randn(args.concepts, c_in, generator=torch.Generator().manual_seed(1)))
    best = {False: float("inf"), True: float("inf")}
    shares = []
    for _ in range(args.repeats):
        miners = {with_c: LayerTopKPatches(model, [args.layer], k=9, stats=args.stats,
                                           concepts=[concepts] if with_c else None) for with_c in (False, True)}
        for m in miners.values():  # receptive fields measured once, outside the timing
            m.source.progress = False
            m.update(batches[0][:1])
            m.reset()
        spent = {False: 0.0, True: 0.0}
        for i, b in enumerate(batches):
            for with_c in ((False, True) if i % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                miners[with_c].update(b)
                spent[with_c] += time.perf_counter() - t0
            with torch.no_grad():  # the component view, next to a channels-alone update()
                acts = run_capture(model, [channels], b)[0]
                t0 = time.perf_counter()
                miners[False].update(b)
                plain = time.perf_counter() - t0
                t0 = time.perf_counter()
                TopKState(9, args.concepts, True).update(concepts.encode(acts), torch.arange(b.shape[0]))
                shares.append((time.perf_counter() - t0) / plain)
        for with_c in best:
            best[with_c] = min(best[with_c], spent[with_c])
        layers = miners[True].compute().layers
    ratio = best[True] / best[False]
    print(f"MobileNetV2 (packaged ImageNet weights) {args.layer} ({c_in} channels), {n} packaged photos at "
          f"{tuple(images.shape[-2:])}, batch {args.batch_size}, k=9, stats={args.stats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}")
    print(f"  channels alone:                {best[False]:.3f} s ({n / best[False]:.1f} img/s)")
    print(f"  channels + {args.concepts} concepts ({layers[-1]}): {best[True]:.3f} s ({n / best[True]:.1f} img/s)")
    shares.sort()
    print(f"  ratio: {ratio:.3f}x (target <= 1.2x)")
    print(f"  component view: 1 + median(encode + concept top-k / channels-alone update) = "
          f"{1 + shares[len(shares) // 2]:.3f}x over {len(shares)} batches (max {1 + shares[-1]:.3f}x)")


if __name__ == "__main__":
    main()
