#!/usr/bin/env python
r"""Real runs of docs/concepts.md on the packaged photos: NMF concepts of MobileNetV2
``features.14``, their top-9 patches and feature visualizations, polysemanticity of channels
vs NMF concepts vs SAE latents, and a TCAV concept.

The packaged ImageNet MobileNetV2 (``load_model("mobilenet_v2-imagenet")``) and the packaged
photos (``demo_images()``: 46 photos with scikit-learn installed). Each photo gives ``--views``
images at 224 px: the photo itself (resized, centre-cropped) and ``views - 1`` random resized
crops (scale 0.25-1) with random flips, seeded by the view's index.

1. ``learn_concepts(model, "features.14", views, method="nmf", n_concepts=16,
   negatives="clamp")`` (every position of every view); a TopK SAE (64 latents, 8 active,
   :class:`captum_topk.concepts.sae.TopKSAE`) trained for ``--sae-steps`` Adam steps on the
   cached ``features.14`` activations of the same views (the cache saves the repeated forward
   passes that ``learn_concepts(method="sae")`` would run on so few images).
2. One mining pass ``LayerTopKPatches(model, ["features.14"], k=36, concepts=[nmf, sae])``:
   channels, NMF concepts and SAE latents side by side. A unit's **top-9 photos** are its
   strongest records from 9 different photos (k=36 with 4 views per photo guarantees 9).
3. Polysemanticity, measured on those top-9 views (9 different photos): *purity* = share of
   the 9 views in the most common class, a view's class being the model's top-1 prediction on
   it; *coherence* = mean pairwise cosine similarity of the 9 views' pooled ``features.18``
   embeddings (the model's last feature layer). Both against random sets (one random view of
   each of 9 random photos).
4. Feature visualization of the 16 NMF directions (``captum_topk.visualize(model, layer,
   concepts)``) beside their top-9 patches (exact receptive fields of the concept layer
   ``features.14:nmf16``); CRAFT importance of each concept for the dalmatian photo's class.
5. TCAV: ``Concepts.from_tcav`` with "animal" views (the 7 foolbox photos of an animal class)
   against "not animal" views (the 13 other foolbox photos); its top-9 among the 26 photos that
   did not train it.

Writes ``docs/images/concepts_*.png`` and ``results/concepts_docs/summary.json`` (every number
quoted in docs/concepts.md); intermediate results are cached under ``results/concepts_docs/``.

Usage::

    OMP_NUM_THREADS=1 nice .venv/bin/python docs/make_concepts_figures.py
    .venv/bin/python docs/make_concepts_figures.py --views 2 --sae-steps 200 --vis-steps 16   # preview
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captum_topk import Concepts, LayerTopKPatches, learn_concepts  # noqa: E402
from captum_topk.concepts.sae import TopKSAE  # noqa: E402
from captum_topk.data import demo_images  # noqa: E402
from captum_topk.models import load_model  # noqa: E402

OUT = ROOT / "docs" / "images"
CACHE = ROOT / "results" / "concepts_docs"
LAYER = "features.14"
IMAGENET_ANIMALS = 398  # ImageNet classes 0..397 are animals


class Views(torch.utils.data.Dataset):
    r"""View ``i`` is photo ``i % P``: the photo itself for ``i < P``, else a random resized crop
    and flip seeded by ``i`` (the same tensor every time)."""

    def __init__(self, photos, n_views: int, info) -> None:
        from torchvision import transforms as T

        self.photos, self.n = photos, n_views * len(photos)
        self.plain = info.transform
        self.aug = T.Compose([T.RandomResizedCrop(224, scale=(0.25, 1.0)), T.RandomHorizontalFlip(),
                              T.ToTensor(), T.Normalize(info.mean, info.std)])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        p = i % len(self.photos)
        img = self.photos[p][0]
        if i < len(self.photos):
            return self.plain(img)
        torch.manual_seed(i)
        return self.aug(img)


def save_small(image, path: Path) -> None:
    r"""A 256-colour PNG (the figures stay small in the repository)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(path, path.stat().st_size // 1024, "KB")


def timed(label, fn, times):
    t = time.perf_counter()
    out = fn()
    times[label] = round(time.perf_counter() - t, 1)
    print(f"{label}: {times[label]} s", flush=True)
    return out


def forward_all(model, views: torch.Tensor, batch: int = 32):
    r"""``features.14`` activations, pooled ``features.18`` embeddings and top-1 of every view."""
    acts, emb, pred = [], [], []
    with torch.no_grad():
        for s in range(0, len(views), batch):
            a = model.features[:15](views[s:s + batch])
            f = model.features[15:](a)
            acts.append(a)
            pooled = f.mean((2, 3))
            emb.append(pooled)
            pred.append(model.classifier(pooled).argmax(1))
    return torch.cat(acts), torch.cat(emb), torch.cat(pred)


def top_photos(result, layer: str, unit: int, n_photos: int, k: int = 9):
    r"""The unit's strongest records from ``k`` different photos: [(view index, value)]."""
    seen, out = set(), []
    for r in result.records(layer, unit):
        if r.index % n_photos not in seen:
            seen.add(r.index % n_photos)
            out.append((r.index, r.value))
        if len(out) == k:
            break
    return out


def purity(classes) -> float:
    return Counter(classes).most_common(1)[0][1] / len(classes)


def coherence(emb: torch.Tensor) -> float:
    e = torch.nn.functional.normalize(emb, dim=1)
    sim = e @ e.T
    n = len(e)
    return float((sim.sum() - n) / (n * (n - 1)))


def unit_measures(result, layer, n_units, n_photos, pred, emb):
    r"""Purity and coherence of every unit's top-9 views (from 9 different photos)."""
    pur, coh, dead = [], [], 0
    for u in range(n_units):
        top = top_photos(result, layer, u, n_photos)
        if len(top) < 9 or top[0][1] <= 0:
            dead += 1
            continue
        views = [i for i, _ in top]
        pur.append(purity([int(pred[v]) for v in views]))
        coh.append(coherence(emb[views]))
    return pur, coh, dead


def describe(values):
    a = np.asarray(values)
    return {"n": int(a.size), "mean": round(float(a.mean()), 3), "median": round(float(np.median(a)), 3),
            "p10": round(float(np.percentile(a, 10)), 3), "p90": round(float(np.percentile(a, 90)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--concepts", type=int, default=16)
    ap.add_argument("--sae-latents", type=int, default=64)
    ap.add_argument("--sae-k", type=int, default=8)
    ap.add_argument("--sae-steps", type=int, default=2000)
    ap.add_argument("--vis-steps", type=int, default=128)
    ap.add_argument("--vis-size", type=int, default=96)
    args = ap.parse_args()
    torch.manual_seed(0)
    CACHE.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    summary: dict = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "settings": vars(args)}

    model, info = load_model("mobilenet_v2-imagenet")
    model.eval()
    photos = demo_images()
    ids, labels = list(photos.ids), list(photos.labels)
    P = len(photos)
    cats = info.categories
    ds = Views(photos, args.views, info)
    views = torch.stack([ds[i] for i in range(len(ds))])
    summary["photos"], summary["views"] = P, len(views)

    acts, emb, pred = timed("forward (cache)", lambda: forward_all(model, views), times)
    photo_pred, photo_emb = pred[:P], emb[:P]
    foolbox = [i for i in range(P) if labels[i] >= 0]
    summary["foolbox_top1_correct"] = sum(int(photo_pred[i]) == labels[i] for i in foolbox)
    summary["photo_classes"] = len(set(photo_pred.tolist()))
    summary["view_classes"] = len(set(pred.tolist()))
    summary["photo_pred"] = {ids[i]: cats[int(photo_pred[i])] for i in range(P)}

    # 1. NMF concepts (the library's streamed learning) and a TopK SAE on the cached activations
    nmf = timed("learn nmf", lambda: learn_concepts(
        model, LAYER, views, method="nmf", n_concepts=args.concepts, negatives="clamp",
        positions_per_image=None, batch_size=32, progress=False), times)
    nmf.save(CACHE / "nmf16.pt")
    rows = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])

    def train_sae():
        g = torch.Generator().manual_seed(0)
        sae = TopKSAE(rows.shape[1], args.sae_latents, args.sae_k, seed=0)
        last = {}
        for _ in range(args.sae_steps):
            last = sae.step(rows[torch.randint(len(rows), (256,), generator=g)])
        with torch.no_grad():
            rec = sae.concepts(LAYER, name=f"sae{args.sae_latents}").decode(
                sae.concepts(LAYER).encode_rows(rows))
        r2 = 1 - float(((rows - rec) ** 2).sum() / ((rows - rows.mean(0)) ** 2).sum())
        return sae.concepts(LAYER, name=f"sae{args.sae_latents}"), r2, last

    sae, sae_r2, _ = timed("train sae", train_sae, times)
    sae.save(CACHE / "sae64.pt")
    summary["sae_r2_train"] = round(sae_r2, 4)

    # 2. one mining pass: channels, NMF concepts and SAE latents
    miner = LayerTopKPatches(model, [LAYER], k=36, concepts=[nmf, sae])
    result = timed("mine", lambda: miner.mine(views, batch_size=32, progress=False), times)
    nmf_layer, sae_layer = f"{LAYER}:{nmf.name}", f"{LAYER}:{sae.name}"

    # 3. polysemanticity
    rng = np.random.default_rng(0)
    rand_pur, rand_coh = [], []
    for _ in range(2000):  # one random view of each of 9 random photos
        s = rng.choice(P, 9, replace=False) + P * rng.integers(0, args.views, 9)
        rand_pur.append(purity([int(pred[v]) for v in s]))
        rand_coh.append(coherence(emb[s]))
    poly = {"random 9 photos": (rand_pur, rand_coh, 0)}
    for name, layer, n in (("channels", LAYER, acts.shape[1]), ("NMF concepts", nmf_layer, nmf.n_concepts),
                           ("SAE latents", sae_layer, sae.n_concepts)):
        poly[name] = unit_measures(result, layer, n, P, pred, emb)
    summary["polysemanticity"] = {
        name: {"purity": describe(p), "coherence": describe(c), "units_without_9_photos": d,
               "purity_share_ge_1/3": round(float(np.mean(np.asarray(p) >= 3 / 9 - 1e-9)), 3)}
        for name, (p, c, d) in poly.items()}
    print(json.dumps(summary["polysemanticity"], indent=1))
    plot_polysemanticity(poly, OUT / "concepts_polysemanticity.png")

    # 4. importance for the dalmatian photo's class, feature visualization, sheet
    dal = ids.index("foolbox/imagenet_16_dalmatian")
    dal_views = views[dal::P]
    target = int(photo_pred[dal])
    imp = timed("importance", lambda: nmf.importance(model, dal_views, target=target), times)
    summary["importance"] = {"class": cats[target], "views": len(dal_views),
                             "scores": [round(float(v), 3) for v in imp]}
    from captum_topk import visualize

    vis = timed("visualize nmf", lambda: visualize(model, LAYER, nmf, info=info, size=args.vis_size,
                                                   steps=args.vis_steps, progress=False), times)
    from captum_topk.featvis.sheet import sheet

    patches, values, tops = {}, {}, {}
    for c in range(nmf.n_concepts):
        top = top_photos(result, nmf_layer, c, P)
        recs = result.records(nmf_layer, c)
        keep = [j for j, r in enumerate(recs) if (r.index, r.value) in top]
        crops = result.patches(views, nmf_layer, c)
        patches[c] = crops[keep]
        values[c] = [v for _, v in top]
        tops[c] = [ids[i % P] for i, _ in top]
    summary["nmf_top9"] = {str(c): tops[c] for c in tops}
    summary["nmf_top9_classes"] = {str(c): [cats[int(photo_pred[ids.index(t)])] for t in tops[c]] for c in tops}
    title = (f"MobileNetV2 {LAYER} NMF concepts (packaged photos, {len(views)} views): "
             f"feature visualization | top-9 patches from 9 photos")
    save_small(sheet(vis, patches, values, mean=info.mean, std=info.std, vis_px=96, patch_px=40,
                   ncols=4, title=title), OUT / "concepts_nmf16_features14.png")

    # TCAV: animal vs not animal, trained on the foolbox photos' views, ranked on the others
    from captum.concept import Concept
    from torch.utils.data import DataLoader

    animal = [i for i in foolbox if labels[i] < IMAGENET_ANIMALS]
    other = [i for i in foolbox if labels[i] >= IMAGENET_ANIMALS]
    pick = lambda ph: views[[v for v in range(len(views)) if v % P in ph]]  # noqa: E731
    c_animal = Concept(0, "animal", DataLoader(pick(animal), batch_size=16))
    c_other = Concept(1, "not-animal", DataLoader(pick(other), batch_size=16))
    tcav = timed("from_tcav", lambda: Concepts.from_tcav(model, LAYER, [c_animal], c_other), times)
    held = [i for i in range(P) if labels[i] < 0]
    held_views = views[held]
    tres = timed("mine tcav", lambda: LayerTopKPatches(model, [LAYER], k=9, concepts=[tcav]).mine(
        held_views, batch_size=16, progress=False), times)
    tl = f"{LAYER}:{tcav.name}"
    trec = tres.records(tl, 0)
    summary["tcav"] = {"animal_photos": [ids[i] for i in animal], "other_photos": len(other),
                       "views": [len(pick(animal)), len(pick(other))],
                       "top9_held_out": [(ids[held[r.index]], round(r.value, 2)) for r in trec]}
    from captum_topk.viz.plot import patch_grid

    grid = patch_grid(tres.patches(held_views, tl, 0), [f"{r.value:.1f}" for r in trec],
                      mean=info.mean, std=info.std, ncols=9, title="TCAV 'animal' CAV at features.14: "
                      "top-9 of the 26 photos it was not trained on")
    save_small(grid, OUT / "concepts_tcav_animal.png")

    summary["seconds"] = times
    (CACHE / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("photo_pred",)}, indent=1))


def plot_polysemanticity(poly, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    names = list(poly)
    bins = np.arange(1, 11) / 9 - 1 / 18
    for name in names:
        p = np.asarray(poly[name][0])
        h, _ = np.histogram(p, bins=bins)
        axes[0].plot(np.arange(1, 10), h / max(len(p), 1), marker="o", label=f"{name} ({len(p)})")
    axes[0].set_xlabel("photos of the top-9 in its most common class (of 9)")
    axes[0].set_ylabel("share of units")
    axes[0].legend(fontsize=7)
    axes[1].boxplot([poly[n][1] for n in names], tick_labels=[n.replace(" ", "\n") for n in names])
    axes[1].set_ylabel("coherence (cosine, features.18)")
    axes[1].tick_params(labelsize=7)
    fig.suptitle("Top-9 photos of a unit: one class? (purity) how alike? (coherence)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(path, path.stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()
