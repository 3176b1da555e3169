#!/usr/bin/env python
r"""Figures of ``docs/compare.md``: three packaged ImageNet models compared on the packaged photos.

MobileNetV2 (``mobilenet_v2-imagenet``), SqueezeNet 1.1 (``squeezenet1_1-imagenet``) and
EfficientNet-Lite0 (``efficientnet_lite0-imagenet``), pairwise, with
:func:`captum_topk.compare.compare_models`:

* images: the 44 packaged photos (:func:`captum_topk.data.demo_images`), resized to 256 px and
  centre-cropped to 224, normalised for model A (model B gets them re-normalised for itself);
* layers: the end of every stage of each network (8 or 9 per model);
* similarity measures on pooled activations: linear CKA, orthogonal Procrustes, SVCCA (99 %
  of the variance), SVCCA and PWCCA capped at 4 directions (n / 10); chance baselines from 20
  shuffles of the image pairing;
* three layer pairs per model pair (early, middle, late) matched unit by unit over images x
  positions (the finer map pooled to the coarser grid), with the mispaired chance level.

Then **does augmentation give more samples?** MobileNetV2 vs SqueezeNet again on 220 views
(each photo cut into torchvision's ``FiveCrop(224)`` of the 256-px resize): the measures with
two chance baselines, single views shuffled and whole photos shuffled (``groups=``).

Writes the full reports to ``results/compare_docs/<a>_vs_<b>/`` and, into ``docs/images/``:

* ``compare_<a>_<b>_similarity.png`` for the three pairs;
* ``compare_mobilenet_squeezenet_matched.png``: MobileNetV2 ``features.10`` vs SqueezeNet
  ``features.7`` (fire5), best- and worst-matched units;
* ``compare_mobilenet_efficientnet_matched.png``: MobileNetV2 ``features.10`` vs
  EfficientNet-Lite0 ``_blocks.7``;

and prints a JSON summary (the numbers quoted in the doc). About 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from captum_topk.capture.hooks import resolve_layers, run_capture  # noqa: E402
from captum_topk.compare import (  # noqa: E402
    PWCCA, SVCCA, compare_models, normalisation_map, save_report, similarity_matrices)
from captum_topk.compare.report import matched_units_figure, similarity_figure  # noqa: E402
from captum_topk.data import demo_images  # noqa: E402
from captum_topk.models import load_model  # noqa: E402
from captum_topk.viz.plot import save_png  # noqa: E402

MODELS = {
    "mobilenet": ("mobilenet_v2-imagenet", "MobileNetV2",
                  ["features.1", "features.3", "features.6", "features.10", "features.13", "features.16",
                   "features.17", "features.18"]),
    "squeezenet": ("squeezenet1_1-imagenet", "SqueezeNet 1.1",
                   ["features.1", "features.3", "features.4", "features.6", "features.7", "features.9",
                    "features.10", "features.11", "features.12"]),
    "efficientnet": ("efficientnet_lite0-imagenet", "EfficientNet-Lite0",
                     ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14",
                      "_blocks.15", "_bn1"]),
}
PAIRS = {
    ("mobilenet", "squeezenet"): ["features.3:features.4", "features.10:features.7", "features.17:features.12"],
    ("mobilenet", "efficientnet"): ["features.3:_blocks.2", "features.10:_blocks.7", "features.17:_blocks.15"],
    ("squeezenet", "efficientnet"): ["features.4:_blocks.2", "features.7:_blocks.7", "features.12:_blocks.15"],
}
FIGURES = {("mobilenet", "squeezenet"): ("features.10", "features.7"),
           ("mobilenet", "efficientnet"): ("features.10", "_blocks.7")}
VIEWS = 5
MAX_BYTES = 400_000


def _save(image, path: Path) -> Path:
    save_png(image, path)
    if path.stat().st_size > MAX_BYTES:  # keep docs images small: reduce to 128 colours
        save_png(image.quantize(128).convert("RGB"), path)
    print(f"{path}  ({path.stat().st_size // 1024} KB)", flush=True)
    return path


def five_crops(mean, std, photos: int = 0) -> torch.Tensor:
    r"""``(photos * 5, 3, 224, 224)``: the FiveCrop views of every packaged photo, photo-major."""
    norm = T.Normalize(mean, std)
    tf = T.Compose([T.Resize(256), T.FiveCrop(224),
                    T.Lambda(lambda crops: torch.stack([norm(T.functional.to_tensor(c)) for c in crops]))])
    ds = demo_images(transform=tf)
    return torch.cat([ds[i][0] for i in range(photos or len(ds))])


def pooled(model, info, ref, layers, images, batch_size=40):
    r"""Global-average-pooled activations of ``layers`` (``images`` normalised as ``ref``)."""
    to_model = normalisation_map(ref.mean, ref.std, info.mean, info.std)
    mods = [m for _, m in resolve_layers(model, layers)]
    out = [[] for _ in layers]
    model.eval()
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            x = images[s:s + batch_size]
            for o, a in zip(out, run_capture(model, mods, to_model(x) if to_model else x)):
                o.append(a.mean((2, 3)))
    return [torch.cat(o) for o in out]


def summarise(cmp) -> dict:
    pair = {"n_images": cmp.n_images, "minibatch_cka": np.round(cmp.cka, 3).tolist(), "measures": {},
            "matching": {}}
    for name, m in cmp.similarity.items():
        best = []
        for i, la in enumerate(cmp.layers_a):
            j = int(np.nanargmax(m.value[i]))
            best.append([la, cmp.layers_b[j], round(float(m.value[i, j]), 3), round(float(m.chance_high[i, j]), 3)])
        above = m.value > m.chance_high
        pair["measures"][name] = {"best_b_per_a [a, b, value, chance_p95]": best,
                                  "cells_above_chance": f"{int(above.sum())} / {above.size}",
                                  "median_chance_mean": round(float(np.nanmedian(m.chance_mean)), 3)}
    for (la, lb), mt in cmp.matchings.items():
        pair["matching"][f"{la}:{lb}"] = {
            "units": [len(mt.assignment), int(mt.matrix.shape[1]) if mt.matrix is not None else None],
            "samples": mt.samples,
            "mean_r": round(mt.mean_correlation, 3), "chance_mean_r": round(mt.chance_correlation, 3),
            "mean_best_r": round(mt.mean_best_correlation, 3),
            "chance_mean_best_r": round(mt.chance_best_correlation, 3),
            "share_r_above_0.5": round(float(np.mean(np.nan_to_num(mt.correlation) > 0.5)), 3),
            "top3": [(u, v, round(r, 3)) for u, v, r in mt.pairs(3)],
            "poorly_matched": mt.poorly_matched(3)}
    return pair


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=0, help="only the first photos (smoke run)")
    ap.add_argument("--permutations", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "results" / "compare_docs"))
    ap.add_argument("--images", default=str(ROOT / "docs" / "images"))
    args = ap.parse_args()
    torch.manual_seed(0)
    nets = {k: load_model(name) for k, (name, _, _) in MODELS.items()}
    summary = {"pairs": {}}
    cap = SVCCA(max_dims=4), PWCCA(max_dims=4)
    measures = ["cka", "procrustes", SVCCA(), *cap]
    for (ka, kb), match in PAIRS.items():
        (net_a, info_a), (net_b, info_b) = nets[ka], nets[kb]
        _, label_a, layers_a = MODELS[ka]
        _, label_b, layers_b = MODELS[kb]
        photos = demo_images(transform=info_a.transform)
        data = photos if not args.photos else photos.subset(range(args.photos))
        t0 = time.monotonic()
        cmp = compare_models(net_a, net_b, data, layers_a, layers_b, k=9, batch_size=44,
                             input_map_b=normalisation_map(info_a.mean, info_a.std, info_b.mean, info_b.std),
                             names=(label_a, label_b), measures=measures, permutations=args.permutations,
                             match=match)
        secs = time.monotonic() - t0
        print(f"{label_a} vs {label_b}: {secs:.0f} s", flush=True)
        save_report(cmp, Path(args.out) / f"{ka}_vs_{kb}", images_source=data, mean=info_a.mean,
                    std=info_a.std, top=4, settings={"images": "the 44 packaged photos, 256 resize, 224 centre crop"})
        out = Path(args.images)
        _save(similarity_figure(cmp), out / f"compare_{ka}_{kb}_similarity.png")
        if (ka, kb) in FIGURES:
            fig = matched_units_figure(cmp, FIGURES[(ka, kb)], data, info_a.mean, info_a.std, top=4, worst=2)
            _save(fig, out / f"compare_{ka}_{kb}_matched.png")
        summary["pairs"][f"{ka}_vs_{kb}"] = dict(summarise(cmp), seconds=round(secs))

    # Does augmentation give more samples? 5 crops per photo, two chance baselines.
    (net_a, info_a), (net_b, info_b) = nets["mobilenet"], nets["squeezenet"]
    views = five_crops(info_a.mean, info_a.std, args.photos)
    groups = np.repeat(np.arange(views.shape[0] // VIEWS), VIEWS)
    reps_a = pooled(net_a, info_a, info_a, MODELS["mobilenet"][2], views)
    reps_b = pooled(net_b, info_b, info_a, MODELS["squeezenet"][2], views)
    aug = {"views": int(views.shape[0])}
    for null, g in (("single views shuffled", None), ("whole photos shuffled", groups)):
        mats = similarity_matrices(reps_a, reps_b, measures, permutations=args.permutations, groups=g)
        aug[null] = {name: {"cells_above_chance": f"{int((m.value > m.chance_high).sum())} / {m.value.size}",
                            "median_chance_mean": round(float(np.nanmedian(m.chance_mean)), 3),
                            "median_value": round(float(np.nanmedian(m.value)), 3)}
                     for name, m in mats.items()}
    summary["five_crops_mobilenet_vs_squeezenet"] = aug
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
