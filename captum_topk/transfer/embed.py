r"""Embeddings: one global-average-pooled vector per image for a whole dataset, streamed.

The output of ``layer`` is captured with the shared hook machinery
(:func:`captum_topk.capture.hooks.run_capture`: hooks removed in ``finally``, forward stopped
right after the layer), averaged over its spatial positions and stored. On disk an
embedding file is a pair written atomically:

* ``NAME.npy``: ``float32`` array ``(N, C)``, row ``i`` for the ``i``-th image in iteration order;
* ``NAME.json``: ``{"ids": [...], "labels": [...], "layer": ..., "shape": [N, C], ...}``
  (the sidecar, same stem), ``ids[i]`` naming row ``i``.

:func:`load_embeddings` reads both back (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..utils.files import atomic_open, atomic_write_text
from ..capture.hooks import LayerSpec, resolve_layers, run_capture
from ..capture.batch import split_batch
from ..utils.files import PathLike
from ..utils.modules import eval_mode

__all__ = ["embed", "load_embeddings", "pool_features"]



def pool_features(acts: Tensor) -> Tensor:
    r"""Global average pooling of a layer output.

    Args:
        acts (Tensor): ``(N, C, H, W)`` feature maps, ``(N, C)`` vectors, or any
            ``(N, C, ...)`` tensor (averaged over every dimension after ``C``).

    Returns:
        Tensor: ``(N, C)`` float32.
    """
    if acts.dim() < 2:
        raise ValueError(f"Expected (N, C, ...) activations, got shape {tuple(acts.shape)}.")
    acts = acts.detach()
    if acts.dim() > 2:
        acts = acts.flatten(2).mean(dim=2)
    return acts.float()


def _batches(data: Any, batch_size: int, workers: int) -> Iterable[Any]:
    if isinstance(data, Tensor):
        return [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        from ..data.loader import make_loader

        return make_loader(data, batch_size=batch_size, workers=workers)
    return data


def _split(batch: Any) -> Tuple[Tensor, Optional[List[int]], Optional[List[str]]]:
    return tuple(split_batch(batch)[:3])


def embed(
    model: nn.Module,
    layer: LayerSpec,
    dataset: Union[Dataset, Iterable[Any], Tensor],
    batch_size: int = 64,
    out: Optional[PathLike] = None,
    workers: int = 0,
    progress: bool = True,
) -> Tuple[np.ndarray, List[str]]:
    r"""Global-average-pooled embeddings of ``layer`` for every image of ``dataset``.

    The model runs in eval mode under ``torch.no_grad`` (its previous mode is restored),
    one batch at a time; the forward stops right after ``layer``. Memory is the output
    ``(N, C)`` plus one batch.

    Args:
        model (nn.Module): the network.
        layer (str or nn.Module): dotted name (``"features.18"``) or module.
        dataset: a dataset of ``(image, label, id)`` items (e.g. an
            :class:`~captum_topk.data.ImageDataset` with its transform), a DataLoader /
            iterable of batches (tensor, ``(images, labels[, ids])`` or dict), or an
            ``(N, 3, H, W)`` tensor.
        batch_size (int): batch size when ``dataset`` is a dataset or a tensor.
        out (str, optional): write ``out`` (``.npy`` added when missing) and its ``.json``
            sidecar atomically.
        workers (int): DataLoader workers when ``dataset`` is a dataset.
        progress (bool): tqdm bar.

    Returns:
        (numpy.ndarray, list of str): embeddings ``(N, C)`` float32 and the image ids
        (the dataset's ids, else ``"0"``, ``"1"``, ... in iteration order).

    Raises:
        ValueError: when the data yields no image.

    Example::

        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> emb, ids = embed(model, "features.18", image_folder("photos", info.transform),
        ...                  out="emb/photos.npy")
        >>> emb.shape
        (120, 1280)
    """
    (name, module), = resolve_layers(model, layer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    total = len(dataset) if hasattr(dataset, "__len__") and not isinstance(dataset, Tensor) else None
    if isinstance(dataset, Tensor):
        total = dataset.shape[0]
    if isinstance(dataset, torch.utils.data.DataLoader):
        total = len(dataset.dataset) if hasattr(dataset.dataset, "__len__") else None
    chunks: List[np.ndarray] = []
    ids: List[str] = []
    labels: List[int] = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    bar = tqdm(total=total, unit="img", desc=f"embed {name}", disable=not progress)
    try:
        with eval_mode(model), torch.no_grad():
            for batch in _batches(dataset, batch_size, workers):
                images, lab, bid = _split(batch)
                (acts,) = run_capture(model, [module], images.to(device), stop_early=True)
                n = images.shape[0]
                chunks.append(pool_features(acts).cpu().numpy())
                start = len(ids)
                ids.extend(bid if bid is not None else [str(start + j) for j in range(n)])
                labels.extend(lab if lab is not None else [-1] * n)
                bar.update(n)
    finally:
        bar.close()
    if not chunks:
        raise ValueError("The data yielded no image: nothing to embed.")
    emb = np.ascontiguousarray(np.concatenate(chunks, axis=0), dtype=np.float32)
    if out is not None:
        _save(emb, ids, labels, out, {"layer": name, "model": type(model).__name__})
    return emb, ids


def _paths(out: PathLike) -> Tuple[Path, Path]:
    path = Path(out)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    return path, path.with_suffix(".json")


def _save(emb: np.ndarray, ids: List[str], labels: List[int], out: PathLike,
          meta: Dict[str, Any]) -> None:
    npy, sidecar = _paths(out)
    with atomic_open(npy, "wb") as f:
        np.save(f, emb, allow_pickle=False)
    atomic_write_text(sidecar, json.dumps(
        {**meta, "shape": list(emb.shape), "dtype": "float32", "pooling": "global average",
         "ids": ids, "labels": [int(v) for v in labels]}, indent=1))


def load_embeddings(path: PathLike) -> Tuple[np.ndarray, List[str], Dict[str, Any]]:
    r"""Read an embedding file written by :func:`embed`.

    Args:
        path (str): the ``.npy`` file (or its path without the suffix).

    Returns:
        (numpy.ndarray, list of str, dict): embeddings ``(N, C)``, ids, and the sidecar
        (``labels``, ``layer``, ``model``, ``shape``).

    Raises:
        FileNotFoundError: when the array or its ``.json`` sidecar is missing.
        ValueError: when they disagree on the number of rows.
    """
    npy, sidecar = _paths(path)
    if not npy.is_file() or not sidecar.is_file():
        raise FileNotFoundError(
            f"Embeddings need both {npy} and its sidecar {sidecar}; write them with embed(..., out=)."
        )
    emb = np.load(npy, allow_pickle=False)
    meta = json.loads(sidecar.read_text())
    ids = [str(i) for i in meta.get("ids", [])]
    if emb.ndim != 2 or len(ids) != emb.shape[0]:
        raise ValueError(f"{npy} holds {emb.shape} but {sidecar} lists {len(ids)} ids.")
    return emb, ids, meta
