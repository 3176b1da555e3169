r"""Sharded, distributed and resumable mining on ``torch.distributed`` (``torchrun``).

What is sharded: the dataset is cut into global batches of ``batch_size`` images in
iteration order; rank ``r`` of ``W`` mines global batches ``r, r + W, r + 2W, ...`` (disjoint,
no padded duplicates, every batch exactly as a single process would form it, so every
activation is bit-identical to a single-process run). Each image keeps its global index.

What is merged: each rank's O(layers x channels x k) state is serialised with
``torch.save`` (tensors and JSON text only), gathered on rank 0 with
``torch.distributed.gather_object`` and loaded there with ``torch.load(weights_only=True)``
(:func:`~captum_topk.core.accumulators.base.gather_payloads`, which every accumulator's
:meth:`~captum_topk.core.accumulators.base.Accumulator.gather` uses too);
rank 0 folds them in with :meth:`LayerTopKPatches.merge`, whose strict total order makes the
merged result exactly the single-process result, computes receptive fields once and writes
the result.

Resumable: each rank snapshots its own state (``snapshot.rank{r}-of-{W}.pt``, atomic); on
resume it skips the global batches its snapshot already holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..data.failures import SkippedImage
from ..data.loader import LoaderBatch, collate, globalize, guarded
from ..core.accumulators.base import gather_payloads
from ..core.result import TopKResult


@dataclass(frozen=True)
class DistEnv:
    r"""Where this process stands: ``rank`` of ``world`` processes, GPU ``local_rank``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    r"""Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as set by ``torchrun`` (1 process if unset)."""
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(env: DistEnv, device: torch.device) -> bool:
    r"""Start the process group (``nccl`` on GPU, ``gloo`` on CPU) when running under torchrun.

    Returns:
        bool: True when this call started it (and so should destroy it).
    """
    if env.world <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def shard_batches(n_images: int, batch_size: int, rank: int = 0, world: int = 1) -> List[range]:
    r"""The global batches of one rank: batch ``b`` covers images ``[b*B, min(N, (b+1)*B))``
    and belongs to rank ``b % world``.

    Returns:
        list of range: global image indices of each of this rank's batches, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes.")
    n_batches = (n_images + batch_size - 1) // batch_size
    return [range(b * batch_size, min(n_images, (b + 1) * batch_size))
            for b in range(rank, n_batches, world)]


def batches_done(ranges: Sequence[range], n_images_done: int) -> int:
    r"""How many of ``ranges`` a snapshot holding ``n_images_done`` images covers."""
    seen = 0
    for j, r in enumerate(ranges):
        if seen == n_images_done:
            return j
        seen += len(r)
    if seen == n_images_done:
        return len(ranges)
    raise ValueError(
        f"The snapshot holds {n_images_done} images, which is not a whole number of this "
        "rank's batches: was it written with another batch size or number of processes?"
    )


class ShardLoader:
    r"""Iterate a rank's batches as dicts ``images / labels / ids / indices / skipped``
    (:class:`~captum_topk.data.loader.LoaderBatch`, global indices).

    Decoding and resizing run in DataLoader worker processes (``workers``); with
    ``pin_memory`` (GPU) the host tensors are page-locked so the miner's
    ``.to(device, non_blocking=True)`` overlaps the copy with compute.

    An image that fails to load is left out of its batch and listed in the batch's
    ``skipped`` (:class:`~captum_topk.data.failures.SkippedImage`: file, reason, global
    index, id) and in :attr:`skipped`; the indices of the other images do not shift.

    Args:
        dataset (Dataset): an :class:`~captum_topk.data.ImageDataset` or any dataset of
            ``(image, label, id)`` items.
        ranges (list of range): this rank's global batches (:func:`shard_batches`).
        workers (int): DataLoader worker processes.
        pin_memory (bool): page-locked host tensors.
        dtype (torch.dtype, optional): cast the images (e.g. ``torch.float16``).
        collate_fn (Callable): batches items; default :func:`~captum_topk.data.collate`.
        keep_empty (bool): yield a batch whose every image failed, with 0 images, so that
            every range is accounted for (a resumable run counts images + skipped per
            batch); default False: such a batch is left out (its skips are in
            :attr:`skipped`).

    Attributes:
        skipped (list of SkippedImage): every image skipped at load time during the current
            (or last) pass, in order.
    """

    def __init__(
        self,
        dataset: Dataset,
        ranges: Sequence[range],
        workers: int = 0,
        pin_memory: bool = False,
        dtype: Optional[torch.dtype] = None,
        collate_fn: Callable = collate,
        keep_empty: bool = False,
    ) -> None:
        self.ranges = list(ranges)
        self.num_images = sum(len(r) for r in self.ranges)
        self.dtype = dtype
        self.keep_empty = keep_empty
        self.skipped: List[SkippedImage] = []
        self._loader = DataLoader(
            guarded(dataset),
            batch_sampler=[list(r) for r in self.ranges],
            num_workers=workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.ranges)

    def __iter__(self) -> Iterator[LoaderBatch]:
        self.skipped = []
        skipped = self.skipped
        for r, batch in zip(self.ranges, self._loader):
            batch = globalize(batch, r)
            skipped.extend(batch["skipped"])
            if not batch.num_images and not self.keep_empty:
                continue
            if self.dtype is not None and isinstance(batch["images"], torch.Tensor):
                batch["images"] = batch["images"].to(self.dtype)
            yield batch


def gather_states(miner: Any, env: DistEnv) -> None:
    r"""Gather every rank's streaming state on rank 0 and merge it into rank 0's miner.

    Collective: every rank must call it. Each rank's snapshot (a
    :class:`~captum_topk.core.result.TopKResult` payload: tensors and JSON text) travels as
    the accumulators' states do (:func:`~captum_topk.core.accumulators.base.gather_payloads`:
    ``torch.save`` bytes, ``torch.load(weights_only=True)``) and is merged in rank order.
    """
    if env.world <= 1:
        return
    payloads = gather_payloads(miner.snapshot().to_payload(), dst=0)
    if env.is_main:
        if payloads is None:
            raise RuntimeError("gather_states needs the process group started (init_distributed).")
        for payload in payloads[1:]:
            miner.merge(TopKResult.from_payload(payload))
