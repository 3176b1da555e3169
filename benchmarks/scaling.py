#!/usr/bin/env python
r"""Scaling figures of dataset top-k mining, in one run on this machine.

1. Throughput: images/s of ``LayerTopKPatches.update`` (the streaming miner: forward pass
   stopped after the deepest layer + O(C x k log k) bookkeeping per batch) against a plain
   forward loop up to the same layer (the physical limit of this approach; goal >= 0.9),
   interleaved batch by batch and best of ``--repeats`` so bursts of load hit both alike.
2. Memory: ``--mem-images`` (default 20,000) synthetic 224 px images, generated batch by batch
   from a seed (never stored), streamed through resnet18 up to ``layer3``: peak RSS of a
   plain forward loop and of the miner (update for every batch, then compute with its
   receptive-field probe), each alone in a fresh subprocess (goal: miner <= forward + 200 MB).
3. 1 vs 2 processes: the same mining job as one process (all threads) and as a 2-process
   ``torchrun`` job (gloo, 1 thread each, global batches sharded round-robin, states gathered
   and merged on rank 0 — :mod:`captum_topk.runs.distributed`), wall time from the first batch to the merged state
   (process start-up and the warm-up batch not counted).

Usage::

    .venv/bin/python benchmarks/scaling.py                  # the documented run (long: part 2)
    .venv/bin/python benchmarks/scaling.py --quick          # smoke run
    .venv/bin/python benchmarks/scaling.py --device cuda --batch-size 256 --half   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import torch
import torchvision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.capture.hooks import run_capture  # noqa: E402
from captum_topk.runs.distributed import dist_env, gather_states, shard_batches  # noqa: E402
from mining_throughput import loadavg, machine, peak_rss_mib  # noqa: E402

LAYERS = {"resnet18": ["layer1", "layer2", "layer3"], "mobilenet_v2": ["features.3", "features.7", "features.14"]}


def model_of(name: str, device: torch.device, half: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval().to(device)
    return m.half() if half else m


def synthetic(n: int, batch: int, size: int, seed: int, device: torch.device, half: bool,
              only: List[range] | None = None) -> Iterator[Dict]:
    r"""Batches generated on the fly (O(batch) memory); ``only`` restricts to some global batches."""
    ranges = only if only is not None else shard_batches(n, batch)
    for r in ranges:
        g = torch.Generator().manual_seed(seed + r.start)
        x = torch.randn(len(r), 3, size, size, generator=g).to(device)
        yield {"images": x.half() if half else x, "indices": torch.arange(r.start, r.stop)}


def plain_forward(model, modules, batch) -> None:
    with torch.no_grad():
        run_capture(model, modules, batch["images"], stop_early=True)


def throughput(args) -> Dict:
    dev = torch.device(args.device)
    out = {}
    for name in args.models:
        model = model_of(name, dev, args.half)
        names = LAYERS[name]
        named = dict(model.named_modules())
        modules = [named[n] for n in names]
        batches = list(synthetic(args.images, args.batch_size, args.size, 0, dev, args.half))
        best = {"forward": float("inf"), "mine": float("inf")}
        for rep in range(args.repeats):
            miner = LayerTopKPatches(model, names, k=9)
            plain_forward(model, modules, batches[0])  # warm-up
            miner.update(batches[0])
            miner.reset()
            t = {"forward": 0.0, "mine": 0.0}
            for i, b in enumerate(batches):
                order = ("forward", "mine") if (i + rep) % 2 == 0 else ("mine", "forward")
                for what in order:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    plain_forward(model, modules, b) if what == "forward" else miner.update(b)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t[what] += time.perf_counter() - t0
            for k in best:
                best[k] = min(best[k], t[k])
        n = sum(b["images"].shape[0] for b in batches)
        out[name] = {"forward_ips": n / best["forward"], "mine_ips": n / best["mine"],
                     "ratio": best["forward"] / best["mine"]}
    return out


def mem_worker(args) -> None:
    dev = torch.device(args.device)
    model = model_of("resnet18", dev, args.half)
    named = dict(model.named_modules())
    modules = [named[n] for n in LAYERS["resnet18"]]
    base = peak_rss_mib()
    t0 = time.perf_counter()
    data = synthetic(args.mem_images, args.batch_size, 224, 1, dev, args.half)
    if args._mem_worker == "forward":
        for b in data:
            plain_forward(model, modules, b)
    else:
        miner = LayerTopKPatches(model, LAYERS["resnet18"], k=9)
        miner.mine(data, progress=False)
    print(json.dumps({"before_mib": base, "peak_mib": peak_rss_mib(), "seconds": time.perf_counter() - t0}))


def memory(args) -> Dict:
    res = {}
    for method in ("forward", "mine"):
        cmd = [sys.executable, __file__, "--_mem-worker", method, "--mem-images", str(args.mem_images),
               "--batch-size", str(args.batch_size), "--device", args.device] + (["--half"] if args.half else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def dist_worker(args) -> None:
    env = dist_env()
    torch.distributed.init_process_group("gloo")
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // env.world))
        model = model_of("resnet18", torch.device("cpu"), False)
        miner = LayerTopKPatches(model, LAYERS["resnet18"], k=9)
        only = shard_batches(args.images, args.batch_size, env.rank, env.world)
        miner.update(next(synthetic(args.images, args.batch_size, args.size, 0, torch.device("cpu"), False)))
        miner.reset()  # warm-up done (oneDNN primitives built)
        torch.distributed.barrier()
        t0 = time.perf_counter()
        miner.mine(synthetic(args.images, args.batch_size, args.size, 0, torch.device("cpu"), False, only),
                   progress=False, finalize=False)
        gather_states(miner, env)
        if env.is_main:
            print(json.dumps({"seconds": time.perf_counter() - t0, "n_images": miner.n_images}))
    finally:
        torch.distributed.destroy_process_group()


def processes(args) -> Dict:
    model = model_of("resnet18", torch.device("cpu"), False)
    miner = LayerTopKPatches(model, LAYERS["resnet18"], k=9)
    miner.update(next(synthetic(args.images, args.batch_size, args.size, 0, torch.device("cpu"), False)))
    miner.reset()  # warm-up done (oneDNN primitives built)
    t0 = time.perf_counter()
    miner.mine(synthetic(args.images, args.batch_size, args.size, 0, torch.device("cpu"), False),
               progress=False, finalize=False)
    one = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--_dist-worker", "--images", str(args.images), "--batch-size", str(args.batch_size),
           "--size", str(args.size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    two = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    return {"one_process_s": one, "two_process_s": two["seconds"], "n_images": args.images,
            "speedup": one / two["seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--mem-images", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--half", action="store_true")
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "processes"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--_mem-worker", dest="_mem_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_dist-worker", dest="_dist_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._mem_worker:
        mem_worker(args)
        return 0
    if args._dist_worker:
        dist_worker(args)
        return 0
    if args.quick:
        args.images, args.mem_images, args.size, args.repeats, args.models = 16, 64, 64, 1, ["resnet18"]
    info = machine()
    print(f"machine: {info}  load: {loadavg()}  torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}{' fp16' if args.half else ''}")
    if "throughput" not in args.skip:
        for name, r in throughput(args).items():
            print(f"[throughput] {name} {args.size}px batch {args.batch_size}: forward {r['forward_ips']:.1f} img/s, "
                  f"mine {r['mine_ips']:.1f} img/s, mine/forward = {r['ratio']:.3f} (goal >= 0.9)")
    if "memory" not in args.skip:
        m = memory(args)
        f, g = m["forward"], m["mine"]
        print(f"[memory] {args.mem_images} images, resnet18 up to layer3, 224 px: peak RSS forward "
              f"{f['peak_mib']:.0f} MiB ({f['seconds']:.0f} s), mine {g['peak_mib']:.0f} MiB ({g['seconds']:.0f} s), "
              f"mine - forward = {g['peak_mib'] - f['peak_mib']:+.0f} MiB (goal <= 200)")
    if "processes" not in args.skip and args.device == "cpu":
        r = processes(args)
        print(f"[processes] resnet18 mining {r['n_images']} images: 1 process {r['one_process_s']:.1f} s, "
              f"2 processes (torchrun, gloo) {r['two_process_s']:.1f} s, speed-up {r['speedup']:.2f}x "
              f"(on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
