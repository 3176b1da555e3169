r"""captum-topk: Zeiler & Fergus dataset top-k patches as a Captum layer method.

``import captum_topk`` loads the core only (the miner, its result, receptive fields, filter
tiles). Everything else (comparisons, transfer learning, ONNX, the dashboard's library side)
is imported on first use of its name, so that no heavy dependency (onnxruntime, streamlit,
plotly, pandas, matplotlib) is loaded before it is needed. See ``docs/architecture.md``.

Example::

    >>> from captum_topk import LayerTopKPatches
    >>> miner = LayerTopKPatches(model, layer=["features.3", model.features[7]], k=9)
    >>> result = miner.mine(loader)
    >>> result.records("features.3", 12)[0].box
"""

import importlib

from . import _compat
from ._version import __version__
from .capture.hooks import minable_layers as list_layers
from .core.accumulators.stats import ChannelStats
from .core.miner import LayerTopKPatches
from .core.projections import Neuron, Projections, symmetric_rgb
from .core.records import PatchRecord
from .core.result import TopKResult
from .receptive_field import ReceptiveField, receptive_field, receptive_fields
from .viz.filters import filter_grid

_compat.install()

# name -> (module, attribute): loaded on first access (PEP 562).
_LAZY = {
    "MinibatchCKA": ("core.accumulators.cka", "MinibatchCKA"),
    "linear_cka": ("core.accumulators.cka", "linear_cka"),
    "compare_models": ("compare.comparison", "compare_models"),
    "Comparison": ("compare.comparison", "Comparison"),
    "elpv_dataset": ("data.elpv", "elpv_dataset"),
    "elpv_modules": ("data.elpv", "elpv_modules"),
    "embed": ("transfer.embed", "embed"),
    "load_embeddings": ("transfer.embed", "load_embeddings"),
    "finetune": ("transfer.finetune", "finetune"),
    "load_finetuned": ("transfer.finetune", "load_finetuned"),
    "fit_linear_head": ("transfer.linear", "fit_linear_head"),
    "stratified_split": ("transfer.split", "stratified_split"),
    "train_val_test_split": ("transfer.split", "train_val_test_split"),
    "OnnxTopKPatches": ("onnx", "OnnxTopKPatches"),
    "export_onnx": ("onnx", "export"),
    "Roots": ("dashboard.roots", "Roots"),
    "JobSpec": ("dashboard.spec", "JobSpec"),
    "mine_job": ("dashboard.jobs", "mine_job"),
    "LayerInfo": ("core.sources.base", "LayerInfo"),
    "TorchSource": ("core.sources.torch", "TorchSource"),
    "open_run": ("runs.folder", "open_run"),
    "visualize": ("featvis.render", "visualize"),
    "match_units": ("compare.matching", "match_units"),
    "RunSpec": ("runs.spec", "RunSpec"),
    "mine_run": ("runs.mine", "mine_run"),
    "Concepts": ("concepts.base", "Concepts"),
    "learn_concepts": ("concepts.learn", "learn_concepts"),
    "match_concepts": ("concepts.compare", "match_concepts"),
}

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
    *_LAZY,
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
