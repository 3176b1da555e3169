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

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from ..capture.hooks import resolve_layers
from ..core.accumulators.cka import MinibatchCKA
from ..capture.batch import split_batch
from ..core.miner import LayerTopKPatches
from ..core.sources.torch import TorchSource
from ..core.result import TopKResult
from ..core.accumulators.moments import ChannelMoments





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


def _represent(acts: Tensor, representation: str) -> Tensor:
    if representation == "gap":
        return acts.flatten(2).mean(2) if acts.dim() > 2 else acts
    return acts.reshape(acts.shape[0], -1)


def _batches(data: Any, batch_size: int) -> Iterable[Any]:
    from torch.utils.data import Dataset

    if isinstance(data, Tensor):
        return [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
    if isinstance(data, Dataset):
        from ..data.loader import make_loader

        return make_loader(data, batch_size=batch_size)
    return data


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
    # One forward per model and batch feeds the top-k, CKA and the moments: the sources give
    # every layer's activation (receptive fields measured with the first batch).
    source_a = TorchSource(model_a, list(layers_a), progress=progress)
    source_b = TorchSource(model_b, list(layers_b), progress=progress)
    miner_a = LayerTopKPatches.from_source(source_a, k=k)
    miner_b = LayerTopKPatches.from_source(source_b, k=k)
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
                images, labels, ids, _ = split_batch(batch)
                if max_images is not None:
                    keep = max_images - seen
                    if keep <= 0:
                        break
                    images = images[:keep]
                    labels = labels[:keep] if labels is not None else None
                    ids = ids[:keep] if ids is not None else None
                n = images.shape[0]
                idx = torch.arange(seen, seen + n)
                labels, ids = labels or [-1] * n, ids or [str(i) for i in idx.tolist()]
                images_b = input_map_b(images) if input_map_b is not None else images
                by_name_a, by_name_b = source_a(images), source_b(images_b)
                miner_a.accumulate(by_name_a, source_a.layer_infos(images), idx, labels, ids)
                miner_b.accumulate(by_name_b, source_b.layer_infos(images_b), idx, labels, ids)
                acts_a = [by_name_a[name] for name in layers_a]
                acts_b = [by_name_b[name] for name in layers_b]
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
