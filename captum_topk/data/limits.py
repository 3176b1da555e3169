r"""Size limits checked from an image file's header, before any pixel is decoded.

A file's header says how large the image is; decoding it, converting it to RGB and resizing
it allocate memory in proportion. :class:`ImageLimits` bounds both ends:

* ``max_pixels`` bounds the decoded image (``width * height``). The default is Pillow's own
  ``Image.MAX_IMAGE_PIXELS`` default (89,478,485 pixels, 0.25 GiB as 8-bit RGB): Pillow warns
  above it and refuses twice as much; here such an image is skipped (a JPEG is decoded at
  1/2, 1/4 or 1/8 scale instead when that brings it under the limit).
* ``max_aspect_ratio`` bounds ``long side / short side``. A transform that resizes the shorter
  side to ``s`` pixels (every model's preprocessing, :func:`~captum_topk.models.make_transform`)
  makes an image of ``s * s * ratio`` pixels: a 1 x 40,000 PNG of 120 KB would become
  256 x 10,240,000 (23 GiB as RGB). With the default ratio of 100 it is at most
  ``100 * s**2`` pixels (19 MiB as RGB for ``s = 256``).

Checked where: at dataset construction (``validate="full"`` and ``"header"``) and again each
time an image is loaded (a file may change after the dataset was built).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

__all__ = ["ImageLimits", "DEFAULT_LIMITS", "ImageRejected", "LOAD_BYTES_PER_PIXEL",
           "LOAD_OVERHEAD_BYTES"]


#: Peak memory of loading one image (decode, EXIF rotation, conversion to RGB, the model's
#: transform), in bytes per pixel of the image: the worst case measured over the formats and
#: modes Pillow decodes (``benchmarks/image_memory.py``: RGB JPEG / PNG / BMP 4, CMYK JPEG 8,
#: RGBA PNG 8, 16-bit PNG 9, palette PNG with transparency 9, WebP 16, since Pillow decodes
#: WebP through an RGBA buffer).
LOAD_BYTES_PER_PIXEL: int = 16

#: What loading the first image adds to a process besides the image itself (lazy
#: initialisation of the decoders, of torch's resize kernels...): under 20 MiB measured.
LOAD_OVERHEAD_BYTES: int = 64 * 2 ** 20


class ImageRejected(ValueError):
    r"""An image whose header exceeds an :class:`ImageLimits`; the message is the reason."""


@dataclass(frozen=True)
class ImageLimits:
    r"""Largest image a dataset decodes, checked from the file's header before decoding.

    Args:
        max_pixels (int, optional): most ``width * height`` pixels of a decoded image; None:
            no limit of ours (Pillow's ``Image.MAX_IMAGE_PIXELS`` still applies). Default
            89,478,485 (Pillow's default; 0.25 GiB as RGB).
        max_aspect_ratio (float, optional): most ``long side / short side``; None: no limit.
            Default 100.

    Example::

        >>> limits = ImageLimits(max_pixels=4_000_000)
        >>> limits.check((1, 40_000))
        'aspect ratio 40000:1 exceeds the limit 100:1 (1 x 40000 pixels)'
        >>> limits.check((4000, 3000)) is None
        True
    """

    max_pixels: Optional[int] = 89_478_485
    max_aspect_ratio: Optional[float] = 100.0

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 or None, got {self.max_pixels}")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be >= 1 or None, got {self.max_aspect_ratio}")

    def pixel_reason(self, size: Tuple[int, int]) -> Optional[str]:
        r"""Why an image of ``size = (width, height)`` has too many pixels, or None."""
        w, h = int(size[0]), int(size[1])
        if self.max_pixels is not None and w * h > self.max_pixels:
            return (f"image too large: {w} x {h} = {w * h / 1e6:.1f} M pixels exceeds the limit "
                    f"of {self.max_pixels / 1e6:.1f} M pixels (max_pixels)")
        return None

    def aspect_reason(self, size: Tuple[int, int]) -> Optional[str]:
        r"""Why an image of ``size = (width, height)`` is too elongated (or empty), or None."""
        w, h = int(size[0]), int(size[1])
        if w < 1 or h < 1:
            return f"image has no pixels ({w} x {h})"
        ratio = max(w, h) / min(w, h)
        if self.max_aspect_ratio is not None and ratio > self.max_aspect_ratio:
            return (f"aspect ratio {ratio:.6g}:1 exceeds the limit {self.max_aspect_ratio:g}:1 "
                    f"({w} x {h} pixels)")
        return None

    def check(self, size: Tuple[int, int]) -> Optional[str]:
        r"""Why an image of ``size = (width, height)`` may not be decoded, or None.

        Returns:
            str or None: the reason (as listed in a dataset's ``skipped``).
        """
        return self.aspect_reason(size) or self.pixel_reason(size)

    @property
    def load_bytes(self) -> Optional[int]:
        r"""Bound on the memory a process takes to load one image within these limits, in
        bytes: ``LOAD_BYTES_PER_PIXEL * max_pixels + LOAD_OVERHEAD_BYTES`` (1.4 GiB for the
        default limits); None without ``max_pixels``. A DataLoader with ``workers`` worker
        processes loads ``workers`` images at once (the main process none)."""
        if self.max_pixels is None:
            return None
        return LOAD_BYTES_PER_PIXEL * self.max_pixels + LOAD_OVERHEAD_BYTES


DEFAULT_LIMITS = ImageLimits()


class _PixelBudget:
    r"""At most ``total`` pixels decoded at once by the validation threads.

    An image larger than ``total`` waits until it is alone; images are never refused here.
    """

    def __init__(self, total: Optional[int]) -> None:
        self.total = total
        self._free = total or 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if self.total is None:
            yield
            return
        need = min(int(pixels), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= need)
            self._free -= need
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()
