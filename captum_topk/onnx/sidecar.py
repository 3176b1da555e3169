r"""The JSON sidecar written beside an exported ONNX file: ``<file>.onnx.json``.

It says what the ONNX file's outputs are and how to feed it, so that mining needs neither
the PyTorch model nor a receptive-field probe:

* ``layers`` / ``output_names`` / ``output_shapes``: the exported layers (graph outputs named
  after the PyTorch layers) and the model output;
* ``input_name``, ``input_size`` ``[H, W]``, ``channels``, ``dynamic_batch``, ``mean`` /
  ``std``: the preprocessing (``captum_topk.models.make_transform(input_size, mean=...,
  std=...)`` rebuilds the transform);
* ``receptive_fields``: per spatial layer, the exact receptive field at ``input_size``
  (:meth:`ReceptiveField.to_dict`): **boxes inline** as nested lists ``[h][w][4]`` of
  ``(top, left, bottom, right)`` input pixels (bottom / right exclusive), plus
  ``input_size``, ``size`` and ``stride``;
* ``parity``: the measured max |ONNX Runtime - PyTorch| per output on real images;
* ``exporter``: exporter, opset and library versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..utils.files import atomic_write_text
from .._version import __version__
from ..receptive_field.field import ReceptiveField
from ..utils.files import PathLike

FORMAT = "captum-topk-onnx/1"


def sidecar_path(onnx_path: PathLike) -> Path:
    r"""``model.onnx`` -> ``model.onnx.json``."""
    return Path(str(onnx_path) + ".json")


@dataclass
class Sidecar:
    r"""What an exported ONNX file holds and how to feed it (see the module docstring).

    Attributes:
        layers (list[str]): exported layer names, in order; each is a graph output.
        input_size (tuple[int, int]): ``(H, W)`` of the exported input.
        input_name (str), output_name (str): graph input / model-output names.
        channels (int): image channels.
        dynamic_batch (bool): whether the batch dimension is dynamic.
        mean, std (tuple[float, ...] or None): the normalisation the model expects.
        output_shapes (dict[str, list[int]]): per output, its shape without the batch dim.
        receptive_fields (dict[str, ReceptiveField]): per spatial layer, at ``input_size``.
        layouts (dict[str, dict]): per layer, ``{"layout", "prefix_tokens", "grid"}`` as the
            PyTorch source found them (channels-last maps, tokens); missing: channels-first.
        parity (dict): ``{"images": n, "max_abs_diff": {...}, "tolerance": {...}, ...}``.
        exporter (dict): exporter name, opset, library versions.
        categories (list[str] or None): class names of the model output.
        model (str): the PyTorch class exported.
        onnx_file (str): the ONNX file's name.
    """

    layers: List[str]
    input_size: Tuple[int, int]
    input_name: str = "input"
    output_name: str = "output"
    channels: int = 3
    dynamic_batch: bool = True
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    output_shapes: Dict[str, List[int]] = field(default_factory=dict)
    receptive_fields: Dict[str, ReceptiveField] = field(default_factory=dict)
    layouts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    parity: Dict[str, Any] = field(default_factory=dict)
    exporter: Dict[str, Any] = field(default_factory=dict)
    categories: Optional[List[str]] = None
    model: str = ""
    onnx_file: str = ""

    @property
    def output_names(self) -> List[str]:
        return [self.output_name, *self.layers]

    # ------------------------------------------------------------------ json
    def to_dict(self) -> Dict[str, Any]:
        rfs = {name: rf.to_dict() for name, rf in self.receptive_fields.items()}
        return {
            "format": FORMAT,
            "onnx_file": self.onnx_file,
            "model": self.model,
            "input_name": self.input_name,
            "input_size": list(self.input_size),
            "channels": self.channels,
            "layout": "NCHW",
            "dynamic_batch": self.dynamic_batch,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "output_name": self.output_name,
            "layers": list(self.layers),
            "output_names": self.output_names,
            "output_shapes": {k: list(v) for k, v in self.output_shapes.items()},
            "receptive_fields": rfs,
            "layouts": self.layouts,
            "parity": self.parity,
            "exporter": self.exporter,
            "categories": self.categories,
            "captum_topk_version": __version__,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "sidecar") -> "Sidecar":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where} is not a captum-topk ONNX sidecar (format {got!r}, expected {FORMAT!r}).")
        try:
            rfs = {name: ReceptiveField.from_dict(r) for name, r in d.get("receptive_fields", {}).items()}
            return cls(
                layers=list(d["layers"]),
                input_size=tuple(d["input_size"]),
                input_name=d.get("input_name", "input"),
                output_name=d.get("output_name", "output"),
                channels=int(d.get("channels", 3)),
                dynamic_batch=bool(d.get("dynamic_batch", True)),
                mean=tuple(d["mean"]) if d.get("mean") is not None else None,
                std=tuple(d["std"]) if d.get("std") is not None else None,
                output_shapes={k: list(v) for k, v in d.get("output_shapes", {}).items()},
                receptive_fields=rfs,
                layouts={k: dict(v) for k, v in (d.get("layouts") or {}).items()},
                parity=dict(d.get("parity", {})),
                exporter=dict(d.get("exporter", {})),
                categories=d.get("categories"),
                model=d.get("model", ""),
                onnx_file=d.get("onnx_file", ""),
            )
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{where} is a damaged captum-topk ONNX sidecar: {type(exc).__name__}: {exc}") from exc

    def save(self, path: PathLike) -> Path:
        r"""Write atomically as JSON."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: PathLike) -> "Sidecar":
        r"""Read a sidecar written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file. ValueError: not JSON, or not a sidecar.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON (a truncated sidecar?): {exc}") from exc
        return cls.from_dict(d, where=str(path))

    def transform(self):
        r"""The evaluation transform for this model (resize, center crop, normalise)."""
        from ..models.info import make_transform

        kw = {}
        if self.mean is not None:
            kw["mean"] = self.mean
        if self.std is not None:
            kw["std"] = self.std
        return make_transform(tuple(self.input_size), **kw)


def load_sidecar(onnx_path: PathLike, required: bool = False) -> Optional[Sidecar]:
    r"""The sidecar of ``onnx_path`` (``<onnx_path>.json``), or None when there is none.

    Args:
        onnx_path (str): the ONNX file.
        required (bool): raise ``FileNotFoundError`` instead of returning None.
    Returns:
        Sidecar or None
    """
    path = sidecar_path(onnx_path)
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"No sidecar {path}: export with captum_topk.onnx.export().")
        return None
    return Sidecar.load(path)

