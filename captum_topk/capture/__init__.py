r"""Where activations come from, at the lowest level: layer names resolved to modules, forward
hooks that capture their outputs (always removed), batches split into images / labels / ids,
and activation layouts."""

from .batch import Batch, cut_batch, split_batch
from .hooks import LayerSpec, capture_hooks, minable_layers, resolve_layers, run_capture

__all__ = ["Batch", "split_batch", "cut_batch", "LayerSpec", "resolve_layers", "capture_hooks",
           "run_capture", "minable_layers"]
