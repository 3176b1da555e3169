r"""Activation sources: where a miner's activations come from, and what shape they have.

A source runs a model on a batch of images and hands back, for every mined layer, its
activation in a **canonical layout**: ``(N, C, h, w)`` for a layer with a spatial grid,
``(N, C)`` for a vector. Once per input size (on the first batch of that size) it also
describes each layer with a :class:`LayerInfo` (in the spirit of timm's ``FeatureInfo``):
channels, grid, layout, stride and the box in input pixels of every grid position. Layout
problems are found there, on the first batch, never after a full pass.

Consumers (accumulators, the miner, comparisons) never re-derive shapes or layouts: they read
the source's :class:`LayerInfo`. Two implementations: :class:`~.torch.TorchSource` (PyTorch
forward hooks) and :class:`captum_topk.onnx.source.OnnxSource` (ONNX Runtime).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

from ...receptive_field.field import ReceptiveField

__all__ = ["LayerInfo", "ActivationSource", "LAYOUTS", "BOX_KINDS"]

#: Layouts of a layer's raw output: channels-first maps, channels-last maps, tokens, vectors.
LAYOUTS = ("NCHW", "NHWC", "NLC", "NC")
#: What a record's box is: the exact receptive field, a token's patch footprint, the whole image.
BOX_KINDS = ("receptive_field", "token", "image")


@dataclass(frozen=True)
class LayerInfo:
    r"""What a source knows about one mined layer at one input size.

    Attributes:
        name (str): the layer's name (the key of its activations).
        layout (str): layout of the raw output, one of :data:`LAYOUTS`; activations handed to
            consumers are always ``(N, C, h, w)`` (``"NCHW"``, ``"NHWC"``, ``"NLC"``) or
            ``(N, C)`` (``"NC"``).
        channels (int): ``C``.
        grid (tuple of int): ``(h, w)`` of the canonical map; ``(1, 1)`` for vectors.
        raw_shape (tuple of int): the raw output's shape without the batch dimension.
        input_size (tuple of int): ``(H, W)`` of the model input.
        field (ReceptiveField or None): the box of every grid position in input pixels (exact
            receptive fields, or token footprints); None for vectors (the whole image).
        box_kind (str): one of :data:`BOX_KINDS`.
        prefix_tokens (int): for ``"NLC"``: tokens before the patch grid (class, registers).
    """

    name: str
    layout: str
    channels: int
    grid: Tuple[int, int]
    raw_shape: Tuple[int, ...]
    input_size: Tuple[int, int]
    field: Optional[ReceptiveField] = None
    box_kind: str = "receptive_field"
    prefix_tokens: int = 0

    @property
    def spatial(self) -> bool:
        r"""Whether the layer has a grid of positions (records carry ``y``, ``x``)."""
        return self.layout != "NC"

    @property
    def stride(self) -> Optional[Tuple[int, int]]:
        r"""Input pixels between neighbouring grid positions (None for vectors)."""
        return self.field.stride if self.field is not None else None

    def describe(self) -> Dict[str, Any]:
        r"""The size-independent facts, JSON-able (stored in results)."""
        return {"layout": self.layout, "channels": self.channels, "raw_shape": list(self.raw_shape),
                "box_kind": self.box_kind, "prefix_tokens": self.prefix_tokens}


class ActivationSource(abc.ABC):
    r"""Runs a model on image batches and returns each mined layer's activation, canonical.

    Attributes:
        names (list of str): the mined layers' names, in order.
    """

    names: List[str]

    @abc.abstractmethod
    def __call__(self, images: Tensor, additional_forward_args: Any = None) -> Dict[str, Tensor]:
        r"""Activations of one batch.

        Args:
            images (Tensor): ``(N, C, H, W)`` model inputs.
            additional_forward_args (Any, optional): further arguments of the forward.
        Returns:
            dict: name -> ``(N, C_l, h, w)`` or ``(N, C_l)`` tensor, for every name of
            :meth:`layer_infos`.
        """

    @abc.abstractmethod
    def layer_infos(self, images: Tensor) -> Dict[str, LayerInfo]:
        r"""The :class:`LayerInfo` of every mined layer for inputs shaped like ``images``,
        computed on the first call for each input size and channel count, then cached.

        Raises:
            ValueError: a layer whose layout cannot be mined (the message says what to do).
        """

    @abc.abstractmethod
    def attribute(self, inputs: Any, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False) -> Any:
        r"""Raw layer activations, exactly as ``captum.attr.LayerActivation`` returns them."""

    def check_images(self, images: Tensor) -> None:
        r"""Raise a clear error when ``images`` cannot go through the model (default: no check)."""

    def describe(self) -> Dict[str, Any]:
        r"""JSON-able facts about the source for a result's metadata (backend, model, ...)."""
        return {}

