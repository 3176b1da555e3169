r"""What a batch is: images, and optionally labels, ids and global indices.

Data loaders yield batches in several shapes; every consumer reads them through
:func:`split_batch`, and :func:`cut_batch` shortens one without losing any of its parts.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

from torch import Tensor

Batch = Union[Tensor, Sequence[Any], Mapping[str, Any]]

__all__ = ["Batch", "Parts", "split_batch", "cut_batch"]


class Parts(NamedTuple):
    r"""A batch taken apart.

    Attributes:
        images (Tensor): ``(N, C, H, W)``.
        labels (list of int or None): ``-1`` where unknown.
        ids (list of str or None): stable image ids (file paths, ...).
        indices (Tensor or list of int or None): global image indices (sharded loaders).
    """

    images: Tensor
    labels: Optional[List[int]]
    ids: Optional[List[str]]
    indices: Optional[Any] = None


def split_batch(batch: Batch) -> Parts:
    r"""Images, labels, ids (and global indices) of a batch.

    Accepts an image tensor, ``(images, labels)``, ``(images, labels, ids)`` or any mapping
    (a dict, transformers' ``BatchFeature``) with ``image(s)`` or ``pixel_values`` (the
    transformers name) / ``label(s)`` / ``id(s)`` / ``indices`` keys. Labels may be a tensor or
    a list.

    Args:
        batch: one batch as a DataLoader yields it.
    Returns:
        Parts: ``(images, labels, ids, indices)``; unpacks as a 4-tuple.
    Raises:
        TypeError: when no ``(N, C, H, W)`` image tensor is found (the message says what was).
    Example::
        >>> images, labels, ids, _ = split_batch((torch.zeros(2, 3, 8, 8), torch.tensor([1, 2])))
        >>> labels
        [1, 2]
    """
    labels = ids = indices = None
    if isinstance(batch, Mapping):
        images = next((batch[k] for k in ("images", "image", "pixel_values") if batch.get(k) is not None), None)
        labels = batch.get("labels", batch.get("label"))
        ids = batch.get("ids", batch.get("id"))
        indices = batch.get("indices")
    elif isinstance(batch, Tensor):
        images = batch
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        images = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        ids = batch[2] if len(batch) > 2 else None
    else:
        images = None
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(batch).__name__
        raise TypeError(
            f"A batch must be an (N, C, H, W) image tensor, (images, labels[, ids]) or a mapping "
            f"with 'images' or 'pixel_values'; got {shape}"
            + (f" (keys {sorted(map(str, batch))})" if isinstance(batch, Mapping) else "")
            + ". Wrap single images with .unsqueeze(0)."
        )
    if isinstance(labels, Tensor):
        labels = labels.reshape(-1).tolist()
    if labels is not None:
        labels = [int(v) if v is not None else -1 for v in labels]
    if ids is not None:
        ids = [str(v) for v in ids]
    return Parts(images, labels, ids, indices)


def cut_batch(batch: Batch, n: int) -> Dict[str, Any]:
    r"""The first ``n`` images of a batch with their labels, ids and indices, as a dict batch.

    Args:
        batch: any batch :func:`split_batch` accepts.
        n (int): how many images to keep.
    Returns:
        dict: ``images`` and, where the batch had them, ``labels``, ``ids``, ``indices``.
    Example::
        >>> cut_batch({"images": x, "ids": ["a", "b", "c"]}, 2)["ids"]
        ['a', 'b']
    """
    images, labels, ids, indices = split_batch(batch)
    out: Dict[str, Any] = {"images": images[:n]}
    if labels is not None:
        out["labels"] = labels[:n]
    if ids is not None:
        out["ids"] = ids[:n]
    if indices is not None:
        out["indices"] = indices[:n]
    return out
