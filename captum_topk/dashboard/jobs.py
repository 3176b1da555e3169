r"""Dashboard jobs: a :class:`~captum_topk.dashboard.spec.JobSpec` (what the form says, paths
relative to the roots) becomes a :class:`~captum_topk.runs.spec.RunSpec` and is mined by the run
layer (:func:`captum_topk.runs.mine.mine_run`: snapshots, resume, lock, reuse of a finished run of
the same resolved spec). Also: the embedded default run, ONNX export for ONNX Runtime jobs, the
layers a job's model offers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from torch import nn

from ..models.info import ModelInfo
from ..runs.mine import Progress, find_run, mine_run, notify
from ..runs.models import load_run_model
from ..runs.spec import RunSpec
from ..utils.files import file_digest
from ..utils.naming import slug
from .roots import Roots, resolve_under
from ..runs.layers import suggest_layers
from .spec import DEFAULT_SPEC, JobSpec

__all__ = [
    "HISTOGRAM_BINS",
    "run_spec",
    "find_job",
    "mine_job",
    "ensure_default_run",
    "onnx_available",
    "export_for_ort",
    "job_model",
    "job_layers",
    "suggest_layers",
]

# Histogram of dashboard jobs: 256 bins of 0.125 over [-16, 16] (finer than the library default of
# 64 bins, for the per-channel histograms; C x 258 integers per layer).
HISTOGRAM_BINS = 256


def run_spec(spec: JobSpec, roots: Roots) -> RunSpec:
    r"""The run-layer spec of a job: its paths resolved under ``roots`` (refusing any that
    leave them, :func:`~.roots.resolve_under`), statistics on.

    Raises:
        UnsafePathError: a path leaves its root. FileNotFoundError: a missing file or folder.
    """
    data = str(resolve_under(roots.data, spec.data, kind="dir")) if spec.data else None
    if spec.onnx:
        return RunSpec(model="", onnx=str(resolve_under(roots.onnx, spec.onnx, kind="file")),
                       layers=tuple(spec.layers), data=data, k=spec.k, batch_size=spec.batch_size,
                       input_size=spec.input_size, max_images=spec.max_images, stats_bins=HISTOGRAM_BINS)
    checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
    return RunSpec(model=spec.model, checkpoint=checkpoint, layers=tuple(spec.layers), data=data, k=spec.k,
                   batch_size=spec.batch_size, input_size=spec.input_size, max_images=spec.max_images,
                   stats_bins=HISTOGRAM_BINS)


def find_job(spec: JobSpec, roots: Roots) -> Optional[Path]:
    r"""The run folder of a finished job with exactly these settings, weights and images, or None."""
    try:
        resolved = run_spec(spec, roots).resolve()
    except (OSError, ValueError):
        return None
    return find_run(resolved, roots.runs / spec.run_name())


def mine_job(spec: JobSpec, roots: Roots, progress: Progress = None, reuse: bool = True,
             should_stop: Optional[Callable[[], bool]] = None) -> Path:
    r"""Mine ``spec`` into ``roots.runs / spec.run_name()`` through the run layer.

    The folder has the layout of ``captum-topk mine`` (``run.json`` + ``result.pt``, written
    atomically; locked while mining), so ``captum-topk show`` opens it too. Per-channel
    statistics are gathered in the same pass (:data:`HISTOGRAM_BINS`). A finished run of the
    same resolved spec (same weights bytes, same image files) is reused; a stopped one
    (``should_stop``) is resumed from its snapshot.

    Args:
        spec (JobSpec): what to mine.
        roots (Roots): the configured roots.
        progress (Callable, optional): ``progress(phase, done, total)``; phases ``"loading"``,
            ``"mining"`` (images done / total after every batch), ``"saving"``, ``"done"``.
        reuse (bool): return an existing run with the same settings without mining.
        should_stop (Callable, optional): checked before each batch (a cancel button).
    Returns:
        Path: the run folder.
    Raises:
        UnsafePathError: a path of ``spec`` leaves its root. RunLockedError: the folder is
        being mined. ValueError / FileNotFoundError: a model, checkpoint or dataset that
        cannot be used (readable message).
    Example::
        >>> folder = mine_job(JobSpec(layers=("features.3",)), Roots.from_env(),
        ...                   progress=lambda phase, done, total: print(phase, done, total))
    """
    if not spec.layers:
        raise ValueError("Pick at least one layer to mine.")
    folder = roots.runs / spec.run_name()
    stopped = (folder / "snapshot.pt").is_file() and not (folder / "result.pt").is_file()
    mine_run(run_spec(spec, roots), folder, reuse=reuse, resume=stopped, progress=progress or (lambda *a: None),
             should_stop=should_stop)
    return folder


def ensure_default_run(roots: Roots, progress: Progress = None) -> Path:
    r"""The run folder of the embedded default (:data:`DEFAULT_SPEC`: MobileNetV2-ImageNet,
    ``features.3`` / ``.7`` / ``.11``, packaged photos), mined first if missing (~10 s, plus
    the receptive-field measurement the first time on a machine, cached on disk)."""
    return mine_job(DEFAULT_SPEC, roots, progress=progress)


def onnx_available() -> Optional[str]:
    r"""None when the ONNX Runtime backend can be used, else why not."""
    try:
        import onnxruntime  # noqa: F401

        from .. import onnx as _onnx  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"ONNX backend unavailable: {type(exc).__name__}: {exc}"
    return None


def _weights_sha1(spec: JobSpec, roots: Roots) -> Optional[str]:
    if spec.checkpoint:
        return file_digest(resolve_under(roots.checkpoints, spec.checkpoint, kind="file"))
    return None


def export_for_ort(spec: JobSpec, roots: Roots, progress: Progress = None) -> JobSpec:
    r"""Export the PyTorch model of ``spec`` with its layers to ONNX under ``roots.onnx``
    (reused when already there, keyed by the checkpoint's bytes) and return the spec that
    mines it with ONNX Runtime."""
    from ..onnx.export import export

    name = slug(spec.model or 'model', keep='_.-')
    if spec.checkpoint:
        name += "+" + slug(Path(spec.checkpoint).stem, keep="_.-")
    weights = _weights_sha1(spec, roots)  # a checkpoint replaced under its name gets a new export
    name += "-" + hashlib.sha1(json.dumps([list(spec.layers), spec.input_size, spec.checkpoint, weights]).encode()).hexdigest()[:8]
    target = roots.onnx / f"{name}.onnx"
    if not (target.is_file() and Path(str(target) + ".json").is_file()):
        notify(progress, "export", 0, None)
        net, info = job_model(spec, roots)
        export(net, list(spec.layers), target, input_size=info.input_size, info=info, progress=False)
    return dataclasses.replace(spec, onnx=target.relative_to(roots.onnx).as_posix(), checkpoint=None,
                               model="", input_size=None)


def job_model(spec: JobSpec, roots: Roots) -> Tuple[nn.Module, ModelInfo]:
    r"""The PyTorch model and preprocessing of a (non-ONNX) job, its checkpoint resolved
    under the checkpoints root."""
    checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
    return load_run_model(spec.model, checkpoint, spec.input_size)


def job_layers(spec: JobSpec, roots: Roots, model: Optional[nn.Module] = None) -> List[str]:
    r"""The layer names a job can mine: every named submodule of the PyTorch model, or the
    minable tensors of the ONNX file (its exported layers first)."""
    if spec.onnx:
        from ..onnx.graph import list_tensors, load_onnx
        from ..onnx.sidecar import load_sidecar

        path = resolve_under(roots.onnx, spec.onnx, kind="file")
        sc = load_sidecar(path)
        names = list(sc.layers) if sc is not None else []
        names += [t.name for t in list_tensors(load_onnx(path)) if t.name not in names]
        return names
    if model is None:
        model, _ = job_model(spec, roots)
    return [n for n, _ in model.named_modules() if n]
