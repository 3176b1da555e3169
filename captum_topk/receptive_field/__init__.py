r"""Exact receptive fields: the :class:`ReceptiveField` type (:mod:`.field`), NaN-propagation
probing of any graph (:mod:`.probe`) and its in-process and on-disk caches (:mod:`.cache`)."""

from .cache import cache_dir, clear_receptive_field_cache
from .field import ReceptiveField
from .probe import fields_from_probe, probe_batches, receptive_field, receptive_fields

__all__ = ["ReceptiveField", "receptive_field", "receptive_fields", "clear_receptive_field_cache",
           "cache_dir", "probe_batches", "fields_from_probe"]
