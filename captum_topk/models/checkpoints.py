r"""Reading user checkpoints safely (``torch.load(..., weights_only=True)``) and loading them strictly with errors that list what does not fit.
"""

from __future__ import annotations

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

import os
import pickle
import struct
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
import torch
from torch import Tensor, nn



# Keys under which training scripts commonly nest the state dict in a checkpoint.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")


# Keys under which a checkpoint may name its classes or its architecture.
_CATEGORY_KEYS = ("categories", "classes", "class_names")


_ARCH_KEYS = ("arch", "architecture", "model_name")


_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


def _strip_prefixes(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    r"""A copy of ``state_dict`` without the wrapper prefixes of :data:`_PREFIXES` (nested ones
    too: ``module.model.``), by torch's ``consume_prefix_in_state_dict_if_present``."""
    out: "OrderedDict[str, Any]" = OrderedDict(state_dict)
    while True:
        before = list(out)
        for p in _PREFIXES:
            consume_prefix_in_state_dict_if_present(out, p)
        if list(out) == before:
            return out


def _summarise(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)}: {shown}{more}"


def _load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], origin: str) -> None:
    r"""``load_state_dict(strict=True)`` with a readable ``ValueError`` on what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and isinstance(v, Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    non_tensor = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if missing or unexpected or mismatched or non_tensor:
        parts = [f"The checkpoint {origin} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_summarise(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_summarise(mismatched, 3)}")
        if non_tensor:
            parts.append(f"non-tensor entries {_summarise(non_tensor)}")
        parts.append(
            "Check that the architecture name matches the one the checkpoint was trained with."
        )
        raise ValueError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def _torch_load_safe(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln), None)
        if detail is None:  # not a refused object: the bytes are not a pickle at all
            raise ValueError(
                f"{path} is not a PyTorch checkpoint or is corrupt ({exc}); save one with "
                "torch.save(model.state_dict(), path)."
            ) from exc
        raise ValueError(
            f"Refusing to load {path}: it holds Python objects other than tensors and plain "
            f"containers, and torch.load(weights_only=True) does not unpickle those because "
            f"unpickling can run arbitrary code ({detail.strip()}). Re-save only the weights, "
            f"e.g. torch.save(model.state_dict(), path) or "
            f"torch.save({{'state_dict': model.state_dict(), 'classes': [...]}}, path)."
        ) from exc
    except (RuntimeError, EOFError, struct.error, ValueError, OSError) as exc:
        # not a torch file at all, a truncated file or a corrupt zip
        raise ValueError(
            f"{path} is not a PyTorch checkpoint or is corrupt ({type(exc).__name__}: {exc}); "
            "save one with torch.save(model.state_dict(), path)."
        ) from exc


def _safetensors_load(path: str) -> Tuple["OrderedDict[str, Tensor]", Dict[str, Any]]:
    r"""A ``.safetensors`` file's tensors and its string metadata (no pickle involved)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ImportError(f"Reading {path} needs the 'safetensors' package: pip install safetensors "
                          "(or captum-topk[timm])") from exc
    try:
        tensors = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path} is not a safetensors file or is corrupt ({type(exc).__name__}: {exc}).") from exc
    if not tensors:
        raise ValueError(f"{path} holds no tensor.")
    return _strip_prefixes(tensors), meta


def load_checkpoint_state_dict(path: str) -> Tuple["OrderedDict[str, Tensor]", Dict[str, Any]]:
    r"""Read a checkpoint safely and return its state dict plus the checkpoint's metadata.

    Accepts a ``.safetensors`` file (read with ``safetensors``, its string metadata returned as
    the metadata), a plain state dict or a training checkpoint holding one under
    ``state_dict``, ``model_state_dict``, ``model`` or ``state_dict_ema`` (timm);
    ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped.
    Never unpickles objects: ``torch.load(path, map_location="cpu", weights_only=True)``.

    Args:
        path (str): checkpoint file.

    Returns:
        (OrderedDict, dict): the state dict, and the checkpoint's other top-level entries
        (for example ``arch`` or ``classes``; empty for a plain state dict).

    Raises:
        ValueError: if the file holds pickled objects that ``weights_only`` refuses, is not a
            torch file, or contains no recognisable state dict.
    """
    if str(path).lower().endswith(".safetensors"):
        return _safetensors_load(str(path))
    obj = _torch_load_safe(path)
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"Checkpoint {path} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "parameter names to tensors)."
        )
    meta: Dict[str, Any] = {}
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd = obj
    else:
        sd = None
        for key in _STATE_DICT_KEYS:
            cand = obj.get(key)
            if isinstance(cand, Mapping) and cand and all(
                isinstance(v, Tensor) for v in cand.values()
            ):
                sd = cand
                break
        if sd is None:
            raise ValueError(
                f"No state dict found in checkpoint {path}: expected a mapping of names to "
                f"tensors, or one under {' / '.join(map(repr, _STATE_DICT_KEYS))}. "
                f"Top-level keys: {_summarise([str(k) for k in obj.keys()], 8)}."
            )
        meta = {k: v for k, v in obj.items() if v is not sd}
    return _strip_prefixes(sd), meta


def _head_keys(reference: Mapping[str, Tensor], default_classes: int) -> List[str]:
    r"""Classifier weight keys: weights whose first dimension is the default class count."""
    return [
        k
        for k, v in reference.items()
        if k.endswith("weight") and v.ndim >= 2 and v.shape[0] == default_classes
    ]


def _infer_num_classes(
    build: Callable[..., nn.Module], state_dict: Mapping[str, Tensor], default_classes: int = 1000
) -> Optional[int]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ref = build().state_dict()
    keys = [k for k in _head_keys(ref, default_classes) if k in state_dict]
    if not keys:
        return None
    # The last head weight is the classifier (aux heads of googlenet/inception come first).
    return int(state_dict[keys[-1]].shape[0])


def _checkpoint_categories(meta: Mapping[str, Any], num_classes: int) -> Optional[List[str]]:
    for key in _CATEGORY_KEYS:
        cats = meta.get(key)
        if isinstance(cats, Mapping):  # {"cat": 0, ...} (class_to_idx style)
            try:
                inv = sorted(cats.items(), key=lambda kv: int(kv[1]))
                cats = [str(k) for k, _ in inv]
            except (TypeError, ValueError):
                continue
        if isinstance(cats, (list, tuple)) and len(cats) == num_classes:
            return [str(c) for c in cats]
    return None
