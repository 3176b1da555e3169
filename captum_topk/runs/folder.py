r"""A finished run reopened from disk: the result, the model's preprocessing and the images, to re-crop patches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from torch import Tensor
from ..models.info import ModelInfo
from ..core.result import TopKResult
from ..models.registry import DEFAULT_MODEL
from ..utils.files import PathLike
from .mine import _load
from .datasets import _reopen



@dataclass
class Run:
    r"""A finished run reopened from disk: the result plus what is needed to re-crop patches."""

    path: Path
    result: TopKResult
    info: ModelInfo
    dataset: Any
    _source: Optional[Callable[[int], Tensor]] = field(default=None, repr=False)

    def image_source(self) -> Callable[[int], Tensor]:
        r"""``index -> model-input tensor``, found by image id (no pass over the dataset).

        Decoded images are kept in a small LRU cache, since one image often holds the
        top patches of many channels."""
        if self._source is None:
            images = self.result.images

            @functools.lru_cache(maxsize=256)
            def fetch(index: int) -> Tensor:
                image_id = images[index].get("id")
                pos = self.dataset.index_of(image_id) if image_id is not None else index
                return self.dataset[pos][0]

            self._source = fetch
        return self._source

    def patches(self, layer: str, channel: int, which: str = "top", n: Optional[int] = None) -> Tensor:
        return self.result.patches(self.image_source(), layer, channel, which, n=n)


def load_run(path: PathLike) -> Run:
    r"""Reopen a run folder (or its ``result.pt``) written by :func:`mine_run`."""
    path = Path(path)
    result_path = path / "result.pt" if path.is_dir() else path
    if not result_path.exists():
        raise FileNotFoundError(f"No result at {result_path}: run `captum-topk mine --out {path}` first.")
    result = TopKResult.load(result_path)
    meta = result.metadata
    size = meta.get("input_size")
    _, info = _load(meta.get("model_name", DEFAULT_MODEL), meta.get("checkpoint"), size[0] if size else None)
    dataset = _reopen(meta.get("data", {"kind": "demo"}), info.transform)
    return Run(result_path.parent, result, info, dataset)
