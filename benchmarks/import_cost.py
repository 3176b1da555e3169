#!/usr/bin/env python
r"""What ``import captum_topk`` costs next to ``import torch`` and ``import captum.attr``.

Each statement runs in a fresh Python process (nothing cached in ``sys.modules``), timed inside
that process from just before the import to just after it (the interpreter's own start-up is
left out). The three statements take turns, round after round, so that a load that comes and
goes on the machine falls on all of them alike; the best of the rounds is kept. Prints the
seconds, the ratio ``captum_topk / captum.attr`` (issue 22 asks for at most 1.25) and how many
modules each import leaves in ``sys.modules``.

The figures are only comparable within one run: other processes on the machine (the load
average is printed) slow every import.

Usage::

    .venv/bin/python benchmarks/import_cost.py              # best of 3
    .venv/bin/python benchmarks/import_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent

STATEMENTS = ("import torch", "import captum.attr", "import captum_topk")
_PROBE = ("import sys, time; t = time.perf_counter(); {stmt}; dt = time.perf_counter() - t; "
          "import json; print(json.dumps([dt, len(sys.modules), "
          "sum(m.split('.')[0] == 'captum_topk' for m in sys.modules)]))")


def time_import(stmt: str) -> Tuple[float, int, int]:
    r"""(seconds, modules loaded, ``captum_topk`` modules loaded) of ``stmt`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", _PROBE.format(stmt=stmt)], capture_output=True, text=True,
                         check=True, env=env, cwd=REPO)
    seconds, modules, own = json.loads(out.stdout.strip().splitlines()[-1])
    return float(seconds), int(modules), int(own)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best one is kept (default 3)")
    args = parser.parse_args(argv)

    times: Dict[str, List[float]] = {s: [] for s in STATEMENTS}
    modules: Dict[str, Tuple[int, int]] = {}
    for _ in range(args.repeats):
        for stmt in STATEMENTS:
            seconds, n, own = time_import(stmt)
            times[stmt].append(seconds)
            modules[stmt] = (n, own)

    best = {s: min(v) for s, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"1-minute load average {os.getloadavg()[0]:.1f} (other processes slow every figure)")
    print(f"{'statement':<22}{'best s':>9}{'all runs (s)':>28}{'modules':>9}{'own':>6}")
    for stmt in STATEMENTS:
        runs = " ".join(f"{t:.2f}" for t in times[stmt])
        print(f"{stmt:<22}{best[stmt]:>9.2f}{runs:>28}{modules[stmt][0]:>9}{modules[stmt][1]:>6}")
    ratio = best["import captum_topk"] / best["import captum.attr"]
    print(f"captum_topk / captum.attr: {ratio:.2f} (target <= 1.25); "
          f"captum_topk / torch: {best['import captum_topk'] / best['import torch']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
