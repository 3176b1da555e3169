r"""``captum-topk concepts learn | show | compare``: learn concept directions of a layer, print a
concepts file (and the top-k sheets of its concept layer in a run mined with it), match two sets
of concepts. Registered by :func:`captum_topk.cli.main.build_parser`; see ``docs/concepts.md``."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional


def _load_model(args: argparse.Namespace, checkpoint: Optional[str] = None) -> Any:
    from ..runs.models import load_run_model

    return load_run_model(args.model, checkpoint if checkpoint is not None else args.checkpoint,
                          args.input_size, args.random_init)


def _source_kw(args: argparse.Namespace) -> dict:
    kw: dict = {"layout": args.layout}
    if args.token_grid:
        kw["token_grid"] = tuple(args.token_grid)
    if args.prefix_tokens is not None:
        kw["prefix_tokens"] = args.prefix_tokens
    return kw


def _print_facts(concepts: Any, path: str) -> None:
    from ..dashboard.concepts import concepts_facts

    f = concepts_facts(concepts)
    print(f"{path}: {f['n_concepts']} {f['method']} concepts of {f['layer']} ({f['channels']} channels), "
          f"name {f['name']!r}, mined as layer {f['result_layer']!r}")
    for key, value in sorted(f["facts"].items()):
        print(f"  {key}: {value}")
    if f["labels"]:
        for i, label in enumerate(f["labels"]):
            print(f"  concept {i}: {label}")


def cmd_learn(args: argparse.Namespace) -> int:
    from ..concepts.learn import learn_concepts
    from ..data.descriptor import open_dataset

    model, info = _load_model(args)
    dataset, _ = open_dataset(args.data, info.transform)
    concepts = learn_concepts(model, args.layer, dataset, method=args.method, n_concepts=args.n,
                              max_images=args.max_images, seed=args.seed, progress=not args.no_progress,
                              batch_size=args.batch_size, negatives=args.negatives, name=args.name,
                              **_source_kw(args))
    concepts.save(args.out)
    _print_facts(concepts, args.out)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..concepts.base import Concepts

    concepts = Concepts.load(args.file)
    _print_facts(concepts, args.file)
    if not args.run:
        return 0
    from ..dashboard.concepts import concept_layer
    from ..runs.folder import open_run
    from ..runs.render import render_run

    run = open_run(args.run)
    layer = concept_layer(run, concepts)
    if layer is None:
        raise ValueError(f"The run {args.run} was not mined with these concepts (its layers: "
                         f"{', '.join(run.result.layers)}); mine it with `captum-topk mine --concepts {args.file}`.")
    for path in render_run(run, layers=[layer], channels=args.concepts, which=args.which, out_dir=args.out_dir,
                           max_channels=args.max_concepts, patch_px=args.patch_px):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..concepts.base import Concepts
    from ..concepts.compare import match_concepts
    from ..core.sources.concepts import concept_layer
    from ..dashboard.concepts import matching_rows

    a, b = Concepts.load(args.a), Concepts.load(args.b)
    kw: dict = {}
    if args.by == "correlation":
        from ..data.descriptor import open_dataset

        model_a, info = _load_model(args)
        model_b = _load_model(args, args.checkpoint_b)[0] if args.checkpoint_b else model_a
        kw = dict(model_a=model_a, model_b=model_b, data=open_dataset(args.data, info.transform)[0],
                  batch_size=args.batch_size, max_images=args.max_images, progress=True)
    m = match_concepts(a, b, by=args.by, threshold=args.threshold, **kw)
    rows = matching_rows(m)
    if args.json:
        print(json.dumps({"a": concept_layer(a), "b": concept_layer(b), **m.to_json(), "rows": rows},
                         indent=2))
        return 0
    print(f"{concept_layer(a)} ({a.n_concepts}) vs {concept_layer(b)} ({b.n_concepts}), by {m.by}, "
          f"threshold {m.threshold:g}: {len(m.kept)} kept, {len(m.dropped)} dropped, {len(m.created)} created")
    for r in rows:
        if r["status"] == "kept":
            print(f"  kept     a{r['a']} -> b{r['b']}  {r['similarity']:.3f}")
        elif r["status"] == "dropped":
            print(f"  dropped  a{r['a']}        (closest b{r['b']}: {r['similarity']:.3f})")
        else:
            print(f"  created  b{r['b']}        (closest a{r['a']}: {r['similarity']:.3f})")
    return 0


def add_concepts_command(sub: Any) -> None:
    r"""Add ``concepts learn | show | compare`` to the CLI's sub-parsers."""
    from ..concepts.compare import MATCH_THRESHOLD
    from .args import add_input_args, add_model_args

    p = sub.add_parser("concepts", help="learn, show and compare concept directions of a layer")
    csub = p.add_subparsers(dest="concepts_command", required=True)

    sp = csub.add_parser("learn", help="learn concepts (NMF, sparse autoencoder, PCA) of a layer -> a concepts file")
    add_model_args(sp)
    sp.add_argument("--layer", required=True, help="the layer's name (see `captum-topk layers MODEL`)")
    sp.add_argument("--method", choices=["nmf", "sae", "pca"], default="nmf")
    sp.add_argument("--n", type=int, default=16, help="number of concepts (default 16)")
    add_input_args(sp)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--negatives", choices=["refuse", "clamp"], default="refuse",
                    help="NMF on a layer with negative values: refuse (default) or factorise max(a, 0)")
    sp.add_argument("--name", default=None, help="the concepts' name (default <method><n>, e.g. nmf16)")
    sp.add_argument("--out", required=True, help="the concepts file to write (.pt, no pickle)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_learn)

    sp = csub.add_parser("show", help="print a concepts file; with --run, its concept layer's top-k sheets")
    sp.add_argument("file", help="a concepts file (Concepts.save / `concepts learn`)")
    sp.add_argument("--run", default=None, help="a run folder mined with these concepts (`mine --concepts FILE`)")
    sp.add_argument("--concepts", nargs="+", type=int, default=None, help="concept indices (default: the first)")
    sp.add_argument("--which", choices=["top", "bottom"], default="top")
    sp.add_argument("--max-concepts", type=int, default=16)
    sp.add_argument("--patch-px", type=int, default=96, help="largest patch side in the sheets")
    sp.add_argument("--out-dir", default=None, help="default: the run folder")
    sp.set_defaults(func=cmd_show)

    sp = csub.add_parser("compare", help="match two sets of concepts (Hungarian): kept / dropped / created")
    sp.add_argument("a", help="concepts file A (e.g. the pretrained model's)")
    sp.add_argument("b", help="concepts file B (e.g. the fine-tuned model's)")
    sp.add_argument("--by", choices=["cosine", "correlation"], default="cosine",
                    help="cosine of the directions (default; same layer width) or correlation of the concept "
                         "activations over --data (A on --model/--checkpoint, B on --checkpoint-b)")
    sp.add_argument("--threshold", type=float, default=MATCH_THRESHOLD,
                    help=f"similarity from which a pair is the same concept (default {MATCH_THRESHOLD})")
    add_model_args(sp)
    sp.add_argument("--checkpoint-b", default=None, help="--by correlation: B's weights (default: A's model)")
    add_input_args(sp, layouts=False)
    sp.add_argument("--json", action="store_true", help="print the matching as JSON")
    sp.set_defaults(func=cmd_compare)
