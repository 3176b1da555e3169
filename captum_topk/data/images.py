r"""Reading image files as 8-bit RGB ``PIL`` images, and checking that a file is a readable image
within :class:`~.limits.ImageLimits` (from its header, before decoding)."""

from __future__ import annotations

import functools
import gzip
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple
import numpy as np
from PIL import Image, ImageOps

from .failures import describe_failure
from .limits import DEFAULT_LIMITS, ImageLimits, ImageRejected, _PixelBudget


IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


_VALIDATE_MODES = ("full", "header", "none")


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    r"""Map a high-bit-depth single-channel array to 0..255 without clipping the range.

    Works on one copy of the pixels (4 bytes each), in place, so that converting a large
    16-bit or float image stays within :data:`~.limits.LOAD_BYTES_PER_PIXEL`."""
    if mode.startswith("I;16"):
        # 16-bit full scale: round(v * 255 / 65535) == round(v / 257) == (2v + 257) // 514
        # exactly (no ties: 257 is odd), in integers.
        a = arr.astype(np.uint32)
        a *= 2
        a += 257
        a //= 514
        return a.astype(np.uint8)
    lo = float(np.nanmin(arr)) if arr.size else 0.0
    hi_v = float(np.nanmax(arr)) if arr.size else 0.0
    a = arr.astype(np.float32)
    np.nan_to_num(a, copy=False)
    if mode == "F" and lo >= 0.0 and hi_v <= 1.0:
        a *= 255.0
    elif mode == "I" and lo >= 0 and hi_v <= 255:
        pass
    elif mode == "I" and lo >= 0 and hi_v <= 65535:
        a *= np.float32(255.0 / 65535.0)  # 16-bit data decoded into 32-bit ints (some TIFF / older PNG paths)
    else:  # unknown range: stretch min..max
        span = hi_v - lo
        if not span > 0:
            return np.zeros(a.shape, np.uint8)
        a -= np.float32(lo)
        a *= np.float32(255.0 / span)
    np.rint(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)  # 0x0112: Orientation
    except Exception:  # a broken EXIF block must not lose the image
        return 1


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

    An ``RGB`` image without EXIF rotation is returned as is (not copied).

    Args:
        img (PIL.Image.Image): any mode; for a multi-frame file, the current frame.
        background (tuple of int): RGB colour behind transparent pixels.

    Returns:
        PIL.Image.Image: mode ``RGB``.
    """
    if _exif_orientation(img) != 1:
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
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba, mask=rgba)  # the RGBA image is its own alpha mask
        return out
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _open_checked(path: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    r"""Open ``path`` (header only) and check it against ``limits`` before any decoding.

    A JPEG over ``limits.max_pixels`` is set to decode at 1/2, 1/4 or 1/8 scale
    (``Image.draft``) when that brings it under the limit.

    Raises:
        ImageRejected: not a regular file, empty, or over ``limits`` (the message says why).
        OSError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError: from Pillow.
    """
    st = os.stat(path)  # follows symlinks; never opens a FIFO or a device
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "an unknown kind of file")
        raise ImageRejected(f"not a regular file ({kind})")
    if st.st_size == 0:
        raise ImageRejected("empty file (0 bytes)")
    im = Image.open(path)
    try:
        reason = limits.aspect_reason(im.size)
        if reason is None and limits.pixel_reason(im.size) is not None:
            reason = limits.pixel_reason(im.size)
            if im.format == "JPEG" and _draft_under(im, limits.max_pixels):
                reason = None
        if reason is not None:
            raise ImageRejected(reason)
    except BaseException:
        im.close()
        raise
    return im


def _draft_under(im: Image.Image, max_pixels: Optional[int]) -> bool:
    r"""Ask libjpeg to decode ``im`` at the largest of 1/2, 1/4, 1/8 scale under ``max_pixels``."""
    if max_pixels is None:
        return True
    w, h = im.size
    for s in (2, 4, 8):
        if -(-w // s) * -(-h // s) <= max_pixels:
            im.draft(None, (max(1, w // s), max(1, h // s)))
            return im.size[0] * im.size[1] <= max_pixels
    return False


def _read_rgb(path: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    r"""The image at ``path`` as 8-bit RGB, its header checked against ``limits`` first.

    Raises:
        ImageRejected, OSError, MemoryError, ...: whatever opening or decoding raised.
    """
    im = _open_checked(path, limits)
    try:
        im.load()
        rgb = to_rgb(im)
        if rgb is im and getattr(im, "fp", None) is not None:  # multi-frame: keep no file open
            rgb = im.copy()
    except BaseException:
        im.close()
        raise
    if rgb is not im:
        im.close()
    return rgb


def _read_raw_mri(path: str) -> Image.Image:
    r"""matplotlib's ``s1045.ima.gz``: a raw 256x256 little-endian uint16 MRI slice."""
    with gzip.open(path, "rb") as f:
        arr = np.frombuffer(f.read(), dtype="<u2").reshape(256, 256)
    # Raw scanner units, not a 16-bit full-scale image: stretch min..max.
    return Image.fromarray(_scale_to_uint8(arr.astype(np.int64), "raw"), "L").convert("RGB")


def _inspect(path: str, limits: ImageLimits = DEFAULT_LIMITS) -> Tuple[Optional[str], int]:
    r"""Header-level check: ``(reason or None, pixels a full decode allocates)``."""
    try:
        im = _open_checked(path, limits)
    except Exception as exc:
        return describe_failure(exc), 0
    try:
        pixels = im.size[0] * im.size[1]
        im.verify()
    except Exception as exc:
        return describe_failure(exc), 0
    finally:
        im.close()
    return None, pixels


def _check_header(path: str, limits: ImageLimits = DEFAULT_LIMITS) -> Optional[str]:
    r"""Reason why ``path`` cannot be used, from its header only (``verify()``), or None."""
    return _inspect(path, limits)[0]


def _check_image(path: str, limits: ImageLimits = DEFAULT_LIMITS,
                 budget: Optional[_PixelBudget] = None) -> Optional[str]:
    r"""Reason why ``path`` cannot be used, or None. Decodes the image fully once."""
    reason, pixels = _inspect(path, limits)
    if reason is not None:
        return reason
    with (budget or _PixelBudget(None)).hold(pixels):
        try:
            _read_rgb(path, limits)
        except Exception as exc:  # OSError "image file is truncated", decoder errors...
            return describe_failure(exc)
    return None


def _validate(paths: Sequence[str], validate: str,
              limits: ImageLimits = DEFAULT_LIMITS) -> List[Optional[str]]:
    r"""Reason (or None) for each of ``paths``; decodes run in threads under a pixel budget
    (at most ``limits.max_pixels`` pixels decoded at once), so that validating a folder takes
    no more memory than loading its largest image."""
    if validate not in _VALIDATE_MODES:
        raise ValueError(f"validate must be one of {_VALIDATE_MODES}, got {validate!r}")
    if validate == "none" or not paths:
        return [None] * len(paths)
    if validate == "full":
        check = functools.partial(_check_image, limits=limits,
                                  budget=_PixelBudget(limits.max_pixels))
    else:
        check = functools.partial(_check_header, limits=limits)
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
