"""``captum_topk.utils.modules.eval_mode``: eval mode inside the block, every module's own
``training`` flag (and, frozen, every parameter's ``requires_grad``) back exactly on exit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_topk.utils.modules import eval_mode


def _mixed():
    """A training model holding a frozen BatchNorm in eval and a frozen parameter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Dropout(0.5), nn.Conv2d(4, 2, 1)))
    model.train()
    model[1].eval()
    model[2][1].weight.requires_grad_(False)
    return model


def _flags(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_eval_mode_restores_mixed_modes_exactly():
    model = _mixed()
    before = _flags(model)
    assert before[0] == [True, True, False, True, True, True]  # not all the same: the case at stake
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        assert _flags(model)[1] == before[1]  # parameters untouched unless frozen
    assert _flags(model) == before


def test_eval_mode_restores_after_an_exception():
    model = _mixed()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model, frozen=True):
            raise RuntimeError("inside")
    assert _flags(model) == before


def test_frozen_switches_gradients_off_inside_only():
    model, other = _mixed(), nn.Linear(2, 2)
    before, before_other = _flags(model), _flags(other)
    with eval_mode(model, other, frozen=True):
        assert not any(p.requires_grad for p in [*model.parameters(), *other.parameters()])
        assert not other.training
    assert _flags(model) == before and _flags(other) == before_other


def test_eval_mode_stops_batch_statistics_and_dropout():
    model = _mixed()
    model[1].train()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    running = model[1].running_mean.clone()
    with eval_mode(model), torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)  # no dropout
    assert torch.equal(model[1].running_mean, running)  # no running-statistics update
    assert model[1].training


class _Recorder(nn.Module):
    """Records its ``training`` flag each time it runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_catch_calls_switches_modules_called_by_a_plain_function():
    inner, outside = _Recorder(), _Recorder()
    outside.eval()  # mixed: the module nobody passed in is restored to its own flag too

    def forward(x):
        return outside(inner(x))

    with eval_mode(nn.Identity(), catch_calls=True):
        forward(torch.zeros(1))
    assert inner.seen == [False] and outside.seen == [False]
    assert inner.training and not outside.training
    assert not nn.modules.module._global_forward_pre_hooks  # the hook is gone
    with eval_mode(nn.Identity()):  # without catch_calls: modules not passed in keep their mode
        forward(torch.zeros(1))
    assert inner.seen[-1] is True
