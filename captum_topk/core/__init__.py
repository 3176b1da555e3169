r"""The core: activation sources, streaming accumulators, the mined result and the Captum facade."""

from .miner import LayerTopKPatches
from .records import PatchRecord
from .result import TopKResult

__all__ = ["LayerTopKPatches", "TopKResult", "PatchRecord"]
