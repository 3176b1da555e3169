r"""The :class:`ReceptiveField` type: the exact input box of every output position of a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple, Union
import torch
from torch import Tensor



SizeSpec = Union[int, Sequence[int]]

METHODS = ("trace", "probe")
"""How a field can be obtained (:attr:`ReceptiveField.method`)."""


@dataclass(frozen=True, eq=False)
class ReceptiveField:
    r"""Receptive field of every output position of one layer, in input pixels.

    Attributes:
        boxes (Tensor): ``(H_out, W_out, 4)`` int64 tensor of ``(top, left, bottom, right)``
            boxes, ``bottom`` / ``right`` exclusive, clipped to the input. ``(1, 1, 4)`` for a
            2-D ``(N, C)`` output. A position depending on no input pixel has the empty box
            ``(0, 0, 0, 0)``.
        input_size (tuple of int): ``(H, W)`` of the probed input.
        size (tuple of int): ``(h, w)``, the largest box extent over all positions, i.e. the
            receptive-field size clipped to the image. :meth:`padded_crop` pads every crop
            to this size.
        stride (tuple of int): effective stride in input pixels between neighbouring output
            positions, read from the tops / lefts (and bottoms / rights) of neighbouring
            boxes that are not clipped by the image border; the rounded input / output size
            ratio along an axis where that is not measurable (e.g. a single position).
        method (str): how the boxes were obtained: ``"trace"`` (interval arithmetic along
            a ``torch.fx`` or ONNX trace, confirmed by a few NaN probes) or ``"probe"`` (the
            full NaN probe, one image per input row and column). Both give the same boxes;
            it is not part of equality.

    Example::

        >>> model = torchvision.models.resnet18(weights=None)
        >>> rf = receptive_field(model, "layer2", 128)
        >>> rf.output_size, rf.size, rf.stride
        ((16, 16), (99, 99), (8, 8))
        >>> rf.box(0, 0)
        (0, 0, 50, 50)
        >>> patch = rf.padded_crop(image, 0, 0)   # (3, 99, 99): padded on the top and left
    """

    boxes: Tensor
    input_size: Tuple[int, int]
    size: Tuple[int, int]
    stride: Tuple[int, int]
    method: str = "probe"

    def __post_init__(self) -> None:
        boxes = torch.as_tensor(self.boxes).detach().to("cpu", torch.int64)
        if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[0] < 1 or boxes.shape[1] < 1:
            raise ValueError(
                f"boxes must have shape (H_out, W_out, 4) with H_out, W_out >= 1, "
                f"got {tuple(boxes.shape)}."
            )
        object.__setattr__(self, "boxes", boxes)
        for field in ("input_size", "size", "stride"):
            value = tuple(int(v) for v in getattr(self, field))
            if len(value) != 2:
                raise ValueError(f"{field} must be a pair of ints, got {getattr(self, field)!r}.")
            object.__setattr__(self, field, value)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")

    # -- accessors -----------------------------------------------------------------------

    @property
    def output_size(self) -> Tuple[int, int]:
        r"""``(H_out, W_out)``: the spatial size of the layer output (``(1, 1)`` for 2-D)."""
        return int(self.boxes.shape[0]), int(self.boxes.shape[1])

    def box(self, y: int, x: int) -> Tuple[int, int, int, int]:
        r"""Box of output position ``(y, x)``.

        Args:
            y (int): output row, ``0 <= y < H_out`` (negative values index from the end).
            x (int): output column, ``0 <= x < W_out``.

        Returns:
            tuple of int: ``(top, left, bottom, right)`` in input pixels, bottom / right
            exclusive.
        """
        h, w = self.output_size
        if not (-h <= int(y) < h and -w <= int(x) < w):
            raise IndexError(f"Position ({y}, {x}) is outside the output grid {h}x{w}.")
        t, l, b, r = self.boxes[int(y), int(x)].tolist()
        return int(t), int(l), int(b), int(r)

    def padded_crop(self, image: Tensor, y: int, x: int, fill: float = 0.0) -> Tensor:
        r"""Crop the box of ``(y, x)`` from ``image`` and pad it to exactly :attr:`size`.

        Padding keeps patches of neighbouring positions aligned on one grid: a box clipped
        by the top edge (``top == 0``) is padded on the top, one touching the bottom edge
        on the bottom, likewise left / right; a smaller box touching neither edge is
        centred (an odd extra pixel goes to the bottom / right). An empty box gives a
        patch filled with ``fill``.

        Args:
            image (Tensor): ``(C, H, W)`` (or any ``(..., H, W)``) image whose ``(H, W)``
                equals :attr:`input_size`.
            y (int): output row.
            x (int): output column.
            fill (float, optional): value of the padding. Default: 0.0

        Returns:
            Tensor: ``(C, size[0], size[1])`` (same leading dims, dtype and device as
            ``image``).
        """
        if not isinstance(image, Tensor) or image.dim() < 2:
            raise ValueError("image must be a tensor of shape (C, H, W).")
        if tuple(image.shape[-2:]) != self.input_size:
            raise ValueError(
                f"image has spatial size {tuple(image.shape[-2:])} but the receptive field "
                f"was computed for input size {self.input_size}."
            )
        top, left, bottom, right = self.box(y, x)
        out = image.new_full((*image.shape[:-2], *self.size), fill)
        if bottom <= top or right <= left:
            return out
        pt, _ = _pad_split(top, bottom, self.input_size[0], self.size[0])
        pl, _ = _pad_split(left, right, self.input_size[1], self.size[1])
        crop = image[..., top:bottom, left:right]
        out[..., pt : pt + bottom - top, pl : pl + right - left] = crop
        return out

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        r"""Plain-Python representation (ints and lists only), safe for JSON and for
        ``torch.load(..., weights_only=True)``.

        Returns:
            dict: keys ``boxes`` (nested ``H_out x W_out x 4`` list), ``input_size``,
            ``size``, ``stride`` (2-lists of int), ``method`` (str).
        """
        return {
            "boxes": self.boxes.tolist(),
            "input_size": list(self.input_size),
            "size": list(self.size),
            "stride": list(self.stride),
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ReceptiveField":
        r"""Inverse of :meth:`to_dict`."""
        missing = {"boxes", "input_size", "size", "stride"} - set(d)
        if missing:
            raise ValueError(f"ReceptiveField dict is missing {sorted(missing)}.")
        return cls(
            boxes=torch.as_tensor(d["boxes"], dtype=torch.int64),
            input_size=tuple(d["input_size"]),
            size=tuple(d["size"]),
            stride=tuple(d["stride"]),
            method=str(d.get("method", "probe")),
        )

    # -- dunder --------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReceptiveField):
            return NotImplemented
        return (
            self.input_size == other.input_size
            and self.size == other.size
            and self.stride == other.stride
            and torch.equal(self.boxes, other.boxes)
        )

    def __hash__(self) -> int:
        return hash((self.input_size, self.size, self.stride, tuple(self.boxes.flatten().tolist())))

    def __repr__(self) -> str:
        return (
            f"ReceptiveField(input_size={self.input_size}, output_size={self.output_size}, "
            f"size={self.size}, stride={self.stride}, method={self.method!r})"
        )


def _pad_split(lo: int, hi: int, n_in: int, size: int) -> Tuple[int, int]:
    """Padding (before, after) bringing the extent [lo, hi) to ``size`` along one axis."""
    pad = max(0, size - (hi - lo))
    if pad == 0:
        return 0, 0
    if lo == 0 and hi < n_in:  # clipped by the top / left edge
        return pad, 0
    if hi == n_in and lo > 0:  # clipped by the bottom / right edge
        return 0, pad
    return pad // 2, pad - pad // 2


def _parse_size(input_size: SizeSpec) -> Tuple[int, int]:
    if isinstance(input_size, int):
        pair = (input_size, input_size)
    else:
        try:
            pair = tuple(int(v) for v in input_size)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"input_size must be an int or (H, W), got {input_size!r}.") from None
        if len(pair) == 1:
            pair = (pair[0], pair[0])
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"input_size must be a positive int or (H, W), got {input_size!r}.")
    return int(pair[0]), int(pair[1])
