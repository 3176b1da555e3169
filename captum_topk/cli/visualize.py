r"""``captum-topk visualize``: feature visualization by optimisation, written as a PNG sheet.
Registered by :func:`captum_topk.cli.main.build_parser`."""

from __future__ import annotations

import argparse
from typing import Any

from ..models.registry import DEFAULT_MODEL


def cmd_visualize(args: argparse.Namespace) -> int:
    from ..featvis.cache import cached_visualize, model_digest
    from ..featvis.objectives import OBJECTIVES
    from ..featvis.render import visualize
    from ..featvis.sheet import sheet
    from ..models.registry import load_model
    from ..viz.plot import save_png

    if args.objective not in OBJECTIVES:  # argparse choices cannot hold "-channel"
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {args.objective!r}")
    model, info = load_model(args.model, checkpoint=args.checkpoint)
    if args.device:
        model = model.to(args.device)
    settings = dict(info=info, size=args.size, steps=args.steps, seed=args.seed,
                    objective=args.objective, lr=args.lr, samples=args.samples,
                    diversity=args.diversity, progress=not args.no_progress, device=args.device)
    if args.cache:
        vis = cached_visualize(args.cache, model, args.layer, args.channels,
                               weights_digest=model_digest(model), **settings)
    else:
        vis = visualize(model, args.layer, args.channels, **settings)
    for c in vis.channels:
        vals = ", ".join(f"{float(v):.3f}" for v in vis.values_of(c))
        print(f"{vis.layer} channel {c}: {vis.objective} = {vals}")
    title = f"{args.model} {vis.layer}: {vis.objective}, {vis.settings['size']} px, {args.steps} steps, seed {args.seed}"
    path = save_png(sheet(vis, ncols=args.ncols, title=title), args.out)
    print(path)
    return 0


def add_visualize_command(sub: Any) -> None:
    r"""Add the ``visualize`` sub-command to the CLI's sub-parsers."""
    sp = sub.add_parser("visualize", help="optimise an image per channel (feature visualization) -> PNG sheet")
    sp.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                    help=f"built-in name, torchvision arch or checkpoint (default {DEFAULT_MODEL})")
    sp.add_argument("--checkpoint", default=None, help="state_dict / training checkpoint (weights_only)")
    sp.add_argument("--layer", required=True, help="the layer's dotted name (see `captum-topk layers`)")
    sp.add_argument("--channels", nargs="+", type=int, required=True, help="channel indices")
    sp.add_argument("--out", default="vis.png", help="the PNG sheet (default vis.png)")
    sp.add_argument("--size", type=int, default=None,
                    help="image side in px (default: the model's input side when it takes one size only, else 128)")
    sp.add_argument("--steps", type=int, default=256, help="Adam steps (default 256)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--objective", default="channel",
                    help="channel (mean over positions, default), neuron (centre), or their negatives: "
                         "--objective=-channel, --objective=-neuron")
    sp.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    sp.add_argument("--samples", type=int, default=1, help="images per channel (default 1)")
    sp.add_argument("--diversity", type=float, default=0.0,
                    help="weight of the diversity term among a channel's samples (needs --samples >= 2)")
    sp.add_argument("--ncols", type=int, default=4, help="channels per row of the sheet")
    sp.add_argument("--cache", default=None,
                    help="a folder: reuse channels computed before with the same weights and settings")
    sp.add_argument("--device", default=None, help="cpu or cuda (default: where the model is, the CPU)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_visualize)
