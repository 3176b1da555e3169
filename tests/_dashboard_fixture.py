"""A tiny dashboard world for the app tests: roots in a temp folder, a labelled image folder,
a random ResNet-18 checkpoint and one run mined at 64 px (a few seconds on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torchvision
from PIL import Image

from captum_topk import dashboard as dd

TINY_SPEC = dd.JobSpec(model="resnet18", checkpoint="r18-random.pt", layers=("layer1", "layer2"),
                       data="shapes", k=4, batch_size=8, input_size=64, backend="torch")


def make_images(folder: Path, n_per_class: int = 6, size: int = 80) -> None:
    r"""Two classes of synthetic photos: bright discs and dark stripes on noisy backgrounds."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for cls in ("discs", "stripes"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.uniform(0, 120, (size, size, 3))
            if cls == "discs":
                cy, cx, r = rng.integers(15, size - 15, 2).tolist() + [int(rng.integers(6, 14))]
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(150, 255, 3)
            else:
                period = int(rng.integers(6, 14))
                img[(xx + i) % period < period // 2] *= 0.3
            Image.fromarray(img.astype(np.uint8)).save(folder / cls / f"{cls}_{i:02d}.png")


def make_world(base: Path) -> Dict[str, str]:
    r"""Create roots under ``base`` with the tiny run mined; returns the env vars to set."""
    roots = dd.Roots(data=base / "data", runs=base / "runs", checkpoints=base / "checkpoints",
                     onnx=base / "onnx")
    for p in (roots.data, roots.runs, roots.checkpoints, roots.onnx):
        p.mkdir(parents=True, exist_ok=True)
    make_images(roots.data / "shapes")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), roots.checkpoints / "r18-random.pt")
    dd.mine_job(TINY_SPEC, roots)
    return env_for(roots)


def env_for(roots: "dd.Roots") -> Dict[str, str]:
    return {dd.ENV_VARS[k]: str(getattr(roots, k)) for k in dd.ENV_VARS}


def roots_of(env: Dict[str, str]) -> "dd.Roots":
    return dd.Roots.from_env(env=env)


def set_env(env: Dict[str, str]) -> Dict[str, str]:
    r"""Set the env vars; returns the previous values (None when unset) for restoring."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: Dict[str, str]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
