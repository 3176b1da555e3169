r"""Opening a run folder for the dashboard, which trusts nothing it reads: the folder must be under
the runs root, the result file is checked as it is read (:meth:`TopKResult.from_payload`), and
every path the run names (images, checkpoint, ONNX file, a model given as a file) must lie under
the configured roots before anything is opened. A refusal is an ``UnsafePathError`` / ``ValueError``
the page shows; the app goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..models.registry import list_models
from ..runs.folder import Run, open_run
from ..utils.files import PathLike
from .roots import Roots, UnsafePathError, _within

__all__ = ["open_run_within", "check_run_paths"]


def check_run_paths(meta: Dict[str, Any], settings: Dict[str, Any], roots: Roots) -> None:
    r"""Refuse a run that names a path outside the roots.

    Args:
        meta (dict): the result's metadata; settings (dict): its ``run.json``.
        roots (Roots): the dashboard's roots.
    Raises:
        UnsafePathError: the images, checkpoint, ONNX file or model file lie outside their roots.
    """
    spec = settings.get("spec") if isinstance(settings.get("spec"), dict) else {}
    data = meta.get("data") or {}
    if isinstance(data, dict) and data.get("kind", "demo") != "demo":
        _inside(data.get("root"), roots.data, "its images")
    for key, root, what in (("checkpoint", roots.checkpoints, "its checkpoint"), ("onnx_path", roots.onnx, "its ONNX file")):
        for value in (meta.get(key), spec.get(key if key != "onnx_path" else "onnx")):
            if value:
                _inside(value, root, what)
    model = meta.get("model_name") or spec.get("model")
    if model and str(model) not in list_models(available_only=False) and ("/" in str(model) or Path(str(model)).suffix):
        _inside(model, roots.checkpoints, "its model file")


def _inside(path: Any, root: Path, what: str) -> None:
    if not isinstance(path, str) or not path or not _within(Path(path).resolve(), Path(root).resolve()):
        raise UnsafePathError(f"This run names {what} at {path!r}, outside the configured root {root}: "
                              "the dashboard opens nothing outside its roots (set the CAPTUM_TOPK_*_ROOT "
                              "variables to include it).")


def open_run_within(path: PathLike, roots: Roots) -> Run:
    r"""A run folder as :func:`captum_topk.runs.folder.open_run` opens it, refused (with the reason)
    when it lies outside ``roots.runs`` or names a path outside the other roots.

    Args:
        path (str): the run folder (or its ``result.pt``).
        roots (Roots): the dashboard's roots (library code that trusts the folder calls
            :func:`~captum_topk.runs.folder.open_run`).
    Returns:
        Run
    Raises:
        UnsafePathError: a path outside the roots. ValueError: a damaged result / run.json.
        FileNotFoundError: no result.
    Example::
        >>> run = open_run_within("results/mnv2", Roots.from_env())
    """
    folder = Path(path)
    if not _within(folder.resolve(), Path(roots.runs).resolve()):
        raise UnsafePathError(f"{folder} is outside the runs root {roots.runs}.")
    return open_run(folder, guard=lambda meta, settings: check_run_paths(meta, settings, roots))
