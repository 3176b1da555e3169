r"""The comparison report: JSON, the mined top-k, the CKA heatmap, the most-changed channels and
their patches before / after; for any two architectures, the similarity matrices with their
chance levels and the matched units of both models side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
import numpy as np
from ..utils.files import PathLike, atomic_write_text
from ..utils.naming import slug
from .comparison import Comparison


def save_report(
    comparison: Comparison,
    out_dir: PathLike,
    images_source: Any = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    top: int = 4,
    settings: Optional[Dict[str, Any]] = None,
) -> List[Path]:
    r"""Write the comparison report: JSON, the mined top-k, and PNG plots.

    Files (all written atomically): ``compare.json`` (:meth:`Comparison.to_json` plus
    ``settings``), ``topk_a.pt`` / ``topk_b.pt`` (:class:`~captum_topk.TopKResult`),
    ``cka.png`` (heatmap), ``most_changed.png`` (bar chart of the 15 highest scores, split
    into their three terms) and, when ``images_source`` is given, ``changed_patches.png``
    (top-9 patches of the ``top`` most changed channels in A and in B); with similarity
    measures ``similarity.png`` (:func:`similarity_figure`); per matched layer pair
    ``matched_<layer_a>__<layer_b>.png`` (:func:`matched_units_figure`, with
    ``images_source``).

    Args:
        comparison (Comparison): from :func:`compare_models`.
        out_dir (str): report folder.
        images_source: the compared images as model-A input tensors, indexed by position
            in the pass (the dataset that was compared, with its transform).
        mean, std (sequence of float, optional): the normalisation to undo for display.
        top (int): channels shown in ``changed_patches.png``; best-matched units shown per
            pair in the matched-unit figures (plus the 2 worst matched).
        settings (dict, optional): JSON-able run settings stored in ``compare.json``.

    Returns:
        list of Path: the files written.
    """
    from ..viz.plot import save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    payload = comparison.to_json()
    if settings:
        payload["settings"] = settings
    atomic_write_text(out / "compare.json", json.dumps(payload, indent=1))
    written.append(out / "compare.json")
    for side, res in (("a", comparison.topk_a), ("b", comparison.topk_b)):
        if res is not None:
            res.save(out / f"topk_{side}.pt")
            written.append(out / f"topk_{side}.pt")
    written.append(save_png(cka_figure(comparison), out / "cka.png"))
    if comparison.channels:
        written.append(save_png(most_changed_figure(comparison), out / "most_changed.png"))
        if images_source is not None and comparison.topk_a is not None:
            sheet = changed_patches_figure(comparison, images_source, mean, std, top=top)
            written.append(save_png(sheet, out / "changed_patches.png"))
    if comparison.similarity:
        written.append(save_png(similarity_figure(comparison), out / "similarity.png"))
    if images_source is not None and comparison.topk_a is not None:
        for la, lb in comparison.matchings:
            fig = matched_units_figure(comparison, (la, lb), images_source, mean, std, top=top)
            written.append(save_png(fig, out / f"matched_{slug(la)}__{slug(lb)}.png"))
    return written


def _figure_to_image(fig: Any) -> Any:
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Image.fromarray(rgba[..., :3].copy())


def cka_figure(comparison: Comparison, dpi: int = 100) -> Any:
    r"""The CKA matrix as a heatmap (rows: layers of A, columns: layers of B), a PIL image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = comparison.cka
    p, q = m.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * q + 1.5, 1.0 + 0.45 * p + 0.8), dpi=dpi)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="magma")
    ax.set_xticks(range(q), comparison.layers_b, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(p), comparison.layers_a, fontsize=8)
    ax.set_xlabel(comparison.names[1])
    ax.set_ylabel(comparison.names[0])
    if p * q <= 400:
        for i in range(p):
            for j in range(q):
                v = m[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.6 else "white")
    ax.set_title(f"linear CKA ({comparison.representation}, {comparison.n_images} images)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _figure_to_image(fig)


def most_changed_figure(comparison: Comparison, n: int = 15, dpi: int = 100) -> Any:
    r"""Horizontal bars of the ``n`` highest change scores, split into their three terms."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = comparison.most_changed(n)
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.32 * max(len(rows), 1)), dpi=dpi)
    labels = [f"{r['layer']} ch {r['channel']}" for r in rows]
    terms = [
        ("(1 - correlation) / 6", [(1 - (r["correlation"] if r["correlation"] is not None else 1)) / 6 for r in rows], "#4c72b0"),
        ("(1 - top-k overlap) / 3", [(1 - (r["jaccard"] if r["jaccard"] is not None else 1)) / 3 for r in rows], "#dd8452"),
        ("filter cosine distance / 6", [(r["drift"] or 0.0) / 6 for r in rows], "#55a868"),
    ]
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for label, vals, color in terms:
        ax.barh(y, vals, left=left, color=color, label=label, height=0.7)
        left += np.asarray(vals)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("change score")
    ax.set_xlim(0, max(0.05, float(left.max()) * 1.1) if len(rows) else 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"most changed channels: {comparison.names[0]} -> {comparison.names[1]}", fontsize=9)
    fig.tight_layout()
    return _figure_to_image(fig)


def changed_patches_figure(comparison: Comparison, images_source: Any,
                           mean: Optional[Sequence[float]] = None,
                           std: Optional[Sequence[float]] = None,
                           top: int = 4, patch_px: int = 56) -> Any:
    r"""Top-9 patches of the ``top`` most changed channels, A's grid beside B's, a PIL image."""
    rows = comparison.most_changed(top)
    assert comparison.topk_a is not None and comparison.topk_b is not None
    blocks = []
    for r in rows:
        grids = [_unit_grid(res, r["layer"], r["channel"], images_source, mean, std, patch_px,
                            comparison.names[side])
                 for side, res in ((0, comparison.topk_a), (1, comparison.topk_b))]
        change = r.get("weight_change")
        title = (f"{r['layer']} ch {r['channel']}: score {r['score']:.2f}, r {r['correlation']:.2f}, "
                 f"overlap {r['jaccard']:.2f}, drift {_sci(r['drift'])}, "
                 f"dw {'n/a' if change is None else f'{100 * change:.2f}%'}")
        blocks.append(_pair_block(title, grids[0], grids[1]))
    return _sheet(blocks)


def _sci(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1e}"


def _unit_grid(res: Any, layer: str, channel: int, images_source: Any, mean: Any, std: Any,
               patch_px: int, title: str) -> Any:
    r"""One channel's top-k patches as a grid, small receptive fields scaled up to ~patch_px."""
    from ..viz.plot import patch_grid
    from ..viz.plot import fit_patches

    recs = res.records(layer, channel)
    crops = fit_patches(res.patches(images_source, layer, channel), patch_px)
    side = max(int(crops.shape[-1]), int(crops.shape[-2]), 1)
    return patch_grid(crops, values=[x.value for x in recs], ncols=3, mean=mean, std=std,
                      scale=max(1, patch_px // side), title=title)


def _pair_block(title: str, left: Any, right: Any, gap: int = 12) -> Any:
    from PIL import Image, ImageDraw

    from ..viz.plot import _font, label_height

    w = max(left.width + right.width + gap, _text_width(title) + 8)
    h = max(left.height, right.height) + label_height() + 6
    block = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(block).text((4, 2), title, fill=(0, 0, 0), font=_font())
    block.paste(left, (0, label_height() + 4))
    block.paste(right, (left.width + gap, label_height() + 4))
    return block


def _text_width(text: str) -> int:
    from ..viz.plot import _text_size

    return _text_size(text)[0]


def _sheet(blocks: List[Any], ncols: int = 2, title: Optional[str] = None) -> Any:
    from PIL import Image, ImageDraw

    from ..viz.plot import _font, label_height

    if not blocks:
        return Image.new("RGB", (10, 10), (255, 255, 255))
    ncols = ncols if len(blocks) > 1 else 1
    bw = max(b.width for b in blocks)
    bh = max(b.height for b in blocks)
    nrows = -(-len(blocks) // ncols)
    top = label_height() + 6 if title else 0
    width = max(ncols * (bw + 10) + 10, _text_width(title) + 20 if title else 0)
    sheet = Image.new("RGB", (width, top + nrows * (bh + 10) + 10), (230, 230, 230))
    if title:
        ImageDraw.Draw(sheet).text((10, 5), title, fill=(0, 0, 0), font=_font())
    for j, b in enumerate(blocks):
        rr, cc = divmod(j, ncols)
        sheet.paste(b, (10 + cc * (bw + 10), top + 10 + rr * (bh + 10)))
    return sheet


def similarity_figure(comparison: Comparison, dpi: int = 100) -> Any:
    r"""One heatmap per similarity measure (rows: layers of A, columns: layers of B), a PIL image.

    Each cell is the similarity; a cell whose value does not exceed its chance level (the
    95th percentile of the shuffled pairings) is crossed out: no evidence of shared structure
    there. The title gives the measure and its median chance level.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    items = list(comparison.similarity.items())
    if not items:
        raise ValueError("The comparison holds no similarity measure (compare_models(measures=...)).")
    p, q = items[0][1].value.shape
    cell_w, cell_h = 0.42, 0.34
    panel_w, panel_h = 1.6 + cell_w * q, 1.2 + cell_h * p
    ncols = min(2, len(items)) if q > 6 else min(4, len(items))
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, panel_h * nrows), dpi=dpi,
                             squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, items):
        im = ax.imshow(m.value, vmin=0.0, vmax=1.0, cmap="magma")
        ax.set_xticks(range(q), comparison.layers_b, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(p), comparison.layers_a, fontsize=7)
        at_chance = ~(m.value > m.chance_high)
        for i in range(p):
            for j in range(q):
                if at_chance[i, j]:
                    ax.plot(j, i, marker="x", color="#3c8dbc", markersize=7, mew=1.2)
                elif p * q <= 300:
                    v = m.value[i, j]
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                            color="black" if v > 0.6 else "white")
        ok = m.chance_mean[np.isfinite(m.chance_mean)]
        chance = f"{np.median(ok):.2f}" if ok.size else "n/a"
        ax.set_title(f"{name} (median chance {chance})", fontsize=9)
        ax.set_xlabel(comparison.names[1], fontsize=8)
        ax.set_ylabel(comparison.names[0], fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig.suptitle(f"{comparison.names[0]} vs {comparison.names[1]}: pooled activations, "
                 f"{comparison.n_images} images; x: not above chance (95th pct of "
                 f"{items[0][1].permutations} shuffles)", fontsize=9)
    fig.tight_layout()
    return _figure_to_image(fig)


def matched_units_figure(comparison: Comparison, pair: Sequence[str], images_source: Any,
                         mean: Optional[Sequence[float]] = None,
                         std: Optional[Sequence[float]] = None, top: int = 4, worst: int = 2,
                         units: Optional[Sequence[int]] = None, patch_px: int = 48) -> Any:
    r"""Matched units of one layer pair: A's top-k grid | B's matched unit's top-k grid.

    Args:
        comparison (Comparison): with ``matchings[pair]`` and the mined top-k of both layers.
        pair (tuple of str): ``(layer_a, layer_b)``.
        images_source: the compared images (model A's input tensors, by position in the pass).
        mean, std (sequence of float, optional): the normalisation to undo for display.
        top (int): the ``top`` best-matched units of A; worst (int): and the ``worst`` worst
            matched (that have a partner).
        units (sequence of int, optional): these units of A instead.
        patch_px (int): patches larger than this are downscaled, smaller ones scaled up.

    Returns:
        PIL.Image.Image
    """
    la, lb = pair
    m = comparison.matchings[(la, lb)]
    assert comparison.topk_a is not None and comparison.topk_b is not None
    ranked = [u for u, _, _ in m.pairs()]
    chosen = list(units) if units is not None else list(
        dict.fromkeys(ranked[:top] + (ranked[-worst:] if worst > 0 else [])))
    blocks = []
    for u in chosen:
        v = int(m.assignment[u])
        if v < 0:
            continue
        tag = "best-matched" if u in ranked[:top] else "poorly matched"
        title = (f"{comparison.names[0]} {la} ch {u}  <->  {comparison.names[1]} {lb} ch {v}: "
                 f"r = {m.correlation[u]:.2f} ({tag})")
        left = _unit_grid(comparison.topk_a, la, u, images_source, mean, std, patch_px,
                          f"{comparison.names[0]} ch {u}")
        right = _unit_grid(comparison.topk_b, lb, v, images_source, mean, std, patch_px,
                           f"{comparison.names[1]} ch {v}")
        blocks.append(_pair_block(title, left, right))
    chance = "" if np.isnan(m.chance_correlation) else f" (mispaired images: {m.chance_correlation:.2f})"
    head = (f"{la} -> {lb}: {len(ranked)} units matched one-to-one, mean r {m.mean_correlation:.2f}{chance}; "
            f"{m.positions} positions, {m.samples} samples")
    return _sheet(blocks, title=head)
