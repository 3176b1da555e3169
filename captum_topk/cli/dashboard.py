r"""``captum-topk dashboard``: serve the Streamlit app, private by default (bound to 127.0.0.1;
``--host 0.0.0.0`` exposes it, see the README's "Security and robustness"). On a first start the
app mines the embedded default run in the background while its first page is already on screen
(``--warm`` mines it before serving instead)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, List

# app_streamlit/ sits beside captum_topk/ in a checkout and in site-packages (the wheel carries it).
APP = Path(__file__).resolve().parents[2] / "app_streamlit" / "main.py"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def streamlit_argv(host: str, port: int, app: Path = APP) -> List[str]:
    r"""The ``streamlit run`` command line of the dashboard (no toolbar deploy button, no usage
    statistics, headless: nothing opens a browser on a server)."""
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true", "--client.toolbarMode", "viewer",
            "--browser.gatherUsageStats", "false"]


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ..dashboard import ENV_VARS, Roots, ensure_default_run

    if not APP.is_file():
        raise FileNotFoundError(f"The Streamlit app is not at {APP}: this installation of captum-topk lacks "
                                "app_streamlit/ (reinstall it from a wheel or a checkout: pip install captum-topk).")
    roots = Roots.from_env(args.base)
    for key, var in ENV_VARS.items():  # the app (another process) reads the same roots
        os.environ.setdefault(var, str(getattr(roots, key)))
    if args.warm:
        t0 = time.monotonic()
        print("preparing the default run (cached after the first time)...", flush=True)
        folder = ensure_default_run(roots)
        print(f"default run ready: {folder} ({time.monotonic() - t0:.1f} s)", flush=True)
    if args.host not in LOOPBACK:
        print(f"warning: the dashboard listens on {args.host}: anyone who can reach this machine can browse "
              "the configured data and run folders and start mining jobs. Put it behind an authenticating "
              "reverse proxy (README, 'Security and robustness').", file=sys.stderr)
    print(f"serving on http://{args.host if args.host not in ('0.0.0.0', '::') else 'localhost'}:{args.port}", flush=True)
    argv = streamlit_argv(args.host, args.port)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    os.execv(sys.executable, argv)  # Streamlit takes over this process (Ctrl-C stops it)
    return 0  # pragma: no cover


def add_dashboard_command(sub: Any) -> None:
    sp = sub.add_parser("dashboard", help="serve the Streamlit dashboard (private: 127.0.0.1 unless --host)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it on "
                         "every network interface, see the README's 'Security and robustness')")
    sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--base", default=None, help="folder of the default roots data/ results/ checkpoints/ onnx_models/")
    sp.add_argument("--warm", action="store_true",
                    help="mine the default run before serving (by default the page opens at once and mines it "
                         "in the background on a first start)")
    sp.add_argument("--dry-run", action="store_true", help="print the streamlit command instead of running it")
    sp.set_defaults(func=cmd_dashboard)
