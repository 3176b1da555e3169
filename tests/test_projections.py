"""Zeiler & Fergus projections and Captum neuron selectors of mined records.

Every projection is checked against a direct Captum call on the same neuron and image, and
against the receptive field (zero outside the record's box); crops against an independent
pixel-index twin of the padding rule.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import (
    NeuronDeconvolution,
    NeuronGradient,
    NeuronGuidedBackprop,
    NeuronIntegratedGradients,
)
from captum.attr._utils.attribution import NeuronAttribution
from torch import nn

from captum_topk import LayerTopKPatches, Projections, symmetric_rgb
from captum_topk.core.projections import override_relus

from ._reference import full_activations, reference_topk

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for d in HOOK_DICTS:
            assert not getattr(m, d, {}), f"hook left in {name or 'model'}.{d}"


class Boom(nn.Module):
    """Raises in its forward once armed: an exception in the middle of an attribution."""

    armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("boom")
        return x


def _relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 6, 3, stride=2), nn.ReLU(), Boom(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).eval()


def _images(n=10, size=24, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _direct(cls, model, module, image, selector, **kw):
    return cls(model, module).attribute(image[None].clone().requires_grad_(), neuron_selector=selector,
                                        **kw)[0].detach()


def _crop_twin(result, layer, full_attr, rec):
    """Crop by pixel ids: patches() of an image whose pixels hold their own flat index
    says which input pixel every cell of the padded crop shows (-1: padding)."""
    h, w = rec.input_size
    ids = torch.arange(h * w, dtype=torch.float32).view(1, h, w)
    cells = result.patches(lambda i: ids, layer, rec.channel, n=rec.rank + 1, fill=-1)[rec.rank, 0].long()
    flat = full_attr.flatten(1)[:, cells.clamp(min=0)]
    return torch.where(cells >= 0, flat, torch.zeros_like(flat))


@pytest.fixture(scope="module")
def mined():
    model = _relu_net()
    images = _images()
    result = LayerTopKPatches(model, ["6", "11"], k=3).mine(images, batch_size=4, progress=False)
    return model, images, result


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("method,cls", [("deconvolution", NeuronDeconvolution),
                                        ("guided_backprop", NeuronGuidedBackprop),
                                        (NeuronGradient, NeuronGradient)])
def test_projection_is_zero_outside_box_and_equals_direct_captum(mined, method, cls, batch):
    model, images, result = mined
    module = model[6]
    # one record at a time: bit-identical to Captum; the k records in one backward pass: the
    # same up to float summation order in the batched kernels
    tol = dict(rtol=1e-5, atol=1e-7) if batch else dict(rtol=0, atol=0)
    for channel in (0, 4):
        full = result.projections(images, "6", channel, method, model=model, crop=False, progress=False,
                                  batch=batch)
        cropped = result.projections(images, "6", channel, method, model=model, progress=False, batch=batch)
        assert isinstance(full, Projections) and full.method == cls.__name__
        assert cropped.attributions.shape == result.patches(images, "6", channel).shape
        assert cropped.rgb.shape == (3, *cropped.attributions.shape[-2:], 3)
        assert cropped.rgb.dtype == np.uint8
        for j, rec in enumerate(full.records):
            a = full.attributions[j]
            top, left, bottom, right = rec.box
            outside = torch.ones(a.shape[-2:], dtype=torch.bool)
            outside[top:bottom, left:right] = False
            assert bool((a[:, outside] == 0).all()), (rec, float(a[:, outside].abs().max()))
            assert float(a[:, ~outside].abs().sum()) > 0  # a real, non-trivial projection
            direct = _direct(cls, model, module, images[rec.index], (channel, rec.y, rec.x))
            torch.testing.assert_close(a, direct, **tol)
            torch.testing.assert_close(cropped.attributions[j], _crop_twin(result, "6", direct, rec), **tol)
    assert_no_hooks(model)


def test_linear_layer_neuron_is_the_channel(mined):
    model, images, result = mined
    proj = result.projections(images, "11", 2, "gradient", model=model, progress=False, batch=False)
    batched = result.projections(images, "11", 2, "gradient", model=model, progress=False)
    assert [sel for _, sel in result.neurons("11", 2)] == [2, 2, 2]
    for j, rec in enumerate(proj.records):
        direct = _direct(NeuronGradient, model, model[11], images[rec.index], 2)
        torch.testing.assert_close(proj.attributions[j], direct, rtol=0, atol=0)  # whole image
        torch.testing.assert_close(batched.attributions[j], direct, rtol=1e-5, atol=1e-7)


def test_neurons_with_integrated_gradients_equal_a_direct_call(mined):
    model, images, result = mined
    acts = full_activations(model, model[6], images, batch_size=4)
    ref = reference_topk(acts, 3)
    ig = NeuronIntegratedGradients(model, model[6])
    for channel in (1, 5):
        pairs = result.neurons("6", channel)
        # Independent twin: the selectors are the brute-force top-k positions.
        assert [(r.index, sel) for r, sel in pairs] == [(i, (channel, y, x)) for _, i, y, x in ref[channel]]
        for record, selector in pairs:  # the documented example
            image = images[record.index].unsqueeze(0)
            attr = ig.attribute(image, neuron_selector=selector, n_steps=16)
            _, i, y, x = ref[channel][record.rank]
            direct = NeuronIntegratedGradients(model, model[6]).attribute(
                images[i : i + 1], neuron_selector=(channel, y, x), n_steps=16)
            torch.testing.assert_close(attr, direct, rtol=0, atol=0)
        proj = result.projections(images, "6", channel, NeuronIntegratedGradients, model=model,
                                  attribute_kwargs={"n_steps": 16}, crop=False, progress=False)
        for j, (record, selector) in enumerate(pairs):
            direct = ig.attribute(images[record.index][None], neuron_selector=selector, n_steps=16)[0]
            torch.testing.assert_close(proj.attributions[j], direct, rtol=0, atol=0)


def test_symmetric_rgb_twin():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 3, 5, 6, generator=g)
    a[2] = 0
    a[3, 0, 0, 0] = 40.0  # one outlier: the percentile keeps the rest visible
    for pct in (100, 99.5, 90):
        rgb, scale = symmetric_rgb(a, percentile=pct)
        for j in range(4):
            mags = a[j].abs().double().numpy().ravel()
            s = np.percentile(mags, pct) if mags.max() > 0 else 0.0
            expected = np.full((5, 6, 3), 128, np.uint8) if s == 0 else np.clip(
                np.round(128 + 127 * a[j].permute(1, 2, 0).double().numpy() / s), 0, 255).astype(np.uint8)
            assert np.abs(rgb[j].astype(int) - expected).max() <= (0 if pct == 100 else 1)
            assert float(scale[j]) == pytest.approx(s if s else float(a[j].abs().max()), rel=1e-6)
    squeezed, _ = symmetric_rgb(a, percentile=100)
    spread, _ = symmetric_rgb(a, percentile=90)
    rest = np.ones((5, 6, 3), bool)
    rest[0, 0, 0] = False
    assert int(squeezed[3, 0, 0, 0]) == 255 and np.abs(squeezed[3][rest].astype(int) - 128).max() < 20
    assert np.abs(spread[3][rest].astype(int) - 128).max() > 100  # the outlier no longer hides the rest
    shared, s2 = symmetric_rgb(a, shared_scale=True, percentile=100)
    assert torch.all(s2 == a.abs().max())
    grey, _ = symmetric_rgb(a[:, :1])
    assert np.array_equal(grey[..., 0], grey[..., 2])
    with pytest.raises(ValueError, match="percentile"):
        symmetric_rgb(a, percentile=0)


def test_no_hook_left_after_an_exception_during_a_projection(mined):
    model, images, result = mined
    before = result.projections(images, "6", 0, "gradient", model=model, crop=False, progress=False)
    model[8].armed = True
    try:
        for method in ("deconvolution", "guided_backprop", NeuronIntegratedGradients):
            with pytest.raises(RuntimeError, match="boom"):
                result.projections(images, "6", 0, method, model=model, progress=False)
            assert_no_hooks(model)
    finally:
        model[8].armed = False
    after = result.projections(images, "6", 0, "gradient", model=model, crop=False, progress=False)
    torch.testing.assert_close(after.attributions, before.attributions, rtol=0, atol=0)  # nothing left over


class _LeakyAttribution(NeuronAttribution):
    """A badly written third-party method: registers a hook and raises without removing it."""

    def __init__(self, forward_func, layer, device_ids=None):
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)

    def attribute(self, inputs, neuron_selector, **kwargs):
        self.layer.register_forward_hook(lambda *a: None)
        raise ValueError("leaky")


def test_hooks_of_a_leaky_third_party_method_are_removed_too(mined):
    model, images, result = mined
    with pytest.raises(ValueError, match="leaky"):
        result.projections(images, "6", 0, _LeakyAttribution, model=model, progress=False)
    assert_no_hooks(model)


# ------------------------------------------------------------------ ReLU6 (MobileNetV2) support
def _relu6_net(act=nn.ReLU6) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), act(inplace=True), nn.Conv2d(6, 6, 3, stride=2, padding=1),
        act(inplace=True), nn.Conv2d(6, 5, 3, padding=1), act(), nn.Conv2d(5, 4, 3),
    ).eval()


@pytest.mark.parametrize("method,cls", [("deconvolution", NeuronDeconvolution),
                                        ("guided_backprop", NeuronGuidedBackprop)])
def test_relu6_gets_the_relu_rule(method, cls):
    model = _relu6_net()
    twin = copy.deepcopy(model)  # the same network with nn.ReLU, which Captum overrides itself
    for i, m in enumerate(twin):
        if isinstance(m, nn.ReLU6):
            twin[i] = nn.ReLU(inplace=m.inplace)
    images = _images(6, 16, seed=4)
    for i, m in enumerate(model):  # below 6 everywhere: ReLU6 == ReLU, gradients included
        if isinstance(m, nn.ReLU6):
            assert float(full_activations(model, model[i], images).max()) < 6
    result = LayerTopKPatches(model, "6", k=2).mine(images, progress=False)
    proj = result.projections(images, "6", 1, method, model=model, crop=False, progress=False)
    plain = result.projections(images, "6", 1, method, model=model, crop=False, relu_types=(),
                               progress=False, batch=False)  # one record a pass: bit-exact twin
    for j, rec in enumerate(proj.records):
        sel = (1, rec.y, rec.x)
        torch.testing.assert_close(proj.attributions[j], _direct(cls, twin, twin[6], images[rec.index], sel))
        gradient = _direct(NeuronGradient, model, model[6], images[rec.index], sel)
        # Without the override Captum leaves ReLU6 alone: the "projection" is the plain gradient.
        torch.testing.assert_close(plain.attributions[j], gradient, rtol=0, atol=0)
        assert not torch.allclose(proj.attributions[j], gradient)
    assert_no_hooks(model)


def test_deconvnet_without_max_pooling_ignores_the_image():
    """Why docs/projections.md leads with guided backprop for MobileNetV2: the deconvnet
    ignores forward ReLU masks, so without max-pooling switches it is one linear map, the
    same for every image; guided backprop keeps the masks and depends on the image."""
    model = _relu6_net()
    images = _images(2, 16, seed=7)
    sel = (1, 3, 3)
    deconv = [_direct(NeuronDeconvolution, model, model[6], im, sel) for im in images]
    with override_relus(model, (nn.ReLU6,), use_grad_output=True):
        ours = [_direct(NeuronGradient, model, model[6], im, sel) for im in images]
    torch.testing.assert_close(ours[0], ours[1], rtol=0, atol=1e-6)
    assert not torch.allclose(deconv[0], ours[0])  # Captum alone leaves ReLU6 alone
    with override_relus(model, (nn.ReLU6,), use_grad_output=False):
        guided = [_direct(NeuronGradient, model, model[6], im, sel) for im in images]
    assert not torch.allclose(guided[0], guided[1])
    assert_no_hooks(model)


def test_override_relus_on_relu_equals_captum():
    """The rule of override_relus, applied to nn.ReLU with a plain gradient, is Captum's own."""
    model = _relu6_net(nn.ReLU)
    x = _images(1, 16, seed=5)
    for use_out, cls in ((True, NeuronDeconvolution), (False, NeuronGuidedBackprop)):
        with override_relus(model, (nn.ReLU,), use_grad_output=use_out):
            ours = NeuronGradient(model, model[4]).attribute(x.clone().requires_grad_(), (2, 3, 4))
        assert_no_hooks(model)
        torch.testing.assert_close(ours, cls(model, model[4]).attribute(x.clone().requires_grad_(), (2, 3, 4)))


# ------------------------------------------------------------------ real architectures, errors
@pytest.mark.parametrize("arch,layer", [("resnet18", "layer1.1"), ("mobilenet_v2", "features.2")])
def test_torchvision_architectures_zero_outside_box(arch, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=5).eval()
    images = _images(2, 32, seed=6)
    result = LayerTopKPatches(model, layer, k=2).mine(images, progress=False)
    proj = result.projections(images, layer, 3, "deconvolution", model=model, crop=False, progress=False)
    one_by_one = result.projections(images, layer, 3, "deconvolution", model=model, crop=False, progress=False,
                                    batch=False)
    module = dict(model.named_modules())[layer]
    for j, rec in enumerate(proj.records):
        a = proj.attributions[j]
        top, left, bottom, right = rec.box
        outside = torch.ones(a.shape[-2:], dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert bool((a[:, outside] == 0).all()) and float(a.abs().sum()) > 0
        if arch == "resnet18":  # nn.ReLU modules only: Captum alone does everything
            direct = _direct(NeuronDeconvolution, model, module, images[rec.index], (3, rec.y, rec.x))
            torch.testing.assert_close(one_by_one.attributions[j], direct, rtol=0, atol=0)
            torch.testing.assert_close(a, direct, rtol=1e-5, atol=1e-6 * float(direct.abs().max()))
    assert_no_hooks(model)


def test_clear_errors(mined):
    model, images, result = mined
    with pytest.raises(TypeError, match="model="):
        result.projections(images, "6", 0)
    with pytest.raises(ValueError, match="Unknown projection method"):
        result.projections(images, "6", 0, "lrp", model=model)
    with pytest.raises(ValueError, match="another layer"):
        result.projections(images, "6", 0, NeuronGradient(model, model[3]), model=model)
    with pytest.raises(ValueError, match="was mined at"):
        result.projections(_images(10, 20), "6", 0, model=model, progress=False)
    with pytest.raises(KeyError, match="not mined"):
        result.projections(images, "3", 0, model=model)


# ------------------------------------------------------------------ command line
def test_cli_mine_stats_and_show_projection(tmp_path):
    from PIL import Image

    from captum_topk import TopKResult
    from captum_topk.cli import main

    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / "data" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(
            tmp_path / "data" / f"c{i % 2}" / f"{i}.png")
    torch.manual_seed(0)
    ckpt = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), ckpt)
    common = ["mine", "--model", "resnet18", "--checkpoint", str(ckpt), "--layers", "layer1",
              "--data", str(tmp_path / "data"), "--k", "2", "--batch-size", "3", "--input-size", "32",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    assert main([*common, "--out", str(tmp_path / "plain"), "--no-stats"]) == 0
    with_stats = TopKResult.load(tmp_path / "run" / "result.pt")
    assert with_stats.stats("layer1").n_images == 6
    assert int(with_stats.stats("layer1").count[0]) == 6 * 8 * 8  # layer1 is 8 x 8 at 32 px
    assert TopKResult.load(tmp_path / "plain" / "result.pt").channel_stats == {}
    assert main(["show", str(tmp_path / "run"), "--channels", "5",
                 "--projection", "guided_backprop", "--patch-px", "32"]) == 0
    sheet = np.asarray(Image.open(tmp_path / "run" / "layer1_top2_guided_backprop.png"))  # k = 2
    plain = np.asarray(Image.open(tmp_path / "run" / "layer1_top2.png"))
    assert sheet.shape[1] > plain.shape[1] // 2 and sheet.shape[2] == 3
    assert len(np.unique(sheet.reshape(-1, 3), axis=0)) > 50  # real pictures, not blank cells
