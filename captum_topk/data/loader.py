r"""Batching ``(image, label, id)`` items: a deterministic ``DataLoader``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple
import torch
from torch.utils.data import DataLoader, Dataset
from .dataset import ImageDataset



def collate(batch: Sequence[Tuple[Any, int, str]]) -> Tuple[Any, torch.Tensor, List[str]]:
    r"""Batch ``(image, label, id)`` items into ``(images, labels, ids)``.

    ``images`` is a stacked ``(N, C, H, W)`` tensor when the items are tensors of one
    shape, else a list (PIL images, or tensors of different sizes); ``labels`` is a
    ``torch.long`` tensor; ``ids`` a list of str.
    """
    images, labels, ids = zip(*batch) if batch else ((), (), ())
    if images and all(isinstance(x, torch.Tensor) for x in images) and len(
        {tuple(x.shape) for x in images}
    ) == 1:
        stacked: Any = torch.stack(list(images))
    else:
        stacked = list(images)
    return stacked, torch.tensor(labels, dtype=torch.long), list(ids)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    workers: int = 0,
    transform: Optional[Callable] = None,
) -> DataLoader:
    r"""A deterministic ``DataLoader`` over ``dataset`` yielding ``(images, labels, ids)``.

    The order is the dataset's (no shuffling), so batch ``b`` holds indices
    ``b * batch_size ...``.

    Args:
        dataset (Dataset): an :class:`ImageDataset` or any dataset of ``(image, label, id)``.
        batch_size (int): images per batch.
        workers (int): loader worker processes (0: load in the main process).
        transform (Callable, optional): replaces an :class:`ImageDataset`'s transform.

    Returns:
        torch.utils.data.DataLoader
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if transform is not None:
        if not isinstance(dataset, ImageDataset):
            raise TypeError("transform= needs an ImageDataset; set the transform on the dataset")
        dataset = dataset.with_transform(transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
    )
