r"""Run folders on disk (``run.json`` + ``result.pt``): listing them and opening one with its
model and images (:class:`DashRun`, PyTorch or ONNX Runtime)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..utils.files import file_digest
from ..models.info import ModelInfo, make_transform
from ..models.registry import load_model
from ..core.result import TopKResult
from ..models.registry import DEFAULT_MODEL
from ..runs.folder import Run
from .roots import _walk, _within
from .spec import JobSpec
from ..utils.files import PathLike

__all__ = [
    "RunEntry",
    "list_runs",
    "DashRun",
    "open_run",
]

@dataclass
class RunEntry:
    r"""One run folder under the runs root, described from its ``run.json`` (cheap).

    Attributes:
        path (Path): the folder. name (str): relative to the runs root.
        model (str), checkpoint (str or None), data (str), layers (list of str),
        n_images (int or None), backend (str), stats (bool), k (int or None),
        mtime (float): of ``result.pt``. spec (JobSpec or None): for dashboard jobs.
        error (str or None): why ``run.json`` could not be read.
    """

    path: Path
    name: str
    model: str = "?"
    checkpoint: Optional[str] = None
    data: str = "?"
    layers: List[str] = field(default_factory=list)
    n_images: Optional[int] = None
    backend: str = "pytorch"
    stats: bool = False
    k: Optional[int] = None
    mtime: float = 0.0
    spec: Optional[JobSpec] = None
    error: Optional[str] = None

    @property
    def label(self) -> str:
        ck = f" + {Path(self.checkpoint).name}" if self.checkpoint else ""
        onnx = " [ONNX Runtime]" if self.backend == "onnxruntime" else ""
        return f"{self.name} — {self.model}{ck}{onnx} on {self.data}"


def _data_label(desc: Any) -> str:
    if not isinstance(desc, dict):
        return "?"
    if desc.get("kind") == "demo":
        return "packaged photos"
    return Path(str(desc.get("root", "?"))).name or "?"


def list_runs(runs_root: PathLike) -> List[RunEntry]:
    r"""Finished runs (folders holding ``result.pt``) under ``runs_root``, newest first.

    Only ``run.json`` is read; a folder whose ``run.json`` is missing or damaged is still
    listed, with ``error`` set (opening it then says why it fails).

    Returns:
        list of RunEntry
    """
    root = Path(runs_root).resolve()
    out = []
    for folder, files in _walk(root):
        if "result.pt" not in files:
            continue
        result = folder / "result.pt"
        if not _within(result.resolve(), root):
            continue
        entry = RunEntry(path=folder, name=folder.relative_to(root).as_posix() if folder != root else ".",
                         mtime=result.stat().st_mtime)
        try:
            info = json.loads((folder / "run.json").read_text())
            if not isinstance(info, dict):
                raise ValueError("run.json is not a JSON object")
            entry.model = Path(str(info.get("onnx") or info.get("model") or "?")).name \
                if info.get("backend") == "onnxruntime" else str(info.get("model", "?"))
            entry.checkpoint = info.get("checkpoint")
            entry.data = _data_label(info.get("data"))
            entry.layers = [str(v) for v in info.get("layers", [])]
            entry.n_images = info.get("n_total")
            entry.backend = str(info.get("backend", "pytorch"))
            entry.stats = bool(info.get("stats", False))
            entry.k = info.get("k")
            if isinstance(info.get("job"), dict):
                entry.spec = JobSpec.from_dict(info["job"])
        except FileNotFoundError:
            entry.error = "no run.json beside result.pt"
        except (ValueError, TypeError, OSError) as exc:
            entry.error = f"damaged run.json ({exc})"
        out.append(entry)
    return sorted(out, key=lambda e: (-e.mtime, e.name))


@dataclass
class DashRun:
    r"""A run opened for the dashboard: the result, how to feed and show its images, and the
    model (None for an ONNX Runtime run: projections and filters need PyTorch).

    Attributes:
        path (Path): the run folder.
        result (TopKResult): the mined records.
        info (ModelInfo): preprocessing (``mean``, ``std``, ``input_size``, ``categories``).
        dataset: the dataset the run mined (reopened; model-input transform applied).
        model (nn.Module or None): the PyTorch model.
        backend (str): ``"pytorch"`` or ``"onnxruntime"``.
        settings (dict): the run's ``run.json``.
    """

    path: Path
    result: TopKResult
    info: ModelInfo
    dataset: Any
    model: Optional[nn.Module]
    backend: str = "pytorch"
    settings: Dict[str, Any] = field(default_factory=dict)
    _run: Optional[Run] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._run = Run(self.path, self.result, self.info, self.dataset)

    def image_source(self) -> Callable[[int], Tensor]:
        r"""``record.index -> (3, H, W)`` model input (decoded images are LRU-cached)."""
        return self._run.image_source()

    @property
    def layers(self) -> List[str]:
        return self.result.layers

    @property
    def categories(self) -> Optional[List[str]]:
        cats = self.result.metadata.get("categories") or self.info.categories
        if cats is None and getattr(self.dataset, "classes", None):
            cats = list(self.dataset.classes)
        return cats

    def label_name(self, label: int) -> str:
        cats = self.categories
        if label is None or label < 0:
            return "unlabelled"
        return cats[label] if cats and label < len(cats) else f"class {label}"

    def describe(self) -> str:
        m = self.result.metadata
        if self.backend == "onnxruntime":
            what = f"{Path(str(m.get('onnx_path', '?'))).name} through ONNX Runtime ({m.get('provider', '?')})"
        else:
            what = str(m.get("model_name", m.get("model", "?")))
            if m.get("checkpoint"):
                what += f" + checkpoint {Path(str(m['checkpoint'])).name}"
        return (f"{what}; {self.result.n_images} images ({_data_label(m.get('data'))}); "
                f"top-{self.result.k} per channel; input {self.info.input_size[0]}x{self.info.input_size[1]}")


def _model_for(name: str, checkpoint: Optional[str], input_size: Optional[int]) -> Tuple[nn.Module, ModelInfo]:
    if checkpoint and not name:
        net, info = load_model(checkpoint)
    else:
        net, info = load_model(name or DEFAULT_MODEL, checkpoint=checkpoint)
    if input_size and tuple(info.input_size) != (input_size, input_size):
        info = dataclasses.replace(
            info, input_size=(input_size, input_size), resize_size=round(input_size / 0.875),
            transform=make_transform(input_size, mean=info.mean, std=info.std))
    return net, info


def _onnx_info(onnx_path: Path, fallback_size: Optional[int] = None) -> ModelInfo:
    from ..models.info import IMAGENET_MEAN, IMAGENET_STD
    from ..onnx.graph import input_spec, load_onnx
    from ..onnx.sidecar import load_sidecar

    sc = load_sidecar(onnx_path)
    if sc is not None:
        size = tuple(sc.input_size)
        mean = tuple(sc.mean) if sc.mean else IMAGENET_MEAN
        std = tuple(sc.std) if sc.std else IMAGENET_STD
        cats = sc.categories
    else:
        spec = input_spec(load_onnx(onnx_path))
        if spec.size is None and not fallback_size:
            raise ValueError(f"{onnx_path.name} has a dynamic input size and no sidecar: give an input size.")
        size = tuple(spec.size) if spec.size else (fallback_size, fallback_size)
        mean, std, cats = IMAGENET_MEAN, IMAGENET_STD, None
    if fallback_size:
        size = (fallback_size, fallback_size)
    return ModelInfo(name=onnx_path.name, categories=cats, input_size=size, mean=mean, std=std,
                     transform=make_transform(size, mean=mean, std=std), source=str(onnx_path),
                     arch="onnx", num_classes=len(cats) if cats else 0,
                     resize_size=round(min(size) / 0.875))


def open_run(path: PathLike) -> DashRun:
    r"""Open a run folder (or its ``result.pt``): result, model, dataset.

    Args:
        path (str): a run folder written by :func:`mine_job` or ``captum-topk mine``.
    Returns:
        DashRun
    Raises:
        FileNotFoundError: no ``result.pt``; ValueError: a damaged result or a model /
        checkpoint that does not load (the message says which).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    result_path = folder / "result.pt"
    if not result_path.is_file():
        raise FileNotFoundError(f"No result.pt in {folder}: mine it first (Data and jobs page).")
    result = TopKResult.load(result_path)
    meta = result.metadata
    try:
        settings = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        settings = {}
    size = meta.get("input_size")
    size = int(size[0]) if isinstance(size, (list, tuple)) and size else None
    if meta.get("backend") == "onnxruntime":
        onnx_path = Path(str(meta.get("onnx_path") or ""))
        if not onnx_path.is_file():
            raise FileNotFoundError(f"The run was mined from {onnx_path}, which is gone.")
        info = _onnx_info(onnx_path, size)
        if meta.get("mean") and meta.get("std"):
            info = dataclasses.replace(info, mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                                       transform=make_transform(info.input_size, mean=meta["mean"], std=meta["std"]))
        model, backend = None, "onnxruntime"
    else:
        weights = meta.get("checkpoint") or str(meta.get("model_name") or "")  # --model file.pt
        _check_weights(weights, settings.get("weights_sha1") or settings.get("checkpoint_sha1"))
        model, info = _model_for(str(meta.get("model_name", DEFAULT_MODEL)), meta.get("checkpoint"), size)
        backend = "pytorch"
    dataset = _reopen(meta.get("data") or {"kind": "demo"}, info.transform, meta.get("skipped") or [])
    return DashRun(folder, result, info, dataset, model, backend, settings)


def _check_weights(checkpoint: Optional[str], recorded: Optional[str]) -> None:
    """A run shows the patches its weights found: refuse to pair it with a checkpoint that was
    replaced under the same name since (e.g. by a new ``captum-topk finetune``)."""
    if checkpoint and recorded and Path(checkpoint).is_file() and file_digest(checkpoint) != recorded:
        raise ValueError(
            f"The checkpoint {checkpoint} changed since this run was mined (same name, different "
            "weights). Mine the run again (Data and jobs page, or captum-topk mine) to see what "
            "the new weights respond to."
        )


def _reopen(desc: Dict[str, Any], transform: Callable, skipped: Sequence[Sequence[str]]):
    r"""The dataset a run mined, reopened without decoding every image again (``validate=
    "header"``): the files skipped at mining time are left out by path, and records find their
    image by id, so indices cannot shift."""
    from ..data.demo import demo_images
    from ..data.folder import image_folder
    from ..data.imagenet import imagenet_val

    kind = desc.get("kind")
    if kind == "demo":
        ds = demo_images(transform=transform, validate="header")
    elif kind == "imagenet_val":
        ds = imagenet_val(desc["root"], transform=transform, validate="header")
    else:
        root = desc.get("root")
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(f"The run's image folder {root} is gone.")
        ds = image_folder(root, transform=transform, validate="header")
    bad = {str(s[0]) for s in skipped if s}
    if bad:
        ds = ds.subset([i for i, src in enumerate(ds.sources) if src not in bad])
    return ds
