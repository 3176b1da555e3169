r"""``python -m captum_topk.dashboard warm``: mine the dashboard's default run ahead of time."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from . import ensure_default_run, open_run, run_embeddings
from .roots import Roots


def _warm(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m captum_topk.dashboard",
                                description="Prepare the dashboard: mine the default run if missing.")
    p.add_argument("command", choices=["warm"], help="mine the default run (and its embeddings) if missing")
    p.add_argument("--base", default=None, help="folder of the default roots (default: current directory)")
    args = p.parse_args(argv)
    roots = Roots.from_env(args.base)
    t0 = time.monotonic()

    def report(phase: str, done: int, total: Optional[int]) -> None:
        if phase in ("loading", "receptive fields"):
            print(f"  {phase}...", flush=True)

    try:
        folder = ensure_default_run(roots, progress=report)
        run = open_run(folder)
        run_embeddings(run, run.layers[-1])
    except (ValueError, FileNotFoundError) as exc:
        print(f"dashboard warm-up failed: {exc}", file=sys.stderr)
        return 2
    print(f"dashboard ready: default run {folder} ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_warm())
