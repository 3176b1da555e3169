#!/usr/bin/env python
r"""End to end on a folder of JPEGs: ``captum-topk mine`` images/s against the forward limit.

A folder of ``--images`` JPEG photos (random crops and flips of the packaged photos, re-encoded
at 80 % quality, about 500 x 375 px: decoding and resizing cost what they cost on real data) is
mined with the run layer (:func:`captum_topk.runs.mine_run`, what the CLI runs) for each backend
and each number of DataLoader workers, cold (no receptive-field cache, no ONNX export cached):

* ``mine``: images/s of the whole run, wall clock (model load, first-batch receptive fields,
  the ONNX export for ``onnxruntime``, decoding, mining, writing the result);
* ``forward``: images/s of the engine's forward pass alone on pre-decoded tensors (PyTorch
  stopped after the deepest layer, or the ONNX Runtime session of the same export): the limit.

Prints ``mine / forward`` per backend and worker count: how much of the machine the pipeline
leaves to the network. On 2 cores one worker decodes while the main process mines.

Usage::

    .venv/bin/python benchmarks/end_to_end.py                    # the documented run
    .venv/bin/python benchmarks/end_to_end.py --images 48 --workers 0   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk.capture.hooks import run_capture  # noqa: E402
from captum_topk.data import demo_images  # noqa: E402
from captum_topk.models import load_model  # noqa: E402
from captum_topk.runs import RunSpec, mine_run  # noqa: E402


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    photos = demo_images(validate="none")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos.load_image(int(rng.integers(len(photos))))
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch)).resize((500, 375))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(root / f"img{i:05d}.jpg", quality=80)
    return root


def forward_rate(backend: str, layers, images: torch.Tensor, export: Path = None, batch: int = 32) -> float:
    model, _ = load_model("mobilenet_v2-imagenet")
    model.eval()
    if backend == "onnxruntime":
        from captum_topk.onnx import OnnxForward, load_onnx

        fwd = OnnxForward(load_onnx(export), list(layers), ["CPUExecutionProvider"])
        run = lambda x: fwd(x)  # noqa: E731
    else:
        mods = [model.get_submodule(n) for n in layers]
        run = lambda x: run_capture(model, mods, x, stop_early=True)  # noqa: E731
    with torch.no_grad():
        run(images[:batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, images.shape[0], batch):
            run(images[s:s + batch])
    return images.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--layers", nargs="+", default=["features.3", "features.7", "features.11"])
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="captum-topk-e2e-"))
    os.environ["CAPTUM_TOPK_CACHE_DIR"] = str(work / "cache")  # cold receptive fields
    try:
        folder = make_folder(work / "jpegs", args.images)
        _, info = load_model("mobilenet_v2-imagenet")
        from captum_topk.data import image_folder

        ds = image_folder(str(folder), transform=info.transform)
        pre = torch.stack([ds[i][0] for i in range(min(len(ds), 128))])
        print(f"{args.images} JPEGs 500x375 -> MobileNetV2 {' '.join(args.layers)} at 224 px, batch "
              f"{args.batch_size}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
        for backend in args.backends:
            for workers in args.workers:
                onnx_root = work / f"onnx-{backend}-{workers}"
                os.environ["CAPTUM_TOPK_ONNX_ROOT"] = str(onnx_root)
                shutil.rmtree(work / "cache", ignore_errors=True)
                spec = RunSpec(layers=tuple(args.layers), data=str(folder), batch_size=args.batch_size,
                               backend=backend)
                t0 = time.perf_counter()
                mine_run(spec, work / f"run-{backend}-{workers}", workers=workers, progress=False)
                wall = time.perf_counter() - t0
                export = next(onnx_root.glob("*.onnx"), None) if backend == "onnxruntime" else None
                limit = forward_rate(backend, args.layers, pre, export, args.batch_size)
                rate = args.images / wall
                print(f"  {backend:11s} workers={workers}: mine {rate:6.1f} img/s, forward limit {limit:6.1f} img/s, "
                      f"mine/forward {rate / limit:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
