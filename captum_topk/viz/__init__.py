r"""Pictures: filter tiles (:mod:`.filters`) and patch grids / sheets / PNGs (:mod:`.plot`)."""

from .filters import filter_grid, filter_stats, grid_layout
from .plot import channel_sheet, patch_grid, projection_sheet, save_png, to_display

__all__ = ["filter_grid", "filter_stats", "grid_layout", "patch_grid", "channel_sheet",
           "projection_sheet", "save_png", "to_display"]
