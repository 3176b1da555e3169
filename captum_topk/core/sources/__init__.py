r"""Activation sources (:mod:`.base`): the protocol and :class:`LayerInfo`; the PyTorch
hooks source (:mod:`.torch`); concept directions as layers of their own (:mod:`.concepts`). The
ONNX Runtime source lives in :mod:`captum_topk.onnx.source`.

The names load on first use: importing one module of the package runs no other."""

from ...utils.lazy import lazy_exports

# name -> (module, attribute): loaded on first access (PEP 562).
_LAZY = {
    "ActivationSource": (".base", "ActivationSource"),
    "MappedSource": (".mapped", "MappedSource"),
    "LayerInfo": (".base", "LayerInfo"),
    "LAYOUTS": (".base", "LAYOUTS"),
    "TorchSource": (".torch", "TorchSource"),
    "ConceptSource": (".concepts", "ConceptSource"),
    "ConceptLike": (".concepts", "ConceptLike"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
