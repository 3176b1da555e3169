r"""Mining runs on disk: the one run function of the CLI and the dashboard.

A run folder holds ``run.json`` (the resolved :class:`~captum_topk.runs.spec.RunSpec`, status,
skipped files, timings), ``snapshot.pt`` (the streaming state, rewritten atomically every few
seconds while mining) and ``result.pt`` (the final :class:`~captum_topk.TopKResult`). While it
is mined the folder is locked (:class:`~captum_topk.runs.lock.RunLock`): a second writer is
refused with the name of the first. ``resume=True`` continues from the snapshot with the same
batch boundaries, so an interrupted run (even ``kill -9``) ends with exactly the result of an
uninterrupted one, and only when the resolved spec is unchanged (same weights bytes, same image
files). Under ``torchrun`` each rank mines a disjoint shard of batches and rank 0 merges them
(:mod:`captum_topk.runs.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.distributed as dist

from .._version import __version__
from ..core.loop import feed
from ..core.miner import LayerTopKPatches
from ..core.accumulators.stats import default_edges
from ..models.ecosystem import parse_model_spec
from ..models.registry import DEFAULT_MODEL
from ..utils.files import PathLike, atomic_write_text
from ..data.descriptor import open_dataset
from .distributed import DistEnv, ShardLoader, batches_done, dist_env, gather_states, init_distributed, shard_batches
from .backend import choose_backend
from .layers import suggest_layers
from .lock import RunLock
from .models import load_run_model, onnx_model_info
from .spec import RUN_FORMAT, RunSpec, absolute_model

__all__ = ["mine_run", "find_run", "default_layers", "load_concepts", "with_concept_layers", "resolve_device", "read_run_json", "Progress", "notify"]

#: ``progress(phase, done, total)``: phases ``"loading"``, ``"mining"`` (images done / total after
#: every batch), ``"saving"``, ``"done"``.
Progress = Optional[Callable[[str, int, Optional[int]], None]]


def read_run_json(folder: PathLike) -> Optional[Dict[str, Any]]:
    r"""A run folder's ``run.json`` as a dict, or None when missing or unreadable."""
    try:
        info = json.loads((Path(folder) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _recorded_spec(info: Optional[Dict[str, Any]]) -> Optional[RunSpec]:
    if not info or not isinstance(info.get("spec"), dict):
        return None
    try:
        return RunSpec.from_dict(info["spec"])
    except (TypeError, ValueError):
        return None


def find_run(spec: RunSpec, folder: PathLike) -> Optional[Path]:
    r"""``folder`` when it holds a finished run of exactly the resolved ``spec`` (same weights
    bytes, same image files), else None."""
    folder = Path(folder)
    info = read_run_json(folder)
    done = _recorded_spec(info)
    if (folder / "result.pt").is_file() and info and info.get("status") == "done" and done == spec:
        return folder
    return None


def notify(progress: Progress, phase: str, done: int, total: Optional[int]) -> None:
    r"""Call ``progress(phase, done, total)`` when there is a callback."""
    if progress is not None:
        progress(phase, done, total)


def mine_run(
    spec: Optional[RunSpec] = None,
    out: PathLike = "results/run",
    *,
    resume: bool = False,
    reuse: bool = False,
    workers: int = 0,
    device: str = "auto",
    snapshot_every: float = 30.0,
    progress: Union[bool, Progress] = True,
    should_stop: Optional[Callable[[], bool]] = None,
    onnx_root: Optional[PathLike] = None,
    **settings: Any,
) -> Optional[Path]:
    r"""Mine a :class:`RunSpec` into the run folder ``out``.

    Args:
        spec (RunSpec, optional): what to mine; or give its fields as keywords
            (``model=``, ``checkpoint=``, ``layers=``, ``data=``, ``k=``, ``batch_size=``,
            ``max_images=``, ``input_size=``, ``distinct_images=``, ``stats=`` (bool),
            ``half=``, ``onnx=``).
        out (str): the run folder.
        resume (bool): continue from ``out/snapshot.pt`` (refused, with the reason, when the
            resolved spec differs: other settings, other weights bytes, other image files).
        reuse (bool): return a finished run of the same resolved spec without mining.
        workers (int): DataLoader worker processes.
        device (str): ``"auto"`` (this rank's GPU if any, else CPU), ``"cpu"``, ``"cuda"``.
        snapshot_every (float): seconds between atomic snapshots.
        progress (bool or callable): a tqdm bar, or ``progress(phase, done, total)``.
        should_stop (callable, optional): checked before each batch; True stops the run early,
            leaving its snapshot (a cancelled dashboard job; ``resume=True`` continues it).
        onnx_root (str, optional): where ``backend="auto"`` / ``"onnxruntime"`` caches the
            export of a PyTorch model (default :func:`~captum_topk.runs.backend.onnx_root`).
    Returns:
        Path: ``out/result.pt`` (None on ranks other than 0, and when stopped early).
    Raises:
        RunLockedError: another live process is mining into ``out``.
        ValueError / FileNotFoundError: a model, checkpoint, layer or folder that cannot be used.
    Example::
        >>> mine_run(RunSpec(layers=("features.7",)), "results/mnv2", progress=False)
        PosixPath('results/mnv2/result.pt')
    """
    spec = _spec_from(spec, settings)
    if not spec.layers:
        spec = dataclasses.replace(spec, layers=tuple(default_layers(spec)))
    spec = with_concept_layers(spec)
    out = Path(out)
    callback = progress if callable(progress) else None
    env = dist_env()
    spec = dataclasses.replace(spec, world_size=env.world).resolve()
    dev = resolve_device(device, env)
    lock_name = ".lock" if env.world == 1 else f".lock.rank{env.rank}-of-{env.world}"
    with RunLock(out, lock_name):
        engines = [spec.backend] if spec.backend != "auto" else (["torch"] if spec.rank_by else ["onnxruntime", "torch"])
        if reuse and env.world == 1 and any(find_run(dataclasses.replace(spec, backend=e), out) for e in engines):
            notify(callback, "done", 1, 1)
            return out / "result.pt"
        notify(callback, "loading", 0, None)
        spec, onnx_file, why = choose_backend(spec, dev, onnx_root, progress=progress is True and env.is_main)
        return _mine_locked(spec, out, env, resume, workers, dev, snapshot_every,
                            progress is True, callback, should_stop, onnx_file, why)


def _spec_from(spec: Optional[RunSpec], settings: Dict[str, Any]) -> RunSpec:
    if spec is not None:
        if settings:
            raise TypeError(f"Give either a RunSpec or its fields, not both ({sorted(settings)}).")
        return spec
    s = dict(settings)
    stats = s.pop("stats", True)
    s.setdefault("stats_bins", 64 if stats else 0)
    if s.get("model") and parse_model_spec(str(s["model"])).kind == "onnx" and not s.get("onnx"):
        s["onnx"], s["model"] = s["model"], ""  # an ONNX file given as the model
    elif s.get("model"):
        s["model"] = absolute_model(str(s["model"]))
    if s.get("checkpoint"):
        s["checkpoint"] = str(Path(s["checkpoint"]).resolve())
    if s.get("onnx"):
        s["onnx"] = str(Path(s["onnx"]).resolve())
    s["concepts"] = tuple(str(Path(c).resolve()) for c in s.get("concepts") or ())
    if s.get("data") is not None and str(s["data"]) != "demo":
        s["data"] = str(Path(s["data"]).resolve())
    elif "data" in s:
        s["data"] = None
    s["layers"] = tuple(s.get("layers") or ())
    if s.get("model") is None:
        s["model"] = "" if s.get("onnx") else DEFAULT_MODEL
    return RunSpec(**s)


def default_layers(spec: RunSpec) -> List[str]:
    r"""The layers a spec without layers mines: an ONNX export's layers, else
    :func:`~captum_topk.runs.layers.suggest_layers` of the model's module names."""
    if spec.onnx:
        from ..onnx.sidecar import load_sidecar

        sc = load_sidecar(spec.onnx)
        if sc is None or not sc.layers:
            raise ValueError(f"{Path(spec.onnx).name} has no export sidecar listing its layers: pass --layers "
                             "(see `captum-topk layers MODEL.onnx`).")
        return list(sc.layers)
    net, _ = load_run_model(spec.model, spec.checkpoint, random_init=spec.random_init)
    return suggest_layers([n for n, _ in net.named_modules() if n], model=net)


def load_concepts(spec: RunSpec) -> List[Any]:
    r"""The :class:`~captum_topk.concepts.Concepts` of a spec's concept files, in order; when the
    spec is resolved, each file must still have the recorded SHA-1."""
    from ..concepts.base import Concepts
    from ..utils.files import file_digest

    out = []
    for i, path in enumerate(spec.concepts):
        if not Path(path).is_file():
            raise FileNotFoundError(f"Concepts file {path} not found (save concepts with Concepts.save or "
                                    "`captum-topk concepts learn`).")
        if spec.concepts_sha1 and i < len(spec.concepts_sha1) and file_digest(path) != spec.concepts_sha1[i]:
            raise ValueError(f"The concepts file {path} changed since the run was set up (same name, other bytes).")
        out.append(Concepts.load(path))
    return out


def with_concept_layers(spec: RunSpec) -> RunSpec:
    r"""``spec`` with the layers its concept files live in added to ``layers`` (when missing)."""
    if not spec.concepts:
        return spec
    from ..core.sources.layouts import base_layer

    missing = []
    for c in load_concepts(dataclasses.replace(spec, concepts_sha1=())):
        layer = base_layer(c.layer)
        if layer not in spec.layers and layer not in missing:
            missing.append(layer)
    return dataclasses.replace(spec, layers=spec.layers + tuple(missing)) if missing else spec


def _rank_by_class(name: str) -> Any:
    r"""A Captum layer attribution class by name (``"gxa"`` / ``"lrp"`` / ``"ig"`` or the class name)."""
    import captum.attr as attr

    short = {"gxa": "LayerGradientXActivation", "lrp": "LayerLRP", "ig": "LayerIntegratedGradients"}
    cls = getattr(attr, short.get(name.lower(), name), None)
    if not (isinstance(cls, type) and cls.__name__.startswith("Layer") and hasattr(cls, "attribute")):
        raise ValueError(f"rank_by {name!r} is not a Captum layer attribution (e.g. gxa, lrp, ig, "
                         "LayerGradientXActivation, LayerLRP).")
    return cls


def _target(value: Optional[str]) -> Any:
    if value is None or value in ("label", "predicted"):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"target must be 'label', 'predicted' or a class index, got {value!r}.") from None


def _miner_for(spec: RunSpec, dev: torch.device, onnx_file: Optional[Path] = None):
    r"""The miner and the model's preprocessing of a spec (``onnx_file``: the export ONNX
    Runtime mines for a PyTorch model)."""
    edges = default_edges(spec.stats_bins) if spec.stats_bins else False
    if spec.onnx or onnx_file is not None:
        from ..onnx.miner import OnnxTopKPatches

        path = spec.onnx or str(onnx_file)
        info = onnx_model_info(path, spec.input_size)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if dev.type == "cuda" else ["CPUExecutionProvider"]
        miner = OnnxTopKPatches(path, list(spec.layers), k=spec.k, distinct_images=spec.distinct_images,
                                stats=edges, providers=providers, layout=spec.layout, token_grid=spec.token_grid,
                                prefix_tokens=spec.prefix_tokens, concepts=load_concepts(spec) or None)
        return miner, info
    net, info = load_run_model(spec.model, spec.checkpoint, spec.input_size, spec.random_init)
    net = net.to(dev).half() if spec.half else net.to(dev)
    ranking = dict(rank_by=_rank_by_class(spec.rank_by), target=_target(spec.target)) if spec.rank_by else {}
    miner = LayerTopKPatches(net.eval(), list(spec.layers), k=spec.k, distinct_images=spec.distinct_images,
                             stats=edges, layout=spec.layout, token_grid=spec.token_grid,
                             prefix_tokens=spec.prefix_tokens, concepts=load_concepts(spec) or None, **ranking)
    return miner, info


def _mine_locked(spec: RunSpec, out: Path, env: DistEnv, resume: bool, workers: int, dev: torch.device,
                 snapshot_every: float, bar: bool, callback: Progress,
                 should_stop: Optional[Callable[[], bool]], onnx_file: Optional[Path], why: str) -> Optional[Path]:
    if not spec.layers:
        raise ValueError("Pick at least one layer to mine (see `captum-topk layers MODEL`).")
    if spec.half and dev.type != "cuda":
        raise ValueError("--half needs a GPU (half precision convolutions are slow or missing on CPU).")
    miner, info = _miner_for(spec, dev, onnx_file)
    dataset, descriptor = open_dataset(spec.data, info.transform)
    total = len(dataset) if spec.max_images is None else min(len(dataset), spec.max_images)
    if total == 0:
        raise ValueError(f"No readable image in {spec.data or 'the packaged photos'}.")
    ranges = shard_batches(total, spec.batch_size, env.rank, env.world)
    snapshot = out / ("snapshot.pt" if env.world == 1 else f"snapshot.rank{env.rank}-of-{env.world}.pt")
    previous = read_run_json(out)
    if resume and snapshot.exists():
        before = _recorded_spec(previous)
        if before is None:
            raise ValueError(f"--resume: {out}/run.json does not say what was mined; mine again without --resume.")
        if before != spec:
            raise ValueError(f"--resume refused: {before.explain(spec)}. Mine again without --resume "
                             "(or into another folder).")
        miner.load_state(snapshot)
        ranges = ranges[batches_done(ranges, miner.n_images + miner.n_skipped):]
    started = init_distributed(env, dev)
    record: Dict[str, Any] = {
        "format": RUN_FORMAT, "spec": spec.to_dict(), "status": "running", "data": descriptor,
        "backend": spec.backend, "backend_reason": why, "onnx_export": str(onnx_file) if onnx_file else None,
        "n_total": total, "input_size": list(info.input_size),
        "skipped": [list(s) for s in getattr(dataset, "skipped", [])],
        "started": time.time(), "captum_topk_version": __version__,
    }
    if env.is_main:
        atomic_write_text(out / "run.json", json.dumps(record, indent=2))
    loader = ShardLoader(dataset, ranges, workers=workers, pin_memory=dev.type == "cuda",
                         dtype=torch.float16 if spec.half else None, keep_empty=True)
    throttle = float(os.environ.get("CAPTUM_TOPK_THROTTLE_S", "0") or 0)
    if throttle > 0:  # a testing aid: slow batches down so that a kill lands mid-run
        loader = _Throttled(loader, throttle)
    done_before = miner.n_images + miner.n_skipped
    if callback is not None:
        notify(callback, "mining", done_before, total)
    t0 = time.monotonic()
    try:
        feed(miner, loader, progress=(lambda d, t: callback("mining", done_before + d, total)) if callback
             else (bar and env.is_main), snapshot=lambda: miner.save_state(snapshot),
             snapshot_every=snapshot_every, should_stop=should_stop)
        if miner.n_images or miner.n_skipped:
            miner.save_state(snapshot)
        if should_stop is not None and should_stop():
            if env.is_main:
                record.update(status="stopped", images_done=miner.n_images)
                atomic_write_text(out / "run.json", json.dumps(record, indent=2))
            return None
        gather_states(miner, env)
        if not env.is_main:
            return None
        notify(callback, "saving", total, total)
        result = miner.compute()
    finally:
        if started:
            dist.destroy_process_group()
    load_skipped = [list(s) for s in result.metadata.get("skipped", [])]  # [source, reason, index, id]
    result.metadata.update(
        model_name=spec.model, checkpoint=spec.checkpoint, onnx_path=spec.onnx or (str(onnx_file) if onnx_file else None),
        torch_model=not spec.onnx, data=descriptor,
        random_init=spec.random_init,
        mean=list(info.mean), std=list(info.std), input_size=list(info.input_size),
        categories=info.categories, skipped=record["skipped"] + load_skipped, skipped_at_load=len(load_skipped),
        backend=spec.backend,
        spec=spec.to_dict(),
    )
    result.save(out / "result.pt")
    record.update(status="done", finished=time.time(), seconds=round(time.monotonic() - t0, 3),
                  skipped=record["skipped"] + load_skipped, skipped_at_load=len(load_skipped),
                  provider=result.metadata.get("provider"))
    atomic_write_text(out / "run.json", json.dumps(record, indent=2))
    stale = out / "embeddings"  # cached from whatever this folder held before
    if stale.is_dir():
        shutil.rmtree(stale, ignore_errors=True)
    notify(callback, "done", total, total)
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
