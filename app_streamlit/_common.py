"""Streamlit glue shared by the pages: roots, cached library calls, the run picker, error boxes.

Nothing is computed here: every function calls ``captum_topk.dashboard`` and only adds
Streamlit caching (``st.cache_resource`` for opened runs and models, ``st.cache_data`` for
arrays) or widgets. A run is identified in caches by its folder and the mtime of its
``result.pt``, so a re-mined run is never served stale.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import streamlit as st

from captum_topk import dashboard as dd

BASE = dd.app_base(__file__)  # the checkout, or the current directory for an installed app
RUN_KEY = "run"  # session_state key of the sidebar run picker
RUN_REQUEST = "run_request"  # a page asks the picker to switch run on the next rerun


def roots() -> dd.Roots:
    return dd.Roots.from_env(BASE)


@contextmanager
def friendly(what: str) -> Iterator[None]:
    r"""Show an exception as an ``st.error`` box (no traceback) and go on with the page."""
    try:
        yield
    except Exception as exc:  # Streamlit's stop / rerun are BaseException: not caught
        st.error(f"{what}: {exc}", icon=":material/error:")


# ------------------------------------------------------------------ cached library calls
@st.cache_resource(show_spinner="Opening the run (model, dataset)...", max_entries=6)
def cached_run(path: str, mtime: float) -> dd.Run:
    return dd.open_run_within(path, roots())


@st.cache_data(show_spinner=False, max_entries=512)
def patches(path: str, mtime: float, layer: str, channel: int, which: str, n: int):
    return dd.channel_patches(cached_run(path, mtime), layer, channel, which, n)


@st.cache_data(show_spinner="Projecting the neurons back to pixels (Captum)...", max_entries=256)
def projections(path: str, mtime: float, layer: str, channel: int, method: str, which: str, n: int) -> np.ndarray:
    return dd.channel_projections(cached_run(path, mtime), layer, channel, method, which, n)


@st.cache_data(show_spinner="Drawing the channel's activation maps on the whole images...", max_entries=128)
def overlays(path: str, mtime: float, layer: str, channel: int, which: str, n: int) -> np.ndarray:
    return dd.channel_overlays(cached_run(path, mtime), layer, channel, which, n)


@st.cache_data(show_spinner=False, max_entries=128)
def visualizations(path: str, mtime: float, layer: str, channels: Tuple[int, ...], compute: bool):
    return dd.channel_visualizations(cached_run(path, mtime), layer, list(channels), compute=compute)


@st.cache_data(show_spinner=False, max_entries=512)
def histogram(path: str, mtime: float, layer: str, channel: int) -> Optional[Dict[str, Any]]:
    return dd.channel_histogram(cached_run(path, mtime), layer, channel)


@st.cache_data(show_spinner=False, max_entries=512)
def classes(path: str, mtime: float, layer: str, channel: int, which: str) -> List[Tuple[str, int]]:
    return dd.channel_classes(cached_run(path, mtime), layer, channel, which)


@st.cache_data(show_spinner=False, max_entries=512)
def record_image(path: str, mtime: float, layer: str, channel: int, which: str, rank: int) -> np.ndarray:
    run = cached_run(path, mtime)
    return dd.record_image(run, run.result.records(layer, channel, which)[rank])


@st.cache_data(show_spinner="Cropping the top-1 patch of every channel...", max_entries=64)
def top1_grid(path: str, mtime: float, layer: str, channels: Tuple[int, ...], which: str):
    return dd.top1_grid(cached_run(path, mtime), layer, channels, which)


@st.cache_data(show_spinner="Embedding the images (global average pooling)...", max_entries=32)
def embeddings(path: str, mtime: float, layer: str):
    return dd.run_embeddings(cached_run(path, mtime), layer)


@st.cache_data(show_spinner=False, max_entries=32)
def thumbnails(path: str, mtime: float, ids: Tuple[str, ...], px: int, data_uri: bool = True) -> List[Any]:
    return dd.thumbnails(cached_run(path, mtime), ids, px, data_uri)


@st.cache_data(show_spinner=False, max_entries=64)
def filter_view(path: str, mtime: float, layer: Optional[str], mode: str) -> Dict[str, Any]:
    run = cached_run(path, mtime)
    if run.model is None:
        raise ValueError("Filters need the PyTorch model; this run was mined through ONNX Runtime "
                         "(open a PyTorch run of the same model).")
    return dd.filter_view(run.model, layer, mode)


@st.cache_data(show_spinner="Comparing the two models over the images (similarity, matched units, channel changes)...",
               max_entries=16)
def comparison(path_a: str, mtime_a: float, path_b: str, mtime_b: float) -> Dict[str, Any]:
    return dd.compare_runs(cached_run(path_a, mtime_a), cached_run(path_b, mtime_b))


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def job_model(spec: dd.JobSpec, roots_: dd.Roots):
    return dd.job_model(spec, roots_)


@st.cache_data(show_spinner=False, max_entries=32)
def job_layers(spec: dd.JobSpec, roots_: dd.Roots) -> List[str]:
    if spec.onnx:
        return dd.job_layers(spec, roots_)
    return dd.job_layers(spec, roots_, model=job_model(spec, roots_)[0])


# ------------------------------------------------------------------ runs
def progress_callback(bar: Any, what: str):
    r"""A ``progress(phase, done, total)`` for the library that drives an ``st.progress``."""

    def report(phase: str, done: int, total: Optional[int]) -> None:
        if phase == "mining" and total:
            bar.progress(min(1.0, done / total), text=f"{what}: mining {done}/{total} images")
        elif phase == "loading":
            bar.progress(0.0, text=f"{what}: loading the model and the images; the first batch also measures "
                                   "exact receptive fields (cached on disk after the first time)...")
        elif phase == "export":
            bar.progress(0.0, text=f"{what}: exporting to ONNX and checking it against PyTorch...")
        elif phase == "loading":
            bar.progress(0.0, text=f"{what}: loading the model and the images...")
        elif phase == "done":
            bar.progress(1.0, text=f"{what}: done")

    return report


def ensure_some_run(r: dd.Roots) -> None:
    r"""First start: with no run under the runs root, mine the embedded default in the background
    (the job queue) and show its progress; the page fills in when it is done. The page is on
    screen at once, whatever the first mining costs."""
    if dd.list_runs(r.runs):
        return
    queue = dd.job_queue(r)
    try:
        job = queue.submit(dd.DEFAULT_SPEC)
    except dd.JobRefused as exc:
        st.warning(f"First start: the default run waits for other jobs ({exc}).")
        st.stop()
    st.title("captum-topk")
    st.info("First start: mining the embedded default, MobileNetV2 with torchvision's real ImageNet weights on the "
            "44 real photos that installed packages ship, in the background. This page fills in when it is done "
            "(well under a minute; cached in the runs folder afterwards). Meanwhile the Data and jobs page works.",
            icon=":material/hourglass_top:")

    @st.fragment(run_every=1.0)
    def first_start() -> None:
        if job.status == "done":
            st.rerun(scope="app")
        elif job.status in ("failed", "cancelled"):
            st.error(f"Could not mine the default run: {job.error or job.status}", icon=":material/error:")
        else:
            what = f"mining {job.done}/{job.total} images" if job.phase == "mining" and job.total else (
                "loading the model, exporting it for ONNX Runtime, measuring receptive fields...")
            st.progress(job.fraction, text=f"Default run: {what}")

    first_start()
    st.stop()


def run_picker(r: dd.Roots) -> Optional[dd.RunEntry]:
    r"""The sidebar's run selector; returns the chosen entry (None when there is no run).

    The choice lives in ``st.session_state[RUN_KEY]`` (a plain key, not the widget's, so
    that it survives page switches); a page may ask for another run with ``RUN_REQUEST``."""
    entries = dd.list_runs(r.runs)
    if not entries:
        st.sidebar.warning(f"No run under {r.runs} yet: mine one on the Data and jobs page.")
        return None
    names = [e.name for e in entries]
    by_name = {e.name: e for e in entries}
    wanted = st.session_state.pop(RUN_REQUEST, None)
    if wanted in by_name:
        st.session_state[RUN_KEY] = wanted
    if st.session_state.get(RUN_KEY) not in by_name:
        default = dd.find_job(dd.DEFAULT_SPEC, r)
        default_name = default.relative_to(r.runs).as_posix() if default else None
        st.session_state[RUN_KEY] = default_name if default_name in by_name else names[0]

    def chosen() -> None:
        st.session_state[RUN_KEY] = st.session_state["run_widget"]

    st.session_state["run_widget"] = st.session_state[RUN_KEY]
    st.sidebar.selectbox("Run", names, key="run_widget", on_change=chosen, format_func=lambda n: by_name[n].label,
                         help="Runs found under the runs root. Mine new ones on the Data and jobs page.")
    entry = by_name[st.session_state[RUN_KEY]]
    if entry.error:
        st.sidebar.caption(f":material/warning: {entry.error}")
    return entry


def sidebar(mine_default: bool = True) -> dd.Roots:
    r"""What every page starts with: the roots, the default run on a first start, the run
    picker and the roots box in the sidebar. Returns the roots."""
    r = roots()
    if mine_default:
        ensure_some_run(r)
    st.sidebar.markdown("**captum-topk** · Zeiler & Fergus dataset top-k patches")
    run_picker(r)
    with st.sidebar.expander("Configured roots"):
        for name, path in r.as_dict().items():
            st.caption(f"**{name}**: `{path}`")
        st.caption("Set CAPTUM_TOPK_DATA_ROOT / _RUNS_ROOT / _CHECKPOINTS_ROOT / _ONNX_ROOT to change "
                   "them. Paths typed in the app must stay inside these folders.")
    return r


def current_run(r: Optional[dd.Roots] = None) -> dd.Run:
    r"""Draw the sidebar and return the run chosen there, opened (cached); stops the page with
    an error box when it cannot be opened."""
    r = sidebar() if r is None else r
    entries = {e.name: e for e in dd.list_runs(r.runs)}
    entry = entries.get(st.session_state.get(RUN_KEY, ""))
    if entry is None:
        st.info("No run yet: mine one on the Data and jobs page.")
        st.stop()
    try:
        return cached_run(str(entry.path), entry.mtime)
    except Exception as exc:
        st.error(f"Cannot open the run {entry.name}: {exc}", icon=":material/error:")
        st.stop()
    raise AssertionError  # unreachable


def from_query(key: str, param: str, allowed=None, convert=str) -> None:
    r"""Initialise widget ``key`` once per session from the URL query parameter ``param``
    (e.g. ``?layer=features.7&channel=12``), when present and valid."""
    done = f"_from_query_{key}"
    if st.session_state.get(done) or param not in st.query_params:
        return
    st.session_state[done] = True
    try:
        value = convert(st.query_params[param])
    except (TypeError, ValueError):
        return
    if allowed is None or value in allowed:
        st.session_state[key] = value


def run_key(run: dd.Run) -> Tuple[str, float]:
    r"""``(folder, mtime)``: the cache key of an opened run."""
    return str(run.path), (run.path / "result.pt").stat().st_mtime


# ------------------------------------------------------------------ concepts (the Concepts page)
@st.cache_resource(show_spinner=False, max_entries=16)
def concepts_file(path: str, mtime: float):
    r"""A concepts file opened (``path`` resolved under the roots by the page)."""
    from captum_topk.concepts import Concepts

    return Concepts.load(path)


@st.cache_data(show_spinner=False, max_entries=64)
def concept_visualizations(path: str, mtime: float, file: str, fmtime: float, indices: Tuple[int, ...],
                           compute: bool):
    return dd.concept_visualizations(cached_run(path, mtime), concepts_file(file, fmtime), list(indices),
                                     compute=compute)


@st.cache_data(show_spinner="Gradient x concept activation over the run's images...", max_entries=64)
def concept_importance(path: str, mtime: float, file: str, fmtime: float, target: int, max_images: int):
    return dd.concept_importance(cached_run(path, mtime), concepts_file(file, fmtime), target, max_images=max_images)


@st.cache_data(show_spinner="Encoding the images' activations into concepts...", max_entries=64)
def concept_heatmaps(path: str, mtime: float, file: str, fmtime: float, index: int, images: Tuple[int, ...]):
    return dd.concept_heatmaps(cached_run(path, mtime), concepts_file(file, fmtime), index, list(images))


@st.cache_data(show_spinner="Matching the concepts (Hungarian)...", max_entries=32)
def concept_matching(file_a: str, mt_a: float, file_b: str, mt_b: float, by: str,
                     run_a: Optional[Tuple[str, float]], run_b: Optional[Tuple[str, float]]):
    ra = cached_run(*run_a) if run_a else None
    rb = cached_run(*run_b) if run_b else None
    m = dd.match_files(concepts_file(file_a, mt_a), concepts_file(file_b, mt_b), by, ra, rb)
    return m.to_json(), dd.matching_rows(m)
