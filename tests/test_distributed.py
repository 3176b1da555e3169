"""Distributed mining with torchrun (2 CPU processes, gloo): equals one process; resumes after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_topk import TopKResult
from captum_topk.cli import main
from captum_topk.runs.distributed import batches_done, shard_batches

PY = sys.executable


def test_shards_are_disjoint_cover_everything_and_keep_batches():
    for n, b, w in [(40, 4, 2), (41, 4, 3), (3, 8, 2), (0, 4, 2), (100, 7, 4)]:
        shards = [shard_batches(n, b, r, w) for r in range(w)]
        flat = [i for s in shards for r in s for i in r]
        assert sorted(flat) == list(range(n))  # disjoint, complete, no padded duplicates
        single = shard_batches(n, b)
        for r in range(w):  # every rank batch is one of the single-process batches
            assert all(rng in single for rng in shards[r])
    ranges = shard_batches(41, 4, 1, 3)
    assert batches_done(ranges, 0) == 0 and batches_done(ranges, 8) == 2
    assert batches_done(ranges, sum(map(len, ranges))) == len(ranges)
    with pytest.raises(ValueError, match="whole number of this rank's batches"):
        batches_done(ranges, 5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(1)
    for i in range(30):
        (root / "data").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "data" / f"{i:02d}.png")
    torch.manual_seed(0)
    ckpt = root / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), ckpt)
    return root, ckpt


def _args(root, ckpt, out, *extra):
    return ["mine", "--model", "resnet18", "--checkpoint", str(ckpt), "--layers", "layer1", "layer2",
            "--data", str(root / "data"), "--k", "5", "--batch-size", "4", "--input-size", "48",
            "--out", str(out), "--no-progress", "--device", "cpu", *extra]


def _torchrun(args, **kw):
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "captum_topk", *args]
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def _assert_equal(a: TopKResult, b: TopKResult):
    assert a.n_images == b.n_images == 30
    for layer in a.layers:
        for c in range(a.num_channels(layer)):
            for which in ("top", "bottom"):
                ra, rb = a.records(layer, c, which), b.records(layer, c, which)
                assert [(r.index, r.y, r.x, r.box, r.image_id) for r in ra] == \
                       [(r.index, r.y, r.x, r.box, r.image_id) for r in rb]
                assert np.allclose([r.value for r in ra], [r.value for r in rb], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(tmp_path, setup):
    root, ckpt = setup
    assert main(_args(root, ckpt, tmp_path / "one")) == 0
    proc = _torchrun(_args(root, ckpt, tmp_path / "two"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-3000:]
    two = TopKResult.load(tmp_path / "two" / "result.pt")
    _assert_equal(TopKResult.load(tmp_path / "one" / "result.pt"), two)
    assert sorted(p.name for p in (tmp_path / "two").glob("snapshot.rank*")) == [
        "snapshot.rank0-of-2.pt", "snapshot.rank1-of-2.pt"]


@pytest.mark.slow
def test_killed_rank_resumes_to_the_same_result(tmp_path, setup):
    root, ckpt = setup
    assert main(_args(root, ckpt, tmp_path / "one")) == 0
    out = tmp_path / "cut"
    env = dict(os.environ, CAPTUM_TOPK_THROTTLE_S="0.5")
    proc = _torchrun(_args(root, ckpt, out, "--snapshot-every", "0"), env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    snaps = [out / "snapshot.rank0-of-2.pt", out / "snapshot.rank1-of-2.pt"]
    deadline = time.time() + 180
    while time.time() < deadline and not all(p.exists() for p in snaps):
        time.sleep(0.1)
    assert all(p.exists() for p in snaps), "both ranks should have snapshotted"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "torchrun should have worker processes"
    os.kill(int(children[-1]), signal.SIGKILL)  # one rank dies; torchrun tears the job down
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not (out / "result.pt").exists()
    done = [TopKResult.load(p).n_images for p in snaps]
    assert sum(done) < 30, f"the kill should land mid-run, snapshots hold {done}"
    resumed = _torchrun(_args(root, ckpt, out, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, log.decode()[-3000:]
    _assert_equal(TopKResult.load(tmp_path / "one" / "result.pt"), TopKResult.load(out / "result.pt"))
