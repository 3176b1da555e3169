r"""Mining runs on disk: resumable mining jobs, reopening them, rendering their PNGs.

A run folder holds ``run.json`` (what was mined, how), ``snapshot.pt`` (the streaming
state, rewritten atomically every few seconds while mining) and ``result.pt`` (the final
:class:`~captum_topk.TopKResult`). ``resume=True`` continues from the snapshot with the same
batch boundaries, so an interrupted run (even ``kill -9``) ends with exactly the result of an
uninterrupted one. The CLI and the dashboard are thin layers over these functions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Tuple
import torch
import torch.distributed as dist
from torch import nn
from ..utils.files import atomic_write_text, file_digest
from .distributed import DistEnv, ShardLoader, batches_done, dist_env, gather_states, init_distributed, shard_batches
from ..core.miner import LayerTopKPatches
from ..models.info import ModelInfo, make_transform
from ..models.registry import load_model
from ..models.registry import DEFAULT_MODEL
from ..utils.files import PathLike
from .datasets import open_dataset







def _load(model: str, checkpoint: Optional[PathLike], input_size: Optional[int]) -> Tuple[nn.Module, ModelInfo]:
    net, info = load_model(model, checkpoint=str(checkpoint) if checkpoint else None)
    if input_size and tuple(info.input_size) != (input_size, input_size):
        info = replace(info, input_size=(input_size, input_size), resize_size=round(input_size / 0.875),
                       transform=make_transform(input_size, mean=info.mean, std=info.std))
    return net, info


def mine_run(
    model: str = DEFAULT_MODEL,
    checkpoint: Optional[PathLike] = None,
    layers: Sequence[str] = ("features.3",),
    data: Optional[PathLike] = None,
    out: PathLike = "results/run",
    k: int = 9,
    batch_size: int = 32,
    workers: int = 0,
    resume: bool = False,
    snapshot_every: float = 30.0,
    max_images: Optional[int] = None,
    distinct_images: bool = True,
    progress: bool = True,
    input_size: Optional[int] = None,
    device: str = "auto",
    half: bool = False,
    stats: bool = True,
) -> Optional[Path]:
    r"""Mine ``layers`` of ``model`` over ``data`` into the run folder ``out``.

    Args:
        model (str): a built-in (:func:`captum_topk.models.list_models`), torchvision arch
            (with ``checkpoint``) or checkpoint path.
        checkpoint (str, optional): weights, loaded with ``weights_only=True``.
        layers (list of str): dotted layer names.
        data (str, optional): image folder / ImageNet val folder; default packaged photos.
        out (str): run folder.
        k (int): records per channel.
        batch_size (int), workers (int): DataLoader settings.
        resume (bool): continue from ``out/snapshot.pt`` (same settings enforced).
        snapshot_every (float): seconds between atomic snapshots.
        max_images (int, optional): mine only the first images.
        distinct_images (bool): see :class:`~captum_topk.LayerTopKPatches`.
        progress (bool): tqdm bar with images/s.
        input_size (int, optional): crop size in px instead of the model's own.
        device (str): ``"auto"`` (this rank's GPU if any, else CPU), ``"cpu"``, ``"cuda"``.
        half (bool): run the model in float16 (GPU only); rankings are kept in float32.
        stats (bool): gather per-channel statistics in the same pass (histogram, mean,
            fraction > 0: ``result.stats(layer)``); a few percent of the mining time.
    Under ``torchrun`` each rank mines a disjoint shard of batches and rank 0 merges them
    (see :mod:`captum_topk.distributed`).
    Returns:
        Path: ``out/result.pt`` (None on ranks other than 0).
    """
    out = Path(out)
    net, info = _load(model, checkpoint, input_size)
    dataset, descriptor = open_dataset(data, info.transform)
    settings = {
        "model": model,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        # the bytes of the weights: a checkpoint given as --checkpoint or as --model file.pt
        "checkpoint_sha1": (file_digest(checkpoint) if checkpoint
                            else file_digest(model) if Path(str(model)).is_file() else None),
        "layers": list(layers),
        "data": descriptor,
        "k": k,
        "batch_size": batch_size,
        "distinct_images": distinct_images,
        "max_images": max_images,
        "input_size": list(info.input_size),
    }
    env = dist_env()
    dev = resolve_device(device, env)
    if half and dev.type != "cuda":
        raise ValueError("--half needs a GPU (half precision convolutions are slow or missing on CPU).")
    net = net.to(dev).half() if half else net.to(dev)
    started = init_distributed(env, dev)
    settings.update(world_size=env.world, half=bool(half))
    settings["stats"] = bool(stats)
    miner = LayerTopKPatches(net, list(layers), k=k, distinct_images=distinct_images, stats=bool(stats))
    snapshot = out / ("snapshot.pt" if env.world == 1 else f"snapshot.rank{env.rank}-of-{env.world}.pt")
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    ranges = shard_batches(total, batch_size, env.rank, env.world)
    if resume and snapshot.exists():
        previous = json.loads((out / "run.json").read_text())
        differ = {key: (previous.get(key), v) for key, v in settings.items() if previous.get(key) != v
                  and not (key == "checkpoint_sha1" and key not in previous)}  # runs older than the digest
        if differ:
            raise ValueError(f"--resume with different settings than the interrupted run: {differ}")
        miner.load_state(snapshot)
        ranges = ranges[batches_done(ranges, miner.n_images):]
    if env.is_main:
        atomic_write_text(out / "run.json", json.dumps(
            {**settings, "n_total": total, "skipped": [list(s) for s in getattr(dataset, "skipped", [])]},
            indent=2))
    loader = ShardLoader(dataset, ranges, workers=workers, pin_memory=dev.type == "cuda",
                         dtype=torch.float16 if half else None)
    throttle = float(os.environ.get("CAPTUM_TOPK_THROTTLE_S", "0") or 0)
    if throttle > 0:  # a testing aid: slow batches down so that a kill lands mid-run
        loader = _Throttled(loader, throttle)
    try:
        miner.mine(loader, progress=progress and env.is_main, reset=False,
                   snapshot_path=snapshot, snapshot_every=snapshot_every, finalize=False)
        gather_states(miner, env)
        if not env.is_main:
            return None
        result = miner.compute()
    finally:
        if started:
            dist.destroy_process_group()
    result.metadata.update(
        model_name=model,
        checkpoint=settings["checkpoint"],
        data=descriptor,
        mean=list(info.mean),
        std=list(info.std),
        input_size=list(info.input_size),
        categories=info.categories,
        skipped=[list(s) for s in getattr(dataset, "skipped", [])],
    )
    result.save(out / "result.pt")
    return out / "result.pt"


class _Throttled:
    def __init__(self, loader: ShardLoader, seconds: float) -> None:
        self.loader, self.seconds, self.num_images = loader, seconds, loader.num_images

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.seconds)
            yield batch


def resolve_device(device: str, env: Optional[DistEnv] = None) -> torch.device:
    r"""``"auto"``: this rank's GPU when CUDA is available, else the CPU."""
    env = env or dist_env()
    if device == "auto":
        return torch.device(f"cuda:{env.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but no GPU is available; use --device cpu.")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{env.local_rank}")
    return dev
