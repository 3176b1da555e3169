r"""captum-topk: Zeiler & Fergus dataset top-k patches as a Captum layer method.

Example::

    >>> from captum_topk import LayerTopKPatches
    >>> miner = LayerTopKPatches(model, layer=["features.3", model.features[7]], k=9)
    >>> result = miner.mine(loader)
    >>> result.records("features.3", 12)[0].box
"""

from ._layers import minable_layers as list_layers
from ._version import __version__
from .filters import filter_grid
from .layer_topk import LayerTopKPatches
from .receptive_field import ReceptiveField, receptive_field, receptive_fields
from .result import PatchRecord, TopKResult

__all__ = [
    "LayerTopKPatches",
    "TopKResult",
    "PatchRecord",
    "ReceptiveField",
    "receptive_field",
    "receptive_fields",
    "filter_grid",
    "list_layers",
    "__version__",
]
