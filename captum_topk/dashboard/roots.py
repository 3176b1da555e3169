r"""The folders the dashboard may read and write, and safe paths inside them.

:class:`Roots` holds four folders (data, runs, checkpoints, ONNX models) from the environment
(``CAPTUM_TOPK_DATA_ROOT``, ``CAPTUM_TOPK_RUNS_ROOT``, ``CAPTUM_TOPK_CHECKPOINTS_ROOT``,
``CAPTUM_TOPK_ONNX_ROOT``) or under a base folder. Every path a user types goes through
:func:`resolve_under`: it must stay inside its root once ``..`` and symlinks are resolved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence


from ..data.images import IMAGE_EXTENSIONS
from ..utils.files import PathLike
from ..utils.files import walk

__all__ = [
    "app_base",
    "ENV_VARS",
    "DEFAULT_DIRS",
    "CHECKPOINT_EXTENSIONS",
    "UnsafePathError",
    "Roots",
    "resolve_under",
    "list_files",
    "list_data_folders",
    "list_model_folders",
]



ENV_VARS = {
    "data": "CAPTUM_TOPK_DATA_ROOT",
    "runs": "CAPTUM_TOPK_RUNS_ROOT",
    "checkpoints": "CAPTUM_TOPK_CHECKPOINTS_ROOT",
    "onnx": "CAPTUM_TOPK_ONNX_ROOT",
}


DEFAULT_DIRS = {"data": "data", "runs": "results", "checkpoints": "checkpoints", "onnx": "onnx_models"}


CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors")


_MAX_DEPTH = 3  # how deep listings look under a root


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


def app_base(app_file: PathLike) -> Path:
    r"""The folder whose ``data/``, ``results/``, ... are the app's default roots when no
    environment variable names them: the checkout that holds the app (``streamlit run
    app_streamlit/main.py`` in a clone), else the current directory (the app installed from a
    wheel lives in site-packages, which is nobody's data folder).

    Args:
        app_file (str or Path): the app's ``main.py`` or another file of ``app_streamlit/``.
    Returns:
        Path: the checkout's root or ``Path.cwd()``.
    """
    checkout = Path(app_file).resolve().parent
    checkout = checkout.parent if checkout.name == "pages" else checkout
    checkout = checkout.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "captum_topk").is_dir():
        return checkout
    return Path.cwd()


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
    return walk(root, max_depth)


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


def list_model_folders(root: PathLike) -> List[str]:
    r"""Folders under ``root`` (the checkpoints root) written by transformers' ``save_pretrained``
    (a ``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``), relative to it;
    symlinks resolving outside ``root`` are left out.

    Returns:
        list of str: sorted relative paths (``"vit-small"``, ``"hf/dinov2"``).
    """
    root_path = Path(root).resolve()
    out = []
    for folder, files in _walk(root_path):
        names = set(files)
        if "config.json" in names and names & {"model.safetensors", "pytorch_model.bin"}:
            if _within(folder.resolve(), root_path):
                out.append(folder.relative_to(root_path).as_posix())
    return sorted(out)
