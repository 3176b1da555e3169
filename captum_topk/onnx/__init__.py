r"""ONNX export with intermediate layer outputs, and top-k mining through ONNX Runtime.

Captum attributions need PyTorch autograd; dataset top-k mining only needs forward
activations, so it runs on any ONNX model:

* :func:`export` writes ``model.onnx`` whose outputs are the model output plus the requested
  layers (named after them) and a JSON sidecar ``model.onnx.json`` (preprocessing, exact
  receptive fields, measured ONNX Runtime / PyTorch agreement);
* :class:`OnnxTopKPatches` mines exported layers, or any intermediate tensor of a user's own
  ONNX model, through ONNX Runtime (CUDA, then CPU), with the
  :class:`~captum_topk.LayerTopKPatches` contract and the same :class:`~captum_topk.TopKResult`;
* :func:`describe_onnx_layers` / :func:`list_tensors` list a model's minable tensors with
  their shapes (ONNX shape inference).

Example::

    >>> from captum_topk.onnx import export, OnnxTopKPatches
    >>> exp = export(model, ["layer2", "layer3"], "onnx_models/resnet18.onnx", input_size=224)
    >>> result = OnnxTopKPatches(exp.path, ["layer2", "layer3"], k=9).mine(loader)

Inside this subpackage ``import onnx`` is an absolute import: it is the ``onnx`` package,
never ``captum_topk.onnx``. Note that ``captum_topk.onnx.export`` is the *function*; the module
that defines it is ``sys.modules["captum_topk.onnx.export"]``.
"""

from .export import OnnxExport, export
from .graph import InputSpec, TensorInfo, input_spec, list_tensors, load_onnx, nan_safe, resolve_tensors, with_outputs
from .miner import OnnxTopKPatches
from .runtime import OnnxForward, describe_onnx_layers, make_session, onnx_receptive_fields, resolve_providers
from .source import OnnxSource
from .sidecar import Sidecar, load_sidecar, sidecar_path

__all__ = [
    "export",
    "OnnxExport",
    "OnnxTopKPatches",
    "OnnxSource",
    "OnnxForward",
    "describe_onnx_layers",
    "onnx_receptive_fields",
    "list_tensors",
    "load_onnx",
    "input_spec",
    "InputSpec",
    "TensorInfo",
    "resolve_tensors",
    "with_outputs",
    "nan_safe",
    "make_session",
    "resolve_providers",
    "Sidecar",
    "load_sidecar",
    "sidecar_path",
]
