r"""The comparison report: JSON, the mined top-k, the CKA heatmap, the most-changed channels and their patches before / after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
import numpy as np
from ..utils.files import atomic_write_text
from .comparison import Comparison
from ..utils.files import PathLike



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
    (top-9 patches of the ``top`` most changed channels in A and in B).

    Args:
        comparison (Comparison): from :func:`compare_models`.
        out_dir (str): report folder.
        images_source: the compared images as model-A input tensors, indexed by position
            in the pass (the dataset that was compared, with its transform).
        mean, std (sequence of float, optional): the normalisation to undo for display.
        top (int): channels shown in ``changed_patches.png``.
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
    from PIL import Image, ImageDraw

    from ..viz.plot import _font, label_height, patch_grid
    from ..viz.plot import fit_patches

    rows = comparison.most_changed(top)
    assert comparison.topk_a is not None and comparison.topk_b is not None
    blocks = []
    for r in rows:
        pair = []
        for side, res in ((0, comparison.topk_a), (1, comparison.topk_b)):
            recs = res.records(r["layer"], r["channel"])
            crops = fit_patches(res.patches(images_source, r["layer"], r["channel"]), patch_px)
            pair.append(patch_grid(crops, values=[x.value for x in recs], ncols=3, mean=mean,
                                   std=std, title=comparison.names[side]))
        title = (f"{r['layer']} ch {r['channel']}: score {r['score']:.2f}, r {r['correlation']:.2f}, "
                 f"overlap {r['jaccard']:.2f}, drift {r['drift'] if r['drift'] is not None else float('nan'):.3f}")
        w = pair[0].width + pair[1].width + 12
        h = max(pair[0].height, pair[1].height) + label_height() + 6
        block = Image.new("RGB", (w, h), (255, 255, 255))
        ImageDraw.Draw(block).text((4, 2), title, fill=(0, 0, 0), font=_font())
        block.paste(pair[0], (0, label_height() + 4))
        block.paste(pair[1], (pair[0].width + 12, label_height() + 4))
        blocks.append(block)
    if not blocks:
        return Image.new("RGB", (10, 10), (255, 255, 255))
    ncols = 2 if len(blocks) > 1 else 1
    bw = max(b.width for b in blocks)
    bh = max(b.height for b in blocks)
    nrows = -(-len(blocks) // ncols)
    sheet = Image.new("RGB", (ncols * (bw + 10) + 10, nrows * (bh + 10) + 10), (230, 230, 230))
    for j, b in enumerate(blocks):
        rr, cc = divmod(j, ncols)
        sheet.paste(b, (10 + cc * (bw + 10), 10 + rr * (bh + 10)))
    return sheet
