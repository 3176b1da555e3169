r"""Mining runs on disk: resumable mining jobs, reopening them, rendering their PNGs.

A run folder holds ``run.json`` (what was mined, how), ``snapshot.pt`` (the streaming
state, rewritten atomically every few seconds while mining) and ``result.pt`` (the final
:class:`~captum_topk.TopKResult`). ``resume=True`` continues from the snapshot with the same
batch boundaries, so an interrupted run (even ``kill -9``) ends with exactly the result of an
uninterrupted one. The CLI and the dashboard are thin layers over these functions.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._io import atomic_write_text, file_digest
from ._layout import ChannelsLastError
from ._layers import resolve_layers, run_capture
from .data import demo_images, image_folder, imagenet_val
from .filters import filter_grid
from .distributed import (
    DistEnv,
    ShardLoader,
    batches_done,
    dist_env,
    gather_states,
    init_distributed,
    shard_batches,
)
from .layer_topk import LayerTopKPatches
from .models import ModelInfo, load_model, make_transform
from .plot import channel_sheet, patch_grid, projection_sheet, save_png
from .receptive_field import receptive_fields
from .result import TopKResult

DEFAULT_MODEL = "mobilenet_v2-imagenet"
PathLike = Union[str, os.PathLike]


def _load(model: str, checkpoint: Optional[PathLike], input_size: Optional[int]) -> Tuple[nn.Module, ModelInfo]:
    net, info = load_model(model, checkpoint=str(checkpoint) if checkpoint else None)
    if input_size and tuple(info.input_size) != (input_size, input_size):
        info = replace(info, input_size=(input_size, input_size), resize_size=round(input_size / 0.875),
                       transform=make_transform(input_size, mean=info.mean, std=info.std))
    return net, info


def open_dataset(data: Optional[PathLike], transform: Optional[Callable]):
    r"""The dataset a run mines: packaged photos (``None``), an ImageNet val folder
    (``ILSVRC2012_val_*.JPEG`` files) or any image folder.

    Returns:
        (dataset, descriptor): ``descriptor`` is JSON-able and reopens the same dataset.
    """
    if data is None or str(data) == "demo":
        return demo_images(transform=transform), {"kind": "demo"}
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {root} does not exist (or is not a folder).")
    if any(p.name.upper().startswith("ILSVRC2012_VAL_") for p in root.iterdir()):
        return imagenet_val(root, transform=transform), {"kind": "imagenet_val", "root": str(root.resolve())}
    return image_folder(root, transform=transform), {"kind": "folder", "root": str(root.resolve())}


def _reopen(descriptor: Dict[str, Any], transform: Optional[Callable]):
    kind = descriptor.get("kind")
    if kind == "demo":
        return demo_images(transform=transform)
    if kind == "imagenet_val":
        return imagenet_val(descriptor["root"], transform=transform)
    return image_folder(descriptor["root"], transform=transform)


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


@dataclass
class Run:
    r"""A finished run reopened from disk: the result plus what is needed to re-crop patches."""

    path: Path
    result: TopKResult
    info: ModelInfo
    dataset: Any
    _source: Optional[Callable[[int], Tensor]] = field(default=None, repr=False)

    def image_source(self) -> Callable[[int], Tensor]:
        r"""``index -> model-input tensor``, found by image id (no pass over the dataset).

        Decoded images are kept in a small LRU cache, since one image often holds the
        top patches of many channels."""
        if self._source is None:
            images = self.result.images

            @functools.lru_cache(maxsize=256)
            def fetch(index: int) -> Tensor:
                image_id = images[index].get("id")
                pos = self.dataset.index_of(image_id) if image_id is not None else index
                return self.dataset[pos][0]

            self._source = fetch
        return self._source

    def patches(self, layer: str, channel: int, which: str = "top", n: Optional[int] = None) -> Tensor:
        return self.result.patches(self.image_source(), layer, channel, which, n=n)


def load_run(path: PathLike) -> Run:
    r"""Reopen a run folder (or its ``result.pt``) written by :func:`mine_run`."""
    path = Path(path)
    result_path = path / "result.pt" if path.is_dir() else path
    if not result_path.exists():
        raise FileNotFoundError(f"No result at {result_path}: run `captum-topk mine --out {path}` first.")
    result = TopKResult.load(result_path)
    meta = result.metadata
    size = meta.get("input_size")
    _, info = _load(meta.get("model_name", DEFAULT_MODEL), meta.get("checkpoint"), size[0] if size else None)
    dataset = _reopen(meta.get("data", {"kind": "demo"}), info.transform)
    return Run(result_path.parent, result, info, dataset)


def render_run(
    run: Run,
    layers: Optional[Sequence[str]] = None,
    channels: Optional[Sequence[int]] = None,
    which: str = "top",
    out_dir: Optional[PathLike] = None,
    max_channels: int = 16,
    patch_px: int = 96,
) -> List[Path]:
    r"""Write, per layer, ``<layer>_<which>9.png`` (top-9 sheets of several channels, the
    activation under each patch) and ``<layer>_<which>1.png`` (top-1 patch of many channels).

    Patches whose receptive field is larger than ``patch_px`` are shown downscaled to it."""
    out_dir = Path(out_dir) if out_dir else run.path
    mean, std = run.info.mean, run.info.std
    written = []
    for layer in layers or run.result.layers:
        n = run.result.num_channels(layer)
        chosen = list(channels) if channels else list(range(min(n, max_channels)))
        sets, values = {}, {}
        for c in chosen:
            recs = run.result.records(layer, c, which)
            if recs:
                sets[c] = _fit(run.patches(layer, c, which), patch_px)
                values[c] = [r.value for r in recs]
        side = max((p.shape[-1] for p in sets.values()), default=patch_px)
        k = run.result.k
        sheet = channel_sheet(sets, values, mean=mean, std=std, scale=max(1, patch_px // side),
                              title=f"{layer}: {which}-{k} patches")
        written.append(save_png(sheet, out_dir / f"{_slug(layer)}_{which}{k}.png"))
        firsts = [c for c in range(min(n, 64)) if run.result.records(layer, c, which)]
        tops = _fit(torch.stack([run.patches(layer, c, which, n=1)[0] for c in firsts]), patch_px * 2 // 3)
        top_vals = [run.result.records(layer, c, which)[0].value for c in firsts]
        grid = patch_grid(tops, values=top_vals, ncols=8, mean=mean, std=std,
                          scale=max(1, (patch_px * 2 // 3) // tops.shape[-1]),
                          title=f"{layer}: {which}-1 patch of channels 0-{firsts[-1]}")
        written.append(save_png(grid, out_dir / f"{_slug(layer)}_{which}1.png"))
    return written


def render_projections(
    run: Run,
    method: str = "deconvolution",
    layers: Optional[Sequence[str]] = None,
    channels: Optional[Sequence[int]] = None,
    which: str = "top",
    out_dir: Optional[PathLike] = None,
    max_channels: int = 8,
    patch_px: int = 96,
    model: Optional[nn.Module] = None,
    progress: bool = True,
) -> List[Path]:
    r"""Write, per layer, ``<layer>_<which><k>_<method>.png``: each channel's top-k patches
    beside their projections (Zeiler & Fergus, Fig. 2), see
    :func:`captum_topk.projections.projections` and :func:`captum_topk.plot.projection_sheet`.

    Args:
        run (Run): from :func:`load_run`.
        method (str): ``"deconvolution"`` or ``"guided_backprop"`` (or ``"gradient"``).
        layers, channels, which, out_dir: as in :func:`render_run`.
        max_channels (int): channels per sheet when ``channels`` is not given. Default 8.
        patch_px (int): longest side of patches and projections (downscaled beyond it).
        model (nn.Module, optional): the mined model; default: reloaded from the run.
        progress (bool): tqdm bar over the channels.
    Returns:
        list of Path: the PNGs written.
    """
    from tqdm.auto import tqdm

    from .projections import symmetric_rgb

    out_dir = Path(out_dir) if out_dir else run.path
    if model is None:
        meta = run.result.metadata
        model, _ = _load(meta.get("model_name", DEFAULT_MODEL), meta.get("checkpoint"),
                         run.info.input_size[0])
    model.eval()
    written = []
    for layer in layers or run.result.layers:
        n = run.result.num_channels(layer)
        chosen = list(channels) if channels else list(range(min(n, max_channels)))
        pairs, values = {}, {}
        for c in tqdm(chosen, desc=f"{method} {layer}", disable=not progress):
            if not run.result.records(layer, c, which):
                continue
            proj = run.result.projections(run.image_source(), layer, c, method, model=model,
                                          which=which, progress=False)
            patches = _fit(run.patches(layer, c, which), patch_px)
            rgb, _ = symmetric_rgb(_fit(proj.attributions, patch_px))
            pairs[c] = (patches, rgb)
            values[c] = [r.value for r in proj.records]
        if not pairs:
            continue
        side = max(p.shape[-1] for p, _ in pairs.values())
        k = run.result.k
        sheet = projection_sheet(pairs, values, mean=run.info.mean, std=run.info.std,
                                 scale=max(1, patch_px // side), method=method.replace("_", " "),
                                 title=f"{layer}: {which}-{k} patches | {method.replace('_', ' ')} projections")
        written.append(save_png(sheet, out_dir / f"{_slug(layer)}_{which}{k}_{method}.png"))
    return written


def _fit(patches: Tensor, side: int) -> Tensor:
    r"""Downscale (k, C, h, w) patches so that their longer side is at most ``side``."""
    h, w = patches.shape[-2:]
    if max(h, w) <= side:
        return patches
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(patches, size=size, mode="bilinear", antialias=True,
                                           align_corners=False)


def _slug(name: str) -> str:
    return name.replace(".", "_").replace("/", "_") or "input"


def _first_conv(model: nn.Module) -> Tuple[str, nn.Module]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError("The model has no nn.Conv2d: pass --layer with a layer that has a .weight.")


def render_filters(model: str = DEFAULT_MODEL, checkpoint: Optional[PathLike] = None,
                   layer: Optional[str] = None, out: PathLike = "filters.png") -> Path:
    r"""Write the filter tiles of ``layer`` (default: the first convolution) to ``out``."""
    net, _ = load_model(model, checkpoint=str(checkpoint) if checkpoint else None)
    module = resolve_layers(net, layer)[0][1] if layer else _first_conv(net)[1]
    return save_png(filter_grid(module, scale=12, pad=2, pad_value=255), out)


def describe_layers(model: str = DEFAULT_MODEL, checkpoint: Optional[PathLike] = None,
                    input_size: Optional[int] = None, all_modules: bool = False) -> List[Dict[str, Any]]:
    r"""Every minable layer with its output shape, stride and receptive-field size.

    Returns:
        list of dict: keys ``layer``, ``type``, ``output`` (C x H x W), ``stride``, ``rf``.
    """
    net, info = load_model(model, checkpoint=str(checkpoint) if checkpoint else None)
    size = (input_size, input_size) if input_size else tuple(info.input_size)
    named = [(n, m) for n, m in net.named_modules() if n]
    with torch.no_grad():
        outs = run_capture(net, [m for _, m in named], torch.zeros(1, 3, *size),
                           stop_early=False, raw=True)
    shapes = {n: (tuple(o.shape[1:]) if isinstance(o, Tensor) else None) for (n, _), o in zip(named, outs)}
    spatial = [n for n, s in shapes.items() if s is not None and len(s) == 3]
    channels_last: List[str] = []
    try:
        rfs = receptive_fields(net, spatial, size) if spatial else {}
    except ChannelsLastError as exc:  # list them as such; measure the others
        channels_last = exc.layers
        spatial = [n for n in spatial if n not in channels_last]
        rfs = receptive_fields(net, spatial, size) if spatial else {}
    rows = []
    for n, m in named:
        s = shapes[n]
        minable = s is not None and len(s) in (1, 3) and n not in channels_last
        if not all_modules and (not minable or n.count(".") > 1):
            continue  # default: blocks (depth <= 2); --all lists every module
        rf = rfs.get(n)
        rows.append({
            "layer": n,
            "type": m.__class__.__name__,
            "output": "x".join(map(str, s)) if s is not None else "(not one tensor)",
            "stride": f"{rf.stride[0]}x{rf.stride[1]}" if rf else "-",
            "rf": (f"{rf.size[0]}x{rf.size[1]}" + (" (clipped: >= image)" if tuple(rf.size) == tuple(size) else "")
                   if rf else ("whole image" if s and len(s) == 1
                               else "channels-last: not minable" if n in channels_last else "-")),
        })
    return rows
