r"""``captum-topk`` command line: layers, mine (resumable), show, filters, demo.

With no model or data given, every command uses the embedded default: MobileNetV2 with
torchvision's ImageNet weights (shipped by a package) on the real photos that packages ship.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .runs import (
    DEFAULT_MODEL,
    describe_layers,
    load_run,
    mine_run,
    open_dataset,
    render_filters,
    render_run,
)

DEMO_LAYERS = ["features.3", "features.7", "features.11"]  # receptive fields 19, 75, 203 px


def _print_table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_layers(args: argparse.Namespace) -> int:
    rows = describe_layers(args.model, args.checkpoint, input_size=args.input_size,
                           all_modules=args.all)
    _print_table(rows, ["layer", "type", "output", "stride", "rf"])
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    out = mine_run(
        model=args.model,
        checkpoint=args.checkpoint,
        layers=args.layers or DEMO_LAYERS,
        data=args.data,
        out=args.out,
        k=args.k,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        snapshot_every=args.snapshot_every,
        max_images=args.max_images,
        distinct_images=not args.several_per_image,
        progress=not args.no_progress,
        input_size=args.input_size,
    )
    print(f"result written to {out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    written = render_run(run, layers=args.layer, channels=args.channels, which=args.which,
                         out_dir=args.out_dir, max_channels=args.max_channels,
                         patch_px=args.patch_px)
    for p in written:
        print(p)
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    path = render_filters(args.model, args.checkpoint, layer=args.layer, out=args.out)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result_path = mine_run(model=DEFAULT_MODEL, checkpoint=None, layers=DEMO_LAYERS, data=None,
                           out=out, k=9, batch_size=16, workers=0, resume=False,
                           snapshot_every=30.0, max_images=None, distinct_images=True,
                           progress=True)
    written = [render_filters(DEFAULT_MODEL, None, layer=None, out=out / "filters.png")]
    written += render_run(load_run(result_path), layers=None, channels=None, which="top",
                          out_dir=out, max_channels=args.max_channels, patch_px=args.patch_px)
    print("Real top-9 patches from MobileNetV2-ImageNet on the packaged photos:")
    for p in written:
        print(f"  {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="captum-topk",
        description="Zeiler & Fergus dataset top-k patches for any PyTorch CNN.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser, positional: bool = False) -> None:
        if positional:
            sp.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                            help=f"built-in name, torchvision arch or checkpoint (default {DEFAULT_MODEL})")
        else:
            sp.add_argument("--model", default=DEFAULT_MODEL,
                            help=f"built-in name, torchvision arch or checkpoint (default {DEFAULT_MODEL})")
        sp.add_argument("--checkpoint", default=None, help="state_dict / training checkpoint (weights_only)")

    sp = sub.add_parser("layers", help="list minable layers with output shape, stride, receptive field")
    model_args(sp, positional=True)
    sp.add_argument("--input-size", type=int, default=None, help="input side in px (default: the model's)")
    sp.add_argument("--all", action="store_true", help="list every module, not only the minable ones")
    sp.set_defaults(func=cmd_layers)

    sp = sub.add_parser("mine", help="mine top-k patches of a dataset (resumable)")
    model_args(sp)
    sp.add_argument("--layers", nargs="+", default=None, help=f"layer names (default {' '.join(DEMO_LAYERS)})")
    sp.add_argument("--data", default=None, help="image folder or ImageNet val folder (default: packaged photos)")
    sp.add_argument("--k", type=int, default=9)
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    sp.add_argument("--out", required=True, help="output folder (result.pt, snapshot.pt, run.json)")
    sp.add_argument("--resume", action="store_true", help="continue from OUT/snapshot.pt")
    sp.add_argument("--snapshot-every", type=float, default=30.0, help="seconds between snapshots")
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--input-size", type=int, default=None, help="crop size in px (default: the model's)")
    sp.add_argument("--several-per-image", action="store_true",
                    help="allow several of a channel's top-k from one image")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_mine)

    sp = sub.add_parser("show", help="PNG grids of top-1 / top-9 patches per channel")
    sp.add_argument("run", help="a folder written by `mine` (or its result.pt)")
    sp.add_argument("--layer", nargs="+", default=None, help="layers (default: all mined)")
    sp.add_argument("--channels", nargs="+", type=int, default=None)
    sp.add_argument("--which", choices=["top", "bottom"], default="top")
    sp.add_argument("--max-channels", type=int, default=16)
    sp.add_argument("--patch-px", type=int, default=96, help="largest patch side in the sheets")
    sp.add_argument("--out-dir", default=None, help="default: the run folder")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("filters", help="layer-1 filter tiles as PNG")
    model_args(sp, positional=True)
    sp.add_argument("--layer", default=None, help="a conv layer (default: the first)")
    sp.add_argument("--out", default="filters.png")
    sp.set_defaults(func=cmd_filters)

    sp = sub.add_parser("demo", help="mine the embedded default and write PNGs (what `make run` does)")
    sp.add_argument("--out", default="results/demo")
    sp.add_argument("--max-channels", type=int, default=16, help="channels per top-9 sheet")
    sp.add_argument("--patch-px", type=int, default=96, help="largest patch side in the sheets")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"captum-topk {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
