r"""The core: activation sources, streaming accumulators, the mined result and the Captum facade.

The names load on first use: importing one module of the package runs no other."""

from ..utils.lazy import lazy_exports

# name -> (module, attribute): loaded on first access (PEP 562).
_LAZY = {
    "LayerTopKPatches": (".miner", "LayerTopKPatches"),
    "TopKResult": (".result", "TopKResult"),
    "PatchRecord": (".records", "PatchRecord"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
