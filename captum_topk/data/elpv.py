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

from .dataset import ImageDataset
from ..utils.assets import package_dir

__all__ = ["ELPV_PIP", "ELPV_LICENSE", "elpv_available", "elpv_dataset", "ELPV_TASKS"]

ELPV_PIP = "elpv-dataset==1.0.0.post1"
ELPV_LICENSE = "CC BY-NC-SA 4.0 (do not redistribute)"
ELPV_TASKS = {
    "binary": ["functional", "defective"],
    "4class": ["p=0", "p=1/3", "p=2/3", "p=1"],
}


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
    root = package_dir("elpv_dataset")
    labels_csv = os.path.join(root, "data", "labels.csv") if root else ""
    if not root or not os.path.isfile(labels_csv):
        raise FileNotFoundError(
            f"The ELPV solar-cell data set is not installed. Install it with: "
            f"pip install --no-deps {ELPV_PIP}  (licence {ELPV_LICENSE})."
        )
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
