r"""What a run mines: :class:`RunSpec`, one format for the CLI and the dashboard.

A spec names the model (a built-in, a torchvision architecture with a checkpoint, a checkpoint
path, a library model ``timm:NAME`` / ``hf:DIR`` / ``package.module:factory``, or an ONNX
file), the data, the layers and the options. :meth:`RunSpec.resolve` adds
what the files say: the SHA-1 of the weights (``weights_sha1``: a checkpoint replaced under the
same name is another model; for an ``hf:`` folder its config and weight files, for a factory
its module's source file) and the data fingerprint (``data_fingerprint``: sorted relative
paths, sizes and modification times of the images). Two resolved specs are equal exactly when
a finished run of one is a valid result of the other; ``--resume`` and the dashboard's reuse
compare them and say what differs (:meth:`RunSpec.differences`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..models.ecosystem import model_files, parse_model_spec
from ..models.registry import DEFAULT_MODEL
from ..utils.files import file_digest
from ..utils.naming import slug
from ..data.descriptor import data_fingerprint, describe_data

__all__ = ["RunSpec", "RUN_FORMAT", "BACKENDS", "model_label", "absolute_model"]

RUN_FORMAT = "captum-topk-run/2"
#: Mining backends: PyTorch eager (hooks) or ONNX Runtime; "auto" picks (see runs.backend).
BACKENDS = ("auto", "torch", "onnxruntime")
_RESOLVED = ("weights_sha1", "data_fingerprint", "concepts_sha1")


def model_label(model: str) -> str:
    r"""A short name of a model spec for folder names: ``"timm-resnet18d"``, the ``hf:`` folder's
    name, the factory's name, a checkpoint's stem."""
    kind, target = parse_model_spec(model)
    if kind == "timm":
        return f"timm-{target}"
    if kind == "hf":
        return f"hf-{Path(target).name}"
    if kind == "factory":
        return target.replace(":", "-")
    return Path(target).stem


def absolute_model(model: str) -> str:
    r"""``model`` with the folder of an ``hf:DIR`` spec made absolute, so that a spec means the
    same from any working folder."""
    kind, target = parse_model_spec(model)
    return f"hf:{Path(target).resolve()}" if kind == "hf" else model


@dataclass(frozen=True)
class RunSpec:
    r"""Everything that decides a run's result.

    Attributes:
        model (str): a model spec (:func:`captum_topk.models.load_model`): built-in name,
            torchvision architecture, checkpoint path, ``"timm:NAME"``, ``"hf:DIR"`` (absolute
            folder) or ``"package.module:factory"``; ignored when ``onnx`` is set.
        checkpoint (str, optional): weights file for ``model`` (absolute path).
        onnx (str, optional): an ONNX file (absolute path), mined with ONNX Runtime.
        layers (tuple of str): layer names (tensor names for ONNX).
        data (str, optional): image folder / ImageNet val folder (absolute path); None: the
            packaged photos.
        k (int): records per channel.
        batch_size (int): images per batch (also the unit of sharding and resuming).
        input_size (int, optional): crop size instead of the model's own.
        max_images (int, optional): mine only the first images.
        distinct_images (bool): one record per image per channel.
        stats_bins (int): histogram bins over [-16, 16] for per-channel statistics; 0: none.
        backend (str): ``"auto"`` (ONNX Runtime on CPU when the model exports faithfully, else
            PyTorch; resolved when mining: a run folder records the engine used), ``"torch"``
            or ``"onnxruntime"``.
        half (bool): float16 forward (GPU only).
        random_init (bool): an architecture with random (seeded, reproducible) weights: what
            its units respond to before any training.
        world_size (int): processes (torchrun); a resumed run needs the same.
        layout (str): the layers' output layout (``"auto"``, ``"NCHW"``, ``"NHWC"``, ``"NLC"``,
            ``"NC"``; see :class:`~captum_topk.core.sources.torch.TorchSource`).
        token_grid (tuple of int, optional), prefix_tokens (int, optional): for token layers
            whose model does not expose them.
        concepts (tuple of str): saved :class:`~captum_topk.concepts.Concepts` files (absolute
            paths), mined beside the channels as layers ``"<layer>:<name>"``.
        rank_by (str, optional): rank records by relevance instead of activation: the name of a
            Captum layer attribution class (``"LayerGradientXActivation"``, ``"LayerLRP"``, ...,
            or the short ``"gxa"`` / ``"lrp"``); PyTorch only.
        target (str, optional): with ``rank_by``: ``"label"``, ``"predicted"`` or a class index.
        weights_sha1 (str, optional): SHA-1 of the weights' files (resolved,
            :meth:`weights_files`).
        data_fingerprint (str, optional): of the image files (resolved).
        concepts_sha1 (tuple of str): SHA-1 of each concepts file (resolved).
    """

    model: str = DEFAULT_MODEL
    checkpoint: Optional[str] = None
    onnx: Optional[str] = None
    layers: Tuple[str, ...] = ()
    data: Optional[str] = None
    k: int = 9
    batch_size: int = 32
    input_size: Optional[int] = None
    max_images: Optional[int] = None
    distinct_images: bool = True
    stats_bins: int = 64
    backend: str = "auto"
    half: bool = False
    random_init: bool = False
    world_size: int = 1
    layout: str = "auto"
    token_grid: Optional[Tuple[int, int]] = None
    prefix_tokens: Optional[int] = None
    concepts: Tuple[str, ...] = ()
    rank_by: Optional[str] = None
    target: Optional[str] = None
    weights_sha1: Optional[str] = None
    data_fingerprint: Optional[str] = None
    concepts_sha1: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(str(v) for v in self.layers))
        object.__setattr__(self, "concepts", tuple(str(v) for v in self.concepts or ()))
        object.__setattr__(self, "concepts_sha1", tuple(str(v) for v in self.concepts_sha1 or ()))
        if self.target is not None:
            object.__setattr__(self, "target", str(self.target))
        if (self.target is None) != (self.rank_by is None):
            raise ValueError("rank_by and target go together (e.g. rank_by='gxa', target='label').")
        if self.token_grid is not None:
            object.__setattr__(self, "token_grid", tuple(int(v) for v in self.token_grid))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        if self.onnx and self.backend != "onnxruntime":
            object.__setattr__(self, "backend", "onnxruntime")
        for name in ("k", "batch_size", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise ValueError(f"max_images must be a positive integer or None, got {self.max_images!r}.")
        if not isinstance(self.stats_bins, int) or self.stats_bins < 0:
            raise ValueError(f"stats_bins must be >= 0, got {self.stats_bins!r}.")

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["token_grid"] = list(self.token_grid) if self.token_grid else None
        d["concepts"], d["concepts_sha1"] = list(self.concepts), list(self.concepts_sha1)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        r"""A spec from :meth:`to_dict` (unknown keys are ignored, missing ones default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k in ("layers", "token_grid", "concepts", "concepts_sha1") and v is not None else v)
                      for k, v in d.items() if k in names})

    def key(self) -> str:
        r"""A short hash of the settings (not of the resolved digests): the folder name's tail."""
        d = {k: v for k, v in self.to_dict().items() if k not in _RESOLVED}
        return hashlib.sha1(json.dumps({**d, "format": RUN_FORMAT}, sort_keys=True).encode()).hexdigest()[:8]

    def run_name(self) -> str:
        r"""A folder name: ``<model>-<data>-<hash>``."""
        what = Path(self.onnx).stem + "-onnx" if self.onnx else (model_label(self.model) if self.model else "checkpoint")
        if self.checkpoint and not self.onnx:
            what += "+" + Path(self.checkpoint).stem
        data = Path(self.data).name if self.data else "demo"
        return f"{slug(what, keep='_.+-', max_len=48, sep='-')}-{slug(data, keep='_.-', max_len=48, sep='-')}-{self.key()}"

    # ------------------------------------------------------------------ files
    def weights_files(self) -> List[Path]:
        r"""The files whose bytes are the weights: the ONNX file, the checkpoint, a model given
        as a checkpoint path, an ``hf:`` folder's config and weights, a factory's module file;
        none for built-in weights and random ones."""
        if self.onnx:
            return [Path(self.onnx)]
        return model_files(self.model, self.checkpoint)

    def resolve(self) -> "RunSpec":
        r"""This spec with ``weights_sha1`` and ``data_fingerprint`` read from the files now."""
        files = self.weights_files()
        digest = None
        if len(files) == 1:
            digest = file_digest(files[0])
        elif files:  # several files: the digest of their names and digests
            digest = hashlib.sha1(json.dumps([[p.name, file_digest(p)] for p in files]).encode()).hexdigest()
        return dataclasses.replace(self, weights_sha1=digest,
                                   data_fingerprint=data_fingerprint(describe_data(self.data)),
                                   concepts_sha1=tuple(file_digest(c) for c in self.concepts))

    def differences(self, other: "RunSpec") -> Dict[str, Tuple[Any, Any]]:
        r"""``{field: (self's, other's)}`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    def explain(self, other: "RunSpec") -> str:
        r"""Why a run of ``self`` is not a run of ``other``, in words."""
        diff = self.differences(other)
        words = []
        if "weights_sha1" in diff:
            words.append("the weights file changed since (same name, other bytes)")
        if "data_fingerprint" in diff:
            words.append("the images changed since (files added, removed or modified)")
        if "concepts_sha1" in diff and "concepts" not in diff:
            words.append("a concepts file changed since (same name, other bytes)")
        rest = {k: v for k, v in diff.items() if k not in _RESOLVED}
        if rest:
            words.append("other settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in rest.items()))
        return "; ".join(words) or "nothing"
