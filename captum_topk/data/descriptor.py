r"""The dataset a run mines (packaged photos, an ImageNet val folder or any image folder), the
JSON descriptor that reopens it, and its fingerprint."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .demo import demo_images
from .folder import image_folder
from .imagenet import imagenet_val
from .images import IMAGE_EXTENSIONS
from ..utils.files import PathLike, walk

__all__ = ["open_dataset", "reopen_dataset", "describe_data", "data_fingerprint"]


def describe_data(data: Optional[PathLike]) -> Dict[str, Any]:
    r"""The JSON descriptor of ``data`` without reading any image: ``{"kind": "demo"}``,
    ``{"kind": "imagenet_val", "root": ...}`` or ``{"kind": "folder", "root": ...}``.

    Raises:
        FileNotFoundError: a folder that does not exist.
    """
    if data is None or str(data) == "demo":
        return {"kind": "demo"}
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {root} does not exist (or is not a folder).")
    kind = "imagenet_val" if any(p.name.upper().startswith("ILSVRC2012_VAL_") for p in root.iterdir()) else "folder"
    return {"kind": kind, "root": str(root.resolve())}


def open_dataset(data: Optional[PathLike], transform: Optional[Callable], validate: str = "full"):
    r"""The dataset a run mines: packaged photos (``None``), an ImageNet val folder
    (``ILSVRC2012_val_*.JPEG`` files) or any image folder.

    Returns:
        (dataset, descriptor): ``descriptor`` is JSON-able and reopens the same dataset.
    """
    desc = describe_data(data)
    return reopen_dataset(desc, transform, validate=validate), desc


def reopen_dataset(desc: Dict[str, Any], transform: Optional[Callable], skipped: Sequence[Sequence[str]] = (),
                   validate: str = "full"):
    r"""The dataset of a descriptor. With ``validate="header"`` (reopening a finished run) no
    image is decoded again; the files skipped at mining time (``skipped``: ``(path, reason)``)
    are left out by path, and records find their image by id, so indices cannot shift."""
    kind = desc.get("kind")
    if kind == "demo":
        ds = demo_images(transform=transform, validate=validate)
    else:
        root = desc.get("root")
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(f"The run's image folder {root} is gone.")
        ds = (imagenet_val if kind == "imagenet_val" else image_folder)(root, transform=transform, validate=validate)
    bad = {str(s[0]) for s in skipped if s}
    if bad:
        ds = ds.subset([i for i, src in enumerate(ds.sources) if src not in bad])
    return ds


def _walk_images(root: str) -> Sequence[Tuple[str, str]]:
    return [((folder / f).relative_to(root).as_posix(), str(folder / f)) for folder, files in walk(root)
            for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]


def data_fingerprint(desc: Dict[str, Any]) -> str:
    r"""SHA-1 of the data's files, without reading them: sorted relative paths, sizes and
    modification times. A file added, removed, replaced or touched changes it.

    Args:
        desc (dict): a descriptor from :func:`describe_data`.
    Returns:
        str: 40 hex digits.
    Example::
        >>> data_fingerprint(describe_data("data/cells")) == data_fingerprint(describe_data("data/cells"))
        True
    """
    if desc.get("kind") == "demo":
        ds = demo_images(validate="none")
        files = sorted(zip(ds.ids, ds.sources))
    else:
        files = _walk_images(str(desc["root"]))
    h = hashlib.sha1()
    for rel, full in files:
        try:
            st = os.stat(full)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{rel}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
