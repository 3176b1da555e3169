r"""Image datasets for mining: real photos shipped in packages, folders, ImageNet validation.

Every dataset here is an :class:`ImageDataset`. Item ``i`` is
``(image, label, image_id)``: ``image`` is ``transform(pil_rgb_image)`` (or the PIL image
itself when there is no transform), ``label`` an ``int`` (``-1`` when unknown) and
``image_id`` a stable string. Besides the torch ``Dataset`` protocol a dataset exposes

* ``ids`` (list of str), ``sources`` (list of str: the file each image is read from),
  ``labels`` (list of int, ``-1`` unknown), ``classes`` (list of str or None),
* ``load_image(i)``: the original RGB ``PIL.Image``, untransformed, for re-cropping patches,
* ``skipped``: ``(path, reason)`` for files left out (corrupt, truncated, not an image,
  symlink leaving the root...).

Indices are fixed once the dataset is built: files are listed in sorted order and bad files
are detected at construction (``validate="full"`` decodes every image once), so that a mining
run can refer to an image by its index and find the same image later.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple
from PIL import Image
from torch.utils.data import Dataset
from .images import _read_rgb



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
        path = self.sources[index]
        reader = self._readers[index] or _read_rgb
        try:
            return reader(path)
        except Exception as exc:
            raise RuntimeError(
                f"Cannot read image {index} ({self.ids[index]!r}) from {path}: {exc}"
            ) from exc

    def __getitem__(self, index: int) -> Tuple[Any, int, str]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index], self.ids[index]

    def with_transform(self, transform: Optional[Callable]) -> "ImageDataset":
        r"""The same images (same indices and ids) with another ``transform``."""
        return ImageDataset(self.sources, self.ids, self.labels, self.classes, transform,
                            self.skipped, self._readers, self.name)

    def subset(self, indices: Iterable[int]) -> "ImageDataset":
        r"""A dataset of the images at ``indices``, in that order (ids are kept)."""
        idx = list(indices)
        return ImageDataset(
            [self.sources[i] for i in idx], [self.ids[i] for i in idx],
            [self.labels[i] for i in idx], self.classes, self.transform, self.skipped,
            [self._readers[i] for i in idx], self.name,
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
