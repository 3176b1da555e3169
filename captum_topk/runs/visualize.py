r"""Feature visualizations of a run's channels, cached in the run folder (``featvis/``) and keyed
by the weights' digest, the layer, the channel and the settings: what the dashboard's Top-k,
Microscope and Compare pages and ``captum-topk show RUN --vis`` show beside the dataset top-k."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

from ..core.sources.layouts import base_layer
from ..featvis.cache import cached_channels, cached_visualize, model_digest
from ..featvis.render import FeatureVisualization
from ..featvis.sheet import sheet
from ..utils.files import PathLike
from ..utils.naming import slug
from ..viz.plot import save_png
from .folder import Run

__all__ = ["VIS_SETTINGS", "run_visualizations", "visualized_channels", "render_visualizations"]

#: The settings runs visualize with: 128 px, 256 Adam steps, seed 0, the channel's mean;
#: ``$CAPTUM_TOPK_VIS_STEPS`` changes the steps (fewer on a slow machine).
VIS_SETTINGS = {"size": 128, "steps": int(os.environ.get("CAPTUM_TOPK_VIS_STEPS") or 256), "seed": 0,
                "objective": "channel"}


def _digest(run: Run) -> str:
    if run.spec is not None and run.spec.weights_sha1:
        return run.spec.weights_sha1
    return model_digest(run.model)  # built-in or random weights: the state dict's bytes


def _settings(run: Run, layer: str, **overrides: Any) -> dict:
    layout = run.result.layer_info.get(base_layer(layer), {}).get("layout", "auto")
    return {**VIS_SETTINGS, "layout": layout if layout != "NCHW" else "auto", "info": run.info, **overrides}


def visualized_channels(run: Run, layer: str, channels: Any, **settings: Any) -> List[int]:
    r"""Which of ``channels`` already have a cached visualization (nothing is computed)."""
    if run.model is None:
        return []
    return cached_channels(run.path / "featvis", run.model, layer, channels, weights_digest=_digest(run),
                           **_settings(run, layer, **settings))


def run_visualizations(run: Run, layer: str, channels: Any, progress: bool = False,
                       **settings: Any) -> FeatureVisualization:
    r"""The visualizations of ``channels`` of ``layer`` (computed for the missing ones, cached).

    Args:
        run (Run): an opened run with its PyTorch model.
        layer (str): a mined layer (its recorded layout is used).
        channels: channels (integers of any kind), or directions in the layer's channel space
            (a float ``(K, C)`` tensor or a ``Concepts``: one image each, keyed by their values).
        progress (bool): a bar over the optimisation steps.
        **settings: overrides of :data:`VIS_SETTINGS` (``size``, ``steps``, ``seed``, ``objective``).
    Returns:
        FeatureVisualization
    Raises:
        ValueError: a run of a user's ONNX file (optimisation needs the PyTorch model).
    """
    if run.model is None:
        raise ValueError("Feature visualization needs the PyTorch model; this run is of an ONNX file.")
    return cached_visualize(run.path / "featvis", run.model, layer, channels, weights_digest=_digest(run),
                            progress=progress, **_settings(run, layer, **settings))


def render_visualizations(run: Run, layers: Optional[Sequence[str]] = None, channels: Optional[Sequence[int]] = None,
                          out_dir: Optional[PathLike] = None, max_channels: int = 8, progress: bool = True,
                          **settings: Any) -> List[Path]:
    r"""Write, per layer, ``<layer>_vis.png``: each channel's visualization (a sample from the
    model) beside its dataset top-k patches (parts of real images).

    Returns:
        list of Path: the PNGs written.
    """
    out_dir = Path(out_dir) if out_dir else run.path
    written = []
    for layer in layers or run.result.layers:
        chosen = list(channels) if channels else list(range(min(run.result.num_channels(layer), max_channels)))
        vis = run_visualizations(run, layer, chosen, progress=progress, **settings)
        patches = {c: run.patches(layer, c) for c in chosen}
        values = {c: [r.value for r in run.result.records(layer, c)] for c in chosen}
        image = sheet(vis, patches, values, mean=run.info.mean, std=run.info.std,
                      title=f"{layer}: optimised images (samples from the model) | dataset top-{run.result.k} "
                            "(parts of real images)")
        written.append(save_png(image, out_dir / f"{slug(layer)}_vis.png"))
    return written
