r"""Public names of a package loaded on first use (PEP 562), so that importing the package runs
none of its modules."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, List, Mapping, Tuple


def lazy_exports(package: str, names: Mapping[str, Tuple[str, str]]
                 ) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    r"""The module-level ``__getattr__`` and ``__dir__`` of a package with lazy public names.

    Args:
        package (str): the package's ``__name__``.
        names (mapping of str to (str, str)): public name -> (module relative to the package,
            attribute of that module).

    Returns:
        (``__getattr__``, ``__dir__``): assign both at the package's top level. A name is
        imported on first access and then kept in the package's namespace.

    Example::

        >>> _LAZY = {"TopKState": (".topk", "TopKState")}
        >>> __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = names[name]
        value = getattr(importlib.import_module(module, package), attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
