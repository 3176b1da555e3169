r"""The recipe comparison of docs/transfer.md: choose on validation, score the winner on test once.

    .venv/bin/python docs/run_transfer_recipes.py [--recipes NAME ...] [--out DIR]

ELPV binary task, split three ways by module (``train_val_test_split(..., groups=elpv_modules())``:
60 / 20 / 20 %, seed 0). Each fine-tuning recipe runs ``finetune_run(..., evaluate_test=False)``:
the probe's L2 is cross-validated on train (folds grouped by module), the epoch is chosen on
validation accuracy, the test split is held back. Then the recipe with the best validation
accuracy of its chosen epoch wins (ties: the higher balanced accuracy, then the first listed),
and only the winner and its linear probe are scored on the test split.

Each recipe's run is kept under ``checkpoints/recipes/`` (``NAME-finetuned.json`` holds its
metrics), so an interrupted comparison resumes where it stopped. Results:
``results/transfer_recipes.json`` and Markdown tables on stdout. A few minutes per recipe at
112 px, ~10 min at 224 px on two idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captum_topk.data.elpv import elpv_dataset  # noqa: E402
from captum_topk.models import load_checkpoint_state_dict  # noqa: E402
from captum_topk.transfer import evaluate, finetune_run, load_finetuned  # noqa: E402
from captum_topk.utils.files import atomic_write_text  # noqa: E402

#: The four recipes of the earlier study (docs/transfer.md), the current default last.
RECIPES = {
    "112px-5blocks-1e-4-bn-train-3ep": dict(input_size=112, unfreeze=5, lr=1e-4, head_lr=1e-3,
                                            train_bn=True, epochs=3),
    "112px-5blocks-3e-5-5ep": dict(input_size=112, unfreeze=5, lr=3e-5, head_lr=1e-4,
                                   train_bn=False, epochs=5),
    "224px-8blocks-1e-4-5ep": dict(input_size=224, unfreeze=8, lr=1e-4, head_lr=3e-4,
                                   train_bn=False, epochs=5),
    "224px-8blocks-3e-5-5ep": dict(input_size=224, unfreeze=8, lr=3e-5, head_lr=1e-4,
                                   train_bn=False, epochs=5),
}


def _pct(m) -> str:
    return f"{100 * m['accuracy']:.1f} % (bal. {100 * m['balanced_accuracy']:.1f})"


def _run(name: str, recipe: dict, folder: Path) -> dict:
    out = folder / f"{name}-finetuned.pt"
    summary_path = out.with_suffix(".json")
    if summary_path.exists() and out.exists():
        print(f"[{name}] done before: {summary_path}")
        return json.loads(summary_path.read_text())
    print(f"[{name}] {recipe}", flush=True)
    t0 = time.monotonic()
    finetune_run(out=out, evaluate_test=False, progress=False, **recipe)
    print(f"[{name}] {time.monotonic() - t0:.0f} s", flush=True)
    return json.loads(summary_path.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES)[::-1],
                    help="recipes to compare (default all four, the default recipe first)")
    ap.add_argument("--checkpoints", default=str(ROOT / "checkpoints" / "recipes"))
    ap.add_argument("--out", default=str(ROOT / "results" / "transfer_recipes.json"))
    args = ap.parse_args()
    folder = Path(args.checkpoints)
    folder.mkdir(parents=True, exist_ok=True)

    runs = {name: _run(name, RECIPES[name], folder) for name in args.recipes}

    print("\n| recipe | linear probe, val | epoch 1 | epoch 2 | epoch 3 | epoch 4 | epoch 5 | chosen epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in runs.items():
        epochs = [_pct(h["val"]) for h in s["finetune"]] + [""] * (5 - len(s["finetune"]))
        print(f"| {name} | {_pct(s['linear_probe']['val'])} | {' | '.join(epochs)} | "
              f"{s['final']['epoch']}: {_pct(s['final']['val'])} |")

    order = list(runs)
    best = max(order, key=lambda n: (runs[n]["final"]["val"]["accuracy"],
                                     runs[n]["final"]["val"]["balanced_accuracy"], -order.index(n)))
    print(f"\nchosen on validation: {best} (epoch {runs[best]['final']['epoch']})")

    # the test split, once: the winner and its linear probe
    ckpt = folder / f"{best}-finetuned.pt"
    _, meta = load_checkpoint_state_dict(str(ckpt))
    test_index = meta["held_back_test_index"]
    model, info = load_finetuned(ckpt)
    dataset = elpv_dataset(info.transform, task="binary")
    test = evaluate(model, dataset, test_index, batch_size=64)
    probe_path = folder / f"{best}-linear-probe.pt"
    probe, _ = load_finetuned(probe_path)
    probe_test = evaluate(probe, dataset, test_index, batch_size=64)
    n = len(test_index)
    se = (test["accuracy"] * (1 - test["accuracy"]) / n) ** 0.5
    print(f"test ({n} cells, looked at once): linear probe {_pct(probe_test)}, "
          f"fine-tuned {_pct(test)} (binomial s.e. of the accuracy {100 * se:.1f} points)")
    print(f"confusion (rows true functional/defective): probe {probe_test['confusion']}, "
          f"fine-tuned {test['confusion']}")
    result = {"recipes": {n_: RECIPES[n_] for n_ in runs}, "validation": runs, "chosen": best,
              "test": {"n": n, "finetuned": test, "linear_probe": probe_test,
                       "accuracy_standard_error": se}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
