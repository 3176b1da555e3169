r"""The one loop that feeds a dataset to a miner: batches, progress, ``max_images``, snapshots.

:meth:`LayerTopKPatches.mine` and the run layer (:func:`captum_topk.runs.mine.mine_run`, used
by the CLI and the dashboard) both iterate through :func:`feed`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Union

from torch import Tensor
from tqdm.auto import tqdm

from ..capture.batch import cut_batch, split_batch

__all__ = ["feed", "count_images"]

Progress = Union[bool, Callable[[int, Optional[int]], None]]


def count_images(data: Any, max_images: Optional[int] = None) -> Optional[int]:
    r"""How many images a pass over ``data`` sees, when it can tell (a tensor's first dimension,
    a dataset's length, ``num_images``, a DataLoader's dataset length), at most ``max_images``;
    else None (a list or generator of batches)."""
    from torch.utils.data import Dataset

    if isinstance(data, Tensor):
        total: Optional[int] = int(data.shape[0])
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        total = len(data)
    elif getattr(data, "num_images", None) is not None:
        total = int(data.num_images)
    else:
        try:
            total = len(data.dataset)  # type: ignore[union-attr]
        except (AttributeError, TypeError):
            total = None
    if total is not None and max_images is not None:
        total = min(total, int(max_images))
    return total


def feed(
    miner: Any,
    data: Union[Iterable[Any], Tensor],
    *,
    additional_forward_args: Any = None,
    batch_size: int = 64,
    progress: Progress = True,
    max_images: Optional[int] = None,
    snapshot: Optional[Callable[[], None]] = None,
    snapshot_every: float = 60.0,
    should_stop: Optional[Callable[[], bool]] = None,
) -> int:
    r"""Push every batch of ``data`` into ``miner.update``.

    Args:
        miner: anything with ``update(batch, additional_forward_args)`` and ``n_images``.
        data: an iterable of batches (tensor, ``(images, labels[, ids])`` or dict), or one
            ``(N, C, H, W)`` tensor cut into ``batch_size`` chunks.
        additional_forward_args (Any, optional): passed to every ``update``.
        batch_size (int): chunk size when ``data`` is a tensor.
        progress (bool or callable): a tqdm bar (True), nothing (False), or a callback
            ``progress(done, total)`` after every batch (total may be None).
        max_images (int, optional): stop after this many images; the last batch is cut with
            its labels, ids and indices.
        snapshot (callable, optional): called every ``snapshot_every`` seconds (not at the
            end: the caller decides).
        should_stop (callable, optional): checked before each batch; True ends the loop early
            (a cancelled job).
    Returns:
        int: images fed by this call.
    """
    if isinstance(data, Tensor):
        data = [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
    classes = getattr(getattr(data, "dataset", data), "classes", None)
    if classes and hasattr(miner, "categories") and miner.categories is None:
        miner.categories = [str(c) for c in classes]  # the data's class names (label_histogram)
    total = count_images(data)
    if max_images is not None:
        total = min(total, max_images) if total is not None else max_images
    callback = progress if callable(progress) else None
    bar = tqdm(total=total, unit="img", desc="mining", disable=progress is not True, smoothing=0.1)
    last = time.monotonic()
    seen = 0
    try:
        for batch in data:
            if max_images is not None and seen >= max_images:
                break
            if should_stop is not None and should_stop():
                break
            if max_images is not None and split_batch(batch).images.shape[0] > max_images - seen:
                batch = cut_batch(batch, max_images - seen)
            before = miner.n_images + getattr(miner, "n_skipped", 0)
            miner.update(batch, additional_forward_args)
            done = miner.n_images + getattr(miner, "n_skipped", 0) - before  # skipped images count as gone through
            seen += done
            bar.update(done)
            if callback is not None:
                callback(seen, total)
            if snapshot is not None and time.monotonic() - last >= snapshot_every:
                snapshot()
                last = time.monotonic()
    finally:
        bar.close()
    return seen
