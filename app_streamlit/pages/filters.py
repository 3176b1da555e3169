"""Filters: layer-1 filter tiles (Zeiler & Fergus Fig. 2) and any convolution's per-channel views."""

import plotly.graph_objects as go
import streamlit as st

import _common as common
from captum_topk import dashboard as dd

run = common.current_run()
path, mtime = common.run_key(run)
st.title("Filters")
st.caption(run.describe())
if run.model is None:
    st.info("Filters are read from the PyTorch model's weights; this run was mined through ONNX Runtime. "
            "Pick a PyTorch run of the same model in the sidebar.")
    st.stop()

convs = dd.conv_layers(run.model)
if not convs:
    st.info("This model has no nn.Conv2d layer.")
    st.stop()
c1, c2 = st.columns([3, 2])
common.from_query("filters_layer", "layer", convs)
if st.session_state.get("filters_layer") not in convs:
    st.session_state["filters_layer"] = convs[0]
layer = c1.selectbox("Convolution", convs, key="filters_layer",
                     format_func=lambda n: f"{n} (layer 1)" if n == convs[0] else n)
mode = c2.radio("View", ["auto", "rgb", "mean", "norm"], horizontal=True, key="filters_mode",
                help="rgb: each filter as an RGB tile (3 input channels only); mean: the kernel averaged "
                     "over input channels (blue < 0 < red); norm: L2 norm of every (output, input) kernel.")

try:
    view = common.filter_view(path, mtime, layer, mode)
except Exception as exc:
    st.error(f"Cannot draw {layer} as '{mode}': {exc}", icon=":material/error:")
    st.stop()

out_c, in_c, kh, kw = view["shape"]
img = view["image"]
left, right = st.columns([3, 2])
with left:
    px = max(1, min(24, 640 // max(img.shape[:2])))  # screen pixels per weight
    fig = go.Figure(go.Image(z=img, hovertext=view["hover"], hoverinfo="text"))
    fig.update_layout(width=img.shape[1] * px + 20, height=img.shape[0] * px + 20,
                      margin=dict(l=10, r=10, t=10, b=10))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    st.plotly_chart(fig, width="content", key="filters_image")
    what = {
        "rgb": "each tile is one filter's 3 input channels shown as RGB, min-max stretched on its own",
        "mean": "each tile is one filter averaged over its input channels: blue negative, white 0, red "
                "positive, scaled per filter",
        "norm": "row = output channel, column = input channel (within its group); colour = L2 norm of "
                "that kernel, scaled per row",
    }[view["mode"]]
    st.caption(f"{layer}: {out_c} filters of {in_c}x{kh}x{kw} ({view['mode']} view: {what}). "
               "Hover for the channel and its norm.")
with right:
    st.subheader("Filter norms")
    norms = view["l2_norm"]
    fig = go.Figure(go.Bar(x=list(range(len(norms))), y=norms, marker_color="#4c78a8",
                           hovertemplate="channel %{x}<br>‖w‖ = %{y:.3f}<extra></extra>"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="output channel",
                      yaxis_title="L2 norm of the filter")
    st.plotly_chart(fig, key="filters_norms", config={"displayModeBar": False})
    strongest = sorted(range(len(norms)), key=lambda i: -norms[i])[:5]
    st.caption("Largest norms: " + ", ".join(f"channel {i} ({norms[i]:.3f})" for i in strongest))
