r"""Embeddings of a run's images for the dashboard: pooled layer outputs, a 2-D PCA,
nearest neighbours and thumbnails."""

from __future__ import annotations

import base64
import io
from typing import Any, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.loader import make_loader
from ..viz.plot import to_display
from ..runs.folder import Run
from ..runs.mine import Progress, notify
from ..utils.naming import slug

__all__ = [
    "run_embeddings",
    "pca_2d",
    "nearest_neighbours",
    "thumbnails",
]

def run_embeddings(run: Run, layer: str, max_images: int = 2000,
                   progress: Progress = None) -> Tuple[np.ndarray, List[str], List[int]]:
    r"""Global-average-pooled embeddings of ``layer`` for the run's images (the first
    ``max_images``), cached on disk in ``<run>/embeddings/<layer>.npy`` (+ ``.json``).

    Returns:
        (numpy.ndarray, list of str, list of int): ``(N, C)`` float32, image ids, labels.
    """
    from ..transfer.embed import embed, load_embeddings, pool_features

    n = min(len(run.dataset), max_images)
    out = run.path / "embeddings" / f"{slug(layer)}-{n}.npy"
    if out.is_file() and out.with_suffix(".json").is_file():
        try:
            emb, ids, meta = load_embeddings(out)
            return emb, ids, [int(v) for v in meta.get("labels", [-1] * len(ids))]
        except (ValueError, OSError):
            pass  # damaged cache: recompute
    dataset = run.dataset.subset(range(n)) if n < len(run.dataset) else run.dataset
    if run.model is not None:
        emb, ids = embed(run.model, layer, dataset, batch_size=16, out=out, progress=False)
        _, _, meta = load_embeddings(out)
        return emb, ids, [int(v) for v in meta["labels"]]
    from ..transfer.embed import _save  # ONNX Runtime: the same file format
    from ..onnx.miner import OnnxTopKPatches

    miner = OnnxTopKPatches(str(run.result.metadata["onnx_path"]), [layer], k=1, progress_rf=False)
    chunks, ids, labels = [], [], []
    for batch in make_loader(dataset, batch_size=16):
        chunks.append(pool_features(miner.attribute(batch[0])).numpy())
        ids += list(batch[2])
        labels += [int(v) for v in batch[1]]
        notify(progress, "embedding", len(ids), n)
    emb = np.concatenate(chunks).astype(np.float32)
    _save(emb, ids, labels, out, {"layer": layer, "model": run.info.name})
    return emb, ids, labels


def pca_2d(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    r"""Project rows of ``x`` on their first two principal components.

    Centred, SVD; each component's sign is fixed so that its largest-magnitude loading is
    positive (deterministic output).

    Args:
        x (numpy.ndarray): ``(N, C)``.
    Returns:
        (numpy.ndarray, numpy.ndarray): ``(N, 2)`` coordinates and the ``(2,)`` fractions of
        the total variance they explain (zeros past the rank).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"pca_2d needs an (N, C) array, got shape {x.shape}.")
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = np.zeros((2, x.shape[1]))
    k = min(2, vt.shape[0])
    comps[:k] = vt[:k]
    for i in range(k):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] = -comps[i]
    total = float((s**2).sum())
    var = np.zeros(2)
    var[:k] = (s[:k] ** 2) / total if total > 0 else 0.0
    return xc @ comps.T, var


def nearest_neighbours(x: np.ndarray, index: int, n: int = 5) -> List[Tuple[int, float]]:
    r"""The ``n`` rows of ``x`` closest to row ``index`` by cosine similarity (itself excluded).

    Returns:
        list of (int, float): row and cosine similarity, most similar first (ties: lower row).
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    norms[norms == 0] = 1.0
    unit = x / norms[:, None]
    sims = unit @ unit[index]
    order = sorted((j for j in range(len(x)) if j != index), key=lambda j: (-sims[j], j))
    return [(j, float(sims[j])) for j in order[:n]]


def thumbnails(run: Run, ids: Sequence[str], px: int = 48, data_uri: bool = True) -> List[Any]:
    r"""Thumbnails (at most ``px`` wide and high, aspect kept) of the images with these ids, as
    the model saw them.

    Returns:
        list: ``data:image/png;base64,...`` strings (for plotly layout images) with
        ``data_uri``, else ``(h, w, 3)`` uint8 arrays.
    """
    out: List[Any] = []
    for image_id in ids:
        rgb = to_display(run.dataset[run.dataset.index_of(image_id)][0], mean=run.info.mean,
                         std=run.info.std)[0]
        pil = Image.fromarray(rgb)
        pil.thumbnail((px, px))
        if not data_uri:
            out.append(np.asarray(pil))
            continue
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out
