r"""Streaming accumulators: per-layer top-k (:mod:`.topk`), channel statistics (:mod:`.stats`),
paired channel moments (:mod:`.moments`) and minibatch CKA (:mod:`.cka`)."""

from .base import Accumulator, AccumulatorCollection
from .cka import MinibatchCKA, linear_cka
from .crosscorr import CrossCorrelation
from .moments import ChannelMoments
from .stats import ChannelStats, default_edges
from .topk import TopKState

__all__ = ["Accumulator", "AccumulatorCollection", "TopKState", "ChannelStats", "default_edges", "ChannelMoments", "MinibatchCKA", "linear_cka", "CrossCorrelation"]
