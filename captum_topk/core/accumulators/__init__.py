r"""Streaming accumulators: per-layer top-k (:mod:`.topk`), channel statistics (:mod:`.stats`),
paired channel moments (:mod:`.moments`), cross-correlation of two layers (:mod:`.crosscorr`)
and minibatch CKA (:mod:`.cka`), on the declared-state protocol of :mod:`.base` (how to write
one: its module docstring).

The names load on first use: importing one module of the package runs no other."""

from ...utils.lazy import lazy_exports

# name -> (module, attribute): loaded on first access (PEP 562).
_LAZY = {
    "Accumulator": (".base", "Accumulator"),
    "AccumulatorCollection": (".base", "AccumulatorCollection"),
    "TopKState": (".topk", "TopKState"),
    "ChannelStats": (".stats", "ChannelStats"),
    "default_edges": (".stats", "default_edges"),
    "ChannelMoments": (".moments", "ChannelMoments"),
    "MinibatchCKA": (".cka", "MinibatchCKA"),
    "linear_cka": (".cka", "linear_cka"),
    "CrossCorrelation": (".crosscorr", "CrossCorrelation"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
