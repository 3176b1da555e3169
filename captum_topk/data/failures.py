r"""Images that could not be loaded: why (one line a user can act on) and how a loader reports them.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple, Optional

from PIL import Image, UnidentifiedImageError

from .limits import ImageRejected

__all__ = ["SkippedImage", "LoadFailure", "describe_failure"]

# What Pillow's decoders raise on bad data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class SkippedImage(NamedTuple):
    r"""An image a loader skipped while loading it (a batch's ``skipped`` entries).

    Attributes:
        source (str): the file (or ``"item <index>"`` when the dataset has no files).
        reason (str): why, e.g. ``"truncated or corrupt image (...)"``.
        index (int): its global index (the index it would have had in the top-k records;
            it stays unused).
        id (str or None): its image id, when the dataset has ids.
    """

    source: str
    reason: str
    index: int
    id: Optional[str] = None


class LoadFailure(NamedTuple):
    r"""What a dataset's ``__getitems__`` returns instead of an item that failed to load.

    :func:`~captum_topk.data.collate` drops these and lists them in the batch's ``skipped``.
    """

    source: str
    reason: str
    id: Optional[str] = None


def describe_failure(exc: BaseException, stage: str = "load") -> str:
    r"""The reason, as a dataset's ``skipped`` lists it, why loading an image raised ``exc``.

    Args:
        exc (BaseException): what reading, decoding or transforming the image raised.
        stage (str): ``"load"`` (opening, decoding, converting an image file to RGB),
            ``"transform"``, or ``"item"`` (an item of a dataset that is not an
            :class:`~.dataset.ImageDataset`: the failure is not known to be a decoding one).
    Returns:
        str: e.g. ``"file not found (deleted or moved since the dataset was built?)"``.
    """
    if isinstance(exc, MemoryError):
        where = {"transform": "in the transform", "load": "while decoding"}.get(stage, "while loading")
        return f"out of memory {where} (MemoryError{': ' + str(exc) if str(exc) else ''})"
    if stage == "transform":
        return f"transform failed ({type(exc).__name__}: {exc})"
    if isinstance(exc, ImageRejected):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "file not found (deleted or moved since the dataset was built?)"
    if isinstance(exc, IsADirectoryError):
        return "not a regular file (a directory)"
    if isinstance(exc, PermissionError):
        return f"unreadable file ({exc.strerror or exc})"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (PIL cannot identify the format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large ({exc})"
    if stage == "load" and isinstance(exc, _DECODE_ERRORS):
        return f"truncated or corrupt image ({exc})"
    return f"cannot load image ({type(exc).__name__}: {exc})"  # unexpected: name the type
