r"""Caches of measured receptive fields: in-process (LRU) and on disk, keyed by the model's structural signature.

A field depends only on the structure of the model (weights change neither the trace nor how NaN
propagates), and tracing or probing it costs forward passes. Disk entries are keyed by the in-process
key plus the torch version and a hash of this package's source (tracer, rules and probe alike: a change
of any invalidates them). An entry records which method produced it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional
import torch
from torch import nn
from ..utils.files import atomic_torch_save
from .field import ReceptiveField



_CACHE_MAXSIZE = 256


_CACHE: "OrderedDict[tuple, ReceptiveField]" = OrderedDict()


_CACHE_LOCK = threading.Lock()


_SOURCE_HASHES: Dict[type, str] = {}


def _class_source_hash(cls: type) -> str:
    cached = _SOURCE_HASHES.get(cls)
    if cached is None:
        try:
            text = inspect.getsource(cls)
        except (OSError, TypeError):
            text = f"{cls.__module__}.{cls.__qualname__}"
        cached = hashlib.sha1(text.encode()).hexdigest()[:16]
        _SOURCE_HASHES[cls] = cached
    return cached


def _structural_signature(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, m in model.named_modules():
        cls = type(m)
        h.update(f"{name}={cls.__module__}.{cls.__qualname__}@{_class_source_hash(cls)};".encode())
    h.update(repr(model).encode())
    return h.hexdigest()


def cache_dir() -> Optional[Path]:
    r"""Folder of the persistent receptive-field cache: ``$CAPTUM_TOPK_CACHE_DIR``, default
    ``~/.cache/captum_topk/receptive_fields``; ``CAPTUM_TOPK_CACHE_DIR=""`` disables it."""
    env = os.environ.get("CAPTUM_TOPK_CACHE_DIR")
    if env is not None:
        return Path(env) / "receptive_fields" if env else None
    return Path.home() / ".cache" / "captum_topk" / "receptive_fields"


@functools.lru_cache(maxsize=1)
def _module_hash() -> str:
    """Hash of the code that measures fields (this folder's modules): a changed probe
    invalidates every disk entry."""
    h = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _disk_path(key: tuple) -> Optional[Path]:
    folder = cache_dir()
    if folder is None:
        return None
    text = repr((key, torch.__version__, _module_hash()))
    return folder / f"{hashlib.sha1(text.encode()).hexdigest()}.pt"


def _disk_get(key: tuple) -> Optional["ReceptiveField"]:
    path = _disk_path(key)
    if path is None or not path.exists():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return ReceptiveField(d["boxes"], tuple(d["input_size"]), tuple(d["size"]), tuple(d["stride"]),
                              str(d.get("method", "probe")))
    except Exception:  # a corrupt entry is just a miss
        return None


def _disk_put(key: tuple, rf: "ReceptiveField") -> None:
    path = _disk_path(key)
    if path is None:
        return
    try:
        atomic_torch_save({"boxes": rf.boxes, "input_size": list(rf.input_size),
                           "size": list(rf.size), "stride": list(rf.stride), "method": rf.method}, path)
    except OSError:  # a read-only home is no reason to fail
        pass


def clear_receptive_field_cache(disk: bool = False) -> None:
    r"""Empty the in-process receptive-field cache (and the persistent one with ``disk``)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    folder = cache_dir()
    if disk and folder is not None and folder.is_dir():
        for p in folder.glob("*.pt"):
            p.unlink(missing_ok=True)
