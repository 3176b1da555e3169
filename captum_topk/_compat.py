r"""Old import paths kept working: ``captum_topk.result`` is ``captum_topk.core.result``, etc.

The first version had 25 flat modules; users and notebooks import some of them by name. Each
old public module name maps to the module that now holds the same names; importing the old
name returns that module itself (one module object, no copy), loaded only when imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Optional

#: old module (under ``captum_topk.``) -> new module (same names).
ALIASES = {
    "result": "core.result",
    "layer_topk": "core.miner",
    "projections": "core.projections",
    "stats": "core.accumulators.stats",
    "cka": "core.accumulators.cka",
    "filters": "viz.filters",
    "plot": "viz.plot",
    "embed": "transfer.embed",
    "elpv": "data.elpv",
    "distributed": "runs.distributed",
}
_PACKAGE = __name__.rpartition(".")[0]


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # the real module, imported under its new name
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # already executed
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        prefix, _, rest = fullname.partition(".")
        if prefix != _PACKAGE or rest not in ALIASES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(f"{_PACKAGE}.{ALIASES[rest]}"))


def install() -> None:
    r"""Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
