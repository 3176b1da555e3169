r"""Library side of the dashboard's Concepts page (and of ``captum-topk concepts``): learning a
run's concepts as a background job, concept files under the roots, and the views of a concept
(top-k patches of a run mined with the concepts, feature visualization, importance for a class,
heatmaps on whole images) and of the matching of two sets of concepts.

Where things live: concepts learned from a run are saved in its folder,
``<run>/concepts/<layer>-<method><K>-s<seed>[-n<images>].pt`` (:meth:`ConceptJobSpec.file_name`);
any concepts file under the runs or checkpoints root can be opened (:func:`load_concepts_file`,
paths through :func:`~.roots.resolve_under`). A run mined with concepts has result layers
``"<layer>:<name>"`` (``docs/concepts_mining.md``); :func:`concept_mining_spec` is the job that
mines a run's settings again with a concepts file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..concepts.base import Concepts
from ..core.activation_maps import recorded_layout
from ..core.sources.concepts import concept_layer as result_layer
from ..runs.folder import Run
from ..utils.naming import slug
from .comparisons import like_run
from .roots import Roots, UnsafePathError, _within, list_files, resolve_under
from .spec import JobSpec

__all__ = [
    "CONCEPT_METHODS",
    "CONCEPT_LIMITS",
    "ConceptJobSpec",
    "JobStopped",
    "learn_job",
    "concepts_path",
    "list_concept_files",
    "load_concepts_file",
    "concepts_facts",
    "concept_layer",
    "concept_mining_spec",
    "concept_visualizations",
    "concept_importance",
    "concept_heatmaps",
    "matching_rows",
    "match_files",
]

#: Methods a dashboard learning job offers (given vectors / TCAV / classifiers come as files).
CONCEPT_METHODS = ("nmf", "sae", "pca")
#: Bounds of a dashboard learning job: name -> (lowest, highest).
CONCEPT_LIMITS = {"n_concepts": (1, 256), "max_images": (1, 1_000_000), "batch_size": (1, 256)}
CONCEPTS_DIR = "concepts"


class JobStopped(RuntimeError):
    r"""A learning job was cancelled before its next batch (nothing is saved)."""


@dataclass(frozen=True)
class ConceptJobSpec:
    r"""A dashboard job that learns concepts of one layer of a run, from the run's model and
    images.

    Attributes:
        run (str): the run folder, relative to the runs root.
        layer (str): a layer of the run (a channel layer, not a concept layer).
        method (str): one of :data:`CONCEPT_METHODS`.
        n_concepts (int): ``K``.
        max_images (int, optional): learn from the first images only.
        seed (int): seeds the sampled positions and the factorisation.
        batch_size (int): images per forward.
    """

    run: str
    layer: str
    method: str = "nmf"
    n_concepts: int = 8
    max_images: Optional[int] = None
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.method not in CONCEPT_METHODS:
            raise ValueError(f"method must be one of {CONCEPT_METHODS}, got {self.method!r}.")
        if ":" in self.layer:
            raise ValueError(f"{self.layer!r} is a concept layer: learn concepts of a channel layer.")
        for name, (low, high) in CONCEPT_LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high} for a dashboard job, got {value!r}.")

    def run_name(self) -> str:
        r"""What the job list shows."""
        return f"{self.run}: {self.method}{self.n_concepts} concepts of {self.layer}"

    def file_name(self) -> str:
        r"""The concepts file's name in the run's ``concepts/`` folder."""
        images = f"-n{self.max_images}" if self.max_images else ""
        return f"{slug(self.layer)}-{self.method}{self.n_concepts}-s{self.seed}{images}.pt"


def concepts_path(spec: ConceptJobSpec, roots: Roots) -> Path:
    r"""Where ``spec``'s concepts are saved: ``<run>/concepts/<file_name>`` (the run resolved
    under the runs root)."""
    return resolve_under(roots.runs, spec.run, kind="dir") / CONCEPTS_DIR / spec.file_name()


class _Batches:
    r"""A run's images in batches (re-iterable: the SAE may take several passes), reporting
    ``progress(phase, images done, total)`` and stopping with :class:`JobStopped` when asked."""

    def __init__(self, dataset: Any, batch_size: int, max_images: Optional[int],
                 progress: Optional[Callable[[str, int, Optional[int]], None]],
                 should_stop: Optional[Callable[[], bool]]) -> None:
        n = len(dataset)
        self.dataset = dataset if not max_images or max_images >= n else torch.utils.data.Subset(dataset, range(max_images))
        self.batch_size, self.progress, self.should_stop = batch_size, progress, should_stop
        self.passes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        total, done = len(self.dataset), 0
        for batch in torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False):
            if self.should_stop is not None and self.should_stop():
                raise JobStopped("cancelled")
            yield batch
            done += int(batch[0].shape[0])
            if self.progress is not None:
                self.progress("learning", done, total)


def _open(roots: Roots, run: str) -> Run:
    from .opening import open_run

    return open_run(resolve_under(roots.runs, run, kind="dir"), roots)


def learn_job(spec: ConceptJobSpec, roots: Roots, progress: Optional[Callable[[str, int, Optional[int]], None]] = None,
              should_stop: Optional[Callable[[], bool]] = None, run: Optional[Run] = None) -> Optional[Path]:
    r"""Learn ``spec``'s concepts from its run's model and images and save them
    (:func:`concepts_path`); a file already there is returned without learning.

    Args:
        spec (ConceptJobSpec): what to learn.
        roots (Roots): the configured roots.
        progress (callable, optional): ``progress(phase, done, total)``: ``"loading"``, then
            ``"learning"`` (images done / total after every batch; an SAE may take several
            passes), ``"done"``.
        should_stop (callable, optional): checked before each batch (a cancel button).
        run (Run, optional): the run, already opened.
    Returns:
        Path: the concepts file; None when stopped (nothing saved).
    Raises:
        ValueError: a run without its PyTorch model (a user's ONNX file), a layer it did not mine.
    Example::
        >>> learn_job(ConceptJobSpec("mobilenet_v2-demo-1a2b3c4d", "features.14", n_concepts=8), roots)
        PosixPath('.../results/mobilenet_v2-demo-1a2b3c4d/concepts/features.14-nmf8-s0.pt')
    """
    from ..concepts.learn import learn_concepts

    report = progress or (lambda *a: None)
    out = concepts_path(spec, roots)
    if out.is_file():
        report("done", 1, 1)
        return out
    report("loading", 0, None)
    run = run if run is not None else _open(roots, spec.run)
    if spec.layer not in run.result.layers:
        raise ValueError(f"The run did not mine {spec.layer!r}; its layers: {', '.join(run.result.layers)}.")
    model = run.model
    if model is None:
        raise ValueError("Learning concepts needs the PyTorch model; this run is of an ONNX file.")
    data = _Batches(run.dataset, spec.batch_size, spec.max_images, report, should_stop)
    try:
        concepts = learn_concepts(model, spec.layer, data, method=spec.method, n_concepts=spec.n_concepts,
                                  seed=spec.seed, progress=False, batch_size=spec.batch_size,
                                  negatives="clamp", **recorded_layout(run.result, spec.layer))
    except JobStopped:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    concepts.save(out)
    report("done", 1, 1)
    return out


def list_concept_files(roots: Roots) -> List[str]:
    r"""Concepts files a user can open: ``.pt`` files in a ``concepts/`` folder under the runs
    root (``"<run>/concepts/<file>"``) and under the checkpoints root (``"checkpoints:<path>"``)."""
    out = [p for p in list_files(roots.runs, [".pt"]) if CONCEPTS_DIR in p.split("/")[:-1]]
    out += ["checkpoints:" + p for p in list_files(roots.checkpoints, [".pt"]) if CONCEPTS_DIR in p.split("/")[:-1]]
    return out


def load_concepts_file(roots: Roots, path: str) -> Tuple[Concepts, Path]:
    r"""Open a concepts file named as :func:`list_concept_files` names them (or a path typed
    by a user: under the runs root, or ``checkpoints:<path>`` under the checkpoints root).

    Returns:
        (Concepts, Path): the concepts and the resolved file.
    Raises:
        UnsafePathError: a path that leaves its root. FileNotFoundError, ValueError: not there,
        or not a concepts file.
    """
    text = str(path).strip()
    if text.startswith("checkpoints:"):
        file = resolve_under(roots.checkpoints, text[len("checkpoints:"):], kind="file")
    else:
        file = resolve_under(roots.runs, text, kind="file")
    try:
        return Concepts.load(file), file
    except (ValueError, KeyError) as exc:  # another kind of file (Concepts.load says which)
        raise ValueError(f"{text} is not a concepts file (Concepts.save / `captum-topk concepts learn`): {exc}") from exc


def concepts_facts(concepts: Concepts) -> Dict[str, Any]:
    r"""What a concepts file holds, as plain values: name, layer, method, ``K``, ``C``, labels
    and the encoder's scalar facts (``k`` of an SAE, the learning run's facts)."""
    scalars = {k: v for k, v in concepts.encoder_state.items() if not isinstance(v, torch.Tensor)}
    return {"name": concepts.name, "layer": concepts.layer, "method": concepts.method,
            "n_concepts": concepts.n_concepts, "channels": concepts.channels,
            "result_layer": result_layer(concepts), "labels": concepts.labels, "facts": scalars}


def concept_layer(run: Run, concepts: Concepts) -> Optional[str]:
    r"""The run's result layer of ``concepts`` (``"<layer>:<name>"``) when the run was mined with
    these very concepts (same directions and encoding), else None."""
    name = result_layer(concepts)
    if name not in run.result.layers:
        return None
    try:
        mined = run.concepts
    except (OSError, ValueError):  # its concepts file changed or is gone
        return None
    return name if any(c == concepts for c in mined) else None


def _relative(path: Optional[str], root: Path) -> Optional[str]:
    if not path:
        return None
    p = Path(path).resolve()
    if not _within(p, root.resolve()):
        raise UnsafePathError(f"{p} is outside the configured root {root}.")
    return p.relative_to(root.resolve()).as_posix()


def concept_mining_spec(run: Run, concepts_file: Path, roots: Roots) -> JobSpec:
    r"""The job that mines ``run`` again (same model, weights, layers, images, k) with the
    concepts of ``concepts_file`` beside the channels (their layer ``"<layer>:<name>"``).

    Raises:
        UnsafePathError: the run's checkpoint or images, or the file, are outside the roots.
    """
    base = like_run(run, _relative(run.result.metadata.get("checkpoint"), roots.checkpoints), roots)
    layers = tuple(layer for layer in run.layers if ":" not in layer)
    max_images = run.spec.max_images if run.spec is not None else None
    backend = run.backend if run.backend in ("torch", "onnxruntime") else "auto"  # the engine that mined it
    return dataclasses.replace(base, layers=layers, max_images=max_images, backend=backend,
                               concepts=(_relative(str(concepts_file), roots.runs),))


def concept_visualizations(run: Run, concepts: Concepts, indices: Sequence[int], compute: bool = True,
                           progress: Any = None) -> Dict[int, np.ndarray]:
    r"""Each concept's feature visualization (an image optimised along its direction), as
    ``(size, size, 3)`` uint8, cached in the run folder by the direction's values
    (:func:`captum_topk.runs.visualize.run_visualizations`).

    Args:
        run (Run): a run of the concepts' model.
        concepts (Concepts), indices (sequence of int): which concepts.
        compute (bool): compute the missing ones; False: only those already cached.
        progress (callable, optional): ``progress(done, total)`` over the concepts computed.
    Returns:
        dict: concept index -> image.
    """
    from ..runs.visualize import run_visualizations, visualized_channels
    from ..viz.plot import to_display

    if run.model is None:
        raise ValueError("Feature visualization needs the PyTorch model; this run is of an ONNX file.")
    indices = [int(i) for i in indices]
    directions = concepts.directions
    ready = {indices[j] for j in visualized_channels(run, concepts.layer, directions[indices])} if indices else set()
    todo = [i for i in indices if i not in ready] if compute else []
    for n, i in enumerate(todo):
        run_visualizations(run, concepts.layer, directions[[i]])
        if progress is not None:
            progress(n + 1, len(todo))
    have = [i for i in indices if i in ready or i in todo]
    if not have:
        return {}
    vis = run_visualizations(run, concepts.layer, directions[have])
    return {i: to_display(vis.of(j)[:1])[0] for j, i in enumerate(have)}


def _images(run: Run, indices: Sequence[int]) -> torch.Tensor:
    r"""``(n, C, H, W)``: the run's images at ``indices``, as the model sees them."""
    return torch.stack([run.dataset[int(i)][0] for i in indices])


def _first_images(run: Run, max_images: int) -> torch.Tensor:
    return _images(run, range(min(len(run.dataset), int(max_images))))


def concept_importance(run: Run, concepts: Concepts, target: int, max_images: int = 64,
                       batch_size: int = 16) -> np.ndarray:
    r"""Each concept's contribution to class ``target`` (:meth:`Concepts.importance`: gradient x
    concept activation, averaged) over the run's first ``max_images`` images.

    Returns:
        numpy.ndarray: ``(K,)`` float64.
    """
    model = run.model
    if model is None:
        raise ValueError("Concept importance needs the PyTorch model; this run is of an ONNX file.")
    images = _first_images(run, max_images)
    scores = concepts.importance(model, images, int(target), batch_size=batch_size,
                                 **recorded_layout(run.result, concepts.layer))
    return scores.double().numpy()


def concept_heatmaps(run: Run, concepts: Concepts, index: int, image_indices: Sequence[int],
                     batch_size: int = 16) -> np.ndarray:
    r"""Where concept ``index`` is on whole images of the run: its concept activations
    (:meth:`Concepts.heatmaps`) as a heat colour on each image, one colour scale for all.

    Args:
        run (Run), concepts (Concepts), index (int): the concept.
        image_indices (sequence of int): positions in the run's dataset.
    Returns:
        numpy.ndarray: ``(n, H, W, 3)`` uint8.
    """
    from ..viz.overlay import overlay

    model = run.model
    if model is None:
        raise ValueError("Concept heatmaps need the PyTorch model; this run is of an ONNX file.")
    if not image_indices:
        return np.zeros((0, 1, 1, 3), np.uint8)
    images = _images(run, image_indices)
    maps = concepts.heatmaps(model, images, batch_size=batch_size, **recorded_layout(run.result, concepts.layer))[:, int(index)]
    top = max(float(maps.max()), 1e-12)
    return np.stack([overlay(img, m, mean=run.info.mean, std=run.info.std, scale=top)
                     for img, m in zip(images, maps)])


def matching_rows(matching: Any) -> List[Dict[str, Any]]:
    r"""A :class:`~captum_topk.concepts.ConceptMatching` as table rows: one per kept pair, dropped
    concept of ``a`` and created concept of ``b``, with the similarity (of the pair, or of the
    best partner on the other side for dropped / created)."""
    units = matching.units
    rows: List[Dict[str, Any]] = [{"status": "kept", "a": i, "b": j, "similarity": round(s, 4)}
                                  for i, j, s in matching.kept]
    for i in matching.dropped:
        rows.append({"status": "dropped", "a": i, "b": int(units.best[i]),
                     "similarity": round(float(units.best_correlation[i]), 4)})
    matrix = units.matrix
    for j in matching.created:
        best = int(np.argmax(matrix[:, j])) if matrix is not None and matrix.shape[0] else -1
        rows.append({"status": "created", "a": best, "b": j,
                     "similarity": round(float(matrix[best, j]), 4) if best >= 0 else float("nan")})
    return rows


def match_files(a: Concepts, b: Concepts, by: str = "cosine", run_a: Optional[Run] = None,
                run_b: Optional[Run] = None, max_images: int = 64, threshold: Optional[float] = None) -> Any:
    r"""Match concepts ``a`` to ``b`` (:func:`~captum_topk.concepts.match_concepts`): by the
    cosine of the directions, or by the correlation of their activations over ``run_a``'s
    first ``max_images`` images, ``a`` encoded on ``run_a``'s model and ``b`` on ``run_b``'s
    (a pretrained model and its fine-tuned checkpoint).

    Returns:
        ConceptMatching
    """
    from ..concepts.compare import MATCH_THRESHOLD, match_concepts

    kw: Dict[str, Any] = {"threshold": MATCH_THRESHOLD if threshold is None else float(threshold)}
    if by == "correlation":
        if run_a is None or run_a.model is None or (run_b is not None and run_b.model is None):
            raise ValueError("Matching by correlation needs the runs' PyTorch models (pick two runs).")
        kw.update(model_a=run_a.model, model_b=(run_b or run_a).model, data=_first_images(run_a, max_images))
    return match_concepts(a, b, by=by, **kw)
