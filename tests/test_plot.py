import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from captum_topk.viz.plot import channel_sheet, label_height, patch_grid, save_png, to_display

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def uint8_images(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def test_to_display_inverts_torchvision_normalize_exactly():
    img = uint8_images(2, 3, 16, 12)
    normed = TF.normalize(img.float() / 255, MEAN, STD)  # float32, as a data loader makes it
    out = to_display(normed, mean=MEAN, std=STD)
    assert out.dtype == np.uint8 and out.shape == (2, 16, 12, 3)
    np.testing.assert_array_equal(out, img.permute(0, 2, 3, 1).numpy())


def test_to_display_grey_clipping_and_uint8():
    x = torch.tensor([[[[-0.2, 0.0, 0.5, 1.0, 1.5]]]])  # (1, 1, 1, 5)
    out = to_display(x)
    assert out.shape == (1, 1, 5, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 0, 128, 255, 255])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    img = uint8_images(1, 3, 4, 4)
    np.testing.assert_array_equal(to_display(img), img.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(to_display(img[0].float() / 255), to_display(img))  # (C, h, w)
    with pytest.raises(ValueError, match="mean/std"):
        to_display(img, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="C in"):
        to_display(torch.zeros(1, 4, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        to_display(torch.zeros(1, 3, 3, 3), mean=(0.5, 0.5), std=STD)


def test_patch_grid_size_and_pixel_offsets():
    patches = uint8_images(5, 3, 6, 7, seed=1)
    img = patch_grid(patches.float() / 255, ncols=3, pad=2, scale=2)
    cell_w, cell_h = 7 * 2, 6 * 2
    assert img.mode == "RGB"
    assert img.size == (3 * (cell_w + 2) + 2, 2 * (cell_h + 2) + 2) == (50, 30)
    a = np.asarray(img)
    for j in range(5):
        r, c = divmod(j, 3)
        x, y = 2 + c * (cell_w + 2), 2 + r * (cell_h + 2)
        expect = patches[j].permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
        np.testing.assert_array_equal(a[y : y + cell_h, x : x + cell_w], expect)
    assert (a[:2] == 255).all() and (a[:, :2] == 255).all()  # white padding
    assert (a[2 + cell_h + 2 :, 2 + 2 * (cell_w + 2) :][:-2, :-2] == 255).all()  # empty 6th cell


def test_patch_grid_values_and_title():
    patches = torch.full((4, 3, 40, 44), 0.5)
    plain = patch_grid(patches, ncols=2, pad=3)
    vals = [9.87, 5.4321, 1.0, -0.002]
    labelled = patch_grid(patches, values=vals, ncols=2, pad=3)
    lh = label_height()
    assert plain.size == (2 * 47 + 3, 2 * 43 + 3)
    assert labelled.size == (plain.width, plain.height + 2 * lh)
    a = np.asarray(labelled)
    for j in range(4):
        r, c = divmod(j, 2)
        x, y = 3 + c * 47, 3 + r * (43 + lh)
        assert (a[y : y + 40, x : x + 44] == 128).all()  # patch untouched by the text
        label = a[y + 40 : y + 40 + lh, x : x + 44]
        assert label.min() < 100  # dark text written under the patch
    titled = patch_grid(patches, values=vals, ncols=2, pad=3, title="ch 7")
    assert titled.size == (labelled.width, labelled.height + lh + 3)
    t = np.asarray(titled)
    assert t[: lh + 3].min() < 100  # title text
    np.testing.assert_array_equal(t[lh + 3 :], a)  # the grid, shifted down by the title
    with pytest.raises(ValueError, match="3 values for 4"):
        patch_grid(patches, values=[1, 2, 3])


def test_patch_grid_widens_cells_for_long_labels_and_mixed_sizes():
    small = [torch.ones(3, 5, 5), torch.zeros(3, 3, 4)]
    img = patch_grid(small, values=[-1234.5, 0.5], ncols=2, pad=1)
    a = np.asarray(img)
    cell_w = (img.width - 1) // 2 - 1
    assert cell_w > 5  # wide enough for "-1.23e+03"
    x0 = 1 + (cell_w - 5) // 2
    assert (a[1:6, x0 : x0 + 5] == 255).all()  # 5 x 5 white patch, centred
    x1 = 1 + cell_w + 1 + (cell_w - 4) // 2
    assert (a[1:4, x1 : x1 + 4] == 0).all()  # 3 x 4 black patch, top of its cell


def test_channel_sheet_layout():
    sets = {c: uint8_images(9, 3, 8, 8, seed=c).float() / 255 for c in (3, 11, 40)}
    values = {c: list(np.linspace(1, 0.2, 9)) for c in sets}
    sheet = channel_sheet(sets, values, ncols=2, gap=6, pad=2, scale=2, title="Layer 2: Top-9")
    blocks = [
        patch_grid(sets[c], values[c], ncols=3, pad=2, scale=2, title=f"ch {c}") for c in sets
    ]
    bw, bh = blocks[0].size
    th = label_height() + 6
    assert sheet.size == (2 * (bw + 6) + 6, th + 2 * (bh + 6) + 6)
    s = np.asarray(sheet)
    for j, b in enumerate(blocks):
        r, c = divmod(j, 2)
        x, y = 6 + c * (bw + 6), th + 6 + r * (bh + 6)
        np.testing.assert_array_equal(s[y : y + bh, x : x + bw], np.asarray(b))
    assert (s[-6:] == 230).all()  # grey sheet margin
    with pytest.raises(ValueError, match="empty"):
        channel_sheet({})


def test_save_png_atomic(tmp_path):
    arr = uint8_images(1, 3, 9, 7)[0].permute(1, 2, 0).numpy()
    target = tmp_path / "a" / "b" / "grid.png"
    assert save_png(Image.fromarray(arr), target) == target
    assert os.listdir(target.parent) == ["grid.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(target)), arr)
    save_png(arr[::-1].copy(), str(target))  # numpy input, overwrite in place
    assert os.listdir(target.parent) == ["grid.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(target)), arr[::-1])


def test_save_png_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "grid.png"
    save_png(np.zeros((2, 2, 3), np.uint8), target)
    with pytest.raises(OSError):
        save_png(Image.new("CMYK", (2, 2)), target)  # PNG cannot store CMYK
    assert os.listdir(tmp_path) == ["grid.png"]
    assert np.asarray(Image.open(target)).max() == 0
    with pytest.raises(TypeError, match="uint8"):
        save_png(np.zeros((2, 2, 3)), target)


def test_grid_rows_formula():
    for k in (1, 3, 4, 9, 10):
        img = patch_grid(torch.zeros(k, 1, 4, 4), ncols=3, pad=1)
        assert img.height == math.ceil(k / 3) * 5 + 1 and img.width == 3 * 5 + 1
    empty = patch_grid(torch.zeros(0, 3, 4, 4), ncols=3, pad=1, title="ch 0")
    assert empty.height == label_height() + 1 + 6
