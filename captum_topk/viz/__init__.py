r"""Pictures: filter tiles (:mod:`.filters`) and patch grids / sheets / PNGs (:mod:`.plot`)."""

from .filters import filter_grid, filter_stats, grid_layout
from .overlay import overlay, record_overlays
from .plot import channel_sheet, fit_patches, patch_grid, projection_sheet, save_png, to_display

__all__ = ["filter_grid", "filter_stats", "grid_layout", "patch_grid", "channel_sheet",
           "projection_sheet", "save_png", "to_display", "fit_patches", "overlay", "record_overlays"]
