"""Feature visualization by optimisation (captum_topk.featvis).

The parametrization is checked analytically (spectrum scaling, colour covariance, exact
round trips), the transforms against direct resampling, the objectives against hand-written
twins, the loop on a hand-weighted model whose optimum is known in closed form, and the
whole method on the packaged MobileNetV2 (real ImageNet weights) against the dataset top-1
photos that LayerTopKPatches mines.
"""

from __future__ import annotations

import copy
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from captum_topk.featvis import (
    Compose,
    FourierImage,
    Jitter,
    Pad,
    Rotate,
    Scale,
    channel,
    color_sqrt,
    diversity,
    imagenet_color_covariance,
    neuron,
    responses,
    spectrum_scale,
    visualize,
)
from captum_topk.featvis.cache import cache_dir, cached_channels, cached_visualize, model_digest
from captum_topk.featvis.fold import fold_batchnorm
from captum_topk.featvis.objectives import from_name
from captum_topk.featvis.param import image_to_spectrum, spectrum_to_image
from captum_topk.featvis.render import image_seed
from captum_topk.featvis.sheet import sheet
from captum_topk.viz.plot import to_display

from ._models import Permute

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
NONE = Compose([])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on a shared 2-core machine, intra-op threads only add synchronisation
    (OpenMP spin-waits made these tests 4x slower under load). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for d in HOOK_DICTS:
            assert not getattr(m, d, {}), f"hook left in {name or 'model'}.{d}"


def gens(n: int, base: int = 0):
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


# ------------------------------------------------------------------ parametrization
def test_spectrum_scale_is_one_over_frequency():
    for h, w in [(8, 8), (7, 10), (9, 5)]:
        s = spectrum_scale(h, w)
        assert s.shape == (h, w // 2 + 1)
        assert s[0, 0] == pytest.approx(max(h, w))  # DC clamped at 1 / max(h, w)
        for ky in range(h):
            for kx in range(w // 2 + 1):
                fy = (ky if ky <= (h - 1) // 2 else ky - h) / h  # fftfreq
                f = math.hypot(fy, kx / w)
                assert s[ky, kx] == pytest.approx(1 / max(f, 1 / max(h, w)), rel=1e-6)


def test_single_coefficient_is_a_cosine_scaled_by_one_over_f():
    """One real coefficient a at (0, k) gives a * scale * 2 / sqrt(hw) * cos(2 pi k x / w)."""
    h, w = 12, 16
    scale = spectrum_scale(h, w)
    x = torch.arange(w, dtype=torch.float64)
    for k in (1, 3, 5):
        spec = torch.zeros(h, w // 2 + 1, 2, dtype=torch.float64)
        spec[0, k, 0] = 0.7
        img = spectrum_to_image(spec, (h, w), scale.double())
        amplitude = 0.7 * (w / k) * 2 / math.sqrt(h * w)  # scale = 1 / f = w / k
        expected = amplitude * torch.cos(2 * math.pi * k * x / w)
        torch.testing.assert_close(img, expected.expand(h, w), atol=1e-9, rtol=1e-6)  # scale is float32


def test_fft_round_trip_even_and_odd_sizes():
    g = torch.Generator().manual_seed(0)
    for h, w in [(16, 16), (15, 9), (8, 11)]:
        img = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
        scale = spectrum_scale(h, w).double()
        spec = image_to_spectrum(img, scale)
        assert spec.shape == (2, 3, h, w // 2 + 1, 2)
        torch.testing.assert_close(spectrum_to_image(spec, (h, w), scale), img, atol=1e-12, rtol=0)


def test_fourier_image_set_images_inverts_the_whole_parametrization():
    target = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    p = FourierImage(3, 20, generators=gens(3))
    out = p()
    assert out.shape == (3, 3, 20, 20) and out.min() > 0 and out.max() < 1
    p.set_images(target)
    torch.testing.assert_close(p(), target, atol=1e-5, rtol=0)


def test_fourier_image_init_depends_only_on_each_generator():
    a = FourierImage(2, 16, generators=gens(2, base=5))
    b = FourierImage(1, 16, generators=gens(1, base=6))
    torch.testing.assert_close(a.spectrum[1:], b.spectrum)


def test_color_sqrt_squares_to_the_imagenet_covariance():
    cov = imagenet_color_covariance()
    # The published eigen-decomposition: V diag(lambda) V^T.
    v = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
                     dtype=torch.float64)
    torch.testing.assert_close(cov, v @ torch.diag(torch.tensor([0.2175, 0.0188, 0.0045], dtype=torch.float64)) @ v.T)
    for method in ("svd", "symmetric", "cholesky"):
        raw = color_sqrt(method, normalize=False).double()
        torch.testing.assert_close(raw @ raw.T, cov, atol=1e-6, rtol=1e-5)
        m = color_sqrt(method).double()
        norm2 = torch.linalg.vector_norm(raw, dim=0).max() ** 2
        torch.testing.assert_close(m @ m.T, cov / norm2, atol=1e-6, rtol=1e-5)
    assert torch.allclose(color_sqrt("cholesky"), torch.tril(color_sqrt("cholesky")))
    sym = color_sqrt("symmetric")
    torch.testing.assert_close(sym, sym.T)
    # Lucid's color_correlation_svd_sqrt is the SVD root rounded to two digits.
    lucid = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    torch.testing.assert_close(color_sqrt("svd", normalize=False), lucid, atol=0.011, rtol=0)


def test_decorrelated_white_noise_has_the_imagenet_colour_correlation():
    """Independent unit noise in the optimised space becomes noise with ImageNet's colour
    covariance (up to the normalisation): the colour map of FourierImage."""
    z = torch.randn(3, 200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = color_sqrt().double()
    rgb = m @ z
    torch.testing.assert_close(torch.cov(rgb), m @ m.T, atol=3e-3, rtol=0)
    corr = torch.corrcoef(rgb)
    cov = imagenet_color_covariance()
    d = cov.diagonal().sqrt()
    torch.testing.assert_close(corr, cov / d[:, None] / d[None], atol=5e-3, rtol=0)


def test_imagenet_colour_correlation_matches_the_packaged_photos():
    """A real-data twin of the stored covariance: the RGB correlation of the 44 photos."""
    from torchvision import transforms as T

    from captum_topk.data import demo_images

    ds = demo_images(transform=T.Compose([T.Resize(48), T.CenterCrop(48), T.ToTensor()]), validate="none")
    px = torch.stack([ds[i][0] for i in range(len(ds))]).permute(0, 2, 3, 1).reshape(-1, 3).double()
    photos = torch.corrcoef(px.T)
    cov = imagenet_color_covariance()
    d = cov.diagonal().sqrt()
    torch.testing.assert_close(photos, cov / d[:, None] / d[None], atol=0.05, rtol=0)


# ------------------------------------------------------------------ transforms
def test_transform_sizes_and_default_chain():
    x = torch.rand(2, 3, 32, 32)
    t = Compose([Pad(12), Jitter(8), Scale((0.9, 1.1)), Rotate(10), Jitter(4)])
    assert t.output_size((32, 32)) == (44, 44)
    assert t(x, gens(2)).shape == (2, 3, 44, 44)
    padded = Pad(3, value=0.25)(x, gens(2))
    assert torch.equal(padded[:, :, 3:-3, 3:-3], x) and torch.all(padded[:, :, 0] == 0.25)
    assert NONE(x, gens(2)) is x


def test_jitter_is_an_integer_crop_drawn_from_each_image_generator():
    x = torch.rand(3, 3, 20, 20)
    out = Jitter(4)(x, gens(3, base=10))
    for i, g in enumerate(gens(3, base=10)):
        dy, dx = int(torch.randint(0, 5, (), generator=g)), int(torch.randint(0, 5, (), generator=g))
        assert torch.equal(out[i], x[i, :, dy : dy + 16, dx : dx + 16])


def test_scale_two_is_the_centre_crop_upsampled():
    x = torch.rand(1, 3, 16, 16)
    out = Scale((2.0, 2.0))(x, gens(1))
    # Output pixel i samples input pixel 3.75 + i / 2; pixel j of the crop 3..12 upsampled
    # samples 2.75 + j / 2: the same positions for j = i + 2, none of them clamped.
    twin = F.interpolate(x[:, :, 3:13, 3:13], scale_factor=2, mode="bilinear", align_corners=False)[:, :, 2:18, 2:18]
    torch.testing.assert_close(out, twin, atol=1e-5, rtol=0)
    torch.testing.assert_close(Scale((1.0, 1.0))(x, gens(1)), x, atol=1e-6, rtol=0)


def test_rotate_ninety_degrees_is_rot90_counter_clockwise():
    x = torch.rand(1, 3, 10, 10)
    out = Rotate((90.0, 90.0))(x, gens(1))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(Rotate(0.0)(x, gens(1)), x, atol=1e-6, rtol=0)


def test_composed_affine_transforms_are_one_warp_equal_to_two():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 40), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx + yy), torch.cos(2 * yy), xx * yy])[None].repeat(2, 1, 1, 1)
    fused = Compose([Scale((0.9, 1.1)), Rotate(10)])(smooth, gens(2, base=3))
    g = gens(2, base=3)
    # The same draws, one warp after the other: equal away from the border.
    two = Rotate(10)(Scale((0.9, 1.1))(smooth, g), g)
    torch.testing.assert_close(fused[..., 8:-8, 8:-8], two[..., 8:-8, 8:-8], atol=5e-3, rtol=0)


# ------------------------------------------------------------------ objectives
def test_objectives_values_and_arithmetic():
    acts = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    ch = [4, 0, 2]
    c, n = channel(ch), neuron(ch)
    twin_c = torch.stack([acts[i, ch[i]].mean() for i in range(3)])
    twin_n = torch.stack([acts[i, ch[i], 2, 3] for i in range(3)])  # centre of 4 x 6
    torch.testing.assert_close(c(acts), twin_c)
    torch.testing.assert_close(n(acts), twin_n)
    torch.testing.assert_close(neuron(ch, y=1, x=5)(acts), torch.stack([acts[i, ch[i], 1, 5] for i in range(3)]))
    torch.testing.assert_close((c + n)(acts), twin_c + twin_n)
    torch.testing.assert_close((c - 0.5 * n)(acts), twin_c - 0.5 * twin_n)
    torch.testing.assert_close((2 * c / 4 + 1)(acts), twin_c / 2 + 1)
    torch.testing.assert_close((1 - c)(acts), 1 - twin_c)
    torch.testing.assert_close((-c)(acts), -twin_c)
    torch.testing.assert_close(sum([c, n])(acts), twin_c + twin_n)
    assert (c - 0.5 * n).name == "channel - 0.5 * (neuron)" and (-c).name == "-channel"
    torch.testing.assert_close(from_name("-neuron", ch)(acts), -twin_n)
    flat = torch.randn(3, 5)
    torch.testing.assert_close(channel(ch)(flat), flat[torch.arange(3), ch])
    torch.testing.assert_close(neuron(ch)(flat), channel(ch)(flat))
    with pytest.raises(IndexError, match="5 channels"):
        channel([0, 1, 5])(acts)
    with pytest.raises(ValueError, match="one per image"):
        channel([0, 1])(acts)
    with pytest.raises(ValueError, match="Unknown objective"):
        from_name("max", ch)
    with pytest.raises(TypeError):
        c * c


def test_diversity_is_minus_the_mean_gram_cosine_within_groups():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 4, 3, 3, generator=g)
    b = torch.randn(1, 4, 3, 3, generator=g)
    acts = torch.cat([a, a, b, 2 * b, a])
    vals = diversity([0, 0, 1, 1, 2])(acts)
    torch.testing.assert_close(vals, torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0]))  # same style: -1; alone: 0
    ga = (a.flatten(2) @ a.flatten(2).transpose(1, 2)).flatten()
    gb = (b.flatten(2) @ b.flatten(2).transpose(1, 2)).flatten()
    cos = F.cosine_similarity(ga, gb, dim=0)
    torch.testing.assert_close(diversity([0, 0])(torch.cat([a, b])), -cos.expand(2))


# ------------------------------------------------------------------ the loop on known optima
def colour_net() -> nn.Module:
    """Two 1x1-conv channels, each a fixed linear function of RGB: the optimum of channel 0 is
    the colour (1, 0, 1), of channel 1 (0, 1, 0)."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, -0.5]]).view(2, 3, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU())


def test_linear_colour_channels_saturate_towards_their_optimum():
    """Each channel is a fixed linear function of RGB, so its optimum over [0, 1] images is a
    known colour; the optimised images head there, pixel for pixel. (Adam normalises every
    Fourier coefficient's step, so a few pixels lag behind: sign descent in a rotated basis.)"""
    model = colour_net()
    kw = dict(**IDENTITY, size=16, steps=64, lr=0.3, progress=False)
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:, :, None, None]
    vis = visualize(model, "0", [0, 1], decorrelate=False, **kw)
    err = (vis.images - target).abs()
    assert err.median() < 0.05 and err.mean(dim=(2, 3)).max() < 0.12, err.mean(dim=(2, 3))
    assert ((vis.images > 0.5) == (target > 0.5)).float().mean(dim=(2, 3)).min() > 0.85
    # The values are the channel means of the final images: an analytic twin.
    w = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, -0.5]])
    twin = torch.einsum("kc,nchw->nkhw", w, vis.images).mean(dim=(2, 3)).diagonal()
    torch.testing.assert_close(vis.values, twin, atol=1e-5, rtol=0)
    assert vis.values[0] > 1.2 and vis.values[1] > 0.75  # optima 1.5 and 1.0
    # Decorrelated colours get there more slowly (green vs magenta is ImageNet's weakest colour
    # direction, gain 0.14) but head the same way.
    short = {**kw, "steps": 32}
    dec = visualize(model, "0", [0, 1], **kw).images.mean(dim=(2, 3))
    assert dec[0, 0] > dec[0, 1] + 0.3 and dec[0, 2] > dec[0, 1] + 0.3, dec
    assert dec[1, 1] > dec[1, 0] + 0.3 and dec[1, 1] > dec[1, 2] + 0.3, dec
    # The negative objective of channel 0 seeks channel 1's colour (the ReLU is after "0").
    neg = visualize(model, "0", [0], objective="-channel", decorrelate=False, **short)
    colour = neg.images.mean(dim=(2, 3))[0]
    assert colour[1] > colour[0] + 0.5 and colour[1] > colour[2] + 0.5 and neg.values[0] > 0.5, colour


def test_two_dimensional_layer_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    vis = visualize(model, "3", [0, 2], **IDENTITY, size=16, steps=20, lr=0.5, progress=False)
    start = visualize(model, "3", [0, 2], **IDENTITY, size=16, steps=0, progress=False)
    with torch.no_grad():
        logits = model(vis.images)
    torch.testing.assert_close(vis.values, logits[[0, 1], [0, 2]], atol=1e-5, rtol=0)
    assert torch.all(vis.values > start.values + 0.05)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU()).eval()


def test_same_seed_same_images_and_global_rng_untouched():
    model = tiny_net()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a = visualize(model, "2", [1, 4], **IDENTITY, size=24, steps=12, progress=False)
    b = visualize(model, "2", [1, 4], **IDENTITY, size=24, steps=12, progress=False)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert torch.equal(a.images, b.images) and torch.equal(a.values, b.values)
    c = visualize(model, "2", [1, 4], **IDENTITY, size=24, steps=12, seed=1, progress=False)
    assert (a.images - c.images).abs().max() > 0.05
    assert image_seed(0, 1) != image_seed(0, 4) != image_seed(1, 4)


def test_a_channel_does_not_depend_on_its_batch_companions():
    model = tiny_net()
    many = visualize(model, "2", [0, 3, 5], **IDENTITY, size=24, steps=8, progress=False)
    one = visualize(model, "2", [5], **IDENTITY, size=24, steps=8, progress=False)
    split = visualize(model, "2", [0, 3, 5], **IDENTITY, size=24, steps=8, batch_size=1, progress=False)
    torch.testing.assert_close(many.of(5), one.images, atol=1e-4, rtol=0)
    torch.testing.assert_close(many.images, split.images, atol=1e-4, rtol=0)


def test_layout_hook_for_channels_last_and_tokens():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2)
    nchw = nn.Sequential(conv)
    nhwc = nn.Sequential(conv, Permute(0, 2, 3, 1))
    tokens = nn.Sequential(conv, nn.Flatten(2), Permute(0, 2, 1))  # (N, L, C)
    ref = visualize(nchw, "0", [1, 3], **IDENTITY, size=16, steps=8, progress=False)
    last = visualize(nhwc, "1", [1, 3], **IDENTITY, size=16, steps=8, progress=False,
                     layout=lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(last.images, ref.images, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="layout="):
        visualize(tokens, "2", [1], **IDENTITY, size=16, steps=2, progress=False)
    tok = visualize(tokens, "2", [1, 3], **IDENTITY, size=16, steps=8, progress=False,
                    layout=lambda t: t.transpose(1, 2).unsqueeze(-1))
    torch.testing.assert_close(tok.images, ref.images, atol=1e-5, rtol=0)  # channel mean: same objective
    assert_no_hooks(tokens)


def test_bad_input_errors():
    model = tiny_net()
    with pytest.raises(IndexError, match="8 channels"):
        visualize(model, "2", [8], **IDENTITY, size=16, steps=1, progress=False)
    with pytest.raises(ValueError, match="not both"):
        from captum_topk.models.info import ModelInfo

        info = ModelInfo("x", None, (16, 16), (0.5,) * 3, (0.5,) * 3, transform=lambda x: x)
        visualize(model, "2", [0], info=info, mean=(0, 0, 0), size=16, steps=1, progress=False)
    with pytest.raises(ValueError, match="samples >= 2"):
        visualize(model, "2", [0], size=16, steps=1, diversity=1.0, progress=False)
    with pytest.raises(ValueError, match="Unknown layer"):
        visualize(model, "nope", [0], size=16, steps=1, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        visualize(model, "2", [0, 0], size=16, steps=1, progress=False)


def test_diversity_pushes_a_channels_samples_apart():
    """On a 1x1 conv the Gram matrix is the colours' second moments: without the diversity
    term a channel's samples converge to one colour balance, with it they spread."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1) - 0.5)
    model = nn.Sequential(conv).eval()
    kw = dict(**IDENTITY, size=16, steps=30, lr=0.2, samples=3, progress=False)
    plain = visualize(model, "0", [0], **kw)
    diverse = visualize(model, "0", [0], diversity=2.0, **kw)
    assert plain.images.shape == (3, 3, 16, 16) and plain.image_channels == [0, 0, 0]
    assert diverse.values_of(0).shape == (3,)

    def similarity(images):  # mean pairwise cosine of the Gram matrices, as in the loop
        with torch.no_grad():
            return -diversity([0, 0, 0])(model(images)).mean()

    assert similarity(plain.images) > 0.98
    assert similarity(diverse.images) < similarity(plain.images) - 0.05


# ------------------------------------------------------------------ model state and hooks
class Tripwire(nn.Module):
    """Raises when called: the forward must stop before it."""

    def forward(self, x):
        raise AssertionError("the forward ran past the visualized layer")


class Bomb(nn.Module):
    """Counts its calls; raises at call ``at`` (an exception in the middle of the loop)."""

    def __init__(self, at=None):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, x):
        self.calls += 1
        if self.at is not None and self.calls >= self.at:
            raise RuntimeError("boom")
        return x


class StateNet(nn.Module):
    def __init__(self, at=None):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      Bomb(at), nn.Conv2d(4, 6, 3, padding=1))
        self.after = Tripwire()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.after(self.features(x)).mean((2, 3)))


def _mixed_state(model: nn.Module):
    model.train()
    model.features[1].eval()  # one module in eval inside a training model
    model.features[0].weight.requires_grad_(False)  # one frozen parameter
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-1, 1)
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_state(model, state):
    modes, grads, weights = state
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert_no_hooks(model)


@pytest.mark.parametrize("fold_bn", [False, True])
def test_state_restored_and_forward_stopped_after_success(fold_bn):
    model = StateNet()
    state = _mixed_state(model)
    start = visualize(model, "features.4", [0, 5], **IDENTITY, size=16, steps=0, fold_bn=fold_bn, progress=False)
    vis = visualize(model, "features.4", [0, 5], **IDENTITY, size=16, steps=10, fold_bn=fold_bn, progress=False)
    _assert_state(model, state)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients were computed
    assert torch.all(vis.values > start.values)  # gradients reached the image through the stopped forward
    # Eval mode during the loop: the values are those of the model in eval mode.
    model.eval()
    twin = responses(model, "features.4", vis.images, [0, 5], **IDENTITY).diagonal()
    torch.testing.assert_close(vis.values, twin, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fold_bn", [False, True])
def test_state_restored_after_an_exception_mid_run(fold_bn):
    model = StateNet(at=6)  # the probe forward is call 1: raises during step 5
    state = _mixed_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        visualize(model, "features.4", [0, 5], **IDENTITY, size=16, steps=10, fold_bn=fold_bn, progress=False)
    _assert_state(model, state)


def test_fold_batchnorm_is_the_same_function_on_a_copy():
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model, keep={"features.3.conv.2"})
    assert n == 51 and folded is not model  # 52 pairs, one kept
    assert isinstance(folded.features[3].conv[2], nn.Conv2d) and isinstance(folded.features[3].conv[3], nn.BatchNorm2d)
    assert isinstance(folded.features[4].conv[3], nn.Identity)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plain = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    assert fold_batchnorm(plain) == (plain, 0)
    conv, bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    shared = nn.Sequential(nn.Sequential(conv, bn), conv)  # conv used twice: not folded
    assert fold_batchnorm(shared.eval()) == (shared, 0)


class ViewRoundTrip(nn.Module):
    """x.view(n, c*h*w) needs NCHW-contiguous memory: fails on a channels-last tensor."""

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, c * h * w).view(n, c, h, w)


def test_folded_copy_falls_back_to_contiguous_memory_when_a_view_needs_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ViewRoundTrip(), nn.Conv2d(4, 5, 1)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    channels_last[1] = nn.Identity()  # as in the folded copy
    with pytest.raises(RuntimeError, match="view"):
        channels_last(torch.zeros(2, 3, 8, 8))  # what the fallback is for
    folded = visualize(model, "3", [0, 4], **IDENTITY, size=16, steps=6, progress=False)
    plain = visualize(model, "3", [0, 4], **IDENTITY, size=16, steps=6, fold_bn=False, progress=False)
    torch.testing.assert_close(folded.images, plain.images, atol=1e-3, rtol=0)
    assert_no_hooks(model)


# ------------------------------------------------------------------ cache, sheet, CLI
def test_cache_computes_only_what_is_missing(tmp_path, monkeypatch):
    import captum_topk.featvis.cache as cache

    model = tiny_net()
    calls = []
    real = cache.visualize

    def counting(model, layer, channels, **kw):
        calls.append(list(channels))
        return real(model, layer, channels, **kw)

    monkeypatch.setattr(cache, "visualize", counting)
    kw = dict(**IDENTITY, size=16, steps=4, progress=False)
    digest = model_digest(model)
    first = cached_visualize(tmp_path, model, "2", [1, 4], weights_digest=digest, **kw)
    assert calls == [[1, 4]] and first.seconds > 0
    d = cache_dir(tmp_path, model, "2", weights_digest=digest, **kw)
    assert sorted(p.name for p in d.iterdir()) == ["ch1.png", "ch1.pt", "ch4.png", "ch4.pt", "settings.json"]
    data = torch.load(d / "ch4.pt", weights_only=True)
    assert torch.equal(data["images"], first.of(4)) and data["channel"] == 4
    assert np.asarray(Image.open(d / "ch1.png")).shape == (16, 16, 3)
    mtime = (d / "ch1.pt").stat().st_mtime_ns

    again = cached_visualize(tmp_path, model, "2", [4, 1], weights_digest=digest, **kw)
    assert calls == [[1, 4]] and again.seconds == 0  # nothing computed
    assert torch.equal(again.of(1), first.of(1)) and torch.equal(again.values_of(4), first.values_of(4))
    assert (d / "ch1.pt").stat().st_mtime_ns == mtime
    assert cached_channels(tmp_path, model, "2", [1, 2, 4], weights_digest=digest, **kw) == [1, 4]

    more = cached_visualize(tmp_path, model, "2", [1, 2], weights_digest=digest, **kw)
    assert calls[-1] == [2] and more.channels == [1, 2]
    direct = visualize(model, "2", [2], **kw)
    torch.testing.assert_close(more.of(2), direct.images, atol=1e-4, rtol=0)

    cached_visualize(tmp_path, model, "2", [1], weights_digest="other-weights", **kw)
    assert calls[-1] == [1]  # another digest: another cache
    cached_visualize(tmp_path, model, "2", [1], weights_digest=digest, **{**kw, "steps": 5})
    assert calls[-1] == [1]  # another setting: another cache
    cached_visualize(tmp_path, model, "2", [1], weights_digest=digest, **{**kw, "batch_size": 1})
    assert len(calls) == 4  # batch_size does not change the images: cached
    with pytest.raises(TypeError, match="named objective"):
        cached_visualize(tmp_path, model, "2", [1], weights_digest=digest, objective=channel, **kw)
    other = tiny_net()
    with torch.no_grad():
        other[0].bias.add_(1)
    assert model_digest(other) != digest and model_digest(tiny_net()) == digest


def test_sheet_shows_the_visualizations_beside_patches():
    model = tiny_net()
    vis = visualize(model, "2", [1, 4], **IDENTITY, size=16, steps=2, progress=False)
    patches = {4: torch.rand(9, 3, 11, 11)}
    out = sheet(vis, patches, {4: list(range(9))}, vis_px=16, patch_px=12, title="tiny")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    for img in to_display(vis.images):  # each visualization appears, pixel for pixel
        hits = [(y, x) for y in range(out.shape[0] - 15) for x in range(out.shape[1] - 15)
                if np.array_equal(out[y : y + 16, x : x + 16], img)]
        assert len(hits) == 1
    without = sheet(vis, vis_px=16)
    assert without.shape[1] < out.shape[1]


def test_cli_visualize_writes_a_png(tmp_path, capsys):
    from captum_topk.cli.main import main

    out = tmp_path / "vis.png"
    assert main(["visualize", "mobilenet_v2-imagenet", "--layer", "features.1", "--channels", "0", "5",
                 "--size", "24", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[0] > 24 and img.shape[1] > 48
    printed = capsys.readouterr().out
    assert "features.1 channel 5: channel = " in printed and str(out) in printed
    assert main(["visualize", "--layer", "features.1", "--channels", "99", "--size", "16", "--steps", "1",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2


# ------------------------------------------------------------------ quality on real weights
@pytest.fixture(scope="module")
def mobilenet_top1():
    from captum_topk import LayerTopKPatches
    from captum_topk.data import demo_images, make_loader
    from captum_topk.models import load_model

    model, info = load_model("mobilenet_v2-imagenet")
    ds = demo_images(transform=info.transform)
    layers = ["features.3", "features.7", "features.11"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        mined = LayerTopKPatches(model, layers, k=1).mine(make_loader(ds, batch_size=22), progress=False)
    finally:
        torch.set_num_threads(before)
    photos = torch.stack([ds[i][0] for i in range(len(ds))])
    photos = (photos * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(1, 3, 1, 1)).clamp(0, 1)
    return model, info, mined, photos


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["features.3", "features.7", "features.11"])
def test_mobilenet_visualizations_beat_the_dataset_top1(mobilenet_top1, layer):
    """(a) each visualization drives its channel (mean over positions) harder than the channel's
    dataset top-1 photo, whole, at 224 px; (b) also when rolled by 4 px or rescaled by
    +-10 %; (c) each channel responds most to its own visualization."""
    model, info, mined, photos = mobilenet_top1
    chans = [1, 10, 20]
    vis = visualize(model, layer, chans, info=info, size=64, steps=24, progress=False)
    top1 = [mined.records(layer, c)[0].index for c in chans]
    ref = responses(model, layer, photos[top1], chans, info=info).diagonal()
    assert torch.all(vis.values > ref), (vis.values, ref)
    for perturbed in (torch.roll(vis.images, 4, dims=3), torch.roll(vis.images, -4, dims=2),
                      F.interpolate(vis.images, scale_factor=0.9, mode="bilinear", antialias=True),
                      F.interpolate(vis.images, scale_factor=1.1, mode="bilinear")):
        r = responses(model, layer, perturbed, chans, info=info).diagonal()
        assert torch.all(r > ref), (layer, r, ref)
    R = responses(model, layer, vis.images, chans, info=info)
    assert torch.equal(R.argmax(dim=1), torch.arange(len(chans))), R


def test_token_and_channels_last_layers_through_the_miners_layouts():
    import torchvision

    from captum_topk.featvis import layer_layout

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32).eval()
    layer = "encoder.layers.encoder_layer_1"
    module, to_mined, key = layer_layout(vit, layer, 32)
    assert module is vit.encoder.layers.encoder_layer_1 and key == "NLC:1:4x4"
    raw = torch.randn(2, 17, 16)
    assert torch.equal(to_mined(raw)[:, 3, 1, 2], raw[:, 1 + 1 * 4 + 2, 3])  # token (1, 2), channel 3
    vis = visualize(vit, layer, [0, 3], size=32, steps=4, layout="auto", progress=False)  # 32 px fixed input
    assert vis.images.shape == (2, 3, 32, 32)
    head = visualize(vit, layer + "[prefix]", [2], size=32, steps=4, layout="auto", progress=False)
    assert head.images.shape == (1, 3, 32, 32)


# ------------------------------------------------------------------ keys, units, batches
def test_cache_key_follows_the_parametrization_and_transform_defaults(tmp_path, monkeypatch):
    from captum_topk.featvis.transforms import Fit, default_transforms

    model = tiny_net()
    kw = dict(**IDENTITY, size=16, steps=1, progress=False)
    digest = model_digest(model)
    key = cache_dir(tmp_path, model, "2", weights_digest=digest, **kw)
    assert cache_dir(tmp_path, model, "2", weights_digest=digest, **kw) == key
    # a changed default of the parametrization (sd) or of a transform (the pad's grey) changes the key
    monkeypatch.setattr(FourierImage.__init__, "__defaults__",
                        tuple(0.02 if d == 0.01 else d for d in FourierImage.__init__.__defaults__))
    assert FourierImage.config()["sd"] == 0.02
    sd_key = cache_dir(tmp_path, model, "2", weights_digest=digest, **kw)
    assert sd_key != key
    monkeypatch.undo()
    assert cache_dir(tmp_path, model, "2", weights_digest=digest, **kw) == key
    monkeypatch.setattr(Pad.__init__, "__defaults__", ("constant", 0.4))
    assert default_transforms().config()["transforms"][0]["value"] == 0.4
    assert cache_dir(tmp_path, model, "2", weights_digest=digest, **kw) not in (key, sd_key)
    monkeypatch.undo()
    monkeypatch.setattr(FourierImage, "SATURATION", 5.0)
    assert cache_dir(tmp_path, model, "2", weights_digest=digest, **kw) != key
    monkeypatch.undo()
    assert Fit(16).config() == {"transform": "Fit", "size": [16, 16], "scale": [1.0, 1.0]}
    with pytest.raises(TypeError, match="depend on which units"):
        cached_visualize(tmp_path, model, "2", [1], weights_digest=digest, batch_size=4, **kw)


def test_fit_crops_the_centre_or_rescales_to_the_model_size():
    from captum_topk.featvis.transforms import Fit

    x = torch.rand(2, 3, 20, 20)
    torch.testing.assert_close(Fit(16)(x, []), x[..., 2:18, 2:18], atol=0, rtol=0)  # no interpolation
    up = Fit((32, 32), scale=2.0)(x, [])
    torch.testing.assert_close(up, F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)[..., 4:36, 4:36])
    assert Fit(24)(x, []).shape == (2, 3, 24, 24)  # too small: resized up


def test_channels_of_any_integer_type():
    model = tiny_net()
    kw = dict(**IDENTITY, size=16, steps=2, progress=False)
    ref = visualize(model, "2", [1, 5], **kw)
    for chans in (np.array([1, 5]), [np.int64(1), torch.tensor(5)], torch.tensor([1, 5])):
        got = visualize(model, "2", chans, **kw)
        assert got.channels == [1, 5] and torch.equal(got.images, ref.images)
    one = visualize(model, "2", np.int64(5), **kw)
    assert one.channels == [5] and torch.equal(one.images, ref.of(torch.tensor(5)))
    with pytest.raises(TypeError, match="not an integer"):
        visualize(model, "2", [1.0], **kw)


def test_bn_folding_warns_when_hooks_sit_on_the_pair():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    handle = model[0].register_forward_hook(lambda *a: None)  # another library's leftover
    try:
        with pytest.warns(UserWarning, match=r"not folded because hooks sit on them \(0\)"):
            _, n = fold_batchnorm(model)
        assert n == 0
    finally:
        handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fold_batchnorm(model)[1] == 1


@pytest.mark.slow
def test_a_channel_is_the_same_whatever_shares_its_run_on_mobilenet():
    """Kernels round differently for different batch sizes and the optimisation amplifies it
    (0.16 after 32 steps when channels shared one batch): each unit now has a forward of its own."""
    from captum_topk.models import load_model

    model, info = load_model("mobilenet_v2-imagenet")
    kw = dict(info=info, size=48, steps=12, progress=False)
    alone = visualize(model, "features.7", [5], **kw)
    shared = visualize(model, "features.7", [0, 5, 12, 20], **kw)
    assert torch.equal(alone.of(5), shared.of(5)) and torch.equal(alone.values, shared.values_of(5))


def test_directions_one_image_each_dot_product_objective(tmp_path):
    from captum_topk.featvis import direction

    model = tiny_net()
    kw = dict(**IDENTITY, size=16, steps=6, progress=False)
    acts = torch.randn(3, 8, 5, 5)
    eye = torch.eye(8)
    torch.testing.assert_close(direction(eye[[1, 4, 6]])(acts), channel([1, 4, 6])(acts))
    torch.testing.assert_close(direction(eye[[1, 4, 6]], center=True)(acts), neuron([1, 4, 6])(acts))
    v = torch.randn(3, 8)
    torch.testing.assert_close(direction(v)(acts), torch.einsum("nc,nchw->n", v, acts) / 25)
    weighted = direction(v, cossim_pow=1.0)(acts)
    cos = F.cosine_similarity(v[:, :, None, None], acts, dim=1).clamp(min=0.1)
    torch.testing.assert_close(weighted, (torch.einsum("nc,nchw->nhw", v, acts) * cos).mean(dim=(1, 2)))

    # a one-hot direction is its channel; directions keep their images whatever set they come in
    dirs = torch.stack([eye[5], torch.rand(8), -eye[2]])
    vis = visualize(model, "2", dirs, **kw)
    assert vis.images.shape == (3, 3, 16, 16) and vis.channels == [0, 1, 2] and torch.equal(vis.directions, dirs)
    start = visualize(model, "2", dirs, **{**kw, "steps": 0})
    assert torch.all(vis.values > start.values)
    alone = visualize(model, "2", dirs[1:2], **kw)
    assert torch.equal(alone.images, vis.of(1))

    class Concepts:  # duck-typed: .directions and .layer
        directions, layer = dirs, "2"

    by_object = visualize(model, None, Concepts(), **kw)
    assert torch.equal(by_object.images, vis.images)
    with pytest.raises(ValueError, match="belong to layer '2'"):
        visualize(model, "0", Concepts(), **kw)
    with pytest.raises(ValueError, match="3 components"):
        visualize(model, "2", torch.rand(2, 3), **kw)

    digest = model_digest(model)
    first = cached_visualize(tmp_path, model, "2", dirs, weights_digest=digest, **kw)
    assert torch.equal(first.images, vis.images) and first.seconds > 0
    files = sorted(p.name for p in cache_dir(tmp_path, model, "2", weights_digest=digest, **kw).glob("dir*.pt"))
    assert len(files) == 3
    again = cached_visualize(tmp_path, model, None, Concepts(), weights_digest=digest, **kw)
    assert again.seconds == 0 and torch.equal(again.images, vis.images)
    moved = dirs.clone()
    moved[1, 0] += 0.5  # another value: another direction, computed
    assert cached_channels(tmp_path, model, "2", moved, weights_digest=digest, **kw) == [0, 2]
