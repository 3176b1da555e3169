"""Top-k patches: a channel's top-9 patches with values, projections, histogram, classes, source."""

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import _common as common
from captum_topk import dashboard as dd

run = common.current_run()
path, mtime = common.run_key(run)
result = run.result

st.title("Top-k patches")
st.caption(run.describe())

common.from_query("topk_layer", "layer", run.layers)
common.from_query("topk_channel", "channel", None, int)
common.from_query("topk_rank", "rank", None, int)
c1, c2, c3, c4, c5 = st.columns([2, 1.4, 1.4, 1.6, 1.8])
layer = c1.selectbox("Layer", run.layers, key="topk_layer",
                     help="Mined layers of this run; mine others on the Data and jobs page.")
n_ch = result.num_channels(layer)
if st.session_state.get("topk_channel", 0) >= n_ch:
    st.session_state["topk_channel"] = 0
channel = int(c2.number_input(f"Channel (0-{n_ch - 1})", 0, n_ch - 1, step=1, key="topk_channel"))
which = c3.radio("Records", ["top", "bottom"], horizontal=True, key="topk_which",
                 help="top: the strongest activations; bottom: the most negative ones.")
view = c4.radio("View", ["One channel", "Grid of channels"], key="topk_view")
methods = ["guided_backprop", "deconvolution", "none"] if run.model is not None else ["none"]
if st.session_state.get("topk_projection") not in methods:
    st.session_state["topk_projection"] = methods[0]
method = c5.selectbox("Projection (Captum)", methods, key="topk_projection",
                      help="Zeiler & Fergus deconvnet (NeuronDeconvolution) or guided backprop of "
                           "each top-k neuron, cropped like its patch. Needs the PyTorch model.")


def _open_channel() -> None:
    st.session_state["topk_channel"] = int(st.session_state["topk_grid_pick"])
    st.session_state["topk_view"] = "One channel"


if view == "Grid of channels":
    per_page = 32
    n_pages = math.ceil(n_ch / per_page)
    if st.session_state.get("topk_page", 1) > n_pages:
        st.session_state["topk_page"] = 1
    page = st.number_input(f"Channels page (1-{n_pages}, {per_page} channels each)", 1, n_pages,
                           key="topk_page")
    chans = tuple(range((page - 1) * per_page, min(n_ch, page * per_page)))
    with common.friendly("Cannot draw the channel grid"):
        grid, shown = common.top1_grid(path, mtime, layer, chans, which)
        st.image(grid, caption=f"{layer}: the {which}-1 patch of channels {chans[0]}-{chans[-1]} "
                               "('channel: activation' under each), resized to 64 px.")
        g1, g2 = st.columns([1, 3])
        g1.selectbox("Open channel", shown, key="topk_grid_pick")
        g2.button("Show this channel", on_click=_open_channel, key="topk_open")
    st.stop()

try:
    tiles, recs = common.patches(path, mtime, layer, channel, which, result.k)
except Exception as exc:
    st.error(f"Cannot crop the patches of {layer} channel {channel}: {exc}", icon=":material/error:")
    st.stop()
if not recs:
    st.warning("This channel has no record (no image was mined?).")
    st.stop()

rf = result.receptive_fields.get(layer, {})
rf_size = next(iter(rf.values())).size if rf else None
box_kind = result.box_kind(layer)
box_words = {
    "receptive_field": (f"Each crop is the exact receptive field ({rf_size[0]}x{rf_size[1]} px of the "
                        f"{run.info.input_size[0]} px input; black = outside the image)") if rf_size else "",
    "token": (f"Each crop is the token's patch footprint ({rf_size[0]}x{rf_size[1]} px): after global "
              "attention a token's receptive field is the whole image, so see the activation maps below"
              ) if rf_size else "",
    "image": "Each crop is the whole image (a vector layer or a class / register token)",
}[box_kind]
left, mid, right = st.columns([3, 3, 4])
with left:
    st.subheader(f"{which}-{len(recs)} patches")
    st.image(dd.tile_grid(tiles, [f"{r.value:.3f}" for r in recs]), width="stretch")
    st.caption(
        f"Channel {channel} of {layer}: the {len(recs)} {'strongest' if which == 'top' else 'most negative'} "
        f"activations over {result.n_images} images, one per image ({result.layout(layer)} layer). "
        + box_words + "; the number is the activation at that position.")
proj_slot = mid.container()

with right:
    st.subheader("Source image")
    if st.session_state.get("topk_rank", 0) >= len(recs):
        st.session_state["topk_rank"] = 0
    rank = st.radio("Patch", list(range(len(recs))), horizontal=True, key="topk_rank",
                    format_func=lambda i: f"#{i + 1}", help="Which patch to show in its whole image.")
    rec = recs[rank]
    with common.friendly("Cannot show the source image"):
        st.image(common.record_image(path, mtime, layer, channel, which, rank), width=320)
        top, lft, bottom, rgt = rec.box
        st.caption(f"#{rank + 1}: **{rec.image_id or rec.index}** ({run.label_name(rec.label)}), "
                   f"activation {rec.value:.3f} at output position (y={rec.y}, x={rec.x}); the yellow box "
                   f"is its {'patch footprint' if box_kind == 'token' else 'receptive field'}, "
                   f"rows {top}-{bottom - 1}, columns {lft}-{rgt - 1} of the model input "
                   f"(resized and centre-cropped to {run.info.input_size[0]}x{run.info.input_size[1]}).")

if run.model is not None:
    st.subheader("Feature visualization")
    with common.friendly("Cannot show the feature visualization"):
        vis = common.visualizations(path, mtime, layer, (channel,), False)
        if channel not in vis and st.button(f"Optimise an image for channel {channel} (about 5 s)", key="topk_vis"):
            with st.spinner("Optimising an image for the channel (256 Adam steps)..."):
                vis = dd.channel_visualizations(common.cached_run(path, mtime), layer, [channel])
            common.visualizations.clear()
        if channel in vis:
            v1, v2 = st.columns([1, 3])
            v1.image(vis[channel], width="stretch")
            v2.caption("A sample *from the model*: an image optimised to drive this channel (Fourier "
                       "parametrization with 1/f scaling, decorrelated colours, random pad / jitter / scale / "
                       "rotation at every step, Adam), beside the *parts of real images* above. The Microscope "
                       "page shows a whole layer this way.")

st.subheader("Activation maps")
with common.friendly("Cannot draw the activation maps"):
    maps = common.overlays(path, mtime, layer, channel, which, result.k)
    st.image(dd.tile_grid(maps, [f"#{i + 1}" for i in range(len(maps))], target_px=140), width="stretch")
    thresholded = layer in result.channel_stats
    st.caption(f"The channel's whole activation map on each image ({'tokens' if box_kind == 'token' else 'positions'} "
               "upsampled to the input)" + (", lit where it exceeds the channel's top 0.5 % over the dataset "
                                           "(NetDissect's threshold, from the mined histogram), dimmed elsewhere."
                                           if thresholded else "; mine with statistics to threshold it."))

table = pd.DataFrame({
    "rank": [r.rank + 1 for r in recs],
    "activation": [round(r.value, 4) for r in recs],
    "image": [r.image_id or str(r.index) for r in recs],
    "label": [run.label_name(r.label) for r in recs],
    "position (y, x)": [f"({r.y}, {r.x})" for r in recs],
    "box (top, left, bottom, right)": [str(tuple(r.box)) for r in recs],
})

h_col, c_col = st.columns([3, 2])
with h_col:
    st.subheader("Activation histogram")
    hist = common.histogram(path, mtime, layer, channel)
    if hist is None:
        st.info("This run was mined without per-channel statistics (e.g. by `captum-topk mine`); "
                "mine it again on the Data and jobs page to see the histogram.")
    else:
        centers = (hist["edges"][:-1] + hist["edges"][1:]) / 2
        fig = go.Figure(go.Bar(x=centers, y=hist["counts"], width=hist["edges"][1:] - hist["edges"][:-1],
                               marker_color="#4c78a8",
                               hovertemplate="[%{x:.2f}]: %{y} positions<extra></extra>"))
        fig.add_vline(x=recs[-1].value, line_dash="dash", line_color="#e45756",
                      annotation_text=f"{which}-{len(recs)}", annotation_position="top left")
        log = st.toggle("log scale", value=True, key="topk_log")
        fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), bargap=0,
                          xaxis_title="activation", yaxis_title="positions", yaxis_type="log" if log else "linear")
        if log:
            fig.update_yaxes(dtick=1)
        st.plotly_chart(fig, key="topk_hist", config={"displayModeBar": False})
        m1, m2, m3 = st.columns(3)
        m1.metric("mean", f"{hist['mean']:.3f}")
        m2.metric("fraction > 0", f"{100 * hist['fraction_positive']:.1f} %")
        m3.metric("max", f"{hist['max']:.3f}")
        st.caption(f"Over all {hist['count']:,} positions (images x output positions) of {hist['n_images']} images; "
                   f"{hist['underflow'] + hist['overflow']:,} fell outside the bins shown.")
with c_col:
    st.subheader("Which classes drive it")
    cls = common.classes(path, mtime, layer, channel, which)
    if not cls:
        st.info(f"None of the {len(recs)} images carries a label.")
    else:
        n_lab = sum(1 for r in recs if r.label >= 0)
        fig = go.Figure(go.Bar(x=[c for _, c in cls][::-1], y=[n for n, _ in cls][::-1], orientation="h",
                               marker_color="#72b7b2", hovertemplate="%{y}: %{x}<extra></extra>"))
        fig.update_layout(height=220, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="images among the top-k",
                          xaxis_dtick=1)
        st.plotly_chart(fig, key="topk_classes", config={"displayModeBar": False})
        st.caption(f"Labels of the {n_lab} labelled images among the {len(recs)} (the others have none).")
st.dataframe(table, hide_index=True)

# Projections last: the patches above are on screen while Captum runs.
with proj_slot:
    st.subheader("Projections")
    if method == "none":
        st.info("Projections need the PyTorch model." if run.model is None else "Projections are off.")
    else:
        try:
            rgb = common.projections(path, mtime, layer, channel, method, which, result.k)
            st.image(dd.tile_grid(rgb, [f"#{i + 1}" for i in range(len(rgb))]), width="stretch")
            st.caption(f"Captum {'NeuronDeconvolution' if method == 'deconvolution' else 'NeuronGuidedBackprop'} "
                       "of each neuron above, cropped like its patch: grey = 0, brighter = positive evidence."
                       + (" Without max-pooling switches (MobileNet, EfficientNet) the deconvnet barely "
                          "depends on the image: guided backprop shows more." if method == "deconvolution" else ""))
        except Exception as exc:
            st.error(f"Cannot compute the projections: {exc}", icon=":material/error:")
