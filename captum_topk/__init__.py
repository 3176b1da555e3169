r"""captum-topk: Zeiler & Fergus dataset top-k patches as a Captum layer method.

``import captum_topk`` loads the miner only (:class:`LayerTopKPatches`, with what it needs to
run). Every other public name (the result type, receptive fields, filter tiles, comparisons,
transfer learning, ONNX, the dashboard's library side) is imported on first use, so that no
heavy dependency (torchvision, onnxruntime, streamlit, plotly, pandas) is loaded before it is
needed. See ``docs/architecture.md``.

Example::

    >>> from captum_topk import LayerTopKPatches
    >>> miner = LayerTopKPatches(model, layer=["features.3", model.features[7]], k=9)
    >>> result = miner.mine(loader)
    >>> result.records("features.3", 12)[0].box
"""

from ._version import __version__
from . import receptive_field as _receptive_field_package  # noqa: F401  (cheap: its names are lazy)
from .core.miner import LayerTopKPatches
from .utils.lazy import lazy_exports

# The public name ``receptive_field`` is the function of ``_LAZY``, not the subpackage that the
# import above bound here (once: a package is bound to its parent when first imported only).
del globals()["receptive_field"]

# name -> (module, attribute): loaded on first access (PEP 562).
_LAZY = {
    "TopKResult": (".core.result", "TopKResult"),
    "PatchRecord": (".core.records", "PatchRecord"),
    "ReceptiveField": (".receptive_field.field", "ReceptiveField"),
    "receptive_field": (".receptive_field.probe", "receptive_field"),
    "receptive_fields": (".receptive_field.probe", "receptive_fields"),
    "filter_grid": (".viz.filters", "filter_grid"),
    "list_layers": (".capture.hooks", "minable_layers"),
    "ChannelStats": (".core.accumulators.stats", "ChannelStats"),
    "Projections": (".core.projections", "Projections"),
    "Neuron": (".core.projections", "Neuron"),
    "symmetric_rgb": (".core.projections", "symmetric_rgb"),
    "MinibatchCKA": (".core.accumulators.cka", "MinibatchCKA"),
    "linear_cka": (".core.accumulators.cka", "linear_cka"),
    "compare_models": (".compare.comparison", "compare_models"),
    "Comparison": (".compare.comparison", "Comparison"),
    "elpv_dataset": (".data.elpv", "elpv_dataset"),
    "elpv_modules": (".data.elpv", "elpv_modules"),
    "embed": (".transfer.embed", "embed"),
    "load_embeddings": (".transfer.embed", "load_embeddings"),
    "finetune": (".transfer.finetune", "finetune"),
    "load_finetuned": (".transfer.finetune", "load_finetuned"),
    "fit_linear_head": (".transfer.linear", "fit_linear_head"),
    "stratified_split": (".transfer.split", "stratified_split"),
    "train_val_test_split": (".transfer.split", "train_val_test_split"),
    "OnnxTopKPatches": (".onnx", "OnnxTopKPatches"),
    "export_onnx": (".onnx", "export"),
    "Roots": (".dashboard.roots", "Roots"),
    "JobSpec": (".dashboard.spec", "JobSpec"),
    "mine_job": (".dashboard.jobs", "mine_job"),
    "LayerInfo": (".core.sources.base", "LayerInfo"),
    "TorchSource": (".core.sources.torch", "TorchSource"),
    "open_run": (".runs.folder", "open_run"),
    "visualize": (".featvis.render", "visualize"),
    "match_units": (".compare.matching", "match_units"),
    "RunSpec": (".runs.spec", "RunSpec"),
    "mine_run": (".runs.mine", "mine_run"),
    "Concepts": (".concepts.base", "Concepts"),
    "learn_concepts": (".concepts.learn", "learn_concepts"),
    "match_concepts": (".concepts.compare", "match_concepts"),
}

__all__ = ["LayerTopKPatches", *_LAZY, "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
