r"""Every image under a folder, recursively, in a stable order, with labels from sub-folders.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, List, Optional, Sequence, Tuple
from .images import IMAGE_EXTENSIONS, _validate, _warn_skipped
from .dataset import ImageDataset
from .limits import DEFAULT_LIMITS, ImageLimits



def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def _broken_link_reason(path: str, target: str) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link resolves to itself)"
    return f"broken symlink (to {target})"


def image_folder(
    root: str,
    transform: Optional[Callable] = None,
    *,
    classes_from_subfolders: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    validate: str = "full",
    limits: ImageLimits = DEFAULT_LIMITS,
) -> ImageDataset:
    r"""Every image under ``root``, recursively, in a stable order.

    Files are those whose extension is in ``extensions`` (case-insensitive; other files are
    ignored silently, as are hidden files and folders starting with ``"."``). They are
    sorted by their path relative to ``root``, which is also their id (``"cat/001.jpg"``).

    Classes: when ``classes_from_subfolders`` and ``root`` has first-level sub-folders
    holding images, ``classes`` is their sorted names and each image gets the index of
    the first-level folder it is under (files directly in ``root`` get ``-1``); otherwise
    ``classes`` is None and labels are ``-1``. Class indices are decided before validation,
    so a corrupt file never shifts them.

    Validation happens once, here, so that indices are stable for mining. With
    ``validate="full"`` (default) each image is opened, ``verify()``-ed and fully decoded
    once (a few ms per photo, in threads); ``"header"`` only runs ``verify()`` (fast, but
    misses truncated JPEG data, which then raises in ``__getitem__``); ``"none"`` checks
    nothing. Left out, with a ``warnings.warn`` summary and an entry in ``.skipped``:
    zero-byte files (``"empty file (0 bytes)"``), files PIL cannot identify
    (``"not an image ..."``), truncated or corrupt data (``"truncated or corrupt image ..."``),
    images over ``limits`` (``"image too large: ..."``, ``"aspect ratio 40000:1 exceeds the
    limit 100:1 ..."``: checked from the header, before decoding, with ``"full"`` and
    ``"header"``), FIFOs and other non-regular files (``"not a regular file ..."``, never
    opened), and symlinks resolving outside ``root`` (``"symlink resolves outside root ..."``)
    or dangling (``"broken symlink ..."``) or looping (``"symlink loop ..."``). Symlinks that stay inside ``root`` are
    kept; symlinked directories are never descended into (their targets inside ``root`` are listed anyway;
    those outside are reported in ``.skipped``).

    Conversion to RGB (grayscale, CMYK, palette, 16-bit, alpha): :func:`to_rgb`. Note that
    setting ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` elsewhere in the process makes
    PIL accept truncated files (filled with grey), so they would not be skipped.

    Args:
        root (str): the folder.
        transform (Callable, optional): applied to each RGB PIL image in ``__getitem__``.
        classes_from_subfolders (bool): derive classes from first-level sub-folders.
        extensions (sequence of str): file extensions to consider, with the dot.
        validate (str): ``"full"``, ``"header"`` or ``"none"``.
        limits (ImageLimits): largest image decoded (pixels, aspect ratio), checked from the
            header at construction and again at every load; see ``docs/robustness.md``.

    Images that fail later, when loaded (a file deleted or changed since, or anything
    ``validate`` did not catch), are skipped by the loaders (:func:`~.loader.make_loader`),
    never abort them.

    Returns:
        ImageDataset

    Raises:
        NotADirectoryError: if ``root`` is not a directory.
    """
    if not os.path.isdir(root):
        raise NotADirectoryError(f"Not a directory: {root}")
    root_real = os.path.realpath(root)
    exts = tuple(e.lower() for e in extensions)
    candidates: List[Tuple[str, str]] = []  # (relpath posix, abs path)
    skipped: List[Tuple[str, str]] = []
    n_dir_links = 0
    for dirpath, dirnames, filenames in os.walk(root_real, followlinks=False):
        keep_dirs = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith("."):
                continue
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not _within(target, root_real):
                    skipped.append((full, f"symlink resolves outside root (to {target})"))
                    n_dir_links += 1
                continue
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for fn in filenames:
            if fn.startswith(".") or not fn.lower().endswith(exts):
                continue
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root_real).replace(os.sep, "/")
            candidates.append((rel, full))
    candidates.sort(key=lambda c: c[0])

    usable: List[Tuple[str, str]] = []
    for rel, full in candidates:
        if os.path.islink(full):
            target = os.path.realpath(full)
            if not os.path.exists(target):
                skipped.append((full, _broken_link_reason(full, target)))
                continue
            if not _within(target, root_real):
                skipped.append((full, f"symlink resolves outside root (to {target})"))
                continue
        usable.append((rel, full))

    classes: Optional[List[str]] = None
    if classes_from_subfolders:
        tops = sorted({rel.split("/", 1)[0] for rel, _ in usable if "/" in rel})
        classes = tops or None
    index = {c: i for i, c in enumerate(classes or [])}

    reasons = _validate([full for _, full in usable], validate, limits)
    kept: List[Tuple[str, str]] = []
    for (rel, full), why in zip(usable, reasons):
        if why is None:
            kept.append((rel, full))
        else:
            skipped.append((full, why))
    skipped.sort(key=lambda s: s[0])
    _warn_skipped(f"image_folder({root!r})", skipped, len(candidates) + n_dir_links)
    labels = [index.get(rel.split("/", 1)[0], -1) if "/" in rel else -1 for rel, _ in kept]
    return ImageDataset(
        sources=[full for _, full in kept], ids=[rel for rel, _ in kept], labels=labels,
        classes=classes, transform=transform, skipped=skipped, name=f"folder {root}",
        limits=limits,
    )
