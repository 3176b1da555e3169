#!/usr/bin/env python
r"""How much does half precision change the mined rankings? One run, real weights, real photos.

The same images go through the same model twice, once in float32 and once in float16
(``model.half()``, images cast to float16; the miner keeps its rankings in float32, exactly
what ``captum-topk mine --half`` does), and the two top-k states are compared per layer:

* **top-1 agreement**: share of channels whose best (image, y, x) is the same;
* **top-k Jaccard**: mean over channels of |A ∩ B| / |A ∪ B| of the k (image, y, x) records;
* **image-set Jaccard**: the same on the k image indices only (what a viewer sees);
* **value error**: median and max over channels of |v16 - v32| / |v32| of the top-1 value.

Data: the demo photos shipped in installed packages (``captum_topk.data.demo_images``, 44;
default) or the 2,624 ELPV solar cells (``--data elpv``) or any image folder; model: the ImageNet MobileNetV2 a package ships (``mobilenet_v2-imagenet``), so the
activations are those of a trained network, not of random weights.

Usage::

    .venv/bin/python benchmarks/half_precision.py                    # CPU (fp16 kernels are slow there)
    .venv/bin/python benchmarks/half_precision.py --device cuda      # the GPU path of --half
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.data.elpv import elpv_dataset  # noqa: E402
from captum_topk.runs import open_dataset  # noqa: E402
from captum_topk.models import load_model  # noqa: E402
from mining_throughput import loadavg, machine  # noqa: E402


def _records(state, c: int) -> List[Tuple[int, int, int]]:
    t = state.tensors
    return [(int(i), int(y), int(x)) for i, y, x in zip(t["top_index"][c], t["top_y"][c], t["top_x"][c])
            if int(i) >= 0]


def _jaccard(a: Set, b: Set) -> float:
    return len(a & b) / max(1, len(a | b))


def batches(dataset, n: int, batch: int) -> Iterator[torch.Tensor]:
    for start in range(0, n, batch):
        yield torch.stack([dataset[i][0] for i in range(start, min(n, start + batch))])


def mine_states(model, layers, data: List[torch.Tensor], k: int, device, half: bool) -> Tuple[Dict, float]:
    r"""Top-k states of ``layers`` over the pre-decoded batches ``data``, and the seconds the
    ``update`` calls took (after one warm-up batch, not counted)."""
    net = model.to(device)
    net = net.half() if half else net.float()
    miner = LayerTopKPatches(net, layers, k=k)
    cast = (lambda x: x.to(device).half()) if half else (lambda x: x.to(device))
    miner.update(cast(data[0]))  # warm-up (kernels, allocator), then start again
    miner.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x in data:
        miner.update(cast(x))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {n: s.clone() for n, s in miner._states.items()}, time.perf_counter() - t0


def compare(s32, s16) -> Dict[str, float]:
    C = s32.channels
    top1 = jac = jac_img = 0.0
    errs = []
    for c in range(C):
        a, b = _records(s32, c), _records(s16, c)
        top1 += float(a[:1] == b[:1])
        jac += _jaccard(set(a), set(b))
        jac_img += _jaccard({r[0] for r in a}, {r[0] for r in b})
        v32 = float(s32.tensors["top_values"][c, 0])
        v16 = float(s16.tensors["top_values"][c, 0])
        errs.append(abs(v16 - v32) / max(abs(v32), 1e-6))
    errs_t = torch.tensor(errs)
    return {"channels": C, "top1_agreement": top1 / C, "topk_jaccard": jac / C,
            "image_jaccard": jac_img / C, "value_err_median": float(errs_t.median()),
            "value_err_max": float(errs_t.max())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="mobilenet_v2-imagenet")
    p.add_argument("--layers", nargs="+", default=["features.3", "features.7", "features.14"])
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--data", default="demo",
                   help="'demo' (packaged photos, default), 'elpv' (packaged solar cells) or an image folder")
    p.add_argument("--max-images", type=int, default=None, help="first N images (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    dev = torch.device(args.device)
    model, info = load_model(args.model)
    if args.data == "elpv":
        ds = elpv_dataset(info.transform)
    else:
        ds, _ = open_dataset(args.data, info.transform)
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else machine()["cpu"]
    print(f"{args.model} on {n} images of {args.data} at {info.input_size}, k={args.k}, device {name}, "
          f"load {loadavg()}, torch {torch.__version__}")
    data = list(batches(ds, n, args.batch_size))  # decoded once, outside the timings
    s32, t32 = mine_states(model, args.layers, data, args.k, dev, half=False)
    s16, t16 = mine_states(model, args.layers, data, args.k, dev, half=True)
    print(f"time: fp32 {t32:.1f} s, fp16 {t16:.1f} s (fp32/fp16 = {t32 / t16:.2f})")
    out = {"device": name, "model": args.model, "data": args.data, "n_images": n, "k": args.k, "layers": {}}
    for layer in args.layers:
        r = compare(s32[layer], s16[layer])
        out["layers"][layer] = r
        print(f"[{layer}] {r['channels']} channels: top-1 agreement {r['top1_agreement']:.3f}, "
              f"top-{args.k} Jaccard {r['topk_jaccard']:.3f} (images only {r['image_jaccard']:.3f}), "
              f"top-1 value rel. error median {r['value_err_median']:.1e} max {r['value_err_max']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
