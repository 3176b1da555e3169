r"""Match two sets of concepts (e.g. a pretrained model's and its fine-tuned checkpoint's).

One-to-one matching by the Hungarian method on a similarity matrix, through the units'
matching (:meth:`captum_topk.compare.matching.UnitMatching.from_correlation`):

* ``by="cosine"``: the cosine of the directions (both sets of the same layer width ``C``);
* ``by="correlation"``: the Pearson correlation of the concept activations over ``data`` (each
  image at each position of the coarser grid, the finer map average-pooled to it; streamed
  with :class:`~captum_topk.core.accumulators.crosscorr.CrossCorrelation`), ``a``'s concepts
  encoded on ``model_a``'s layer and ``b``'s on ``model_b``'s, so the two may differ in width.

A concept of ``a`` matched with similarity ``>= threshold`` (default 0.5) is **kept**; one of
``a`` without such a match is **dropped**; one of ``b`` without such a match is **created**.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..compare.inputs import image_batches
from ..compare.matching import UnitMatching
from ..core.accumulators.crosscorr import CrossCorrelation
from ..core.loop import count_images
from ..core.sources.concepts import concept_layer
from ..utils.modules import eval_mode, root_module
from .base import Concepts
from .stream import make_source

__all__ = ["match_concepts", "ConceptMatching", "MATCH_THRESHOLD"]

#: Similarity from which a matched pair counts as the same concept.
MATCH_THRESHOLD = 0.5


@dataclass
class ConceptMatching:
    r"""Concepts of ``a`` matched one-to-one to concepts of ``b``.

    Attributes:
        units (UnitMatching): the matching (``assignment``, ``correlation`` = the similarity of
            each matched pair, ``best``, ``matrix``).
        by (str): ``"cosine"`` or ``"correlation"``.
        threshold (float): similarity from which a pair is the same concept.
        kept (list of (int, int, float)): ``(concept of a, concept of b, similarity)``.
        dropped (list of int): concepts of ``a`` without a match ``>= threshold``.
        created (list of int): concepts of ``b`` without a match ``>= threshold``.
    """

    units: UnitMatching
    by: str
    threshold: float
    kept: List[tuple]
    dropped: List[int]
    created: List[int]

    def to_json(self) -> Dict[str, Any]:
        r"""JSON-able summary."""
        return {"by": self.by, "threshold": self.threshold, "kept": [list(k) for k in self.kept],
                "dropped": self.dropped, "created": self.created,
                "mean_similarity": self.units.mean_correlation}


def _correlation(a: Concepts, b: Concepts, model_a: Any, model_b: Any, data: Any, batch_size: int,
                 max_images: Optional[int], positions: str, progress: bool = False) -> tuple:
    from tqdm.auto import tqdm

    src_a, name_a = make_source(model_a, a.layer)
    src_b, name_b = make_source(model_b, b.layer)
    acc = CrossCorrelation(a.n_concepts, b.n_concepts, positions=positions)
    roots = [r for r in (root_module(model_a), root_module(model_b)) if r is not None]
    images = 0
    with tqdm(total=count_images(data, max_images), unit="img", desc="match concepts", disable=not progress) as bar:
        for batch in image_batches(data, batch_size=batch_size, max_images=max_images):
            with eval_mode(*roots), torch.no_grad():
                ua = a.encode(src_a(batch.images)[name_a])
                ub = b.encode(src_b(batch.images)[name_b])
            acc.update(ua, ub)
            images += batch.images.shape[0]
            bar.update(batch.images.shape[0])
    if images == 0:
        raise ValueError("no images: the data gave no batch.")
    return acc.compute(), images


def match_concepts(a: Concepts, b: Concepts, *, by: str = "cosine", model_a: Any = None,
                   model_b: Any = None, data: Any = None, threshold: float = MATCH_THRESHOLD,
                   batch_size: int = 32, max_images: Optional[int] = None,
                   positions: str = "resampled", progress: bool = False) -> ConceptMatching:
    r"""Match the concepts of ``a`` to those of ``b`` (Hungarian, maximum total similarity).

    Args:
        a, b (Concepts): the two sets (e.g. before / after fine-tuning).
        by (str): ``"cosine"`` (directions, same width) or ``"correlation"`` (activations over
            ``data``, needs ``model_a``, ``model_b`` and ``data``).
        model_a, model_b: the models the concepts' layers belong to (``model_b`` defaults to
            ``model_a``).
        data: images for ``by="correlation"`` (DataLoader, dataset or tensor).
        threshold (float): similarity from which a pair counts as the same concept.
        batch_size (int), max_images (int, optional): the pass over ``data``.
        positions (str): ``"resampled"`` (default) or ``"pooled"``, as in
            :class:`~captum_topk.core.accumulators.crosscorr.CrossCorrelation`.
        progress (bool): a tqdm bar over the images of ``by="correlation"``.
    Returns:
        ConceptMatching
    Example::

        >>> m = match_concepts(before, after, by="correlation", model_a=pre, model_b=tuned, data=loader)
        >>> m.created                           # concepts fine-tuning made
    """
    if by == "cosine":
        if a.channels != b.channels:
            raise ValueError(f"by='cosine' compares directions of the same width, got {a.channels} and "
                             f"{b.channels} channels; use by='correlation' with the models and data.")
        da = torch.nn.functional.normalize(a.directions.double(), dim=1)
        db = torch.nn.functional.normalize(b.directions.double(), dim=1)
        matrix, images = da @ db.T, 0
    elif by == "correlation":
        if model_a is None or data is None:
            raise ValueError("by='correlation' needs model_a (and model_b if another model) and data.")
        matrix, images = _correlation(a, b, model_a, model_b if model_b is not None else model_a, data,
                                      batch_size, max_images, positions, progress)
    else:
        raise ValueError(f"by must be 'cosine' or 'correlation', got {by!r}.")
    units = UnitMatching.from_correlation(matrix, concept_layer(a), concept_layer(b),
                                          keep_matrix=True, images=images,
                                          positions=positions if by == "correlation" else "directions")
    sim = units.correlation
    kept = [(int(i), int(units.assignment[i]), float(sim[i])) for i in range(a.n_concepts)
            if units.assignment[i] >= 0 and sim[i] >= threshold]
    matched_b = {j for _, j, _ in kept}
    dropped = [i for i in range(a.n_concepts) if i not in {k for k, _, _ in kept}]
    created = [j for j in range(b.n_concepts) if j not in matched_b]
    return ConceptMatching(units, by, float(threshold), kept, dropped, created)
