#!/usr/bin/env python
r"""Mining throughput: ONNX Runtime against PyTorch eager, same model, same images, one run.

For each model (a torchvision architecture with random init and a fixed seed, or one of the
three packaged ImageNet models with its real weights: ``--models mobilenet_v2-imagenet
squeezenet1_1-imagenet efficientnet_lite0-imagenet``; 224 px by default)
the script exports the mined layers with :func:`captum_topk.onnx.export` (into a temporary
folder, not timed), then times the ``update()`` calls of

* ``torch``: ``LayerTopKPatches(model, layers, k=9)`` (PyTorch eager, forward stopped after
  the deepest mined layer), and
* ``onnxruntime``: ``OnnxTopKPatches(file, layers, k=9)`` (the graph pruned after the
  deepest mined layer),

on the same batches of real photos (``captum_topk.data.demo_images`` through the model's
transform, cycled up to ``--images``). The two are interleaved batch by batch (their order
alternating), so that a burst of load from other processes on a shared machine hits both
alike; the pass is repeated ``--repeats`` times and the best time of each is kept. One
warm-up batch per backend is not counted. Both use ``--threads`` intra-op threads. The
receptive-field work of ``compute()`` is a one-off per (architecture, size) and is not timed
(the ONNX miner reads it from the export sidecar). At the end both results are compared.

Usage::

    .venv/bin/python benchmarks/onnx_vs_torch.py                    # the documented run (CPU)
    .venv/bin/python benchmarks/onnx_vs_torch.py --quick            # smoke run
    .venv/bin/python benchmarks/onnx_vs_torch.py --device cuda      # torch on CUDA, ORT CUDA EP
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import torch
import torchvision
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxruntime  # noqa: E402

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.utils.files import atomic_write_text  # noqa: E402
from captum_topk.models import make_transform  # noqa: E402
from captum_topk.onnx import OnnxTopKPatches, export  # noqa: E402
from mining_throughput import loadavg  # noqa: E402

LAYERS: Dict[str, List[str]] = {
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v2": ["features.3", "features.7", "features.14", "features.18"],
    # the three packaged ImageNet models, real weights (captum_topk.models.load_model)
    "mobilenet_v2-imagenet": ["features.3", "features.7", "features.14", "features.18"],
    "squeezenet1_1-imagenet": ["features.4", "features.7", "features.10", "features.12"],
    "efficientnet_lite0-imagenet": ["_blocks.2", "_blocks.5", "_blocks.10", "_blocks.15"],
}
K = 9


def machine(threads: int) -> Dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": str(threads),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": ",".join(onnxruntime.get_available_providers()),
        "python": platform.python_version(),
        "loadavg": loadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def photo_batches(n_images: int, batch_size: int, size: int) -> List[Tensor]:
    """Real photos through the ImageNet transform, cycled up to ``n_images``."""
    from captum_topk.data import demo_images

    ds = demo_images(transform=make_transform(size), validate="header")
    if len(ds) == 0:
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(n_images, 3, size, size, generator=gen)
    else:
        base = torch.stack([ds[i][0] for i in range(min(len(ds), n_images))])
        images = base.repeat((n_images + len(base) - 1) // len(base), 1, 1, 1)[:n_images]
    return [images[s : s + batch_size] for s in range(0, n_images, batch_size)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_model(name: str, args: argparse.Namespace, workdir: str) -> Dict[str, object]:
    torch.manual_seed(0)
    if name.endswith("-imagenet"):  # a packaged model with its real weights
        from captum_topk.models import load_model

        model = load_model(name)[0].eval()
    else:
        model = getattr(torchvision.models, name)(weights=None).eval()
    layers = LAYERS[name]
    path = os.path.join(workdir, f"{name}.onnx")
    t0 = time.perf_counter()
    exp = export(model, layers, path, input_size=args.size, check_images=2, progress=False)
    export_s = time.perf_counter() - t0
    model = model.to(args.device)
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda"
                 else ["CPUExecutionProvider"])
    batches = photo_batches(args.images, args.batch_size, args.size)
    if args.device == "cuda":
        batches = [b.to("cuda") for b in batches]

    best = {"torch": float("inf"), "onnxruntime": float("inf")}
    provider = None
    results = {}
    for rep in range(args.repeats):
        tm = LayerTopKPatches(model, layers, k=K)
        om = OnnxTopKPatches(path, layers, k=K, providers=providers, threads=args.threads)
        provider = om.provider
        miners = {"torch": tm, "onnxruntime": om}
        for m in miners.values():  # warm-up, not counted
            m.update(batches[0][:2])
            m.reset()
        spent = {"torch": 0.0, "onnxruntime": 0.0}
        with torch.no_grad():
            for i, batch in enumerate(batches):
                order = ("torch", "onnxruntime") if (i + rep) % 2 == 0 else ("onnxruntime", "torch")
                for key in order:
                    sync(args.device)
                    t = time.perf_counter()
                    miners[key].update(batch)
                    sync(args.device)
                    spent[key] += time.perf_counter() - t
        for key in best:
            best[key] = min(best[key], spent[key])
        results = {k: m.snapshot() for k, m in miners.items()}
    n = sum(b.shape[0] for b in batches)
    ips = {k: n / v for k, v in best.items()}
    # the two results agree (values within float noise; records on an equal footing)
    diff = max(float((results["torch"].values(l) - results["onnxruntime"].values(l)).abs().max())
               for l in layers)
    same_index = sum(int(torch.equal(results["torch"].indices(l), results["onnxruntime"].indices(l)))
                     for l in layers)
    return {
        "model": name,
        "layers": layers,
        "images": n,
        "batch_size": args.batch_size,
        "size": args.size,
        "device": args.device,
        "ort_provider": provider,
        "torch_img_s": round(ips["torch"], 2),
        "onnxruntime_img_s": round(ips["onnxruntime"], 2),
        "ratio_ort_over_torch": round(ips["onnxruntime"] / ips["torch"], 3),
        "export_s": round(export_s, 1),
        "export_max_abs_diff": max(exp.max_abs_diff.values()) if exp.max_abs_diff else None,
        "max_abs_diff_topk_values": diff,
        "layers_with_identical_top_indices": f"{same_index}/{len(layers)}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of both (default: torch's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 images of 64 px, one repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.size, args.repeats, args.batch_size = 8, 64, 1, 4
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available to PyTorch here.")
    if args.device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print("note: this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu); "
              "ONNX Runtime falls back to the CPU.", file=sys.stderr)
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)

    info = machine(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="captum_topk_onnx_bench_") as workdir:
        for name in args.models:
            rows.append(bench_model(name, args, workdir))
            print(json.dumps(rows[-1]), flush=True)
    info["loadavg_end"] = loadavg()
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{'model':<14}{'torch img/s':>13}{'ORT img/s':>11}{'ORT/torch':>11}  provider")
    for r in rows:
        print(f"{r['model']:<14}{r['torch_img_s']:>13.1f}{r['onnxruntime_img_s']:>11.1f}"
              f"{r['ratio_ort_over_torch']:>10.2f}x  {r['ort_provider']}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": info, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
