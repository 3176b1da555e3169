r"""``captum-topk finetune`` and ``captum-topk compare``: registered by :mod:`captum_topk.cli`."""

from __future__ import annotations

import argparse
from typing import Any
from ..models.registry import DEFAULT_MODEL



def _unfreeze(value: str) -> Any:
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--unfreeze takes a block count or 'all', got {value!r}")
    if n < 1:
        raise argparse.ArgumentTypeError("--unfreeze must be >= 1 (0 blocks: that is the linear probe, "
                                         "which every run fits first anyway)")
    return n


def _pct(m: dict) -> str:
    return f"{100 * m['accuracy']:.1f}% (balanced {100 * m['balanced_accuracy']:.1f}%)"


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..transfer.run import finetune_run

    res = finetune_run(
        model=args.model, checkpoint=args.checkpoint, data=args.data, task=args.task,
        input_size=args.input_size, resize_size=args.resize_size, unfreeze=args.unfreeze,
        epochs=args.epochs, lr=args.lr, head_lr=args.head_lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, grouped=not args.no_group, select=args.select,
        max_images=args.max_images, flip=not args.no_flip, train_bn=args.train_bn,
        optimizer=args.optimizer, probe_l2=args.probe_l2, seed=args.seed, workers=args.workers,
        out=args.out, progress=not args.no_progress,
    )
    n_tr, n_va, n_te = len(res.train_index), len(res.val_index), len(res.test_index)
    grouped = "by module" if args.data == "elpv" and not args.no_group else "by image"
    print(f"classes {res.classes}; {n_tr} train / {n_va} validation / {n_te} test images "
          f"(split {grouped})")
    print(f"linear probe (frozen base, L2 {res.probe['l2']:g}): val {_pct(res.probe['val'])}  "
          f"-> {res.probe_checkpoint}")
    for h in res.history:
        mark = "  <- selected" if h["epoch"] == res.selected_epoch else ""
        print(f"fine-tune epoch {h['epoch']}: val {_pct(h['val'])}  "
              f"(train loss {h['train']['loss']:.3f}, {h['seconds']:.0f} s){mark}")
    print(f"final model: epoch {res.final['epoch']} (chosen by {res.final['selected_by']}) "
          f"-> {res.final_checkpoint}")
    if res.final.get("test") is not None:
        print(f"test (looked at once, after the choice), {n_te} images:")
        print(f"  linear probe: {_pct(res.probe['test'])}")
        print(f"  fine-tuned:   {_pct(res.final['test'])}")
    secs = res.seconds
    print(f"time: cache {secs['cache']:.0f} s, probe {secs['probe']:.0f} s, "
          f"fine-tune {secs['finetune']:.0f} s, test {secs.get('test', 0):.0f} s")
    return 0


def _match_arg(values: Any) -> Any:
    if values is None:
        return None
    if values == ["auto"]:
        return "auto"
    if values == ["none"]:
        return []
    for v in values:
        if v.count(":") != 1 or not all(v.split(":")):
            raise SystemExit(f"--match takes LAYER_A:LAYER_B pairs (e.g. features.7:features.7), "
                             f"'auto' or 'none'; got {v!r}")
    return values


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare.run import compare_run

    cmp, written = compare_run(
        model_a=args.a, model_b=args.b, checkpoint_a=args.checkpoint_a,
        checkpoint_b=args.checkpoint_b, data=args.data, layers=args.layers,
        layers_b=args.layers_b, k=args.k, batch_size=args.batch_size,
        max_images=args.max_images, input_size=args.input_size, resize_size=args.resize_size,
        representation=args.representation, top=args.top, out=args.out,
        progress=not args.no_progress,
        measures=None if args.measures is None else [m for m in args.measures if m != "none"],
        permutations=args.permutations, cca_dims=args.cca_dims, match=_match_arg(args.match),
        match_top=args.match_top, match_positions=args.match_positions,
    )
    print(f"compared {cmp.names[0]} and {cmp.names[1]} on {cmp.n_images} images")
    for r in cmp.most_changed(5):
        change = r.get("weight_change")
        print(f"  {r['layer']} ch {r['channel']}: score {r['score']:.3f} "
              f"(r {r['correlation']:.2f}, top-{args.k} overlap {r['jaccard']:.2f}, "
              f"filter cosine distance {r['drift'] if r['drift'] is not None else float('nan'):.2e}, "
              f"weight change {'n/a' if change is None else f'{100 * change:.2f}%'})")
    for name, m in cmp.similarity.items():
        best = [(la, cmp.layers_b[int(m.value[i].argmax())], float(m.value[i].max()),
                 float(m.chance_high[i, int(m.value[i].argmax())]))
                for i, la in enumerate(cmp.layers_a) if (m.value[i] == m.value[i]).any()]
        print(f"{name}: most similar layer of {cmp.names[1]} for each layer of {cmp.names[0]} "
              f"(value / chance p95)")
        for la, lb, v, ch in best:
            print(f"  {la:>16} -> {lb:<16} {v:.3f} / {ch:.3f}")
    for (la, lb), mt in cmp.matchings.items():
        worst = ", ".join(f"{w['unit']} ({w['correlation']:.2f})" for w in mt.poorly_matched(5))
        chance = "" if mt.chance_correlation != mt.chance_correlation else f" (mispaired images {mt.chance_correlation:.3f})"
        left = f"; {len(mt.unmatched())} units of A without a partner" if mt.unmatched() else ""
        print(f"matched {la} -> {lb}: mean r {mt.mean_correlation:.3f} one-to-one{chance}, "
              f"{mt.mean_best_correlation:.3f} best match; poorly matched units of A: {worst}{left}")
    for p in written:
        print(p)
    return 0


def add_transfer_commands(sub: Any) -> None:
    r"""Add the ``finetune`` and ``compare`` sub-commands to the CLI's sub-parsers."""
    sp = sub.add_parser("finetune", help="linear probe + fine-tune a pretrained model on a labelled set")
    sp.add_argument("--model", default=DEFAULT_MODEL, help=f"pretrained model (default {DEFAULT_MODEL})")
    sp.add_argument("--checkpoint", default=None, help="weights of --model (weights_only)")
    sp.add_argument("--data", default="elpv",
                    help="'elpv' (packaged solar cells, default) or a folder with one sub-folder per class")
    sp.add_argument("--task", choices=["binary", "4class"], default="binary", help="ELPV task")
    sp.add_argument("--input-size", type=int, default=224, help="input side in px (default 224)")
    sp.add_argument("--resize-size", type=int, default=None,
                    help="shorter side before the centre crop (default: = input size, whole image)")
    sp.add_argument("--unfreeze", type=_unfreeze, default=8,
                    help="last N blocks to train, or 'all' (default 8: features.11-18 of MobileNetV2)")
    sp.add_argument("--epochs", type=int, default=5)
    sp.add_argument("--lr", type=float, default=3e-5, help="learning rate of the unfrozen blocks")
    sp.add_argument("--head-lr", type=float, default=1e-4, help="learning rate of the new head")
    sp.add_argument("--weight-decay", type=float, default=1e-4)
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--val-fraction", type=float, default=0.2,
                    help="validation share (chooses the epoch; default 0.2)")
    sp.add_argument("--test-fraction", type=float, default=0.2,
                    help="test share (scored once at the end; default 0.2)")
    sp.add_argument("--no-group", action="store_true",
                    help="split ELPV by cell instead of by module (cells of one panel may then "
                         "sit in two splits)")
    sp.add_argument("--select", choices=["accuracy", "balanced_accuracy", "loss", "last"],
                    default="accuracy", help="validation metric that picks the epoch (default accuracy)")
    sp.add_argument("--max-images", type=int, default=None, help="a stratified subset (faster)")
    sp.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    sp.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    sp.add_argument("--train-bn", action="store_true",
                    help="update the BatchNorm statistics of the trained blocks (default: keep ImageNet's)")
    sp.add_argument("--probe-l2", type=float, default=None,
                    help="L2 of the linear probe (default: 3-fold cross-validated on the training split)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--workers", type=int, default=0, help="DataLoader workers of the caching pass")
    sp.add_argument("--out", default=None,
                    help="final checkpoint (default checkpoints/<arch>-<dataset>-finetuned.pt; "
                         "epochs and the probe are written beside it)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_finetune)

    sp = sub.add_parser("compare", help="CKA + per-channel changes between two models (e.g. pretrained vs "
                                        "fine-tuned); similarity measures and matched units across architectures")
    sp.add_argument("a", nargs="?", default=DEFAULT_MODEL, help=f"model A (default {DEFAULT_MODEL})")
    sp.add_argument("b", nargs="?", default=None, help="model B (default: same as A, with --checkpoint-b)")
    sp.add_argument("--checkpoint-a", default=None, help="weights of A (weights_only)")
    sp.add_argument("--checkpoint-b", default=None, help="weights of B, e.g. a fine-tuned checkpoint")
    sp.add_argument("--data", default=None, help="'elpv', 'demo' (default) or an image folder")
    sp.add_argument("--layers", nargs="+", default=None, help="layers of A (default: every block)")
    sp.add_argument("--layers-b", nargs="+", default=None, help="layers of B (default: the same names)")
    sp.add_argument("--k", type=int, default=9, help="top-k images per channel for the overlap")
    sp.add_argument("--batch-size", type=int, default=32, help="also the CKA minibatch size (>= 4)")
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--input-size", type=int, default=None,
                    help="default: from B's (else A's) checkpoint, else A's own")
    sp.add_argument("--resize-size", type=int, default=None)
    sp.add_argument("--representation", choices=["gap", "flatten"], default="gap",
                    help="CKA on global-average-pooled (default) or flattened feature maps")
    sp.add_argument("--top", type=int, default=4,
                    help="most-changed channels (or best-matched units per pair) drawn with their patches")
    sp.add_argument("--measures", nargs="+", default=None,
                    choices=["cka", "procrustes", "svcca", "pwcca", "none"],
                    help="similarity measures on pooled activations, with chance baselines (default: all "
                         "four when A and B are different architectures, none otherwise)")
    sp.add_argument("--permutations", type=int, default=10, help="shuffles per cell for the chance baselines")
    sp.add_argument("--cca-dims", type=int, default=None,
                    help="at most this many SVD directions per side for SVCCA / PWCCA (few images: ~n/10)")
    sp.add_argument("--match", nargs="+", default=None, metavar="A_LAYER:B_LAYER",
                    help="layer pairs whose units are matched by correlation, e.g. features.7:features.7, "
                         "or 'auto' (the pairs of highest CKA; default for different architectures) or 'none'")
    sp.add_argument("--match-top", type=int, default=3, help="pairs chosen by --match auto")
    sp.add_argument("--match-positions", choices=["resampled", "pooled"], default="resampled",
                    help="correlate units over images x positions on the coarser grid (default) or over "
                         "pooled activations")
    sp.add_argument("--out", required=True, help="report folder")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_compare)
