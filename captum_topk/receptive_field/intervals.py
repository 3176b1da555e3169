r"""Per-axis dependency sets: the rules the ``torch.fx`` tracer (:mod:`.trace`) and the ONNX
tracer (:mod:`captum_topk.onnx.trace`) share.

Every operation a CNN backbone applies to an image acts *separably* on its two axes or is
global along one of them: a convolution output row ``y`` reads input rows ``y*s - p + j*d``
whatever the column, pooling likewise, interpolation maps output rows to source rows, an
addition or a concatenation joins dependencies position by position, a global pooling
joins a whole axis. So the set of input pixels an output position ``(y, x)`` depends on
projects onto the row axis as a set ``R(y)`` that depends on ``y`` only, and onto the
column axis as ``C(x)``. :class:`Deps` stores these sets as boolean matrices,
``rows[y, i] = (input row i in R(y))`` of shape ``(h, H)`` and ``cols`` of shape ``(w, W)``,
and every rule below composes them: a windowed operation is a ``(n_out, n_in)`` boolean
*index map* ``A`` along an axis, and ``rows_out = (A @ rows_in) > 0``.

Sets rather than intervals: a dilated convolution leaves holes in ``R(y)``, and predicting
which output positions a probe image with NaN in input row ``i`` reaches (what the
confirmation checks, :func:`captum_topk.receptive_field.probe.confirm_predictions`) needs
the sets; the box of a position is their hull, exactly what the NaN probe measures.

Exactness. The representation is exact as long as

* the union over channels is what is tracked (the probe reads ``isnan(out).any(dim=1)``):
  channel-mixing and channel-wise operations keep it exact, selecting *some* channels of a
  tensor whose channels depend on different pixels (``uniform=False``, e.g. a concatenation)
  does not, and is refused;
* empty sets stay consistent: ``dep(y, x)`` is empty iff ``R(y)`` or ``C(x)`` is; a union
  of operands with different empty patterns is checked (:meth:`Deps.union`).

Anything a rule cannot represent exactly raises :class:`Unsupported`; the tracers then fall
back to the full NaN probe for the layers concerned. Nothing here runs a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

Role = Optional[str]
"""What a tensor dimension holds: ``"n"`` the batch, ``"h"`` image rows, ``"w"`` image
columns, ``None`` anything else (channels, features, a merged axis)."""


class Unsupported(Exception):
    r"""An operation the tracer cannot represent exactly; the message says which and why."""


class LayoutUnsupported(Unsupported):
    r"""A requested tensor whose dimensions 2 and 3 are not (rows, columns), e.g. a
    channels-last ``(N, H, W, C)`` tensor: measured by the probe, which also refuses it."""


class TraceError(RuntimeError):
    r"""``method="trace"`` was asked for but the trace could not give (or confirm) the field.

    Attributes:
        reasons (dict of str to str): layer name -> why.
    """

    def __init__(self, reasons: dict) -> None:
        self.reasons = dict(reasons)
        lines = "; ".join(f"{k}: {v}" for k, v in self.reasons.items())
        super().__init__(
            f"The receptive field could not be traced exactly ({lines}). Use method='auto' "
            "(falls back to the full NaN probe) or method='probe'."
        )


# --------------------------------------------------------------------------------------
# 1-D index maps: (n_out, n_in) bool, True where output index y reads input index i
# --------------------------------------------------------------------------------------


def taps_map(taps: Tensor, n_in: int) -> Tensor:
    r"""Index map from source indices.

    Args:
        taps (Tensor): ``(n_out, k)`` int64 source indices; those outside ``[0, n_in)``
            (padding) are ignored.
        n_in (int): input length.

    Returns:
        Tensor: ``(n_out, n_in)`` bool.
    """
    taps = taps.to(torch.int64).reshape(taps.shape[0], -1)
    out = torch.zeros(taps.shape[0], n_in + 1, dtype=torch.bool)
    inside = (taps >= 0) & (taps < n_in)
    out.scatter_(1, torch.where(inside, taps, torch.full_like(taps, n_in)), True)
    return out[:, :n_in]


def window_length(n_in: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                  dilation: int = 1, ceil_mode: bool = False) -> int:
    r"""PyTorch's output length of a convolution / pooling window (``ceil_mode``: the last
    window must start inside the input or the left padding)."""
    span = n_in + pad_begin + pad_end - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1  # pooling_output_shape
    if ceil_mode and (out - 1) * stride >= n_in + pad_begin:
        out -= 1
    return max(out, 0)


def window_map(n_in: int, n_out: int, kernel: int, stride: int, pad_begin: int,
               dilation: int = 1) -> Tensor:
    r"""Convolution / pooling: output ``y`` reads ``y*stride - pad_begin + j*dilation`` for
    ``0 <= j < kernel`` (positions in the padding read nothing)."""
    if min(kernel, stride, dilation) < 1:
        raise Unsupported(f"window with kernel {kernel}, stride {stride}, dilation {dilation}")
    y = torch.arange(n_out).unsqueeze(1)
    j = torch.arange(kernel).unsqueeze(0)
    return taps_map(y * stride - pad_begin + j * dilation, n_in)


def transposed_window_map(n_in: int, n_out: int, kernel: int, stride: int, pad_begin: int,
                          dilation: int = 1) -> Tensor:
    r"""Transposed convolution: input ``x`` writes output ``x*stride - pad_begin +
    j*dilation``; the map is the transpose of those writes."""
    x = torch.arange(n_in).unsqueeze(1)
    j = torch.arange(kernel).unsqueeze(0)
    return taps_map(x * stride - pad_begin + j * dilation, n_out).T.contiguous()


def adaptive_map(n_in: int, n_out: int) -> Tensor:
    r"""Adaptive pooling bins (PyTorch / ONNX Runtime): ``[floor(y*n_in/n_out),
    ceil((y+1)*n_in/n_out))``."""
    y = torch.arange(n_out).unsqueeze(1)
    start = (y * n_in) // n_out
    end = ((y + 1) * n_in + n_out - 1) // n_out
    i = torch.arange(n_in).unsqueeze(0)
    return (i >= start) & (i < end)


def pad_map(n_in: int, before: int, after: int, mode: str = "constant") -> Tensor:
    r"""Padding (negative amounts crop): ``constant`` reads nothing outside, ``reflect``
    mirrors without repeating the edge, ``replicate`` / ``edge`` repeats it, ``circular`` /
    ``wrap`` wraps around."""
    n_out = n_in + before + after
    if n_out < 1:
        raise Unsupported(f"padding {before}, {after} of a length-{n_in} axis")
    t = torch.arange(n_out) - before
    if mode == "constant":
        src = t
    elif mode == "reflect":
        if n_in < 2 or max(before, after) >= n_in:
            raise Unsupported(f"reflect padding {before}, {after} of a length-{n_in} axis")
        src = torch.where(t < 0, -t, t)
        src = torch.where(src >= n_in, 2 * (n_in - 1) - src, src)
    elif mode in ("replicate", "edge"):
        src = t.clamp(0, n_in - 1)
    elif mode in ("circular", "wrap"):
        src = t.remainder(n_in)
    else:
        raise Unsupported(f"padding mode {mode!r}")
    return taps_map(src.unsqueeze(1), n_in)


def select_map(n_in: int, index: Sequence[int]) -> Tensor:
    r"""Output ``y`` reads input ``index[y]`` (slicing, narrowing, splitting, tiling)."""
    idx = torch.as_tensor(list(index), dtype=torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_in):
        raise Unsupported("index out of range")
    return taps_map(idx.unsqueeze(1), n_in)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def resize_map(n_in: int, n_out: int, mode: str, coordinate: str, *, nearest: str = "floor",
               scale: Optional[float] = None) -> Tensor:
    r"""Source indices of interpolation, in the engines' own float32 arithmetic.

    Args:
        n_in, n_out (int): input and output lengths.
        mode (str): ``"nearest"`` or ``"linear"`` (bilinear along each axis: the two
            neighbours, both read even when one weight is 0, since ``NaN * 0`` is NaN).
        coordinate (str): how an output index maps to a source coordinate.

            * PyTorch (``torch.nn.functional.interpolate``): ``"torch_nearest"`` (mode
              nearest), ``"torch_nearest_exact"``, ``"torch_linear"`` (align_corners=False),
              ``"torch_align_corners"``;
            * ONNX ``Resize`` (ONNX Runtime): ``"half_pixel"``, ``"pytorch_half_pixel"``,
              ``"asymmetric"``, ``"align_corners"``, ``"tf_half_pixel_for_nn"``.
        nearest (str): ONNX ``nearest_mode`` (``floor``, ``ceil``, ``round_prefer_floor``,
            ``round_prefer_ceil``) or ``"simple"`` (ONNX ``Upsample``).
        scale (float, optional): the scale factor the kernel receives (PyTorch: the
            ``scale_factor`` argument; ONNX: the ``scales`` input, else ``n_out / n_in``).

    Returns:
        Tensor: ``(n_out, n_in)`` bool.
    """
    y = np.arange(n_out)
    last = n_in - 1
    if coordinate.startswith("torch_"):
        if coordinate == "torch_align_corners":
            ratio = _f32(last) / _f32(n_out - 1) if n_out > 1 else _f32(0.0)
        else:  # compute_scales_value<float>
            ratio = _f32(1.0 / scale) if scale is not None and scale > 0 else _f32(n_in) / _f32(n_out)
        if coordinate == "torch_nearest":
            if n_out == n_in:
                src = y
            elif n_out == 2 * n_in:
                src = y >> 1
            else:
                src = np.floor(y.astype(np.float32) * ratio).astype(np.int64)
            src = np.minimum(src, last)
            return taps_map(torch.from_numpy(src).unsqueeze(1), n_in)
        if coordinate == "torch_nearest_exact":
            real = (y.astype(np.float64) + 0.5) * np.float64(ratio)
            src = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), last)
            return taps_map(torch.from_numpy(src).unsqueeze(1), n_in)
        if mode != "linear":
            raise Unsupported(f"interpolation {coordinate} / {mode}")
        if n_out == n_in:
            return taps_map(torch.arange(n_out).unsqueeze(1), n_in)
        if coordinate == "torch_align_corners":
            real = ratio * y.astype(np.float32)
        elif coordinate == "torch_linear":
            real = ratio * (y.astype(np.float32) + _f32(0.5)) - _f32(0.5)
            real = np.where(real < 0, _f32(0.0), real)
        else:
            raise Unsupported(f"interpolation coordinate {coordinate!r}")
        i0 = np.minimum(np.floor(real).astype(np.int64), last)
        i1 = i0 + (i0 < last)
        return taps_map(torch.from_numpy(np.stack([i0, i1], 1)), n_in)

    # ONNX Runtime (upsamplebase.h): float32 throughout
    s = _f32(scale if scale is not None else float(n_out) / float(n_in))
    yf = y.astype(np.float32)
    if coordinate == "half_pixel":
        real = (yf + _f32(0.5)) / s - _f32(0.5)
    elif coordinate == "pytorch_half_pixel":
        real = (yf + _f32(0.5)) / s - _f32(0.5) if n_out > 1 else np.zeros_like(yf)
    elif coordinate == "asymmetric":
        real = yf / s
    elif coordinate == "tf_half_pixel_for_nn":
        real = (yf + _f32(0.5)) / s
    elif coordinate == "align_corners":
        real = yf * _f32(last) / _f32(n_out - 1) if n_out > 1 else np.zeros_like(yf)
    else:
        raise Unsupported(f"Resize coordinate_transformation_mode {coordinate!r}")
    real = real.astype(np.float32)
    if mode == "nearest":
        if nearest == "floor":
            src = np.floor(real)
        elif nearest == "ceil":
            src = np.ceil(real)
        elif nearest == "round_prefer_ceil":  # std::round: half away from zero
            src = np.sign(real) * np.floor(np.abs(real) + _f32(0.5))
        elif nearest == "round_prefer_floor":
            half = real == np.trunc(real) + _f32(0.5)
            src = np.where(half, np.floor(real), np.sign(real) * np.floor(np.abs(real) + _f32(0.5)))
        elif nearest == "simple":
            src = np.ceil(real) if s < 1 else np.trunc(real)
        else:
            raise Unsupported(f"Resize nearest_mode {nearest!r}")
        src = np.clip(src.astype(np.int64), 0, last)
        return taps_map(torch.from_numpy(src).unsqueeze(1), n_in)
    if mode != "linear":
        raise Unsupported(f"Resize mode {mode!r}")
    real = np.clip(real, _f32(0.0), _f32(last))
    i0 = np.minimum(real.astype(np.int64), last)
    i1 = np.minimum(i0 + 1, last)
    return taps_map(torch.from_numpy(np.stack([i0, i1], 1)), n_in)


# --------------------------------------------------------------------------------------
# dependency sets of one tensor
# --------------------------------------------------------------------------------------


def _compose(index_map: Tensor, sets: Tensor) -> Tensor:
    return (index_map.to(torch.float32) @ sets.to(torch.float32)) > 0


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> List[Tuple[List[int], List[int]]]:
    """Pairs (input dims, output dims) of a row-major reshape whose sizes multiply alike."""
    groups: List[Tuple[List[int], List[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        gi: List[int] = []
        gj: List[int] = []
        pa = pb = 1
        if i < len(a):
            gi.append(i)
            pa *= a[i]
            i += 1
        if j < len(b):
            gj.append(j)
            pb *= b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                raise Unsupported(f"reshape {tuple(a)} -> {tuple(b)}")
        groups.append((gi, gj))
    return groups


@dataclass(frozen=True)
class Deps:
    r"""The image pixels each element of a tensor depends on, per axis.

    Attributes:
        dims (tuple): a :data:`Role` per tensor dimension; at most one ``"h"``, ``"w"``,
            ``"n"`` each. A role stays on a dimension of size 1 (its one position may still
            depend on nothing, e.g. after a transposed convolution).
        shape (tuple of int): the tensor's shape.
        rows (Tensor): ``(size of the "h" dim, H)`` bool, or ``(1, H)`` when there is no
            ``"h"`` dimension (every element has the same row set).
        cols (Tensor): likewise ``(size of the "w" dim, W)`` or ``(1, W)``.
        uniform (bool): True when every index of every ``None`` dimension has the same
            sets (False after a concatenation of different tensors along channels, or a
            flatten of rows into features): only then may such a dimension be sliced.
    """

    dims: Tuple[Role, ...]
    shape: Tuple[int, ...]
    rows: Tensor
    cols: Tensor
    uniform: bool = True

    # -- construction and checks -------------------------------------------------------

    @staticmethod
    def image(shape: Sequence[int], layout: str = "NCHW") -> "Deps":
        r"""The model input: pixel ``(y, x)`` depends on itself. ``layout`` ``NCHW`` or ``NHWC``."""
        shape = tuple(int(s) for s in shape)
        dims: Tuple[Role, ...] = ("n", None, "h", "w") if layout == "NCHW" else ("n", "h", "w", None)
        H, W = shape[dims.index("h")], shape[dims.index("w")]
        return Deps(dims, shape, torch.eye(H, dtype=torch.bool), torch.eye(W, dtype=torch.bool)).normalized()

    def normalized(self) -> "Deps":
        r"""Check the invariants (raise :class:`Unsupported` if broken); returns ``self``."""
        dims = self.dims
        for role, sets in (("h", self.rows), ("w", self.cols)):
            n = self.shape[dims.index(role)] if role in dims else 1
            if sets.shape[0] != n:
                raise Unsupported(f"internal: {role} sets {tuple(sets.shape)} for shape {self.shape}")
        if len(dims) != len(self.shape) or len([r for r in dims if r]) != len({r for r in dims if r}):
            raise Unsupported(f"internal: roles {dims} for shape {self.shape}")
        return self

    def check(self, shape: Sequence[int]) -> "Deps":
        r"""Raise :class:`Unsupported` unless this describes a tensor of ``shape``."""
        if tuple(int(s) for s in shape) != self.shape:
            raise Unsupported(f"internal: predicted shape {self.shape}, got {tuple(shape)}")
        return self

    def _free_dims(self) -> List[int]:
        return [i for i, r in enumerate(self.dims) if r is None and self.shape[i] > 1]

    # -- along one dimension -----------------------------------------------------------

    def map_dim(self, dim: int, index_map: Tensor, shape: Sequence[int]) -> "Deps":
        r"""Apply a 1-D index map ``(n_out, n_in)`` along tensor dimension ``dim``; the
        result has ``shape``."""
        dim = dim % len(self.dims)
        role = self.dims[dim]
        if index_map.shape[1] != self.shape[dim]:
            raise Unsupported(f"internal: index map {tuple(index_map.shape)} on a length-{self.shape[dim]} axis")
        rows, cols, dims = self.rows, self.cols, list(self.dims)
        if role == "h":
            rows = _compose(index_map, rows)
        elif role == "w":
            cols = _compose(index_map, cols)
        elif role == "n":
            raise Unsupported("an operation across the batch")
        else:
            if not self.uniform and not bool(index_map.any(0).all()):
                raise Unsupported("selecting some channels of a tensor whose channels depend on different pixels")
            if not bool(index_map.any(1).all()):
                raise Unsupported("positions of a non-image axis that read nothing")
        shape = tuple(int(s) for s in shape)
        if shape[dim] != index_map.shape[0]:
            raise Unsupported("internal: index map / shape mismatch")
        return Deps(tuple(dims), shape, rows, cols, self.uniform).normalized()

    def reduce(self, dims: Sequence[int], keepdim: bool = False) -> "Deps":
        r"""Join along ``dims`` (a reduction: each result depends on all of them)."""
        nd = len(self.dims)
        dims = sorted({d % nd for d in dims})
        rows, cols = self.rows, self.cols
        for d in dims:
            role = self.dims[d]
            if role == "n" and self.shape[d] > 1:
                raise Unsupported("a reduction across the batch")
            if role == "h":
                rows = rows.any(0, keepdim=True)
            elif role == "w":
                cols = cols.any(0, keepdim=True)
        # with keepdim an image axis (or a batch of one) stays, one position long (it may be
        # interpolated back)
        new_dims = [None if (i in dims and r is None) else r for i, r in enumerate(self.dims)]
        shape = [1 if i in dims else s for i, s in enumerate(self.shape)]
        uniform = self.uniform or not [i for i in self._free_dims() if i not in dims]
        if not keepdim:
            new_dims = [r for i, r in enumerate(new_dims) if i not in dims]
            shape = [s for i, s in enumerate(shape) if i not in dims]
        return Deps(tuple(new_dims), tuple(shape), rows, cols, uniform).normalized()

    def mix(self, dims: Sequence[int]) -> "Deps":
        r"""Every element depends on every element along ``dims``, shape unchanged (a
        normalisation, a softmax, a linear map over those dimensions)."""
        reduced = self.reduce(dims, keepdim=True)
        nd = len(self.dims)
        dims = {d % nd for d in dims}
        uniform = self.uniform or not [i for i in self._free_dims() if i not in dims]
        rows, cols = reduced.rows, reduced.cols
        if "h" in self.dims:  # every row position now depends on the union
            rows = rows.expand(self.shape[self.dims.index("h")], rows.shape[1])
        if "w" in self.dims:
            cols = cols.expand(self.shape[self.dims.index("w")], cols.shape[1])
        return Deps(self.dims, self.shape, rows, cols, uniform).normalized()

    def select(self, dim: int, index: Sequence[int]) -> "Deps":
        r"""Keep indices ``index`` (in that order) along ``dim``."""
        dim = dim % len(self.dims)
        index = list(index)
        if index == list(range(self.shape[dim])):
            return self
        if self.dims[dim] == "n":
            raise Unsupported("selecting images of the batch")
        shape = list(self.shape)
        shape[dim] = len(index)
        return self.map_dim(dim, select_map(self.shape[dim], index), shape)

    def drop(self, dim: int, index: int) -> "Deps":
        r"""Integer indexing: keep index ``index`` of ``dim`` and remove the dimension."""
        dim = dim % len(self.dims)
        one = self.select(dim, [index % self.shape[dim]])
        dims = [r for i, r in enumerate(one.dims) if i != dim]
        shape = [s for i, s in enumerate(one.shape) if i != dim]
        return Deps(tuple(dims), tuple(shape), one.rows, one.cols, one.uniform).normalized()

    def permute(self, order: Sequence[int]) -> "Deps":
        nd = len(self.dims)
        order = [int(o) % nd for o in order]
        if sorted(order) != list(range(nd)):
            raise Unsupported(f"permutation {order} of {nd} dims")
        return Deps(tuple(self.dims[o] for o in order), tuple(self.shape[o] for o in order),
                    self.rows, self.cols, self.uniform).normalized()

    def reshape(self, shape: Sequence[int]) -> "Deps":
        r"""A row-major reshape (view, flatten, unflatten, squeeze, unsqueeze): a dimension
        kept whole keeps its role; rows or columns merged with other dimensions are joined
        (and the merged dimension is no longer uniform)."""
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != math.prod(self.shape) or 0 in shape:
            raise Unsupported(f"reshape {self.shape} -> {shape}")
        dims: List[Role] = [None] * len(shape)
        rows, cols, uniform = self.rows, self.cols, self.uniform
        for gi, gj in _reshape_groups(self.shape, shape):
            big_in = [i for i in gi if self.shape[i] > 1]
            big_out = [j for j in gj if shape[j] > 1]
            roles = [self.dims[i] for i in gi if self.dims[i] is not None]
            if not roles:
                continue
            if len(gi) == 1 and len(gj) == 1:  # a dimension kept whole (a batch of one too)
                dims[gj[0]] = self.dims[gi[0]]
                continue
            if len(big_in) == 1 and len(big_out) == 1 and self.dims[big_in[0]] is not None:
                dims[big_out[0]] = self.dims[big_in[0]]  # roles of size-1 dims around it vanish
                gi = [i for i in gi if i != big_in[0]]
            merged = [i for i in gi if self.dims[i] is not None]
            for i in merged:
                if self.dims[i] == "n" and self.shape[i] > 1:
                    raise Unsupported("a reshape that merges or splits the batch")
                if self.dims[i] == "h":
                    rows = rows.any(0, keepdim=True)
                elif self.dims[i] == "w":
                    cols = cols.any(0, keepdim=True)
            if big_out and any(self.shape[i] > 1 for i in merged):
                uniform = False
        return Deps(tuple(dims), shape, rows, cols, uniform).normalized()

    # -- several tensors ---------------------------------------------------------------

    @staticmethod
    def union(operands: Sequence[Optional["Deps"]], shape: Sequence[int]) -> Optional["Deps"]:
        r"""An element-wise operation with broadcasting (or a concatenation along a
        non-image dimension, which joins the same positions): the result at a position
        depends on what every operand depends on there.

        Args:
            operands: the operands' deps (``None`` for constants, which add nothing).
            shape: the result's shape.
        """
        shape = tuple(int(s) for s in shape)
        ops = [d for d in operands if d is not None]
        if not ops:
            return None
        nd = len(shape)
        dims: List[Role] = [None] * nd
        for d in ops:
            off = nd - len(d.dims)
            if off < 0:
                raise Unsupported("internal: broadcast to fewer dims")
            for i, r in enumerate(d.dims):
                j = off + i
                if d.shape[i] not in (1, shape[j]):
                    raise Unsupported("internal: broadcast shape")
                if r is not None:  # an image axis, possibly broadcast from one position
                    if dims[j] not in (None, r):
                        raise Unsupported(f"an element-wise operation pairing {dims[j]!r} with {r!r}")
                    dims[j] = r
        if len([r for r in dims if r]) != len({r for r in dims if r}):
            raise Unsupported("an element-wise operation pairing one axis with another")
        # an operand's non-image dimension paired with the image axis of another must not vary
        for d in ops:
            off = nd - len(d.dims)
            for i, r in enumerate(d.dims):
                if r is None and d.shape[i] > 1 and dims[off + i] is not None and not d.uniform:
                    raise Unsupported("an element-wise operation pairing channels with an image axis")

        def expanded(d: "Deps", role: str) -> Tensor:
            sets = d.rows if role == "h" else d.cols
            if role in dims:
                n = shape[dims.index(role)]
                return sets.expand(n, sets.shape[1]) if sets.shape[0] == 1 else sets
            return sets

        rows_each = [expanded(d, "h") for d in ops]
        cols_each = [expanded(d, "w") for d in ops]
        rows = torch.stack(rows_each).any(0)
        cols = torch.stack(cols_each).any(0)
        if len(ops) > 1:
            _check_empties(rows_each, cols_each)
            _check_empties(cols_each, rows_each)
        uniform = all(d.uniform for d in ops)
        return Deps(tuple(dims), shape, rows, cols, uniform).normalized()

    @staticmethod
    def cat(operands: Sequence[Optional["Deps"]], shapes: Sequence[Sequence[int]], dim: int,
            shape: Sequence[int]) -> Optional["Deps"]:
        r"""Concatenation along ``dim``: along channels a union (the channels of the
        result depend on different pixels: not uniform unless all operands agree); along
        rows or columns the sets are stacked (the other axis must agree)."""
        shape = tuple(int(s) for s in shape)
        nd = len(shape)
        dim = dim % nd
        ops = [d for d in operands if d is not None]
        if not ops:
            return None
        roles = {d.dims[dim] for d in ops} - {None}
        if not roles:
            expanded = [Deps(d.dims, _with(d.shape, dim, shape[dim]), d.rows, d.cols, d.uniform)
                        if d is not None else None for d in operands]
            out = Deps.union(expanded, shape)
            if out is None:
                return None
            same = all(torch.equal(d.rows, ops[0].rows) and torch.equal(d.cols, ops[0].cols)
                       and d.dims == ops[0].dims for d in ops) and len(ops) == len(operands)
            return replace(out, uniform=out.uniform and same)
        if roles == {"n"}:
            raise Unsupported("a concatenation along the batch")
        role = roles.pop()
        if roles:
            raise Unsupported("a concatenation mixing image axes")
        parts: List[Tensor] = []
        other: Optional[Tuple[Tuple[Role, ...], Tensor]] = None  # dims but ``dim``, other-axis sets
        uniform = True
        for d, s in zip(operands, shapes):
            n = int(s[dim])
            if d is None:
                width = ops[0].rows.shape[1] if role == "h" else ops[0].cols.shape[1]
                parts.append(torch.zeros(n, width, dtype=torch.bool))
                continue
            if d.dims[dim] != role and d.shape[dim] > 1:
                raise Unsupported("a concatenation pairing an image axis with another")
            sets = d.rows if role == "h" else d.cols
            parts.append(sets.expand(n, sets.shape[1]) if sets.shape[0] == 1 else sets)
            rest = tuple(r for i, r in enumerate(d.dims) if i != dim)
            sets_other = d.cols if role == "h" else d.rows
            if other is None:
                other = (rest, sets_other)
            elif rest != other[0] or not torch.equal(sets_other, other[1]):
                raise Unsupported("a concatenation along an image axis of tensors that differ along the other")
            uniform = uniform and d.uniform
        assert other is not None
        stacked = torch.cat(parts, 0)
        dims = list(other[0])
        dims.insert(dim, role)
        rows = stacked if role == "h" else other[1]
        cols = stacked if role == "w" else other[1]
        return Deps(tuple(dims), shape, rows, cols, uniform).normalized()

    # -- what the probe measures -------------------------------------------------------

    def field_sets(self) -> Tuple[Tensor, Tensor]:
        r"""The sets the NaN probe measures for this tensor as a layer output: ``(N, C)``
        outputs are one position; ``(N, C, h, w)`` outputs are joined over dimension 1
        (``isnan(out).any(dim=1)``) and read as rows x columns.

        Returns:
            (Tensor, Tensor): ``(h, H)`` and ``(w, W)`` bool (``(1, H)``, ``(1, W)`` for a
            2-D output).

        Raises:
            LayoutUnsupported: dimension 0 is not the batch, or dimensions 2 and 3 are not
                (rows, columns), e.g. a channels-last tensor.
        """
        if len(self.dims) not in (2, 4) or self.dims[0] != "n":
            raise LayoutUnsupported(f"a {len(self.dims)}-D output with dimensions {self.dims}")
        d = self.reduce([1], keepdim=True)
        if len(self.dims) == 2:
            return d.rows.any(0, keepdim=True), d.cols.any(0, keepdim=True)
        if d.dims[2] not in ("h", None) or d.dims[3] not in ("w", None) or (
            not d.uniform and ((d.dims[2] is None and d.shape[2] > 1) or (d.dims[3] is None and d.shape[3] > 1))
        ):
            raise LayoutUnsupported(f"an output whose dimensions 1-3 hold {self.dims[1:]} (not channels, rows, columns)")
        rows = d.rows.expand(d.shape[2], d.rows.shape[1]) if d.dims[2] is None else d.rows
        cols = d.cols.expand(d.shape[3], d.cols.shape[1]) if d.dims[3] is None else d.cols
        return rows.contiguous(), cols.contiguous()


def _with(shape: Sequence[int], dim: int, n: int) -> Tuple[int, ...]:
    s = list(shape)
    s[dim] = n
    return tuple(s)


def _check_empties(mine: List[Tensor], other: List[Tensor]) -> None:
    r"""Exactness of a union of separable operands along one axis when some positions
    depend on nothing: the row set of ``(y, x)`` is the union of the operands' row sets at
    ``y`` over the operands that reach anything at ``x``; the joined sets are exact iff,
    for every pattern of operands reaching ``x``, their union equals the union of all."""
    full = torch.stack(mine).any(0)  # (n, H)
    reach = torch.stack([o.any(1) for o in other])  # (K, m): operand k reaches x
    for pattern in torch.unique(reach.T, dim=0):
        if not bool(pattern.any()) or bool(pattern.all()):
            continue
        part = torch.stack([m for m, keep in zip(mine, pattern.tolist()) if keep]).any(0)
        if not torch.equal(part, full):
            raise Unsupported("a union of operands that depend on nothing at different positions")


# --------------------------------------------------------------------------------------
# operations built from the above, shared by both tracers
# --------------------------------------------------------------------------------------


def apply_maps(d: Deps, maps: "dict[int, Tensor]") -> Deps:
    r"""Apply 1-D index maps ``{dim: (n_out, n_in)}`` along tensor dimensions."""
    for dim, index_map in maps.items():
        shape = list(d.shape)
        shape[dim] = index_map.shape[0]
        d = d.map_dim(dim, index_map, shape)
    return d


def mix_features(d: Deps, dim: int, n_out: int, full: bool = True) -> Deps:
    r"""Dimension ``dim`` (channels, features) becomes ``n_out`` long, every output index
    reading every input index (``full``: a dense convolution or linear map, after which all
    channels depend on the same pixels) or a group of them (a grouped convolution: the
    union over channels is unchanged and so is :attr:`Deps.uniform`)."""
    dim = dim % len(d.shape)
    if full:
        d = d.mix([dim])
    shape = list(d.shape)
    shape[dim] = int(n_out)
    return d.map_dim(dim, torch.ones(int(n_out), d.shape[dim], dtype=torch.bool), shape)


def sliding_windows(d: Deps, in_shape: Sequence[int], out_shape: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], pad_begin: Sequence[int], pad_end: Sequence[int],
                    dilation: Sequence[int], ceil_mode: bool = False) -> Deps:
    r"""A 2-D convolution / pooling window along the last two dimensions.

    Raises:
        Unsupported: an output length that PyTorch's formula (:func:`window_length`, which
            ONNX Runtime follows too) does not give; ONNX shape inference may give one
            more with ``ceil_mode``, and then ONNX Runtime's tensors disagree with it.
    """
    maps = {}
    nd = len(in_shape)
    for i, dim in enumerate((nd - 2, nd - 1)):
        n_in, n_out = int(in_shape[dim]), int(out_shape[dim])
        expect = window_length(n_in, int(kernel[i]), int(stride[i]), int(pad_begin[i]), int(pad_end[i]),
                               int(dilation[i]), ceil_mode)
        if n_out != expect:
            raise Unsupported(f"output length {n_out} where the window formula gives {expect}")
        maps[dim] = window_map(n_in, n_out, int(kernel[i]), int(stride[i]), int(pad_begin[i]), int(dilation[i]))
    return apply_maps(d, maps)


def pixel_shuffle(d: Deps, out_shape: Sequence[int], factor: int) -> Deps:
    r"""Depth to space (``PixelShuffle``, ONNX ``DepthToSpace``): output row ``Y`` reads
    input row ``Y // factor``, from *some* of the channels: exact only when all channels
    depend on the same pixels."""
    if len(d.dims) != 4 or d.dims[1] is not None or not d.uniform:
        raise Unsupported("a depth-to-space of channels that depend on different pixels")
    d = mix_features(d, 1, out_shape[1], full=False)
    return apply_maps(d, {dim: select_map(d.shape[dim], [i // factor for i in range(out_shape[dim])])
                          for dim in (2, 3)})


def pixel_unshuffle(d: Deps, out_shape: Sequence[int], factor: int) -> Deps:
    r"""Space to depth (``PixelUnshuffle``, ONNX ``SpaceToDepth``): a ``factor`` x
    ``factor`` stride-``factor`` window over all channels; the channels of the result
    depend on different pixels."""
    if len(d.dims) != 4 or d.dims[1] is not None:
        raise Unsupported("a space-to-depth of a tensor whose dimension 1 is not channels")
    d = mix_features(d, 1, out_shape[1], full=False)
    out = apply_maps(d, {dim: window_map(d.shape[dim], out_shape[dim], factor, factor, 0) for dim in (2, 3)})
    return replace(out, uniform=False)
