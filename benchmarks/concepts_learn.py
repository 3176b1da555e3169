#!/usr/bin/env python
r"""What learning concepts costs, in one run on this machine.

1. NMF: ``learn_concepts(method="nmf", n_concepts=16)`` on ``--images`` (default 2,000) views of
   the packaged photos (random resized crops and flips, seeded per index, so the two passes see
   the same images) at the packaged ImageNet MobileNetV2's ``features.14``, against one mining
   pass of the same images (``LayerTopKPatches(k=9).mine``). Goal: ratio <= 3. ``features.14``
   is a linear bottleneck (values below zero), so NMF runs with ``negatives="clamp"``
   (``max(a, 0)`` factorised). scikit-learn is imported before timing (its import, several
   seconds on a loaded machine, is reported apart).
2. SAE: a TopK SAE (``--sae-latents`` latents, ``--sae-k`` active) trained on 80 % of the
   images, its reconstruction R^2 on the held-out 20 % (``1 - sum ||a - a_hat||^2 /
   sum ||a - mean||^2`` over every position), and its cost against the mining pass.
   PCA with as many components as the SAE's ``k`` (fitted on the first 400 training images)
   is reported beside it as a baseline.

Both passes build their receptive fields / layer infos on a warm-up batch first (cached), so
the times compare the streamed passes. Wall and process CPU time are both reported: on a shared
machine the load changes between the passes, and CPU time is the fairer ratio.

Usage::

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/concepts_learn.py
    .venv/bin/python benchmarks/concepts_learn.py --images 200 --quick     # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from captum_topk import LayerTopKPatches  # noqa: E402
from captum_topk.concepts import learn_concepts  # noqa: E402
from captum_topk.concepts.stream import layer_rows  # noqa: E402
from captum_topk.data import demo_images  # noqa: E402
from captum_topk.models import load_model  # noqa: E402


class Views(Dataset):
    r"""``n`` augmented views of the photos: view ``i`` is photo ``i % P`` with a random resized
    crop and flip drawn from seed ``i`` (the same tensor every time it is read)."""

    def __init__(self, photos, n: int, mean, std, size: int = 224, offset: int = 0) -> None:
        from torchvision import transforms as T

        self.photos, self.n, self.offset = photos, n, offset
        self.aug = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip(),
                              T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        j = i + self.offset
        torch.manual_seed(j)
        return self.aug(self.photos[j % len(self.photos)]), -1


def loader(ds, batch_size):
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layer", default="features.14")
    p.add_argument("--concepts", type=int, default=16)
    p.add_argument("--sae-latents", type=int, default=320)
    p.add_argument("--sae-k", type=int, default=16)
    p.add_argument("--sae-epochs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="skip the SAE")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    dev = torch.device(args.device)
    model, info = load_model("mobilenet_v2-imagenet")
    model = model.eval().to(dev)
    ds = demo_images(validate="none")
    photos = [ds.load_image(i).convert("RGB") for i in range(len(ds))]
    views = Views(photos, args.images, info.mean, info.std)
    warm = torch.stack([views[i][0] for i in range(2)])
    LayerTopKPatches(model, layer=[args.layer], k=9).attribute(warm.to(dev))  # fields cached
    t0 = time.perf_counter()
    import sklearn.decomposition  # noqa: F401
    sk_import = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    LayerTopKPatches(model, layer=[args.layer], k=9).mine(loader(views, args.batch_size), progress=False)
    mine_s, mine_cpu = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    nmf = learn_concepts(model, args.layer, loader(views, args.batch_size), method="nmf",
                         n_concepts=args.concepts, negatives="clamp", progress=False)
    nmf_s, nmf_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"device": str(dev), "torch_threads": torch.get_num_threads(), "images": args.images,
           "layer": args.layer, "mine_s": round(mine_s, 2), "nmf_s": round(nmf_s, 2),
           "nmf_over_mine": round(nmf_s / mine_s, 3), "mine_cpu_s": round(mine_cpu, 2),
           "nmf_cpu_s": round(nmf_cpu, 2), "nmf_over_mine_cpu": round(nmf_cpu / mine_cpu, 3),
           "nmf_rows": nmf.encoder_state["rows"],
           "sklearn_import_s": round(sk_import, 2)}
    print(f"mining pass {mine_s:.1f}s (CPU {mine_cpu:.1f}s) | NMF{args.concepts} learning {nmf_s:.1f}s "
          f"(CPU {nmf_cpu:.1f}s) -> ratio {nmf_s / mine_s:.2f}, in CPU time {nmf_cpu / mine_cpu:.2f} "
          f"(goal <= 3); sklearn import {sk_import:.1f}s apart", flush=True)

    if not args.quick:
        n_train = int(0.8 * args.images)
        train = Views(photos, n_train, info.mean, info.std)
        held = Views(photos, args.images - n_train, info.mean, info.std, offset=n_train)
        t0, c0 = time.perf_counter(), time.process_time()
        sae = learn_concepts(model, args.layer, loader(train, args.batch_size), method="sae",
                             n_concepts=args.sae_latents, k=args.sae_k, epochs=args.sae_epochs,
                             positions_per_image=None, progress=False, lr=1e-3)
        sae_s, sae_cpu = time.perf_counter() - t0, time.process_time() - c0
        pca = learn_concepts(model, args.layer, loader(train, args.batch_size), method="pca",
                             n_concepts=args.sae_k, progress=False, max_images=min(n_train, 400))
        sums = {"sae": 0.0, "pca": 0.0}
        n, s1, s2 = 0, None, None
        for b in layer_rows(model, args.layer, loader(held, args.batch_size), progress=False):
            x = b.rows.double()
            for key, c in (("sae", sae), ("pca", pca)):
                sums[key] += float((x - c.decode(c.encode(b.rows)).double()).pow(2).sum())
            n += x.shape[0]
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 = x.pow(2).sum() if s2 is None else s2 + x.pow(2).sum()
        total = float(s2 - s1.pow(2).sum() / n)
        r2 = {k: 1 - v / total for k, v in sums.items()}
        out.update({"sae_latents": args.sae_latents, "sae_k": args.sae_k, "sae_epochs": args.sae_epochs,
                    "sae_train_images": n_train, "sae_s": round(sae_s, 2),
                    "sae_over_mine_per_image": round((sae_s / n_train) / (mine_s / args.images), 3),
                    "sae_cpu_s": round(sae_cpu, 2),
                    "sae_over_mine_per_image_cpu": round((sae_cpu / n_train) / (mine_cpu / args.images), 3),
                    "sae_r2_heldout": round(r2["sae"], 4), f"pca{args.sae_k}_r2_heldout": round(r2["pca"], 4),
                    "sae_train_nmse": round(sae.encoder_state["train_nmse"], 4)})
        print(f"SAE {args.sae_latents} latents k={args.sae_k}: {sae_s:.1f}s on {n_train} images "
              f"({out['sae_over_mine_per_image']:.2f}x a mining pass per image); held-out R^2 "
              f"{r2['sae']:.3f} (PCA with {args.sae_k} components: {r2['pca']:.3f})", flush=True)
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
