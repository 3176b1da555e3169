r"""Objectives for feature visualization: what each image of the batch should maximise.

An :class:`Objective` maps a layer's activations ``(n, C, H, W)`` or ``(n, C)`` to one value
per image, shape ``(n,)``; the optimiser maximises their sum. Since each image's value depends
only on its own activations (the model runs in eval mode), the images of a batch are
optimised independently: image ``i`` for channel ``channels[i]`` only. Objectives add,
subtract and scale like numbers::

    >>> obj = channel([3, 5]) - 0.5 * neuron([3, 5])
    >>> obj(torch.randn(2, 8, 7, 7)).shape
    torch.Size([2])

* :func:`channel`: the channel's mean over all positions (Olah et al.'s "channel").
* :func:`neuron`: the channel at one position, by default the centre (``(H // 2, W // 2)``).
* negatives (``-channel(...)``): what drives the channel most negative.
* :func:`direction`: the dot product of a direction in channel space (a concept, a CAV, any
  vector) with the activation vector, averaged over positions or at the centre (Lucid / Lucent's
  ``direction`` and ``direction_neuron``; optionally weighted by their cosine, ``cossim_pow``).
* :func:`diversity`: minus the mean cosine similarity of an image's Gram matrix to the other
  images of its group (Olah et al.'s diversity term, per image): several samples of one channel
  pushed apart.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Objective", "channel", "neuron", "direction", "diversity", "from_name", "direction_from_name",
           "OBJECTIVES"]

Channels = Union[int, Sequence[int], Tensor]
Number = Union[int, float]


class Objective:
    r"""A per-image objective: ``objective(acts) -> (n,)``, maximised.

    Args:
        fn (Callable): activations ``(n, C, H, W)`` or ``(n, C)`` -> ``(n,)`` tensor.
        name (str): a readable description, e.g. ``"channel"`` or ``"channel - 0.5 * neuron"``.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str = "objective") -> None:
        self.fn = fn
        self.name = name

    def __call__(self, acts: Tensor) -> Tensor:
        out = self.fn(acts)
        if out.dim() != 1 or out.shape[0] != acts.shape[0]:
            raise ValueError(
                f"Objective {self.name!r} returned shape {tuple(out.shape)}; it must return one "
                f"value per image, shape ({acts.shape[0]},)."
            )
        return out

    def __add__(self, other: Union["Objective", Number]) -> "Objective":
        if isinstance(other, Objective):
            return Objective(lambda a: self(a) + other(a), f"{self.name} + {other.name}")
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, f"{self.name} + {other:g}")
        return NotImplemented

    def __radd__(self, other: Number) -> "Objective":
        if isinstance(other, (int, float)):
            if other == 0:  # sum([...]) starts from 0
                return self
            return Objective(lambda a: other + self(a), f"{other:g} + {self.name}")
        return NotImplemented

    def __mul__(self, other: Number) -> "Objective":
        if isinstance(other, (int, float)):
            return Objective(lambda a: other * self(a), f"{other:g} * ({self.name})")
        raise TypeError(f"An objective is scaled by a number, not by {type(other).__name__}.")

    __rmul__ = __mul__

    def __truediv__(self, other: Number) -> "Objective":
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) / other, f"({self.name}) / {other:g}")
        raise TypeError(f"An objective is divided by a number, not by {type(other).__name__}.")

    def __neg__(self) -> "Objective":
        return Objective(lambda a: -self(a), f"-{self.name}" if " " not in self.name else f"-({self.name})")

    def __sub__(self, other: Union["Objective", Number]) -> "Objective":
        if isinstance(other, Objective):
            return Objective(lambda a: self(a) - other(a), f"{self.name} - {other.name}")
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) - other, f"{self.name} - {other:g}")
        return NotImplemented

    def __rsub__(self, other: Number) -> "Objective":
        if isinstance(other, (int, float)):
            return Objective(lambda a: other - self(a), f"{other:g} - {self.name}")
        return NotImplemented

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _per_image(channels: Channels, acts: Tensor) -> Tensor:
    n, c = acts.shape[0], acts.shape[1]
    idx = torch.as_tensor(channels, dtype=torch.long, device=acts.device).flatten()
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise ValueError(f"Got {idx.numel()} channels for a batch of {n} images: give one per image.")
    if bool(((idx < 0) | (idx >= c)).any()):
        bad = idx[(idx < 0) | (idx >= c)][0].item()
        raise IndexError(f"Channel {bad} out of range: the layer has {c} channels (0..{c - 1}).")
    return idx


def _check_dims(acts: Tensor, name: str) -> None:
    if acts.dim() not in (2, 4):
        raise ValueError(
            f"{name} takes (n, C, H, W) or (n, C) activations, got shape {tuple(acts.shape)}; "
            "pass layout= to map the layer's output to one of them."
        )


def channel(channels: Channels) -> Objective:
    r"""The mean of channel ``channels[i]`` over all positions, for image ``i``.

    Args:
        channels (int, sequence of int or Tensor): one channel per image (or one for all).

    Returns:
        Objective: ``acts[i, channels[i]].mean()`` per image (for ``(n, C)`` activations,
        ``acts[i, channels[i]]``).
    """

    def fn(acts: Tensor) -> Tensor:
        _check_dims(acts, "channel")
        idx = _per_image(channels, acts)
        sel = acts[torch.arange(acts.shape[0], device=acts.device), idx]
        return sel.flatten(1).mean(dim=1) if sel.dim() > 1 else sel

    return Objective(fn, "channel")


def neuron(channels: Channels, y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    r"""Channel ``channels[i]`` at one position ``(y, x)``, for image ``i``.

    Args:
        channels (int, sequence of int or Tensor): one channel per image (or one for all).
        y, x (int, optional): the position; default the centre ``(H // 2, W // 2)`` (for an
            even size the lower-right of the four central positions, as in Lucid).

    Returns:
        Objective: ``acts[i, channels[i], y, x]`` per image (``acts[i, channels[i]]`` for
        ``(n, C)`` activations).
    """

    def fn(acts: Tensor) -> Tensor:
        _check_dims(acts, "neuron")
        idx = _per_image(channels, acts)
        rows = torch.arange(acts.shape[0], device=acts.device)
        if acts.dim() == 2:
            return acts[rows, idx]
        h, w = acts.shape[-2:]
        yy = h // 2 if y is None else int(y)
        xx = w // 2 if x is None else int(x)
        if not (0 <= yy < h and 0 <= xx < w):
            raise IndexError(f"Position ({yy}, {xx}) is outside the layer's {h} x {w} grid.")
        return acts[rows, idx, yy, xx]

    return Objective(fn, "neuron")


def direction(vectors: Tensor, center: bool = False, cossim_pow: float = 0.0,
              y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    r"""Image ``i``'s activation along the direction ``vectors[i]``: at every position the dot
    product ``v · a`` of the direction with the activation vector (all channels), averaged over
    positions (Lucent's ``direction``) or taken at one position (``center=True``: the centre,
    or ``(y, x)``; Lucent's ``direction_neuron``). With ``cossim_pow > 0`` each dot product is
    multiplied by ``max(cos(v, a), 0.1) ** cossim_pow`` (Lucid's ``_dot_cossim``): the image is
    pushed to point *along* the direction rather than only to grow large.

    Args:
        vectors (Tensor): ``(n, C)`` one direction per image, or ``(C,)`` for all.
        center (bool): one position instead of the mean over positions.
        cossim_pow (float): the exponent of the cosine weighting; 0 is the plain dot product.
        y, x (int, optional): the position with ``center=True``; default the centre.

    Returns:
        Objective: ``(n,)``.

    Example::

        >>> acts = torch.randn(2, 8, 5, 5)
        >>> direction(torch.eye(8)[[3, 5]])(acts)          # == channel([3, 5])(acts)
    """
    vecs = torch.as_tensor(vectors)
    if vecs.dim() not in (1, 2) or not vecs.is_floating_point():
        raise ValueError(f"Directions must be a float (C,) or (n, C) tensor, got {tuple(vecs.shape)} {vecs.dtype}.")

    def fn(acts: Tensor) -> Tensor:
        _check_dims(acts, "direction")
        n, c = acts.shape[0], acts.shape[1]
        v = vecs.to(acts.device, acts.dtype)
        v = v.expand(n, -1) if v.dim() == 1 or v.shape[0] == 1 else v.reshape(v.shape[0], -1)
        if v.shape != (n, c):
            raise ValueError(f"Got directions of shape {tuple(vecs.shape)} for {n} images of {c} channels: "
                             f"give one ({c},) direction per image.")
        a = acts if acts.dim() == 4 else acts[:, :, None, None]
        if center:
            h, w = a.shape[-2:]
            yy, xx = h // 2 if y is None else int(y), w // 2 if x is None else int(x)
            if not (0 <= yy < h and 0 <= xx < w):
                raise IndexError(f"Position ({yy}, {xx}) is outside the layer's {h} x {w} grid.")
            a = a[:, :, yy : yy + 1, xx : xx + 1]
        dot = torch.einsum("nc,nchw->nhw", v, a)
        if cossim_pow:
            norms = torch.linalg.vector_norm(v, dim=1)[:, None, None] * torch.linalg.vector_norm(a, dim=1)
            cos = dot / norms.clamp(min=1e-8)
            dot = dot * cos.clamp(min=0.1) ** float(cossim_pow)
        return dot.flatten(1).mean(dim=1)

    return Objective(fn, "direction_neuron" if center else "direction")


def diversity(groups: Union[Sequence[int], Tensor]) -> Objective:
    r"""Minus each image's mean cosine similarity to the other images of its group, computed
    on the Gram matrices of the whole layer (style, not position: Olah et al. 2017).

    For image ``i`` in group ``g`` with ``m > 1`` members, the value is
    ``-1 / (m - 1) * Σ_{j in g, j != i} cos(G_i, G_j)``, with ``G_i = A_i A_i^T / (H W)`` the
    ``(C, C)`` Gram matrix of its activations ``A_i`` (``(C, H*W)``; for ``(n, C)``
    activations ``A_i`` is the ``(C, 1)`` column). Alone in its group, an image scores 0.
    Maximising it pushes a channel's samples towards different things.

    Args:
        groups (sequence of int or Tensor): ``(n,)`` group id per image (e.g. its channel).

    Returns:
        Objective: values in ``[-1, 1]``.
    """

    def fn(acts: Tensor) -> Tensor:
        _check_dims(acts, "diversity")
        n = acts.shape[0]
        g = torch.as_tensor(groups, device=acts.device).flatten()
        if g.numel() != n:
            raise ValueError(f"Got {g.numel()} group ids for a batch of {n} images.")
        a = acts.flatten(2) if acts.dim() == 4 else acts.unsqueeze(-1)
        gram = torch.bmm(a, a.transpose(1, 2)) / a.shape[-1]
        flat = F.normalize(gram.flatten(1), dim=1)
        sim = flat @ flat.T
        same = (g[:, None] == g[None, :]) & ~torch.eye(n, dtype=torch.bool, device=acts.device)
        count = same.sum(dim=1).clamp(min=1)
        return -(sim * same).sum(dim=1) / count

    return Objective(fn, "diversity")


#: Objective names accepted by ``visualize(objective=...)``.
OBJECTIVES = ("channel", "neuron", "-channel", "-neuron")


def from_name(name: Union[str, Callable[[Tensor], Objective]], channels: Channels) -> Objective:
    r"""The objective ``name`` (one of :data:`OBJECTIVES`) for per-image ``channels``.

    Args:
        name (str or Callable): a name, or a function ``channels -> Objective`` (for
            instance ``lambda ch: channel(ch) + 0.5 * neuron(ch)``).
        channels (int, sequence of int or Tensor): one channel per image.

    Returns:
        Objective
    """
    if callable(name):
        obj = name(channels)
        if not isinstance(obj, Objective):
            raise TypeError(f"objective= callable must return an Objective, got {type(obj).__name__}.")
        return obj
    table = {"channel": channel, "neuron": neuron}
    base = name[1:] if isinstance(name, str) and name.startswith("-") else name
    if base not in table:
        raise ValueError(
            f"Unknown objective {name!r}: use one of {', '.join(OBJECTIVES)} or a callable "
            "channels -> Objective."
        )
    obj = table[base](channels)
    return -obj if name.startswith("-") else obj


def direction_from_name(name: Union[str, Callable[[Tensor], Objective]], vectors: Tensor,
                        cossim_pow: float = 0.0) -> Objective:
    r"""The objective ``name`` for per-image directions ``vectors`` (``(n, C)``): ``"channel"`` /
    ``"direction"`` the mean over positions of :func:`direction`, ``"neuron"`` /
    ``"direction_neuron"`` its value at the centre, a leading ``"-"`` the negative; a callable
    ``vectors -> Objective`` as it is.

    Returns:
        Objective
    """
    if callable(name):
        return from_name(name, vectors)
    base = name[1:] if name.startswith("-") else name
    table = {"channel": False, "direction": False, "neuron": True, "direction_neuron": True}
    if base not in table:
        raise ValueError(f"Unknown objective {name!r} for directions: use channel / direction (mean over "
                         "positions), neuron / direction_neuron (the centre), their negatives, or a callable.")
    obj = direction(vectors, center=table[base], cossim_pow=cossim_pow)
    return -obj if name.startswith("-") else obj
