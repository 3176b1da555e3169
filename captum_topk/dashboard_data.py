r"""Library side of the Streamlit dashboard (``app_streamlit/``): everything it computes.

The app stays a thin layer of widgets; what it shows comes from these functions, which are
plain Python (no Streamlit import) and tested on their own:

* **Roots** (:class:`Roots`): the four folders the dashboard may read / write, from the
  environment (``CAPTUM_TOPK_DATA_ROOT``, ``CAPTUM_TOPK_RUNS_ROOT``,
  ``CAPTUM_TOPK_CHECKPOINTS_ROOT``, ``CAPTUM_TOPK_ONNX_ROOT``), defaulting to ``data/``,
  ``results/``, ``checkpoints/`` and ``onnx_models/`` under a base folder. Every path a user
  types goes through :func:`resolve_under`: it must stay inside its root once ``..`` and
  symlinks are resolved.
* **Runs** on disk (the run folders of :func:`captum_topk.runs.mine_run`: ``run.json`` +
  ``result.pt``): :func:`list_runs`, :func:`open_run` (result + model + dataset, PyTorch or
  ONNX Runtime), and :func:`mine_job`, which mines a :class:`JobSpec` batch by batch with a
  progress callback (the dashboard's live progress bar), with per-channel statistics, and
  reuses a finished run with the same settings instead of mining again.
  :func:`ensure_default_run` mines the embedded default (MobileNetV2-ImageNet on the packaged
  photos) when it is missing; ``python -m captum_topk.dashboard_data warm`` does it ahead of
  time (``make run``).
* **Views** of a run, as ``uint8`` arrays and plain numbers ready for ``st.image`` / plotly:
  :func:`channel_patches`, :func:`channel_projections`, :func:`channel_histogram`,
  :func:`channel_classes`, :func:`record_image` (the whole model input with the receptive
  field drawn), :func:`top1_grid`, :func:`filter_view`, :func:`run_embeddings` +
  :func:`pca_2d`, :func:`thumbnails`.
* **Comparisons** (:func:`compare_runs`): layer x layer CKA and channels ranked by how much
  they changed, through :mod:`captum_topk.compare`; :func:`compare_status` says when two runs
  cannot be compared that way (ONNX Runtime runs have no PyTorch model).

Example::

    >>> from captum_topk.dashboard_data import Roots, ensure_default_run, open_run, channel_patches
    >>> roots = Roots.from_env()
    >>> run = open_run(ensure_default_run(roots))
    >>> tiles, recs = channel_patches(run, "features.7", 12)   # (9, 75, 75, 3) uint8, records
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ._io import atomic_write_text
from .data import IMAGE_EXTENSIONS, make_loader
from .models import ModelInfo, load_model, make_transform
from .plot import patch_grid, to_display
from .result import PatchRecord, TopKResult
from .runs import DEFAULT_MODEL, Run, open_dataset

__all__ = [
    "Roots",
    "UnsafePathError",
    "resolve_under",
    "RunEntry",
    "DashRun",
    "JobSpec",
    "DEFAULT_SPEC",
    "DEFAULT_LAYERS",
    "list_runs",
    "list_files",
    "list_data_folders",
    "open_run",
    "mine_job",
    "find_job",
    "ensure_default_run",
    "export_for_ort",
    "onnx_available",
    "job_model",
    "job_layers",
    "suggest_layers",
    "channel_patches",
    "channel_projections",
    "channel_histogram",
    "channel_classes",
    "record_image",
    "top1_grid",
    "sheet",
    "conv_layers",
    "filter_view",
    "run_embeddings",
    "pca_2d",
    "nearest_neighbours",
    "thumbnails",
    "find_finetuned",
    "like_run",
    "shared_images",
    "matching_layers",
    "compare_status",
    "compare_runs",
]

PathLike = Union[str, os.PathLike]
Progress = Optional[Callable[[str, int, Optional[int]], None]]

ENV_VARS = {
    "data": "CAPTUM_TOPK_DATA_ROOT",
    "runs": "CAPTUM_TOPK_RUNS_ROOT",
    "checkpoints": "CAPTUM_TOPK_CHECKPOINTS_ROOT",
    "onnx": "CAPTUM_TOPK_ONNX_ROOT",
}
DEFAULT_DIRS = {"data": "data", "runs": "results", "checkpoints": "checkpoints", "onnx": "onnx_models"}
DEFAULT_LAYERS: Tuple[str, ...] = ("features.3", "features.7", "features.11")  # RF 19, 75, 203 px
CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".ckpt")
# Histogram edges of dashboard jobs: 256 bins of 0.125 over [-16, 16] (finer than the library
# default of 64 bins, for the per-channel histograms; C x 258 integers per layer).
HISTOGRAM_EDGES = torch.linspace(-16.0, 16.0, 257)
JOB_FORMAT = 2  # bump when what a job writes changes: older runs are then mined again
_MAX_DEPTH = 3  # how deep listings look under a root


# --------------------------------------------------------------------------------------
# roots and safe paths
# --------------------------------------------------------------------------------------


class UnsafePathError(ValueError):
    r"""A user-given path that leaves its configured root (``..``, an absolute path elsewhere,
    or a symlink pointing out)."""


@dataclass(frozen=True)
class Roots:
    r"""The folders the dashboard reads and writes.

    Attributes:
        data (Path): image folders to mine (``CAPTUM_TOPK_DATA_ROOT``, default ``data/``).
        runs (Path): run folders (``CAPTUM_TOPK_RUNS_ROOT``, default ``results/``).
        checkpoints (Path): model checkpoints (``CAPTUM_TOPK_CHECKPOINTS_ROOT``, default
            ``checkpoints/``).
        onnx (Path): ONNX files (``CAPTUM_TOPK_ONNX_ROOT``, default ``onnx_models/``).
    """

    data: Path
    runs: Path
    checkpoints: Path
    onnx: Path

    @classmethod
    def from_env(cls, base: Optional[PathLike] = None, env: Optional[Dict[str, str]] = None) -> "Roots":
        r"""Roots from the environment variables, else the default sub-folders of ``base``.

        Args:
            base (str, optional): folder of the defaults; default the current directory.
            env (dict, optional): the environment to read (default ``os.environ``).
        Returns:
            Roots: absolute, symlink-resolved paths (they need not exist yet).
        Example::
            >>> Roots.from_env("/repo").runs
            PosixPath('/repo/results')
        """
        env = os.environ if env is None else env
        base_path = Path(base) if base is not None else Path.cwd()
        paths = {}
        for key, var in ENV_VARS.items():
            value = env.get(var)
            path = Path(value).expanduser() if value else base_path / DEFAULT_DIRS[key]
            paths[key] = path.resolve()
        return cls(**paths)

    def as_dict(self) -> Dict[str, str]:
        return {k: str(getattr(self, k)) for k in ENV_VARS}


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_under(root: PathLike, user_path: PathLike, *, kind: Optional[str] = None,
                  must_exist: bool = True) -> Path:
    r"""Resolve a path a user typed, refusing anything that leaves ``root``.

    The path is taken relative to ``root`` (an absolute path is accepted only when it lies
    inside ``root``), then fully resolved: ``..`` components and symlinks are followed, and the
    result must still be inside ``root`` (itself resolved).

    Args:
        root (str): the configured root.
        user_path (str): what the user typed.
        kind (str, optional): ``"file"`` or ``"dir"``: what it must be (when it exists).
        must_exist (bool): raise ``FileNotFoundError`` when it does not exist.
    Returns:
        Path: the resolved path, inside ``root``.
    Raises:
        UnsafePathError: the path leaves ``root`` (``..``, absolute elsewhere, symlink out).
        FileNotFoundError / ValueError: missing, or not of the ``kind`` asked for.
    Example::
        >>> resolve_under("/srv/data", "cats/../dogs")      # fine: /srv/data/dogs
        >>> resolve_under("/srv/data", "../etc")            # UnsafePathError
    """
    text = str(user_path).strip()
    if not text or "\x00" in text:
        raise ValueError("Empty path: pick an entry from the list or type a path inside the root.")
    root_path = Path(root).resolve()
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root_path / candidate
    resolved = candidate.resolve()
    if not _within(resolved, root_path):
        raise UnsafePathError(
            f"{text!r} resolves to {resolved}, outside the configured root {root_path}. Put the "
            "file there (or point the matching CAPTUM_TOPK_*_ROOT variable at its folder)."
        )
    if must_exist and not resolved.exists():
        raise FileNotFoundError(f"{text!r} does not exist under {root_path}.")
    if resolved.exists() and kind == "file" and not resolved.is_file():
        raise ValueError(f"{text!r} is not a file.")
    if resolved.exists() and kind == "dir" and not resolved.is_dir():
        raise ValueError(f"{text!r} is not a folder.")
    return resolved


def _walk(root: Path, max_depth: int = _MAX_DEPTH):
    r"""``os.walk`` of ``root`` without following symlinked folders, at most ``max_depth`` deep,
    skipping hidden entries."""
    if not root.is_dir():
        return
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = len(Path(dirpath).parts) - base
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < max_depth else []
        yield Path(dirpath), sorted(f for f in filenames if not f.startswith("."))


def list_files(root: PathLike, extensions: Sequence[str]) -> List[str]:
    r"""Files under ``root`` (at most 3 folders deep) with one of ``extensions``, as paths
    relative to ``root``; symlinks resolving outside ``root`` are left out.

    Returns:
        list of str: sorted relative paths (``"finetuned/elpv.pt"``).
    """
    root_path = Path(root).resolve()
    exts = tuple(e.lower() for e in extensions)
    out = []
    for folder, files in _walk(root_path):
        for fn in files:
            if fn.lower().endswith(exts):
                full = folder / fn
                if _within(full.resolve(), root_path) and full.resolve().is_file():
                    out.append(full.relative_to(root_path).as_posix())
    return sorted(out)


def list_data_folders(root: PathLike) -> List[str]:
    r"""Folders under the data root holding images (directly or in sub-folders), relative
    to it (``"."`` for the root itself); the shallowest folder of each tree is listed."""
    root_path = Path(root).resolve()
    exts = tuple(IMAGE_EXTENSIONS)
    has_images = set()
    for folder, files in _walk(root_path):
        if any(f.lower().endswith(exts) for f in files):
            has_images.add(folder)
    out = set()
    for folder in has_images:
        rel = folder.relative_to(root_path)
        parts = rel.parts
        # an image folder counts for itself and for each of its ancestors (class sub-folders)
        for i in range(len(parts) + 1):
            out.add(Path(*parts[:i]).as_posix() if i else ".")
    return sorted(out, key=lambda p: (p != ".", p))


# --------------------------------------------------------------------------------------
# jobs: what to mine
# --------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:48] or "x"


@dataclass(frozen=True)
class JobSpec:
    r"""What a dashboard mining job mines. Paths are relative to their roots.

    Attributes:
        model (str): built-in name (:func:`captum_topk.models.list_models`) or torchvision
            architecture; ignored when ``onnx`` is set.
        checkpoint (str, optional): weights under the checkpoints root (with ``model`` a
            built-in or architecture name, or ``model=""`` when the checkpoint names its
            architecture).
        onnx (str, optional): an ONNX file under the onnx root: mined with ONNX Runtime.
        layers (tuple of str): layer names (tensor names for ONNX).
        data (str, optional): an image folder under the data root; None: the packaged photos.
        k (int): records per channel.
        batch_size (int): images per batch.
        input_size (int, optional): crop size instead of the model's own.
        max_images (int, optional): mine only the first images.
    """

    model: str = DEFAULT_MODEL
    checkpoint: Optional[str] = None
    onnx: Optional[str] = None
    layers: Tuple[str, ...] = DEFAULT_LAYERS
    data: Optional[str] = None
    k: int = 9
    batch_size: int = 16
    input_size: Optional[int] = None
    max_images: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "JobSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["layers"] = tuple(kw.get("layers", DEFAULT_LAYERS))
        return cls(**kw)

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.onnx else "pytorch"

    def key(self) -> str:
        r"""A short hash of the settings (and of the job format): equal specs share one run folder."""
        text = json.dumps({**self.to_dict(), "format": JOB_FORMAT}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]

    def run_name(self) -> str:
        r"""The run folder's name: ``<model>-<data>-<hash>``."""
        what = Path(self.onnx).stem + "-onnx" if self.onnx else (self.model or "checkpoint")
        if self.checkpoint and not self.onnx:
            what += "+" + Path(self.checkpoint).stem
        return f"{_slug(what)}-{_slug(self.data or 'demo')}-{self.key()}"


DEFAULT_SPEC = JobSpec()


# --------------------------------------------------------------------------------------
# runs on disk
# --------------------------------------------------------------------------------------


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
    from .models import IMAGENET_MEAN, IMAGENET_STD
    from .onnx import input_spec, load_onnx, load_sidecar

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
        model, info = _model_for(str(meta.get("model_name", DEFAULT_MODEL)), meta.get("checkpoint"), size)
        backend = "pytorch"
    dataset = _reopen(meta.get("data") or {"kind": "demo"}, info.transform, meta.get("skipped") or [])
    return DashRun(folder, result, info, dataset, model, backend, settings)


def _reopen(desc: Dict[str, Any], transform: Callable, skipped: Sequence[Sequence[str]]):
    r"""The dataset a run mined, reopened without decoding every image again (``validate=
    "header"``): the files skipped at mining time are left out by path, and records find their
    image by id, so indices cannot shift."""
    from .data import demo_images, image_folder, imagenet_val

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


def find_job(spec: JobSpec, roots: Roots) -> Optional[Path]:
    r"""The run folder of a finished job with exactly these settings, or None."""
    folder = roots.runs / spec.run_name()
    if (folder / "result.pt").is_file():
        try:
            info = json.loads((folder / "run.json").read_text())
            if JobSpec.from_dict(info.get("job", {})) == spec:
                return folder
        except (OSError, ValueError, TypeError):
            return None
    return None


def _notify(progress: Progress, phase: str, done: int, total: Optional[int]) -> None:
    if progress is not None:
        progress(phase, done, total)


def mine_job(spec: JobSpec, roots: Roots, progress: Progress = None, reuse: bool = True) -> Path:
    r"""Mine ``spec`` into a run folder under ``roots.runs``, reporting progress per batch.

    The run folder is :meth:`JobSpec.run_name` and has the layout of
    :func:`captum_topk.runs.mine_run` (``run.json`` + ``result.pt``, both written atomically),
    so ``captum-topk show`` opens it too. Per-channel statistics are gathered in the same pass
    (histogram edges :data:`HISTOGRAM_EDGES`). A finished run with the same settings is reused.

    Args:
        spec (JobSpec): what to mine; its paths are resolved under ``roots`` with
            :func:`resolve_under`.
        roots (Roots): the configured roots.
        progress (Callable, optional): ``progress(phase, done, total)`` with phase
            ``"loading"``, ``"mining"`` (done / total images, after every batch),
            ``"receptive fields"`` and ``"done"``.
        reuse (bool): return an existing run with the same settings without mining.
    Returns:
        Path: the run folder.
    Raises:
        UnsafePathError: a path of ``spec`` leaves its root. ValueError /
        FileNotFoundError: a model, checkpoint or dataset that cannot be used (readable
        message).
    Example::
        >>> folder = mine_job(JobSpec(layers=("features.3",)), Roots.from_env(),
        ...                   progress=lambda phase, done, total: print(phase, done, total))
    """
    from .layer_topk import LayerTopKPatches

    if reuse:
        found = find_job(spec, roots)
        if found is not None:
            _notify(progress, "done", 1, 1)
            return found
    if not spec.layers:
        raise ValueError("Pick at least one layer to mine.")
    if spec.k < 1 or spec.batch_size < 1:
        raise ValueError("k and the batch size must be at least 1.")
    _notify(progress, "loading", 0, None)
    data_dir = resolve_under(roots.data, spec.data, kind="dir") if spec.data else None
    if spec.onnx:
        from .onnx import OnnxTopKPatches

        onnx_path = resolve_under(roots.onnx, spec.onnx, kind="file")
        info = _onnx_info(onnx_path, spec.input_size)
        miner: LayerTopKPatches = OnnxTopKPatches(str(onnx_path), list(spec.layers), k=spec.k,
                                                  stats=HISTOGRAM_EDGES, progress_rf=False)
        model_name, checkpoint = onnx_path.name, None
    else:
        checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
        net, info = _model_for(spec.model, checkpoint, spec.input_size)
        miner = LayerTopKPatches(net, list(spec.layers), k=spec.k, stats=HISTOGRAM_EDGES)
        model_name = spec.model or info.arch
    dataset, descriptor = open_dataset(data_dir, info.transform)
    total = len(dataset) if spec.max_images is None else min(len(dataset), spec.max_images)
    if total == 0:
        raise ValueError(f"No readable image in {spec.data or 'the packaged photos'}.")
    if total < len(dataset):
        dataset = dataset.subset(range(total))
    folder = roots.runs / spec.run_name()
    settings = {
        "model": model_name,
        "checkpoint": checkpoint,
        "onnx": str(resolve_under(roots.onnx, spec.onnx)) if spec.onnx else None,
        "backend": spec.backend,
        "layers": list(spec.layers),
        "data": descriptor,
        "k": spec.k,
        "batch_size": spec.batch_size,
        "distinct_images": True,
        "max_images": spec.max_images,
        "input_size": list(info.input_size),
        "n_total": total,
        "stats": True,
        "skipped": [list(s) for s in getattr(dataset, "skipped", [])],
        "job": spec.to_dict(),
    }
    miner.reset()
    done = 0
    _notify(progress, "mining", 0, total)
    for batch in make_loader(dataset, batch_size=spec.batch_size):
        miner.update(batch)
        done += int(batch[0].shape[0])
        _notify(progress, "mining", done, total)
    _notify(progress, "receptive fields", 0, None)
    result = miner.compute()
    result.metadata.update(
        model_name=model_name, checkpoint=checkpoint, data=descriptor, mean=list(info.mean),
        std=list(info.std), input_size=list(info.input_size), categories=info.categories,
        skipped=settings["skipped"], backend=spec.backend, job=spec.to_dict(),
    )
    if spec.onnx:
        result.metadata["onnx_path"] = settings["onnx"]
    result.save(folder / "result.pt")
    atomic_write_text(folder / "run.json", json.dumps(settings, indent=2))
    _notify(progress, "done", total, total)
    return folder


def ensure_default_run(roots: Roots, progress: Progress = None) -> Path:
    r"""The run folder of the embedded default (:data:`DEFAULT_SPEC`: MobileNetV2-ImageNet,
    ``features.3`` / ``.7`` / ``.11``, packaged photos), mined first if missing (~10 s, plus
    the receptive-field probe the first time on a machine, cached on disk)."""
    return mine_job(DEFAULT_SPEC, roots, progress=progress)


def onnx_available() -> Optional[str]:
    r"""None when the ONNX Runtime backend can be used, else why not."""
    try:
        import onnxruntime  # noqa: F401

        from . import onnx as _onnx  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"ONNX backend unavailable: {type(exc).__name__}: {exc}"
    return None


def export_for_ort(spec: JobSpec, roots: Roots, progress: Progress = None) -> JobSpec:
    r"""Export the PyTorch model of ``spec`` with its layers to ONNX under ``roots.onnx``
    (reused when already there) and return the spec that mines it with ONNX Runtime."""
    from .onnx import export

    name = f"{_slug(spec.model or 'model')}"
    if spec.checkpoint:
        name += "+" + _slug(Path(spec.checkpoint).stem)
    name += "-" + hashlib.sha1(json.dumps([list(spec.layers), spec.input_size, spec.checkpoint]).encode()).hexdigest()[:8]
    target = roots.onnx / f"{name}.onnx"
    if not (target.is_file() and Path(str(target) + ".json").is_file()):
        _notify(progress, "export", 0, None)
        checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
        net, info = _model_for(spec.model, checkpoint, spec.input_size)
        export(net, list(spec.layers), target, input_size=info.input_size, info=info, progress=False)
    return dataclasses.replace(spec, onnx=target.relative_to(roots.onnx).as_posix(), checkpoint=None,
                               model="", input_size=None)


def job_model(spec: JobSpec, roots: Roots) -> Tuple[nn.Module, ModelInfo]:
    r"""The PyTorch model and preprocessing of a (non-ONNX) job, its checkpoint resolved
    under the checkpoints root."""
    checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
    return _model_for(spec.model, checkpoint, spec.input_size)


def job_layers(spec: JobSpec, roots: Roots, model: Optional[nn.Module] = None) -> List[str]:
    r"""The layer names a job can mine: every named submodule of the PyTorch model, or the
    minable tensors of the ONNX file (its exported layers first)."""
    if spec.onnx:
        from .onnx import list_tensors, load_onnx, load_sidecar

        path = resolve_under(roots.onnx, spec.onnx, kind="file")
        sc = load_sidecar(path)
        names = list(sc.layers) if sc is not None else []
        names += [t.name for t in list_tensors(load_onnx(path)) if t.name not in names]
        return names
    if model is None:
        model, _ = job_model(spec, roots)
    return [n for n, _ in model.named_modules() if n]


def suggest_layers(names: Sequence[str], n: int = 3) -> List[str]:
    r"""A sensible default choice of ``n`` layers among ``names``: :data:`DEFAULT_LAYERS` when
    all present (MobileNetV2), else ResNet-style stages (``layer1``...), else an early, a
    middle and a late block of ``features``, else ONNX graph outputs / the first names."""
    names = list(names)
    if all(d in names for d in DEFAULT_LAYERS):
        return list(DEFAULT_LAYERS)
    stages = [x for x in names if re.fullmatch(r"layer\d+", x)]
    if stages:
        return stages[:n]
    blocks = [x for x in names if re.fullmatch(r"features\.\d+", x)]
    if len(blocks) >= n:
        picks = [blocks[round(i * (len(blocks) - 1) * 0.6 / max(1, n - 1)) + len(blocks) // 8] for i in range(n)]
        return list(dict.fromkeys(picks))
    return names[:n]


# --------------------------------------------------------------------------------------
# views of one channel
# --------------------------------------------------------------------------------------


def channel_patches(run: DashRun, layer: str, channel: int, which: str = "top",
                    n: Optional[int] = None) -> Tuple[np.ndarray, List[PatchRecord]]:
    r"""The receptive-field crops of a channel's records, ready to display.

    Returns:
        (numpy.ndarray, list[PatchRecord]): ``(n, h, w, 3)`` uint8 crops (clipped boxes padded
        with black) and the n records, strongest first.
    """
    recs = run.result.records(layer, channel, which)[:n]
    if not recs:
        return np.zeros((0, 1, 1, 3), np.uint8), []
    crops = run.result.patches(run.image_source(), layer, channel, which, n=n, fill=float("nan"))
    tiles = to_display(crops, mean=run.info.mean, std=run.info.std)
    pad = torch.isnan(crops).any(dim=1).numpy()  # NaN fill marks padding: show it black
    tiles[pad] = 0
    return tiles, recs


def channel_projections(run: DashRun, layer: str, channel: int, method: str = "deconvolution",
                        which: str = "top", n: Optional[int] = None) -> np.ndarray:
    r"""Zeiler & Fergus projections of a channel's records (``method`` ``"deconvolution"``
    or ``"guided_backprop"``), cropped like :func:`channel_patches`.

    Returns:
        numpy.ndarray: ``(n, h, w, 3)`` uint8, zero at mid-grey (see
        :func:`captum_topk.projections.symmetric_rgb`).
    Raises:
        ValueError: an ONNX Runtime run (projections need PyTorch autograd).
    """
    if run.model is None:
        raise ValueError("Projections need the PyTorch model (autograd); this run was mined "
                         "through ONNX Runtime.")
    proj = run.result.projections(run.image_source(), layer, channel, method=method,
                                  model=run.model, which=which, n=n, progress=False)
    return proj.rgb


def channel_histogram(run: DashRun, layer: str, channel: int) -> Optional[Dict[str, Any]]:
    r"""The channel's activation histogram over every position of every image, or None
    when the run was mined without statistics.

    Returns:
        dict: ``edges`` (B + 1,) and ``counts`` (B,) trimmed to the non-empty range,
        ``underflow`` / ``overflow`` counts, ``mean``, ``fraction_positive``, ``count``,
        ``min``, ``max``.
    """
    if layer not in run.result.channel_stats:
        return None
    st = run.result.stats(layer)
    counts = st.counts[channel].numpy()
    edges = st.edges.numpy()
    nz = np.flatnonzero(counts)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, len(counts))
    return {
        "edges": edges[lo : hi + 1].astype(float),
        "counts": counts[lo:hi].astype(np.int64),
        "underflow": int(st.underflow[channel]),
        "overflow": int(st.overflow[channel]),
        "mean": float(st.mean[channel]),
        "fraction_positive": float(st.fraction_positive[channel]),
        "count": int(st.count[channel]),
        "min": float(st.min[channel]),
        "max": float(st.max[channel]),
        "n_images": int(st.n_images),
    }


def channel_classes(run: DashRun, layer: str, channel: int, which: str = "top",
                    top: int = 5) -> List[Tuple[str, int]]:
    r"""Which classes drive the channel: label names of its top-k images with their counts,
    most frequent first (unlabelled images not counted); empty when no record has a label."""
    counts: Dict[int, int] = {}
    for r in run.result.records(layer, channel, which):
        if r.label >= 0:
            counts[r.label] = counts.get(r.label, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(run.label_name(lab), c) for lab, c in ranked]


def record_image(run: DashRun, record: PatchRecord, color: Tuple[int, int, int] = (255, 215, 0),
                 width: Optional[int] = None) -> np.ndarray:
    r"""The whole model input of a record's image with its receptive field drawn.

    The box is ``record.box`` (top, left, bottom, right; bottom / right exclusive) in the
    model-input pixels (after resize and centre crop), drawn as a ``width``-pixel outline
    just inside the box (default ``max(1, round(max(H, W) / 100))``).

    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8.
    """
    image = run.image_source()(record.index)
    rgb = to_display(image, mean=run.info.mean, std=run.info.std)[0]
    pil = Image.fromarray(rgb)
    width = width or max(1, round(max(rgb.shape[:2]) / 100))
    top, left, bottom, right = record.box
    if bottom > top and right > left:
        ImageDraw.Draw(pil).rectangle([left, top, right - 1, bottom - 1], outline=color, width=width)
    return np.asarray(pil)


def top1_grid(run: DashRun, layer: str, channels: Sequence[int], which: str = "top",
              patch_px: int = 64, ncols: int = 8) -> Tuple[np.ndarray, List[int]]:
    r"""One image with the strongest patch of each of ``channels`` and its value under it;
    patches larger than ``patch_px`` are downscaled to it, smaller ones upscaled by an integer
    factor (nearest neighbour).

    Returns:
        (numpy.ndarray, list of int): the ``(H, W, 3)`` uint8 grid (cell ``j`` at row
        ``j // ncols``, column ``j % ncols``) and the channels shown (those with a record).
    """
    shown, crops, values = [], [], []
    src = run.image_source()
    for c in channels:
        recs = run.result.records(layer, c, which)
        if not recs:
            continue
        crops.append(run.result.patches(src, layer, c, which, n=1)[0])
        values.append(recs[0].value)
        shown.append(int(c))
    if not crops:
        return np.full((8, 8, 3), 255, np.uint8), []
    batch = torch.stack(crops)
    h, w = batch.shape[-2:]
    scale = max(1, patch_px // max(h, w))  # small fields: nearest-neighbour upscaling
    if max(h, w) > patch_px:  # large fields: antialiased downscaling
        size = (max(1, round(h * patch_px / max(h, w))), max(1, round(w * patch_px / max(h, w))))
        batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", antialias=True,
                                                align_corners=False)
    labels = [f"{c}: {v:.2f}" for c, v in zip(shown, values)]
    grid = patch_grid(batch, values=labels, ncols=ncols, scale=scale, mean=run.info.mean, std=run.info.std)
    return np.asarray(grid), shown


def sheet(tiles: np.ndarray, labels: Optional[Sequence[Any]] = None, target_px: int = 96,
          ncols: int = 3) -> np.ndarray:
    r"""Lay ``(n, h, w, 3)`` uint8 tiles out as a grid like the Zeiler & Fergus figures, with
    ``labels`` (numbers or text) under the tiles. Tiles smaller than ``target_px`` are
    upscaled by the largest integer factor that keeps their longer side <= ``target_px``
    (nearest neighbour: pixels stay visible); larger ones are downscaled to it (antialiased).

    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8 (a small white image when there is no tile).
    """
    tiles = np.asarray(tiles)
    if len(tiles) == 0:
        return np.full((8, 8, 3), 255, np.uint8)
    h, w = tiles.shape[1], tiles.shape[2]
    scale = max(1, target_px // max(h, w))
    if max(h, w) > target_px:
        f = target_px / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        tiles = np.stack([np.asarray(Image.fromarray(t).resize(size, Image.Resampling.LANCZOS)) for t in tiles])
    chw = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))
    return np.asarray(patch_grid(torch.from_numpy(chw), values=labels, ncols=ncols, scale=scale))


# --------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------


def conv_layers(model: nn.Module) -> List[str]:
    r"""Dotted names of the model's ``nn.Conv2d`` layers, in order (the first is layer 1)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def filter_view(model: nn.Module, layer: Optional[str] = None, mode: str = "auto",
                ncols: Optional[int] = None) -> Dict[str, Any]:
    r"""Filters of a convolution as one image, with per-pixel hover text and per-channel norms.

    Args:
        model (nn.Module): the model.
        layer (str, optional): a convolution's dotted name; default the first one.
        mode (str): ``"auto"``, ``"rgb"``, ``"mean"`` or ``"norm"``
            (:func:`captum_topk.filters.filter_grid`).
        ncols (int, optional): tiles per row.
    Returns:
        dict: ``image`` (H, W, 3) uint8 at one pixel per weight (pad 1); ``hover`` (H, W)
        strings (channel, L2 norm; input channel too in ``"norm"`` mode; empty on separators);
        ``l2_norm`` (out,) float; ``mode`` used; ``layer``; ``shape`` (out, in, kh, kw).
    """
    from .filters import filter_grid, filter_stats, grid_layout

    names = conv_layers(model)
    if not names:
        raise ValueError("This model has no nn.Conv2d layer to draw.")
    layer = layer or names[0]
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"Unknown layer {layer!r}; convolutions: {', '.join(names[:8])}...")
    stats = filter_stats(module)
    out_c, in_c, kh, kw = stats["shape"]
    if mode == "auto":
        mode = "rgb" if in_c == 3 else ("norm" if kh * kw == 1 else "mean")
    norms = stats["l2_norm"]
    if mode == "norm":
        image = filter_grid(module, mode="norm", scale=1)
        kernel = stats["kernel_l2_norm"]
        hover = np.array([[f"channel {o} ← input {i}<br>kernel ‖w‖ = {kernel[o, i]:.3f}<br>filter ‖w‖ = {norms[o]:.3f}"
                           for i in range(in_c)] for o in range(out_c)], dtype=object)
    else:
        image = filter_grid(module, mode=mode, scale=1, pad=1, ncols=ncols, pad_value=255)
        nrows, ncols_used, height, width = grid_layout(out_c, (kh, kw), ncols, 1)
        hover = np.full((height, width), "", dtype=object)
        for j in range(out_c):
            r, c = divmod(j, ncols_used)
            y, x = 1 + r * (kh + 1), 1 + c * (kw + 1)
            hover[y : y + kh, x : x + kw] = f"channel {j}<br>‖w‖ = {norms[j]:.3f}"
    return {"image": image, "hover": hover, "l2_norm": np.asarray(norms, float), "mode": mode,
            "layer": layer, "shape": (out_c, in_c, kh, kw)}


# --------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------


def run_embeddings(run: DashRun, layer: str, max_images: int = 2000,
                   progress: Progress = None) -> Tuple[np.ndarray, List[str], List[int]]:
    r"""Global-average-pooled embeddings of ``layer`` for the run's images (the first
    ``max_images``), cached on disk in ``<run>/embeddings/<layer>.npy`` (+ ``.json``).

    Returns:
        (numpy.ndarray, list of str, list of int): ``(N, C)`` float32, image ids, labels.
    """
    from .embed import embed, load_embeddings, pool_features

    n = min(len(run.dataset), max_images)
    out = run.path / "embeddings" / f"{_slug(layer)}-{n}.npy"
    if out.is_file() and out.with_suffix(".json").is_file():
        try:
            emb, ids, meta = load_embeddings(out)
            return emb, ids, [int(v) for v in meta.get("labels", [-1] * len(ids))]
        except (ValueError, OSError):
            pass  # damaged cache: recompute
    dataset = run.dataset.subset(range(n)) if n < len(run.dataset) else run.dataset
    if run.model is not None:
        emb, ids = embed(run.model, layer, dataset, batch_size=16, out=out, progress=False)
        _, _, meta = load_embeddings(out)
        return emb, ids, [int(v) for v in meta["labels"]]
    from .embed import _save  # ONNX Runtime: the same file format
    from .onnx import OnnxTopKPatches

    miner = OnnxTopKPatches(str(run.result.metadata["onnx_path"]), [layer], k=1, progress_rf=False)
    chunks, ids, labels = [], [], []
    for batch in make_loader(dataset, batch_size=16):
        chunks.append(pool_features(miner.attribute(batch[0])).numpy())
        ids += list(batch[2])
        labels += [int(v) for v in batch[1]]
        _notify(progress, "embedding", len(ids), n)
    emb = np.concatenate(chunks).astype(np.float32)
    _save(emb, ids, labels, out, {"layer": layer, "model": run.info.name})
    return emb, ids, labels


def pca_2d(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    r"""Project rows of ``x`` on their first two principal components.

    Centred, SVD; each component's sign is fixed so that its largest-magnitude loading is
    positive (deterministic output).

    Args:
        x (numpy.ndarray): ``(N, C)``.
    Returns:
        (numpy.ndarray, numpy.ndarray): ``(N, 2)`` coordinates and the ``(2,)`` fractions of
        the total variance they explain (zeros past the rank).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"pca_2d needs an (N, C) array, got shape {x.shape}.")
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = np.zeros((2, x.shape[1]))
    k = min(2, vt.shape[0])
    comps[:k] = vt[:k]
    for i in range(k):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] = -comps[i]
    total = float((s**2).sum())
    var = np.zeros(2)
    var[:k] = (s[:k] ** 2) / total if total > 0 else 0.0
    return xc @ comps.T, var


def nearest_neighbours(x: np.ndarray, index: int, n: int = 5) -> List[Tuple[int, float]]:
    r"""The ``n`` rows of ``x`` closest to row ``index`` by cosine similarity (itself excluded).

    Returns:
        list of (int, float): row and cosine similarity, most similar first (ties: lower row).
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    norms[norms == 0] = 1.0
    unit = x / norms[:, None]
    sims = unit @ unit[index]
    order = sorted((j for j in range(len(x)) if j != index), key=lambda j: (-sims[j], j))
    return [(j, float(sims[j])) for j in order[:n]]


def thumbnails(run: DashRun, ids: Sequence[str], px: int = 48, data_uri: bool = True) -> List[Any]:
    r"""Thumbnails (at most ``px`` wide and high, aspect kept) of the images with these ids, as
    the model saw them.

    Returns:
        list: ``data:image/png;base64,...`` strings (for plotly layout images) with
        ``data_uri``, else ``(h, w, 3)`` uint8 arrays.
    """
    out: List[Any] = []
    for image_id in ids:
        rgb = to_display(run.dataset[run.dataset.index_of(image_id)][0], mean=run.info.mean,
                         std=run.info.std)[0]
        pil = Image.fromarray(rgb)
        pil.thumbnail((px, px))
        if not data_uri:
            out.append(np.asarray(pil))
            continue
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


# --------------------------------------------------------------------------------------
# comparisons (issue 5's captum_topk.compare, when present)
# --------------------------------------------------------------------------------------


def find_finetuned(roots: Roots) -> Optional[str]:
    r"""The newest fine-tuned checkpoint under the checkpoints root (relative path), or None.

    Fine-tuned checkpoints are those whose name holds ``finetuned`` (what ``captum-topk
    finetune`` writes), per-epoch ones (``-epochNN``) and linear probes left out.
    """
    files = [f for f in list_files(roots.checkpoints, CHECKPOINT_EXTENSIONS)
             if "finetuned" in Path(f).name and "-epoch" not in Path(f).name
             and "linear-probe" not in Path(f).name]
    if not files:
        return None
    return max(files, key=lambda f: ((roots.checkpoints / f).stat().st_mtime, f))


def like_run(run: "DashRun", checkpoint: str, roots: Roots) -> JobSpec:
    r"""A job mining ``checkpoint`` exactly like ``run`` (same architecture name, layers, data,
    k and input size), so that the two can be compared channel by channel.

    Raises:
        ValueError: the run's images are in a folder outside the data root.
    """
    m = run.result.metadata
    desc = m.get("data") or {"kind": "demo"}
    data = None
    if desc.get("kind") != "demo":
        folder = Path(str(desc.get("root", ""))).resolve()
        if not _within(folder, roots.data):
            raise ValueError(f"The run's images ({folder}) are outside the data root {roots.data}.")
        data = folder.relative_to(roots.data).as_posix() or "."
    return JobSpec(model=str(m.get("model_name", DEFAULT_MODEL)), checkpoint=checkpoint,
                   layers=tuple(run.layers), data=data, k=run.result.k,
                   input_size=int(run.info.input_size[0]))


def matching_layers(run_a: "DashRun", run_b: "DashRun") -> List[str]:
    r"""Layers whose channels correspond one to one in both runs: same name, same number of
    channels, and the same architecture (an ONNX Runtime run matches any: it is an export)."""
    arch_a, arch_b = run_a.info.arch, run_b.info.arch
    if arch_a and arch_b and "onnx" not in (arch_a, arch_b) and arch_a != arch_b:
        return []
    return [layer for layer in run_a.layers if layer in run_b.layers
            and run_a.result.num_channels(layer) == run_b.result.num_channels(layer)]


def shared_images(result_a: TopKResult, result_b: TopKResult, layer: str, channel: int,
                  which: str = "top") -> int:
    r"""How many images are in both results' top-k (or bottom-k) of one channel (by image
    index: meaningful when both runs mined the same images in the same order)."""
    a = {r.index for r in result_a.records(layer, channel, which)}
    b = {r.index for r in result_b.records(layer, channel, which)}
    return len(a & b)


def compare_status(run_a: Optional["DashRun"] = None, run_b: Optional["DashRun"] = None) -> Optional[str]:
    r"""None when :func:`compare_runs` can compare these runs, else a sentence saying why not
    (:mod:`captum_topk.compare` missing, or a run without its PyTorch model)."""
    try:
        from .compare import compare_models  # noqa: F401
    except ImportError as exc:
        return (f"captum_topk.compare is not available ({exc}): the CKA heatmap and the ranking "
                "of changed channels need it. The side-by-side view works without it.")
    for tag, run in (("A", run_a), ("B", run_b)):
        if run is not None and run.model is None:
            return (f"Run {tag} was mined through ONNX Runtime: CKA and the channel ranking run both "
                    "PyTorch models over the images; pick PyTorch runs for them.")
    return None


def compare_runs(run_a: "DashRun", run_b: "DashRun", max_images: int = 500,
                 batch_size: int = 16) -> Dict[str, Any]:
    r"""Layer-by-layer CKA and per-channel changes between the models of two runs, on the
    images of ``run_a`` (through :func:`captum_topk.compare.compare_models`, one streamed pass
    of both models; B gets A's images re-normalised when their preprocessing differs).

    Returns:
        dict: ``cka`` (La, Lb) float array, ``layers_a``, ``layers_b``, ``n_images``,
        ``channels`` (layer -> ranked rows: ``rank``, ``channel``, ``score``,
        ``correlation``, ``jaccard``, ``drift``; for same-name, same-width layers),
        ``score_formula``.
    """
    from .compare import compare_models

    why = compare_status(run_a, run_b)
    if why:
        raise ValueError(why)
    input_map = None
    ia, ib = run_a.info, run_b.info
    if tuple(ia.mean) != tuple(ib.mean) or tuple(ia.std) != tuple(ib.std):
        ma, sa = torch.tensor(ia.mean).view(1, 3, 1, 1), torch.tensor(ia.std).view(1, 3, 1, 1)
        mb, sb = torch.tensor(ib.mean).view(1, 3, 1, 1), torch.tensor(ib.std).view(1, 3, 1, 1)

        def input_map(x: Tensor) -> Tensor:  # A's normalisation -> B's
            return ((x * sa + ma) - mb) / sb

    n = min(len(run_a.dataset), max_images)
    data = run_a.dataset.subset(range(n)) if n < len(run_a.dataset) else run_a.dataset
    cmp = compare_models(run_a.model, run_b.model, data, run_a.layers, run_b.layers, k=run_a.result.k,
                         batch_size=max(4, batch_size), input_map_b=input_map, progress=False)
    return {"cka": np.asarray(cmp.cka, float), "layers_a": list(cmp.layers_a), "layers_b": list(cmp.layers_b),
            "n_images": cmp.n_images, "channels": {name: ch.rows() for name, ch in cmp.channels.items()},
            "score_formula": "((1 - correlation) / 2 + (1 - jaccard) + drift / 2) / 3"}


# --------------------------------------------------------------------------------------
# warm-up entry point (make run)
# --------------------------------------------------------------------------------------


def _warm(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m captum_topk.dashboard_data",
                                description="Prepare the dashboard: mine the default run if missing.")
    p.add_argument("command", choices=["warm"], help="mine the default run (and its embeddings) if missing")
    p.add_argument("--base", default=None, help="folder of the default roots (default: current directory)")
    args = p.parse_args(argv)
    roots = Roots.from_env(args.base)
    t0 = time.monotonic()

    def report(phase: str, done: int, total: Optional[int]) -> None:
        if phase in ("loading", "receptive fields"):
            print(f"  {phase}...", flush=True)

    try:
        folder = ensure_default_run(roots, progress=report)
        run = open_run(folder)
        run_embeddings(run, run.layers[-1])
    except (ValueError, FileNotFoundError) as exc:
        print(f"dashboard warm-up failed: {exc}", file=sys.stderr)
        return 2
    print(f"dashboard ready: default run {folder} ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_warm())
