r"""Mining runs on disk: one run layer for the CLI and the dashboard."""

from ..data.descriptor import open_dataset
from .folder import Run, open_run
from .layers import describe_layers
from ..models.registry import DEFAULT_MODEL
from .mine import mine_run, resolve_device
from .render import render_filters, render_overlays, render_projections, render_run
from .spec import RunSpec

__all__ = ["RunSpec", "DEFAULT_MODEL", "mine_run", "open_run", "Run", "render_run", "render_projections",
           "render_filters", "render_overlays", "describe_layers", "open_dataset", "resolve_device"]
