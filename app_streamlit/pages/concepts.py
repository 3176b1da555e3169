"""Concepts: directions in a layer's activation space (NMF, sparse autoencoder, PCA, or a file:
TCAV, a classifier's weights), learned from the run as a background job; each with its top-9
patches (a run mined with the concepts), feature visualization, importance for a class and
heatmaps on whole images; and the matching of two sets (pretrained vs fine-tuned)."""

from pathlib import Path

import pandas as pd
import streamlit as st

import _common as common
from captum_topk import dashboard as dd

roots = common.sidebar()
run = common.current_run(roots)
path, mtime = common.run_key(run)
run_name = st.session_state[common.RUN_KEY]
queue = dd.job_queue(roots)

st.title("Concepts")
st.caption(run.describe() + ". A concept is a direction in a layer's activation space (several channels "
           "together), not one channel: learned from the run's images (NMF, a sparse autoencoder, PCA) or read "
           "from a file (Captum TCAV vectors, a linear probe's class weights). See docs/concepts.md.")
if run.model is None:
    st.info("Concepts need the PyTorch model; this run is of an ONNX file. Open a run of the same model mined "
            "with PyTorch (or with the Auto backend).")
    st.stop()


def fmtime(file: Path) -> float:
    return file.stat().st_mtime


@st.fragment(run_every=1.0)
def jobs_panel(watch_key: str, what: str) -> None:
    r"""Progress of the job this page submitted (``st.session_state[watch_key]``); reruns the page
    when it is done."""
    job = next((j for j in queue.jobs() if j.id == st.session_state.get(watch_key)), None)
    if job is None:
        return
    if job.active:
        c1, c2 = st.columns([5, 1])
        text = f"{what}: {job.phase} {job.done}/{job.total} images" if job.total else f"{what}: {job.status}..."
        c1.progress(job.fraction, text=text)
        c2.button("Cancel", key=f"cc_cancel_{job.id}", on_click=queue.cancel, args=(job.id,))
    else:
        st.session_state.pop(watch_key)
        if job.status == "failed":
            st.session_state["cc_failed"] = f"{what} failed: {job.error}"
        st.rerun(scope="app")


if st.session_state.get("cc_failed"):
    st.error(st.session_state.pop("cc_failed"), icon=":material/error:")

# ---------------------------------------------------------------- which concepts
layers = [layer for layer in run.layers if ":" not in layer]
c1, c2 = st.columns([2, 3])
layer = c1.selectbox("Layer", layers, key="cc_layer")
source = c2.radio("Concepts", ["Learn from this run", "Open a file"], horizontal=True, key="cc_source")

file = None
if source == "Learn from this run":
    l1, l2, l3, l4 = st.columns(4)
    method = l1.selectbox("Method", dd.CONCEPT_METHODS, key="cc_method",
                          format_func={"nmf": "NMF (CRAFT)", "sae": "sparse autoencoder (TopK)", "pca": "PCA"}.get)
    lim = dd.CONCEPT_LIMITS
    n = int(l2.number_input("Concepts", lim["n_concepts"][0], 64, 8, key="cc_n"))
    max_images = int(l3.number_input("Max images (0 = all)", 0, lim["max_images"][1], 0, key="cc_max"))
    seed = int(l4.number_input("Seed", 0, 2**31 - 1, 0, key="cc_seed"))
    with common.friendly("Cannot learn these concepts"):
        spec = dd.ConceptJobSpec(run=run_name, layer=layer, method=method, n_concepts=n,
                                 max_images=max_images or None, seed=seed)
        target = dd.concepts_path(spec, roots)
        if target.is_file():
            file = target
            st.caption(f"Learned before, saved in the run folder: `{target.relative_to(roots.runs).as_posix()}`.")
        elif st.session_state.get("cc_learn_watch") is None:
            if st.button(f"Learn {n} {method.upper()} concepts of {layer}", key="cc_learn", type="primary",
                         help="A background job (the job queue of the Data and jobs page): the page stays usable."):
                try:
                    st.session_state["cc_learn_watch"] = queue.submit(spec).id
                except dd.JobRefused as exc:
                    st.error(f"Not queued: {exc}", icon=":material/error:")
    jobs_panel("cc_learn_watch", f"Learning {method.upper()} concepts of {layer}")
else:
    files = dd.list_concept_files(roots)
    picked = st.selectbox("Concepts file", files or ["(none under the runs / checkpoints roots)"], key="cc_file")
    typed = st.text_input("…or a path under the runs root (checkpoints:PATH under the checkpoints root)",
                          key="cc_file_text")
    choice = typed.strip() or (picked if files else None)
    if choice:
        with common.friendly("Cannot open the concepts file"):
            _, file = dd.load_concepts_file(roots, choice)

if file is None:
    st.stop()
concepts = common.concepts_file(str(file), fmtime(file))
facts = dd.concepts_facts(concepts)
if concepts.layer != layer and concepts.layer in layers:
    st.info(f"These concepts are of {concepts.layer}, not {layer}: shown for {concepts.layer}.")
if concepts.layer not in layers:
    st.error(f"These concepts are of {concepts.layer!r}, a layer this run did not mine "
             f"({', '.join(layers)}).", icon=":material/error:")
    st.stop()
st.caption(f"**{facts['n_concepts']} {facts['method']} concepts** of {facts['layer']} "
           f"({facts['channels']} channels), `{file.name}`; mined as layer `{facts['result_layer']}`.")

# ---------------------------------------------------------------- the run mined with them
mined_run, mined_layer = None, dd.concept_layer(run, concepts)
if mined_layer is not None:
    mined_run = run
else:
    with common.friendly("Cannot set up mining with these concepts"):
        mine_spec = dd.concept_mining_spec(run, file, roots)
        folder = dd.find_job(mine_spec, roots)
        if folder is not None:
            mined_run = common.cached_run(str(folder), (folder / "result.pt").stat().st_mtime)
            mined_layer = dd.concept_layer(mined_run, concepts)
            st.caption(f"Top-k patches from `{folder.relative_to(roots.runs).as_posix()}` (this run mined again "
                       "with the concepts beside the channels).")
        else:
            st.info("This run was not mined with these concepts: their top-k patches need a mining pass with them "
                    "beside the channels (a new run folder).", icon=":material/info:")
            if st.session_state.get("cc_mine_watch") is None and st.button(
                    "Mine the run again with these concepts", key="cc_mine"):
                try:
                    st.session_state["cc_mine_watch"] = queue.submit(mine_spec).id
                except dd.JobRefused as exc:
                    st.error(f"Not queued: {exc}", icon=":material/error:")
            jobs_panel("cc_mine_watch", "Mining with the concepts")

# ---------------------------------------------------------------- gallery
st.subheader("Gallery")
K = concepts.n_concepts
per_page = 8
n_pages = (K + per_page - 1) // per_page
if st.session_state.get("cc_page", 1) > n_pages:
    st.session_state["cc_page"] = 1
page = int(st.number_input(f"Page (1-{n_pages}, {per_page} concepts each)", 1, n_pages, key="cc_page"))
shown_idx = list(range((page - 1) * per_page, min(K, page * per_page)))
fkey = (str(file), fmtime(file))
vis = {}
with common.friendly("Cannot read the visualizations"):
    vis = common.concept_visualizations(path, mtime, *fkey, tuple(shown_idx), False)
    missing = [i for i in shown_idx if i not in vis]
    if missing and st.button(f"Visualize the {len(missing)} concepts of this page not done yet "
                             f"(about {5 * len(missing)} s on a 2-core CPU)", key="cc_vis"):
        bar = st.progress(0.0, text="Optimising images along the directions...")
        vis = dd.concept_visualizations(run, concepts, shown_idx, compute=True,
                                        progress=lambda d, t: bar.progress(d / t, text=f"Optimised {d}/{t} concepts"))
        common.concept_visualizations.clear()
        bar.empty()
labels = concepts.labels or [None] * K
cols = st.columns(2)
for j, i in enumerate(shown_idx):
    with cols[j % 2]:
        st.markdown(f"**concept {i}**" + (f" · {labels[i]}" if labels[i] else ""))
        left, right = st.columns([1, 1.6])
        if i in vis:
            left.image(vis[i], caption="optimised along the direction", width="stretch")
        else:
            left.info("not visualized yet")
        if mined_run is not None and mined_layer is not None:
            mpath, mmtime = common.run_key(mined_run)
            tiles, recs = common.patches(mpath, mmtime, mined_layer, i, "top", 9)
            right.image(dd.tile_grid(tiles, [f"{r.value:.2f}" for r in recs], target_px=56), width="stretch",
                        caption=f"dataset top-{len(recs)} (parts of real images)")
        else:
            right.caption("top-9 patches: mine the run with these concepts")

# ---------------------------------------------------------------- one concept in depth
st.subheader("Importance and heatmaps")
d1, d2, d3 = st.columns(3)
cats = run.categories
n_classes = len(cats) if cats else None
if n_classes:
    target = d1.selectbox("Class", list(range(n_classes)), key="cc_class", format_func=lambda c: f"{c}: {cats[c]}")
else:
    target = int(d1.number_input("Class index", 0, 100_000, 0, key="cc_class_idx"))
imp_images = int(d2.number_input("Images for the importance", 1, 1024, 32, key="cc_imp_images"))
concept = int(d3.number_input(f"Concept for the heatmaps (0-{K - 1})", 0, K - 1, 0, key="cc_concept"))
with common.friendly("Cannot compute the importance"):
    scores = common.concept_importance(path, mtime, *fkey, int(target), imp_images)
    st.bar_chart(pd.DataFrame({"importance": scores}, index=[f"concept {i}" for i in range(K)]),
                 horizontal=True, height=min(600, 40 + 22 * K))
    order = sorted(range(K), key=lambda i: -scores[i])
    st.caption(f"Gradient x concept activation toward class {target} (CRAFT), averaged over the first "
               f"{min(imp_images, len(run.dataset))} images; most important: "
               + ", ".join(f"concept {i} ({scores[i]:+.3g})" for i in order[:3]) + ".")
with common.friendly("Cannot draw the heatmaps"):
    positions = list(range(min(4, len(run.dataset))))
    where = "the run's first images"
    if mined_run is not None and mined_layer is not None:
        ids = [r.image_id for r in mined_run.result.records(mined_layer, concept, "top")[:4]]
        if ids and all(i is not None for i in ids):
            positions, where = [run.dataset.index_of(i) for i in ids], "the concept's top images"
    maps = common.concept_heatmaps(path, mtime, *fkey, concept, tuple(positions))
    st.image(list(maps), width=160, caption=[f"image {p}" for p in positions])
    st.caption(f"Concept {concept} on {where} (its activation upsampled to the image; one colour scale).")

# ---------------------------------------------------------------- matching
st.subheader("Matching two sets of concepts")
st.caption("E.g. the concepts of a pretrained model (A: these) and of its fine-tuned checkpoint (B): matched one to "
           "one (Hungarian) by the cosine of the directions or by the correlation of the concept activations "
           "over run A's images; kept (similarity >= 0.5), dropped (A's without a match), created (B's).")
files = [f for f in dd.list_concept_files(roots)]
m1, m2, m3 = st.columns(3)
file_b = m1.selectbox("Concepts B", files, key="cc_match_b")
runs = [e.name for e in dd.list_runs(roots.runs)]
run_b_name = m2.selectbox("Run B (its model encodes B)", runs, key="cc_match_run_b",
                          index=runs.index(run_name) if run_name in runs else 0)
by = m3.radio("By", ["cosine", "correlation"], horizontal=True, key="cc_match_by")
if file_b and st.button("Match", key="cc_match"):
    st.session_state["cc_match_on"] = True
if file_b and st.session_state.get("cc_match_on"):
    with common.friendly("Cannot match the concepts"):
        _, fb = dd.load_concepts_file(roots, file_b)
        rb = None
        if by == "correlation":
            folder_b = dd.resolve_under(roots.runs, run_b_name, kind="dir")
            rb = (str(folder_b), (folder_b / "result.pt").stat().st_mtime)
        summary, rows = common.concept_matching(*fkey, str(fb), fmtime(fb), by,
                                                (path, mtime) if by == "correlation" else None, rb)
        st.markdown(f"**{len(summary['kept'])} kept, {len(summary['dropped'])} dropped, "
                    f"{len(summary['created'])} created** (mean similarity {summary['mean_similarity']:.3f}).")
        st.dataframe(pd.DataFrame(rows), hide_index=True)
