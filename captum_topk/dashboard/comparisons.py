r"""Dashboard comparisons of two runs (pretrained vs fine-tuned, or two models) through
:mod:`captum_topk.compare`: the fine-tuned checkpoint to offer, a matching run, shared layers,
similarity with chance baselines, matched units and the channels that changed most."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..core.result import TopKResult
from ..models.registry import DEFAULT_MODEL
from .roots import CHECKPOINT_EXTENSIONS, Roots, _within, list_files
from ..runs.folder import Run
from .spec import JobSpec

__all__ = [
    "find_finetuned",
    "like_run",
    "matching_layers",
    "shared_images",
    "compare_status",
    "compare_runs",
    "SIMILARITY_MEASURES",
]

def find_finetuned(roots: Roots) -> Optional[str]:
    r"""The newest fine-tuned checkpoint under the checkpoints root (relative path), or None.

    Fine-tuned checkpoints are those whose name holds ``finetuned`` (what ``captum-topk
    finetune`` writes), per-epoch ones (``-epochNN``) and linear probes left out.
    """
    files = [f for f in list_files(roots.checkpoints, CHECKPOINT_EXTENSIONS)
             if "finetuned" in Path(f).name and "-epoch" not in Path(f).name
             and "linear-probe" not in Path(f).name]
    if not files:
        return None
    return max(files, key=lambda f: ((roots.checkpoints / f).stat().st_mtime, f))


def like_run(run: Run, checkpoint: str, roots: Roots) -> JobSpec:
    r"""A job mining ``checkpoint`` exactly like ``run`` (same architecture name, layers, data,
    k and input size), so that the two can be compared channel by channel.

    Raises:
        ValueError: the run's images are in a folder outside the data root.
    """
    m = run.result.metadata
    desc = m.get("data") or {"kind": "demo"}
    data = None
    if desc.get("kind") != "demo":
        folder = Path(str(desc.get("root", ""))).resolve()
        if not _within(folder, roots.data):
            raise ValueError(f"The run's images ({folder}) are outside the data root {roots.data}.")
        data = folder.relative_to(roots.data).as_posix() or "."
    return JobSpec(model=str(m.get("model_name", DEFAULT_MODEL)), checkpoint=checkpoint,
                   layers=tuple(run.layers), data=data, k=run.result.k,
                   input_size=int(run.info.input_size[0]))


def matching_layers(run_a: Run, run_b: Run) -> List[str]:
    r"""Layers whose channels correspond one to one in both runs: same name, same number of
    channels, and the same architecture (an ONNX Runtime run matches any: it is an export)."""
    arch_a, arch_b = run_a.info.arch, run_b.info.arch
    if arch_a and arch_b and "onnx" not in (arch_a, arch_b) and arch_a != arch_b:
        return []
    return [layer for layer in run_a.layers if layer in run_b.layers
            and run_a.result.num_channels(layer) == run_b.result.num_channels(layer)]


def shared_images(result_a: TopKResult, result_b: TopKResult, layer: str, channel: int,
                  which: str = "top") -> int:
    r"""How many images are in both results' top-k (or bottom-k) of one channel (by image
    index: meaningful when both runs mined the same images in the same order)."""
    a = {r.index for r in result_a.records(layer, channel, which)}
    b = {r.index for r in result_b.records(layer, channel, which)}
    return len(a & b)


def compare_status(run_a: Optional[Run] = None, run_b: Optional[Run] = None) -> Optional[str]:
    r"""None when :func:`compare_runs` can compare these runs, else a sentence saying why not
    (:mod:`captum_topk.compare` missing, or a run without its PyTorch model)."""
    try:
        from ..compare import compare_models  # noqa: F401
    except ImportError as exc:
        return (f"captum_topk.compare is not available ({exc}): the CKA heatmap and the ranking "
                "of changed channels need it. The side-by-side view works without it.")
    for tag, run in (("A", run_a), ("B", run_b)):
        if run is not None and run.model is None:
            return (f"Run {tag} was mined through ONNX Runtime: CKA and the channel ranking run both "
                    "PyTorch models over the images; pick PyTorch runs for them.")
    return None


#: Similarity measures the Compare page offers beside the streaming CKA (pooled activations).
SIMILARITY_MEASURES = ("cka", "procrustes", "svcca", "pwcca")


def compare_runs(run_a: Run, run_b: Run, max_images: int = 500, batch_size: int = 16,
                 measures: Sequence[str] = SIMILARITY_MEASURES, permutations: int = 10,
                 match_top: int = 3) -> Dict[str, Any]:
    r"""Layer-by-layer similarity, matched units and per-channel changes between the models of
    two runs, on the images of ``run_a`` (through :func:`captum_topk.compare.compare_models`:
    one streamed pass of both models, a second one for the matched units; B gets A's images
    re-normalised when their preprocessing differs).

    Units are matched (one-to-one, Li et al. 2016) for the same-name layers of one
    architecture (how many units of a fine-tuned copy still match themselves), else for the
    ``match_top`` layer pairs of highest CKA (two different models).

    Args:
        run_a, run_b (Run): two runs with their PyTorch models.
        max_images (int): compare on the first images of ``run_a`` only.
        batch_size (int): CKA minibatch size (at least 4).
        measures (sequence of str): similarity measures with chance baselines
            (:data:`~captum_topk.compare.similarity.MEASURES` names).
        permutations (int): shuffled pairings per chance baseline.
        match_top (int): layer pairs matched between two architectures.

    Returns:
        dict: ``cka`` (La, Lb) float array, ``layers_a``, ``layers_b``, ``n_images``,
        ``channels`` (layer -> ranked rows: ``rank``, ``channel``, ``score``,
        ``correlation``, ``jaccard``, ``drift``, ``weight_change``; for same-name,
        same-width layers), ``score_formula``, ``similarity`` (measure -> dict of ``value``,
        ``chance_mean``, ``chance_high`` (La, Lb) arrays, ``quantile``, ``permutations``) and
        ``matchings`` (list of dicts, one per matched layer pair: ``layer_a``, ``layer_b``,
        ``pairs`` [(unit of A, unit of B, correlation)] best first, ``poorly`` (the worst
        matched, :meth:`~captum_topk.compare.matching.UnitMatching.poorly_matched`),
        ``unmatched``, ``mean``, ``chance``, ``self_matches`` (units matched to the same
        index, or None across architectures), ``images``, ``positions``).
    """
    from ..compare.comparison import compare_models
    from ..compare.inputs import normalisation_map

    why = compare_status(run_a, run_b)
    if why:
        raise ValueError(why)
    ia, ib = run_a.info, run_b.info
    input_map = normalisation_map(ia.mean, ia.std, ib.mean, ib.std)  # A's normalisation -> B's

    n = min(len(run_a.dataset), max_images)
    data = run_a.dataset.subset(range(n)) if n < len(run_a.dataset) else run_a.dataset
    same = matching_layers(run_a, run_b)
    cmp = compare_models(run_a.model, run_b.model, data, run_a.layers, run_b.layers, k=run_a.result.k,
                         batch_size=max(4, batch_size), input_map_b=input_map, progress=False,
                         measures=list(measures), permutations=permutations,
                         match=[(layer, layer) for layer in same] if same else "auto", match_top=match_top)
    similarity = {name: {"value": np.asarray(m.value, float), "chance_mean": np.asarray(m.chance_mean, float),
                         "chance_high": np.asarray(m.chance_high, float), "quantile": m.quantile,
                         "permutations": m.permutations} for name, m in cmp.similarity.items()}
    matchings = []
    for (la, lb), m in cmp.matchings.items():
        pairs = m.pairs()
        matchings.append({
            "layer_a": la, "layer_b": lb, "pairs": pairs, "poorly": m.poorly_matched(10),
            "unmatched": m.unmatched(), "mean": m.mean_correlation, "chance": m.chance_correlation,
            "self_matches": sum(u == v for u, v, _ in pairs) if la == lb and same else None,
            "images": m.images, "positions": m.positions})
    return {"cka": np.asarray(cmp.cka, float), "layers_a": list(cmp.layers_a), "layers_b": list(cmp.layers_b),
            "n_images": cmp.n_images, "channels": {name: ch.rows() for name, ch in cmp.channels.items()},
            "score_formula": "((1 - correlation) / 2 + (1 - jaccard) + drift / 2) / 3",
            "similarity": similarity, "matchings": matchings}
