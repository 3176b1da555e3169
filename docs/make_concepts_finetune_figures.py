#!/usr/bin/env python
r"""docs/concepts.md, pretrained vs fine-tuned concepts: NMF concepts of MobileNetV2
``features.18`` with ImageNet weights and with an ELPV fine-tuned checkpoint, matched on ELPV
cells; which concepts fine-tuning kept, dropped and created, with their top-9 cells.

* Cells: ``--cells`` of the checkpoint's validation and test cells (never trained on), drawn
  at random (seed 0), 224 px whole cells (the checkpoint's preprocessing).
* ``features.18`` (1280 channels, ReLU6: non-negative, so NMF factorises it as it is; the block
  whose channels fine-tuning changed most, docs/transfer.md). Each model's activations are
  computed once and cached; ``learn_concepts(method="nmf", n_concepts=16)`` and
  ``match_concepts(by="correlation")`` then read them through ``Replay``, a module whose
  ``features.18`` hands back the cached activations (so each model runs once over the cells).
* A concept's top-9 cells: the 9 cells where its activation (``Concepts.encode``) is highest at
  any position, what ``LayerTopKPatches(..., concepts=[c])`` ranks; at ``features.18`` every
  position's receptive field covers the whole 224 px cell, so the patch is the cell.
* Baseline: NMF is not unique, so ImageNet concepts learned on two halves of the cells are
  matched the same way; fine-tuning's "created" and "dropped" mean something only beyond that.
* Matching: Hungarian on the Pearson correlation of the two concept activations over every
  position of every cell (``match_concepts(by="correlation")``, threshold 0.5), and on the
  cosine of the directions (``by="cosine"``, the same channel basis) for comparison.

Writes ``docs/images/concepts_finetune_match.png`` and ``results/concepts_finetune/summary.json``.

Usage::

    captum-topk finetune ...                  # a checkpoint (docs/transfer.md)
    OMP_NUM_THREADS=1 nice .venv/bin/python docs/make_concepts_finetune_figures.py \
        --checkpoint checkpoints/mobilenet_v2-elpv-finetuned.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captum_topk import elpv_dataset, learn_concepts, load_finetuned, match_concepts  # noqa: E402
from captum_topk.models import load_model  # noqa: E402
from captum_topk.viz.plot import patch_grid  # noqa: E402

OUT = ROOT / "docs" / "images"
CACHE = ROOT / "results" / "concepts_finetune"
LAYER = "features.18"


class _Slice(nn.Module):
    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x):
        return x[:, self.start:self.stop]


class Replay(nn.Module):
    r"""Hands back cached ``features.18`` activations: its input is the cache (channels
    ``start:stop`` of it), its ``features.18`` the layer the concepts name."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*[nn.Identity() for _ in range(18)], _Slice(start, stop))

    def forward(self, x):
        return self.features(x)


def layer_acts(model, images, batch=32):
    with torch.no_grad():
        return torch.cat([model.features(images[s:s + batch]) for s in range(0, len(images), batch)])


def top9(concepts, acts, k=9):
    r"""(K, k) cell positions of each concept's strongest cells, and their values."""
    u = concepts.encode(acts).amax(dim=(2, 3))  # (N, K)
    v, i = u.topk(k, dim=0)
    return i.T, v.T


def label_purity(acts, labels, k=9):
    r"""Per unit of ``acts`` (N, U, h, w): the share of its top-k cells in their majority label."""
    idx = acts.amax(dim=(2, 3)).topk(k, dim=0).indices  # (k, U)
    share = torch.tensor(labels, dtype=torch.float32)[idx].mean(0)
    return torch.maximum(share, 1 - share)


def describe(p):
    p = p.double()
    return {"n": len(p), "mean": round(float(p.mean()), 3), "median": round(float(p.median()), 3),
            "share_9_of_9": round(float((p > 1 - 1e-6).double().mean()), 3),
            "share_ge_8_of_9": round(float((p > 8 / 9 - 1e-6).double().mean()), 3)}


def thumbs(images, px=56):
    return torch.nn.functional.interpolate(images, size=(px, px), mode="bilinear", antialias=True,
                                           align_corners=False)


def row(images, idx, vals, labels, title, mean, std):
    tags = [f"{v:.2g}{' D' if labels[i] else ''}" for i, v in zip(idx.tolist(), vals.tolist())]
    return np.asarray(patch_grid(images[idx], tags, ncols=9, title=title, mean=mean, std=std))


def save_small(image, path):
    r"""A 256-colour PNG (the figures stay small in the repository)."""
    from PIL import Image

    Image.fromarray(np.asarray(image)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
        path, optimize=True)
    print(path, path.stat().st_size // 1024, "KB")


def stack(blocks):
    w = max(b.shape[1] for b in blocks)
    return np.concatenate([np.pad(b, ((0, 4), (0, w - b.shape[1]), (0, 0)), constant_values=255)
                           for b in blocks])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/mobilenet_v2-elpv-finetuned.pt")
    ap.add_argument("--cells", type=int, default=120)
    ap.add_argument("--concepts", type=int, default=16)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_a, _ = load_model("mobilenet_v2-imagenet")
    model_b, info = load_finetuned(args.checkpoint)
    model_a.eval(), model_b.eval()
    ckpt = torch.load(args.checkpoint, weights_only=True)
    split = ckpt["split"]
    held = split["val_index"] + split["test_index"]
    pick = np.random.default_rng(0).permutation(len(held))[: args.cells]
    cells = sorted(held[i] for i in pick)
    ds = elpv_dataset(info.transform)
    images = torch.stack([ds[i][0] for i in cells])
    labels = [int(ds.labels[i]) for i in cells]
    acts_a = layer_acts(model_a, images)
    acts_b = layer_acts(model_b, images)
    t_fwd = time.perf_counter() - t0
    C = acts_a.shape[1]
    both = torch.cat([acts_a, acts_b], 1)
    rep_a, rep_b = Replay(0, C), Replay(C, 2 * C)
    kw = dict(method="nmf", n_concepts=args.concepts, positions_per_image=None, progress=False)
    ca = learn_concepts(rep_a, LAYER, both, name=f"imagenet_nmf{args.concepts}", **kw)
    cb = learn_concepts(rep_b, LAYER, both, name=f"elpv_nmf{args.concepts}", **kw)
    ca.save(CACHE / "imagenet_nmf.pt"), cb.save(CACHE / "elpv_nmf.pt")
    m = match_concepts(ca, cb, by="correlation", model_a=rep_a, model_b=rep_b, data=both)
    # NMF's own instability: ImageNet concepts learned on two halves of the cells, matched the same way
    half = len(cells) // 2
    h1 = learn_concepts(rep_a, LAYER, both[:half], name="half1", **kw)
    h2 = learn_concepts(rep_a, LAYER, both[half:], name="half2", **kw)
    m_halves = match_concepts(h1, h2, by="correlation", model_a=rep_a, model_b=rep_a, data=both)
    mc = match_concepts(ca, cb, by="cosine")
    ia, va = top9(ca, acts_a)
    ib, vb = top9(cb, acts_b)
    defect = lambda idx: int(sum(labels[i] for i in idx.tolist()))  # noqa: E731
    summary = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "checkpoint": args.checkpoint,
        "checkpoint_settings": ckpt.get("settings"), "checkpoint_epoch": ckpt.get("epoch"),
        "checkpoint_metrics": ckpt.get("metrics"), "cells": len(cells),
        "defective_cells": int(sum(labels)), "layer": LAYER,
        "correlation": m.to_json(), "cosine": mc.to_json(),
        "imagenet_halves_correlation": m_halves.to_json(),
        "assignment_correlation": [[int(i), int(j), round(float(s), 3)] for i, j, s in zip(
            range(ca.n_concepts), m.units.assignment.tolist(), m.units.correlation.tolist())]
        if hasattr(m.units, "assignment") else None,
        "top9_defective_a": [defect(ia[k]) for k in range(ca.n_concepts)],
        "top9_defective_b": [defect(ib[k]) for k in range(cb.n_concepts)],
        "base_rate_defective": round(sum(labels) / len(labels), 3),
        "seconds": {"forward_both_models": round(t_fwd, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    # label purity of top-9s (defective / functional): channels vs NMF concepts, both models
    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.tensor(labels, dtype=torch.float32)[torch.randperm(len(labels), generator=g)[:9]].mean()
                        for _ in range(2000)])
    summary["top9_label_purity"] = {
        "random 9 cells": describe(torch.maximum(rand, 1 - rand)),
        "ImageNet channels": describe(label_purity(acts_a, labels)),
        "fine-tuned channels": describe(label_purity(acts_b, labels)),
        "ImageNet NMF concepts": describe(label_purity(ca.encode(acts_a), labels)),
        "fine-tuned NMF concepts": describe(label_purity(cb.encode(acts_b), labels)),
    }
    blocks, small = [], thumbs(images)
    title = (f"ELPV cells: {LAYER} NMF concepts, ImageNet MobileNetV2 vs fine-tuned (matched by "
             f"activation correlation); D = defective cell")
    for a, b, s in sorted(m.kept, key=lambda t: -t[2])[:3]:
        blocks.append(row(small, ia[a], va[a], labels, f"kept: ImageNet {a} ({defect(ia[a])}/9 D)",
                          info.mean, info.std))
        blocks.append(row(small, ib[b], vb[b], labels, f"   -> fine-tuned {b}, r = {s:.2f} "
                          f"({defect(ib[b])}/9 D)", info.mean, info.std))
    for b in sorted(m.created, key=lambda j: -defect(ib[j]))[:3]:
        blocks.append(row(small, ib[b], vb[b], labels, f"created: fine-tuned {b} "
                          f"({defect(ib[b])}/9 D)", info.mean, info.std))
    for a in m.dropped[:2]:
        blocks.append(row(small, ia[a], va[a], labels, f"dropped: ImageNet {a} ({defect(ia[a])}/9 D)",
                          info.mean, info.std))
    save_small(stack(blocks), OUT / "concepts_finetune_match.png")
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    (CACHE / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
