import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from captum_topk.viz.filters import filter_grid, filter_stats, grid_layout

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def real_layer(make, pick):
    """A layer of a torchvision model, randomly initialised, without initialising the rest
    (AlexNet's classifier alone takes a second or more to initialise)."""
    with torch.device("meta"):
        model = make(weights=None)
    layer = pick(model).to_empty(device="cpu")
    torch.manual_seed(0)
    layer.reset_parameters()
    return layer


def ramp_weight():
    ramp = torch.arange(36, dtype=torch.float32).reshape(3, 3, 4)  # (in=3, kh=3, kw=4)
    return torch.stack([ramp, 100 * ramp - 7])  # (out=2, 3, 3, 4)


def test_rgb_tile_is_per_filter_min_max_of_a_ramp():
    grid = filter_grid(ramp_weight(), ncols=2, pad=0, scale=1)
    assert grid.dtype == np.uint8 and grid.shape == (3, 8, 3)
    tile0, tile1 = grid[:, :4], grid[:, 4:]
    ramp = np.arange(36).reshape(3, 3, 4).transpose(1, 2, 0)  # (kh, kw, rgb)
    np.testing.assert_array_equal(tile0, np.rint(ramp / 35 * 255).astype(np.uint8))
    assert tile0[0, 0, 0] == 0 and tile0.min() == 0  # smallest weight: red channel, top-left
    assert tile0[2, 3, 2] == 255 and tile0.max() == 255  # largest: blue channel, bottom-right
    np.testing.assert_array_equal(tile1, tile0)  # scaled copy: same picture per filter


def test_global_normalisation_compares_strengths():
    grid = filter_grid(ramp_weight(), ncols=2, pad=0, scale=1, normalize="global")
    tile0, tile1 = grid[:, :4], grid[:, 4:]
    assert tile1.min() == 0 and tile1.max() == 255
    assert tile0.max() == round((35 + 7) / 3500 * 255)  # == 3


def test_constant_filter_is_mid_grey():
    grid = filter_grid(torch.ones(1, 3, 2, 2), pad=0, scale=1)
    assert (grid == 128).all()


def test_grid_shape_layout_and_nearest_upscaling():
    torch.manual_seed(0)
    w = torch.randn(10, 3, 5, 5)
    grid = filter_grid(w, ncols=4, pad=2, scale=3, pad_value=7)
    nrows, ncols, height, width = grid_layout(10, (15, 15), ncols=4, pad=2)
    assert (nrows, ncols) == (3, 4)
    assert grid.shape == (height, width, 3) == (3 * 17 + 2, 4 * 17 + 2, 3)
    for j in range(10):
        r, c = divmod(j, 4)
        y, x = 2 + r * 17, 2 + c * 17
        alone = filter_grid(w, channels=[j], pad=0, scale=3)
        np.testing.assert_array_equal(grid[y : y + 15, x : x + 15], alone)
        # nearest neighbour: each weight is a constant 3 x 3 block
        block = alone[3:6, 6:9]
        assert (block == block[0, 0]).all()
    assert (grid[0:2] == 7).all() and (grid[:, 0:2] == 7).all()  # border
    assert (grid[2 + 2 * 17 :, 2 + 2 * 17 :] == 7).all()  # empty cells 10, 11


def test_default_ncols_is_ceil_sqrt():
    assert grid_layout(10, (4, 4))[:2] == (3, 4)
    assert grid_layout(64, (44, 44), ncols=8, pad=1) == (8, 8, 361, 361)
    assert grid_layout(3, (2, 2), ncols=8, pad=0)[:2] == (1, 3)  # never wider than n


def test_channels_subset_keeps_order():
    torch.manual_seed(1)
    w = torch.randn(6, 3, 3, 3)
    grid = filter_grid(w, channels=[4, 1, 4], ncols=3, pad=1, scale=2)
    assert grid.shape == (1 * 7 + 1, 3 * 7 + 1, 3)
    for j, ch in enumerate([4, 1, 4]):
        x = 1 + j * 7
        np.testing.assert_array_equal(
            grid[1:7, x : x + 6], filter_grid(w, channels=[ch], pad=0, scale=2)
        )
    with pytest.raises(ValueError, match="out of range"):
        filter_grid(w, channels=[6])
    with pytest.raises(ValueError, match="empty"):
        filter_grid(w, channels=[])


@pytest.mark.parametrize(
    "make, layer, k",
    [
        (torchvision.models.alexnet, lambda m: m.features[0], 11),
        (torchvision.models.resnet18, lambda m: m.conv1, 7),
    ],
)
def test_torchvision_first_conv_gives_64_rgb_tiles(make, layer, k):
    conv = real_layer(make, layer)
    grid = filter_grid(conv, ncols=8, pad=1, scale=4)
    side = 8 * (4 * k + 1) + 1
    assert grid.shape == (side, side, 3)
    tiles = [
        grid[1 + r * (4 * k + 1) :][: 4 * k, 1 + c * (4 * k + 1) :][:, : 4 * k]
        for r in range(8)
        for c in range(8)
    ]
    assert len(tiles) == 64
    for t in tiles:  # each tile stretched to the full range on its own
        assert t.min() == 0 and t.max() == 255
    same = filter_grid(conv.weight, ncols=8, pad=1, scale=4)
    np.testing.assert_array_equal(same, grid)


def test_depthwise_mobilenet_conv_uses_diverging_map():
    conv = real_layer(torchvision.models.mobilenet_v2, lambda m: m.features[1].conv[0][0])
    assert conv.groups == conv.in_channels == conv.out_channels == 32
    grid = filter_grid(conv, ncols=8, pad=1, scale=2)
    assert grid.shape == (4 * 7 + 1, 8 * 7 + 1, 3)
    for j in range(32):
        r, c = divmod(j, 8)
        tile = grid[1 + r * 7 :][:6, 1 + c * 7 :][:, :6].reshape(-1, 3)
        colours = {tuple(p) for p in tile}
        assert RED in colours or BLUE in colours  # the largest |w| at full colour
        assert all(p[1] == min(p) for p in colours)  # only white-red / white-blue shades


def test_depthwise_known_values():
    w = torch.tensor([[-2.0, 0.0, 1.0]]).reshape(1, 1, 1, 3)
    grid = filter_grid(w, pad=0, scale=1)
    assert [tuple(p) for p in grid[0]] == [BLUE, WHITE, (255, 128, 128)]


def test_mean_mode_averages_input_channels():
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0])  # mean 1
    w[0, :, 0, 1] = torch.tensor([-2.0, 0.0, 0.0, 0.0])  # mean -0.5
    grid = filter_grid(w, pad=0, scale=1)
    assert [tuple(p) for p in grid[0]] == [RED, (128, 128, 255)]


def test_one_by_one_conv_and_norm_mode():
    conv = nn.Conv2d(4, 2, kernel_size=1)
    with torch.no_grad():
        w = torch.tensor([[1.0, -2.0, 0.0, 4.0], [-1.0, 0.0, 0.0, 0.0]])
        conv.weight.copy_(w.view(2, 4, 1, 1))
    grid = filter_grid(conv, pad=1, scale=5)  # auto -> mean mode, 1x1 tiles of 5 x 5 pixels
    assert grid.shape == (1 * 6 + 1, 2 * 6 + 1, 3)
    assert (grid[1:6, 1:6] == RED).all()  # mean +0.75, alone in its tile: full red
    assert (grid[1:6, 7:12] == BLUE).all()  # mean -0.25: full blue
    grid_g = filter_grid(conv, pad=0, scale=1, normalize="global")
    assert [tuple(p) for p in grid_g[0]] == [RED, (170, 170, 255)]  # -0.25 / 0.75
    heat = filter_grid(conv, mode="norm", scale=2)
    assert heat.shape == (2 * 2, 4 * 2, 3)
    row0 = [tuple(heat[0, 2 * i]) for i in range(4)]  # |w| = 1, 2, 0, 4 -> / 4 per row
    assert row0 == [(255, 191, 191), (255, 128, 128), WHITE, RED]
    assert tuple(heat[2, 0]) == RED  # row 1: 1 / 1
    heat_g = filter_grid(conv, mode="norm", scale=1, normalize="global")
    assert tuple(heat_g[1, 0]) == (255, 191, 191)  # 1 / 4 of the global max
    assert filter_grid(conv, mode="norm", channels=[1], scale=1).shape == (1, 4, 3)


def test_explicit_rgb_mode_needs_three_inputs():
    with pytest.raises(ValueError, match="mode='mean'"):
        filter_grid(nn.Conv2d(16, 4, 3), mode="rgb")


@pytest.mark.parametrize(
    "bad, exc, hint",
    [
        (nn.Linear(4, 2), ValueError, "model.features\\[0\\]"),
        (nn.ReLU(), TypeError, "model.features\\[0\\]"),
        (nn.Sequential(nn.Conv2d(3, 4, 3)), TypeError, "pick the convolution"),
        ("features.0", TypeError, "model.features\\[0\\]"),
        (torch.zeros(4, 3, 3), ValueError, "4 dims"),
        (nn.ConvTranspose2d(3, 4, 3), TypeError, "transpose"),
        (torch.zeros(0, 3, 3, 3), ValueError, "empty"),
        (nn.LazyConv2d(4, 3), ValueError, "forward"),
        (torch.zeros(4, 3, 3, 3, device="meta"), ValueError, "meta"),
    ],
)
def test_bad_inputs_raise_with_hint(bad, exc, hint):
    with pytest.raises(exc, match=hint):
        filter_grid(bad)


def test_bad_options():
    w = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="mode"):
        filter_grid(w, mode="fancy")
    with pytest.raises(ValueError, match="normalize"):
        filter_grid(w, normalize="per_layer")
    with pytest.raises(ValueError, match="scale"):
        filter_grid(w, scale=0)


def test_numpy_and_half_weights():
    w = ramp_weight()
    ref = filter_grid(w)
    np.testing.assert_array_equal(filter_grid(w.numpy()), ref)
    np.testing.assert_array_equal(filter_grid(w.half()), ref)


def test_filter_stats_values():
    conv = nn.Conv2d(2, 2, kernel_size=(1, 2))
    with torch.no_grad():
        w = torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]], [[[1.0, 1.0]], [[1.0, 1.0]]]])
        conv.weight.copy_(w)
        conv.bias.copy_(torch.tensor([0.5, -1.0]))
    s = filter_stats(conv)
    np.testing.assert_allclose(s["l2_norm"], [5.0, 2.0])
    np.testing.assert_allclose(s["kernel_l2_norm"], [[5.0, 0.0], [np.sqrt(2), np.sqrt(2)]])
    np.testing.assert_allclose(s["mean"], [7 / 4, 1.0])
    np.testing.assert_allclose(s["max"], [4.0, 1.0])
    np.testing.assert_allclose(s["min"], [0.0, 1.0])
    np.testing.assert_allclose(s["bias"], [0.5, -1.0])
    assert s["shape"] == (2, 2, 1, 2) and s["groups"] == 1
    assert filter_stats(conv.weight)["bias"] is None
