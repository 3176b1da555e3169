#!/usr/bin/env python
r"""Cold receptive fields: the traced method against the full NaN probe, in one run.

For each model (torchvision architecture, random init with a fixed seed, 224 px by default)
and one layer, the script measures the exact receptive field of that layer with an empty
cache (in memory and on disk) twice:

* ``trace``: ``receptive_field(..., method="auto")``, which traces the model with
  ``torch.fx``, propagates per-axis dependency sets, and confirms them with a few NaN probes
  (it must come back with ``method == "trace"``);
* ``probe``: ``receptive_field(..., method="probe")``, one NaN probe image per input row and
  column (``H + W + 1`` images).

Forward-equivalents are *counted*, not derived: a forward pre-hook on the model's first
``Conv2d`` adds up the batch sizes of every forward pass that reaches it (the trace's shape
pass on 2 images, the confirmation images, the probe images); each image counts as one full
forward pass even though every pass stops after the requested layer. Wall time includes
everything (tracing, shape pass, interval arithmetic, confirmation). The two results are
compared box by box. The two methods alternate per model (trace first on even repeats), and
the best of ``--repeats`` is kept.

Two cases are channels-last ``(N, H, W, C)`` layers inside ConvNeXt blocks (torchvision
``convnext_tiny``, timm ``convnext_atto`` with ``conv_mlp=False``): the traced side asks without
declaring the layout, as the miner does, and takes the field of the permutation from the
``ChannelsLastError`` (the trace found the layout); the probe is told the layout.

Usage::

    .venv/bin/python benchmarks/receptive_field_cold.py            # the documented run (CPU)
    .venv/bin/python benchmarks/receptive_field_cold.py --quick    # smoke run at 64 px
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List, Sequence

os.environ["CAPTUM_TOPK_CACHE_DIR"] = ""  # no persistent cache: every measurement is cold

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captum_topk.capture.layouts import ChannelsLastError  # noqa: E402
from captum_topk.receptive_field import clear_receptive_field_cache, receptive_field, receptive_fields  # noqa: E402
from captum_topk.utils.files import atomic_write_text  # noqa: E402

def _timm_convnext_atto_nhwc() -> nn.Module:
    import timm  # optional: only for this case

    return timm.create_model("convnext_atto", pretrained=False, conv_mlp=False)


CASES = {
    "resnet18": ("layer3", lambda: torchvision.models.resnet18(weights=None)),
    "mobilenet_v2": ("features.14", lambda: torchvision.models.mobilenet_v2(weights=None)),
    "googlenet": ("inception4a", lambda: torchvision.models.googlenet(weights=None, aux_logits=False,
                                                                      init_weights=True)),
    # channels-last (N, H, W, C) layers inside ConvNeXt blocks (the Linear after the LayerNorm)
    "convnext_tiny": ("features.1.0.block.3", lambda: torchvision.models.convnext_tiny(weights=None)),
    "convnext_atto_nhwc": ("stages.1.blocks.0.mlp.fc1", _timm_convnext_atto_nhwc),
}
NHWC = {"convnext_tiny", "convnext_atto_nhwc"}
"""Cases whose layer is channels-last. The traced side asks as the miner does, without saying
so: the trace finds the layout, and the ``ChannelsLastError`` that refuses the raw output
carries the field of its ``(N, C, H, W)`` permutation; the probe is told the layout."""


def _first_conv(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def measure(model: nn.Module, layer: str, size: int, method: str, nhwc: bool = False) -> Dict[str, object]:
    clear_receptive_field_cache()
    images: List[int] = []
    handle = _first_conv(model).register_forward_pre_hook(lambda _m, args: images.append(int(args[0].shape[0])))
    try:
        start = time.perf_counter()
        if not nhwc:
            rf = receptive_field(model, layer, size, cache=False, progress=False, method=method)
        elif method == "probe":
            rf = receptive_fields(model, [layer], size, cache=False, progress=False, method=method,
                                  channels_last=[layer])[layer]
        else:
            try:
                receptive_field(model, layer, size, cache=False, progress=False, method=method)
                raise AssertionError(f"{layer} was not found channels-last")
            except ChannelsLastError as exc:
                if exc.fields is None:
                    raise AssertionError(f"{layer}: the trace did not find the layout ({exc})") from None
                rf = exc.fields[layer]
        wall = time.perf_counter() - start
    finally:
        handle.remove()
    return {"rf": rf, "wall_s": wall, "forward_equivalents": sum(images), "method": rf.method}


def bench(name: str, size: int, repeats: int) -> Dict[str, object]:
    layer, build = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    best: Dict[str, Dict[str, object]] = {}
    for rep in range(repeats):
        order = ("auto", "probe") if rep % 2 == 0 else ("probe", "auto")
        for method in order:
            got = measure(model, layer, size, method, name in NHWC)
            key = "trace" if method == "auto" else "probe"
            if key not in best or got["wall_s"] < best[key]["wall_s"]:
                best[key] = got
    trace, probe = best["trace"], best["probe"]
    return {
        "model": name, "layer": layer, "size": size,
        "trace_method": trace["method"],
        "trace_forward_equivalents": trace["forward_equivalents"],
        "probe_forward_equivalents": probe["forward_equivalents"],
        "trace_s": round(float(trace["wall_s"]), 3),
        "probe_s": round(float(probe["wall_s"]), 3),
        "speedup": round(float(probe["wall_s"]) / float(trace["wall_s"]), 1),
        "identical": trace["rf"] == probe["rf"],
        "rf_size": list(trace["rf"].size), "stride": list(trace["rf"].stride),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES),
                   help="convnext_atto_nhwc needs timm")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: stable on a shared CPU)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run at 64 px")
    args = p.parse_args(argv)
    if args.quick:
        args.size = 64
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for name in args.models:
        rows.append(bench(name, args.size, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "load_before": round(load, 1),
            "load_after": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{'model':<20}{'layer':<27}{'px':>4}{'fwd-eq trace':>14}{'fwd-eq probe':>14}"
          f"{'trace s':>9}{'probe s':>9}{'speedup':>9}  identical")
    for r in rows:
        print(f"{r['model']:<20}{r['layer']:<27}{r['size']:>4}{r['trace_forward_equivalents']:>14}"
              f"{r['probe_forward_equivalents']:>14}{r['trace_s']:>9.2f}{r['probe_s']:>9.2f}"
              f"{r['speedup']:>8.1f}x  {r['identical']} ({r['trace_method']})")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": info, "rows": rows}, indent=2))
    ok = all(r["identical"] and r["trace_method"] == "trace" and r["trace_forward_equivalents"] <= 60 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
