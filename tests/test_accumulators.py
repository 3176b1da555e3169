"""The Accumulator protocol: for every streaming statistic, sharded-and-merged equals one pass,
and the state survives torch.save / torch.load(weights_only=True)."""

import io

import pytest
import torch

from captum_topk.core.accumulators import (AccumulatorCollection, ChannelMoments, ChannelStats,
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
}


def _equal(a, b):
    if isinstance(a, dict):
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
