"""Compare two runs (pretrained vs fine-tuned by default, or any two models): same channel side by
side, layer similarity with chance baselines, matched units, channels ranked by change."""

import plotly.graph_objects as go
import streamlit as st

import _common as common
from captum_topk import dashboard as dd

roots = common.sidebar()
st.title("Compare")
entries = [e for e in dd.list_runs(roots.runs) if not e.error]
if not entries:
    st.info("No run yet: mine one on the Data and jobs page.")
    st.stop()
by_name = {e.name: e for e in entries}
names = list(by_name)

finetuned = dd.find_finetuned(roots)
a_default = st.session_state.get(common.RUN_KEY) if st.session_state.get(common.RUN_KEY) in by_name else names[0]
common.from_query("cmp_a", "a", names)
common.from_query("cmp_b", "b", names)
requested = st.session_state.pop("cmp_b_request", None)  # set after mining the fine-tuned checkpoint
if requested in by_name:
    st.session_state["cmp_b"] = requested
if st.session_state.get("cmp_a") not in by_name:
    st.session_state["cmp_a"] = a_default
if st.session_state.get("cmp_b") not in by_name:
    ft = finetuned and next((e.name for e in entries if e.checkpoint and e.checkpoint.endswith(finetuned)
                             and e.name != st.session_state["cmp_a"]), None)
    same_layers = next((e.name for e in entries if e.name != st.session_state["cmp_a"]
                        and e.layers == by_name[st.session_state["cmp_a"]].layers), None)
    st.session_state["cmp_b"] = ft or same_layers or next((n for n in names if n != st.session_state["cmp_a"]), names[0])

c1, c2 = st.columns(2)
name_a = c1.selectbox("Run A (before)", names, key="cmp_a", format_func=lambda n: by_name[n].label)
name_b = c2.selectbox("Run B (after)", names, key="cmp_b", format_func=lambda n: by_name[n].label)
try:
    run_a = common.cached_run(str(by_name[name_a].path), by_name[name_a].mtime)
    run_b = common.cached_run(str(by_name[name_b].path), by_name[name_b].mtime)
except Exception as exc:
    st.error(f"Cannot open the runs: {exc}", icon=":material/error:")
    st.stop()

# ---------------------------------------------------------------- the fine-tuned checkpoint
if finetuned is None:
    st.info(f"No fine-tuned checkpoint under {roots.checkpoints} (a `*finetuned*.pt` file, as "
            "`captum-topk finetune` writes). With one, this page compares it with its pretrained model "
            "by default; any two runs can be compared meanwhile.")
elif not any(e.checkpoint and e.checkpoint.endswith(finetuned) for e in entries):
    st.info(f"Fine-tuned checkpoint found: `{finetuned}`, not mined yet.")
    if st.button(f"Mine {finetuned} like run A", key="cmp_mine_ft"):
        bar = st.progress(0.0)
        with common.friendly("Mining the fine-tuned checkpoint failed"):
            folder = dd.mine_job(dd.like_run(run_a, finetuned, roots), roots,
                                 progress=common.progress_callback(bar, finetuned))
            st.session_state["cmp_b_request"] = folder.relative_to(roots.runs).as_posix()
            st.rerun()

if name_a == name_b:
    st.warning("Run A and run B are the same run: pick two different runs.")

# ---------------------------------------------------------------- side by side
st.subheader("The same channel in both runs")
common_layers = dd.matching_layers(run_a, run_b)
if not common_layers:
    st.info("The two runs have no layer whose channels correspond (different architectures, or no "
            "layer of the same name and width): the layer similarity and the matched units below compare them.")
else:
    s1, s2, s3 = st.columns([2, 2, 2])
    common.from_query("cmp_layer", "layer", common_layers)
    common.from_query("cmp_channel", "channel", None, int)
    if st.session_state.get("cmp_layer") not in common_layers:
        st.session_state["cmp_layer"] = common_layers[0]
    layer = s1.selectbox("Layer", common_layers, key="cmp_layer")
    n_ch = run_a.result.num_channels(layer)
    if st.session_state.get("cmp_channel", 0) >= n_ch:
        st.session_state["cmp_channel"] = 0
    channel = int(s2.number_input(f"Channel (0-{n_ch - 1})", 0, n_ch - 1, key="cmp_channel"))
    which = s3.radio("Records", ["top", "bottom"], horizontal=True, key="cmp_which")
    same_data = run_a.result.metadata.get("data") == run_b.result.metadata.get("data")
    if not same_data:
        st.caption(":material/warning: The two runs mined different images: their patches come from different datasets.")
    cols = st.columns(2)
    for col, run, tag in ((cols[0], run_a, "A"), (cols[1], run_b, "B")):
        with col:
            path, mtime = common.run_key(run)
            with common.friendly(f"Cannot crop the patches of run {tag}"):
                tiles, recs = common.patches(path, mtime, layer, channel, which, run.result.k)
                st.image(dd.tile_grid(tiles, [f"{r.value:.3f}" for r in recs]), width=min(420, 3 * 140))
                st.caption(f"Run {tag}: {run.describe()}")
                if same_data and tag == "B":
                    shared = dd.shared_images(run_a.result, run_b.result, layer, channel, which)
                    st.caption(f"{shared} of run A's {which}-{run_a.result.k} images are also among run B's.")
            if run.model is not None:
                with common.friendly(f"Cannot show run {tag}'s feature visualization"):
                    vis = common.visualizations(path, mtime, layer, (channel,), False)
                    if channel in vis:
                        st.image(vis[channel], width=180, caption=f"Run {tag}: an image optimised for channel {channel}")
    if all(r.model is not None for r in (run_a, run_b)) and st.button(
            f"Visualize channel {channel} in both models (optimisation, about 10 s)", key="cmp_vis"):
        with st.spinner("Optimising an image for the channel in each model..."):
            for run in (run_a, run_b):
                dd.channel_visualizations(common.cached_run(*common.run_key(run)), layer, [channel])
        common.visualizations.clear()
        st.rerun()

# ---------------------------------------------------------------- CKA and ranking (captum_topk.compare)
st.subheader("Layer similarity")
missing = dd.compare_status(run_a, run_b)
cmp = None
if missing:
    st.info(missing)
elif name_a != name_b:
    try:
        pa, ma = common.run_key(run_a)
        pb, mb = common.run_key(run_b)
        cmp = common.comparison(pa, ma, pb, mb)
    except Exception as exc:
        st.error(f"Cannot compare the two models: {exc}", icon=":material/error:")
if cmp is not None:
    MEASURE_NAMES = {"cka": "CKA (pooled)", "procrustes": "Procrustes", "svcca": "SVCCA", "pwcca": "PWCCA"}
    options = ["CKA (minibatch)"] + [MEASURE_NAMES.get(m, m) for m in cmp["similarity"]]
    shown = st.radio("Measure", options, horizontal=True, key="cmp_measure",
                     help="Minibatch CKA streams every image; the others (and their chance baselines) "
                          "use the global-average-pooled activations, one row per image.")
    if shown == options[0]:
        z, chance, note = cmp["cka"], None, ("Minibatch linear CKA (unbiased HSIC) of the global-average-pooled "
                                             "activations")
    else:
        sim = cmp["similarity"][list(cmp["similarity"])[options.index(shown) - 1]]
        z, chance = sim["value"], sim["chance_high"]
        note = (f"{shown} of the global-average-pooled activations; in brackets the "
                f"{round(100 * sim['quantile'])}th percentile of {sim['permutations']} shuffled pairings "
                "(chance: images of B paired with other images of A)")
    if chance is None:
        text = [[f"{v:.2f}" for v in row] for row in z]
    else:  # each value with its chance level in brackets
        text = [[f"{v:.2f} ({c:.2f})" for v, c in zip(row, crow)] for row, crow in zip(z, chance)]
    fig = go.Figure(go.Heatmap(z=z, x=cmp["layers_b"], y=cmp["layers_a"], zmin=0, zmax=1,
                               colorscale="Viridis", colorbar=dict(title=shown.split(" (")[0]),
                               text=text, texttemplate="%{text}",
                               hovertemplate="A %{y} vs B %{x}: %{text}<extra></extra>"))
    fig.update_layout(height=120 + 60 * len(cmp["layers_a"]), margin=dict(l=10, r=10, t=10, b=10),
                      xaxis_title="run B layer", yaxis_title="run A layer", yaxis_autorange="reversed")
    st.plotly_chart(fig, key="cmp_cka", config={"displayModeBar": False})
    st.caption(f"{note}, of both models on the same {cmp['n_images']} images: 1 = the same representation "
               "up to the measure's invariances (docs/compare.md).")

    st.subheader("Matched units")
    matchings = cmp["matchings"]
    if not matchings:
        st.info("No layer pair was matched.")
    else:
        labels = [f"A {m['layer_a']} ↔ B {m['layer_b']}: mean r {m['mean']:.2f} (chance {m['chance']:.2f})"
                  for m in matchings]
        q1, q2 = st.columns([3, 1])
        if st.session_state.get("cmp_match_pair_of") != (name_a, name_b):  # a new pair of runs: one
            # architecture starts on its deepest layer (where fine-tuning moves units), two on the best pair
            st.session_state["cmp_match_pair"] = len(matchings) - 1 if matchings[-1]["self_matches"] is not None else 0
            st.session_state["cmp_match_pair_of"] = (name_a, name_b)
        pick = q1.selectbox("Layer pair", range(len(matchings)), format_func=labels.__getitem__, key="cmp_match_pair")
        m = matchings[pick]
        n_pairs = int(q2.number_input("Pairs shown", 1, max(1, min(12, len(m["pairs"]))),
                                      min(3, len(m["pairs"])), key="cmp_match_n"))
        st.caption(
            f"Each unit of A matched one-to-one to a unit of B (scipy linear_sum_assignment on the Pearson "
            f"correlation of their activations over {m['images']} images x positions, {m['positions']}); "
            f"best matched first. Chance: the same matching with images mispaired."
            + ("" if m["self_matches"] is None else
               f" {m['self_matches']} of {len(m['pairs'])} units match their own index in B."))
        pa, ma = common.run_key(run_a)
        pb, mb = common.run_key(run_b)
        vis_a = common.visualizations(pa, ma, m["layer_a"], tuple(u for u, _, _ in m["pairs"][:n_pairs]), False)
        vis_b = common.visualizations(pb, mb, m["layer_b"], tuple(v for _, v, _ in m["pairs"][:n_pairs]), False)
        for u, v, r in m["pairs"][:n_pairs]:
            st.markdown(f"**A unit {u} ↔ B unit {v}**: correlation {r:.3f}")
            cols = st.columns(2)
            for col, path, mtime, run, layer, unit, vis, tag in (
                    (cols[0], pa, ma, run_a, m["layer_a"], u, vis_a, "A"),
                    (cols[1], pb, mb, run_b, m["layer_b"], v, vis_b, "B")):
                with col, common.friendly(f"Cannot crop unit {unit} of run {tag}"):
                    left, right = st.columns([1, 3]) if unit in vis else (None, col)
                    if left is not None:
                        left.image(vis[unit], caption="optimised", width="stretch")
                    tiles, recs = common.patches(path, mtime, layer, unit, "top", run.result.k)
                    right.image(dd.tile_grid(tiles, [f"{r_.value:.2f}" for r_ in recs], target_px=56, ncols=9),
                                caption=f"run {tag} {layer} unit {unit}: top-{len(recs)}")
        st.markdown("**Poorly matched units of A** (lowest matched correlation; *best* is the most correlated "
                    "unit of B, not one-to-one)")
        st.dataframe(m["poorly"], hide_index=True, key="cmp_poorly")
        if m["unmatched"]:
            st.caption(f"{len(m['unmatched'])} units of A have no partner (A is wider than B): "
                       f"{', '.join(map(str, m['unmatched'][:20]))}{' ...' if len(m['unmatched']) > 20 else ''}.")

    st.subheader("Channels that changed most")
    ranked_layers = [l for l in cmp["channels"] if cmp["channels"][l]]
    if not ranked_layers:
        st.info("No layer has the same name and width in both models: no channel-by-channel ranking "
                "(the matched units above pair their units by correlation instead).")
    else:
        r1, r2 = st.columns([2, 1])
        if (st.session_state.get("cmp_rank_layer") not in ranked_layers
                or st.session_state.get("cmp_rank_pair") != (name_a, name_b)):  # a new pair: its deepest layer
            st.session_state["cmp_rank_layer"] = ranked_layers[-1]
            st.session_state["cmp_rank_pair"] = (name_a, name_b)
        rlayer = r1.selectbox("Layer ranked", ranked_layers, key="cmp_rank_layer")
        rows = cmp["channels"][rlayer]
        n_show = int(r2.number_input("Channels shown", 1, min(12, len(rows)), min(4, len(rows)), key="cmp_nrank"))
        st.caption(f"Score = {cmp['score_formula']} (correlation of the channel's activations in A and B, "
                   "overlap of its top-k images, cosine distance of its filter); 0 = unchanged.")
        for row in rows[:n_show]:
            c = int(row["channel"])
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            sci = lambda v: "n/a" if v is None else f"{v:.1e}"  # noqa: E731  (~1e-4 after fine-tuning)
            pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
            st.markdown(f"**#{row['rank'] + 1}: channel {c}** — score {fmt(row['score'])}, correlation "
                        f"{fmt(row['correlation'])}, top-k overlap {fmt(row['jaccard'])}, filter cosine distance "
                        f"{sci(row['drift'])}, weight change {pct(row.get('weight_change'))}")
            cols = st.columns(2)
            for col, run, tag in ((cols[0], run_a, "before (A)"), (cols[1], run_b, "after (B)")):
                path, mtime = common.run_key(run)
                with col, common.friendly(f"Cannot crop channel {c}"):
                    tiles, recs = common.patches(path, mtime, rlayer, c, "top", run.result.k)
                    st.image(dd.tile_grid(tiles, [f"{r.value:.2f}" for r in recs], target_px=56, ncols=9))
                    st.caption(tag)
