r"""Batching ``(image, label, id)`` items into dict batches that survive bad images.

A batch is a :class:`LoaderBatch`, a dict::

    {"images": (N, C, H, W) tensor, "labels": (N,) long tensor, "ids": [N str],
     "indices": (N,) long tensor of global image indices, "skipped": [SkippedImage, ...]}

An image that fails to load (corrupt, deleted since the dataset was built, over the size
limits, ``MemoryError``, a transform error...) is left out of ``images`` / ``labels`` / ``ids``
/ ``indices`` and listed in ``skipped`` instead, with its reason and the index it would have
had: the indices of the other images never shift. The loaders also gather every skip of the
current pass in their ``skipped`` attribute.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .dataset import ImageDataset
from .failures import LoadFailure, SkippedImage, describe_failure

__all__ = ["LoaderBatch", "collate", "make_loader", "ImageLoader", "GuardedDataset",
           "guarded", "globalize"]

_POSITIONAL = ("images", "labels", "ids")


class LoaderBatch(dict):
    r"""A dict batch: ``images``, ``labels``, ``ids``, ``indices``, ``skipped``.

    For code written against the former ``(images, labels, ids)`` tuples, a batch also
    unpacks as that tuple (``images, labels, ids = batch``) and ``batch[0]`` / ``[1]`` /
    ``[2]`` are ``images`` / ``labels`` / ``ids``; iterating it therefore yields those three
    values, not the keys (use :meth:`keys` / :meth:`items`). New code reads the keys, or
    :func:`captum_topk.capture.batch.split_batch`.
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return dict.__getitem__(self, _POSITIONAL[key])
        return dict.__getitem__(self, key)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(tuple(dict.__getitem__(self, k) for k in _POSITIONAL))

    @property
    def num_images(self) -> int:
        r"""Images in the batch (0 when every image of it failed)."""
        return len(dict.__getitem__(self, "ids"))


def _empty_images() -> torch.Tensor:
    return torch.empty((0, 0, 0, 0))


def collate(batch: Sequence[Union[Tuple[Any, int, str], LoadFailure]]) -> LoaderBatch:
    r"""Batch ``(image, label, id)`` items, dropping :class:`~.failures.LoadFailure` markers.

    Args:
        batch (list): items as a dataset's ``__getitems__`` returns them: ``(image, label,
            id)`` tuples, or :class:`~.failures.LoadFailure` for images that failed to load.

    Returns:
        LoaderBatch: ``images`` a stacked ``(N, C, H, W)`` tensor when the kept items are
        tensors of one shape, else a list (PIL images, or tensors of different sizes; an
        empty ``(0, 0, 0, 0)`` tensor when no item is kept); ``labels`` a ``(N,)``
        ``torch.long`` tensor; ``ids`` a list of str; ``indices`` the ``(N,)`` positions of
        the kept items in ``batch`` (loaders map them to global indices); ``skipped`` a
        :class:`~.failures.SkippedImage` per marker, ``index`` its position in ``batch``.

    Example::

        >>> b = collate([(torch.zeros(3, 2, 2), 1, "a"), LoadFailure("b.jpg", "empty file (0 bytes)", "b")])
        >>> b["images"].shape, b["indices"].tolist(), b["skipped"][0].reason
        (torch.Size([1, 3, 2, 2]), [0], 'empty file (0 bytes)')
    """
    kept: List[Tuple[Any, int, str]] = []
    positions: List[int] = []
    skipped: List[SkippedImage] = []
    for pos, item in enumerate(batch):
        if isinstance(item, LoadFailure):
            skipped.append(SkippedImage(item.source, item.reason, pos, item.id))
        else:
            kept.append(item)
            positions.append(pos)
    images, labels, ids = zip(*kept) if kept else ((), (), ())
    if not images:
        stacked: Any = _empty_images()
    elif all(isinstance(x, torch.Tensor) for x in images) and len({tuple(x.shape) for x in images}) == 1:
        stacked = torch.stack(list(images))
    else:
        stacked = list(images)
    return LoaderBatch(
        images=stacked,
        labels=torch.tensor(labels, dtype=torch.long),
        ids=[str(i) for i in ids],
        indices=torch.tensor(positions, dtype=torch.long),
        skipped=skipped,
    )


def globalize(batch: Any, batch_indices: Sequence[int]) -> LoaderBatch:
    r"""Map a collated batch's positions (``indices``, ``skipped[*].index``) to the global
    indices ``batch_indices`` the sampler asked for.

    Args:
        batch: a :class:`LoaderBatch` from :func:`collate`, or an ``(images, labels, ids)``
            tuple from another collate function (then every image was kept).
        batch_indices (sequence of int): the dataset indices of the batch, in order.
    Returns:
        LoaderBatch
    """
    where = torch.as_tensor(list(batch_indices), dtype=torch.long)
    if not isinstance(batch, dict):  # a custom collate_fn's (images, labels, ids)
        images, labels, ids = batch[0], batch[1], batch[2]
        return LoaderBatch(images=images, labels=torch.as_tensor(labels, dtype=torch.long),
                           ids=list(ids), indices=where.clone(), skipped=[])
    out = LoaderBatch(batch)
    out["indices"] = where[batch["indices"]] if len(batch["indices"]) else where[:0].clone()
    out["skipped"] = [s._replace(index=int(where[s.index])) for s in batch["skipped"]]
    return out


def _source_of(dataset: Any, index: int) -> Tuple[str, Optional[str]]:
    r"""(file or ``"item <i>"``, id or None) of ``dataset[index]``, looking through Subsets."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    sources, ids = getattr(dataset, "sources", None), getattr(dataset, "ids", None)
    try:
        source = str(sources[index]) if sources is not None else f"item {index}"
        return source, (str(ids[index]) if ids is not None else None)
    except (IndexError, TypeError, KeyError):
        return f"item {index}", None


class GuardedDataset(Dataset):
    r"""Any map-style dataset of ``(image, label, id)`` items, made safe for batching.

    ``dataset[i]`` is unchanged (it raises when the item fails); ``__getitems__`` (what a
    DataLoader calls) returns a :class:`~.failures.LoadFailure` in place of each item that
    raised an ``Exception``. Other attributes are the wrapped dataset's.

    Args:
        dataset (Dataset): the dataset to wrap.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        out: List[Any] = []
        for i in indices:
            try:
                out.append(self.dataset[i])
            except Exception as exc:
                source, image_id = _source_of(self.dataset, int(i))
                if isinstance(exc, RuntimeError) and exc.__cause__ is not None:
                    reason = describe_failure(exc.__cause__, "load")  # ImageDataset.load_image's
                else:
                    reason = describe_failure(exc, "item")
                out.append(LoadFailure(source, reason, image_id))
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def guarded(dataset: Dataset) -> Dataset:
    r"""``dataset`` itself when its ``__getitems__`` already catches per-image failures (an
    :class:`ImageDataset`), else a :class:`GuardedDataset` around it."""
    if isinstance(dataset, (ImageDataset, GuardedDataset)):
        return dataset
    return GuardedDataset(dataset)


class ImageLoader(DataLoader):
    r"""A deterministic ``DataLoader`` yielding :class:`LoaderBatch` dicts with global indices.

    Built by :func:`make_loader`. Besides the ``DataLoader`` API:

    Attributes:
        skipped (list of SkippedImage): every image skipped at load time during the current
            (or last) pass, in order; reset when a new pass starts.
        keep_empty (bool): yield batches whose every image failed (0 images) instead of
            leaving them out.
    """

    def __init__(self, *args: Any, keep_empty: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_empty = keep_empty
        self.skipped: List[SkippedImage] = []

    def __iter__(self) -> Iterator[LoaderBatch]:  # type: ignore[override]
        self.skipped = []
        skipped = self.skipped
        for batch_indices, batch in zip(self.batch_sampler, super().__iter__()):
            batch = globalize(batch, batch_indices)
            skipped.extend(batch["skipped"])
            if batch.num_images or self.keep_empty:
                yield batch


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    workers: int = 0,
    transform: Optional[Callable] = None,
    *,
    keep_empty: bool = False,
    pin_memory: bool = False,
) -> ImageLoader:
    r"""A deterministic ``DataLoader`` over ``dataset`` yielding :class:`LoaderBatch` dicts.

    The order is the dataset's (no shuffling), so batch ``b`` covers indices
    ``b * batch_size ... (b + 1) * batch_size - 1``; ``indices`` holds those of its images
    that loaded. An image that fails to load, in the main process or in a worker, is
    skipped: listed in the batch's ``skipped`` and in the loader's ``skipped`` with its
    reason; its index stays unused.

    Args:
        dataset (Dataset): an :class:`ImageDataset` or any dataset of ``(image, label, id)``
            (then wrapped in a :class:`GuardedDataset`).
        batch_size (int): images per batch.
        workers (int): loader worker processes (0: load in the main process).
        transform (Callable, optional): replaces an :class:`ImageDataset`'s transform.
        keep_empty (bool): also yield batches whose every image failed, with 0 images
            (``images`` of shape ``(0, 0, 0, 0)``); default: leave them out (their skips are
            still in ``loader.skipped``). Consumers that count images per batch (resumable
            runs) want them.
        pin_memory (bool): page-locked host tensors, for asynchronous GPU copies.

    Returns:
        ImageLoader: a ``torch.utils.data.DataLoader``; ``loader.dataset`` is ``dataset``
        (or its guard, which reads through to it).

    Example::

        >>> loader = make_loader(image_folder("photos", info.transform), batch_size=16)
        >>> for batch in loader:
        ...     batch["images"].shape, batch["indices"], batch["skipped"]
        >>> loader.skipped        # every image skipped at load time in that pass
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if transform is not None:
        if not isinstance(dataset, ImageDataset):
            raise TypeError("transform= needs an ImageDataset; set the transform on the dataset")
        dataset = dataset.with_transform(transform)
    return ImageLoader(
        guarded(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        keep_empty=keep_empty,
    )
