r"""Match the units of a layer of model A to those of a layer of model B (Li et al. 2016).

Two different networks (other architectures, or the same one trained from another seed) learn
their features in no particular order: channel ``i`` of A has no reason to be channel ``i``
of B. Following Li, Yosinski, Clune, Lipson & Hopcroft (2016, "Convergent learning: do
different neural networks learn the same representations?"), units are compared by the
Pearson correlation of their activations over the same images, and matched:

* **one-to-one** (:attr:`UnitMatching.assignment`): the bipartite matching that maximises the
  total correlation of the matched pairs (``scipy.optimize.linear_sum_assignment``, the
  Hungarian method; rectangular: with ``C_a > C_b`` only ``C_b`` units of A find a partner,
  the others get ``-1``);
* **best match per unit** (:attr:`UnitMatching.best`): for each unit of A the unit of B it
  correlates with most, not one-to-one (several units of A may pick the same unit of B).

The correlation matrix comes from one streamed pass (:class:`CrossCorrelation`): each batch
goes once through each model, the forward stopped right after the layer, the hooks removed in
``finally``; memory ``O(C_a * C_b)`` whatever the number of images. The signed correlation is
maximised: a unit that is the negative of another (rare after a ReLU) is not a match.

**Chance level** (``chance=True``): the best of many correlations is biased upwards, more so
with few samples and many units. In the same pass a second accumulator pairs each image of A
with another image of B (B's batch rolled by half its size) and is matched the same way:
:attr:`UnitMatching.chance_correlation` is the mean matched correlation when the images do
not correspond. (A batch must hold more than one photo when the data are augmented views of
photos, consecutive in the batch; batches of one image are left out of the chance level.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..utils.modules import eval_mode
from ..capture.hooks import resolve_layers, run_capture
from ..core.accumulators.base import Accumulator
from ..core.accumulators.crosscorr import CrossCorrelation, POSITIONS
from ..core.loop import count_images
from .inputs import image_batches
from .similarity import _num

__all__ = ["UnitMatching", "match_units", "match_layers", "PairAccumulator", "KEEP_MATRIX_MAX"]

#: With ``keep_matrix=None`` the full ``C_a x C_b`` matrix is kept when it has at most this many
#: entries (2**20: 8 MiB of float64, e.g. 1024 x 1024 channels).
KEEP_MATRIX_MAX = 1 << 20

LayerPair = Tuple[str, str]


@dataclass
class UnitMatching:
    r"""Units of ``layer_a`` (model A) matched to units of ``layer_b`` (model B).

    Attributes:
        layer_a, layer_b (str): the two layers.
        assignment (numpy.ndarray): ``(C_a,)`` int64, the unit of B matched one-to-one to
            each unit of A (maximum total correlation), ``-1`` when unmatched (``C_a > C_b``).
        correlation (numpy.ndarray): ``(C_a,)`` float64 correlation of each matched pair,
            NaN for the unmatched.
        best (numpy.ndarray): ``(C_a,)`` int64, the unit of B most correlated with each unit
            of A (not one-to-one; ties to the lower index).
        best_correlation (numpy.ndarray): ``(C_a,)`` float64, that correlation.
        matrix (numpy.ndarray or None): the full ``(C_a, C_b)`` correlation matrix, kept when
            asked (``keep_matrix=True``) or when it is small (``<= KEEP_MATRIX_MAX`` entries).
        samples (int): samples the correlations are computed over (images x grid cells).
        images (int): images seen.
        positions (str): ``"resampled"`` or ``"pooled"``.
        dead_a, dead_b (numpy.ndarray): indices of units constant over the data (their
            correlations are 0).
        chance_correlation, chance_best_correlation (float): :attr:`mean_correlation` and
            :attr:`mean_best_correlation` with mispaired images (NaN unless ``chance=True``).
    """

    layer_a: str
    layer_b: str
    assignment: np.ndarray
    correlation: np.ndarray
    best: np.ndarray
    best_correlation: np.ndarray
    matrix: Optional[np.ndarray]
    samples: int
    images: int
    positions: str
    dead_a: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dead_b: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chance_correlation: float = float("nan")
    chance_best_correlation: float = float("nan")

    @classmethod
    def from_correlation(cls, matrix: Any, layer_a: str = "a", layer_b: str = "b",
                         keep_matrix: Optional[bool] = None, samples: int = 0, images: int = 0,
                         positions: str = "resampled", dead_a: Any = (), dead_b: Any = ()) -> "UnitMatching":
        r"""Match from a ``(C_a, C_b)`` correlation matrix (e.g. :meth:`CrossCorrelation.compute`).

        Args:
            matrix (array or Tensor): ``(C_a, C_b)`` correlations, finite.
            keep_matrix (bool, optional): keep the matrix on the result (None: when small).
            others: recorded as they are.

        Returns:
            UnitMatching
        """
        r = matrix.detach().cpu().double().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix, np.float64)
        if r.ndim != 2 or r.size == 0 or not np.isfinite(r).all():
            raise ValueError(f"A correlation matrix is a finite (C_a, C_b) array, got shape {r.shape}.")
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(r, maximize=True)
        ca = r.shape[0]
        assignment = np.full(ca, -1, dtype=np.int64)
        assignment[rows] = cols
        corr = np.full(ca, np.nan)
        corr[rows] = r[rows, cols]
        best = r.argmax(1).astype(np.int64)
        keep = r.size <= KEEP_MATRIX_MAX if keep_matrix is None else bool(keep_matrix)
        return cls(layer_a, layer_b, assignment, corr, best, r[np.arange(ca), best],
                   r if keep else None, int(samples), int(images), positions,
                   np.asarray(dead_a, dtype=np.int64).reshape(-1), np.asarray(dead_b, dtype=np.int64).reshape(-1))

    @property
    def mean_correlation(self) -> float:
        r"""Mean correlation of the one-to-one matched pairs."""
        ok = ~np.isnan(self.correlation)
        return float(self.correlation[ok].mean()) if ok.any() else float("nan")

    @property
    def mean_best_correlation(self) -> float:
        r"""Mean correlation of each unit of A with its best match in B."""
        return float(self.best_correlation.mean())

    def order(self) -> np.ndarray:
        r"""Units of A by decreasing matched correlation (unmatched last, ties: lower unit)."""
        key = np.where(np.isnan(self.correlation), -np.inf, self.correlation)
        return np.lexsort((np.arange(key.size), -key))

    def poorly_matched(self, n: int = 10) -> List[Dict[str, Any]]:
        r"""The ``n`` matched units of A with the lowest matched correlation, worst first, as
        JSON-able dicts: ``unit``, ``match``, ``correlation``, ``best`` (the most correlated
        unit of B, not one-to-one), ``best_correlation``, ``dead`` (constant over the data).
        Units left without a partner (``C_a > C_b``) are in :meth:`unmatched`."""
        worst = [u for u in self.order()[::-1] if self.assignment[u] >= 0]
        worst.sort(key=lambda u: (float(self.correlation[u]), int(u)))
        dead = set(self.dead_a.tolist())
        return [{"unit": int(u), "match": int(self.assignment[u]), "correlation": float(self.correlation[u]),
                 "best": int(self.best[u]), "best_correlation": float(self.best_correlation[u]),
                 "dead": int(u) in dead} for u in worst[:n]]

    def unmatched(self) -> List[int]:
        r"""Units of A without a one-to-one partner (when ``C_a > C_b``), in order."""
        return np.flatnonzero(self.assignment < 0).tolist()

    def pairs(self, n: Optional[int] = None) -> List[Tuple[int, int, float]]:
        r"""``(unit of A, unit of B, correlation)`` of the matched pairs, best first."""
        out = [(int(u), int(self.assignment[u]), float(self.correlation[u]))
               for u in self.order() if self.assignment[u] >= 0]
        return out[:n]

    def to_json(self, poorly: int = 10) -> Dict[str, Any]:
        r"""Everything but the matrix, as plain JSON (NaN as null)."""
        return {"layer_a": self.layer_a, "layer_b": self.layer_b, "positions": self.positions,
                "samples": self.samples, "images": self.images,
                "method": "one-to-one: scipy.optimize.linear_sum_assignment maximising the total "
                          "Pearson correlation; best: argmax over B per unit of A",
                "mean_correlation": _num(self.mean_correlation),
                "mean_best_correlation": _num(self.mean_best_correlation),
                "chance": {"mean_correlation": _num(self.chance_correlation),
                           "mean_best_correlation": _num(self.chance_best_correlation),
                           "how": "the same matching with each image of A paired with another image of B"},
                "assignment": self.assignment.tolist(),
                "correlation": [_num(v) for v in self.correlation],
                "best": self.best.tolist(), "best_correlation": [float(v) for v in self.best_correlation],
                "dead_a": self.dead_a.tolist(), "dead_b": self.dead_b.tolist(),
                "poorly_matched": self.poorly_matched(poorly), "unmatched": self.unmatched()}


def _pairs(pairs: Sequence[Any]) -> List[LayerPair]:
    out: List[LayerPair] = []
    for p in pairs:
        if isinstance(p, str):
            if p.count(":") != 1:
                raise ValueError(f"A layer pair is 'layer_a:layer_b', got {p!r}.")
            p = tuple(p.split(":"))
        if len(p) != 2:
            raise ValueError(f"A layer pair is (layer_a, layer_b), got {p!r}.")
        out.append((str(p[0]), str(p[1])))
    if not out:
        raise ValueError("No layer pair to match.")
    return out


class PairAccumulator(Accumulator):
    r"""The unit matching of one layer pair: an :class:`~captum_topk.core.accumulators.Accumulator`
    holding the pair's :class:`CrossCorrelation` and, with ``chance``, its mispaired twin.

    Being an accumulator, a matching can be sharded, merged, saved and resumed
    (:meth:`state_dict` / :meth:`from_state_dict`) and gathered over ``torchrun`` ranks
    (:meth:`gather`), like every other statistic.

    Args:
        channels_a (int): ``C_a``, the channels of the layer of model A.
        channels_b (int): ``C_b``, those of the layer of model B.
        positions (str): ``"resampled"`` or ``"pooled"`` (see :class:`CrossCorrelation`).
        chance (bool): also accumulate the chance level: each image of A paired with another
            image of B (B's batch rolled by half its size; batches of one image left out).

    Example::

        >>> acc = PairAccumulator(64, 256, "resampled", chance=True)
        >>> acc.update(acts_a, acts_b)               # (N, 64, 14, 14), (N, 256, 27, 27)
        >>> acc.matching("features.7", "features.12").assignment[:4]
    """

    settings = ("channels_a", "channels_b", "positions", "chance")

    def __init__(self, channels_a: int, channels_b: int, positions: str = "resampled", chance: bool = False) -> None:
        self.channels_a, self.channels_b = int(channels_a), int(channels_b)
        self.positions, self.chance = str(positions), bool(chance)
        self.add_state("real", CrossCorrelation(self.channels_a, self.channels_b, self.positions))
        if self.chance:
            self.add_state("mispaired", CrossCorrelation(self.channels_a, self.channels_b, self.positions))

    def update(self, a: Tensor, b: Tensor) -> None:
        r"""Fold in a batch: ``(N, C_a, ...)`` and ``(N, C_b, ...)`` activations of the same images."""
        self.real.update(a, b)
        n = a.shape[0]
        if self.chance and n > 1:
            self.mispaired.update(a, b.roll(n // 2, dims=0))

    def compute(self) -> "UnitMatching":
        r"""The :class:`UnitMatching` (layers named ``"a"`` and ``"b"``: :meth:`matching` names them)."""
        return self.matching()

    def matching(self, layer_a: str = "a", layer_b: str = "b", keep_matrix: Optional[bool] = None) -> UnitMatching:
        r"""The :class:`UnitMatching` of everything seen, with the chance level when accumulated.

        Raises:
            ValueError: fewer than 2 samples seen.
        """
        m = matching_from(self.real, layer_a, layer_b, keep_matrix=keep_matrix)
        if self.chance and self.mispaired.samples >= 2:
            c = UnitMatching.from_correlation(self.mispaired.compute(), keep_matrix=False)
            m.chance_correlation, m.chance_best_correlation = c.mean_correlation, c.mean_best_correlation
        return m


def fold_pair(accs: Dict[LayerPair, PairAccumulator], pair: LayerPair, a: Tensor, b: Tensor,
              positions: str, chance: bool) -> None:
    r"""Feed one batch of a layer pair's activations, creating its accumulator on first use."""
    if pair not in accs:
        accs[pair] = PairAccumulator(a.shape[1], b.shape[1], positions, chance)
    accs[pair].update(a, b)


def match_layers(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    pairs: Sequence[Any],
    *,
    positions: str = "resampled",
    batch_size: int = 32,
    max_images: Optional[int] = None,
    input_map_b: Optional[Callable[[Tensor], Tensor]] = None,
    keep_matrix: Optional[bool] = None,
    chance: bool = False,
    progress: bool = True,
) -> Dict[LayerPair, UnitMatching]:
    r"""Match the units of several layer pairs in one streamed pass (see :func:`match_units`).

    Args:
        pairs (sequence): ``(layer_a, layer_b)`` tuples or ``"layer_a:layer_b"`` strings.
        others: as :func:`match_units`.

    Returns:
        dict: ``(layer_a, layer_b)`` -> :class:`UnitMatching`, in the order of ``pairs``.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
    pairs = list(dict.fromkeys(_pairs(pairs)))
    named_a = resolve_layers(model_a, list(dict.fromkeys(a for a, _ in pairs)))
    named_b = resolve_layers(model_b, list(dict.fromkeys(b for _, b in pairs)))
    ia = {n: i for i, (n, _) in enumerate(named_a)}
    ib = {n: i for i, (n, _) in enumerate(named_b)}
    mods_a, mods_b = [m for _, m in named_a], [m for _, m in named_b]
    accs: Dict[LayerPair, PairAccumulator] = {}
    bar = tqdm(total=count_images(data, max_images), unit="img", desc="match units", disable=not progress)
    try:
        with eval_mode(model_a, model_b), torch.no_grad():
            for batch in image_batches(data, batch_size, max_images):
                acts_a = run_capture(model_a, mods_a, batch.images)
                images_b = input_map_b(batch.images) if input_map_b is not None else batch.images
                acts_b = run_capture(model_b, mods_b, images_b)
                for la, lb in pairs:
                    fold_pair(accs, (la, lb), acts_a[ia[la]], acts_b[ib[lb]], positions, chance)
                bar.update(batch.images.shape[0])
    finally:
        bar.close()
    if not accs:
        raise ValueError("The data yielded no image: nothing to match.")
    return {pair: acc.matching(*pair, keep_matrix=keep_matrix) for pair, acc in accs.items()}


def matching_from(acc: CrossCorrelation, layer_a: str, layer_b: str,
                  keep_matrix: Optional[bool] = None) -> UnitMatching:
    r"""The :class:`UnitMatching` of a filled :class:`CrossCorrelation`."""
    return UnitMatching.from_correlation(
        acc.compute(), layer_a, layer_b, keep_matrix=keep_matrix, samples=acc.samples,
        images=acc.images, positions=acc.positions,
        dead_a=torch.nonzero(acc.constant_a).flatten().numpy(),
        dead_b=torch.nonzero(acc.constant_b).flatten().numpy())


def match_units(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    layer_a: str,
    layer_b: str,
    *,
    positions: str = "resampled",
    batch_size: int = 32,
    max_images: Optional[int] = None,
    input_map_b: Optional[Callable[[Tensor], Tensor]] = None,
    keep_matrix: Optional[bool] = None,
    chance: bool = False,
    progress: bool = True,
) -> UnitMatching:
    r"""Match each unit (channel) of ``layer_a`` in model A to a unit of ``layer_b`` in model B.

    One streamed pass: each batch goes through both models (eval mode, no gradients; the
    previous modes are restored), each forward stopped right after its layer, hooks removed in
    ``finally`` even when a forward raises. The ``(C_a, C_b)`` Pearson correlation matrix is
    accumulated over images and positions (:class:`CrossCorrelation`, memory independent of
    the number of images), then matched one-to-one (maximum total correlation) and best-per-unit.

    Args:
        model_a, model_b (nn.Module): the two models.
        data: model A's input: an ``(N, 3, H, W)`` tensor, a dataset of ``(image, label, id)``
            items (read in order) or an iterable of batches.
        layer_a (str): layer of A; layer_b (str): layer of B.
        positions (str): ``"resampled"`` (default: both maps on the coarser grid, the finer one
            adaptive-average-pooled; a sample is an image x grid cell) or ``"pooled"``
            (global average pooling; a sample is an image).
        batch_size (int): images per forward.
        max_images (int, optional): only the first images.
        input_map_b (Callable, optional): maps A's input batch to B's (another normalisation:
            :func:`~captum_topk.compare.inputs.normalisation_map`); default identity.
        keep_matrix (bool, optional): keep the full matrix on the result; default: when it
            has at most :data:`KEEP_MATRIX_MAX` entries.
        chance (bool): also the chance level with mispaired images (see the module doc;
            twice the accumulation work).
        progress (bool): tqdm bar.

    Returns:
        UnitMatching

    Raises:
        ValueError: unknown layers (with the closest names), a bad ``positions``, no image.

    Example::

        >>> a, info_a = load_model("mobilenet_v2-imagenet")
        >>> b, info_b = load_model("squeezenet1_1-imagenet")
        >>> m = match_units(a, b, demo_images(transform=info_a.transform), "features.7", "features.7")
        >>> m.assignment[:4], m.correlation[:4], m.poorly_matched(3)
    """
    out = match_layers(model_a, model_b, data, [(layer_a, layer_b)], positions=positions,
                       batch_size=batch_size, max_images=max_images, input_map_b=input_map_b,
                       keep_matrix=keep_matrix, chance=chance, progress=progress)
    return next(iter(out.values()))
