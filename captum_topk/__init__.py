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
from .projections import Neuron, Projections, symmetric_rgb
from .receptive_field import ReceptiveField, receptive_field, receptive_fields
from .result import PatchRecord, TopKResult
from .stats import ChannelStats
from .cka import MinibatchCKA, linear_cka
from .compare import Comparison, compare_models
from .elpv import elpv_dataset
from .embed import embed, load_embeddings
from .transfer import finetune, fit_linear_head, load_finetuned, stratified_split
from .dashboard_data import JobSpec, Roots, mine_job, open_run

__all__ = [
    "LayerTopKPatches",
    "TopKResult",
    "PatchRecord",
    "ReceptiveField",
    "receptive_field",
    "receptive_fields",
    "filter_grid",
    "list_layers",
    "ChannelStats",
    "Projections",
    "Neuron",
    "symmetric_rgb",
    "embed",
    "load_embeddings",
    "finetune",
    "fit_linear_head",
    "load_finetuned",
    "stratified_split",
    "elpv_dataset",
    "MinibatchCKA",
    "linear_cka",
    "compare_models",
    "Comparison",
    "OnnxTopKPatches",
    "export_onnx",
    "Roots",
    "JobSpec",
    "mine_job",
    "open_run",
    "__version__",
]

# ONNX names load lazily: importing onnx / onnxruntime costs about half a second.
_LAZY_ONNX = {"OnnxTopKPatches": "OnnxTopKPatches", "export_onnx": "export"}


def __getattr__(name: str):
    if name == "onnx" or name in _LAZY_ONNX:
        import importlib

        sub = importlib.import_module(".onnx", __name__)
        return sub if name == "onnx" else getattr(sub, _LAZY_ONNX[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
