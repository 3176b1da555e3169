r"""The ImageNet (ILSVRC2012) validation images of a flat folder, with optional labels.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from .dataset import ImageDataset
from .images import _validate, _warn_skipped
from .limits import DEFAULT_LIMITS, ImageLimits



_VAL_RE = re.compile(r"ILSVRC2012_val_(\d+)\.jpe?g", re.IGNORECASE)


def _devkit_to_torchvision(meta_file: str) -> Dict[int, int]:
    r"""Map devkit ``ILSVRC2012_ID`` (1-based) to torchvision's class index, from meta.mat."""
    from scipy import io as sio

    synsets = sio.loadmat(meta_file, squeeze_me=True)["synsets"]
    leaves = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets
              if int(s["num_children"]) == 0]
    order = {w: i for i, w in enumerate(sorted(w for _, w in leaves))}
    return {i: order[w] for i, w in leaves}


def _read_val_labels(
    labels_file: str, numbers: Sequence[int], one_based: bool
) -> Tuple[Dict[int, int], bool]:
    r"""Parse a labels file into ``{image number: raw label}``; returns (map, two_column)."""
    with open(labels_file, "r", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    out: Dict[int, int] = {}
    two_column = bool(lines) and len(lines[0].split()) >= 2
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        try:
            if two_column:
                m = _VAL_RE.search(parts[0])
                if not m:
                    raise ValueError(f"no ILSVRC2012_val_N file name in {parts[0]!r}")
                out[int(m.group(1))] = int(parts[1])
            else:
                out[lineno] = int(parts[0])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{labels_file}:{lineno}: cannot parse {line!r} ({exc})") from exc
    missing = [n for n in numbers if n not in out]
    if missing:
        raise ValueError(
            f"{labels_file} has no label for {len(missing)} of the {len(numbers)} images "
            f"(first: ILSVRC2012_val_{missing[0]:08d}); it has {len(lines)} lines."
        )
    low = 1 if one_based else 0
    bad = [v for v in out.values() if v < low]
    if bad:
        raise ValueError(
            f"{labels_file} has label {bad[0]} but one_based={one_based} expects labels >= {low}."
        )
    return out, two_column


def imagenet_val(
    root: str,
    labels_file: Optional[str] = None,
    transform: Optional[Callable] = None,
    *,
    one_based: bool = True,
    meta_file: Optional[str] = None,
    validate: str = "full",
    limits: ImageLimits = DEFAULT_LIMITS,
) -> ImageDataset:
    r"""The ImageNet (ILSVRC2012) validation images of a flat folder.

    Images are the files named ``ILSVRC2012_val_NNNNNNNN.JPEG`` directly in ``root``,
    sorted by their number; the id is the file name without extension. A subset of the
    50,000 works (labels are matched by number, not position).

    Labels (optional) come from ``labels_file``, either one integer per line (line ``N`` is
    image ``N``, the devkit's ``ILSVRC2012_validation_ground_truth.txt`` format) or
    ``"ILSVRC2012_val_NNNNNNNN.JPEG label"`` per line (Caffe's ``val.txt``).

    Beware the class order. The devkit ground truth holds ``ILSVRC2012_ID`` values, 1-based,
    in the devkit's own synset order, which is *not* torchvision's (sorted WordNet id)
    order that pretrained torchvision models output. So:

    * ``one_based=False``: the labels are already 0-based torchvision indices (for
      example Caffe's ``val.txt`` or a file you wrote from torchvision's ``ImageNet``);
      ``classes`` is the 1000 ImageNet names.
    * ``one_based=True`` (default, devkit file) with ``meta_file`` (the devkit's
      ``data/meta.mat``): labels are remapped to torchvision's order; ``classes`` is set.
    * ``one_based=True`` without ``meta_file``: labels are ``ILSVRC2012_ID - 1`` in the
      devkit order, ``classes`` is None, and a warning says they do not match
      torchvision models.

    Args:
        root (str): folder holding the validation JPEGs.
        labels_file (str, optional): ground-truth file as above.
        transform (Callable, optional): applied to each RGB PIL image in ``__getitem__``.
        one_based (bool): labels in the file start at 1 (devkit) rather than 0.
        meta_file (str, optional): devkit ``meta.mat``, to remap devkit ids (needs scipy).
        validate (str): ``"full"`` (decode each image once: minutes for all 50,000),
            ``"header"`` or ``"none"``.
        limits (ImageLimits): largest image decoded, checked from the header before
            decoding, at construction and at every load (``docs/robustness.md``).

    Returns:
        ImageDataset
    """
    from ..models.info import imagenet_categories

    if not os.path.isdir(root):
        raise NotADirectoryError(f"Not a directory: {root}")
    found = []
    for fn in os.listdir(root):
        m = _VAL_RE.fullmatch(fn)
        if m and os.path.isfile(os.path.join(root, fn)):
            found.append((int(m.group(1)), fn))
    found.sort()
    if not found:
        raise ValueError(f"No ILSVRC2012_val_*.JPEG files in {root}")
    numbers = [n for n, _ in found]
    labels_by_number: Dict[int, int] = {}
    classes: Optional[List[str]] = None
    if labels_file is not None:
        raw, _ = _read_val_labels(labels_file, numbers, one_based)
        if one_based and meta_file is not None:
            remap = _devkit_to_torchvision(meta_file)
            labels_by_number = {n: remap[v] for n, v in raw.items()}
            classes = imagenet_categories()
        elif one_based:
            labels_by_number = {n: v - 1 for n, v in raw.items()}
            warnings.warn(
                "imagenet_val: labels are devkit ILSVRC2012_IDs minus 1, which are not "
                "torchvision's class order; pass meta_file=<devkit>/data/meta.mat to remap "
                "them, or a 0-based torchvision-order file with one_based=False.",
                stacklevel=2,
            )
        else:
            labels_by_number = dict(raw)
            classes = imagenet_categories()
    paths = [os.path.join(root, fn) for _, fn in found]
    reasons = _validate(paths, validate, limits)
    kept = [(n, fn, p) for (n, fn), p, r in zip(found, paths, reasons) if r is None]
    skipped = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    _warn_skipped(f"imagenet_val({root!r})", skipped, len(paths))
    return ImageDataset(
        sources=[p for _, _, p in kept],
        ids=[os.path.splitext(fn)[0] for _, fn, _ in kept],
        labels=[labels_by_number.get(n, -1) for n, _, _ in kept],
        classes=classes, transform=transform, skipped=skipped, name=f"ImageNet val {root}",
        limits=limits,
    )
