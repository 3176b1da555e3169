r"""Why test accuracy differs from validation accuracy in docs/transfer.md: the splits, module by module.

    .venv/bin/python docs/transfer_split_diagnostic.py [--checkpoint PATH]

A diagnostic run *after* the model was chosen: it chooses nothing. It reads the three splits
stored in the fine-tuned checkpoint (``captum-topk finetune``; by default
``checkpoints/mobilenet_v2-elpv-finetuned.pt`` and its ``-linear-probe.pt``), prints the
composition of each split (cells, modules, defective share, annotated probabilities, cell
type) and scores the linear probe and the fine-tuned model on the validation and test cells
one inferred module (``elpv_modules()``) at a time. The per-module confusion matrices sum to the
checkpoint's own validation and test confusion matrices (checked). Writes
``results/transfer_split_diagnostic.json``. A few minutes on 2 CPU cores (1,062 cells, two
models, 224 px).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captum_topk.data.elpv import _labels_csv, _read_labels, elpv_dataset, elpv_modules  # noqa: E402
from captum_topk.models import load_checkpoint_state_dict  # noqa: E402
from captum_topk.transfer import evaluate, load_finetuned  # noqa: E402
from captum_topk.utils.files import atomic_write_text  # noqa: E402


def _acc(c: np.ndarray) -> float:
    return float(np.trace(c) / max(c.sum(), 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "mobilenet_v2-elpv-finetuned.pt"))
    ap.add_argument("--out", default=str(ROOT / "results" / "transfer_split_diagnostic.json"))
    args = ap.parse_args()
    ckpt = Path(args.checkpoint)
    probe = ckpt.with_name(ckpt.name.replace("-finetuned.pt", "-linear-probe.pt"))
    _, meta = load_checkpoint_state_dict(str(ckpt))
    split = {name: np.asarray(meta["split"][f"{name}_index"]) for name in ("train", "val", "test")}

    rows = _read_labels(_labels_csv())
    prob = np.array([p for _rel, p, _kind in rows])
    kind = np.array([k for _rel, _p, k in rows])
    label = (prob >= 0.5).astype(int)
    module = elpv_modules()

    out = {"checkpoint": str(ckpt), "probe_checkpoint": str(probe), "composition": {}, "models": {}}
    for name, idx in split.items():
        p = prob[idx]
        comp = {"cells": int(len(idx)), "modules": len(set(module[idx].tolist())),
                "defective_share": float(label[idx].mean()),
                "p_counts": {v: int(np.isclose(p, x).sum()) for v, x in
                             (("0", 0.0), ("1/3", 1 / 3), ("2/3", 2 / 3), ("1", 1.0))},
                "mono": int((kind[idx] == "mono").sum()), "poly": int((kind[idx] == "poly").sum()),
                "module_defective_share": {int(g): float(label[idx][module[idx] == g].mean())
                                           for g in sorted(set(module[idx].tolist()))}}
        out["composition"][name] = comp
        print(f"{name}: {comp['cells']} cells, {comp['modules']} modules, "
              f"{100 * comp['defective_share']:.1f} % defective, p {comp['p_counts']}, "
              f"mono {comp['mono']} / poly {comp['poly']}")

    for model_name, path in (("linear_probe", probe), ("finetuned", ckpt)):
        net, info = load_finetuned(path)
        ds = elpv_dataset(info.transform)
        for split_name in ("val", "test"):
            idx = split[split_name]
            per = {}
            for g in sorted(set(module[idx].tolist())):
                sel = idx[module[idx] == g]
                r = evaluate(net, ds, sel, batch_size=64)
                per[int(g)] = {"type": str(kind[sel][0]), "n": int(len(sel)),
                               "defective": int(label[sel].sum()), "confusion": r["confusion"]}
                print(f"{model_name} {split_name} module {g} ({per[int(g)]['type']}, "
                      f"{per[int(g)]['defective']} / {len(sel)} defective): {r['confusion']}", flush=True)
            total = sum(np.asarray(v["confusion"]) for v in per.values())
            by_type = {t: sum(np.asarray(v["confusion"]) for v in per.values() if v["type"] == t)
                       for t in ("mono", "poly")}
            summary = {"confusion": total.tolist(), "accuracy": _acc(total),
                       "by_type": {t: {"confusion": c.tolist(), "accuracy": _acc(c)} for t, c in by_type.items()},
                       "modules": per}
            out["models"].setdefault(model_name, {})[split_name] = summary
            print(f"{model_name} {split_name}: {total.tolist()} accuracy {100 * _acc(total):.1f} %; "
                  + ", ".join(f"{t} {100 * _acc(c):.1f} %" for t, c in by_type.items()))

    m = meta["metrics"]
    expected = {("linear_probe", "val"): m["linear_probe_val"], ("linear_probe", "test"): m["linear_probe_test"],
                ("finetuned", "val"): m["val"], ("finetuned", "test"): m["test"]}
    for (model_name, split_name), ref in expected.items():
        got = out["models"][model_name][split_name]["confusion"]
        if ref is not None and got != ref["confusion"]:
            raise SystemExit(f"{model_name} {split_name}: per-module sum {got} != checkpoint {ref['confusion']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"per-module sums match the checkpoint's confusion matrices -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
