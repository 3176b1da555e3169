r"""Exact receptive fields: the :class:`ReceptiveField` type (:mod:`.field`), interval
arithmetic along a ``torch.fx`` trace (:mod:`.trace`, with the per-operation rules of
:mod:`.intervals`, shared with the ONNX tracer) confirmed by a few NaN probes, NaN-propagation
probing of any graph (:mod:`.probe`) and the in-process and on-disk caches (:mod:`.cache`).

The names load on first use: importing one module of the package runs no other."""

from ..utils.lazy import lazy_exports

# name -> (module, attribute): loaded on first access (PEP 562).
_LAZY = {
    "ReceptiveField": (".field", "ReceptiveField"),
    "receptive_field": (".probe", "receptive_field"),
    "receptive_fields": (".probe", "receptive_fields"),
    "clear_receptive_field_cache": (".cache", "clear_receptive_field_cache"),
    "cache_dir": (".cache", "cache_dir"),
    "probe_batches": (".probe", "probe_batches"),
    "fields_from_probe": (".probe", "fields_from_probe"),
    "TraceError": (".intervals", "TraceError"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
