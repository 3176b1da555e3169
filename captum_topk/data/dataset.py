r"""Image datasets for mining: real photos shipped in packages, folders, ImageNet validation.

Every dataset here is an :class:`ImageDataset`. Item ``i`` is
``(image, label, image_id)``: ``image`` is ``transform(pil_rgb_image)`` (or the PIL image
itself when there is no transform), ``label`` an ``int`` (``-1`` when unknown) and
``image_id`` a stable string. Besides the torch ``Dataset`` protocol a dataset exposes

* ``ids`` (list of str), ``sources`` (list of str: the file each image is read from),
  ``labels`` (list of int, ``-1`` unknown), ``classes`` (list of str or None),
* ``load_image(i)``: the original RGB ``PIL.Image``, untransformed, for re-cropping patches,
* ``skipped``: ``(path, reason)`` for files left out (corrupt, truncated, not an image,
  over the size limits, symlink leaving the root...),
* ``limits``: the :class:`~.limits.ImageLimits` checked from each file's header before it is
  decoded, at construction and again at every load.

Indices are fixed once the dataset is built: files are listed in sorted order and bad files
are detected at construction (``validate="full"`` decodes every image once), so that a mining
run can refer to an image by its index and find the same image later.

Loading never aborts a loader: ``dataset[i]`` raises (``RuntimeError`` naming the image) when
image ``i`` cannot be read, but the batched access DataLoaders use, ``__getitems__``, returns
a :class:`~.failures.LoadFailure` in its place, which :func:`~.loader.collate` turns into an
entry of the batch's ``skipped`` list (see ``docs/robustness.md``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union
from PIL import Image
from torch.utils.data import Dataset
from .failures import LoadFailure, describe_failure
from .images import _read_rgb
from .limits import DEFAULT_LIMITS, ImageLimits


class ImageDataset(Dataset):
    r"""A fixed, ordered list of images with labels and stable ids.

    Args:
        sources (list of str): file of each image.
        ids (list of str): stable unique id of each image.
        labels (list of int, optional): class index of each image, ``-1`` if unknown.
            Default all ``-1``.
        classes (list of str, optional): class names that ``labels`` index.
        transform (Callable, optional): applied to the RGB PIL image in ``__getitem__``.
        skipped (list of (str, str), optional): files left out at construction, with why.
        readers (list of Callable, optional): per image, ``path -> PIL RGB image`` when a
            file needs a special reader; None entries use :func:`to_rgb` on ``PIL.Image.open``.
        name (str): a short description used in ``repr``.
        limits (ImageLimits): size limits checked from each file's header before decoding
            it (files read by a custom ``reader`` are not checked). Default
            :data:`~.limits.DEFAULT_LIMITS`.
    """

    def __init__(
        self,
        sources: Sequence[str],
        ids: Sequence[str],
        labels: Optional[Sequence[int]] = None,
        classes: Optional[Sequence[str]] = None,
        transform: Optional[Callable] = None,
        skipped: Optional[Sequence[Tuple[str, str]]] = None,
        readers: Optional[Sequence[Optional[Callable[[str], Image.Image]]]] = None,
        name: str = "",
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        self.sources: List[str] = [str(s) for s in sources]
        self.ids: List[str] = [str(i) for i in ids]
        self.labels: List[int] = (
            [int(v) for v in labels] if labels is not None else [-1] * len(self.sources)
        )
        self.classes: Optional[List[str]] = list(classes) if classes is not None else None
        self.transform = transform
        self.skipped: List[Tuple[str, str]] = list(skipped or [])
        self._readers: List[Optional[Callable[[str], Image.Image]]] = (
            list(readers) if readers is not None else [None] * len(self.sources)
        )
        self.name = name
        self.limits = limits
        n = len(self.sources)
        if not (len(self.ids) == len(self.labels) == len(self._readers) == n):
            raise ValueError("sources, ids, labels and readers must have the same length")
        if len(set(self.ids)) != n:
            raise ValueError("image ids must be unique")

    def __len__(self) -> int:
        return len(self.sources)

    def load_image(self, index: int) -> Image.Image:
        r"""The original image ``index`` as an 8-bit RGB ``PIL.Image``, untransformed.

        Raises:
            RuntimeError: if the file can no longer be read (it changed since construction,
                or the dataset was built with ``validate="none"``/``"header"``).
        """
        try:
            return self._read(index)
        except Exception as exc:
            raise RuntimeError(
                f"Cannot read image {index} ({self.ids[index]!r}) from {self.sources[index]}: "
                f"{describe_failure(exc)}"
            ) from exc

    def _read(self, index: int) -> Image.Image:
        reader = self._readers[index]
        if reader is None:
            return _read_rgb(self.sources[index], self.limits)
        return reader(self.sources[index])

    def __getitem__(self, index: int) -> Tuple[Any, int, str]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index], self.ids[index]

    def load_item(self, index: int) -> Union[Tuple[Any, int, str], LoadFailure]:
        r"""``self[index]``, or a :class:`~.failures.LoadFailure` saying why it failed.

        Every ``Exception`` of reading, decoding, converting or transforming the image is
        caught, ``MemoryError`` included (an allocation that failed has been released), so
        that one file never aborts a loader, in the main process or in a worker.
        """
        try:
            img = self._read(index)
        except Exception as exc:
            return LoadFailure(self.sources[index], describe_failure(exc, "load"), self.ids[index])
        if self.transform is not None:
            try:
                img = self.transform(img)
            except Exception as exc:
                return LoadFailure(self.sources[index], describe_failure(exc, "transform"),
                                   self.ids[index])
        return img, self.labels[index], self.ids[index]

    def __getitems__(self, indices: Sequence[int]) -> List[Union[Tuple[Any, int, str], LoadFailure]]:
        r"""The items at ``indices`` for a DataLoader batch, a :class:`LoadFailure` in place
        of each image that could not be loaded (see :meth:`load_item`)."""
        return [self.load_item(int(i)) for i in indices]

    def with_transform(self, transform: Optional[Callable]) -> "ImageDataset":
        r"""The same images (same indices and ids) with another ``transform``."""
        return ImageDataset(self.sources, self.ids, self.labels, self.classes, transform,
                            self.skipped, self._readers, self.name, self.limits)

    def with_limits(self, limits: ImageLimits) -> "ImageDataset":
        r"""The same images (same indices and ids) checked against other size ``limits`` at
        load time (construction-time validation is not redone)."""
        return ImageDataset(self.sources, self.ids, self.labels, self.classes, self.transform,
                            self.skipped, self._readers, self.name, limits)

    def subset(self, indices: Iterable[int]) -> "ImageDataset":
        r"""A dataset of the images at ``indices``, in that order (ids are kept)."""
        idx = list(indices)
        return ImageDataset(
            [self.sources[i] for i in idx], [self.ids[i] for i in idx],
            [self.labels[i] for i in idx], self.classes, self.transform, self.skipped,
            [self._readers[i] for i in idx], self.name, self.limits,
        )

    def index_of(self, image_id: str) -> int:
        r"""Index of the image with id ``image_id`` (``ValueError`` if absent)."""
        return self.ids.index(image_id)

    def __repr__(self) -> str:
        n_cls = "None" if self.classes is None else f"{len(self.classes)} classes"
        return (
            f"ImageDataset({self.name or 'images'}: {len(self)} images, classes={n_cls}, "
            f"{len(self.skipped)} skipped, transform={'yes' if self.transform else 'None'})"
        )
