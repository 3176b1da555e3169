r"""Exact receptive fields: the :class:`ReceptiveField` type (:mod:`.field`), interval
arithmetic along a ``torch.fx`` trace (:mod:`.trace`, with the per-operation rules of
:mod:`.intervals`, shared with the ONNX tracer) confirmed by a few NaN probes, NaN-propagation
probing of any graph (:mod:`.probe`) and the in-process and on-disk caches (:mod:`.cache`)."""

from .cache import cache_dir, clear_receptive_field_cache
from .field import ReceptiveField
from .intervals import TraceError
from .probe import fields_from_probe, probe_batches, receptive_field, receptive_fields

__all__ = ["ReceptiveField", "receptive_field", "receptive_fields", "clear_receptive_field_cache",
           "cache_dir", "probe_batches", "fields_from_probe", "TraceError"]
