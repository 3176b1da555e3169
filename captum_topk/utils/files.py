r"""Atomic writes: a temp file in the destination folder, fsync, then ``os.replace``.

A reader (or a crash) never sees a half-written file: it sees the old one or the new one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Tuple, Union

import torch

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    r"""Open a temp file beside ``path``; on clean exit it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    r"""``torch.save`` atomically (load it back with ``torch.load(weights_only=True)``)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: PathLike, text: str) -> None:
    r"""Write text atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


_DIGESTS: dict = {}


def file_digest(path: PathLike) -> str:
    r"""SHA-1 of a file's bytes (e.g. a checkpoint), remembered per (path, size, mtime) in this
    process. Run folders record it so that a checkpoint replaced under the same name is
    noticed: a finished run is not reused for it and ``--resume`` refuses to mix the two.

    Args:
        path (str or PathLike): the file.

    Returns:
        str: 40 hex digits.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def walk(root: PathLike, max_depth: Optional[int] = None) -> Iterator[Tuple[Path, List[str]]]:
    r"""``os.walk`` of ``root`` without following symlinked folders, skipping hidden entries,
    at most ``max_depth`` folders deep (None: no limit), in sorted order.

    Yields:
        (Path, list of str): a folder and the names of the files in it.
    """
    root = Path(root)
    if not root.is_dir():
        return
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = len(Path(dirpath).parts) - base
        keep = max_depth is None or depth < max_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if keep else []
        yield Path(dirpath), sorted(f for f in filenames if not f.startswith("."))
