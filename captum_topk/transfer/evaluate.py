r"""Score a classifier on some images of a labelled dataset (one pass, eval mode, no gradients).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from ..utils.modules import eval_mode
from .metrics import classification_metrics


def evaluate(
    model: nn.Module,
    dataset: Any,
    indices: Optional[Sequence[int]] = None,
    batch_size: int = 64,
    num_classes: Optional[int] = None,
    workers: int = 0,
    progress: bool = False,
) -> Dict[str, Any]:
    r"""Classification metrics of ``model`` on ``dataset[indices]``.

    The model runs in eval mode under ``torch.no_grad()`` (its mode is restored after);
    the dataset must yield ``(image, label, id)`` with the preprocessing the model expects
    (for a checkpoint of :func:`~captum_topk.transfer.finetune.finetune`, the ``transform``
    returned by :func:`~captum_topk.transfer.finetune.load_finetuned`). Images that fail to
    load are left out (with their labels).

    Args:
        model (nn.Module): a classifier returning ``(N, K)`` logits.
        dataset: an :class:`~captum_topk.data.ImageDataset` or any dataset of
            ``(image, label, id)``.
        indices (sequence of int, optional): the items to score (default all).
        batch_size (int): images per forward.
        num_classes (int, optional): ``K`` (default: the logits' width).
        workers (int): DataLoader workers.
        progress (bool): a tqdm bar.

    Returns:
        dict: :func:`~captum_topk.transfer.metrics.classification_metrics` (``accuracy``,
        ``balanced_accuracy``, ``loss``, ``n``, ``confusion``).

    Example::

        >>> model, info = load_finetuned("checkpoints/mobilenet_v2-elpv-finetuned.pt")
        >>> evaluate(model, elpv_dataset(info.transform), test_idx)["accuracy"]
    """
    from ..data.loader import make_loader

    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        raise ValueError("evaluate() needs at least one image index.")
    sub = dataset.subset(idx.tolist()) if hasattr(dataset, "subset") else torch.utils.data.Subset(
        dataset, idx.tolist())
    logits, labels = [], []
    bar = tqdm(total=len(idx), unit="img", desc="evaluate", disable=not progress)
    try:
        with eval_mode(model), torch.no_grad():
            for images, lab, _ids in make_loader(sub, batch_size=batch_size, workers=workers):
                logits.append(model(images).float())
                labels.append(torch.as_tensor(lab, dtype=torch.int64))
                bar.update(images.shape[0])
    finally:
        bar.close()
    return classification_metrics(torch.cat(logits), torch.cat(labels), num_classes)
