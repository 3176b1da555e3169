r"""Library side of the Streamlit dashboard (``app_streamlit/``): everything it computes.

The app stays a thin layer of widgets; what it shows comes from these functions, which are
plain Python (no Streamlit import) and tested on their own. They live in the small modules of
:mod:`captum_topk.dashboard` (``roots``, ``spec``, ``runs``, ``jobs``, ``views``,
``embeddings``, ``comparisons``); this module gathers them under one name for the app:

* **Roots** (:class:`Roots`): the four folders the dashboard may read / write, from the
  environment (``CAPTUM_TOPK_DATA_ROOT``, ``CAPTUM_TOPK_RUNS_ROOT``,
  ``CAPTUM_TOPK_CHECKPOINTS_ROOT``, ``CAPTUM_TOPK_ONNX_ROOT``), defaulting to ``data/``,
  ``results/``, ``checkpoints/`` and ``onnx_models/`` under a base folder. Every path a user
  types goes through :func:`resolve_under`: it must stay inside its root once ``..`` and
  symlinks are resolved.
* **Runs** on disk (the run folders of :func:`captum_topk.runs.mine_run`: ``run.json`` +
  ``result.pt``): :func:`list_runs`, :func:`open_run` (result + model + dataset, PyTorch or
  ONNX Runtime), :func:`open_run_within` (the same, refused with the reason when the run lies
  or names a path outside the roots), and :func:`mine_job`, which mines a :class:`JobSpec`
  batch by batch with a progress callback (the dashboard's live progress bar), with
  per-channel statistics, and reuses a finished run with the same settings instead of mining
  again.
  :func:`ensure_default_run` mines the embedded default (MobileNetV2-ImageNet on the packaged
  photos) when it is missing; ``python -m captum_topk.dashboard warm`` does it ahead of
  time (``make run``).
* **Model choices** of a job (:data:`MODEL_SOURCES`): a built-in, a checkpoint, a timm
  architecture (``timm:NAME``, random or with a checkpoint), a transformers
  ``save_pretrained`` folder under the checkpoints root (:func:`list_model_folders`), a
  Python factory listed in ``$CAPTUM_TOPK_MODEL_FACTORIES`` (:func:`allowed_factories`), an
  ONNX file; :func:`job_model_spec` resolves them safely.
* **Views** of a run, as ``uint8`` arrays and plain numbers ready for ``st.image`` / plotly:
  :func:`channel_patches`, :func:`channel_projections`, :func:`channel_histogram`,
  :func:`channel_classes`, :func:`record_image` (the whole model input with the receptive
  field drawn), :func:`top1_grid`, :func:`filter_view`, :func:`run_embeddings` +
  :func:`pca_2d`, :func:`thumbnails`.
* **Concepts** (the Concepts page): :class:`ConceptJobSpec` / :func:`learn_job` (learning a
  run layer's concepts as a queued job, saved in ``<run>/concepts/``),
  :func:`list_concept_files` / :func:`load_concepts_file`, :func:`concept_layer` (the run's
  layer of mined concepts), :func:`concept_mining_spec` (the job mining a run again with them),
  :func:`concept_visualizations`, :func:`concept_importance`, :func:`concept_heatmaps`,
  :func:`match_files` + :func:`matching_rows` (kept / dropped / created).
* **Comparisons** (:func:`compare_runs`): layer x layer CKA and channels ranked by how much
  they changed, through :mod:`captum_topk.compare`; :func:`compare_status` says when two runs
  cannot be compared that way (ONNX Runtime runs have no PyTorch model).

Example::

    >>> from captum_topk.dashboard import Roots, ensure_default_run, open_run, channel_patches
    >>> roots = Roots.from_env()
    >>> run = open_run(ensure_default_run(roots))
    >>> tiles, recs = channel_patches(run, "features.7", 12)   # (9, 75, 75, 3) uint8, records
"""

from .concepts import (CONCEPT_LIMITS, CONCEPT_METHODS, ConceptJobSpec, concept_heatmaps, concept_importance,
                       concept_layer, concept_mining_spec, concept_visualizations, concepts_facts, concepts_path,
                       learn_job, list_concept_files, load_concepts_file, match_files, matching_rows)
from .comparisons import compare_runs, compare_status, find_finetuned, like_run, matching_layers, shared_images
from .embeddings import nearest_neighbours, pca_2d, run_embeddings, thumbnails
from .jobs import HISTOGRAM_BINS, ensure_default_run, find_job, job_layers, job_model, job_model_spec, mine_job, onnx_available, run_spec, suggest_layers
from .roots import CHECKPOINT_EXTENSIONS, app_base, DEFAULT_DIRS, ENV_VARS, Roots, UnsafePathError, list_data_folders, list_files, list_model_folders, resolve_under
from ..runs.folder import Run, RunEntry, list_runs, open_run
from .opening import check_run_paths, open_run_within
from ..runs.lock import RunLockedError
from ..models.registry import DEFAULT_LAYERS
from .queue import MAX_PENDING, Job, JobQueue, JobRefused, job_queue
from .spec import DEFAULT_SPEC, FACTORIES_ENV, JOB_FORMAT, LIMITS, MODEL_SOURCES, JobSpec, allowed_factories, model_source
from .views import channel_classes, channel_histogram, channel_overlays, channel_patches, channel_visualizations, channel_projections, conv_layers, filter_view, record_image, tile_grid, top1_grid
from ..models.registry import DEFAULT_MODEL

__all__ = [
    "app_base",
    "Roots",
    "UnsafePathError",
    "resolve_under",
    "RunEntry",
    "Run",
    "check_run_paths",
    "RunLockedError",
    "run_spec",
    "JobSpec",
    "LIMITS",
    "Job",
    "JobQueue",
    "JobRefused",
    "job_queue",
    "MAX_PENDING",
    "DEFAULT_SPEC",
    "DEFAULT_LAYERS",
    "DEFAULT_MODEL",
    "DEFAULT_DIRS",
    "ENV_VARS",
    "CHECKPOINT_EXTENSIONS",
    "HISTOGRAM_BINS",
    "JOB_FORMAT",
    "list_runs",
    "list_files",
    "list_data_folders",
    "list_model_folders",
    "allowed_factories",
    "model_source",
    "MODEL_SOURCES",
    "FACTORIES_ENV",
    "job_model_spec",
    "open_run",
    "open_run_within",
    "mine_job",
    "find_job",
    "ensure_default_run",
    "onnx_available",
    "job_model",
    "job_layers",
    "suggest_layers",
    "channel_patches",
    "channel_overlays",
    "channel_visualizations",
    "channel_projections",
    "channel_histogram",
    "channel_classes",
    "record_image",
    "top1_grid",
    "tile_grid",
    "conv_layers",
    "filter_view",
    "run_embeddings",
    "pca_2d",
    "nearest_neighbours",
    "thumbnails",
    "find_finetuned",
    "like_run",
    "shared_images",
    "matching_layers",
    "compare_status",
    "compare_runs",
    "CONCEPT_METHODS",
    "CONCEPT_LIMITS",
    "ConceptJobSpec",
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
