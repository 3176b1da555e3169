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


def make_transform(
    input_size: int | Tuple[int, int] = 224,
    resize_size: Optional[int] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    r"""The standard evaluation transform: resize shorter side, center crop, to tensor, normalise.

    Args:
        input_size (int or (int, int)): crop size ``(H, W)``.
        resize_size (int, optional): shorter-side size before cropping; default
            ``round(min(input_size) / 0.875)`` (256 for 224).
        mean (sequence of float): RGB mean for ``Normalize``.
        std (sequence of float): RGB std for ``Normalize``.

    Returns:
        torchvision.transforms.Compose: PIL image -> float tensor ``(3, H, W)``.
    """
    from torchvision import transforms as T

    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if resize_size is None:
        resize_size = int(round(min(size) / 0.875))
    return T.Compose(
        [
            T.Resize(resize_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def imagenet_categories() -> List[str]:
    r"""The 1000 ImageNet class names in torchvision's (sorted WordNet id) order. Offline."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
