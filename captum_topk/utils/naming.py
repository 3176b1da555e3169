r"""Names safe for files and folders."""

from __future__ import annotations

import re

__all__ = ["slug"]


def slug(text: str, keep: str = "", max_len: int = 64, sep: str = "_") -> str:
    r"""``text`` reduced to letters, digits and the characters of ``keep``; every other run of
    characters becomes ``sep``.

    Args:
        text (str): any name (a layer, a model, a file).
        keep (str): further characters allowed as they are (e.g. ``"_.-"``).
        max_len (int): longest result.
        sep (str): what replaces a run of other characters. Default ``"_"``.
    Returns:
        str: never empty (``"x"`` for a name with no usable character).
    Example::
        >>> slug("features.7"), slug("mobilenet_v2-imagenet", keep="_.-")
        ('features_7', 'mobilenet_v2-imagenet')
    """
    out = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", sep, str(text)).strip("_.-")[:max_len]
    return out or "x"
