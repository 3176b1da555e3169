r"""A layer's activations streamed batch by batch, and the fixed-size samples learning keeps.

:func:`layer_rows` runs the model over the data (the forward stopped after the layer, in eval
mode, hooks removed in ``finally``) and yields each batch's activation in the canonical layout
as rows, one row per (image, position). :class:`Reservoir` keeps a uniform sample of at most
``size`` rows of everything it was offered (Vitter's algorithm R, seeded): memory is
``size x C`` whatever the number of images. :class:`Moments` keeps the exact mean and
covariance of every row it saw (``C x C``, float64).
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..compare.inputs import image_batches
from ..core.loop import count_images
from ..core.sources.torch import TorchSource
from ..utils.modules import eval_mode, root_module

__all__ = ["LayerBatch", "layer_rows", "Reservoir", "Moments", "to_rows"]


class LayerBatch(NamedTuple):
    r"""One batch of a layer's activations.

    Attributes:
        rows (Tensor): ``(n * h * w, C)`` activations, image-major then row-major positions.
        grid (tuple of int): ``(h, w)`` (``(1, 1)`` for an ``(N, C)`` layer).
        images (int): ``n``.
        start (int): the first image's position in the pass.
    """

    rows: Tensor
    grid: Tuple[int, int]
    images: int
    start: int


def to_rows(acts: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    r"""``(N, C, h, w)`` or ``(N, C)`` canonical activations as ``(N * h * w, C)`` rows."""
    if acts.dim() == 2:
        return acts, (1, 1)
    n, c, h, w = acts.shape
    return acts.permute(0, 2, 3, 1).reshape(n * h * w, c), (h, w)


def make_source(model: Any, layer: Any, **source_kw: Any) -> Tuple[TorchSource, str]:
    r"""A :class:`TorchSource` of one layer, and the layer's name as the source names it."""
    source = TorchSource(model, layer, progress=False, **source_kw)
    if len(source.names) != 1:
        raise ValueError(f"concepts are learned on one layer, got {source.names}.")
    return source, source.names[0]


def layer_rows(model: Any, layer: Any, data: Any, *, batch_size: int = 64,
               max_images: Optional[int] = None, progress: bool = True, desc: str = "concepts",
               source: Optional[TorchSource] = None, **source_kw: Any) -> Iterator[LayerBatch]:
    r"""Stream ``layer``'s canonical activations over ``data``, as rows.

    Args:
        model (nn.Module or callable): the model.
        layer (str or nn.Module): one layer.
        data: a DataLoader / iterable of batches, a dataset, or an ``(N, C, H, W)`` tensor.
        batch_size (int): batch size for a dataset or a tensor.
        max_images (int, optional): stop after this many images.
        progress (bool): a tqdm bar.
        source (TorchSource, optional): a source to reuse (else one is made with ``source_kw``:
            ``layout``, ``token_grid``, ``prefix_tokens``, ``device_ids``).
    Yields:
        LayerBatch
    """
    from tqdm.auto import tqdm

    if source is None:
        source, name = make_source(model, layer, **source_kw)
    else:
        name = source.names[0]
    root = root_module(model)
    total = count_images(data, max_images)
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress)
    try:
        for batch in image_batches(data, batch_size=batch_size, max_images=max_images):
            # eval mode and no_grad for the forward only: the consumer (an SAE step) needs grads
            with eval_mode(*([root] if root is not None else [])), torch.no_grad():
                acts = source(batch.images)
            if name not in acts:
                raise KeyError(f"the source gave no activation named {name!r} (got {sorted(acts)}).")
            rows, grid = to_rows(acts[name].detach())
            yield LayerBatch(rows, grid, batch.images.shape[0], batch.start)
            bar.update(batch.images.shape[0])
    finally:
        bar.close()


class Reservoir:
    r"""A uniform random sample of at most ``size`` rows of a stream (algorithm R), seeded.

    Row ``t`` of the stream (0-based) is kept with probability ``size / (t + 1)`` in a random
    slot; memory is ``size x C`` float32 whatever the stream's length.

    Args:
        size (int): the most rows kept.
        seed (int): seed of the draws (the same stream and seed keep the same rows).

    Example::

        >>> res = Reservoir(1000, seed=0)
        >>> for rows in stream: res.add(rows)
        >>> res.rows.shape                     # (min(1000, rows seen), C)
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if int(size) < 1:
            raise ValueError(f"a reservoir holds at least one row, got size={size}.")
        self.size = int(size)
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._buf: Optional[Tensor] = None
        self._filled = 0

    def add(self, rows: Tensor) -> None:
        r"""Offer ``(m, C)`` rows (in stream order)."""
        rows = rows.detach().to("cpu", torch.float32)
        m = rows.shape[0]
        if m == 0:
            return
        if self._buf is None:
            self._buf = torch.empty(self.size, rows.shape[1], dtype=torch.float32)
        elif rows.shape[1] != self._buf.shape[1]:
            raise ValueError(f"rows of {rows.shape[1]} channels offered to a reservoir of {self._buf.shape[1]}.")
        take = min(m, self.size - self._filled)
        if take > 0:
            self._buf[self._filled:self._filled + take] = rows[:take]
            self._filled += take
        t = self.seen + np.arange(take, m)                     # stream positions of the rest
        if t.size:
            slot = np.floor(self._rng.random(t.size) * (t + 1)).astype(np.int64)
            keep = slot < self.size
            src, dst = np.arange(take, m)[keep], slot[keep]
            # the last row drawn for a slot wins, as in the sequential algorithm
            last = len(dst) - 1 - np.unique(dst[::-1], return_index=True)[1]
            self._buf[torch.from_numpy(dst[last])] = rows[torch.from_numpy(src[last])]
        self.seen += m

    @property
    def rows(self) -> Tensor:
        r"""``(min(size, seen), C)`` the kept rows (a view)."""
        if self._buf is None:
            raise ValueError("the reservoir is empty: no activations were seen (empty data?).")
        return self._buf[:self._filled]

    @property
    def nbytes(self) -> int:
        r"""Bytes held (fixed once the first rows arrive)."""
        return 0 if self._buf is None else self._buf.numel() * self._buf.element_size()


class Moments:
    r"""Exact streaming mean and covariance of rows (float64 sums around a shift, the first
    batch's mean, so that large means do not cost precision). Memory ``C x C``."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: Optional[Tensor] = None
        self.s1: Optional[Tensor] = None
        self.s2: Optional[Tensor] = None

    def add(self, rows: Tensor) -> None:
        x = rows.detach().to(torch.float64)
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        x = x - self.shift
        self.s1 += x.sum(0)
        self.s2 += x.T @ x
        self.n += x.shape[0]

    def mean_cov(self) -> Tuple[Tensor, Tensor]:
        r"""``(C,)`` mean and ``(C, C)`` covariance (divided by ``n - 1``)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least two rows, got {self.n}.")
        m = self.s1 / self.n
        cov = (self.s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        return (m + self.shift).cpu(), cov.cpu()

