"""Microscope: a layer as a paged grid of channels, each with its feature visualization (an image
optimised for it: a sample from the model) beside its dataset top-9 (parts of real images)."""

import math

import streamlit as st

import _common as common
from captum_topk import dashboard as dd

run = common.current_run()
path, mtime = common.run_key(run)
result = run.result

st.title("Microscope")
st.caption(run.describe() + ". Each channel: the image optimised to drive it (Fourier parametrization, "
           "decorrelated colours, robustness transforms, 256 Adam steps; cached in the run folder) beside "
           "the parts of real images that drive it most.")
if run.model is None:
    st.info("Feature visualization needs the PyTorch model; this run is of an ONNX file. Open a run of the "
            "same model mined with PyTorch (or with the Auto backend).")
    st.stop()

c1, c2 = st.columns([2, 1])
layer = c1.selectbox("Layer", run.layers, key="micro_layer")
n_ch = result.num_channels(layer)
per_page = 8
n_pages = math.ceil(n_ch / per_page)
if st.session_state.get("micro_page", 1) > n_pages:
    st.session_state["micro_page"] = 1
page = int(c2.number_input(f"Page (1-{n_pages}, {per_page} channels each)", 1, n_pages, key="micro_page"))
chans = list(range((page - 1) * per_page, min(n_ch, page * per_page)))

with common.friendly("Cannot read the visualizations"):
    shown = common.visualizations(path, mtime, layer, tuple(chans), False)
    missing = [c for c in chans if c not in shown]
    if missing and st.button(f"Visualize the {len(missing)} channels of this page not done yet "
                             f"(about {5 * len(missing)} s on a 2-core CPU)", key="micro_compute", type="primary"):
        bar = st.progress(0.0, text="Optimising images...")
        shown = dd.channel_visualizations(common.cached_run(path, mtime), layer, chans, compute=True,
                                          progress=lambda d, t: bar.progress(d / t, text=f"Optimised {d}/{t} channels"))
        common.visualizations.clear()
        bar.empty()
    cols = st.columns(2)
    for i, c in enumerate(chans):
        with cols[i % 2]:
            st.markdown(f"**channel {c}**")
            left, right = st.columns([1, 1.6])
            if c in shown:
                left.image(shown[c], caption="optimised (a sample from the model)", width="stretch")
            else:
                left.info("not visualized yet")
            tiles, recs = common.patches(path, mtime, layer, c, "top", result.k)
            right.image(dd.tile_grid(tiles, [f"{r.value:.2f}" for r in recs], target_px=56), width="stretch",
                        caption=f"dataset top-{len(recs)} (parts of real images)")
