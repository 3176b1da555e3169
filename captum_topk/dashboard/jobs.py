r"""Dashboard jobs: a :class:`~captum_topk.dashboard.spec.JobSpec` (what the form says, paths
relative to the roots) becomes a :class:`~captum_topk.runs.spec.RunSpec` and is mined by the run
layer (:func:`captum_topk.runs.mine.mine_run`: snapshots, resume, lock, reuse of a finished run of
the same resolved spec). Also: the embedded default run, ONNX export for ONNX Runtime jobs, the
layers a job's model offers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from torch import nn

from ..models.info import ModelInfo
from ..runs.mine import Progress, find_run, mine_run
from ..runs.models import load_run_model
from ..runs.spec import RunSpec
from .roots import Roots, resolve_under
from ..runs.layers import suggest_layers
from ..models.ecosystem import parse_model_spec
from .spec import DEFAULT_SPEC, FACTORIES_ENV, JobSpec, allowed_factories

__all__ = [
    "HISTOGRAM_BINS",
    "run_spec",
    "find_job",
    "mine_job",
    "ensure_default_run",
    "onnx_available",
    "job_model",
    "job_model_spec",
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
    concepts = tuple(str(resolve_under(roots.runs, c, kind="file")) for c in spec.concepts)
    if spec.onnx:
        return RunSpec(model="", onnx=str(resolve_under(roots.onnx, spec.onnx, kind="file")),
                       layers=tuple(spec.layers), data=data, k=spec.k, batch_size=spec.batch_size,
                       input_size=spec.input_size, max_images=spec.max_images, stats_bins=HISTOGRAM_BINS,
                       backend="onnxruntime", concepts=concepts)
    checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
    return RunSpec(model=job_model_spec(spec, roots), checkpoint=checkpoint, layers=tuple(spec.layers), data=data, k=spec.k,
                   batch_size=spec.batch_size, input_size=spec.input_size, max_images=spec.max_images,
                   stats_bins=HISTOGRAM_BINS, backend=spec.backend, concepts=concepts)


def job_model_spec(spec: JobSpec, roots: Roots) -> str:
    r"""The model spec a job's PyTorch model is loaded from: an ``hf:`` folder resolved under the
    checkpoints root; a factory only when :func:`~.spec.allowed_factories` lists it.

    Raises:
        UnsafePathError: the folder leaves the checkpoints root. ValueError: a factory that is
        not allowed, or a checkpoint with an ``hf:`` folder (it holds its own weights).
    """
    kind, target = parse_model_spec(spec.model) if spec.model else ("named", "")
    if kind == "hf":
        if spec.checkpoint:
            raise ValueError("A Hugging Face folder holds its own weights: pick no checkpoint.")
        return f"hf:{resolve_under(roots.checkpoints, target, kind='dir')}"
    if kind == "factory" and spec.model not in allowed_factories():
        raise ValueError(f"The model factory {spec.model!r} is not allowed here: building it runs Python code. "
                         f"List it in ${FACTORIES_ENV} (comma-separated) where the dashboard starts.")
    if kind == "onnx":
        raise ValueError("Pick an ONNX file as the ONNX model source (under the onnx root), not as the model name.")
    return spec.model


def find_job(spec: JobSpec, roots: Roots) -> Optional[Path]:
    r"""The run folder of a finished job with exactly these settings, weights and images, or None
    (``backend="auto"`` matches a finished run of either engine)."""
    try:
        resolved = run_spec(spec, roots).resolve()
    except (OSError, ValueError):
        return None
    folder = roots.runs / spec.run_name()
    engines = [resolved.backend] if resolved.backend != "auto" else ["onnxruntime", "torch"]
    return folder if any(find_run(dataclasses.replace(resolved, backend=e), folder) for e in engines) else None


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
             should_stop=should_stop, onnx_root=roots.onnx)
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


def job_model(spec: JobSpec, roots: Roots) -> Tuple[nn.Module, ModelInfo]:
    r"""The PyTorch model and preprocessing of a (non-ONNX) job, its checkpoint resolved
    under the checkpoints root."""
    checkpoint = str(resolve_under(roots.checkpoints, spec.checkpoint, kind="file")) if spec.checkpoint else None
    return load_run_model(job_model_spec(spec, roots), checkpoint, spec.input_size)


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
