r"""``captum-topk compare``: load two models and a dataset, compare them, write the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
import torch
from .comparison import Comparison, compare_models
from .report import save_report
from ..utils.files import PathLike



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
    from ..models.registry import load_model
    from ..models.info import make_transform
    from ..runs.datasets import open_dataset
    from ..models.anatomy import model_blocks

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
