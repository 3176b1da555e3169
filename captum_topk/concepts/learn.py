r"""Learn concepts of a layer from a dataset's activations: NMF, a TopK sparse autoencoder, PCA.

One streamed pass (or ``epochs`` passes for the SAE) over the data; the activations come from
:class:`~captum_topk.core.sources.torch.TorchSource` in the canonical layout, so every layout
the miner takes (NCHW, NHWC, tokens, vectors) works. A *sample* is one image at one grid
position (a row of ``C`` channels). Memory does not grow with the dataset:

* ``"nmf"`` (CRAFT, Fel et al. 2023): ``positions_per_image`` random positions of every image go
  into a fixed-size reservoir (:class:`~.stream.Reservoir`, seeded); scikit-learn's ``NMF``
  (coordinate descent, NNDSVDa start) factorises it once at the end, ``rows ~ H W``, and the
  rows of ``W`` scaled to unit norm are the directions, ordered by their share of the
  reconstruction. NMF needs non-negative activations: a layer with values below
  ``-1e-6 * max|a|`` (more than rounding) is refused with a hint, unless
  ``negatives="clamp"``: then ``max(a, 0)`` is factorised and encoded (the negative part of
  the activations is dropped, as in CRAFT on post-ReLU layers).
* ``"pca"``: the exact mean and covariance of every position of every image (``C x C``, float64);
  the directions are the top eigenvectors (sign: largest entry positive).
* ``"sae"``: a TopK sparse autoencoder (:class:`~.sae.TopKSAE`) trained with Adam on the stream:
  every batch's positions (``positions_per_image`` per image, or all) shuffled into steps of
  ``sae_batch_size`` rows, for ``epochs`` passes (default: one, repeated on a small dataset
  until ``min_steps`` Adam steps were taken).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from .base import Concepts
from .stream import Moments, Reservoir, layer_rows, make_source

__all__ = ["learn_concepts", "LEARN_METHODS", "NEGATIVE_TOLERANCE"]

LEARN_METHODS = ("nmf", "sae", "pca")
#: Values above ``-NEGATIVE_TOLERANCE * max|a|`` count as rounding of a non-negative layer.
NEGATIVE_TOLERANCE = 1e-6


def _sample_positions(rows: Tensor, n: int, per_image: Optional[int], gen: torch.Generator) -> Tensor:
    r"""``per_image`` random positions of each of the ``n`` images (all when None or fewer)."""
    hw = rows.shape[0] // n
    if per_image is None or per_image >= hw:
        return rows
    pick = torch.rand(n, hw, generator=gen).argsort(1)[:, :per_image]
    pick = (pick + torch.arange(n)[:, None] * hw).reshape(-1)
    return rows[pick.to(rows.device)]


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("method='nmf' uses scikit-learn's NMF: pip install 'captum-topk[concepts]' "
                          "(or use method='sae' / 'pca', which need torch only).") from exc


def _check_nonnegative(rows: Tensor, layer: str, negatives: str) -> Tensor:
    lo, hi = float(rows.min()), float(rows.abs().max())
    if lo >= -NEGATIVE_TOLERANCE * max(hi, 1e-30):
        return rows.clamp_min(0)
    if negatives == "clamp":
        return rows.clamp_min(0)
    share = float((rows < 0).float().mean())
    raise ValueError(
        f"layer {layer!r} has negative activations (min {lo:.4g}, {share:.0%} of values < 0): NMF "
        f"factorises non-negative activations. Choose a post-ReLU layer (e.g. the ReLU / ReLU6 "
        f"inside the block; list them with captum_topk.list_layers(model)), use method='sae' or "
        f"'pca', or pass negatives='clamp' to factorise max(a, 0) (the negative part is dropped).")


def _fit_nmf(x: np.ndarray, n_concepts: int, seed: int, max_iter: int) -> np.ndarray:
    from sklearn.decomposition import NMF

    if x.shape[0] < n_concepts:
        raise ValueError(f"{x.shape[0]} sampled positions for {n_concepts} concepts: give more images.")
    nmf = NMF(n_components=n_concepts, init="nndsvda", solver="cd", max_iter=max_iter, tol=1e-5,
              random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Mm]aximum number of iterations.*")
        h = nmf.fit_transform(x)
    w = nmf.components_                                   # (K, C)
    norm = np.linalg.norm(w, axis=1)
    mass = h.sum(0) * norm                                 # each concept's share of the rebuild
    order = np.lexsort((np.arange(n_concepts), -mass))
    w = w[order] / np.maximum(norm[order], 1e-30)[:, None]
    return w.astype(np.float32)


def learn_concepts(
    model: Any,
    layer: Any,
    data: Any,
    *,
    method: str = "nmf",
    n_concepts: int = 16,
    max_images: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 64,
    positions_per_image: Optional[int] = 16,
    reservoir_size: int = 50_000,
    negatives: str = "refuse",
    name: Optional[str] = None,
    k: Optional[int] = None,
    epochs: Optional[int] = None,
    min_steps: int = 2000,
    lr: float = 1e-3,
    sae_batch_size: int = 256,
    max_iter: int = 400,
    **source_kw: Any,
) -> Concepts:
    r"""Learn ``n_concepts`` directions of ``layer`` from the activations of ``data``.

    Args:
        model (nn.Module or callable): the model (put in eval mode for the pass, mode restored).
        layer (str or nn.Module): one layer, as the miner names it.
        data: a DataLoader / iterable of batches (any form
            :func:`~captum_topk.capture.batch.split_batch` reads), a dataset or an
            ``(N, C, H, W)`` tensor.
        method (str): ``"nmf"``, ``"sae"`` or ``"pca"`` (see the module docstring).
        n_concepts (int): ``K``.
        max_images (int, optional): stop after this many images.
        seed (int): seeds the sampled positions, the reservoir, NMF's and the SAE's starts.
        progress (bool): a tqdm bar over images.
        batch_size (int): images per forward for a dataset or a tensor.
        positions_per_image (int, optional): random positions kept per image (NMF's reservoir,
            the SAE's steps); None: all. PCA always uses all positions.
        reservoir_size (int): NMF: the most rows kept (``reservoir_size x C`` float32).
        negatives (str): NMF on a layer with negative values: ``"refuse"`` (default, a
            ``ValueError`` with a hint) or ``"clamp"`` (factorise and encode ``max(a, 0)``).
        name (str, optional): the concepts' name (default ``f"{method}{n_concepts}"``).
        k (int, optional): SAE: active latents per position (default ``max(1, n_concepts // 8)``).
        epochs (int, optional): SAE: passes over the data (the data must be re-iterable when
            > 1). None (default): one pass, repeated while fewer than ``min_steps`` Adam steps
            were taken (a small dataset), at most 100 passes.
        min_steps (int): SAE: the fewest Adam steps when ``epochs`` is None.
        lr (float): SAE: Adam's learning rate.
        sae_batch_size (int): SAE: rows per Adam step.
        max_iter (int): NMF: coordinate-descent iterations.
        source_kw: ``layout``, ``token_grid``, ``prefix_tokens``, ``device_ids`` of
            :class:`~captum_topk.core.sources.torch.TorchSource`.

    Returns:
        Concepts: ``(n_concepts, C)`` directions; ``encoder_state`` also records ``images``
        and ``rows`` (positions the directions were learned from).

    Example::

        >>> concepts = learn_concepts(model, "features.14", loader, method="nmf", n_concepts=16)
        >>> concepts.encode(acts).shape        # acts: (N, 160, 7, 7) canonical activations
        torch.Size([N, 16, 7, 7])
    """
    if method not in LEARN_METHODS:
        raise ValueError(f"method must be one of {LEARN_METHODS}, got {method!r}.")
    if negatives not in ("refuse", "clamp"):
        raise ValueError(f"negatives must be 'refuse' or 'clamp', got {negatives!r}.")
    if int(n_concepts) < 1:
        raise ValueError(f"n_concepts must be >= 1, got {n_concepts}.")
    n_concepts = int(n_concepts)
    if method == "nmf":
        _sklearn()
    source, lname = make_source(model, layer, **source_kw)
    gen = torch.Generator().manual_seed(int(seed))
    stream_kw: Dict[str, Any] = dict(batch_size=batch_size, max_images=max_images, progress=progress,
                                     source=source, desc=f"learning {method}{n_concepts}")
    images = rows_seen = 0

    if method == "nmf":
        reservoir = Reservoir(reservoir_size, seed=seed)
        for b in layer_rows(model, layer, data, **stream_kw):
            rows = _check_nonnegative(b.rows.float(), lname, negatives)
            reservoir.add(_sample_positions(rows, b.images, positions_per_image, gen))
            images += b.images
        x = reservoir.rows.numpy()
        w = _fit_nmf(x, n_concepts, seed, max_iter)
        state: Dict[str, Any] = {"images": images, "rows": int(x.shape[0]), "positions_seen": reservoir.seen}
        if negatives == "clamp":
            state["clamp"] = True
        return Concepts(lname, torch.from_numpy(w), "nmf", name=name, encoder_state=state)

    if method == "pca":
        moments = Moments()
        for b in layer_rows(model, layer, data, **stream_kw):
            moments.add(b.rows)
            images += b.images
        mean, cov = moments.mean_cov()
        if n_concepts > cov.shape[0]:
            raise ValueError(f"PCA gives at most C={cov.shape[0]} components, asked {n_concepts}.")
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:n_concepts]
        comps = evecs[:, order].T.contiguous()                       # (K, C)
        flip = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
        comps = comps * torch.where(flip == 0, torch.ones_like(flip), flip)
        total = float(evals.clamp_min(0).sum())
        explained = (evals[order].clamp_min(0) / total).tolist() if total > 0 else [0.0] * n_concepts
        return Concepts(lname, comps.float(), "pca", name=name,
                        encoder_state={"mean": mean.float(), "explained_variance_ratio": explained,
                                       "images": images, "rows": moments.n})

    from .sae import TopKSAE

    sae: Optional[TopKSAE] = None
    kk = int(k) if k is not None else max(1, n_concepts // 8)
    history = []
    max_epochs = int(epochs) if epochs is not None else 100
    passes = 0
    while passes < max_epochs and not (epochs is None and passes > 0 and len(history) >= int(min_steps)):
        seen_this = 0
        for b in layer_rows(model, layer, data, **stream_kw):
            rows = _sample_positions(b.rows, b.images, positions_per_image, gen)
            if sae is None:
                sae = TopKSAE(rows.shape[1], n_concepts, kk, seed=seed, lr=lr).to(rows.device)
            perm = torch.randperm(rows.shape[0], generator=gen).to(rows.device)
            for i in range(0, rows.shape[0], int(sae_batch_size)):
                history.append(sae.step(rows[perm[i:i + int(sae_batch_size)]])["nmse"])
            seen_this += b.images
            rows_seen += rows.shape[0]
        if seen_this == 0:  # no batch: empty data, or a one-shot iterator already read
            if passes > 0 and epochs is not None:
                raise ValueError("epochs > 1 needs re-iterable data (a DataLoader, dataset or tensor), "
                                 "not a one-shot iterator.")
            break
        if passes == 0:
            images = seen_this
        passes += 1
    if sae is None:
        raise ValueError("no images: the data gave no batch.")
    tail = history[-max(1, len(history) // 10):]
    return sae.concepts(lname, name=name, extra={"images": images, "rows": rows_seen,
                                                  "epochs": passes,
                                                  "train_nmse": float(np.mean(tail))})
