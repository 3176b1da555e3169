"""Files found in the wild never abort a run: every file is mined or skipped with a reason,
indices stay stable, memory stays within the documented bound (docs/robustness.md)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from captum_topk.capture.batch import split_batch
from captum_topk.core.miner import LayerTopKPatches
from captum_topk.data import (
    IMAGE_EXTENSIONS,
    ImageLimits,
    LoadFailure,
    LoaderBatch,
    SkippedImage,
    collate,
    image_folder,
    make_loader,
)
from captum_topk.data.images import _read_rgb
from captum_topk.data.limits import LOAD_BYTES_PER_PIXEL
from captum_topk.models.info import BoundedResize, make_transform
from captum_topk.runs.distributed import ShardLoader, shard_batches

TF = make_transform(32)  # shorter side 37, center crop 32: every model's preprocessing, small


# --------------------------------------------------------------------------- hostile files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(path: Path, width: int, height: int, *, color_type: int = 0, bit_depth: int = 8,
             rows: int | None = None) -> None:
    r"""A PNG whose header says ``width x height``; its data holds ``rows`` rows of zeros
    (all rows when None: a valid image), compressed as it streams. Every chunk is whole (the
    file passes ``verify()``): with fewer rows, the compressed stream stops unfinished and
    only decoding finds the data missing."""
    channels = {0: 1, 2: 3}[color_type]
    row = b"\0" * (1 + (width * channels * bit_depth + 7) // 8)  # filter byte + pixels
    z = zlib.compressobj(9)
    n = height if rows is None else rows
    data = b"".join(z.compress(row * min(1000, n - i)) for i in range(0, n, 1000))
    data += z.flush(zlib.Z_FINISH if rows is None else zlib.Z_SYNC_FLUSH)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))


def _noise(seed: int, w: int = 40, h: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif_jpeg(path: Path, orientation: int) -> np.ndarray:
    r"""A 16 x 8 JPEG: left half red, right half blue, with an EXIF orientation."""
    px = np.zeros((8, 16, 3), np.uint8)
    px[:, :8] = (255, 0, 0)
    px[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(px).save(path, quality=95, exif=exif.tobytes())
    return px


# Reasons expected at construction (validate="full", default limits).
CONSTRUCTION = {
    "empty.jpg": r"empty file \(0 bytes\)",
    "text.jpg": r"not an image \(PIL cannot identify",
    "trunc.jpg": r"truncated or corrupt image \(",
    "trunc.png": r"truncated or corrupt image \(",
    "bomb.png": r"image too large \(Image size \(200000000 pixels\) exceeds limit",
    "over_limit.png": r"image too large: 10000 x 9500 = 95\.0 M pixels exceeds the limit of 89\.5 M",
    "huge_header.png": r"truncated or corrupt image \(",
    "thin_1x40000.png": r"aspect ratio 40000:1 exceeds the limit 100:1 \(1 x 40000 pixels\)",
    "thin_40000x1.png": r"aspect ratio 40000:1 exceeds the limit 100:1 \(40000 x 1 pixels\)",
    "loop_a.jpg": r"symlink loop",
    "loop_b.jpg": r"symlink loop",
    "link_out.jpg": r"symlink resolves outside root \(to .*secret\.jpg\)",
    "fifo.jpg": r"not a regular file \(a FIFO\)",
}
# Files that pass construction and then change before the mining run.
AT_LOAD = {
    "deleted.jpg": r"file not found \(deleted or moved since the dataset was built\?\)",
    "changed.png": r"aspect ratio 40000:1 exceeds the limit 100:1 \(1 x 40000 pixels\)",
    "later_text.jpg": r"not an image \(PIL cannot identify",
}
NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # a latin-1 file name, not valid UTF-8
MINED = ["a_noise.jpg", "anim.gif", "anim.png", "b_noise.png", NON_UTF8, "cmyk.jpg",
         "exif6.jpg", "gray16.png", "palette_t.png", "rgba.png", "webp.webp", "x.jpg/inner.png"]


@pytest.fixture()
def hostile(tmp_path):
    root = tmp_path / "wild"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    # --- good files, all different noise (no ties in the top-k)
    Image.fromarray(_noise(1)).save(root / "a_noise.jpg", quality=95)
    Image.fromarray(_noise(2)).save(root / "b_noise.png")
    Image.fromarray(_noise(3)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    g16 = np.random.default_rng(4).integers(0, 65536, (30, 40), dtype=np.uint16)
    Image.fromarray(g16).save(root / "gray16.png")
    Image.fromarray(_noise(5)).quantize(16).save(root / "palette_t.png", transparency=0)
    Image.fromarray(np.dstack([_noise(6), np.full((30, 40), 200, np.uint8)]), "RGBA").save(root / "rgba.png")
    frames = [Image.fromarray(_noise(7 + i)).quantize(64) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    frames = [Image.fromarray(_noise(10 + i)) for i in range(3)]
    frames[0].save(root / "anim.png", save_all=True, append_images=frames[1:])
    Image.fromarray(_noise(13)).save(root / "webp.webp", quality=90)
    px = _noise(14, 16, 8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(px).save(root / "exif6.jpg", quality=95, exif=exif.tobytes())
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
        Image.fromarray(_noise(15)).save(f, format="PNG")
    (root / "x.jpg").mkdir()  # a directory named like an image
    Image.fromarray(_noise(16)).save(root / "x.jpg" / "inner.png")
    Image.fromarray(_noise(17)).save(root / "deleted.jpg", quality=95)
    Image.fromarray(_noise(18)).save(root / "changed.png")
    Image.fromarray(_noise(19)).save(root / "later_text.jpg", quality=95)
    # --- hostile files
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("these are not pixels\n")
    Image.fromarray(_noise(20, 256, 256)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(_noise(21, 256, 256)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (root / "trunc.png").write_bytes(data[: len(data) // 2])
    _raw_png(root / "bomb.png", 20000, 10000, bit_depth=1)  # complete: 200 M pixels in 25 KB
    _raw_png(root / "over_limit.png", 10000, 9500, rows=2)
    _raw_png(root / "huge_header.png", 9000, 9000, color_type=2, rows=2)
    Image.new("RGB", (1, 40000), (200, 10, 10)).save(root / "thin_1x40000.png")
    Image.new("RGB", (40000, 1), (10, 200, 10)).save(root / "thin_40000x1.png")
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    Image.fromarray(_noise(22)).save(outside / "secret.jpg")
    os.symlink(outside / "secret.jpg", root / "link_out.jpg")
    os.mkfifo(root / "fifo.jpg")  # opening it would block forever
    return root


def _change_after_build(root: Path) -> None:
    (root / "deleted.jpg").unlink()
    Image.new("RGB", (1, 40000)).save(root / "changed.png")
    (root / "later_text.jpg").write_text("overwritten\n")


def _build(root: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skip summary; Pillow's DecompressionBombWarning
        return image_folder(str(root), extensions=IMAGE_EXTENSIONS + (".gif",), **kw)


def test_every_hostile_file_is_kept_or_skipped_with_its_reason_at_construction(hostile):
    ds = _build(hostile, transform=TF)
    assert ds.ids == sorted(MINED + list(AT_LOAD))
    assert ds.classes == ["x.jpg"] and ds.labels[ds.index_of("x.jpg/inner.png")] == 0
    reasons = {os.path.relpath(p, os.path.realpath(hostile)): r for p, r in ds.skipped}
    assert sorted(reasons) == sorted(CONSTRUCTION)
    for name, pattern in CONSTRUCTION.items():
        assert re.match(pattern, reasons[name]), (name, reasons[name])
    # header validation: the same verdicts for all that the header shows
    hdr = _build(hostile, validate="header")
    hdr_reasons = {os.path.relpath(p, os.path.realpath(hostile)): r for p, r in hdr.skipped}
    for name in ("empty.jpg", "text.jpg", "bomb.png", "over_limit.png", "thin_1x40000.png",
                 "thin_40000x1.png", "loop_a.jpg", "link_out.jpg", "fifo.jpg"):
        assert hdr_reasons[name] == reasons[name]
    assert hdr_reasons["trunc.png"] == "truncated or corrupt image (Truncated File Read)"  # chunks
    assert "trunc.jpg" in hdr.ids and "huge_header.png" in hdr.ids  # data errors: at load time


def _brute_force_top(model: nn.Module, ds, good: list, k: int):
    x = torch.stack([ds[i][0] for i in good])
    with torch.no_grad():
        acts = model[0](x).amax(dim=(2, 3))  # (N, C): each image's best position
    vals, pos = acts.t().sort(dim=1, descending=True)
    return vals[:, :k], torch.tensor(good)[pos[:, :k]]


@pytest.mark.parametrize("workers", [0, 2])
def test_hostile_folder_mines_end_to_end(hostile, workers, tmp_path):
    ds = _build(hostile, transform=TF)
    _change_after_build(hostile)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 4, 3)).eval()
    loader = make_loader(ds, batch_size=4, workers=workers)
    seen_ids, seen_idx, per_batch_skips = [], [], []
    for batch in loader:
        seen_ids += batch["ids"]
        seen_idx += batch["indices"].tolist()
        per_batch_skips += batch["skipped"]
        assert batch["images"].shape == (len(batch["ids"]), 3, 32, 32)
    good = [ds.index_of(i) for i in sorted(MINED)]
    assert seen_ids == sorted(MINED) and seen_idx == good  # global indices: a skipped one stays unused
    assert [ds.ids[i] for i in seen_idx] == seen_ids
    skips = {s.id: s for s in loader.skipped}
    assert per_batch_skips == loader.skipped and sorted(skips) == sorted(AT_LOAD)
    for name, pattern in AT_LOAD.items():
        s = skips[name]
        assert re.match(pattern, s.reason), (name, s.reason)
        assert s.index == ds.index_of(name) and s.source == ds.sources[s.index]

    k = 3
    result = LayerTopKPatches(model, ["0"], k=k).mine(make_loader(ds, batch_size=4, workers=workers),
                                                      progress=False)
    assert result.n_images == len(MINED)
    want_v, want_i = _brute_force_top(model, ds, good, k)
    torch.testing.assert_close(result.values("0"), want_v)
    assert torch.equal(result.indices("0"), want_i)
    for i in result.indices("0").unique().tolist():
        assert result.images[i]["id"] == ds.ids[i]  # the non-UTF-8 name included
    result.save(tmp_path / "result.pt")  # ids with undecodable bytes survive saving
    assert type(result).load(tmp_path / "result.pt").images == result.images
    json.dumps([list(s) for s in loader.skipped])  # what a run records


def test_exif_orientation_is_applied_pixel_exact(tmp_path):
    for orientation, (w, h), top, bottom in [(1, (16, 8), None, None), (6, (8, 16), "red", "blue"),
                                             (8, (8, 16), "blue", "red"), (3, (16, 8), None, None)]:
        path = tmp_path / f"o{orientation}.jpg"
        _exif_jpeg(path, orientation)
        img = np.asarray(_read_rgb(str(path))).astype(int)
        assert img.shape == (h, w, 3), orientation
        red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
        if top is not None:  # rotated a quarter turn: the halves are now top and bottom
            colours = {"red": red, "blue": blue}
            assert np.abs(img[1, 4] - colours[top]).max() < 40
            assert np.abs(img[-2, 4] - colours[bottom]).max() < 40
        elif orientation == 1:
            assert np.abs(img[4, 1] - red).max() < 40 and np.abs(img[4, -2] - blue).max() < 40
        else:  # 3: rotated half a turn, blue now on the left
            assert np.abs(img[4, 1] - blue).max() < 40 and np.abs(img[4, -2] - red).max() < 40


def test_animated_files_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    for name in ("a.gif", "a.png"):
        img = _read_rgb(str(tmp_path / name))
        assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [255, 0, 0], name


def test_jpeg_over_the_pixel_limit_is_decoded_at_reduced_scale(tmp_path):
    Image.fromarray(_noise(0, 300, 200)).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(_noise(0, 300, 200)).save(tmp_path / "big.png")
    limits = ImageLimits(max_pixels=10_000)  # 300 x 200 = 60,000 pixels
    ds = _build(tmp_path, limits=limits)
    assert ds.ids == ["big.jpg"]  # 1/4 scale: 75 x 50 = 3,750 pixels
    assert ds.load_image(0).size == (75, 50)
    assert re.match(r"image too large: 300 x 200 = 0\.1 M pixels exceeds the limit of 0\.0 M",
                    ds.skipped[0][1])
    # the limit is checked again at load time: a dataset built with a larger limit
    loose = _build(tmp_path, validate="none").with_limits(limits)
    batch = next(iter(make_loader(loose.with_transform(TF), batch_size=2)))
    assert batch["ids"] == ["big.jpg"] and batch["skipped"][0].id == "big.png"


def test_header_validation_defers_data_errors_to_load_time(hostile):
    ds = _build(hostile, transform=TF, validate="header")
    loader = make_loader(ds, batch_size=8)
    ids = [i for b in loader for i in b["ids"]]
    reasons = {s.id: s.reason for s in loader.skipped}
    assert ids == [i for i in ds.ids if i not in ("trunc.jpg", "huge_header.png")]
    for name in ("trunc.jpg", "huge_header.png"):
        assert reasons[name].startswith("truncated or corrupt image ("), reasons[name]


def test_bounded_resize_refuses_before_allocating(tmp_path):
    Image.new("RGB", (1, 40000), (200, 10, 10)).save(tmp_path / "thin.png")
    Image.fromarray(_noise(0)).save(tmp_path / "ok.png")
    no_limits = ImageLimits(max_pixels=None, max_aspect_ratio=None)
    ds = _build(tmp_path, transform=make_transform(224), limits=no_limits)
    assert ds.ids == ["ok.png", "thin.png"]  # the data layer lets it through
    loader = make_loader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["ids"] == ["ok.png"] and batch["indices"].tolist() == [0]
    assert batch["skipped"][0].reason == (
        "transform failed (ValueError: resizing a 1 x 40000 image to shorter side 256 would make "
        "it 256 x 10240000 (2621.4 M pixels), over the limit of 33.6 M pixels; its aspect ratio "
        "40000:1 is too extreme for a shorter-side resize and center crop.)")
    # every other image: exactly torchvision's Resize
    ref = T.Resize(256, interpolation=T.InterpolationMode.BILINEAR, antialias=True)
    rng = np.random.default_rng(0)
    for _ in range(10):
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert np.array_equal(np.asarray(BoundedResize(256)(img)), np.asarray(ref(img)))
        assert BoundedResize(256).output_size(w, h) == ref(img).size
    x = torch.rand(3, 2, 500)  # tensors too
    assert torch.equal(BoundedResize(20)(x), ref.__class__(20, antialias=True)(x))
    with pytest.raises(ValueError, match="over the limit of 0.0 M pixels"):
        BoundedResize(20, max_pixels=100)(x)


def test_a_batch_whose_every_image_failed(tmp_path):
    for i in range(6):
        Image.fromarray(_noise(i)).save(tmp_path / f"{i}.png")
    ds = _build(tmp_path, transform=TF)
    for i in (2, 3):
        (tmp_path / f"{i}.png").unlink()
    loader = make_loader(ds, batch_size=2)
    batches = list(loader)
    assert [b["indices"].tolist() for b in batches] == [[0, 1], [4, 5]]
    assert [(s.id, s.index) for s in loader.skipped] == [("2.png", 2), ("3.png", 3)]
    kept = list(make_loader(ds, batch_size=2, keep_empty=True))
    empty = kept[1]
    assert empty["images"].shape == (0, 0, 0, 0) and empty["ids"] == [] and empty.num_images == 0
    assert empty["indices"].tolist() == [] and [s.index for s in empty["skipped"]] == [2, 3]
    parts = split_batch(empty)  # consumers can read it
    assert parts.images.shape[0] == 0 and parts.ids == [] and parts.labels == []
    # the run layer's loader: global indices of this rank's batches, the same skips
    ranges = shard_batches(len(ds), 2, rank=1, world=2)  # batches 1 (all failed) and... none
    shard = ShardLoader(ds, ranges, keep_empty=True)
    out = list(shard)
    assert len(out) == 1 and out[0].num_images == 0 and [s.index for s in shard.skipped] == [2, 3]
    shard0 = ShardLoader(ds, shard_batches(len(ds), 2, rank=0, world=2), dtype=torch.float64)
    out0 = list(shard0)
    assert [b["indices"].tolist() for b in out0] == [[0, 1], [4, 5]] and shard0.skipped == []
    assert out0[0]["images"].dtype == torch.float64
    assert list(ShardLoader(ds, ranges)) == []  # keep_empty=False: nothing to yield


def test_collate_batches_read_as_dicts_and_as_the_former_tuples():
    items = [(torch.full((3, 2, 2), 1.0), 4, "a"), LoadFailure("b.jpg", "empty file (0 bytes)", "b"),
             (torch.full((3, 2, 2), 2.0), 5, "c")]
    b = collate(items)
    assert isinstance(b, LoaderBatch) and set(b.keys()) == {"images", "labels", "ids", "indices", "skipped"}
    assert b["indices"].tolist() == [0, 2] and b["ids"] == ["a", "c"] and b["labels"].tolist() == [4, 5]
    assert [tuple(s) for s in b["skipped"]] == [("b.jpg", "empty file (0 bytes)", 1, "b")]
    images, labels, ids = b  # the former (images, labels, ids)
    assert images is b["images"] and b[1] is labels and b[2] == ["a", "c"]
    parts = split_batch(b)
    assert parts.ids == ["a", "c"] and parts.labels == [4, 5] and parts.indices.tolist() == [0, 2]


class _Flaky(Dataset):
    r"""Any dataset: item 3 raises, item 5 raises MemoryError."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        if i == 3:
            raise OSError("disk says no")
        if i == 5:
            raise MemoryError()
        return torch.full((1, 2, 2), float(i)), i, f"id{i}"


@pytest.mark.parametrize("workers", [0, 2])
def test_any_dataset_is_guarded_in_workers_too(workers, tmp_path):
    loader = make_loader(_Flaky(), batch_size=3, workers=workers)
    got = [(b["indices"].tolist(), b["ids"]) for b in loader]
    assert got == [([0, 1, 2], ["id0", "id1", "id2"]), ([4], ["id4"]), ([6], ["id6"])]
    assert [tuple(s) for s in loader.skipped] == [
        ("item 3", "cannot load image (OSError: disk says no)", 3, None),
        ("item 5", "out of memory while loading (MemoryError)", 5, None)]
    assert len(loader.dataset) == 7
    # a Subset of an ImageDataset: failures are named by file, indices are the subset's
    for i in range(4):
        Image.fromarray(_noise(i)).save(tmp_path / f"{i}.png")
    ds = _build(tmp_path, transform=TF)
    (tmp_path / "2.png").unlink()
    sub_loader = make_loader(Subset(ds, [3, 2, 0]), batch_size=3, workers=workers)
    (b,) = list(sub_loader)
    assert b["ids"] == ["3.png", "0.png"] and b["indices"].tolist() == [0, 2]
    assert sub_loader.skipped[0][:2] == (ds.sources[2], AT_LOAD_REASON_DELETED)


AT_LOAD_REASON_DELETED = "file not found (deleted or moved since the dataset was built?)"


def _status(key: str) -> int:
    r"""``/proc/self/status`` entry in bytes: VmRSS (resident now), VmHWM (its peak), VmSize."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc needed")
def test_peak_memory_stays_within_the_documented_bound(tmp_path):
    folder = tmp_path / "wild"
    folder.mkdir()
    # a valid 4 Mpx WebP (the costliest format to decode: 16 bytes per pixel)
    ramp = np.arange(2000, dtype=np.uint8)
    img = np.empty((2000, 2000, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = ramp[None, :], ramp[:, None], ramp[None, ::-1]
    Image.fromarray(img).save(folder / "big.webp", quality=50, method=0)
    Image.fromarray(np.tile(img, (2, 1, 1))).save(folder / "huge.jpg", quality=50)  # 8 Mpx: 1/2 scale
    del img
    Image.new("RGB", (1, 40000), (200, 10, 10)).save(folder / "thin.png")
    Image.new("RGB", (40000, 1), (200, 10, 10)).save(folder / "wide.png")
    _raw_png(folder / "header.png", 9000, 9000, color_type=2, rows=2)
    _raw_png(folder / "bomb.png", 20000, 10000, bit_depth=1)
    Image.fromarray(_noise(0)).save(folder / "a.png")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()).eval()
    with torch.no_grad():  # warm torch up (kernels, thread pools) before the baseline
        model(TF(Image.new("RGB", (300, 200))).unsqueeze(0))
    limits = ImageLimits(max_pixels=4_000_000)
    gc.collect()
    _malloc_trim()  # freed heap pages of earlier tests go back to the system, not reused unseen
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    base = _status("VmRSS")
    ds = _build(folder, transform=TF, limits=limits)  # decodes each image once, in threads
    result = LayerTopKPatches(model, ["0"], k=2).mine(make_loader(ds, batch_size=4), progress=False)
    grew = _status("VmHWM") - base
    print(f"peak RSS growth {grew / 2**20:.0f} MiB; documented bound {limits.load_bytes / 2**20:.0f} "
          f"MiB (16 B/px x 4 Mpx + 64 MiB)")
    assert ds.ids == ["a.png", "big.webp", "huge.jpg"] and result.n_images == 3
    reasons = {os.path.basename(p): r for p, r in ds.skipped}
    assert sorted(reasons) == ["bomb.png", "header.png", "thin.png", "wide.png"]
    assert reasons["header.png"].startswith("image too large: 9000 x 9000")
    assert limits.load_bytes == LOAD_BYTES_PER_PIXEL * 4_000_000 + 64 * 2 ** 20
    assert 16 * 4_000_000 * 0.6 < grew <= limits.load_bytes  # the WebP was decoded, within the bound


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs RLIMIT_AS and fork")
def test_a_memory_error_skips_the_image_in_the_main_process_and_in_workers(tmp_path):
    r"""The reported bug with every bound switched off: the 1 x 40,000 PNG asks for
    256 x 10,240,000 RGB pixels (7.3 GiB). Under an address-space cap that allocation fails;
    the MemoryError skips the image and the run goes on, in the main process and in workers."""
    import resource

    Image.new("RGB", (1, 40000), (200, 10, 10)).save(tmp_path / "thin.png")
    Image.fromarray(_noise(0)).save(tmp_path / "a.png")
    Image.fromarray(_noise(1)).save(tmp_path / "b.png")
    ds = _build(tmp_path, transform=make_transform(224, max_resized_pixels=None),
                limits=ImageLimits(max_pixels=None, max_aspect_ratio=None), validate="none")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    got = {}
    try:
        resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + 256 * 2 ** 20, hard))
        for workers in (0, 2):
            loader = make_loader(ds, batch_size=3, workers=workers)
            got[workers] = [(b["ids"], b["indices"].tolist()) for b in loader], loader.skipped
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    oom = SkippedImage(ds.sources[2], "out of memory in the transform (MemoryError)", 2, "thin.png")
    assert got[0] == got[2] == ([(["a.png", "b.png"], [0, 1])], [oom])


def test_robustness_doc_examples_run_and_print_what_the_doc_shows(capsys):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "robustness.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", doc, flags=re.S)
    pairs = [(code, blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else None)
             for i, (lang, code) in enumerate(blocks) if lang == "python"]
    assert len(pairs) == 4 and all(text is not None for _, text in pairs)
    for code, text in pairs:  # each block stands alone
        capsys.readouterr()
        exec(compile(code, "docs/robustness.md", "exec"), {"__name__": "__doc_example__"})
        assert capsys.readouterr().out == text
