r"""Streaming accumulators: per-layer top-k (:mod:`.topk`), channel statistics (:mod:`.stats`),
paired channel moments (:mod:`.moments`), cross-correlation of two layers (:mod:`.crosscorr`)
and minibatch CKA (:mod:`.cka`), on the declared-state protocol of :mod:`.base` (how to write
one: its module docstring)."""

from .base import Accumulator, AccumulatorCollection
from .cka import MinibatchCKA, linear_cka
from .crosscorr import CrossCorrelation
from .moments import ChannelMoments
from .stats import ChannelStats, default_edges
from .topk import LayerState, TopKState

__all__ = ["Accumulator", "AccumulatorCollection", "TopKState", "LayerState", "ChannelStats", "default_edges", "ChannelMoments", "MinibatchCKA", "linear_cka", "CrossCorrelation"]
