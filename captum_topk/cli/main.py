r"""``captum-topk`` command line: layers, mine (resumable), show, filters, demo.

With no model or data given, every command uses the embedded default: MobileNetV2 with
torchvision's ImageNet weights (shipped by a package) on the real photos that packages ship.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..models.ecosystem import parse_model_spec
from ..models.registry import DEFAULT_LAYERS, DEFAULT_MODEL
from ..runs.folder import open_run
from ..runs.layers import describe_layers
from ..runs.lock import RunLockedError
from ..runs.mine import mine_run
from ..runs.render import render_filters, render_overlays, render_projections, render_run
from .args import add_input_args, add_model_args



def _print_table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_layers(args: argparse.Namespace) -> int:
    if parse_model_spec(str(args.model)).kind == "onnx":  # an ONNX file: its intermediate tensors
        from ..onnx.runtime import describe_onnx_layers

        rows = describe_onnx_layers(args.model, input_size=args.input_size,
                                    all_tensors=args.all, probe_rf=args.rf)
        _print_table(rows, ["layer", "type", "output", "layout", "stride", "rf"])
        return 0
    rows = describe_layers(args.model, args.checkpoint, input_size=args.input_size,
                           all_modules=args.all)
    _print_table(rows, ["layer", "type", "output", "layout", "stride", "rf"])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..models.registry import load_model
    from ..onnx.export import export

    model, info = load_model(args.model, checkpoint=args.checkpoint, random_init=args.random_init)
    exp = export(model, args.layers, args.out, input_size=args.input_size,
                 dynamic_batch=not args.static_batch, info=info, opset=args.opset,
                 check_images=args.check_images, progress=not args.no_progress)
    print(f"{exp.path}  (sidecar {exp.sidecar_path})")
    for name in exp.output_names:
        diff = exp.max_abs_diff.get(name)
        check = f"max |onnxruntime - torch| = {diff:.2e}" if diff is not None else "not checked"
        print(f"  output {name!r}: {check}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    if args.onnx and args.checkpoint:
        raise ValueError("--onnx mines an ONNX file: it takes no --checkpoint.")
    out = mine_run(
        model="" if args.onnx else args.model,
        onnx=args.onnx,
        checkpoint=args.checkpoint,
        layers=args.layers,
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
        device=args.device,
        half=args.half,
        stats=args.stats,
        layout=args.layout,
        random_init=args.random_init,
        backend=args.backend,
        token_grid=tuple(args.token_grid) if args.token_grid else None,
        prefix_tokens=args.prefix_tokens,
        concepts=tuple(args.concepts or ()),
        rank_by=args.rank_by,
        target=args.target,
    )
    if out is not None:  # None on the non-zero ranks of a torchrun job
        print(f"result written to {out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    written = render_run(run, layers=args.layer, channels=args.channels, which=args.which,
                         out_dir=args.out_dir, max_channels=args.max_channels,
                         patch_px=args.patch_px)
    if args.vis:
        from ..runs.visualize import render_visualizations

        written += render_visualizations(run, layers=args.layer, channels=args.channels, out_dir=args.out_dir,
                                         max_channels=min(args.max_channels, 8), progress=True)
    if args.overlay:
        written += render_overlays(run, layers=args.layer, channels=args.channels, which=args.which,
                                   out_dir=args.out_dir, max_channels=min(args.max_channels, 8))
    if args.projection:
        written += render_projections(run, args.projection, layers=args.layer, channels=args.channels,
                                      which=args.which, out_dir=args.out_dir,
                                      max_channels=args.max_channels, patch_px=args.patch_px)
    for p in written:
        print(p)
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    path = render_filters(args.model, args.checkpoint, layer=args.layer, out=args.out)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result_path = mine_run(model=DEFAULT_MODEL, checkpoint=None, layers=DEFAULT_LAYERS, data=None,
                           out=out, k=9, batch_size=16, workers=0, resume=False,
                           snapshot_every=30.0, max_images=None, distinct_images=True,
                           progress=True)
    written = [render_filters(DEFAULT_MODEL, None, layer=None, out=out / "filters.png")]
    written += render_run(open_run(result_path), layers=None, channels=None, which="top",
                          out_dir=out, max_channels=args.max_channels, patch_px=args.patch_px)
    print("Real top-9 patches from MobileNetV2-ImageNet on the packaged photos:")
    for p in written:
        print(f"  {p}")
    return 0


BACKEND_HELP = ("auto (default): ONNX Runtime on CPU when the model exports and passes the parity check (the export "
                "is cached in onnx_models/), PyTorch on GPU or when the export fails; run.json records the engine used")



def _add_layers(sub: Any) -> None:
    sp = sub.add_parser("layers", help="list minable layers with output shape, stride, receptive field")
    add_model_args(sp, positional=True)
    sp.add_argument("--input-size", type=int, default=None, help="input side in px (default: the model's)")
    sp.add_argument("--all", action="store_true", help="list every module, not only the minable ones")
    sp.add_argument("--rf", action="store_true",
                    help="MODEL.onnx: probe receptive fields through ONNX Runtime (slow for big models; "
                         "exported layers read them from the sidecar)")
    sp.set_defaults(func=cmd_layers)


def _add_export(sub: Any) -> None:
    sp = sub.add_parser("export", help="export to ONNX with intermediate layers as extra outputs (+ JSON sidecar)")
    add_model_args(sp, positional=True)
    sp.add_argument("--layers", nargs="+", required=True, help="layer names to expose as graph outputs")
    sp.add_argument("--out", default=None, help="the .onnx file (default onnx_models/<model>.onnx)")
    sp.add_argument("--input-size", type=int, default=None, help="input side in px (default: the model's)")
    sp.add_argument("--static-batch", action="store_true", help="a fixed batch of 1 instead of a dynamic batch")
    sp.add_argument("--opset", type=int, default=17)
    sp.add_argument("--check-images", type=int, default=4,
                    help="real photos for the ONNX Runtime vs PyTorch check (0: skip)")
    sp.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"], help=BACKEND_HELP)
    sp.add_argument("--random-init", action="store_true", help="random weights (a torchvision arch without checkpoint)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_export)


def _add_mine(sub: Any) -> None:
    sp = sub.add_parser("mine", help="mine top-k patches of a dataset (resumable)")
    add_model_args(sp)
    sp.add_argument("--onnx", default=None, metavar="FILE",
                    help="mine this ONNX file through ONNX Runtime instead of a PyTorch model (its export "
                         "sidecar gives the layers and preprocessing)")
    sp.add_argument("--layers", nargs="+", default=None, help="layer names (default: three blocks of the model, e.g. "
                    f"{' '.join(DEFAULT_LAYERS)} for {DEFAULT_MODEL}; see `captum-topk layers MODEL`)")
    add_input_args(sp)
    sp.add_argument("--k", type=int, default=9)
    sp.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    sp.add_argument("--out", required=True, help="output folder (result.pt, snapshot.pt, run.json)")
    sp.add_argument("--resume", action="store_true", help="continue from OUT/snapshot.pt")
    sp.add_argument("--snapshot-every", type=float, default=30.0, help="seconds between snapshots")
    sp.add_argument("--device", default="auto", help="auto (this rank's GPU if any), cpu, cuda")
    sp.add_argument("--half", action="store_true", help="float16 forward (GPU only)")
    sp.add_argument("--several-per-image", action="store_true",
                    help="allow several of a channel's top-k from one image")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"], help=BACKEND_HELP)
    sp.add_argument("--stats", action=argparse.BooleanOptionalAction, default=True,
                    help="per-channel histogram / mean / fraction > 0 in the same pass (default on; "
                         "a few percent of the mining time)")
    sp.add_argument("--concepts", nargs="+", default=None, metavar="FILE",
                    help="saved concepts (Concepts.save) mined beside the channels as layers "
                         "'<layer>:<name>' (their layers are added to --layers)")
    sp.add_argument("--rank-by", default=None, metavar="METHOD",
                    help="rank records by relevance toward --target instead of activation: gxa, lrp, ig "
                         "or a Captum layer attribution class name (PyTorch backend; forward + backward)")
    sp.add_argument("--target", default=None,
                    help="with --rank-by: label, predicted, or a class index")
    sp.set_defaults(func=cmd_mine)


def _add_show(sub: Any) -> None:
    sp = sub.add_parser("show", help="PNG grids of top-1 / top-9 patches per channel")
    sp.add_argument("run", help="a folder written by `mine` (or its result.pt)")
    sp.add_argument("--layer", nargs="+", default=None, help="layers (default: all mined)")
    sp.add_argument("--channels", nargs="+", type=int, default=None)
    sp.add_argument("--which", choices=["top", "bottom"], default="top")
    sp.add_argument("--max-channels", type=int, default=16)
    sp.add_argument("--patch-px", type=int, default=96, help="largest patch side in the sheets")
    sp.add_argument("--out-dir", default=None, help="default: the run folder")
    sp.add_argument("--projection", choices=["deconvolution", "guided_backprop"], default=None,
                    help="also write <layer>_<which><k>_<method>.png: patch | projection side by side")
    sp.add_argument("--vis", action="store_true",
                    help="also write <layer>_vis.png: each channel's feature visualization (an image optimised "
                         "for it, cached in the run folder) beside its top-k patches")
    sp.add_argument("--overlay", action="store_true",
                    help="also write <layer>_<which><k>_overlay.png: each record's whole image with the "
                         "channel's activation map (thresholded at its top 0.5 %% when stats were gathered; "
                         "through ONNX Runtime for runs of an ONNX file)")
    sp.set_defaults(func=cmd_show)


def _add_filters(sub: Any) -> None:
    sp = sub.add_parser("filters", help="layer-1 filter tiles as PNG")
    add_model_args(sp, positional=True)
    sp.add_argument("--layer", default=None, help="a conv layer (default: the first)")
    sp.add_argument("--out", default="filters.png")
    sp.set_defaults(func=cmd_filters)


def _add_demo(sub: Any) -> None:
    sp = sub.add_parser("demo", help="mine the embedded default and write PNGs (what `make run` does)")
    sp.add_argument("--out", default="results/demo")
    sp.add_argument("--max-channels", type=int, default=16, help="channels per top-9 sheet")
    sp.add_argument("--patch-px", type=int, default=96, help="largest patch side in the sheets")
    sp.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    r"""The ``captum-topk`` parser: one builder per command."""
    from .concepts import add_concepts_command
    from .dashboard import add_dashboard_command
    from .transfer import add_transfer_commands  # finetune, compare
    from .visualize import add_visualize_command

    p = argparse.ArgumentParser(
        prog="captum-topk",
        description="Zeiler & Fergus dataset top-k patches for any PyTorch CNN or vision transformer.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_layers, _add_export, _add_mine, _add_show, _add_filters, _add_demo,
                add_transfer_commands, add_dashboard_command, add_visualize_command, add_concepts_command):
        add(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _plain_warning
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, IndexError, ImportError, RunLockedError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"captum-topk {args.command}: error: {message}", file=sys.stderr)
        return 2


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    r"""Warnings for people at a terminal: the message, not the source line that raised it."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    raise SystemExit(main())
