r"""``captum-topk compare``: load two models and a dataset, compare them, write the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..utils.files import PathLike
from .comparison import Comparison, MatchSpec, compare_models, same_module
from .inputs import normalisation_map
from .report import save_report
from .similarity import MEASURES, SVCCA, PWCCA, SimilarityMeasure


def _checkpoint_meta(name: str, checkpoint: Optional[str]) -> Dict[str, Any]:
    from ..models.checkpoints import load_checkpoint_state_dict

    path = checkpoint or (name if os.path.isfile(name) else None)
    if path is None:
        return {}
    return load_checkpoint_state_dict(path)[1]


def _label(name: str, checkpoint: Optional[str]) -> str:
    if checkpoint:
        return Path(checkpoint).stem
    return Path(name).stem if os.path.isfile(name) else name


def comparable_blocks(model: nn.Module) -> List[str]:
    r"""The blocks of :func:`~captum_topk.models.anatomy.model_blocks`, a container that is
    never called itself (``nn.ModuleList`` / ``nn.ModuleDict``, e.g. EfficientNet's ``_blocks``)
    replaced by its children: every name is a module whose output can be hooked."""
    from ..models.anatomy import model_blocks

    named = dict(model.named_modules())
    out: List[str] = []
    for name in model_blocks(model):
        mod = named[name]
        if isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
            out.extend(f"{name}.{child}" for child, _ in mod.named_children())
        else:
            out.append(name)
    return out


def _measure_objects(measures: Sequence[str], cca_dims: Optional[int]) -> List[SimilarityMeasure]:
    out: List[SimilarityMeasure] = []
    for name in measures:
        if name not in MEASURES:
            raise ValueError(f"Unknown similarity measure {name!r}; choose from {', '.join(MEASURES)}.")
        cls = MEASURES[name]
        out.append(cls(max_dims=cca_dims) if cls in (SVCCA, PWCCA) else cls())
    return out


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
    measures: Optional[Sequence[str]] = None,
    permutations: int = 10,
    cca_dims: Optional[int] = None,
    match: MatchSpec = None,
    match_top: int = 3,
    match_positions: str = "resampled",
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
            :func:`comparable_blocks`); ``layers_b`` those of B (default: the same names
            when B has them all, else B's own blocks).
        input_size (int, optional), resize_size (int, optional): the common preprocessing;
            default: the ``input_size`` / ``resize_size`` recorded in B's (else A's)
            checkpoint, else A's own.
        out (str): report folder (see :func:`save_report`).
        measures (list of str, optional): similarity measures with chance baselines
            (``cka``, ``procrustes``, ``svcca``, ``pwcca``); default: all four when the layer
            names of A and B differ (different architectures), none otherwise (the
            per-channel ranking applies). ``[]`` for none.
        cca_dims (int, optional): at most this many SVD directions per side for SVCCA / PWCCA
            (see "Small samples" in :mod:`captum_topk.compare.similarity`).
        match: layer pairs whose units are matched (``["features.7:features.7"]``) or
            ``"auto"``; default ``"auto"`` when the layer names differ, else none.
        others: see :func:`compare_models`.

    Returns:
        (Comparison, list of Path): the comparison and the files written.
    """
    from ..models.registry import load_model
    from ..models.info import make_transform
    from ..data.descriptor import open_dataset

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
        from ..data.elpv import elpv_dataset

        dataset, descriptor = elpv_dataset(transform), {"kind": "elpv"}
    else:
        dataset, descriptor = open_dataset(data, transform)
    input_map = normalisation_map(info_a.mean, info_a.std, info_b.mean, info_b.std)
    layers = list(layers) if layers else comparable_blocks(net_a)
    if layers_b is None:
        own_b = {n for n, _ in net_b.named_modules()}
        layers_b = layers if all(n in own_b for n in layers) else comparable_blocks(net_b)
    layers_b = list(layers_b)
    mods_a, mods_b = dict(net_a.named_modules()), dict(net_b.named_modules())
    different = layers_b != layers or not all(same_module(mods_a[n], mods_b[n]) for n in layers
                                              if n in mods_a and n in mods_b)
    if measures is None:
        measures = list(MEASURES) if different else []
    if match is None and different:
        match = "auto"
    names = (_label(model_a, checkpoint_a), _label(model_b, checkpoint_b))
    cmp = compare_models(net_a, net_b, dataset, layers, layers_b, k=k, batch_size=batch_size,
                         representation=representation, max_images=max_images,
                         input_map_b=input_map, names=names, progress=progress,
                         measures=_measure_objects(measures, cca_dims), permutations=permutations,
                         match=match, match_top=match_top, match_positions=match_positions)
    settings = {"model_a": model_a, "checkpoint_a": checkpoint_a, "model_b": model_b,
                "checkpoint_b": checkpoint_b, "data": descriptor, "input_size": size,
                "resize_size": resize, "k": k, "batch_size": batch_size,
                "max_images": max_images, "mean": list(info_a.mean), "std": list(info_a.std),
                "measures": list(measures), "permutations": permutations, "cca_dims": cca_dims,
                "match": match if isinstance(match, (str, type(None))) else [list(p) if not isinstance(p, str) else p for p in match],
                "match_top": match_top, "match_positions": match_positions,
                "categories_b": info_b.categories if info_b.num_classes <= 100 else None}
    written = save_report(cmp, out, images_source=dataset, mean=info_a.mean, std=info_a.std,
                          top=top, settings=settings)
    return cmp, written
