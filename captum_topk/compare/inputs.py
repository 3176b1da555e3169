r"""What the two compared models see: the compared images batch by batch, and B's input made
from A's (another normalisation). Both models run in
:func:`~captum_topk.utils.modules.eval_mode` for the pass.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..capture.batch import split_batch

__all__ = ["ImageBatch", "image_batches", "normalisation_map"]


class ImageBatch(NamedTuple):
    r"""One batch of the compared images.

    Attributes:
        images (Tensor): ``(n, 3, H, W)`` model A's input.
        labels (list of int): ``-1`` where unknown.
        ids (list of str): image ids (``str(index)`` when the data has none).
        start (int): position of the first image in the pass.
    """

    images: Tensor
    labels: List[int]
    ids: List[str]
    start: int


def _raw_batches(data: Any, batch_size: int) -> Iterable[Any]:
    from torch.utils.data import Dataset

    if isinstance(data, Tensor):
        return (data[i : i + batch_size] for i in range(0, data.shape[0], batch_size))
    if isinstance(data, Dataset):
        from ..data.loader import make_loader

        return make_loader(data, batch_size=batch_size)
    return data


def image_batches(data: Any, batch_size: int = 32, max_images: Optional[int] = None) -> Iterator[ImageBatch]:
    r"""The compared images in order, in batches, at most ``max_images`` of them.

    Args:
        data: a dataset of ``(image, label, id)`` items (read in order, no shuffling), a
            DataLoader / iterable of batches (any form :func:`~captum_topk.capture.batch.split_batch`
            reads), or an ``(N, 3, H, W)`` tensor.
        batch_size (int): batch size for a dataset or a tensor.
        max_images (int, optional): stop after this many images.

    Yields:
        ImageBatch
    """
    seen = 0
    for batch in _raw_batches(data, batch_size):
        images, labels, ids, _ = split_batch(batch)
        if max_images is not None:
            keep = max_images - seen
            if keep <= 0:
                return
            images = images[:keep]
            labels = labels[:keep] if labels is not None else None
            ids = ids[:keep] if ids is not None else None
        n = images.shape[0]
        if n == 0:
            continue
        yield ImageBatch(images, list(labels) if labels is not None else [-1] * n,
                         list(ids) if ids is not None else [str(i) for i in range(seen, seen + n)], seen)
        seen += n


def normalisation_map(mean_a: Sequence[float], std_a: Sequence[float], mean_b: Sequence[float],
                      std_b: Sequence[float]) -> Optional[Callable[[Tensor], Tensor]]:
    r"""The map from a batch normalised for model A to the same pixels normalised for B.

    ``x_B = ((x_A * std_A + mean_A) - mean_B) / std_B`` per channel.

    Args:
        mean_a, std_a, mean_b, std_b (sequence of float): per-channel normalisations
            (``ModelInfo.mean`` / ``.std``).

    Returns:
        Callable or None: ``None`` when both normalisations are the same (nothing to map).

    Example::

        >>> _, ia = load_model("mobilenet_v2-imagenet"); _, ib = load_model("efficientnet_lite0-imagenet")
        >>> to_b = normalisation_map(ia.mean, ia.std, ib.mean, ib.std)
    """
    if tuple(mean_a) == tuple(mean_b) and tuple(std_a) == tuple(std_b):
        return None
    ma, sa = torch.tensor(mean_a).view(1, -1, 1, 1), torch.tensor(std_a).view(1, -1, 1, 1)
    mb, sb = torch.tensor(mean_b).view(1, -1, 1, 1), torch.tensor(std_b).view(1, -1, 1, 1)

    def a_to_b(x: Tensor) -> Tensor:
        return ((x * sa.to(x) + ma.to(x)) - mb.to(x)) / sb.to(x)

    return a_to_b
