r"""Small random transforms applied to the images at every optimisation step ("transformation
robustness", Olah et al. 2017): padding, jitter, small rescaling, small rotation.

A visualization that only works at one exact pixel alignment is adversarial noise; asking the
image to drive the channel under random shifts, rescales and rotations keeps what is robust.

Every transform is a callable ``t(images, generators) -> images`` on a ``(n, 3, h, w)`` batch,
with one ``torch.Generator`` per image: image ``i``'s random draws come from
``generators[i]`` only, so an image's trajectory does not depend on the other images of the
batch, and neither the global torch nor numpy RNG is touched. Transforms compose with
:class:`Compose` (or ``a + b``). Geometric transforms are differentiable (``grid_sample``).

Example::

    >>> t = Compose([Pad(12), Jitter(8), Scale((0.9, 1.1)), Rotate(10), Jitter(4)])
    >>> gens = [torch.Generator().manual_seed(i) for i in range(2)]
    >>> t(torch.rand(2, 3, 128, 128), gens).shape
    torch.Size([2, 3, 140, 140])
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Transform", "Pad", "Jitter", "Affine", "Scale", "Rotate", "Compose", "Fit",
           "default_transforms"]

Generators = Sequence[torch.Generator]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Transform):
        return value.config()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    raise TypeError(f"A transform's setting must be a number, string, list or transform to be keyed, "
                    f"got {type(value).__name__}.")


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _integer(g: torch.Generator, hi: int) -> int:
    r"""Uniform in ``0..hi`` inclusive."""
    return int(torch.randint(0, hi + 1, (), generator=g))


class Transform:
    r"""Base class: ``__call__(images, generators)``; ``+`` composes."""

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        r"""``(h, w)`` of the output for an input of ``size``."""
        return size

    def config(self) -> Dict[str, Any]:
        r"""Everything that decides what the transform does, JSON-able: its class and its public
        attributes (nested transforms as their own configs). Cache keys are made of it, so a
        changed default or a new option changes the key without anyone updating a string."""
        return {"transform": type(self).__qualname__,
                **{k: _jsonable(v) for k, v in sorted(vars(self).items()) if not k.startswith("_")}}

    def __add__(self, other: "Transform") -> "Compose":
        return Compose([self, other])


def _check(images: Tensor, generators: Generators) -> None:
    if images.dim() != 4:
        raise ValueError(f"Transforms take (n, C, h, w) images, got shape {tuple(images.shape)}.")
    if len(generators) != images.shape[0]:
        raise ValueError(f"Got {len(generators)} generators for {images.shape[0]} images.")


class Pad(Transform):
    r"""Pad every side by ``width`` pixels (no randomness), so that shifts and rotations
    bring in a neutral border instead of wrapping or cutting the image.

    Args:
        width (int): pixels on each side.
        mode (str): ``"constant"`` (value ``value``), ``"reflect"`` or ``"replicate"``.
        value (float): the constant, in RGB [0, 1] (0.5: mid-grey).
    """

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5) -> None:
        if int(width) != width or width < 0:
            raise ValueError(f"Pad width must be an integer >= 0, got {width}.")
        if mode not in ("constant", "reflect", "replicate"):
            raise ValueError(f"Pad mode must be constant, reflect or replicate, got {mode!r}.")
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:
        _check(images, generators)
        p = [self.width] * 4
        if self.mode == "constant":
            return F.pad(images, p, mode="constant", value=self.value)
        return F.pad(images, p, mode=self.mode)

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return size[0] + 2 * self.width, size[1] + 2 * self.width

    def __repr__(self) -> str:
        return f"Pad({self.width}, mode={self.mode!r}, value={self.value})"


class Jitter(Transform):
    r"""A random integer shift: each image is cropped to ``(h - d, w - d)`` at an offset drawn
    uniformly in ``0..d`` along each axis (no interpolation, so no blur).

    Args:
        d (int): largest shift in pixels (>= 1).
    """

    def __init__(self, d: int) -> None:
        if int(d) != d or d < 1:
            raise ValueError(f"Jitter needs an integer d >= 1, got {d}.")
        self.d = int(d)

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:
        _check(images, generators)
        h, w = images.shape[-2:]
        if h <= self.d or w <= self.d:
            raise ValueError(f"Jitter({self.d}) needs images larger than {self.d} px, got {h} x {w}.")
        out: List[Tensor] = []
        for img, g in zip(images, generators):
            dy, dx = _integer(g, self.d), _integer(g, self.d)
            out.append(img[:, dy : dy + h - self.d, dx : dx + w - self.d])
        return torch.stack(out)

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return size[0] - self.d, size[1] - self.d

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


def _warp(images: Tensor, thetas: Sequence[Tensor]) -> Tensor:
    theta = torch.stack(list(thetas))[:, :2].to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Affine(Transform):
    r"""Base of the geometric transforms: a random ``(3, 3)`` matrix per image (:meth:`theta`,
    in ``affine_grid``'s output-to-input ``[-1, 1]`` coordinates), applied with one bilinear
    ``grid_sample``. :class:`Compose` multiplies consecutive ones into a single warp (one
    interpolation instead of several: less blur, less time); the random draws per image stay
    in the same order.
    """

    def theta(self, g: torch.Generator, h: int, w: int) -> List[List[float]]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:
        _check(images, generators)
        h, w = images.shape[-2:]
        return _warp(images, [torch.tensor(self.theta(g, h, w), dtype=torch.float64) for g in generators])


class _Fused(Transform):
    r"""Consecutive :class:`Affine` transforms as one warp."""

    def __init__(self, parts: Sequence[Affine]) -> None:
        self.parts = list(parts)

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:
        _check(images, generators)
        h, w = images.shape[-2:]
        thetas = []
        for g in generators:
            # Output -> input: the first transform's matrix is applied last to the coordinates.
            m = torch.eye(3, dtype=torch.float64)
            for t in self.parts:
                m = m @ torch.tensor(t.theta(g, h, w), dtype=torch.float64)
            thetas.append(m)
        return _warp(images, thetas)


class Scale(Affine):
    r"""Zoom each image about its centre by a factor drawn uniformly in ``factors`` (the
    output keeps the input size; a factor > 1 enlarges the content).

    Args:
        factors (tuple of float): ``(low, high)``, e.g. ``(0.9, 1.1)``.
    """

    def __init__(self, factors: Tuple[float, float] = (0.9, 1.1)) -> None:
        lo, hi = (float(f) for f in factors)
        if not 0 < lo <= hi:
            raise ValueError(f"Scale factors must satisfy 0 < low <= high, got {factors}.")
        self.factors = (lo, hi)

    def theta(self, g: torch.Generator, h: int, w: int) -> List[List[float]]:
        s = _uniform(g, *self.factors)
        return [[1.0 / s, 0.0, 0.0], [0.0, 1.0 / s, 0.0], [0.0, 0.0, 1.0]]

    def __repr__(self) -> str:
        return f"Scale({self.factors})"


class Rotate(Affine):
    r"""Rotate each image about its centre by an angle drawn uniformly in
    ``[-degrees, degrees]`` (the output keeps the input size).

    Args:
        degrees (float or (float, float)): largest angle, or a ``(low, high)`` range in degrees
            (counter-clockwise positive, as seen in the image).
    """

    def __init__(self, degrees: Union[float, Tuple[float, float]] = 10.0) -> None:
        lo, hi = (-float(degrees), float(degrees)) if isinstance(degrees, (int, float)) else (float(d) for d in degrees)
        if lo > hi:
            raise ValueError(f"Rotate needs degrees >= 0 or a (low, high) range, got {degrees}.")
        self.degrees = (lo, hi)

    def theta(self, g: torch.Generator, h: int, w: int) -> List[List[float]]:
        a = math.radians(_uniform(g, *self.degrees))
        c, s = math.cos(a), math.sin(a)
        # A rotation in pixels, written in affine_grid's [-1, 1] coordinates.
        return [[c, -s * h / w, 0.0], [s * w / h, c, 0.0], [0.0, 0.0, 1.0]]

    def __repr__(self) -> str:
        return f"Rotate({self.degrees})"


class Compose(Transform):
    r"""Apply ``transforms`` in order.

    Args:
        transforms (sequence of Transform): an empty sequence is the identity.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        flat: List[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, Compose) else [t])
        self.transforms = flat

        # Runs of consecutive affine transforms become one warp.
        steps: List[Transform] = []
        for t in flat:
            if isinstance(t, Affine) and steps and isinstance(steps[-1], _Fused):
                steps[-1].parts.append(t)
            elif isinstance(t, Affine):
                steps.append(_Fused([t]))
            else:
                steps.append(t)
        self._steps = steps

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:
        for t in self._steps:
            images = t(images, generators)
        return images

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        for t in self.transforms:
            size = t.output_size(size)
        return size

    def __repr__(self) -> str:
        return f"Compose([{', '.join(map(repr, self.transforms))}])"


class Fit(Transform):
    r"""Bring every image to exactly the size the model takes, as the last transform: rescale by
    ``scale`` (the model's input side over the optimised image's side), then crop the centre to
    ``size`` (the border a :class:`Pad` added and the shifts a :class:`Jitter` drew stay
    pixel-exact: no interpolation when ``scale`` is 1); an image still smaller than ``size``
    after rescaling is resized to it. Deterministic: no generator is used.

    Args:
        size (int or (int, int)): ``(H, W)`` of the model input.
        scale (float or (float, float)): resize factor(s) before the crop. Default 1.

    Example::

        >>> Fit(128)(torch.rand(2, 3, 140, 140), gens).shape       # the default chain's 140 px back to 128
        torch.Size([2, 3, 128, 128])
        >>> Fit(224, scale=224 / 128)(torch.rand(2, 3, 140, 140), gens).shape
        torch.Size([2, 3, 224, 224])
    """

    def __init__(self, size: Union[int, Tuple[int, int]], scale: Union[float, Tuple[float, float]] = 1.0) -> None:
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        sy, sx = (scale, scale) if isinstance(scale, (int, float)) else (float(scale[0]), float(scale[1]))
        if h < 1 or w < 1 or sy <= 0 or sx <= 0:
            raise ValueError(f"Fit needs a size >= 1 and a scale > 0, got size={size}, scale={scale}.")
        self.size, self.scale = [h, w], [float(sy), float(sx)]

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return self.size[0], self.size[1]

    def __call__(self, images: Tensor, generators: Generators) -> Tensor:
        h, w = images.shape[-2:]
        H, W = self.size
        if self.scale != [1.0, 1.0]:
            rh, rw = max(H, round(h * self.scale[0])), max(W, round(w * self.scale[1]))
            if (rh, rw) != (h, w):
                images = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False,
                                       antialias=rh < h or rw < w)
                h, w = rh, rw
        if h < H or w < W:
            return F.interpolate(images, size=(H, W), mode="bilinear", align_corners=False)
        top, left = (h - H) // 2, (w - W) // 2
        return images[..., top : top + H, left : left + W]

    def __repr__(self) -> str:
        return f"Fit({tuple(self.size)}, scale={tuple(self.scale)})"


def default_transforms() -> Compose:
    r"""Lucid's standard set: pad 12 px (grey), jitter 8 px, scale 0.9-1.1, rotate ±10°,
    jitter 4 px. A 128 px image reaches the model at 140 px.

    Returns:
        Compose
    """
    return Compose([Pad(12), Jitter(8), Scale((0.9, 1.1)), Rotate(10.0), Jitter(4)])
