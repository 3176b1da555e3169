r"""The ELPV solar-cell data set, read from the ``elpv-dataset`` package, as an ImageDataset.

``elpv-dataset==1.0.0.post1`` (PyPI, ~91 MB wheel, 92 MB installed) ships 2,624
electroluminescence (EL) images of solar cells, 300 x 300 8-bit greyscale, from 44 modules
(1,074 monocrystalline, 1,550 polycrystalline), each annotated by an expert with the
probability that the cell is defective: 0, 1/3, 2/3 or 1 (Buerhop-Lutz et al. 2018; Deitsch
et al. 2019). Licence: **CC BY-NC-SA 4.0**: use it, never redistribute the images (this
project only reads them from the installed package, nothing is copied into the repository).

Install it with ``pip install --no-deps elpv-dataset==1.0.0.post1`` (its only dependencies,
numpy and pillow, are already here). Nothing is downloaded at run time.

Tasks:

* ``"binary"`` (default): ``functional`` (p < 0.5) vs ``defective`` (p >= 0.5), the split
  used by Deitsch et al.: 1,803 / 821 images (majority class 68.7 %).
* ``"4class"``: the four annotated probabilities as classes
  ``p=0`` / ``p=1/3`` / ``p=2/3`` / ``p=1`` (1,508 / 295 / 106 / 715).
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple
import numpy as np

from .dataset import ImageDataset
from ..utils.assets import package_dir

__all__ = ["ELPV_PIP", "ELPV_LICENSE", "elpv_available", "elpv_dataset", "elpv_modules",
           "ELPV_TASKS", "ELPV_MODULE_CELLS"]

ELPV_PIP = "elpv-dataset==1.0.0.post1"
ELPV_LICENSE = "CC BY-NC-SA 4.0 (do not redistribute)"
ELPV_TASKS = {
    "binary": ["functional", "defective"],
    "4class": ["p=0", "p=1/3", "p=2/3", "p=1"],
}
ELPV_MODULE_CELLS = 60  # cells of a standard 6 x 10 module


def elpv_available() -> bool:
    r"""Whether the ``elpv-dataset`` package (and its label file) is installed."""
    root = package_dir("elpv_dataset")
    return root is not None and os.path.isfile(os.path.join(root, "data", "labels.csv"))


def _read_labels(path: str) -> List[Tuple[str, float, str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}:{line_no}: expected 'path probability type', got {line!r}")
            rows.append((parts[0], float(parts[1]), parts[2]))
    return rows


def _labels_csv() -> str:
    root = package_dir("elpv_dataset")
    labels_csv = os.path.join(root, "data", "labels.csv") if root else ""
    if not root or not os.path.isfile(labels_csv):
        raise FileNotFoundError(
            f"The ELPV solar-cell data set is not installed. Install it with: "
            f"pip install --no-deps {ELPV_PIP}  (licence {ELPV_LICENSE})."
        )
    return labels_csv


def elpv_modules() -> np.ndarray:
    r"""The module (solar panel) each ELPV cell was cut from, *inferred* from the file order.

    The package does not say which of its 44 modules a cell comes from; its ``labels.csv``
    only gives each cell's type (``mono`` / ``poly``). In file order the type changes 9
    times, in runs of 60, 300, 180, 360, 714, 530, 72, 180, 48 and 180 cells: multiples of
    a 60-cell (6 x 10) module, give or take a few cells. Cutting each run into consecutive
    blocks of :data:`ELPV_MODULE_CELLS` (``round(n / 60)`` blocks, the last one taking the
    remainder; a run of 72 or 48 cells is one module) gives exactly 44 modules, 18
    monocrystalline and 26 polycrystalline, the counts the data set's authors report. The
    boundaries are exact in the eight runs whose length is a multiple of 60 (or one module);
    in the 714-cell (12 modules) and 530-cell (9 modules) runs, 6 and 10 cells are missing
    somewhere, so a boundary there may be off by up to that many cells: a few cells of a
    module may be counted with its neighbour. Supporting evidence: the inferred module
    explains 38 % of the variance of the binary label (defective share per module from 0 %
    to 93 %), more than the same blocks shifted by half a module (33 %).

    Use it as ``groups`` of :func:`~captum_topk.transfer.split.train_val_test_split` so
    that the cells of one panel never sit in two splits.

    Returns:
        numpy.ndarray: ``(2624,)`` int64 module index in ``[0, 44)``, in the order of
        :func:`elpv_dataset`.

    Raises:
        FileNotFoundError: when the package is not installed (with the pip command).

    Example::

        >>> modules = elpv_modules()
        >>> len(set(modules.tolist())), modules[:3]     # 44, array([0, 0, 0])
    """
    kinds = [kind for _rel, _prob, kind in _read_labels(_labels_csv())]
    out = np.empty(len(kinds), dtype=np.int64)
    module, start = 0, 0
    while start < len(kinds):
        end = start
        while end < len(kinds) and kinds[end] == kinds[start]:
            end += 1
        n = end - start
        blocks = max(1, int(round(n / ELPV_MODULE_CELLS)))
        within = np.minimum(np.arange(n) // ELPV_MODULE_CELLS, blocks - 1)
        out[start:end] = module + within
        module += blocks
        start = end
    return out


def elpv_dataset(
    transform: Optional[Callable] = None, task: str = "binary"
) -> ImageDataset:
    r"""The 2,624 ELPV cells as an :class:`~captum_topk.data.ImageDataset`.

    Items are ``(transform(rgb_pil), label, id)``; the greyscale cells are converted to RGB
    (three equal channels) so that ImageNet models take them. Ids are the file names
    (``"cell0001.png"``), in the order of the package's ``labels.csv``.

    Args:
        transform (Callable, optional): applied to each RGB PIL image.
        task (str): ``"binary"`` (functional vs defective, p >= 0.5) or ``"4class"``.

    Returns:
        ImageDataset: with ``classes`` as listed in :data:`ELPV_TASKS`.

    Raises:
        FileNotFoundError: when the package is not installed (with the pip command).
        ValueError: for an unknown ``task``.

    Example::

        >>> ds = elpv_dataset(transform=make_transform(112, resize_size=112))
        >>> image, label, image_id = ds[0]      # (3, 112, 112), 1, "cell0001.png"
    """
    if task not in ELPV_TASKS:
        raise ValueError(f"Unknown ELPV task {task!r}; choose from {', '.join(ELPV_TASKS)}.")
    labels_csv = _labels_csv()
    rows = _read_labels(labels_csv)
    folder = os.path.dirname(labels_csv)
    sources, ids, labels = [], [], []
    for rel, prob, _kind in rows:
        sources.append(os.path.join(folder, *rel.split("/")))
        ids.append(os.path.basename(rel))
        if task == "binary":
            labels.append(int(prob >= 0.5))
        else:
            labels.append(int(round(prob * 3)))
    return ImageDataset(sources, ids, labels, ELPV_TASKS[task], transform,
                        name=f"ELPV solar cells ({task})")
