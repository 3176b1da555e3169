r"""Comparing two models over the same images: layer x layer CKA and channel-by-channel changes
(:mod:`.comparison`), similarity measures with chance baselines (:mod:`.similarity`), units
matched across models (:mod:`.matching`), the report (:mod:`.report`) and
``captum-topk compare`` (:mod:`.run`)."""

from ..core.accumulators.cka import MinibatchCKA, linear_cka
from ..core.accumulators.crosscorr import CrossCorrelation
from ..core.accumulators.moments import ChannelMoments
from .comparison import ChannelChanges, Comparison, auto_pairs, change_score, channel_weights, compare_models
from .inputs import normalisation_map
from .matching import UnitMatching, match_layers, match_units
from .report import save_report
from .run import compare_run
from .similarity import (
    PWCCA,
    SVCCA,
    LinearCKA,
    Procrustes,
    SimilarityMatrix,
    SimilarityMeasure,
    SimilarityScore,
    chance_baseline,
    similarity,
    similarity_matrices,
)

__all__ = ["ChannelMoments", "ChannelChanges", "Comparison", "channel_weights", "compare_models",
           "compare_run", "change_score", "save_report", "MinibatchCKA", "linear_cka",
           "CrossCorrelation", "UnitMatching", "match_units", "match_layers", "auto_pairs",
           "normalisation_map", "SimilarityMeasure", "LinearCKA", "Procrustes", "SVCCA", "PWCCA",
           "SimilarityScore", "SimilarityMatrix", "similarity", "similarity_matrices",
           "chance_baseline"]
