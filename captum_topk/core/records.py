r"""One mined record (:class:`PatchRecord`) and the image sources records are cropped from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union
from torch import Tensor



Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class PatchRecord:
    r"""One mined neuron occurrence: channel ``channel`` of ``layer`` at ``(y, x)`` in image ``index``.

    Attributes:
        layer (str): dotted layer name.
        channel (int): channel (feature map) index.
        rank (int): 0 for the strongest.
        value (float): the activation at (y, x).
        index (int): 0-based position of the image in iteration order.
        y, x (int): position in the layer's output grid (0, 0 for 2-D layers).
        box (tuple[int, int, int, int]): (top, left, bottom, right) in input pixels,
            bottom/right exclusive, clipped to the image: the exact receptive field.
        label (int): the image's label, -1 when unknown.
        image_id (str or None): the image's id / path when the data provided one.
        input_size (tuple[int, int]): (H, W) of the model input the box refers to.
        which (str): "top" or "bottom".
        box_kind (str): what ``box`` is: ``"receptive_field"`` (the exact receptive field of a
            convolutional position), ``"token"`` (the patch footprint of a ViT token: after
            global attention its receptive field is the whole image) or ``"image"`` (a vector
            layer or a prefix token: the whole image).
    """

    layer: str
    channel: int
    rank: int
    value: float
    index: int
    y: int
    x: int
    box: Box
    label: int = -1
    image_id: Optional[str] = None
    input_size: Tuple[int, int] = (0, 0)
    which: str = "top"
    box_kind: str = "receptive_field"


ImageSource = Union[Tensor, Sequence[Any], Callable[[int], Any]]


def _fetch_image(source: ImageSource, index: int, transform: Optional[Callable]) -> Tensor:
    item = source(index) if callable(source) and not isinstance(source, Tensor) else source[index]
    if isinstance(item, dict):
        item = item.get("image", item.get("images"))
    if isinstance(item, (tuple, list)):
        item = item[0]
    if transform is not None and not isinstance(item, Tensor):
        item = transform(item)
    if not isinstance(item, Tensor) or item.dim() != 3:
        raise TypeError(
            f"Image {index} of the source is {type(item).__name__}, expected a (C, H, W) tensor: "
            "pass the same dataset (with its transform) that was mined, or transform=..."
        )
    return item


def record_image(images_source: ImageSource, record: PatchRecord, transform: Optional[Callable] = None) -> Tensor:
    r"""The model input a record was mined on, checked against the size it was mined at.

    Args:
        images_source: the images as the model saw them (a tensor, a dataset, a callable).
        record (PatchRecord): a mined record.
        transform (Callable, optional): applied to PIL items.
    Returns:
        Tensor: ``(C, H, W)``.
    Raises:
        ValueError: the image is not the size the record was mined at (another transform).
    """
    image = _fetch_image(images_source, record.index, transform)
    if tuple(image.shape[-2:]) != tuple(record.input_size):
        raise ValueError(
            f"Image {record.index} is {tuple(image.shape[-2:])} but was mined at "
            f"{tuple(record.input_size)}: pass the source with the transform used for mining."
        )
    return image
