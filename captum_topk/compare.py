r"""Compare two models over the same images: layer-by-layer CKA and per-channel changes.

One streamed pass over the data; each batch goes once through each model, and everything is
accumulated from that forward (memory independent of the dataset size):

* **CKA matrix** (every layer of A x every layer of B): minibatch linear CKA with the
  unbiased HSIC estimator (Nguyen, Raghu & Kornblith 2021; :class:`~captum_topk.cka.MinibatchCKA`).
  Representation of an image at a layer (``representation=``): ``"gap"`` (default), the
  global-average-pooled activation ``(C,)`` (what the channels respond to, wherever in the
  image: comparable across layers of different resolution, cheap); or ``"flatten"``, the
  whole map ``(C * H * W,)`` (also sensitive to *where* things are; the Gram matrices stay
  ``n x n`` per batch, but each costs ``n^2 * C * H * W``).
* **Per channel**, for layers with the same name and channel count in both models (same
  architecture, e.g. pretrained vs fine-tuned):

  - ``correlation``: Pearson correlation between the channel's activations in A and in B
    over every position of every image (streamed co-moments, Chan et al.'s pairwise
    update in float64). When a channel is constant over the data in both models it is 1 if
    the constants are equal, else 0; constant in only one model: 0.
  - ``jaccard``: overlap ``|T_A & T_B| / |T_A | T_B|`` of the channel's top-k image sets,
    mined in the same pass by :class:`~captum_topk.LayerTopKPatches` (one record per image).
  - ``drift``: cosine distance ``1 - cos(w_A[c], w_B[c])`` between the channel's filter in A
    and in B: row ``c`` of the weight of the last ``Conv2d`` / ``Linear`` inside the layer with
    ``C`` outputs (for a MobileNetV2 block, its 1x1 projection; for a ReLU, the closest such
    layer before it). NaN when there is none.
  - ``score`` (the ranking, highest = changed most first, ties to the lower channel):
    ``((1 - correlation) / 2 + (1 - jaccard) + drift / 2) / 3``, the mean of three changes
    each scaled to ``[0, 1]``: how differently the channel fires, which images drive it
    most, and how far its filter turned. Unchanged channels score 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._io import atomic_write_text
from ._layers import capture_hooks, resolve_layers
from .cka import MinibatchCKA
from .layer_topk import LayerTopKPatches, split_batch
from .result import TopKResult

__all__ = [
    "ChannelMoments",
    "ChannelChanges",
    "Comparison",
    "channel_weights",
    "compare_models",
    "compare_run",
    "change_score",
    "save_report",
]

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------
# per-channel statistics
# --------------------------------------------------------------------------------------


class ChannelMoments:
    r"""Streaming per-channel means, variances and covariance of paired activations.

    Samples are every (image, position) of a channel; updates merge batch moments with
    Chan et al.'s pairwise formulas in float64, so the result does not depend on how the
    data is batched and stays accurate for large means.

    Args:
        channels (int): ``C``.
    """

    def __init__(self, channels: int) -> None:
        self.n = 0
        z = lambda: torch.zeros(channels, dtype=torch.float64)  # noqa: E731
        self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab = z(), z(), z(), z(), z()

    def update(self, a: Tensor, b: Tensor) -> None:
        r"""Add a batch: ``a`` and ``b`` are ``(N, C, ...)`` activations of the same images."""
        if a.shape != b.shape:
            raise ValueError(f"Paired activations need the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
        c = a.shape[1]
        xa = a.detach().double().transpose(0, 1).reshape(c, -1)
        xb = b.detach().double().transpose(0, 1).reshape(c, -1)
        m = xa.shape[1]
        if m == 0:
            return
        ma, mb = xa.mean(1), xb.mean(1)
        da, db = xa - ma[:, None], xb - mb[:, None]
        m2a, m2b, cab = (da * da).sum(1), (db * db).sum(1), (da * db).sum(1)
        n = self.n
        tot = n + m
        delta_a, delta_b = ma - self.mean_a, mb - self.mean_b
        w = n * m / tot
        self.mean_a += delta_a * (m / tot)
        self.mean_b += delta_b * (m / tot)
        self.m2_a += m2a + delta_a * delta_a * w
        self.m2_b += m2b + delta_b * delta_b * w
        self.c_ab += cab + delta_a * delta_b * w
        self.n = tot

    def correlation(self) -> Tensor:
        r"""``(C,)`` Pearson correlations, with the constant-channel rules of the module doc."""
        denom = torch.sqrt(self.m2_a * self.m2_b)
        r = torch.where(denom > 0, self.c_ab / denom.clamp_min(1e-300), torch.zeros_like(denom))
        const_a = self.m2_a <= 1e-24 * (1 + self.mean_a.abs() ** 2) * max(self.n, 1)
        const_b = self.m2_b <= 1e-24 * (1 + self.mean_b.abs() ** 2) * max(self.n, 1)
        both = const_a & const_b
        same = torch.isclose(self.mean_a, self.mean_b, rtol=1e-9, atol=1e-12)
        r = torch.where(both, same.double(), r)
        r = torch.where(const_a ^ const_b, torch.zeros_like(r), r)
        return r.clamp(-1.0, 1.0)


def channel_weights(model: nn.Module, layer: str, channels: int) -> Tuple[Optional[str], Optional[Tensor]]:
    r"""The filter of each output channel of ``layer``: ``(C, D)`` rows of a weight.

    The last ``nn.Conv2d`` / ``nn.Linear`` inside ``layer`` (in module order) with ``C``
    outputs; if none, the last one before ``layer`` in module order.

    Returns:
        (str or None, Tensor or None): the dotted name of that module and its weight
        flattened to ``(C, D)`` (float64); ``(None, None)`` when nothing fits.
    """
    named = list(model.named_modules())
    pos = next((i for i, (n, _) in enumerate(named) if n == layer), None)
    if pos is None:
        raise ValueError(f"Unknown layer {layer!r}.")

    def fits(m: nn.Module) -> bool:
        out = m.out_channels if isinstance(m, nn.Conv2d) else (
            m.out_features if isinstance(m, nn.Linear) else None)
        return out == channels

    inside = [(n, m) for n, m in named if (n == layer or n.startswith(layer + ".")) and fits(m)]
    before = [(n, m) for n, m in named[:pos] if fits(m)]
    pick = inside[-1] if inside else (before[-1] if before else None)
    if pick is None:
        return None, None
    return pick[0], pick[1].weight.detach().double().reshape(channels, -1).cpu()


def _cosine_distance(wa: Tensor, wb: Tensor) -> Tensor:
    na, nb = wa.norm(dim=1), wb.norm(dim=1)
    cos = (wa * wb).sum(1) / (na * nb).clamp_min(1e-300)
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    cos = torch.where((na == 0) ^ (nb == 0), torch.zeros_like(cos), cos)
    return (1.0 - cos).clamp(0.0, 2.0)


def change_score(correlation: Tensor, jaccard: Tensor, drift: Tensor) -> Tensor:
    r"""The ranking score ``((1 - r) / 2 + (1 - J) + d / 2) / 3`` (NaN terms count as 0).

    Args:
        correlation, jaccard, drift (Tensor): ``(C,)`` each.

    Returns:
        Tensor: ``(C,)`` float64 in ``[0, 1]``, 0 for an unchanged channel.
    """
    terms = [(1.0 - correlation.double()) / 2.0, 1.0 - jaccard.double(), drift.double() / 2.0]
    return sum(torch.nan_to_num(t, nan=0.0) for t in terms) / 3.0


def _jaccard(res_a: TopKResult, res_b: TopKResult, layer: str) -> Tensor:
    ia, ib = res_a.indices(layer), res_b.indices(layer)
    out = torch.empty(ia.shape[0], dtype=torch.float64)
    for c in range(ia.shape[0]):
        sa = {int(v) for v in ia[c] if v >= 0}
        sb = {int(v) for v in ib[c] if v >= 0}
        union = sa | sb
        out[c] = len(sa & sb) / len(union) if union else 1.0
    return out


@dataclass
class ChannelChanges:
    r"""Per-channel changes of one layer between model A and model B.

    Attributes:
        layer (str): the layer name (same in both models).
        correlation, jaccard, drift, score (numpy.ndarray): ``(C,)`` each (see the module doc).
        order (numpy.ndarray): channels by decreasing ``score`` (ties: lower channel first).
        weight_module (str or None): the module whose filters gave ``drift``.
    """

    layer: str
    correlation: np.ndarray
    jaccard: np.ndarray
    drift: np.ndarray
    score: np.ndarray
    order: np.ndarray
    weight_module: Optional[str] = None

    def rows(self, n: Optional[int] = None) -> List[Dict[str, Any]]:
        r"""The ``n`` most changed channels (all by default) as JSON-able dicts, ranked."""
        out = []
        for rank, c in enumerate(self.order[:n].tolist()):
            out.append({"rank": rank, "channel": int(c), "score": _num(self.score[c]),
                        "correlation": _num(self.correlation[c]),
                        "jaccard": _num(self.jaccard[c]), "drift": _num(self.drift[c])})
        return out


def _num(v: Any) -> Optional[float]:
    v = float(v)
    return None if np.isnan(v) else v


@dataclass
class Comparison:
    r"""What :func:`compare_models` returns.

    Attributes:
        layers_a, layers_b (list of str): compared layers of A and of B.
        cka (numpy.ndarray): ``(len(layers_a), len(layers_b))`` minibatch linear CKA.
        channels (dict): layer -> :class:`ChannelChanges` (same-name, same-width layers).
        topk_a, topk_b (TopKResult or None): the top-k mined in the pass (same layers).
        n_images (int): images compared.
        representation (str): ``"gap"`` or ``"flatten"``.
        names (tuple of str): labels of A and B.
    """

    layers_a: List[str]
    layers_b: List[str]
    cka: np.ndarray
    channels: Dict[str, ChannelChanges]
    topk_a: Optional[TopKResult]
    topk_b: Optional[TopKResult]
    n_images: int
    representation: str = "gap"
    names: Tuple[str, str] = ("A", "B")
    extra: Dict[str, Any] = field(default_factory=dict)

    def most_changed(self, n: int = 10) -> List[Dict[str, Any]]:
        r"""The ``n`` highest-scoring channels over all layers, each dict with its ``layer``."""
        rows = [dict(r, layer=name) for name, ch in self.channels.items() for r in ch.rows()]
        rows.sort(key=lambda r: (-(r["score"] or 0.0), self.layers_a.index(r["layer"]), r["channel"]))
        return rows[:n]

    def to_json(self) -> Dict[str, Any]:
        r"""Everything as plain JSON (NaN as null)."""
        return {
            "format": "captum-topk-compare/1",
            "names": list(self.names),
            "n_images": self.n_images,
            "representation": self.representation,
            "cka": {"estimator": "minibatch linear CKA, unbiased HSIC (Nguyen, Raghu & "
                                 "Kornblith 2021)",
                    "layers_a": self.layers_a, "layers_b": self.layers_b,
                    "matrix": [[_num(v) for v in row] for row in self.cka]},
            "score": "((1 - correlation) / 2 + (1 - jaccard) + drift / 2) / 3",
            "channels": {name: {"weight_module": ch.weight_module, "ranked": ch.rows()}
                         for name, ch in self.channels.items()},
            "most_changed": self.most_changed(20),
            **self.extra,
        }


# --------------------------------------------------------------------------------------
# the streamed pass
# --------------------------------------------------------------------------------------


def _represent(acts: Tensor, representation: str) -> Tensor:
    if representation == "gap":
        return acts.flatten(2).mean(2) if acts.dim() > 2 else acts
    return acts.reshape(acts.shape[0], -1)


def _batches(data: Any, batch_size: int) -> Iterable[Any]:
    from torch.utils.data import Dataset

    if isinstance(data, Tensor):
        return [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
    if isinstance(data, Dataset):
        from .data import make_loader

        return make_loader(data, batch_size=batch_size)
    return data


def _captured(store: Dict[int, Any], module: nn.Module) -> Tensor:
    per_dev = store.get(id(module))
    if not per_dev:
        raise RuntimeError(f"Layer {module.__class__.__name__} did not run during the forward pass.")
    return next(iter(per_dev.values()))


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    layers_a: Sequence[str],
    layers_b: Optional[Sequence[str]] = None,
    k: int = 9,
    batch_size: int = 32,
    representation: str = "gap",
    max_images: Optional[int] = None,
    input_map_b: Optional[Callable[[Tensor], Tensor]] = None,
    names: Tuple[str, str] = ("A", "B"),
    progress: bool = True,
) -> Comparison:
    r"""Compare two models layer by layer (CKA) and, for a shared architecture, channel by channel.

    Args:
        model_a, model_b (nn.Module): the two models (put in eval mode for the pass; their
            previous modes are restored).
        data: a dataset of ``(image, label, id)`` items (iterated in order, no shuffling),
            a DataLoader / iterable of batches, or an ``(N, 3, H, W)`` tensor: model A's
            input.
        layers_a (sequence of str): layers of A.
        layers_b (sequence of str, optional): layers of B; default ``layers_a`` (same
            architecture). Per-channel changes are computed for the names in both lists
            whose outputs have the same number of channels.
        k (int): top-k images per channel for the overlap.
        batch_size (int): CKA minibatch size (>= 4; a final smaller batch of < 4 images
            is left out of CKA only).
        representation (str): ``"gap"`` or ``"flatten"`` (see the module doc).
        max_images (int, optional): compare only the first images.
        input_map_b (Callable, optional): maps a batch of A's inputs to B's (e.g. another
            normalisation); default identity.
        names (tuple of str): labels of A and B in the report.
        progress (bool): tqdm bar.

    Returns:
        Comparison

    Raises:
        ValueError: unknown layers, a bad ``representation``, or no image.

    Example::

        >>> base, info = load_model("mobilenet_v2-imagenet")
        >>> tuned, _ = load_model("mobilenet_v2-imagenet", checkpoint="ft.pt")
        >>> cmp = compare_models(base, tuned, dataset, ["features.4", "features.14"])
        >>> cmp.cka.shape, cmp.most_changed(3)[0]["channel"]
    """
    if representation not in ("gap", "flatten"):
        raise ValueError(f"representation must be 'gap' or 'flatten', got {representation!r}.")
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4 for the unbiased HSIC, got {batch_size}.")
    layers_a = [n for n, _ in resolve_layers(model_a, list(layers_a))]
    layers_b = [n for n, _ in resolve_layers(model_b, list(layers_b or layers_a))]
    mods_a = [m for _, m in resolve_layers(model_a, layers_a)]
    mods_b = [m for _, m in resolve_layers(model_b, layers_b)]
    miner_a = LayerTopKPatches(model_a, list(layers_a), k=k)
    miner_b = LayerTopKPatches(model_b, list(layers_b), k=k)
    cka = MinibatchCKA(len(layers_a), len(layers_b))
    shared = [n for n in layers_a if n in layers_b]
    moments: Dict[str, ChannelMoments] = {}
    modes = (model_a.training, model_b.training)
    model_a.eval()
    model_b.eval()
    total = len(data) if isinstance(data, Tensor) or hasattr(data, "__getitem__") else None
    if total is not None and max_images is not None:
        total = min(total, max_images)
    bar = tqdm(total=total, unit="img", desc="compare", disable=not progress)
    seen = 0
    try:
        with torch.no_grad():
            for batch in _batches(data, batch_size):
                images, labels, ids = split_batch(batch)
                if max_images is not None:
                    keep = max_images - seen
                    if keep <= 0:
                        break
                    images = images[:keep]
                    labels = labels[:keep] if labels is not None else None
                    ids = ids[:keep] if ids is not None else None
                n = images.shape[0]
                idx = list(range(seen, seen + n))
                with capture_hooks(mods_a, stop_early=False) as store_a:
                    miner_a.update((images, labels or [-1] * n, ids or [str(i) for i in idx]),
                                   indices=idx)
                images_b = input_map_b(images) if input_map_b is not None else images
                with capture_hooks(mods_b, stop_early=False) as store_b:
                    miner_b.update((images_b, labels or [-1] * n, ids or [str(i) for i in idx]),
                                   indices=idx)
                acts_a = [_captured(store_a, m) for m in mods_a]
                acts_b = [_captured(store_b, m) for m in mods_b]
                cka.update([_represent(a, representation) for a in acts_a],
                           [_represent(b, representation) for b in acts_b])
                for name in shared:
                    a = acts_a[layers_a.index(name)]
                    b = acts_b[layers_b.index(name)]
                    if a.shape != b.shape:
                        continue
                    moments.setdefault(name, ChannelMoments(a.shape[1])).update(a, b)
                seen += n
                bar.update(n)
    finally:
        bar.close()
        model_a.train(modes[0])
        model_b.train(modes[1])
    if seen == 0:
        raise ValueError("The data yielded no image: nothing to compare.")
    res_a, res_b = miner_a.compute(), miner_b.compute()
    channels: Dict[str, ChannelChanges] = {}
    for name, mom in moments.items():
        c = mom.mean_a.shape[0]
        corr = mom.correlation()
        jac = _jaccard(res_a, res_b, name)
        src_a, wa = channel_weights(model_a, name, c)
        src_b, wb = channel_weights(model_b, name, c)
        if wa is not None and wb is not None and wa.shape == wb.shape:
            drift = _cosine_distance(wa, wb)
        else:
            drift = torch.full((c,), float("nan"), dtype=torch.float64)
        score = change_score(corr, jac, drift)
        order = sorted(range(c), key=lambda j: (-float(score[j]), j))
        channels[name] = ChannelChanges(
            layer=name, correlation=corr.numpy(), jaccard=jac.numpy(), drift=drift.numpy(),
            score=score.numpy(), order=np.asarray(order, dtype=np.int64),
            weight_module=src_a if src_a == src_b else None)
    return Comparison(layers_a=layers_a, layers_b=layers_b, cka=cka.compute().numpy(),
                      channels=channels, topk_a=res_a, topk_b=res_b, n_images=seen,
                      representation=representation, names=tuple(names),
                      extra={"cka_images": cka.examples, "cka_skipped_images": cka.skipped})


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------


def save_report(
    comparison: Comparison,
    out_dir: PathLike,
    images_source: Any = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    top: int = 4,
    settings: Optional[Dict[str, Any]] = None,
) -> List[Path]:
    r"""Write the comparison report: JSON, the mined top-k, and PNG plots.

    Files (all written atomically): ``compare.json`` (:meth:`Comparison.to_json` plus
    ``settings``), ``topk_a.pt`` / ``topk_b.pt`` (:class:`~captum_topk.TopKResult`),
    ``cka.png`` (heatmap), ``most_changed.png`` (bar chart of the 15 highest scores, split
    into their three terms) and, when ``images_source`` is given, ``changed_patches.png``
    (top-9 patches of the ``top`` most changed channels in A and in B).

    Args:
        comparison (Comparison): from :func:`compare_models`.
        out_dir (str): report folder.
        images_source: the compared images as model-A input tensors, indexed by position
            in the pass (the dataset that was compared, with its transform).
        mean, std (sequence of float, optional): the normalisation to undo for display.
        top (int): channels shown in ``changed_patches.png``.
        settings (dict, optional): JSON-able run settings stored in ``compare.json``.

    Returns:
        list of Path: the files written.
    """
    from .plot import save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    payload = comparison.to_json()
    if settings:
        payload["settings"] = settings
    atomic_write_text(out / "compare.json", json.dumps(payload, indent=1))
    written.append(out / "compare.json")
    for side, res in (("a", comparison.topk_a), ("b", comparison.topk_b)):
        if res is not None:
            res.save(out / f"topk_{side}.pt")
            written.append(out / f"topk_{side}.pt")
    written.append(save_png(cka_figure(comparison), out / "cka.png"))
    if comparison.channels:
        written.append(save_png(most_changed_figure(comparison), out / "most_changed.png"))
        if images_source is not None and comparison.topk_a is not None:
            sheet = changed_patches_figure(comparison, images_source, mean, std, top=top)
            written.append(save_png(sheet, out / "changed_patches.png"))
    return written


def _figure_to_image(fig: Any) -> Any:
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Image.fromarray(rgba[..., :3].copy())


def cka_figure(comparison: Comparison, dpi: int = 100) -> Any:
    r"""The CKA matrix as a heatmap (rows: layers of A, columns: layers of B), a PIL image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = comparison.cka
    p, q = m.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * q + 1.5, 1.0 + 0.45 * p + 0.8), dpi=dpi)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="magma")
    ax.set_xticks(range(q), comparison.layers_b, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(p), comparison.layers_a, fontsize=8)
    ax.set_xlabel(comparison.names[1])
    ax.set_ylabel(comparison.names[0])
    if p * q <= 400:
        for i in range(p):
            for j in range(q):
                v = m[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.6 else "white")
    ax.set_title(f"linear CKA ({comparison.representation}, {comparison.n_images} images)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _figure_to_image(fig)


def most_changed_figure(comparison: Comparison, n: int = 15, dpi: int = 100) -> Any:
    r"""Horizontal bars of the ``n`` highest change scores, split into their three terms."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = comparison.most_changed(n)
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.32 * max(len(rows), 1)), dpi=dpi)
    labels = [f"{r['layer']} ch {r['channel']}" for r in rows]
    terms = [
        ("(1 - correlation) / 6", [(1 - (r["correlation"] if r["correlation"] is not None else 1)) / 6 for r in rows], "#4c72b0"),
        ("(1 - top-k overlap) / 3", [(1 - (r["jaccard"] if r["jaccard"] is not None else 1)) / 3 for r in rows], "#dd8452"),
        ("filter cosine distance / 6", [(r["drift"] or 0.0) / 6 for r in rows], "#55a868"),
    ]
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for label, vals, color in terms:
        ax.barh(y, vals, left=left, color=color, label=label, height=0.7)
        left += np.asarray(vals)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("change score")
    ax.set_xlim(0, max(0.05, float(left.max()) * 1.1) if len(rows) else 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"most changed channels: {comparison.names[0]} -> {comparison.names[1]}", fontsize=9)
    fig.tight_layout()
    return _figure_to_image(fig)


def changed_patches_figure(comparison: Comparison, images_source: Any,
                           mean: Optional[Sequence[float]] = None,
                           std: Optional[Sequence[float]] = None,
                           top: int = 4, patch_px: int = 56) -> Any:
    r"""Top-9 patches of the ``top`` most changed channels, A's grid beside B's, a PIL image."""
    from PIL import Image, ImageDraw

    from .plot import _font, label_height, patch_grid
    from .runs import _fit

    rows = comparison.most_changed(top)
    assert comparison.topk_a is not None and comparison.topk_b is not None
    blocks = []
    for r in rows:
        pair = []
        for side, res in ((0, comparison.topk_a), (1, comparison.topk_b)):
            recs = res.records(r["layer"], r["channel"])
            crops = _fit(res.patches(images_source, r["layer"], r["channel"]), patch_px)
            pair.append(patch_grid(crops, values=[x.value for x in recs], ncols=3, mean=mean,
                                   std=std, title=comparison.names[side]))
        title = (f"{r['layer']} ch {r['channel']}: score {r['score']:.2f}, r {r['correlation']:.2f}, "
                 f"overlap {r['jaccard']:.2f}, drift {r['drift'] if r['drift'] is not None else float('nan'):.3f}")
        w = pair[0].width + pair[1].width + 12
        h = max(pair[0].height, pair[1].height) + label_height() + 6
        block = Image.new("RGB", (w, h), (255, 255, 255))
        ImageDraw.Draw(block).text((4, 2), title, fill=(0, 0, 0), font=_font())
        block.paste(pair[0], (0, label_height() + 4))
        block.paste(pair[1], (pair[0].width + 12, label_height() + 4))
        blocks.append(block)
    if not blocks:
        return Image.new("RGB", (10, 10), (255, 255, 255))
    ncols = 2 if len(blocks) > 1 else 1
    bw = max(b.width for b in blocks)
    bh = max(b.height for b in blocks)
    nrows = -(-len(blocks) // ncols)
    sheet = Image.new("RGB", (ncols * (bw + 10) + 10, nrows * (bh + 10) + 10), (230, 230, 230))
    for j, b in enumerate(blocks):
        rr, cc = divmod(j, ncols)
        sheet.paste(b, (10 + cc * (bw + 10), 10 + rr * (bh + 10)))
    return sheet


# --------------------------------------------------------------------------------------
# a whole run, as the CLI does it
# --------------------------------------------------------------------------------------


def _checkpoint_meta(name: str, checkpoint: Optional[str]) -> Dict[str, Any]:
    from .models import load_checkpoint_state_dict

    path = checkpoint or (name if os.path.isfile(name) else None)
    if path is None:
        return {}
    return load_checkpoint_state_dict(path)[1]


def _label(name: str, checkpoint: Optional[str]) -> str:
    if checkpoint:
        return Path(checkpoint).stem
    return Path(name).stem if os.path.isfile(name) else name


def compare_run(
    model_a: str = "mobilenet_v2-imagenet",
    model_b: Optional[str] = None,
    checkpoint_a: Optional[str] = None,
    checkpoint_b: Optional[str] = None,
    data: Optional[str] = None,
    layers: Optional[Sequence[str]] = None,
    layers_b: Optional[Sequence[str]] = None,
    k: int = 9,
    batch_size: int = 32,
    max_images: Optional[int] = None,
    input_size: Optional[int] = None,
    resize_size: Optional[int] = None,
    representation: str = "gap",
    top: int = 4,
    out: PathLike = "results/compare",
    progress: bool = True,
) -> Tuple[Comparison, List[Path]]:
    r"""Load two models and a dataset, compare them, write the report (``captum-topk compare``).

    Args:
        model_a (str), checkpoint_a (str, optional): model A, as
            :func:`captum_topk.models.load_model` takes it.
        model_b (str, optional), checkpoint_b (str, optional): model B; ``model_b``
            defaults to ``model_a`` (then ``checkpoint_b`` says what differs, e.g. the
            fine-tuned weights).
        data (str, optional): ``"elpv"``, ``"demo"`` / None (packaged photos), an ImageNet
            val folder or any image folder.
        layers (list of str, optional): layers of A (default: all of
            :func:`captum_topk.transfer.model_blocks`); ``layers_b`` those of B (default:
            the same names).
        input_size (int, optional), resize_size (int, optional): the common preprocessing;
            default: the ``input_size`` / ``resize_size`` recorded in B's (else A's)
            checkpoint, else A's own.
        out (str): report folder (see :func:`save_report`).
        others: see :func:`compare_models`.

    Returns:
        (Comparison, list of Path): the comparison and the files written.
    """
    from .models import load_model, make_transform
    from .runs import open_dataset
    from .transfer import model_blocks

    model_b = model_b or model_a
    if model_b == model_a and checkpoint_b == checkpoint_a:
        raise ValueError(
            "Models A and B are the same: give B another model name or --checkpoint-b "
            "(e.g. compare mobilenet_v2-imagenet --checkpoint-b checkpoints/ft.pt)."
        )
    net_a, info_a = load_model(model_a, checkpoint=checkpoint_a)
    net_b, info_b = load_model(model_b, checkpoint=checkpoint_b)
    meta_b, meta_a = _checkpoint_meta(model_b, checkpoint_b), _checkpoint_meta(model_a, checkpoint_a)
    size = input_size or meta_b.get("input_size") or meta_a.get("input_size") or info_a.input_size[0]
    resize = resize_size or meta_b.get("resize_size") or meta_a.get("resize_size") or (
        info_a.resize_size if size == info_a.input_size[0] else round(int(size) / 0.875))
    size, resize = int(size), int(resize)
    transform = make_transform(size, resize, info_a.mean, info_a.std)
    if data == "elpv":
        from .elpv import elpv_dataset

        dataset, descriptor = elpv_dataset(transform), {"kind": "elpv"}
    else:
        dataset, descriptor = open_dataset(data, transform)
    input_map = None
    if tuple(info_a.mean) != tuple(info_b.mean) or tuple(info_a.std) != tuple(info_b.std):
        ma, sa = torch.tensor(info_a.mean).view(1, 3, 1, 1), torch.tensor(info_a.std).view(1, 3, 1, 1)
        mb, sb = torch.tensor(info_b.mean).view(1, 3, 1, 1), torch.tensor(info_b.std).view(1, 3, 1, 1)
        input_map = lambda x: ((x * sa + ma) - mb) / sb  # noqa: E731  (A's input -> B's)
    layers = list(layers) if layers else model_blocks(net_a)
    if layers_b is None:
        own_b = {n for n, _ in net_b.named_modules()}
        layers_b = layers if all(n in own_b for n in layers) else model_blocks(net_b)
    names = (_label(model_a, checkpoint_a), _label(model_b, checkpoint_b))
    cmp = compare_models(net_a, net_b, dataset, layers, layers_b, k=k, batch_size=batch_size,
                         representation=representation, max_images=max_images,
                         input_map_b=input_map, names=names, progress=progress)
    settings = {"model_a": model_a, "checkpoint_a": checkpoint_a, "model_b": model_b,
                "checkpoint_b": checkpoint_b, "data": descriptor, "input_size": size,
                "resize_size": resize, "k": k, "batch_size": batch_size,
                "max_images": max_images, "mean": list(info_a.mean), "std": list(info_a.std),
                "categories_b": info_b.categories if info_b.num_classes <= 100 else None}
    written = save_report(cmp, out, images_source=dataset, mean=info_a.mean, std=info_a.std,
                          top=top, settings=settings)
    return cmp, written
