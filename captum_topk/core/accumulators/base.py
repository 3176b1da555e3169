r"""One protocol for every streaming statistic, in the spirit of torchmetrics' ``Metric``.

An :class:`Accumulator` folds batches into a state whose size does not grow with the data:

* :meth:`~Accumulator.update` folds one batch in (its arguments are the accumulator's own:
  a layer's activations and image indices for the top-k state, paired activations of two
  models for co-moments, ...);
* :meth:`~Accumulator.compute` reads the statistic off the state (cheap, repeatable);
* :meth:`~Accumulator.merge` folds in another accumulator of the same kind and settings that
  saw *other* images (another shard, another rank, an earlier part of a resumed run): merged
  shards give exactly (up to float summation order) what one pass over all the images gives;
* :meth:`~Accumulator.state_dict` / :meth:`~Accumulator.load_state_dict` /
  :meth:`~Accumulator.from_state_dict`: the whole state, settings included, as tensors, numbers,
  strings and lists / dicts of them, so that ``torch.save`` and
  ``torch.load(..., weights_only=True)`` round-trip it (snapshots, resume, gathering over ranks);
* :meth:`~Accumulator.reset` forgets everything seen (settings are kept).

:class:`AccumulatorCollection` runs several accumulators as one (``MetricCollection``): one
``update`` call feeds each of them the same arguments, and merge / state_dict / compute apply to
all of them by name.
"""

from __future__ import annotations

import abc
import copy
from typing import Any, Dict, Iterator, Mapping, Type, TypeVar

__all__ = ["Accumulator", "AccumulatorCollection"]

A = TypeVar("A", bound="Accumulator")


class Accumulator(abc.ABC):
    r"""Base class of streaming statistics (see the module docstring for the contract).

    Subclasses implement :meth:`update`, :meth:`compute`, :meth:`merge`, :meth:`reset`,
    :meth:`state_dict` and :meth:`load_state_dict`; :meth:`state_dict` must hold the settings
    needed to rebuild the accumulator, and :meth:`_empty_from_state` build an empty instance
    with those settings (used by :meth:`from_state_dict`).
    """

    @abc.abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        r"""Fold one batch into the state."""

    @abc.abstractmethod
    def compute(self) -> Any:
        r"""The statistic of everything seen since the last :meth:`reset`."""

    @abc.abstractmethod
    def merge(self: A, other: A) -> A:
        r"""Fold in ``other`` (same kind and settings, other images); returns ``self``."""

    @abc.abstractmethod
    def reset(self) -> None:
        r"""Forget every batch seen (settings are kept)."""

    @abc.abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        r"""Settings and state as tensors / numbers / strings / lists / dicts (safe to save)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r"""Replace the state (and settings) by those of :meth:`state_dict`."""

    @classmethod
    def _empty_from_state(cls: Type[A], state: Mapping[str, Any]) -> A:
        r"""An empty accumulator with the settings recorded in ``state``."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a state dict.")

    @classmethod
    def from_state_dict(cls: Type[A], state: Mapping[str, Any]) -> A:
        r"""A new accumulator holding ``state`` (the inverse of :meth:`state_dict`)."""
        acc = cls._empty_from_state(state)
        acc.load_state_dict(state)
        return acc

    def clone(self: A) -> A:
        r"""An independent copy (state and settings)."""
        return copy.deepcopy(self)

    def _check_mergeable(self, other: "Accumulator", *settings: str) -> None:
        if type(other) is not type(self):
            raise TypeError(f"Cannot merge a {type(other).__name__} into a {type(self).__name__}.")
        differ = [s for s in settings if _differs(getattr(self, s), getattr(other, s))]
        if differ:
            raise ValueError(
                f"Cannot merge {type(self).__name__} accumulators with different {', '.join(differ)}: "
                "every shard must be gathered with the same settings."
            )


def _differs(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b))
    return a != b


class AccumulatorCollection(Accumulator):
    r"""Several accumulators fed by one :meth:`update` call, merged and saved together.

    Args:
        accumulators (mapping of str to Accumulator): the members, by name.

    Example::

        >>> acc = AccumulatorCollection({"topk": TopKState(9, 64, True), "stats": ChannelStats(64)})
        >>> acc.update(acts, indices)          # each member gets (acts, indices)
        >>> acc.compute()["stats"]
    """

    def __init__(self, accumulators: Mapping[str, Accumulator]) -> None:
        self.members: Dict[str, Accumulator] = dict(accumulators)

    def __getitem__(self, name: str) -> Accumulator:
        return self.members[name]

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def items(self):
        return self.members.items()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for acc in self.members.values():
            acc.update(*args, **kwargs)

    def compute(self) -> Dict[str, Any]:
        return {name: acc.compute() for name, acc in self.members.items()}

    def merge(self, other: "AccumulatorCollection") -> "AccumulatorCollection":
        if set(other.members) != set(self.members):
            raise ValueError(f"Cannot merge collections of {sorted(other.members)} into {sorted(self.members)}.")
        for name, acc in self.members.items():
            acc.merge(other.members[name])
        return self

    def reset(self) -> None:
        for acc in self.members.values():
            acc.reset()

    def state_dict(self) -> Dict[str, Any]:
        return {name: {"kind": type(acc).__name__, "state": acc.state_dict()}
                for name, acc in self.members.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.members):
            raise ValueError(f"The state holds {sorted(state)}, this collection {sorted(self.members)}.")
        for name, acc in self.members.items():
            acc.load_state_dict(state[name]["state"])
