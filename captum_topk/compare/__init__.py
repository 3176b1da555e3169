r"""Comparing two models over the same images: layer x layer CKA and channel-by-channel changes
(:mod:`.comparison`), the report (:mod:`.report`) and ``captum-topk compare`` (:mod:`.run`)."""

from ..core.accumulators.cka import MinibatchCKA, linear_cka
from ..core.accumulators.moments import ChannelMoments
from .comparison import ChannelChanges, Comparison, change_score, channel_weights, compare_models
from .report import save_report
from .run import compare_run

__all__ = ["ChannelMoments", "ChannelChanges", "Comparison", "channel_weights", "compare_models",
           "compare_run", "change_score", "save_report", "MinibatchCKA", "linear_cka"]
