"""Embeddings: 2-D PCA of a layer's global-average-pooled activations, coloured by label."""

import plotly.graph_objects as go
import streamlit as st

import _common as common
from captum_topk import dashboard as dd

run = common.current_run()
path, mtime = common.run_key(run)
st.title("Embeddings")
st.caption(run.describe())

c1, c2 = st.columns([2, 2])
layers = run.layers
common.from_query("emb_layer", "layer", layers)
if st.session_state.get("emb_layer") not in layers:
    st.session_state["emb_layer"] = layers[-1]
layer = c1.selectbox("Layer", layers, key="emb_layer")
show_thumbs = c2.toggle("Thumbnails on the map", value=True, key="emb_thumbs",
                        help="Draw each image at its point (up to 120 images).")
try:
    emb, ids, labels = common.embeddings(path, mtime, layer)
except Exception as exc:
    st.error(f"Cannot embed {layer}: {exc}", icon=":material/error:")
    st.stop()
xy, var = dd.pca_2d(emb)
names = [run.label_name(v) for v in labels]

fig = go.Figure()
palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d"]
groups = sorted(set(names), key=lambda n: (n == "unlabelled", n.lower()))
for g, name in enumerate(groups):
    idx = [i for i, n in enumerate(names) if n == name]
    fig.add_trace(go.Scatter(
        x=xy[idx, 0], y=xy[idx, 1], mode="markers", name=name,
        marker=dict(size=8, color="#bbbbbb" if name == "unlabelled" else palette[g % len(palette)],
                    line=dict(width=1, color="white")),
        customdata=[[i, ids[i]] for i in idx],
        hovertemplate="%{customdata[1]}<br>" + name + "<extra></extra>"))
if show_thumbs and len(ids) <= 120:
    thumbs = common.thumbnails(path, mtime, tuple(ids), 48)
    span = max(float(xy[:, 0].max() - xy[:, 0].min()), float(xy[:, 1].max() - xy[:, 1].min()), 1e-6)
    for (x, y), src in zip(xy, thumbs):
        fig.add_layout_image(dict(source=src, x=x, y=y, xref="x", yref="y", sizex=span * 0.08, sizey=span * 0.08,
                                  xanchor="center", yanchor="middle", layer="below", opacity=0.9))
fig.update_layout(height=560, margin=dict(l=10, r=10, t=10, b=10), legend_title_text="label",
                  xaxis_title=f"PC 1 ({100 * var[0]:.1f} % of variance)",
                  yaxis_title=f"PC 2 ({100 * var[1]:.1f} % of variance)")
fig.update_yaxes(scaleanchor="x", scaleratio=1)
event = st.plotly_chart(fig, key="emb_chart", on_select="rerun", selection_mode="points")
st.caption(f"{len(ids)} images, {emb.shape[1]} channels of {layer} averaged over positions, projected on their "
           f"first two principal components ({100 * (var[0] + var[1]):.1f} % of the variance). "
           "Click a point (or pick an image below) to see it and its nearest neighbours.")

picked = None
points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
    (event.selection.points if event is not None and hasattr(event, "selection") else [])
if points and points[0].get("customdata"):
    picked = int(points[0]["customdata"][0])
if picked is not None:
    st.session_state["emb_image"] = ids[picked]
if st.session_state.get("emb_image") not in ids:
    st.session_state["emb_image"] = ids[0]
image_id = st.selectbox("Image", ids, key="emb_image", format_func=lambda i: f"{i} ({names[ids.index(i)]})")
i = ids.index(image_id)
near = dd.nearest_neighbours(emb, i, 5)
cols = st.columns(6)
big = common.thumbnails(path, mtime, tuple([ids[i]] + [ids[j] for j, _ in near]), 160, False)
cols[0].image(big[0])
cols[0].caption(f"**{ids[i]}** ({names[i]})")
for col, (j, sim), src in zip(cols[1:], near, big[1:]):
    col.image(src)
    col.caption(f"{ids[j]} · cos {sim:.2f}")
