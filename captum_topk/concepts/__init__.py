r"""Concepts: directions in a layer's activation space, as units beside the channels.

:class:`~.base.Concepts` (the directions, their encoding, save / load) depends on torch only;
learning (:mod:`.learn`: NMF, TopK sparse autoencoder, PCA), importance and heatmaps
(:mod:`.importance`) and matching (:mod:`.compare`) load on first use. See ``docs/concepts.md``.
"""

import importlib

from .base import METHODS, Concepts

_LAZY = {
    "learn_concepts": ("learn", "learn_concepts"),
    "match_concepts": ("compare", "match_concepts"),
    "ConceptMatching": ("compare", "ConceptMatching"),
    "TopKSAE": ("sae", "TopKSAE"),
}

__all__ = ["Concepts", "METHODS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
