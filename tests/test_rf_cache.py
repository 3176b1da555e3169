"""The persistent receptive-field cache: keyed by structure, survives the process, never stale."""

import importlib

import pytest
import torch
from torch import nn

rf_mod = importlib.import_module("captum_topk.receptive_field.probe")
rf_pkg = importlib.import_module("captum_topk.receptive_field")  # the package (captum_topk.receptive_field is also a function)


def _net(stride=2):
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=stride, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3))


def test_disk_cache_is_used_across_processes_and_keyed_by_structure(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_CACHE_DIR", str(tmp_path))
    first = rf_mod.receptive_field(_net(), "2", 20)
    assert len(list((tmp_path / "receptive_fields").glob("*.pt"))) == 1
    rf_pkg.clear_receptive_field_cache()  # as if in a new process

    def no_probe(*a, **k):
        raise AssertionError("the probe ran although the disk cache holds the answer")

    monkeypatch.setattr(rf_mod, "_probe", no_probe)
    again = rf_mod.receptive_field(_net(), "2", 20)  # other weights, same structure
    assert torch.equal(again.boxes, first.boxes) and again.size == first.size == (7, 7)
    with pytest.raises(AssertionError, match="the probe ran"):
        rf_mod.receptive_field(_net(stride=1), "2", 20)  # other structure: a miss
    rf_pkg.clear_receptive_field_cache(disk=True)
    assert list((tmp_path / "receptive_fields").glob("*.pt")) == []


def test_corrupt_cache_entry_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_CACHE_DIR", str(tmp_path))
    first = rf_mod.receptive_field(_net(), "0", 16)
    rf_pkg.clear_receptive_field_cache()
    for p in (tmp_path / "receptive_fields").glob("*.pt"):
        p.write_bytes(b"not a torch file")
    again = rf_mod.receptive_field(_net(), "0", 16)
    assert torch.equal(again.boxes, first.boxes)


def test_cache_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_CACHE_DIR", "")
    rf_pkg.clear_receptive_field_cache()
    rf_mod.receptive_field(_net(), "0", 16)
    assert rf_pkg.cache_dir() is None
