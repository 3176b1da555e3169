r"""What a model expects: :class:`ModelInfo` (class names, input size, normalisation, transform).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple
import torch
from torch import Tensor



IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)


IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    r"""What a caller needs to feed, label and describe a loaded model.

    Attributes:
        name (str): the name passed to :func:`load_model` (a built-in or a torchvision name).
        arch (str): the architecture actually built (``"mobilenet_v2"``, ``"resnet18"``...).
        categories (list of str or None): one name per output unit, or None when unknown
            (a fine-tuned head without class names in its checkpoint).
        num_classes (int): number of outputs of the classifier.
        input_size (tuple of int): ``(H, W)`` of the network input produced by ``transform``.
        mean (tuple of float): per-channel RGB mean used by ``transform``'s ``Normalize``.
        std (tuple of float): per-channel RGB std used by ``transform``'s ``Normalize``.
        transform (Callable): torchvision transform PIL image -> normalised ``(3, H, W)`` tensor
            (resize, center crop, ``ToTensor``, ``Normalize``).
        source (str): where the weights came from (package file, checkpoint path, or random).
        resize_size (int): the shorter-side resize applied before the center crop.
    """

    name: str
    categories: Optional[List[str]]
    input_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    transform: Callable = field(repr=False)
    source: str = ""
    arch: str = ""
    num_classes: int = 0
    resize_size: int = 256

    def __repr__(self) -> str:
        cats = "None" if self.categories is None else f"<{len(self.categories)} names>"
        return (
            f"ModelInfo(name={self.name!r}, arch={self.arch!r}, num_classes={self.num_classes}, "
            f"categories={cats}, input_size={self.input_size}, resize_size={self.resize_size}, "
            f"mean={self.mean}, std={self.std}, source={self.source!r})"
        )

    def denormalize(self, x: Tensor) -> Tensor:
        r"""Undo ``Normalize``: map a normalised ``(..., 3, H, W)`` tensor back to [0, 1] RGB."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)


#: Most pixels :class:`BoundedResize` (every model's preprocessing) makes an image of:
#: 2**25 = 33.5 M pixels, 96 MiB as 8-bit RGB.
MAX_RESIZED_PIXELS: int = 2 ** 25


class BoundedResize:
    r"""torchvision's ``Resize(size)`` (shorter side to ``size``, bilinear, antialiased) that
    refuses, before allocating anything, an image it would make larger than ``max_pixels``.

    Resizing the shorter side of a 1 x 40,000 image to 256 would make it 256 x 10,240,000
    (2.6 G pixels, 7.3 GiB as RGB) only for the center crop to keep 224 x 224 of it: such an
    image is refused with a ``ValueError`` saying so (a data loader then skips it with that
    reason). The data layer's :class:`~captum_topk.data.ImageLimits` (aspect ratio at most 100
    by default) skip it earlier, from the file's header; this is the bound for images that
    reach the transform another way. Every other image is resized exactly as by
    ``torchvision.transforms.Resize``.

    Args:
        size (int): shorter side after resizing.
        max_pixels (int, optional): most pixels of the resized image; None: no limit.
            Default :data:`MAX_RESIZED_PIXELS`.

    Example::

        >>> from PIL import Image
        >>> BoundedResize(256)(Image.new("RGB", (640, 480))).size
        (341, 256)
    """

    def __init__(self, size: int, max_pixels: Optional[int] = MAX_RESIZED_PIXELS) -> None:
        from torchvision import transforms as T

        self.size = int(size)
        self.max_pixels = max_pixels
        self._resize = T.Resize(self.size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)

    def output_size(self, width: int, height: int) -> Tuple[int, int]:
        r"""``(width, height)`` after resizing, computed as torchvision does."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if width <= height else (new_long, self.size)

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            height, width = int(img.shape[-2]), int(img.shape[-1])
        else:
            width, height = img.size
        if self.max_pixels is not None and width > 0 and height > 0:
            w, h = self.output_size(width, height)
            if w * h > self.max_pixels:
                raise ValueError(
                    f"resizing a {width} x {height} image to shorter side {self.size} would make "
                    f"it {w} x {h} ({w * h / 1e6:.1f} M pixels), over the limit of "
                    f"{self.max_pixels / 1e6:.1f} M pixels; its aspect ratio "
                    f"{max(width, height) / min(width, height):.6g}:1 is too extreme for a "
                    "shorter-side resize and center crop."
                )
        return self._resize(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, max_pixels={self.max_pixels})"


def make_transform(
    input_size: int | Tuple[int, int] = 224,
    resize_size: Optional[int] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_resized_pixels: Optional[int] = MAX_RESIZED_PIXELS,
) -> Callable:
    r"""The standard evaluation transform: resize shorter side, center crop, to tensor, normalise.

    The resize is torchvision's (bilinear, antialiased), bounded: an image whose resized
    size would exceed ``max_resized_pixels`` (an extreme aspect ratio such as 1 x 40,000)
    raises ``ValueError`` before anything is allocated (:class:`BoundedResize`); the data
    loaders skip it with that reason.

    Args:
        input_size (int or (int, int)): crop size ``(H, W)``.
        resize_size (int, optional): shorter-side size before cropping; default
            ``round(min(input_size) / 0.875)`` (256 for 224).
        mean (sequence of float): RGB mean for ``Normalize``.
        std (sequence of float): RGB std for ``Normalize``.
        max_resized_pixels (int, optional): most pixels of the resized image, before the
            crop; None: no limit. Default :data:`MAX_RESIZED_PIXELS` (33.5 M).

    Returns:
        torchvision.transforms.Compose: PIL image -> float tensor ``(3, H, W)``.
    """
    from torchvision import transforms as T

    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if resize_size is None:
        resize_size = int(round(min(size) / 0.875))
    return T.Compose(
        [
            BoundedResize(resize_size, max_resized_pixels),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def imagenet_categories() -> List[str]:
    r"""The 1000 ImageNet class names in torchvision's (sorted WordNet id) order. Offline."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
