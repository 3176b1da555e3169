r"""Mining a :class:`~captum_topk.dashboard.spec.JobSpec` for the dashboard: batch by batch
with a progress callback, reusing a finished run with the same settings; the embedded default
run; ONNX export for ONNX Runtime jobs; the layers a job's model offers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..utils.files import atomic_write_text, file_digest
from ..data.loader import make_loader
from ..models.info import ModelInfo
from ..runs.datasets import open_dataset
from .roots import Roots, resolve_under
from .runs import _model_for, _onnx_info
from .spec import DEFAULT_LAYERS, DEFAULT_SPEC, JobSpec, Progress, _notify
from ..utils.naming import slug

__all__ = [
    "HISTOGRAM_EDGES",
    "find_job",
    "mine_job",
    "ensure_default_run",
    "onnx_available",
    "export_for_ort",
    "job_model",
    "job_layers",
    "suggest_layers",
]

# Histogram edges of dashboard jobs: 256 bins of 0.125 over [-16, 16] (finer than the library
# default of 64 bins, for the per-channel histograms; C x 258 integers per layer).
HISTOGRAM_EDGES = torch.linspace(-16.0, 16.0, 257)


def find_job(spec: JobSpec, roots: Roots) -> Optional[Path]:
    r"""The run folder of a finished job with exactly these settings, or None."""
    folder = roots.runs / spec.run_name()
    if (folder / "result.pt").is_file():
        try:
            info = json.loads((folder / "run.json").read_text())
            if JobSpec.from_dict(info.get("job", {})) == spec and info.get("weights_sha1") == _weights_sha1(spec, roots):
                return folder
        except (OSError, ValueError, TypeError):
            return None
    return None


def _weights_sha1(spec: JobSpec, roots: Roots) -> Optional[str]:
    """Digest of the job's checkpoint or ONNX file (None for built-in weights): a file replaced
    under the same name (a new fine-tune) makes the old run stale."""
    if spec.onnx:
        return file_digest(resolve_under(roots.onnx, spec.onnx, kind="file"))
    if spec.checkpoint:
        return file_digest(resolve_under(roots.checkpoints, spec.checkpoint, kind="file"))
    return None


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
    from ..core.miner import LayerTopKPatches

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
        from ..onnx.runtime import OnnxTopKPatches

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
        "weights_sha1": _weights_sha1(spec, roots),
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
    stale = folder / "embeddings"  # cached from weights this run no longer has
    if stale.is_dir():
        shutil.rmtree(stale, ignore_errors=True)
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

        from .. import onnx as _onnx  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"ONNX backend unavailable: {type(exc).__name__}: {exc}"
    return None


def export_for_ort(spec: JobSpec, roots: Roots, progress: Progress = None) -> JobSpec:
    r"""Export the PyTorch model of ``spec`` with its layers to ONNX under ``roots.onnx``
    (reused when already there) and return the spec that mines it with ONNX Runtime."""
    from ..onnx.export import export

    name = slug(spec.model or 'model', keep='_.-')
    if spec.checkpoint:
        name += "+" + slug(Path(spec.checkpoint).stem, keep="_.-")
    weights = _weights_sha1(spec, roots)  # a checkpoint replaced under its name gets a new export
    name += "-" + hashlib.sha1(json.dumps([list(spec.layers), spec.input_size, spec.checkpoint, weights]).encode()).hexdigest()[:8]
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
