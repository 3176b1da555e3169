r"""Compare two models over the same images: layer-by-layer CKA and per-channel changes.

One streamed pass over the data; each batch goes once through each model, and everything is
accumulated from that forward (memory independent of the dataset size):

* **CKA matrix** (every layer of A x every layer of B): minibatch linear CKA with the
  unbiased HSIC estimator (Nguyen, Raghu & Kornblith 2021; :class:`~captum_topk.core.accumulators.cka.MinibatchCKA`).
  Representation of an image at a layer (``representation=``): ``"gap"`` (default), the
  global-average-pooled activation ``(C,)`` (what the channels respond to, wherever in the
  image: comparable across layers of different resolution, cheap); or ``"flatten"``, the
  whole map ``(C * H * W,)`` (also sensitive to *where* things are; the Gram matrices stay
  ``n x n`` per batch, but each costs ``n^2 * C * H * W``).
* **Per channel**, for layers with the same name in both models that are the same module
  (same class and parameter shapes, :func:`same_module`) with outputs of the same shape (same
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
    layer before it). NaN when there is none. It is *quadratic* in a small change
    (``1 - cos θ ≈ θ² / 2``: a 1 % change orthogonal to the filter gives 5e-5) and blind to
    rescaling, so after a gentle fine-tuning it is ~1e-4 everywhere;
  - ``weight_change``: the relative change ``||w_B[c] - w_A[c]|| / ||w_A[c]||`` of the same
    filter (linear in the change, sees rescaling too: 0.01 = the filter moved by 1 % of its
    norm); reported beside the score, not part of it.
  - ``score`` (the ranking, highest = changed most first, ties to the lower channel):
    ``((1 - correlation) / 2 + (1 - jaccard) + drift / 2) / 3``, the mean of three changes
    each scaled to ``[0, 1]``: how differently the channel fires, which images drive it
    most, and how far its filter turned. Unchanged channels score 0.

**Different architectures** (or the same one trained from another seed): channel ``i`` of A
is not channel ``i`` of B, so the per-channel terms do not apply. Instead:

* ``measures=``: more layer x layer similarity matrices besides the streaming CKA
  (:mod:`captum_topk.compare.similarity`: full-data linear CKA, orthogonal Procrustes, SVCCA,
  PWCCA), each with a **chance baseline** (the image pairing shuffled). They need the
  representation matrices: the pass gathers the global-average-pooled activations of every
  compared layer, ``n_images x C`` float32 per layer (500 images x 1,280 channels: 2.4 MiB),
  whatever ``representation`` the streaming CKA uses.
* ``match=``: for chosen layer pairs (or ``"auto"``: the pairs of highest CKA) the units of
  A are matched to units of B by correlation (:mod:`captum_topk.compare.matching`, Li et al.
  2016); the report shows both top-k grids side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from ..utils.modules import eval_mode
from ..capture.hooks import resolve_layers
from ..core.accumulators.cka import MinibatchCKA
from ..core.miner import LayerTopKPatches
from ..core.sources.torch import TorchSource
from ..core.result import TopKResult
from ..core.accumulators.moments import ChannelMoments
from ..core.loop import count_images
from .inputs import image_batches
from .matching import LayerPair, PairAccumulator, UnitMatching, _pairs, fold_pair, match_layers
from .similarity import SimilarityMatrix, SimilarityMeasure, _num, similarity_matrices


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


def _relative_change(wa: Tensor, wb: Tensor) -> Tensor:
    na = wa.norm(dim=1)
    diff = (wb - wa).norm(dim=1)
    rel = diff / na.clamp_min(1e-300)
    return torch.where(na == 0, torch.where(diff == 0, torch.zeros_like(rel), torch.full_like(rel, float("nan"))), rel)


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
        weight_change (numpy.ndarray or None): ``(C,)`` relative filter change
            ``||w_B - w_A|| / ||w_A||`` (NaN without filters).
    """

    layer: str
    correlation: np.ndarray
    jaccard: np.ndarray
    drift: np.ndarray
    score: np.ndarray
    order: np.ndarray
    weight_module: Optional[str] = None
    weight_change: Optional[np.ndarray] = None

    def rows(self, n: Optional[int] = None) -> List[Dict[str, Any]]:
        r"""The ``n`` most changed channels (all by default) as JSON-able dicts, ranked."""
        out = []
        for rank, c in enumerate(self.order[:n].tolist()):
            out.append({"rank": rank, "channel": int(c), "score": _num(self.score[c]),
                        "correlation": _num(self.correlation[c]),
                        "jaccard": _num(self.jaccard[c]), "drift": _num(self.drift[c]),
                        "weight_change": _num(self.weight_change[c]) if self.weight_change is not None else None})
        return out


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
        similarity (dict): measure name -> :class:`~captum_topk.compare.similarity.SimilarityMatrix`
            (``(len(layers_a), len(layers_b))`` values and chance baselines on pooled activations).
        matchings (dict): ``(layer_a, layer_b)`` -> :class:`~captum_topk.compare.matching.UnitMatching`.
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
    similarity: Dict[str, SimilarityMatrix] = field(default_factory=dict)
    matchings: Dict[LayerPair, UnitMatching] = field(default_factory=dict)

    @property
    def same_architecture(self) -> bool:
        r"""Whether some layer could be compared channel by channel (same name and width)."""
        return bool(self.channels)

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
            "similarity": {
                "representation": "global-average-pooled activations, one row per image",
                "chance": "the same measure with the rows of B shuffled (image pairing destroyed)",
                "measures": {name: m.to_json() for name, m in self.similarity.items()}},
            "matching": [m.to_json() for m in self.matchings.values()],
            **self.extra,
        }


def _represent(acts: Tensor, representation: str) -> Tensor:
    if representation == "gap":
        return acts.flatten(2).mean(2) if acts.dim() > 2 else acts
    return acts.reshape(acts.shape[0], -1)


def same_module(a: nn.Module, b: nn.Module) -> bool:
    r"""Whether two modules are the same architecture: same class, same parameter names and
    shapes (so that channel ``i`` of one can be compared with channel ``i`` of the other)."""
    if type(a) is not type(b):
        return False
    pa = [(n, tuple(p.shape)) for n, p in a.named_parameters()]
    pb = [(n, tuple(p.shape)) for n, p in b.named_parameters()]
    return pa == pb


MatchSpec = Union[None, str, Sequence[Any]]


def auto_pairs(cka: np.ndarray, layers_a: Sequence[str], layers_b: Sequence[str], top: int = 3) -> List[LayerPair]:
    r"""The ``top`` layer pairs of highest CKA, each layer of A and of B used at most once.

    Greedy: the cell of highest CKA, then the highest among the rows and columns not used
    yet, and so on (ties: lower layer of A, then of B).

    Returns:
        list of (str, str): ``(layer_a, layer_b)``, highest CKA first.
    """
    cells = sorted(((float(cka[i, j]), i, j) for i in range(len(layers_a)) for j in range(len(layers_b))
                    if np.isfinite(cka[i, j])), key=lambda t: (-t[0], t[1], t[2]))
    out: List[LayerPair] = []
    used_a: set = set()
    used_b: set = set()
    for _, i, j in cells:
        if len(out) >= top:
            break
        if i in used_a or j in used_b:
            continue
        out.append((layers_a[i], layers_b[j]))
        used_a.add(i)
        used_b.add(j)
    return out


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
    *,
    measures: Sequence[Union[str, SimilarityMeasure]] = (),
    permutations: int = 10,
    seed: int = 0,
    match: MatchSpec = None,
    match_top: int = 3,
    match_positions: str = "resampled",
    match_chance: bool = True,
    groups: Optional[Sequence[Any]] = None,
) -> Comparison:
    r"""Compare two models layer by layer and, for a shared architecture, channel by channel;
    for any two architectures, with more similarity measures and matched units.

    Args:
        model_a, model_b (nn.Module): the two models (put in eval mode for the pass; their
            previous modes are restored).
        data: a dataset of ``(image, label, id)`` items (iterated in order, no shuffling),
            a DataLoader / iterable of batches, or an ``(N, 3, H, W)`` tensor: model A's
            input.
        layers_a (sequence of str): layers of A.
        layers_b (sequence of str, optional): layers of B; default ``layers_a`` (same
            architecture). Per-channel changes are computed for the names in both lists
            that are the same module (:func:`same_module`: class and parameter shapes) with
            outputs of the same shape.
        k (int): top-k images per channel (overlap and the matched-unit figures).
        batch_size (int): CKA minibatch size (>= 4; a final smaller batch of < 4 images
            is left out of CKA only).
        representation (str): ``"gap"`` or ``"flatten"`` for the streaming CKA (see the
            module doc).
        max_images (int, optional): compare only the first images.
        input_map_b (Callable, optional): maps a batch of A's inputs to B's (e.g. another
            normalisation, :func:`~captum_topk.compare.inputs.normalisation_map`); default identity.
        names (tuple of str): labels of A and B in the report.
        progress (bool): tqdm bars.
        measures (sequence): similarity measures over pooled activations, names
            (``"cka"``, ``"procrustes"``, ``"svcca"``, ``"pwcca"``) or configured
            :class:`~captum_topk.compare.similarity.SimilarityMeasure` objects; default none
            (only the streaming CKA). Gathers ``n_images x C`` floats per layer.
        permutations (int): shuffled pairings per cell for the chance baselines.
        seed (int): seed of the shuffles (a local generator).
        match: layer pairs whose units are matched: ``[("features.7", "features.7"), ...]`` or
            ``["features.7:features.7"]`` (layers among the compared ones; accumulated in the
            same pass), or ``"auto"``: the ``match_top`` pairs of :func:`auto_pairs` on the CKA
            matrix (a second pass, forward stopped after the deepest of those layers).
        match_top (int): pairs chosen by ``"auto"``.
        match_positions (str): ``"resampled"`` or ``"pooled"`` (see :func:`match_units`).
        match_chance (bool): also the matched correlation with mispaired images (the chance
            level of the matching, :mod:`captum_topk.compare.matching`).
        groups (sequence, optional): a label per compared image (in pass order), e.g. the photo
            of each augmented view: the chance baselines of the similarity measures shuffle
            whole groups (see "Augmented views" in :mod:`captum_topk.compare.similarity`).

    Returns:
        Comparison

    Raises:
        ValueError: unknown layers, a bad ``representation``, a matched layer that is not
            compared, or no image.

    Example::

        >>> a, info = load_model("mobilenet_v2-imagenet")
        >>> b, _ = load_model("squeezenet1_1-imagenet")
        >>> cmp = compare_models(a, b, demo_images(transform=info.transform),
        ...                      ["features.4", "features.7"], ["features.4", "features.7"],
        ...                      measures=["cka", "procrustes"], match=["features.7:features.7"])
        >>> cmp.similarity["procrustes"].value, cmp.matchings[("features.7", "features.7")].mean_correlation
    """
    if representation not in ("gap", "flatten"):
        raise ValueError(f"representation must be 'gap' or 'flatten', got {representation!r}.")
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4 for the unbiased HSIC, got {batch_size}.")
    layers_a = [n for n, _ in resolve_layers(model_a, list(layers_a))]
    layers_b = [n for n, _ in resolve_layers(model_b, list(layers_b or layers_a))]
    explicit = _explicit_pairs(match, layers_a, layers_b)
    # One forward per model and batch feeds the top-k, CKA, the moments and the matchings: the
    # sources give every layer's activation (receptive fields measured with the first batch).
    source_a = TorchSource(model_a, list(layers_a), progress=progress)
    source_b = TorchSource(model_b, list(layers_b), progress=progress)
    miner_a = LayerTopKPatches.from_source(source_a, k=k)
    miner_b = LayerTopKPatches.from_source(source_b, k=k)
    acc = _PassAccumulators(layers_a, layers_b, _shared_layers(model_a, model_b, layers_a, layers_b),
                            explicit, representation, keep_pooled=bool(measures),
                            match_positions=match_positions, match_chance=match_chance)
    bar = tqdm(total=count_images(data, max_images), unit="img", desc="compare", disable=not progress)
    seen = 0
    try:
        with eval_mode(model_a, model_b), torch.no_grad():
            for images, labels, ids, start in image_batches(data, batch_size, max_images):
                n = images.shape[0]
                idx = torch.arange(start, start + n)
                images_b = input_map_b(images) if input_map_b is not None else images
                by_name_a, by_name_b = source_a(images), source_b(images_b)
                miner_a.accumulate(by_name_a, source_a.layer_infos(images), idx, labels, ids)
                miner_b.accumulate(by_name_b, source_b.layer_infos(images_b), idx, labels, ids)
                acc.update([by_name_a[name] for name in layers_a], [by_name_b[name] for name in layers_b])
                seen += n
                bar.update(n)
    finally:
        bar.close()
    if seen == 0:
        raise ValueError("The data yielded no image: nothing to compare.")
    res_a, res_b = miner_a.compute(), miner_b.compute()
    channels = {name: _channel_changes(model_a, model_b, name, mom, res_a, res_b)
                for name, mom in acc.moments.items()}
    cka_matrix = acc.cka.compute().numpy()
    similarity: Dict[str, SimilarityMatrix] = {}
    if measures:
        similarity = similarity_matrices([torch.cat(r) for r in acc.pooled_a], [torch.cat(r) for r in acc.pooled_b],
                                         measures, permutations=permutations, seed=seed,
                                         groups=None if groups is None else list(groups)[:seen],
                                         progress=progress)
    matchings: Dict[LayerPair, UnitMatching] = {pair: c.matching(*pair) for pair, c in acc.crosses.items()}
    if match == "auto":  # a second pass, on the pairs the CKA matrix suggests
        pairs = auto_pairs(cka_matrix, layers_a, layers_b, match_top)
        if pairs:
            matchings = match_layers(model_a, model_b, data, pairs, positions=match_positions,
                                     batch_size=batch_size, max_images=max_images,
                                     input_map_b=input_map_b, chance=match_chance, progress=progress)
    return Comparison(layers_a=layers_a, layers_b=layers_b, cka=cka_matrix,
                      channels=channels, topk_a=res_a, topk_b=res_b, n_images=seen,
                      representation=representation, names=tuple(names),
                      extra={"cka_images": acc.cka.examples, "cka_skipped_images": acc.cka.skipped},
                      similarity=similarity, matchings=matchings)


def _explicit_pairs(match: MatchSpec, layers_a: Sequence[str], layers_b: Sequence[str]) -> List[LayerPair]:
    r"""The layer pairs ``match`` names (none for None / ``"auto"``), each refused unless both
    of its layers are compared."""
    if not match or match == "auto":
        return []
    explicit = list(dict.fromkeys(_pairs([match] if isinstance(match, str) else match)))
    for la, lb in explicit:
        if la not in layers_a or lb not in layers_b:
            raise ValueError(
                f"Cannot match {la}:{lb}: both layers must be compared (add {la!r} to layers_a "
                f"and {lb!r} to layers_b), or use match_units() for any pair.")
    return explicit


def _shared_layers(model_a: nn.Module, model_b: nn.Module, layers_a: Sequence[str],
                   layers_b: Sequence[str]) -> List[str]:
    r"""The layer names compared in both models that are the same module (:func:`same_module`)."""
    mods_a = [m for _, m in resolve_layers(model_a, list(layers_a))]
    mods_b = [m for _, m in resolve_layers(model_b, list(layers_b))]
    return [n for n, ma in zip(layers_a, mods_a)
            if n in layers_b and same_module(ma, mods_b[layers_b.index(n)])]


class _PassAccumulators:
    r"""What the pass gathers from each batch's activations besides the top-k: the CKA
    minibatch statistics, the per-channel moments of the shared layers (outputs of the same
    shape), the pooled activations for the similarity measures (``keep_pooled``) and the
    cross-correlations of the explicitly matched pairs."""

    def __init__(self, layers_a: Sequence[str], layers_b: Sequence[str], shared: Sequence[str],
                 explicit: Sequence[LayerPair], representation: str, keep_pooled: bool,
                 match_positions: str, match_chance: bool) -> None:
        self.layers_a, self.layers_b = list(layers_a), list(layers_b)
        self.shared, self.explicit = list(shared), list(explicit)
        self.representation, self.keep_pooled = representation, keep_pooled
        self.match_positions, self.match_chance = match_positions, match_chance
        self.cka = MinibatchCKA(len(layers_a), len(layers_b))
        self.moments: Dict[str, ChannelMoments] = {}
        self.crosses: Dict[LayerPair, PairAccumulator] = {}
        self.pooled_a: List[List[Tensor]] = [[] for _ in layers_a]
        self.pooled_b: List[List[Tensor]] = [[] for _ in layers_b]

    def update(self, acts_a: List[Tensor], acts_b: List[Tensor]) -> None:
        r"""Fold one batch: ``acts_a`` / ``acts_b`` in the order of ``layers_a`` / ``layers_b``."""
        gap_a = [_represent(a, "gap") for a in acts_a]
        gap_b = [_represent(b, "gap") for b in acts_b]
        if self.representation == "gap":
            self.cka.update(gap_a, gap_b)
        else:
            self.cka.update([_represent(a, self.representation) for a in acts_a],
                            [_represent(b, self.representation) for b in acts_b])
        if self.keep_pooled:
            for store, gaps in ((self.pooled_a, gap_a), (self.pooled_b, gap_b)):
                for lst, g in zip(store, gaps):
                    lst.append(g.detach().float().cpu())
        for name in self.shared:
            a = acts_a[self.layers_a.index(name)]
            b = acts_b[self.layers_b.index(name)]
            if a.shape != b.shape:
                continue
            self.moments.setdefault(name, ChannelMoments(a.shape[1])).update(a, b)
        for la, lb in self.explicit:
            fold_pair(self.crosses, (la, lb), acts_a[self.layers_a.index(la)],
                      acts_b[self.layers_b.index(lb)], self.match_positions, self.match_chance)


def _channel_changes(model_a: nn.Module, model_b: nn.Module, name: str, mom: ChannelMoments,
                     res_a: TopKResult, res_b: TopKResult) -> ChannelChanges:
    r"""The per-channel changes of a shared layer: activation correlation, top-k overlap,
    weight drift (NaN where the layers' weights cannot be paired) and their score."""
    c = mom.mean_a.shape[0]
    corr = mom.correlation()
    jac = _jaccard(res_a, res_b, name)
    src_a, wa = channel_weights(model_a, name, c)
    src_b, wb = channel_weights(model_b, name, c)
    if wa is not None and wb is not None and wa.shape == wb.shape:
        drift, change = _cosine_distance(wa, wb), _relative_change(wa, wb)
    else:
        drift = torch.full((c,), float("nan"), dtype=torch.float64)
        change = drift.clone()
    score = change_score(corr, jac, drift)
    order = sorted(range(c), key=lambda j: (-float(score[j]), j))
    return ChannelChanges(
        layer=name, correlation=corr.numpy(), jaccard=jac.numpy(), drift=drift.numpy(),
        score=score.numpy(), order=np.asarray(order, dtype=np.int64),
        weight_module=src_a if src_a == src_b else None, weight_change=change.numpy())
