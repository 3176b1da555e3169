"""The Accumulator protocol: for every streaming statistic, sharded-and-merged equals one pass,
and the state survives torch.save / torch.load(weights_only=True)."""

import dataclasses
import io

import numpy as np
import pytest
import torch

from captum_topk.compare.matching import PairAccumulator
from captum_topk.core.accumulators import (Accumulator, AccumulatorCollection, ChannelMoments, ChannelStats,
                                           CrossCorrelation, MinibatchCKA, TopKState)


def _batches(seed=0, n=6, b=5, c=4, hw=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, hw, hw, generator=g) * 2 for _ in range(n)]


def _feed(acc, kind, batches, start):
    for i, x in enumerate(batches):
        idx = torch.arange(start + i * x.shape[0], start + (i + 1) * x.shape[0])
        if kind == "paired":
            acc.update(x, 0.5 * x + torch.roll(x, 1, dims=0))
        elif kind == "cka":
            acc.update([x.flatten(1)], [x[:, :2].flatten(1), x.pow(2).flatten(1)])
        else:
            acc.update(x, idx)
    return acc


FACTORIES = {
    "topk": (lambda: TopKState(3, 4, True), "single"),
    "topk-several": (lambda: TopKState(3, 4, True, distinct_images=False), "single"),
    "stats": (lambda: ChannelStats(4, torch.linspace(-3, 3, 13)), "single"),
    "moments": (lambda: ChannelMoments(4), "paired"),
    "cka": (lambda: MinibatchCKA(1, 2), "cka"),
    "crosscorr": (lambda: CrossCorrelation(4, 4), "paired"),
    "unit-matching": (lambda: PairAccumulator(4, 4, "resampled", chance=True), "paired"),
}


def _equal(a, b):
    if dataclasses.is_dataclass(a):  # e.g. a UnitMatching
        assert type(a) is type(b)
        _equal(dataclasses.asdict(a), dataclasses.asdict(b))
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _equal(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)
        else:
            assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("name", list(FACTORIES))
def test_sharded_and_merged_equals_one_pass(name):
    make, kind = FACTORIES[name]
    batches = _batches()
    one = _feed(make(), kind, batches, 0)
    first = _feed(make(), kind, batches[:2], 0)
    second = _feed(make(), kind, batches[2:], 2 * batches[0].shape[0])
    merged = first.merge(second)
    assert merged is first
    _equal(one.compute(), merged.compute())
    if kind == "single" and name.startswith("topk"):  # exact, including the tie-breaking positions
        _equal(one.state_dict(), merged.state_dict())


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trips_through_weights_only_load(name):
    make, kind = FACTORIES[name]
    acc = _feed(make(), kind, _batches(seed=1), 0)
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    back = type(acc).from_state_dict(state)
    _equal(acc.compute(), back.compute())
    # the restored accumulator keeps streaming like the original
    more = _batches(seed=2, n=2)
    _feed(acc, kind, more, 100)
    _feed(back, kind, more, 100)
    _equal(acc.compute(), back.compute())


@pytest.mark.parametrize("name", list(FACTORIES))
def test_reset_forgets_and_clone_is_independent(name):
    make, kind = FACTORIES[name]
    fresh = make()
    acc = _feed(make(), kind, _batches(seed=3), 0)
    copy = acc.clone()
    acc.reset()
    _equal(acc.state_dict(), fresh.state_dict())
    assert copy.state_dict() != {} and not _same_state(copy, fresh)


def _same_state(a, b):
    try:
        _equal(a.state_dict(), b.state_dict())
        return True
    except AssertionError:
        return False


def test_merging_different_settings_is_refused():
    with pytest.raises(ValueError, match="different k"):
        TopKState(3, 4, True).merge(TopKState(2, 4, True))
    with pytest.raises(ValueError, match="edges"):
        ChannelStats(4).merge(ChannelStats(4, torch.linspace(0, 1, 3)))
    with pytest.raises(TypeError):
        ChannelStats(4).merge(ChannelMoments(4))


def test_collection_feeds_every_member_and_merges_by_name():
    batches = _batches(seed=4)
    make = lambda: AccumulatorCollection({"topk": TopKState(2, 4, True), "stats": ChannelStats(4)})  # noqa: E731
    one, a, b = make(), make(), make()
    _feed(one, "single", batches, 0)
    _feed(a, "single", batches[:3], 0)
    _feed(b, "single", batches[3:], 15)
    a.merge(b)
    _equal(one.compute(), a.compute())
    c = make()
    c.load_state_dict(one.state_dict())
    _equal(one.compute(), c.compute())
    with pytest.raises(ValueError):
        a.merge(AccumulatorCollection({"topk": TopKState(2, 4, True)}))


# ------------------------------------------------------------------ declared state


class _Summary(Accumulator):
    r"""Written only as declarations + update / compute: every other method is derived."""

    settings = ("channels", "tag")

    def __init__(self, channels: int, tag: str = "x") -> None:
        self.channels, self.tag = int(channels), str(tag)
        self.add_state("total", torch.zeros(channels, dtype=torch.float64), merge="sum")
        self.add_state("count", 0, merge="sum")
        self.add_state("lo", torch.full((channels,), float("inf"), dtype=torch.float64), merge="min")
        self.add_state("hi", torch.full((channels,), float("-inf"), dtype=torch.float64), merge="max")
        self.add_state("firsts", torch.zeros(0, channels), merge="cat")  # row 0 of every batch
        self.add_state("first_seen", None, merge=_keep_first)

    def update(self, x, indices=None):  # (N, C, ...)
        x = x.flatten(2).double() if x.dim() > 2 else x.double()[:, :, None]
        self.total += x.sum((0, 2))
        self.count += x.shape[0] * x.shape[2]
        self.lo = torch.minimum(self.lo, x.amin((0, 2)))
        self.hi = torch.maximum(self.hi, x.amax((0, 2)))
        self.firsts = torch.cat([self.firsts, x[:1, :, 0].float()])
        if self.first_seen is None:
            self.first_seen = tuple(x.shape[1:])

    def compute(self):
        return {"mean": self.total / self.count, "lo": self.lo.clone(), "hi": self.hi.clone(),
                "firsts": self.firsts.clone(), "first_seen": self.first_seen}


def _keep_first(mine, theirs):
    return {"first_seen": mine["first_seen"] if mine["first_seen"] is not None else theirs["first_seen"]}


def test_an_accumulator_of_declarations_only_derives_reset_merge_and_state_dict():
    batches = _batches(seed=5)
    one = _feed(_Summary(4), "single", batches, 0)
    x = torch.cat(batches).double()
    np.testing.assert_allclose(one.compute()["mean"].numpy(), x.mean((0, 2, 3)).numpy(), rtol=1e-12)
    assert torch.equal(one.compute()["lo"], x.amin((0, 2, 3))) and one.count == 30 * 9
    assert one.state_names == ["total", "count", "lo", "hi", "firsts", "first_seen"]
    # merged shards (cat keeps rank order), weights_only round trip, resume
    first, second = _feed(_Summary(4), "single", batches[:2], 0), _feed(_Summary(4), "single", batches[2:], 10)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    back = _Summary.from_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert back.tag == "x" and back.first_seen == (4, 9) and back.firsts.shape == (2, 4)
    _equal(one.compute(), back.merge(second).compute())
    assert torch.equal(back.firsts, torch.stack([b[0, :, 0, 0] for b in batches]))
    # reset: every state back to its default, settings kept
    back.reset()
    _equal(back.state_dict(), _Summary(4).state_dict())
    assert back.firsts.shape == (0, 4) and back.first_seen is None and back.count == 0


def test_loading_a_state_that_does_not_fit_is_refused_with_the_reason():
    acc = _feed(_Summary(4), "single", _batches(seed=6, n=2), 0)
    good = acc.state_dict()
    cases = [({"total": torch.zeros(5, dtype=torch.float64)}, r"'total' has shape \(5,\), expected \(4,\)"),
             ({"firsts": torch.zeros(3, 5)}, r"'firsts' has shape \(3, 5\), expected \(any, 4\)"),
             ({"count": 2.5}, "'count' should be an int"),
             ({"lo": torch.zeros(4, dtype=torch.complex64)}, "dtype"),
             ({"tag": "y"}, "other settings .*from_state_dict")]
    for change, message in cases:
        fresh = _Summary(4)
        with pytest.raises(ValueError, match=message):
            fresh.load_state_dict({**good, **change})
        _equal(fresh.state_dict(), _Summary(4).state_dict())  # nothing half-loaded
    with pytest.raises(ValueError, match=r"missing \['hi'\], unknown \['extra'\]"):
        _Summary(4).load_state_dict({**{k: v for k, v in good.items() if k != "hi"}, "extra": 1})
    with pytest.raises(ValueError, match="different tag"):
        _Summary(4).merge(_Summary(4, tag="y"))
    with pytest.raises(ValueError, match="taken"):
        _Summary(4).add_state("compute", 0)
    with pytest.raises(ValueError, match="merge must be"):
        _Summary(4).add_state("other", 0, merge="mean")
    with pytest.raises(ValueError, match="Not a TopKState state: missing"):
        TopKState.from_state_dict({"k": 2, "channels": 3, "spatial": True, "distinct_images": True})


def test_collections_and_unit_matchings_rebuild_from_their_state_dicts():
    batches = _batches(seed=7)
    coll = AccumulatorCollection({"topk": TopKState(2, 4, True), "stats": ChannelStats(4)})
    _feed(coll, "single", batches, 0)
    buf = io.BytesIO()
    torch.save(coll.state_dict(), buf)
    back = AccumulatorCollection.from_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert list(back) == ["topk", "stats"] and isinstance(back["stats"], ChannelStats)
    _equal(coll.compute(), back.compute())
    pair = _feed(PairAccumulator(4, 4, "pooled"), "paired", batches, 0)
    assert pair.state_names == ["real"]  # no chance level: no mispaired twin
    m = PairAccumulator.from_state_dict(pair.state_dict()).matching("l1", "l2")
    assert (m.layer_a, m.positions, m.images, m.samples) == ("l1", "pooled", 30, 30)
    assert np.isnan(m.chance_correlation) and m.assignment.tolist() == pair.compute().assignment.tolist()


def test_gather_without_a_process_group_is_a_no_op():
    acc = _feed(ChannelStats(4), "single", _batches(seed=8, n=2), 0)
    before = acc.state_dict()
    assert acc.gather() is acc
    _equal(acc.state_dict(), before)


_GATHERED = {
    "topk": lambda: TopKState(3, 4, True, distinct_images=False),
    "stats": lambda: ChannelStats(4, torch.linspace(-3, 3, 13)),
    "unit-matching": lambda: PairAccumulator(4, 4, "resampled", chance=True),
    "summary": lambda: _Summary(4),
}


def _gather_worker(rank, world, init, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        batches = _batches(seed=9)
        mine = batches[rank::world]  # rank r folds batches r, r + W, ...
        got = {}
        for name, make in _GATHERED.items():
            kind = "paired" if name == "unit-matching" else "single"
            acc = make()
            for i, x in zip(range(rank, len(batches), world), mine):
                _feed(acc, kind, [x], i * x.shape[0])
            to_rank0 = acc.clone().gather(dst=0)
            got[name] = acc.gather().state_dict()  # every rank: the merge of all, in rank order
            got[name + "@dst0"] = to_rank0.state_dict()
        torch.save(got, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_over_a_two_process_gloo_group_equals_merging_in_rank_order(tmp_path):
    import time

    import torch.multiprocessing as mp

    world = 2
    # fork: the children start with torch and the accumulators imported (spawn re-imports them)
    ctx = mp.start_processes(_gather_worker, args=(world, f"file://{tmp_path}/pg", str(tmp_path)),
                             nprocs=world, join=False, start_method="fork")
    deadline = time.time() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.time() < deadline, "the gloo ranks did not finish in 120 s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    batches = _batches(seed=9)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, make in _GATHERED.items():
        kind = "paired" if name == "unit-matching" else "single"
        shards = []
        for r in range(world):
            acc = make()
            for i in range(r, len(batches), world):
                _feed(acc, kind, [batches[i]], i * batches[i].shape[0])
            shards.append(acc)
        expected = shards[0].clone().merge(shards[1])
        for r in range(world):
            _equal(got[r][name], expected.state_dict())
        _equal(got[0][name + "@dst0"], expected.state_dict())
        _equal(got[1][name + "@dst0"], shards[1].state_dict())  # not the destination: unchanged
        if name == "topk":  # exact: the same slots as one pass over every batch
            _equal(got[0][name], _feed(make(), kind, batches, 0).state_dict())
