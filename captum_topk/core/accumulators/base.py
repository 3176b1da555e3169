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
* :meth:`~Accumulator.reset` forgets everything seen (settings are kept);
* :meth:`~Accumulator.gather` merges the accumulators of every ``torch.distributed`` rank
  (``torchrun``), in rank order.

**Writing an accumulator** is declarations plus ``update`` / ``compute``; everything else is
derived from the declarations (as torchmetrics derives ``reset`` and the distributed sync from
``add_state``):

* :attr:`Accumulator.settings` (class attribute): the constructor arguments that rebuild an
  empty accumulator, each stored on the instance under the same name. They go into
  :meth:`state_dict`, :meth:`from_state_dict` passes them back to the constructor, and
  :meth:`merge` refuses an accumulator whose settings differ.
* :meth:`Accumulator.add_state` ``(name, default, merge=...)`` in ``__init__`` (after the
  settings are stored): one piece of state, an attribute ``self.<name>`` that ``update``
  changes (in place or by assignment). ``default`` is a tensor (its shape and dtype are
  checked when a state is loaded), an ``int``, a ``float``, a list, ``None`` (a small free
  value such as a grid size, tuples saved as lists), or another :class:`Accumulator` (a
  member: reset, merged, saved and loaded as a whole). ``merge`` says how two shards combine: ``"sum"``, ``"min"``, ``"max"``, ``"cat"``
  (along dim 0), or a callable ``fn(mine, theirs) -> merged``, three dicts ``{name: value}``
  over every state declared with that same callable, for states that only combine together
  (Chan et al.'s co-moments, the top-k slots under their total order).

Example::

    >>> class Mean(Accumulator):
    ...     settings = ("channels",)
    ...     def __init__(self, channels: int) -> None:
    ...         self.channels = int(channels)
    ...         self.add_state("total", torch.zeros(channels, dtype=torch.float64), merge="sum")
    ...         self.add_state("count", 0, merge="sum")
    ...     def update(self, x: Tensor) -> None:       # (N, C)
    ...         self.total += x.double().sum(0)
    ...         self.count += x.shape[0]
    ...     def compute(self) -> Tensor:
    ...         return self.total / self.count
    >>> a, b = Mean(3), Mean(3)
    >>> a.update(torch.ones(2, 3)); b.update(torch.zeros(2, 3))
    >>> Mean.from_state_dict(a.state_dict()).merge(b).compute()
    tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64)

:class:`AccumulatorCollection` runs several accumulators as one (``MetricCollection``): one
``update`` call feeds each of them the same arguments, and merge / state_dict / compute apply to
all of them by name (its members are declared states).
"""

from __future__ import annotations

import abc
import copy
import io
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Mapping, Optional, Tuple, Type, TypeVar, Union

__all__ = ["Accumulator", "AccumulatorCollection", "gather_payloads", "MERGE_RULES"]

A = TypeVar("A", bound="Accumulator")

#: The merge rules by name (a callable is the fifth kind, see :meth:`Accumulator.add_state`).
MERGE_RULES = ("sum", "cat", "min", "max")

MergeFn = Callable[[Dict[str, Any], Dict[str, Any]], Mapping[str, Any]]


@dataclass
class _Declared:
    default: Any
    merge: Union[str, MergeFn]


class Accumulator(abc.ABC):
    r"""Base class of streaming statistics (see the module docstring for the contract and for
    how to write one).

    Subclasses declare :attr:`settings` and their states (:meth:`add_state`) and implement
    :meth:`update` and :meth:`compute`; :meth:`reset`, :meth:`merge`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`from_state_dict`, :meth:`clone` and :meth:`gather` are
    derived from the declarations.
    """

    #: Names of the constructor arguments that rebuild an empty accumulator (stored as
    #: attributes of the same names): saved, passed back by :meth:`from_state_dict`, and
    #: required equal by :meth:`merge` and :meth:`load_state_dict`.
    settings: ClassVar[Tuple[str, ...]] = ()

    _kinds: ClassVar[Dict[str, Type["Accumulator"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Accumulator._kinds[cls.__name__] = cls

    # ------------------------------------------------------------------ declarations
    @property
    def _declared(self) -> Dict[str, _Declared]:
        d = self.__dict__.get("_declared_states")
        if d is None:
            d = self.__dict__["_declared_states"] = {}
        return d

    def add_state(self, name: str, default: Any, merge: Union[str, MergeFn] = "sum") -> None:
        r"""Declare one piece of state and set ``self.<name>`` to (a copy of) ``default``.

        Args:
            name (str): the attribute and the :meth:`state_dict` key.
            default (Tensor, int, float, list, None or Accumulator): the empty state. A
                tensor's shape and dtype are those a loaded state must have (cast within what
                ``torch.can_cast`` allows; a ``"cat"`` state may have any length along dim 0);
                a list grows by ``"cat"``; ``None`` declares a small free value (``None``,
                numbers, strings, tuples of them; a tuple is saved as a list and loaded back
                as a tuple); an :class:`Accumulator` is a member.
            merge (str or callable): ``"sum"``, ``"min"``, ``"max"``, ``"cat"`` (dim 0, or list
                concatenation), or ``fn(mine, theirs) -> merged`` on dicts ``{name: value}`` of
                every state declared with this same callable (merged together, once). A
                member is merged by its own :meth:`merge` (``merge`` is ignored).

        Raises:
            ValueError: a name declared twice or shadowing a method / setting, an unknown
                rule, a default of another type.
        """
        import torch

        if name in self._declared or name in type(self).settings or hasattr(type(self), name):
            raise ValueError(f"{type(self).__name__}: cannot declare the state {name!r}: the name is "
                             "taken (a state, a setting, a method or a property).")
        if isinstance(default, Accumulator):
            merge = "member"
        elif not (callable(merge) or merge in MERGE_RULES):
            raise ValueError(f"merge must be one of {MERGE_RULES} or a callable, got {merge!r}.")
        if not (default is None or isinstance(default, (torch.Tensor, Accumulator, list))
                or (isinstance(default, (int, float)) and not isinstance(default, bool))):
            raise ValueError(f"{type(self).__name__}.{name}: a state's default is a tensor, an int, "
                             f"a float, None, a list or an Accumulator, got {type(default).__name__}.")
        if merge in ("min", "max") and not isinstance(default, (torch.Tensor, int, float)):
            raise ValueError(f"{type(self).__name__}.{name}: merge={merge!r} needs a tensor or number.")
        if isinstance(default, torch.Tensor):
            default = default.detach().clone()
        self._declared[name] = _Declared(default, merge)
        setattr(self, name, _fresh(default))

    @property
    def state_names(self) -> List[str]:
        r"""The declared states, in declaration order."""
        return list(self._declared)

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        r"""Fold one batch into the state."""

    @abc.abstractmethod
    def compute(self) -> Any:
        r"""The statistic of everything seen since the last :meth:`reset`."""

    # ------------------------------------------------------------------ derived
    def reset(self) -> None:
        r"""Forget every batch seen: every state back to its default (settings are kept)."""
        for name, decl in self._declared.items():
            if isinstance(decl.default, Accumulator):
                decl.default.reset()
            else:
                setattr(self, name, _fresh(decl.default))

    def merge(self: A, other: A) -> A:
        r"""Fold in ``other`` (same kind and settings, other images) by the declared rules.

        Returns:
            self

        Raises:
            TypeError: another kind of accumulator.
            ValueError: other settings or other declared states.
        """
        import torch

        self._check_mergeable(other)
        done = set()
        for name, decl in self._declared.items():
            if name in done:
                continue
            rule = decl.merge
            mine, theirs = getattr(self, name), getattr(other, name)
            if rule == "member":
                mine.merge(theirs)
            elif callable(rule):
                group = [n for n, d in self._declared.items() if callable(d.merge) and d.merge == rule]
                merged = rule({n: getattr(self, n) for n in group}, {n: getattr(other, n) for n in group})
                for n in group:
                    setattr(self, n, merged[n])
                done.update(group)
            elif isinstance(mine, torch.Tensor):
                theirs = theirs.to(mine.device)
                setattr(self, name, {"sum": torch.add, "min": torch.minimum, "max": torch.maximum,
                                     "cat": lambda x, y: torch.cat([x, y], 0)}[rule](mine, theirs))
            else:
                setattr(self, name, {"sum": lambda x, y: x + y, "min": min, "max": max,
                                     "cat": lambda x, y: list(x) + list(y)}[rule](mine, theirs))
        return self

    def state_dict(self) -> Dict[str, Any]:
        r"""Settings and states as tensors (CPU copies) / numbers / strings / lists / dicts:
        safe for ``torch.save`` and ``torch.load(..., weights_only=True)``."""
        out = {s: _export(getattr(self, s)) for s in type(self).settings}
        out.update({n: _export(getattr(self, n)) for n in self._declared})
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r"""Replace the states by those of :meth:`state_dict` (the settings must be this
        accumulator's: :meth:`from_state_dict` builds one with the saved settings).

        Keys, settings and every state (tensor shape, dtype, type) are checked before this
        accumulator's own states change; members check their own.

        Raises:
            ValueError: what does not fit, named.
        """
        name = type(self).__name__
        if not isinstance(state, Mapping):
            raise ValueError(f"A {name} state is a dict, got {type(state).__name__}.")
        want = list(type(self).settings) + list(self._declared)
        missing, unknown = [k for k in want if k not in state], [k for k in state if k not in want]
        if missing or unknown:
            raise ValueError(f"Not a {name} state: missing {missing}, unknown {unknown}.")
        differ = [s for s in type(self).settings if _differs(_export(getattr(self, s)), state[s])]
        if differ:
            raise ValueError(
                f"The {name} state was saved with other settings ({', '.join(f'{s}={state[s]!r}' for s in differ)}; "
                f"this one has {', '.join(f'{s}={getattr(self, s)!r}' for s in differ)}): "
                f"use {name}.from_state_dict(state).")
        plain = {n: d for n, d in self._declared.items() if not isinstance(d.default, Accumulator)}
        values = {n: _import(name, n, d.default, state[n], d.merge == "cat") for n, d in plain.items()}
        for n, d in self._declared.items():
            if n not in plain:
                _import(name, n, d.default, state[n])  # a member loads (and checks) itself
        for n, v in values.items():
            setattr(self, n, v)

    @classmethod
    def from_state_dict(cls: Type[A], state: Mapping[str, Any]) -> A:
        r"""A new accumulator holding ``state`` (the inverse of :meth:`state_dict`): built with
        the saved :attr:`settings`, then :meth:`load_state_dict`."""
        if not isinstance(state, Mapping):
            raise ValueError(f"A {cls.__name__} state is a dict, got {type(state).__name__}.")
        missing = [s for s in cls.settings if s not in state]
        if missing:
            raise ValueError(f"Not a {cls.__name__} state: the settings {missing} are missing.")
        acc = cls(**{s: state[s] for s in cls.settings})
        acc.load_state_dict(state)
        return acc

    def clone(self: A) -> A:
        r"""An independent copy (states and settings)."""
        return copy.deepcopy(self)

    def gather(self: A, group: Any = None, dst: Optional[int] = None) -> A:
        r"""Merge the accumulators of every ``torch.distributed`` rank, in rank order.

        Collective: every rank of ``group`` calls it. Each rank's :meth:`state_dict` is
        serialised with ``torch.save``, exchanged with the object collectives
        (:func:`gather_payloads`; gloo on CPU) and loaded with ``weights_only=True``; the
        states are merged in rank order (rank 0's, then 1's, ...), so floating-point sums are
        the same on every rank and in every run. Without an initialised process group (one
        process) this is a no-op.

        Args:
            group (ProcessGroup, optional): default: the world.
            dst (int, optional): only rank ``dst`` (a global rank) merges, the others keep their
                own state (``gather_object``, less traffic); default: every rank (``all_gather_object``).

        Returns:
            self, holding the merged state where it was merged.

        Example::

            >>> acc = ChannelStats(64)
            >>> for batch in my_shard:                 # under torchrun
            ...     acc.update(batch)
            >>> acc.gather().compute()                 # the statistics of every rank's images
        """
        states = gather_payloads(self.state_dict(), group=group, dst=dst)
        if states is None:
            return self
        merged = type(self).from_state_dict(states[0])
        for s in states[1:]:
            merged.merge(type(self).from_state_dict(s))
        self.load_state_dict(merged.state_dict())
        return self

    # ------------------------------------------------------------------ checks
    def _check_mergeable(self, other: "Accumulator", *settings: str) -> None:
        r"""Same kind, same settings (``settings`` default: :attr:`settings`), same states."""
        if type(other) is not type(self):
            raise TypeError(f"Cannot merge a {type(other).__name__} into a {type(self).__name__}.")
        differ = [s for s in (settings or type(self).settings) if _differs(getattr(self, s), getattr(other, s))]
        if differ:
            raise ValueError(
                f"Cannot merge {type(self).__name__} accumulators with different {', '.join(differ)}: "
                "every shard must be gathered with the same settings."
            )
        if list(other._declared) != list(self._declared):
            raise ValueError(f"Cannot merge a {type(self).__name__} of states {list(other._declared)} into one "
                             f"of {list(self._declared)}.")


def _fresh(default: Any) -> Any:
    import torch

    if isinstance(default, torch.Tensor):
        return default.clone()
    if isinstance(default, list):
        return list(default)
    return default


def _differs(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                    and torch.equal(a.cpu(), b.cpu().to(a.dtype)))
    return a != b


def _export(value: Any) -> Any:
    r"""A value as ``torch.save`` / ``weights_only`` load keep it: CPU tensor copies, tuples as
    lists, members as ``{"kind", "state"}``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone().contiguous()
    if isinstance(value, Accumulator):
        return {"kind": type(value).__name__, "state": value.state_dict()}
    if isinstance(value, (tuple, list)):
        return [_export(v) for v in value]
    if isinstance(value, dict):
        return {k: _export(v) for k, v in value.items()}
    return value


def _import(owner: str, name: str, default: Any, value: Any, grows: bool = False) -> Any:
    r"""A saved state checked against its declared default (shape, dtype, type); a state that
    ``grows`` (merged by ``"cat"``) may have any length along dim 0."""
    import torch

    where = f"{owner} state {name!r}"
    if isinstance(default, Accumulator):
        if not isinstance(value, Mapping) or value.get("kind") != type(default).__name__:
            got = value.get("kind") if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"{where} should hold a {type(default).__name__}, got {got!r}.")
        default.load_state_dict(value["state"])
        return default
    if isinstance(default, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{where} should be a tensor {tuple(default.shape)} {default.dtype}, "
                             f"got {type(value).__name__}.")
        fixed = slice(1, None) if grows else slice(None)
        if value.dim() != default.dim() or tuple(value.shape[fixed]) != tuple(default.shape[fixed]):
            expected = ("(any, " + ", ".join(map(str, default.shape[1:])) + ")") if grows else tuple(default.shape)
            raise ValueError(f"{where} has shape {tuple(value.shape)}, expected {expected} "
                             "(the settings decide it).")
        if not torch.can_cast(value.dtype, default.dtype):
            raise ValueError(f"{where} has dtype {value.dtype}, expected {default.dtype}.")
        return value.detach().to(device=default.device, dtype=default.dtype).clone()
    if isinstance(default, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (isinstance(default, int) and not integral):
            raise ValueError(f"{where} should be {'an int' if isinstance(default, int) else 'a number'}, got {value!r}.")
        return int(value) if isinstance(default, int) else float(value)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} should be a list, got {type(value).__name__}.")
        return list(value)
    return tuple(value) if isinstance(value, list) else value


def gather_payloads(payload: Any, group: Any = None, dst: Optional[int] = None) -> Optional[List[Any]]:
    r"""Every rank's ``payload`` (tensors, numbers, strings, lists / dicts of them), in rank order.

    Collective over ``group`` (every rank calls it). Payloads travel as ``torch.save`` bytes
    through ``all_gather_object`` (or ``gather_object`` to ``dst``) and are read back with
    ``torch.load(..., weights_only=True)``: a rank cannot make another run arbitrary code.

    Args:
        payload: this rank's state.
        group (ProcessGroup, optional): default: the world.
        dst (int, optional): gather on this (global) rank only; default: on every rank.

    Returns:
        list or None: the payloads of ranks ``0 .. world - 1`` (of the group), CPU tensors;
        ``None`` on ranks other than ``dst``, and when no process group is initialised.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    buf = io.BytesIO()
    torch.save(payload, buf)
    mine = buf.getvalue()
    world = dist.get_world_size(group)
    if dst is None:
        out: Optional[List[Any]] = [None] * world
        dist.all_gather_object(out, mine, group=group)
    else:
        out = [None] * world if dist.get_rank() == dst else None
        dist.gather_object(mine, out, dst=dst, group=group)
        if out is None:
            return None
    return [torch.load(io.BytesIO(b), map_location="cpu", weights_only=True) for b in out]


class AccumulatorCollection(Accumulator):
    r"""Several accumulators fed by one :meth:`update` call, merged and saved together.

    Its members are declared states (:meth:`Accumulator.add_state` with an accumulator as the
    default): reset, merge, state_dict and load are the derived ones; the state dict holds
    ``{name: {"kind": class name, "state": member.state_dict()}}``.

    Args:
        accumulators (mapping of str to Accumulator): the members, by name.

    Example::

        >>> acc = AccumulatorCollection({"topk": TopKState(9, 64, True), "stats": ChannelStats(64)})
        >>> acc.update(acts, indices)          # each member gets (acts, indices)
        >>> acc.compute()["stats"]
    """

    def __init__(self, accumulators: Mapping[str, Accumulator]) -> None:
        for name, acc in accumulators.items():
            if not isinstance(acc, Accumulator):
                raise TypeError(f"Member {name!r} is a {type(acc).__name__}, not an Accumulator.")
            self.add_state(name, acc)

    @property
    def members(self) -> Dict[str, Accumulator]:
        r"""The members, by name, in order."""
        return {name: getattr(self, name) for name in self._declared}

    def __getitem__(self, name: str) -> Accumulator:
        if name not in self._declared:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self._declared

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def items(self):
        return self.members.items()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for acc in self.members.values():
            acc.update(*args, **kwargs)

    def compute(self) -> Dict[str, Any]:
        return {name: acc.compute() for name, acc in self.members.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "AccumulatorCollection":
        r"""A collection rebuilt from :meth:`state_dict`: each member by its recorded kind."""
        members = {}
        for name, entry in state.items():
            kind = Accumulator._kinds.get(entry.get("kind") if isinstance(entry, Mapping) else None)
            if kind is None:
                raise ValueError(f"Member {name!r} of the state is not an accumulator this process knows "
                                 f"({entry.get('kind') if isinstance(entry, Mapping) else type(entry).__name__!r}).")
            members[name] = kind.from_state_dict(entry["state"])
        return cls(members)
