r"""Concept directions mined beside the channels: a source that adds, for each set of concepts,
a result layer ``"<layer>:<name>"`` (e.g. ``"features.14:nmf16"``) holding its encoding.

The core takes any object that follows :class:`ConceptLike` (duck typing; the project's own is
:class:`captum_topk.concepts.Concepts`, which sits above the core): ``.layer`` (the mined layer
it lives in, a result layer name such as ``"features.14"`` or ``"blocks.3[prefix]"``), ``.name``
(no ``":"``), ``.n_concepts`` and ``.encode(acts)`` mapping the layer's canonical
``(N, C, h, w)`` / ``(N, C)`` activation to ``(N, K, h, w)`` / ``(N, K)``.

The concept layer's :class:`~.base.LayerInfo` is its base layer's (grid, receptive fields, box
kind, input size) with ``K`` "channels" and the canonical layout (``"NCHW"`` / ``"NC"``): records,
patches, activation maps, statistics, merging and saving treat it like any layer. The encoding
runs on the activations of the same forward pass, after the base layer's are handed over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, List, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from .base import ActivationSource, LayerInfo
from .layouts import base_layer

__all__ = ["ConceptLike", "ConceptSource", "concept_layer", "concept_digest", "describe_concepts"]

#: Separates a concept layer's base layer from the concepts' name: ``"features.14:nmf16"``.
SEPARATOR = ":"


@runtime_checkable
class ConceptLike(Protocol):
    r"""What the miner needs of a set of concepts (see the module docstring)."""

    layer: str
    name: str
    n_concepts: int

    def encode(self, acts: Tensor) -> Tensor:
        ...


def concept_layer(concepts: Any) -> str:
    r"""The result layer name of a set of concepts: ``f"{concepts.layer}:{concepts.name}"``."""
    return f"{concepts.layer}{SEPARATOR}{concepts.name}"


def concept_digest(concepts: Any) -> str:
    r"""SHA-1 (12 hex digits) of what the encoding depends on: the ``state_dict`` when the object
    has one (directions and encoder tensors, method, name), else the directions."""
    h = hashlib.sha1()
    state = concepts.state_dict() if hasattr(concepts, "state_dict") else {"directions": concepts.directions}

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value):
                h.update(str(key).encode())
                feed(value[key])
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())

    feed(state)
    return h.hexdigest()[:12]


def describe_concepts(concepts: Any) -> Dict[str, Any]:
    r"""JSON-able facts of a set of concepts (recorded in the result's ``layer_info`` and metadata)."""
    return {"layer": str(concepts.layer), "name": str(concepts.name), "result_layer": concept_layer(concepts),
            "n_concepts": int(concepts.n_concepts), "method": str(getattr(concepts, "method", "?")),
            "digest": concept_digest(concepts)}


def _check(concepts: Sequence[Any], names: Sequence[str]) -> List[Any]:
    out, seen = [], set()
    for c in concepts:
        if not isinstance(c, ConceptLike) or not isinstance(getattr(c, "layer", None), str):
            raise TypeError("concepts= takes objects with .layer (str), .name, .n_concepts and .encode(acts), "
                            f"e.g. captum_topk.Concepts; got {type(c).__name__}.")
        if SEPARATOR in str(c.name) or not str(c.name):
            raise ValueError(f"A concepts' name must be non-empty without {SEPARATOR!r}, got {c.name!r}.")
        if base_layer(c.layer) not in names:
            raise ValueError(f"The concepts {c.name!r} live in layer {c.layer!r}, which is not mined "
                             f"({list(names)}): add it to layer=[...].")
        name = concept_layer(c)
        if name in seen or name in names:
            raise ValueError(f"Two result layers would be called {name!r}: give the concepts distinct names "
                             "(Concepts(..., name=...)).")
        seen.add(name)
        out.append(c)
    return out


class ConceptSource(ActivationSource):
    r"""A source that hands over its base source's activations plus, for every set of concepts,
    their encoding as a layer of its own (``"<layer>:<name>"``).

    Args:
        base (ActivationSource): the model's source (PyTorch hooks, ONNX Runtime, ...).
        concepts (sequence of ConceptLike): the concepts, each of a layer ``base`` mines.

    Attributes:
        names (list of str): the base source's layers (what runs through the model).
        concept_layers (dict): concept layer name -> its base layer name.

    Other attributes (``modules``, ``provider``, ...) are the base source's.

    Example::
        >>> source = ConceptSource(TorchSource(model, ["features.14"]), [nmf])
        >>> source(images)["features.14:nmf16"].shape
        torch.Size([8, 16, 7, 7])
    """

    def __init__(self, base: ActivationSource, concepts: Sequence[Any]) -> None:
        self.base = base
        self.names = list(base.names)
        self.concepts = _check(list(concepts), self.names)
        self.concept_layers: Dict[str, str] = {concept_layer(c): c.layer for c in self.concepts}

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "__setstate__", "__getstate__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def progress(self) -> Any:
        return getattr(self.base, "progress", None)

    @progress.setter
    def progress(self, value: Any) -> None:
        self.base.progress = value

    def __call__(self, images: Tensor, additional_forward_args: Any = None) -> Dict[str, Tensor]:
        acts = self.base(images, additional_forward_args)
        for c in self.concepts:
            if c.layer not in acts:
                raise ValueError(f"The concepts {c.name!r} live in {c.layer!r}, which this model's source does "
                                 f"not hand over (it gives {sorted(acts)}).")
            acts[concept_layer(c)] = self._encode(c, acts[c.layer])
        return acts

    @staticmethod
    def _encode(c: Any, act: Tensor) -> Tensor:
        with torch.no_grad():
            out = c.encode(act)
        want = (act.shape[0], int(c.n_concepts), *act.shape[2:])
        if tuple(out.shape) != want:
            raise ValueError(f"{type(c).__name__}.encode gave {tuple(out.shape)} for activations "
                             f"{tuple(act.shape)} of {c.layer!r}; expected {want}.")
        return out

    def layer_infos(self, images: Tensor) -> Dict[str, LayerInfo]:
        infos = dict(self.base.layer_infos(images))
        for c in self.concepts:
            if c.layer not in infos:
                raise ValueError(f"The concepts {c.name!r} live in {c.layer!r}, which this model's source does "
                                 f"not mine (it mines {sorted(infos)}).")
            infos[concept_layer(c)] = concept_info(infos[c.layer], c)
        return infos

    def attribute(self, inputs: Any, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False) -> Any:
        return self.base.attribute(inputs, additional_forward_args, attribute_to_layer_input)

    def check_images(self, images: Tensor) -> None:
        self.base.check_images(images)

    def describe(self) -> Dict[str, Any]:
        return {**self.base.describe(), "concepts": [describe_concepts(c) for c in self.concepts]}


def concept_info(info: LayerInfo, concepts: Any) -> LayerInfo:
    r"""The :class:`LayerInfo` of a concept layer: its base layer's grid, fields and box kind, ``K``
    channels, canonical layout."""
    k = int(concepts.n_concepts)
    spatial = info.spatial
    return dataclasses.replace(info, name=concept_layer(concepts), layout="NCHW" if spatial else "NC", channels=k,
                               raw_shape=(k, *info.grid) if spatial else (k,), prefix_tokens=0)


def find_concepts(candidates: Optional[Sequence[Any]], layer: str, recorded: Optional[Dict[str, Any]]) -> Any:
    r"""The set among ``candidates`` whose result layer is ``layer`` (and whose digest is the
    recorded one, when recorded), else ``ValueError`` saying what to pass."""
    for c in candidates or ():
        if concept_layer(c) == layer:
            if recorded and recorded.get("digest") and concept_digest(c) != recorded["digest"]:
                raise ValueError(f"The concepts given for {layer!r} are not those it was mined with "
                                 "(other directions or encoding).")
            return c
    raise ValueError(f"{layer!r} is a concept layer: pass the concepts it was mined with (concepts=[...], "
                     "e.g. Concepts.load(path)), or the miner (model=miner).")
