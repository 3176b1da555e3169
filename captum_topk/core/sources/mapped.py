r"""Sources whose engine hands back each layer's *raw* output (PyTorch hooks, ONNX Runtime):
the layouts, the :class:`~.base.LayerInfo` records and the canonical activations are built here,
once for every engine."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ...capture.tokens import token_layout
from .base import ActivationSource, LayerInfo
from .layouts import PREFIX_SUFFIX, canonical, check_batch, check_shape, layout_of, size_key, token_footprints, whole_image_field

__all__ = ["MappedSource"]


class MappedSource(ActivationSource):
    r"""An :class:`ActivationSource` whose engine returns each layer's *raw* output: the layouts,
    the :class:`LayerInfo` records and the canonical activations are built here, once for every
    engine (PyTorch hooks, ONNX Runtime).

    Subclasses set :attr:`names` and implement :meth:`_raw` (one raw output per name),
    :meth:`_wanted` (the layout asked for), :meth:`_fields` (receptive fields of the map layers)
    and :meth:`_token_options` (what settles a token layer's grid).
    """

    def _raw(self, images: Tensor, additional_forward_args: Any = None) -> List[Tensor]:
        raise NotImplementedError

    def _wanted(self, name: str, raw: Tensor) -> str:
        raise NotImplementedError

    def _fields(self, names: List[str], layouts: Dict[str, str], size: Tuple[int, int],
                channels: int) -> Dict[str, Any]:
        r"""Receptive fields of ``names`` (maps); ``"auto4"`` maps found channels-last are
        measured as such and listed under ``"__channels_last__"``."""
        raise NotImplementedError

    def _token_options(self, name: str) -> Tuple[Any, Optional[int], Optional[Tuple[int, int]]]:
        r"""``(model, prefix_tokens, token_grid)`` for :func:`~captum_topk.capture.tokens.token_layout`."""
        return None, None, None

    def _token_fields(self, tokens: Dict[str, Tuple[int, Tuple[int, int]]], size: Tuple[int, int],
                      channels: int) -> Dict[str, Any]:
        r"""Receptive fields of window-local token layers (``name -> (prefix, grid)``): a field
        where tokens see part of the image, None (or absent) where they see all of it (their
        patch footprint is their box)."""
        return {}

    def __call__(self, images: Tensor, additional_forward_args: Any = None) -> Dict[str, Tensor]:
        raws = self._raw(images, additional_forward_args)
        check_batch(self.names, raws, images)
        infos = self._infos_for(images, raws)
        out: Dict[str, Tensor] = {}
        for name, raw in zip(self.names, raws):
            check_shape(raw, infos[name])
            out.update(canonical(raw, infos[name], infos.get(name + PREFIX_SUFFIX)))
        return out

    def layer_infos(self, images: Tensor) -> Dict[str, LayerInfo]:
        key = size_key(images)
        if key not in self._info_cache():
            with torch.no_grad():
                raws = self._raw(images[:1])
                check_batch(self.names, raws, images[:1])
                self._infos_for(images[:1], raws)
        return self._info_cache()[key]

    def _info_cache(self) -> Dict[Tuple[int, int, int], Dict[str, LayerInfo]]:
        if not hasattr(self, "_infos"):
            self._infos: Dict[Tuple[int, int, int], Dict[str, LayerInfo]] = {}
        return self._infos

    def _infos_for(self, images: Tensor, raws: List[Tensor]) -> Dict[str, LayerInfo]:
        key = size_key(images)
        cache = self._info_cache()
        if key in cache:
            return cache[key]
        size, channels = (key[0], key[1]), key[2]
        layouts = {name: layout_of(name, raw, self._wanted(name, raw)) for name, raw in zip(self.names, raws)}
        fields = self._fields([n for n in self.names if layouts[n] in ("NCHW", "NHWC", "auto4")],
                              layouts, size, channels)
        tokens: Dict[str, Tuple[int, Tuple[int, int]]] = {}
        for name, raw in zip(self.names, raws):
            if layouts[name] == "NLC":
                model, prefix_tokens, token_grid = self._token_options(name)
                tokens[name] = token_layout(int(raw.shape[1]), size, model, prefix_tokens, token_grid, name)
        local = self._token_fields(tokens, size, channels) if tokens else {}
        infos: Dict[str, LayerInfo] = {}
        for name, raw in zip(self.names, raws):
            shape = tuple(int(d) for d in raw.shape[1:])
            layout = layouts[name]
            if layout == "NC":
                infos[name] = LayerInfo(name, "NC", shape[0], (1, 1), shape, size, None, "image")
            elif layout == "NLC":
                prefix, grid = tokens[name]
                field = local.get(name)
                infos[name] = LayerInfo(name, "NLC", shape[1], grid, shape, size,
                                        field if field is not None else token_footprints(grid, size),
                                        "receptive_field" if field is not None else "token", prefix)
                if prefix:
                    infos[name + PREFIX_SUFFIX] = LayerInfo(
                        name + PREFIX_SUFFIX, "NLC", shape[1], (prefix, 1), shape, size,
                        whole_image_field((prefix, 1), size), "image", prefix)
            else:
                layout = "NHWC" if layout == "NHWC" or name in fields.get("__channels_last__", ()) else "NCHW"
                c, grid = (shape[2], (shape[0], shape[1])) if layout == "NHWC" else (shape[0], (shape[1], shape[2]))
                infos[name] = LayerInfo(name, layout, c, grid, shape, size, fields[name], "receptive_field")
        cache[key] = infos
        return infos
