"""Data and jobs: runs on disk, and new mining jobs with a live progress bar (cached on disk)."""

import pandas as pd
import streamlit as st

import _common as common
from captum_topk import dashboard as dd
from captum_topk.models import list_models

roots = common.sidebar(mine_default=False)
st.title("Data and jobs")

st.subheader("Runs on disk")
entries = dd.list_runs(roots.runs)
if entries:
    st.dataframe(pd.DataFrame({
        "run": [e.name for e in entries],
        "model": [e.model + (f" + {e.checkpoint.split('/')[-1]}" if e.checkpoint else "") for e in entries],
        "backend": [e.backend for e in entries],
        "data": [e.data for e in entries],
        "layers": [", ".join(e.layers) for e in entries],
        "images": [e.n_images for e in entries],
        "statistics": [e.stats for e in entries],
        "problem": [e.error or "" for e in entries],
    }), hide_index=True)
else:
    st.info(f"No run under {roots.runs} yet.")
st.caption(f"Runs root: `{roots.runs}`. A job with the same settings as a finished run reuses it.")

st.subheader("New mining job")
DEMO = "(packaged photos)"
c1, c2 = st.columns(2)
with c1:
    folders = dd.list_data_folders(roots.data)
    data_pick = st.selectbox("Images", [DEMO] + folders, key="jobs_data",
                             help=f"Folders under the data root {roots.data} (class sub-folders give labels).")
    data_text = st.text_input("…or a folder under the data root", key="jobs_data_text",
                              placeholder="e.g. my_photos or imagenet/val")
with c2:
    err = dd.onnx_available()
    SOURCES = {"Built-in": "builtin", "Checkpoint": "checkpoint", "timm": "timm", "Hugging Face folder": "hf",
               "Python factory": "factory", "ONNX file": "onnx"}
    sources = [s for s, kind in SOURCES.items() if kind != "onnx" or err is None]
    source = SOURCES[st.radio("Model", sources, horizontal=True, key="jobs_source")]
    if err is not None:
        st.caption(err)

checkpoint = onnx_file = None
model = dd.DEFAULT_MODEL
m1, m2 = st.columns(2)
NO_CKPT = "(random weights)"
if source == "builtin":
    model = m1.selectbox("Built-in model", list_models(), key="jobs_builtin")
elif source == "checkpoint":
    files = dd.list_files(roots.checkpoints, dd.CHECKPOINT_EXTENSIONS)
    picked = m1.selectbox("Checkpoint", files or ["(none under the checkpoints root)"], key="jobs_ckpt")
    typed = m1.text_input("…or a path under the checkpoints root", key="jobs_ckpt_text")
    checkpoint = typed.strip() or (picked if files else None)
    archs = ["(recorded in the checkpoint)"] + list_models() + \
        ["resnet18", "resnet34", "resnet50", "vgg16", "alexnet", "mobilenet_v2", "efficientnet_b0", "densenet121"]
    arch = m2.selectbox("Architecture", archs, key="jobs_arch",
                        help="A built-in name keeps its preprocessing and takes the checkpoint's weights.")
    model = "" if arch == archs[0] else arch
elif source == "timm":
    name = m1.text_input("timm architecture", "resnet18d", key="jobs_timm",
                         help="Any name of timm.list_models(), built with pretrained=False (nothing is downloaded).")
    files = dd.list_files(roots.checkpoints, dd.CHECKPOINT_EXTENSIONS)
    picked = m1.selectbox("Weights", [NO_CKPT] + files, key="jobs_timm_ckpt",
                          help=".safetensors, .pth or a timm training checkpoint under the checkpoints root.")
    model, checkpoint = f"timm:{name.strip()}", (None if picked == NO_CKPT else picked)
elif source == "hf":
    folders = dd.list_model_folders(roots.checkpoints)
    picked = m1.selectbox("save_pretrained folder", folders or ["(none under the checkpoints root)"], key="jobs_hf",
                          help="A folder with config.json and model.safetensors under the checkpoints root.")
    typed = m1.text_input("…or a folder under the checkpoints root", key="jobs_hf_text")
    folder = typed.strip() or (picked if folders else "")
    if not folder:
        st.info("No save_pretrained folder under the checkpoints root yet.", icon=":material/info:")
        st.stop()
    model = f"hf:{folder}"
elif source == "factory":
    factories = dd.allowed_factories()
    if factories:
        model = m1.selectbox("Factory", factories, key="jobs_factory",
                             help="package.module:factory, a callable returning an nn.Module.")
        files = dd.list_files(roots.checkpoints, dd.CHECKPOINT_EXTENSIONS)
        picked = m1.selectbox("Weights", ["(the factory's own)"] + files, key="jobs_factory_ckpt")
        checkpoint = None if picked == "(the factory's own)" else picked
    else:
        st.info(f"No model factory is allowed here: building one runs Python code. Start the dashboard with "
                f"{dd.FACTORIES_ENV}=package.module:factory (comma-separated) to offer them.",
                icon=":material/info:")
        st.stop()
else:
    files = dd.list_files(roots.onnx, [".onnx"])
    picked = m1.selectbox("ONNX file", files or ["(none under the onnx root)"], key="jobs_onnx")
    typed = m1.text_input("…or a path under the onnx root", key="jobs_onnx_text")
    onnx_file = typed.strip() or (picked if files else None)

BACKENDS = {"Auto": "auto", "PyTorch": "torch", "ONNX Runtime": "onnxruntime"}
backends = list(BACKENDS) if source != "onnx" else ["ONNX Runtime"]
if dd.onnx_available() is not None:
    backends = ["PyTorch"]
backend = BACKENDS[m2.radio("Backend", backends, horizontal=True, key="jobs_backend",
                            help="Auto: ONNX Runtime on CPU when the model exports faithfully (checked "
                                 "against PyTorch on real photos; the export is cached under the onnx root), "
                                 "else PyTorch. Same records up to float ties; projections still use the PyTorch model.")]

o1, o2, o3, o4 = st.columns(4)
LIM = dd.LIMITS
k = int(o1.number_input("k (records per channel)", LIM["k"][0], LIM["k"][1], 9, key="jobs_k"))
batch = int(o2.number_input("Batch size", LIM["batch_size"][0], LIM["batch_size"][1], 16, key="jobs_batch"))
max_images = int(o3.number_input("Max images (0 = all)", 0, LIM["max_images"][1], 0, key="jobs_max"))
input_size = int(o4.number_input("Input size px (0 = the model's)", 0, LIM["input_size"][1], 0, key="jobs_size"))

data = None if not data_text.strip() and data_pick == DEMO else (data_text.strip() or data_pick)
try:
    base = dd.JobSpec(model=model, checkpoint=checkpoint, onnx=onnx_file, data=data, k=k, batch_size=batch,
                      input_size=input_size or None, max_images=max_images or None, backend=backend)
    if data is not None:
        dd.resolve_under(roots.data, data, kind="dir")
    options = common.job_layers(base, roots)
except Exception as exc:
    st.error(f"Cannot use this model / data: {exc}", icon=":material/error:")
    st.stop()
suggested = dd.suggest_layers(options, model=None if base.onnx else common.job_model(base, roots)[0])
layers = st.multiselect("Layers", options, default=suggested, max_selections=LIM["layers"][1],
                        key=f"jobs_layers_{base.model}_{base.checkpoint}_{base.onnx}")
spec = dd.JobSpec(**{**base.to_dict(), "layers": tuple(layers)}) if layers else None

queue = dd.job_queue(roots)
done = dd.find_job(spec, roots) if spec is not None else None
if done is not None:
    st.success(f"Already mined, cached on disk: `{done.relative_to(roots.runs).as_posix()}`.")
if st.button("Mine", type="primary", key="jobs_mine", disabled=spec is None,
             help="Queued and mined in the background, one job at a time per runs root: the "
                  "other pages stay usable meanwhile."):
    try:
        job = queue.submit(spec)
        st.session_state["jobs_watch"] = job.id
    except dd.JobRefused as exc:
        st.error(f"Not queued: {exc}", icon=":material/error:")


@st.fragment(run_every=1.0)
def jobs_panel() -> None:
    jobs = queue.jobs()
    if not jobs:
        return
    st.subheader("Jobs")
    for job in jobs[:8]:
        name = job.spec.run_name()
        if job.status == "running":
            text = f"{name}: {job.phase} {job.done}/{job.total or '?'} images" if job.total else f"{name}: {job.phase}..."
            c1, c2 = st.columns([5, 1])
            c1.progress(job.fraction, text=text)
            c2.button("Cancel", key=f"jobs_cancel_{job.id}", on_click=queue.cancel, args=(job.id,))
        elif job.status in ("queued", "waiting"):
            c1, c2 = st.columns([5, 1])
            c1.info(f"{name}: {job.status}" + (f" ({job.error})" if job.error else ""), icon=":material/schedule:")
            c2.button("Cancel", key=f"jobs_cancel_{job.id}", on_click=queue.cancel, args=(job.id,))
        elif job.status == "failed":
            what = "learning concepts" if isinstance(job.spec, dd.ConceptJobSpec) else "mining"
            st.error(f"{name}: {what} failed: {job.error}", icon=":material/error:")
        elif job.status == "cancelled":
            st.warning(f"{name}: cancelled (its snapshot is kept: mining it again resumes).", icon=":material/cancel:")
        else:
            run = job.folder.relative_to(roots.runs).as_posix() if job.folder else name
            verb = "Learned" if isinstance(job.spec, dd.ConceptJobSpec) else "Mined"
            st.success(f"{verb} `{run}`.", icon=":material/check_circle:")
            if st.session_state.get("jobs_watch") == job.id:
                st.session_state.pop("jobs_watch")
                st.session_state[common.RUN_REQUEST] = run
                st.session_state["jobs_last"] = run
                st.rerun()


jobs_panel()
if st.session_state.get("jobs_last"):
    st.success(f"Mined `{st.session_state['jobs_last']}`; it is now the run shown by the other pages.")
    st.page_link("pages/topk.py", label="Open it in Top-k patches", icon=":material/grid_view:")
