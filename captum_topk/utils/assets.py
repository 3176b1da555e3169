r"""Locating real assets that installed packages ship, without importing those packages."""

from __future__ import annotations

import importlib.util
from typing import Optional


def package_dir(package: str) -> Optional[str]:
    r"""Directory of an installed package, found without importing it (None if absent).

    Data-only packages are installed with ``--no-deps`` (they pin ancient dependencies), so
    importing them may fail; their files are read from here instead.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]
