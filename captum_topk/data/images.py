r"""Reading image files as 8-bit RGB ``PIL`` images, and checking that a file is a readable image.
"""

from __future__ import annotations

import gzip
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError



IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


_VALIDATE_MODES = ("full", "header", "none")


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
