r"""Activation sources (:mod:`.base`): the protocol and :class:`LayerInfo`; the PyTorch
hooks source (:mod:`.torch`); concept directions as layers of their own (:mod:`.concepts`). The ONNX Runtime source lives in :mod:`captum_topk.onnx.source`."""

from .base import LAYOUTS, ActivationSource, LayerInfo
from .concepts import ConceptLike, ConceptSource
from .mapped import MappedSource
from .torch import TorchSource

__all__ = ["ActivationSource", "MappedSource", "LayerInfo", "LAYOUTS", "TorchSource", "ConceptSource", "ConceptLike"]
