r"""Which engine mines a run: PyTorch eager or ONNX Runtime.

``backend="auto"`` (the default of ``captum-topk mine`` and of the dashboard) mines through ONNX
Runtime on CPU, which runs the same graph 1.3-4x faster than PyTorch eager on the 2-core
machines measured (``docs/performance.md``), when the model exports and passes the export's
parity check (ONNX Runtime against PyTorch on real photos, :func:`captum_topk.onnx.export`);
PyTorch on a GPU, for an ONNX file given as the model (ONNX Runtime, naturally), or when the
export fails — saying why, once. The export is cached in the ONNX folder under a name keyed by
the weights' digest, the layers and the input size, so a second run starts at once.

Records equal the PyTorch backend's up to float ties: ONNX Runtime computes the same
convolutions with other kernels (differences of about 1e-6 relative, checked below
``atol + rtol * max|torch|`` with ``atol = rtol = 1e-4`` by the export), so two activations closer
than that may be ranked in the other order; nothing else differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..utils.files import PathLike
from ..utils.naming import slug
from .models import load_run_model
from .spec import RunSpec, model_label

__all__ = ["choose_backend", "onnx_export_path", "export_for_onnxruntime", "onnx_root", "ExportFailed"]


class ExportFailed(RuntimeError):
    r"""The model loaded but did not export to a faithful ONNX graph (the reason is the message)."""

_WARNED = set()


def onnx_root() -> Path:
    r"""Where exports for ONNX Runtime go: ``$CAPTUM_TOPK_ONNX_ROOT``, default ``onnx_models/``."""
    return Path(os.environ.get("CAPTUM_TOPK_ONNX_ROOT") or "onnx_models")


def onnx_export_path(spec: RunSpec, root: Optional[PathLike] = None) -> Path:
    r"""The cached export of a (resolved) spec's PyTorch model: ``<model>[+<checkpoint>]-<hash>.onnx``,
    the hash over the weights' digest, the layers, the input size and the layout options."""
    name = slug(model_label(spec.model) if spec.model else "model", keep="_.-")
    if spec.checkpoint:
        name += "+" + slug(Path(spec.checkpoint).stem, keep="_.-")
    key = json.dumps([spec.model, spec.weights_sha1, spec.random_init, list(spec.layers), spec.input_size,
                      spec.layout, spec.token_grid, spec.prefix_tokens])
    return Path(root or onnx_root()) / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.onnx"


def export_for_onnxruntime(spec: RunSpec, root: Optional[PathLike] = None, progress: bool = False) -> Path:
    r"""The ONNX file ONNX Runtime mines for ``spec`` (exported now unless cached).

    Raises:
        ExportFailed: the model does not export or fails the parity check.
        ValueError / FileNotFoundError: the model itself does not load (not an export problem).
    """
    target = onnx_export_path(spec, root)
    if target.is_file() and Path(str(target) + ".json").is_file():
        return target
    net, info = load_run_model(spec.model, spec.checkpoint, spec.input_size, spec.random_init)
    try:
        from ..onnx.export import export

        export(net.eval(), list(spec.layers), target, input_size=info.input_size, info=info, progress=progress)
    except Exception as exc:
        raise ExportFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
    return target


def choose_backend(spec: RunSpec, device: torch.device, root: Optional[PathLike] = None,
                   progress: bool = False) -> Tuple[RunSpec, Optional[Path], str]:
    r"""Resolve ``spec.backend == "auto"``.

    Args:
        spec (RunSpec): a resolved spec (weights digest known).
        device (torch.device): where a PyTorch run would go.
        root (str, optional): the ONNX folder for exports.
        progress (bool): a bar over the export steps.
    Returns:
        (RunSpec, Path or None, str): the spec with ``backend`` set, the ONNX file ONNX Runtime
        mines (None for PyTorch, or when the spec names its own ONNX file), and why.
    """
    if spec.rank_by is not None:  # relevance needs gradients
        if spec.onnx or spec.backend == "onnxruntime":
            raise ValueError("rank_by needs gradients: mine a PyTorch model with the PyTorch backend "
                             "(not an ONNX file, not --backend onnxruntime).")
        return dataclasses.replace(spec, backend="torch"), None, "rank_by needs gradients (PyTorch)"
    if spec.onnx:
        return dataclasses.replace(spec, backend="onnxruntime"), None, "an ONNX file was given"
    if spec.backend == "torch":
        return spec, None, "asked for"
    if spec.backend == "onnxruntime":
        return spec, export_for_onnxruntime(spec, root, progress), "asked for"
    if device.type != "cpu" or spec.half:
        return dataclasses.replace(spec, backend="torch"), None, "PyTorch on a GPU"
    try:
        import onnxruntime  # noqa: F401

        path = export_for_onnxruntime(spec, root, progress)
    except (ExportFailed, ImportError) as exc:  # mine with PyTorch, say why once
        reason = f"ONNX Runtime not used: {exc}"
        if reason not in _WARNED:
            _WARNED.add(reason)
            warnings.warn(reason + " (mining with PyTorch instead).", RuntimeWarning, stacklevel=3)
        return dataclasses.replace(spec, backend="torch"), None, reason
    return dataclasses.replace(spec, backend="onnxruntime"), path, "ONNX Runtime on CPU: the export passed its parity check"
