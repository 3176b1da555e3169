#!/usr/bin/env python
r"""Mining throughput and peak memory of ``LayerTopKPatches`` against two references.

For each model (random init, synthetic random images, fixed seed) it measures, in one run:

(a) ``forward``   images/s of a plain ``torch.no_grad`` forward that stops right after the
                  deepest mined layer (a forward hook raising a private exception): the
                  physical limit of any miner that has to compute those activations;
(b) ``mine``      images/s of ``LayerTopKPatches(model, layers, k=9).mine(batches)``, end to
                  end, *including* the receptive-field measurement that the first batch runs on a
                  first run (every cache, in-process and persistent, emptied first); also
                  "warm": the same on a later run, where the fields come from the cache;
(b') ``update``   images/s of the ``update()`` calls alone, and the probe time itself;
(c) ``naive``     images/s of the naive recipe: ``captum.attr.LayerActivation`` on the full
                  forward, every batch's activations kept in a list, concatenated at the end,
                  top-k / bottom-k per channel with ``torch.topk`` (distinct images, as the
                  miner's default).

The three are timed in one pass, interleaved batch by batch: ``mine()`` is called for real
on a generator that, before handing it each batch, runs (a) and (c) on that batch (their
order alternating) and subtracts their time from mine()'s wall time. A burst of load from
elsewhere on a shared CPU thus hits the three methods alike. The pass is repeated
``--repeats`` times and the best time of each figure is kept; the probe runs in the first
pass only (cold caches; it costs more than the mining of the default 128 images), later
passes hit the persistent cache as any later run would. (b) is the best mining loop plus
that probe. One warm-up batch per method runs first and is not counted.

Peak memory: each of (a), (b), (c) runs again alone in a fresh subprocess (this script
re-invoked with ``--_mem-worker``) that reads its peak RSS before (model built, images
generated, high-water mark reset through ``/proc/self/clear_refs``) and after the method;
the increase is the method's own peak. The peak is ``VmHWM`` (what
``getrusage(RUSAGE_SELF).ru_maxrss`` reports, minus a fork/exec artefact, see
:func:`peak_rss_mib`); workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` so that RSS follows
the live tensors rather than glibc's retention of freed blocks.

Usage::

    .venv/bin/python benchmarks/mining_throughput.py               # the documented run
    .venv/bin/python benchmarks/mining_throughput.py --quick       # smoke run (resnet18, 8 images of 64 px)
    .venv/bin/python benchmarks/mining_throughput.py --models resnet18 --images 96
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import torch
import torchvision
from torch import Tensor, nn

# Benchmark the checkout this script lives in, whatever is installed in the environment.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A private persistent receptive-field cache: the user's one is neither read (every timed
# run must pay for a cold probe) nor written. Workers inherit it.
if "_CAPTUM_TOPK_BENCH_CACHE" not in os.environ:
    os.environ["_CAPTUM_TOPK_BENCH_CACHE"] = tempfile.mkdtemp(prefix="captum_topk_bench_")
    atexit.register(shutil.rmtree, os.environ["_CAPTUM_TOPK_BENCH_CACHE"], True)
os.environ["CAPTUM_TOPK_CACHE_DIR"] = os.environ["_CAPTUM_TOPK_BENCH_CACHE"]

import captum
from captum.attr import LayerActivation

from captum_topk import LayerTopKPatches
from captum_topk.receptive_field import clear_receptive_field_cache, receptive_fields

# where the miner measures receptive fields (TorchSource imports it from there when it needs it)
probe_mod = importlib.import_module("captum_topk.receptive_field.probe")


def clear_rf_caches() -> None:
    """Empty the in-process and the (private) persistent receptive-field caches."""
    try:
        clear_receptive_field_cache(disk=True)
    except TypeError:  # a version without the persistent cache
        clear_receptive_field_cache()

LAYERS: Dict[str, List[str]] = {
    "resnet18": ["layer1", "layer2", "layer3"],
    "mobilenet_v2": ["features.3", "features.7", "features.14"],
}
K = 9
METHODS = ("forward", "mine", "naive")


# --------------------------------------------------------------------------- setup
def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def make_batches(n_images: int, batch_size: int, size: int, seed: int) -> List[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out, left = [], n_images
    while left > 0:
        b = min(batch_size, left)
        out.append(torch.randn(b, 3, size, size, generator=gen))
        left -= b
    return out


def modules_of(model: nn.Module, names: Sequence[str]) -> List[nn.Module]:
    named = dict(model.named_modules())
    return [named[n] for n in names]


class _Stop(Exception):
    pass


def deepest_module(model: nn.Module, names: Sequence[str], size: int) -> nn.Module:
    """The mined layer that runs last in the forward (found on one tiny dry run)."""
    order: List[int] = []
    mods = modules_of(model, names)
    handles = [m.register_forward_hook(lambda m, i, o, j=j: order.append(j)) for j, m in
               enumerate(mods)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return mods[order[-1]]


# --------------------------------------------------------------------------- methods
def forward_step(model: nn.Module, deepest: nn.Module, x: Tensor) -> None:
    """(a) on one batch: forward up to (and including) the deepest mined layer, then stop."""

    def stop(_m, _i, _o):
        raise _Stop

    handle = deepest.register_forward_hook(stop)  # per call, as the miner does
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()


def naive_topk(acts: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k / bottom-k per channel, one (best) position per image, from all activations."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    hi, hi_pos = flat.max(dim=2)  # (N, C)
    lo, lo_pos = flat.min(dim=2)
    kk = min(k, n)
    top_v, top_i = torch.topk(hi.t(), kk, dim=1)
    bot_v, bot_i = torch.topk(lo.t(), kk, dim=1, largest=False)
    return top_v, top_i, bot_v, bot_i


class Naive:
    """(c) keep every activation (LayerActivation, full forward), top-k at the end."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.la = LayerActivation(model, modules_of(model, names))
        self.kept: List[List[Tensor]] = [[] for _ in names]

    def step(self, x: Tensor) -> None:
        with torch.no_grad():
            outs = self.la.attribute(x)
        outs = outs if isinstance(outs, list) else [outs]
        for store, out in zip(self.kept, outs):
            store.append(out)

    def finish(self) -> list:
        with torch.no_grad():
            return [naive_topk(torch.cat(store, dim=0), K) for store in self.kept]


class _Timers(dict):
    def wrap(self, fn: Callable, key: str) -> Callable:
        self.setdefault(key, 0.0)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self[key] += time.perf_counter() - t

        return wrapper


def timed_mine(model: nn.Module, names: Sequence[str], data: Iterable[Tensor],
               timers: _Timers, cold: bool = True) -> float:
    """(b) ``LayerTopKPatches(...).mine(data)``; fills ``timers`` with the time of its
    ``update()`` calls, of ``compute()`` and of the ``receptive_fields`` call inside it.
    ``cold``: every receptive-field cache emptied first, so that call is the probe, as on the
    very first run; else only the in-process cache, so it is a persistent-cache hit, as on
    any later run. Returns mine()'s wall time."""
    if cold:
        clear_rf_caches()
    else:
        clear_receptive_field_cache()
    miner = LayerTopKPatches(model, list(names), k=K)
    miner.update = timers.wrap(miner.update, "update_s")  # instance attrs shadow the methods
    miner.compute = timers.wrap(miner.compute, "compute_s")
    real_rf = probe_mod.receptive_fields
    probe_mod.receptive_fields = timers.wrap(real_rf, "probe_s")
    try:
        t0 = time.perf_counter()
        result = miner.mine(data, progress=False)
        wall = time.perf_counter() - t0
    finally:
        probe_mod.receptive_fields = real_rf
    assert set(result.receptive_fields) == set(names), "the fields were not measured"
    # The fields are measured inside the first update() (first batch): count them apart.
    timers["update_s"] -= timers.get("probe_s", 0.0)
    return wall


def interleaved(model: nn.Module, names: Sequence[str], deepest: nn.Module,
                batches: Sequence[Tensor], rep: int) -> Dict[str, float]:
    """One timed pass of (a), (b) and (c), interleaved batch by batch; the receptive fields
    are probed (cold caches) in the first pass (``rep == 0``) only.

    ``mine()`` is called for real on a generator; before handing it batch i, the generator
    runs (a) and (c) on that same batch (their order alternating), times them, and that
    time is subtracted from mine()'s wall time. A burst of load from elsewhere on the
    machine thus hits the three methods alike instead of whichever ran at that moment.
    """
    naive = Naive(model, names)
    spent = {"forward": 0.0, "naive": 0.0}

    def step(method: str, x: Tensor) -> None:
        t = time.perf_counter()
        if method == "forward":
            forward_step(model, deepest, x)
        else:
            naive.step(x)
        spent[method] += time.perf_counter() - t

    def feed() -> Iterator[Tensor]:
        for i, x in enumerate(batches):
            for method in (("forward", "naive") if (i + rep) % 2 == 0 else ("naive", "forward")):
                step(method, x)
            yield x

    timers = _Timers()
    wall = timed_mine(model, names, feed(), timers, cold=rep == 0)
    mine_s = wall - spent["forward"] - spent["naive"]
    t = time.perf_counter()
    naive.finish()
    spent["naive"] += time.perf_counter() - t
    # What later runs pay instead of the probe: a hit in the persistent cache (the
    # in-process one emptied, as in a new process).
    clear_receptive_field_cache()
    t = time.perf_counter()
    receptive_fields(model, list(names), tuple(batches[0].shape[-2:]))
    rf_reload = time.perf_counter() - t
    return {
        "forward_s": spent["forward"],
        "naive_s": spent["naive"],
        "mine_s": mine_s,
        "rf_reload_s": rf_reload,
        "naive_mib_per_image": sum(
            sum(o.numel() * o.element_size() for o in store) for store in naive.kept
        ) / 2**20 / sum(x.shape[0] for x in batches),
        **timers,
    }


def run_method(method: str, model: nn.Module, names: Sequence[str], deepest: nn.Module,
               batches: Sequence[Tensor]) -> None:
    """One method alone over all batches (for the memory workers)."""
    if method == "forward":
        for x in batches:
            forward_step(model, deepest, x)
    elif method == "mine":
        timed_mine(model, names, batches, _Timers())
    elif method == "naive":
        naive = Naive(model, names)
        for x in batches:
            naive.step(x)
        naive.finish()
    else:
        raise ValueError(method)


# --------------------------------------------------------------------------- memory worker
def peak_rss_mib() -> float:
    """The process's peak RSS: ``VmHWM`` of /proc/self/status, else ``ru_maxrss``.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` alone is wrong in a child started by a big parent:
    Linux folds the parent's high-water mark (at fork time) into the child's ``ru_maxrss``
    at exec, so every worker would report the parent's ~1.4 GiB. ``VmHWM`` is per address
    space and is what ``ru_maxrss`` reports otherwise.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def mem_worker(args: argparse.Namespace) -> None:
    model = build_model(args.model_name)
    names = LAYERS[args.model_name]
    batches = make_batches(args.images, args.batch_size, args.size, seed=0)
    deepest = deepest_module(model, names, 32)
    # Importing torch and friends leaves a high-water mark above the steady RSS; reset it
    # (Linux >= 4.0) so that the peak measured below is the method's own.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = peak_rss_mib()
    run_method(args.method, model, names, deepest, batches)
    after = peak_rss_mib()
    print(json.dumps({"before_mib": before, "after_mib": after, "hwm_reset": reset}))


def measure_memory(model_name: str, method: str, args: argparse.Namespace) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_mem-worker", method,
           "--_model", model_name, "--images", str(args.images),
           "--batch-size", str(args.batch_size), "--size", str(args.size)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    # glibc's dynamic mmap threshold keeps freed big blocks in the heap after the first
    # large free, so RSS would depend on the history of frees, not on the live tensors; a
    # fixed threshold makes every big tensor an mmap returned to the OS when freed.
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {model_name}/{method} failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_increase_mib"] = out["after_mib"] - out["before_mib"]
    return out


# --------------------------------------------------------------------------- report
def machine() -> Dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum.__version__,
        "python": platform.python_version(),
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    """1-minute load average: other processes on the machine skew every figure."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def bench_model(model_name: str, args: argparse.Namespace) -> Dict:
    names = LAYERS[model_name]
    model = build_model(model_name)
    batches = make_batches(args.images, args.batch_size, args.size, seed=0)
    warm = make_batches(args.batch_size, args.batch_size, args.size, seed=1)
    deepest = deepest_module(model, names, args.size)
    # Warm-up: one batch of each method (oneDNN primitives, allocator), not counted; the
    # miner's warm-up is one update() (not compute(), which would run the probe).
    forward_step(model, deepest, warm[0])
    Naive(model, names).step(warm[0])
    LayerTopKPatches(model, list(names), k=K).update(warm[0])
    runs: List[Dict[str, float]] = []
    for rep in range(args.repeats):
        r = interleaved(model, names, deepest, batches, rep)
        runs.append(r)
        what = "probe" if rep == 0 else "cache hit"
        print(f"  [{model_name}] rep {rep + 1}: (a) forward {r['forward_s']:6.2f} s, "
              f"(b) mine {r['mine_s']:6.2f} s = update {r['update_s']:6.2f} s + compute "
              f"{r['compute_s']:6.2f} s ({what} {r['probe_s']:6.2f} s), (c) naive "
              f"{r['naive_s']:6.2f} s; this pass: b'/a {r['forward_s'] / r['update_s']:.2f}, "
              f"b'/c {r['naive_s'] / r['update_s']:.2f}", flush=True)

    n = args.images
    best = {key: min(r[key] for r in runs) for key in runs[0]}
    # mine() = its loop (update() calls, snapshot, ...) + the receptive-field call: the
    # best loop of all passes plus the first pass's probe (b), or plus a persistent-cache
    # hit (b on any later run, "warm")
    loop_s = min(r["mine_s"] - r["probe_s"] for r in runs)
    probe_s = runs[0]["probe_s"]
    ips = {
        "forward": n / best["forward_s"],
        "mine": n / (loop_s + probe_s),
        "mine_warm": n / (loop_s + best["rf_reload_s"]),
        "update": n / best["update_s"],
        "naive": n / best["naive_s"],
    }
    compute_s = runs[0]["compute_s"]
    memory = {}
    if not args.no_memory:
        for method in METHODS:
            memory[method] = measure_memory(model_name, method, args)
    return {"model": model_name, "layers": names, "ips": ips, "probe_s": probe_s,
            "compute_s": compute_s, "rf_reload_s": best["rf_reload_s"],
            "naive_mib_per_image": runs[0]["naive_mib_per_image"], "memory": memory,
            "runs": runs}


def report(results: List[Dict], info: Dict[str, str], args: argparse.Namespace) -> str:
    lines = []
    lines.append(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
                 f"(torch.get_num_threads() = {info['torch_threads']}), torchvision "
                 f"{info['torchvision']}, captum {info['captum']}, python {info['python']}")
    lines.append(f"load average (1 min): {info['loadavg']} at start, {loadavg()} at end "
                 f"(on {info['cores']} cores; above ~{info['cores']}, other processes compete)")
    lines.append(f"images: {args.images} synthetic randn {args.size}x{args.size}, batch "
                 f"{args.batch_size}, k={K}, best of {args.repeats} interleaved runs, "
                 "1 warm-up batch per method excluded")
    lines.append("")
    cols = [("model", 13, "<"), ("(a) fwd", 9, ">"), ("(b) mine", 9, ">"),
            ("(b') upd", 9, ">"), ("(c) naive", 9, ">"), ("probe s", 8, ">"), ("b/a", 6, ">"),
            ("b'/a", 6, ">"), ("b/c", 6, ">"), ("b'/c", 6, ">"), ("RSS a", 7, ">"),
            ("RSS b", 7, ">"), ("RSS c", 7, ">")]
    head = " ".join(f"{t:{a}{w}s}" for t, w, a in cols)
    lines.append(head)
    lines.append(f"{'':13s} {'img/s':>9s} {'img/s':>9s} {'img/s':>9s} {'img/s':>9s} {'':>8s} "
                 f"{'':>6s} {'':>6s} {'':>6s} {'':>6s} {'MiB':>7s} {'MiB':>7s} {'MiB':>7s}")
    for r in results:
        ips, mem = r["ips"], r["memory"]

        def rss(m: str) -> str:
            return f"{mem[m]['peak_increase_mib']:7.0f}" if m in mem else f"{'-':>7s}"

        lines.append(
            f"{r['model']:13s} {ips['forward']:9.1f} {ips['mine']:9.1f} {ips['update']:9.1f} "
            f"{ips['naive']:9.1f} {r['probe_s']:8.2f} {ips['mine'] / ips['forward']:6.2f} "
            f"{ips['update'] / ips['forward']:6.2f} {ips['mine'] / ips['naive']:6.2f} "
            f"{ips['update'] / ips['naive']:6.2f} {rss('forward')} {rss('mine')} {rss('naive')}"
        )
    lines.append("")
    lines.append("goals: b/a >= 0.9, b/c >= 1.5 (b includes the one-off receptive-field probe; "
                 "b' = update() calls only)")
    for r in results:
        ips = r["ips"]
        ba, bpa = ips["mine"] / ips["forward"], ips["update"] / ips["forward"]
        bc, bpc = ips["mine"] / ips["naive"], ips["update"] / ips["naive"]
        ok = lambda v, g: "met" if v >= g else "MISSED"  # noqa: E731
        lines.append(f"  {r['model']}: b/a = {ba:.2f} ({ok(ba, 0.9)}), b'/a = {bpa:.2f} "
                     f"({ok(bpa, 0.9)}), b/c = {bc:.2f} ({ok(bc, 1.5)}), b'/c = {bpc:.2f} "
                     f"({ok(bpc, 1.5)})")
        # images at which the probe is amortised enough for b/a >= 0.9 (if b' allows it)
        t_img_upd, t_img_fwd = 1 / ips["update"], 1 / ips["forward"]
        if 0.9 * t_img_upd < t_img_fwd:
            n_even = r["probe_s"] / (t_img_fwd / 0.9 - t_img_upd)
            lines.append(f"    probe {r['probe_s']:.1f} s = {r['probe_s'] * ips['forward']:.0f} "
                         f"images of (a); b/a reaches 0.9 from ~{n_even:,.0f} images")
        else:
            lines.append(f"    probe {r['probe_s']:.1f} s = {r['probe_s'] * ips['forward']:.0f} "
                         "images of (a); b'/a < 0.9, so b/a stays below 0.9 at any size")
        wa, wc = ips["mine_warm"] / ips["forward"], ips["mine_warm"] / ips["naive"]
        lines.append(f"    later runs (receptive fields from the persistent cache in "
                     f"{r['rf_reload_s']:.2f} s): b = {ips['mine_warm']:.1f} img/s, b/a = "
                     f"{wa:.2f} ({ok(wa, 0.9)}), b/c = {wc:.2f} ({ok(wc, 1.5)})")
        per = r["naive_mib_per_image"]
        lines.append(f"    (c) keeps {per:.2f} MiB of activations per image (x2 while "
                     f"concatenating): {per * 50000 / 1024:.0f} GiB for 50,000 images; "
                     "(b) keeps O(channels x k)")
        if r["memory"]:
            m = r["memory"]
            lines.append("    peak RSS increase (absolute peak): " + ", ".join(
                f"{k} {m[k]['peak_increase_mib']:.0f} MiB ({m[k]['after_mib']:.0f})"
                for k in METHODS))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, choices=list(LAYERS),
                   help="default: all (resnet18 only with --quick)")
    p.add_argument("--images", type=int, default=None, help="timed images (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 224)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: left at torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the RSS subprocesses")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: resnet18, 8 images of 64 px, batch 4, 1 repeat")
    p.add_argument("--json", default=None, help="also write the raw figures to this file")
    p.add_argument("--_mem-worker", dest="mem_worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--_model", dest="model_name", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = (8, 4, 64, 1) if args.quick else (128, 32, 224, 2)
    for attr, default in zip(("images", "batch_size", "size", "repeats"), defaults):
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    if args.models is None:
        args.models = ["resnet18"] if args.quick else list(LAYERS)
    if args.images < 1 or args.batch_size < 1 or args.size < 32 or args.repeats < 1:
        p.error("--images, --batch-size, --repeats must be >= 1 and --size >= 32")

    if args.mem_worker:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        args.method = args.mem_worker
        mem_worker(args)
        return 0

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine()
    how = "default, left as is" if args.threads is None else "set by --threads"
    print(f"torch.get_num_threads() = {info['torch_threads']} ({how}); "
          f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}", flush=True)
    t0 = time.perf_counter()
    results = [bench_model(m, args) for m in args.models]
    text = report(results, info, args)
    print()
    print(text)
    print(f"\n(whole benchmark: {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
