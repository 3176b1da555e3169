r"""Run folders on disk: listing them (:func:`list_runs`) and reopening one (:func:`open_run`)
with its result, the model's preprocessing, the images (to re-crop patches) and, lazily, the
PyTorch model. One format for the runs of the CLI and of the dashboard."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from torch import Tensor, nn

from ..core.result import TopKResult
from ..models.info import ModelInfo, make_transform
from ..models.registry import DEFAULT_MODEL
from ..utils.files import PathLike, file_digest, walk
from ..data.descriptor import data_fingerprint, reopen_dataset
from .mine import read_run_json
from .models import load_run_model, onnx_model_info
from .spec import RunSpec

__all__ = ["Run", "open_run", "RunEntry", "list_runs", "data_label"]


def data_label(desc: Any) -> str:
    r"""A short name of a data descriptor: ``"packaged photos"`` or the folder's name."""
    if not isinstance(desc, dict):
        return "?"
    if desc.get("kind") == "demo":
        return "packaged photos"
    return Path(str(desc.get("root", "?"))).name or "?"


@dataclass
class Run:
    r"""A run reopened from disk.

    Attributes:
        path (Path): the run folder.
        result (TopKResult): the mined records.
        info (ModelInfo): preprocessing (``mean``, ``std``, ``input_size``, ``categories``).
        dataset: the images the run mined (reopened without decoding them; model-input
            transform applied).
        backend (str): ``"torch"`` or ``"onnxruntime"``.
        settings (dict): the run's ``run.json`` (empty for a bare ``result.pt``).
        spec (RunSpec or None): what was mined (None for a ``run.json`` without a ``spec``,
            whose settings are flat keys).
        stale_data (str or None): why the images may differ from those mined (files changed
            since): patches are then cropped from the current files.
    """

    path: Path
    result: TopKResult
    info: ModelInfo
    dataset: Any
    backend: str = "torch"
    settings: Dict[str, Any] = field(default_factory=dict)
    spec: Optional[RunSpec] = None
    stale_data: Optional[str] = None
    _source: Optional[Callable[[int], Tensor]] = field(default=None, repr=False)
    _model: Optional[nn.Module] = field(default=None, repr=False)
    _concepts: Optional[List[Any]] = field(default=None, repr=False)
    _onnx_source: Optional[Any] = field(default=None, repr=False)

    # ------------------------------------------------------------------ images
    def image_source(self) -> Callable[[int], Tensor]:
        r"""``record.index -> (C, H, W)`` model input, found by image id (no pass over the
        dataset). Decoded images are kept in a small LRU cache, since one image often holds
        the top patches of many channels."""
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
        r"""``(n, C, h, w)`` receptive-field crops of a channel's records."""
        return self.result.patches(self.image_source(), layer, channel, which, n=n)

    # ------------------------------------------------------------------ model
    @property
    def has_torch_model(self) -> bool:
        r"""Whether the run's PyTorch model can be loaded (False for a run of a user's ONNX file)."""
        return bool(self.result.metadata.get("torch_model", self.backend != "onnxruntime"))

    @property
    def model(self) -> Optional[nn.Module]:
        r"""The PyTorch model (loaded on first use, in eval mode; also for runs ONNX Runtime mined
        from an export of it); None for a run of a user's ONNX file."""
        if self._model is None and self.has_torch_model:
            meta = self.result.metadata
            self._model, _ = load_run_model(str(meta.get("model_name") or DEFAULT_MODEL), meta.get("checkpoint"),
                                            self.info.input_size[0], bool(meta.get("random_init")))
            self._model.eval()
        return self._model

    @property
    def concepts(self) -> List[Any]:
        r"""The :class:`~captum_topk.concepts.Concepts` the run mined beside the channels (loaded
        from the spec's files on first use; a file changed since is refused)."""
        if self._concepts is None:
            from .mine import load_concepts

            self._concepts = load_concepts(self.spec) if self.spec is not None and self.spec.concepts else []
        return self._concepts

    def activation_source(self, layers: Optional[List[str]] = None) -> Any:
        r"""What computes the activation maps of this run's layers: the PyTorch model, or, for a
        run of an ONNX file, an :class:`~captum_topk.onnx.source.OnnxSource` over that file
        (ONNX Runtime) with the layouts the run recorded.

        Args:
            layers (list of str, optional): the mined layers needed (default: all).
        Returns:
            nn.Module or OnnxSource: for :func:`~captum_topk.core.activation_maps.activation_maps`.
        Raises:
            ValueError: a run of an ONNX file that is no longer there.
        """
        if self.has_torch_model:
            return self.model
        from ..core.sources.layouts import base_layer

        bases = list(dict.fromkeys(base_layer(n) for n in (layers or self.result.layers)))
        key = tuple(bases)
        if self._onnx_source is None or self._onnx_source[0] != key:
            path = self.result.metadata.get("onnx_path") or (self.spec.onnx if self.spec else None)
            if not path or not Path(str(path)).is_file():
                raise ValueError(f"Activation maps of this run need its ONNX file, which is gone: {path}.")
            from ..onnx.source import OnnxSource

            layout = {b: str(self.result.layer_info.get(b, {}).get("layout", "auto")) for b in bases}
            spec = self.spec
            self._onnx_source = (key, OnnxSource(str(path), bases, layout=layout, progress=False,
                                                 token_grid=spec.token_grid if spec else None,
                                                 prefix_tokens=spec.prefix_tokens if spec else None))
        return self._onnx_source[1]

    def maps_model(self, layer: str) -> Any:
        r"""What computes ``layer``'s activation maps: :meth:`activation_source` (the PyTorch model,
        or ONNX Runtime for a run of an ONNX file); for a concept layer (``"<layer>:<name>"``) that
        source's activations encoded with the run's concepts.

        Raises:
            ValueError: the run's ONNX file is gone, or its concepts files changed.
        """
        concept = self.result.concept(layer)
        source = self.activation_source([concept["layer"] if concept else layer])
        if not concept:
            return source
        from ..core.activation_maps import maps_source
        from ..core.sources.base import ActivationSource
        from ..core.sources.concepts import ConceptSource, find_concepts

        if isinstance(source, ActivationSource):  # ONNX Runtime: its base layer, encoded
            return ConceptSource(source, [find_concepts(self.concepts, layer, concept)])
        return maps_source(self.result, layer, source, self.concepts)

    # ------------------------------------------------------------------ labels
    @property
    def layers(self) -> List[str]:
        return self.result.layers

    @property
    def categories(self) -> Optional[List[str]]:
        cats = self.result.metadata.get("categories") or self.info.categories
        if cats is None and getattr(self.dataset, "classes", None):
            cats = list(self.dataset.classes)
        return cats

    def label_name(self, label: int) -> str:
        cats = self.categories
        if label is None or label < 0:
            return "unlabelled"
        return cats[label] if cats and label < len(cats) else f"class {label}"

    def describe(self) -> str:
        r"""One line: model, backend, images, k, input size."""
        m = self.result.metadata
        if self.backend == "onnxruntime" and not self.has_torch_model:
            what = f"{Path(str(m.get('onnx_path', '?'))).name} through ONNX Runtime ({m.get('provider', '?')})"
        else:
            what = str(m.get("model_name", m.get("model", "?")))
            if m.get("checkpoint"):
                what += f" + checkpoint {Path(str(m['checkpoint'])).name}"
            if m.get("random_init"):
                what += " (random weights)"
        engine = (f"; mined through ONNX Runtime ({m.get('provider', '?')})"
                  if self.backend == "onnxruntime" and self.has_torch_model else "")
        ranked = m.get("rank_by")
        ranking = (f"; ranked by {ranked.get('method')} relevance toward {ranked.get('target')}"
                   if isinstance(ranked, dict) else "")
        concepts = [c.get("result_layer") for c in m.get("concepts") or [] if isinstance(c, dict)]
        concepts_text = f"; concepts {', '.join(concepts)}" if concepts else ""
        return (f"{what}; {self.result.n_images} images ({data_label(m.get('data'))}); "
                f"top-{self.result.k} per channel; input {self.info.input_size[0]}x{self.info.input_size[1]}{engine}"
                f"{ranking}{concepts_text}")


def open_run(path: PathLike, check_weights: bool = True,
             guard: Optional[Callable[[Dict[str, Any], Dict[str, Any]], None]] = None) -> Run:
    r"""Reopen a run folder (or its ``result.pt``) written by :func:`~.mine.mine_run`.

    Args:
        path (str): the run folder, or its ``result.pt``.
        check_weights (bool): refuse a run whose checkpoint / ONNX file changed since it was
            mined (same name, other bytes: its patches belong to other weights).
        guard (callable, optional): ``guard(metadata, run_json)`` called once the result is read
            and before any model, checkpoint or image is opened; it raises to refuse the run
            (the dashboard refuses paths outside its roots).
    Returns:
        Run
    Raises:
        FileNotFoundError: no ``result.pt`` (or its model / images are gone).
        ValueError: a damaged result, a changed checkpoint, a model that does not load.
    Example::
        >>> run = open_run("results/mnv2")
        >>> run.patches("features.7", 12).shape
        torch.Size([9, 3, 75, 75])
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    result_path = path / "result.pt" if path.is_dir() else path
    if not result_path.is_file():
        raise FileNotFoundError(f"No result.pt in {folder}: mine it first (`captum-topk mine --out {folder}` "
                                "or the dashboard's Data and jobs page).")
    result = TopKResult.load(result_path)
    meta = result.metadata
    settings = read_run_json(folder) or {}
    if guard is not None:
        guard(meta, settings)
    spec = None
    if isinstance(settings.get("spec"), dict):
        try:
            spec = RunSpec.from_dict(settings["spec"])
        except (TypeError, ValueError):
            spec = None
    size = meta.get("input_size")
    size = int(size[0]) if isinstance(size, (list, tuple)) and size else None
    backend = "onnxruntime" if meta.get("backend") == "onnxruntime" else "torch"
    if backend == "onnxruntime" and not meta.get("torch_model", False):  # a user's ONNX file
        onnx_path = Path(str(meta.get("onnx_path") or ""))
        if not onnx_path.is_file():
            raise FileNotFoundError(f"The run was mined from {onnx_path}, which is gone.")
        if check_weights:
            _check_weights(str(onnx_path), spec.weights_sha1 if spec else None)
        info = onnx_model_info(onnx_path, size)
        if meta.get("mean") and meta.get("std"):
            import dataclasses

            info = dataclasses.replace(info, mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                                       transform=make_transform(info.input_size, mean=meta["mean"], std=meta["std"]))
    else:
        weights = meta.get("checkpoint") or str(meta.get("model_name") or "")  # --model file.pt
        recorded = spec.weights_sha1 if spec else (settings.get("weights_sha1") or settings.get("checkpoint_sha1"))
        if check_weights:
            _check_weights(weights, recorded)
        _, info = load_run_model(str(meta.get("model_name") or DEFAULT_MODEL), meta.get("checkpoint"), size,
                                 bool(meta.get("random_init")))
    desc = meta.get("data") or {"kind": "demo"}
    dataset = reopen_dataset(desc, info.transform, meta.get("skipped") or [], validate="header")
    stale = None
    if spec is not None and spec.data_fingerprint and data_fingerprint(desc) != spec.data_fingerprint:
        stale = ("the image files changed since this run was mined (added, removed or modified): "
                 "patches are cropped from the current files; mine again to be sure")
    return Run(folder, result, info, dataset, backend, settings, spec, stale)


def _check_weights(weights: Optional[str], recorded: Optional[str]) -> None:
    """A run shows the patches its weights found: refuse to pair it with a weights file that was
    replaced under the same name since (e.g. by a new ``captum-topk finetune``)."""
    if weights and recorded and Path(weights).is_file() and file_digest(weights) != recorded:
        raise ValueError(
            f"The weights file {weights} changed since this run was mined (same name, different "
            "bytes). Mine the run again (Data and jobs page, or captum-topk mine) to see what "
            "the new weights respond to."
        )


@dataclass
class RunEntry:
    r"""One run folder, described from its ``run.json`` (cheap).

    Attributes:
        path (Path): the folder. name (str): relative to the listed root.
        model (str), checkpoint (str or None), data (str), layers (list of str),
        n_images (int or None), backend (str), stats (bool), k (int or None),
        mtime (float): of ``result.pt``. spec (RunSpec or None). status (str).
        error (str or None): why ``run.json`` could not be read.
    """

    path: Path
    name: str
    model: str = "?"
    checkpoint: Optional[str] = None
    data: str = "?"
    layers: List[str] = field(default_factory=list)
    n_images: Optional[int] = None
    backend: str = "torch"
    stats: bool = False
    k: Optional[int] = None
    mtime: float = 0.0
    spec: Optional[RunSpec] = None
    status: str = "done"
    error: Optional[str] = None

    @property
    def label(self) -> str:
        ck = f" + {Path(self.checkpoint).name}" if self.checkpoint else ""
        onnx = " [ONNX Runtime]" if self.backend == "onnxruntime" else ""
        return f"{self.name} — {self.model}{ck}{onnx} on {self.data}"


def list_runs(runs_root: PathLike, walk_folders: Optional[Callable[[Path], Any]] = None) -> List[RunEntry]:
    r"""Finished runs (folders holding ``result.pt``) under ``runs_root``, newest first.

    Only ``run.json`` is read; a folder whose ``run.json`` is missing or damaged is still
    listed, with ``error`` set (opening it then says why it fails).

    Args:
        runs_root (str): the folder to search.
        walk_folders (callable, optional): ``root -> iterable of (folder, file names)``;
            default :func:`captum_topk.utils.files.walk`, 4 folders deep.
    Returns:
        list of RunEntry
    """
    root = Path(runs_root).resolve()
    out = []
    for folder, files in (walk_folders or (lambda r: walk(r, 4)))(root):
        if "result.pt" not in files:
            continue
        result = folder / "result.pt"
        try:
            result.resolve().relative_to(root)
        except ValueError:
            continue
        entry = RunEntry(path=folder, name=folder.relative_to(root).as_posix() if folder != root else ".",
                         mtime=result.stat().st_mtime)
        info = read_run_json(folder)
        if info is None:
            entry.error = ("no run.json beside result.pt" if not (folder / "run.json").exists()
                           else "damaged run.json")
            out.append(entry)
            continue
        try:
            spec = RunSpec.from_dict(info["spec"]) if isinstance(info.get("spec"), dict) else None
            entry.spec = spec
            if spec is not None:
                entry.model = Path(spec.onnx).name if spec.onnx else spec.model
                entry.checkpoint, entry.layers, entry.k = spec.checkpoint, list(spec.layers), spec.k
                entry.backend, entry.stats = spec.backend, spec.stats_bins > 0
            else:  # a run.json without a spec: the settings are flat keys
                entry.model = str(info.get("model", "?"))
                entry.checkpoint = info.get("checkpoint")
                entry.layers = [str(v) for v in info.get("layers", [])]
                entry.backend = "onnxruntime" if info.get("backend") == "onnxruntime" else "torch"
                entry.stats, entry.k = bool(info.get("stats", False)), info.get("k")
            entry.data = data_label(info.get("data"))
            entry.n_images = info.get("n_total")
            entry.status = str(info.get("status", "done"))
        except (ValueError, TypeError, KeyError) as exc:
            entry.error = f"damaged run.json ({exc})"
        out.append(entry)
    return sorted(out, key=lambda e: (-e.mtime, e.name))
