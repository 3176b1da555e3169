"""Receptive fields by interval arithmetic along a torch.fx / ONNX trace (method="trace").

Every traced field is checked against two independent references: the full NaN probe
(method="probe", one image per input row and column) and, for real torchvision families,
the input gradients of a dependency-faithful copy of the model (the helpers of
``test_receptive_field``). The per-axis index maps are checked one by one against NaN
propagation through the very PyTorch operator they describe. Then the fallbacks: a plain
forward function, an unknown operation, data-dependent control flow and a deliberately wrong
rule all end in the full probe (or in ``TraceError`` with ``method="trace"``), and
channels-last outputs are still refused.
"""

from __future__ import annotations

import importlib
import io
import warnings

import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from onnx import TensorProto, helper
from torch import nn

from captum_topk import LayerTopKPatches
from captum_topk.capture.layouts import ChannelsLastError
from captum_topk.onnx import list_tensors, load_onnx, onnx_receptive_fields
from captum_topk.receptive_field import (
    ReceptiveField,
    clear_receptive_field_cache,
    receptive_field,
    receptive_fields,
)
from captum_topk.receptive_field.intervals import (
    TraceError,
    adaptive_map,
    pad_map,
    resize_map,
    transposed_window_map,
    window_length,
    window_map,
)

from ._models import convnext_like
from .test_receptive_field import (
    _dependency_faithful_copy,
    _dilated_stack,
    _executed,
    _gradient_support,
    _positions,
)

probe_mod = importlib.import_module("captum_topk.receptive_field.probe")
intervals_mod = importlib.import_module("captum_topk.receptive_field.intervals")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # OpenMP with 2 threads on an oversubscribed CPU is much slower than 1 thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# 1. The 1-D index maps against NaN propagation through the PyTorch operator itself
# ---------------------------------------------------------------------------------------


def _nan_map(op, n_in: int) -> torch.Tensor:
    """(n_out, n_in) bool: output y is NaN when input index i is, through ``op`` on a
    (1, 1, 1, n_in) row."""
    rows = []
    for i in range(n_in):
        x = torch.rand(1, 1, 1, n_in) + 0.5
        x[..., i] = float("nan")
        rows.append(torch.isnan(op(x)).reshape(-1))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("n_in, k, s, p, d, ceil", [
    (15, 3, 2, 1, 1, True), (20, 3, 2, 1, 1, True), (12, 3, 1, 0, 4, False), (9, 2, 3, 1, 1, True),
    (7, 3, 2, 1, 2, True), (2, 3, 2, 0, 1, True),
])
def test_window_map_equals_max_pool_nan_propagation(n_in, k, s, p, d, ceil):
    def op(x):
        return F.max_pool2d(x, (1, k), (1, s), (0, p), (1, d), ceil_mode=ceil)

    n_out = op(torch.rand(1, 1, 1, n_in)).shape[-1]
    assert window_length(n_in, k, s, p, p, d, ceil) == n_out
    assert torch.equal(window_map(n_in, n_out, k, s, p, d), _nan_map(op, n_in))


@pytest.mark.parametrize("n_in, k, s, p, d, op_pad", [(5, 3, 2, 1, 1, 1), (6, 4, 3, 0, 2, 0), (4, 2, 1, 1, 2, 0)])
def test_transposed_window_map_equals_conv_transpose(n_in, k, s, p, d, op_pad):
    w = torch.ones(1, 1, 1, k)

    def op(x):
        return F.conv_transpose2d(x, w, stride=(1, s), padding=(0, p), output_padding=(0, op_pad), dilation=(1, d))

    n_out = op(torch.rand(1, 1, 1, n_in)).shape[-1]
    assert torch.equal(transposed_window_map(n_in, n_out, k, s, p, d), _nan_map(op, n_in))


@pytest.mark.parametrize("n_in, n_out", [(7, 3), (10, 4), (5, 8), (224 // 32, 6)])
def test_adaptive_map_equals_adaptive_pooling(n_in, n_out):
    assert torch.equal(adaptive_map(n_in, n_out), _nan_map(lambda x: F.adaptive_max_pool2d(x, (1, n_out)), n_in))


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_map_equals_f_pad(mode):
    before, after = (2, 1) if mode != "constant" else (-1, 3)
    got = pad_map(6, before, after, mode)
    assert torch.equal(got, _nan_map(lambda x: F.pad(x, (before, after, 0, 0), mode=mode), 6))


@pytest.mark.parametrize("mode, align, n_in, n_out, scale", [
    ("nearest", None, 7, 10, None), ("nearest", None, 9, 5, None), ("nearest", None, 10, 15, 1.5),
    ("nearest", None, 6, 12, 2.0), ("nearest", None, 13, 9, 0.7), ("nearest-exact", None, 7, 10, None),
    ("nearest-exact", None, 11, 4, None), ("bilinear", False, 7, 10, None), ("bilinear", False, 10, 13, 1.3),
    ("bilinear", False, 9, 4, None), ("bilinear", True, 7, 10, None), ("bilinear", True, 9, 4, None),
])
def test_resize_map_equals_interpolate(mode, align, n_in, n_out, scale):
    kw = {"scale_factor": (1.0, scale)} if scale else {"size": (1, n_out)}

    def op(x):
        return F.interpolate(x, mode=mode, align_corners=align, **kw)

    assert op(torch.rand(1, 1, 1, n_in)).shape[-1] == n_out
    coord = {"nearest": "torch_nearest", "nearest-exact": "torch_nearest_exact"}.get(
        mode, "torch_align_corners" if align else "torch_linear")
    got = resize_map(n_in, n_out, "nearest" if mode.startswith("nearest") else "linear", coord, scale=scale)
    assert torch.equal(got, _nan_map(op, n_in))


# ---------------------------------------------------------------------------------------
# 2. Traced fields against the full probe and the gradient ground truth
# ---------------------------------------------------------------------------------------


def _check_gradient(model, rfs, layers, size):
    """The helpers of test_receptive_field: every dependent pixel in the box, and the
    dependency set touching all four edges (the box is tight)."""
    fmodel = _dependency_faithful_copy(model, _executed(model, layers, size, 3))
    for layer in layers:
        rf = rfs[layer]
        positions = _positions(*rf.output_size, n_random=1)
        support = _gradient_support(fmodel, layer, size, positions)
        for (y, x), mask in zip(positions, support):
            nz = mask.nonzero()
            got = (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)
            assert got == rf.box(y, x), (layer, (y, x), got, rf.box(y, x))


FAMILIES = {
    # name: (constructor, input size, layers, slow)
    "resnet18": (lambda: tvm.resnet18(weights=None), 40, ["maxpool", "layer1.0", "layer2.0.downsample"], False),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(weights=None), 40,
                           ["features.0", "features.1", "features.2"], False),  # features.1: squeeze-excitation
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(weights=None), 40, ["features.2", "features.3", "features.6"], False),
    "dilated": (_dilated_stack, (40, 36), ["0", "2", "5", "7"], False),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(weights=None), 48, ["features.1", "features.3", "features.5.conv.0"], True),
    "googlenet": (lambda: tvm.googlenet(weights=None, aux_logits=False, init_weights=True), 48,
                  ["maxpool1", "maxpool2", "inception3a"], True),
    "densenet121": (lambda: tvm.densenet121(weights=None), 48,
                    ["features.pool0", "features.denseblock1.denselayer2", "features.transition1"], True),
    "alexnet": (lambda: tvm.alexnet(weights=None), 80, ["features.2", "features.5", "classifier.1"], True),
    "vgg11": (lambda: tvm.vgg11(weights=None), 48, ["features.5", "features.10"], True),
}


@pytest.mark.parametrize("family", [pytest.param(k, marks=pytest.mark.slow) if v[3] else k
                                    for k, v in FAMILIES.items()])
def test_trace_equals_full_probe_and_gradient(family):
    torch.manual_seed(0)
    build, size, layers, _ = FAMILIES[family]
    size = (size, size) if isinstance(size, int) else size
    model = build()
    traced = receptive_fields(model, layers, size, cache=False, method="trace")
    probed = receptive_fields(model, layers, size, cache=False, method="probe")
    for layer in layers:
        assert traced[layer].method == "trace" and probed[layer].method == "probe"
        assert traced[layer] == probed[layer], layer
        assert torch.equal(traced[layer].boxes, probed[layer].boxes)
    assert traced[layers[0]].size < size  # some boxes are interior: tightness is not trivial
    _check_gradient(model, traced, layers, size)
    if family == "mobilenet_v3_small":  # global pooling then a product: the whole image
        assert traced["features.1"].size == size


def test_ceil_mode_stack_and_attribute_to_layer_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.Conv2d(4, 4, 1))
    for attr in (False, True):
        traced = receptive_fields(model, ["0", "2", "3"], (15, 20), cache=False, method="trace",
                                  attribute_to_layer_input=attr)
        probed = receptive_fields(model, ["0", "2", "3"], (15, 20), cache=False, method="probe",
                                  attribute_to_layer_input=attr)
        assert traced == probed
    assert receptive_field(model, "2", (15, 20), cache=False, method="trace").box(4, 5) == (13, 17, 15, 20)


class _Decoder(nn.Module):
    """A small encoder-decoder: strided and transposed convolutions, bilinear and nearest
    upsampling, concatenation along channels, padding, a global branch broadcast back."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(19, 4, 3, padding="same")

    def forward(self, x):
        a = F.relu(self.down(x))
        b = self.pool(a)
        g = b.mean((2, 3), keepdim=True)
        t = self.up(a)
        u = F.interpolate(b * torch.sigmoid(g), size=t.shape[-2:], mode="bilinear", align_corners=False)
        n = F.interpolate(a, scale_factor=2, mode="nearest")
        y = torch.cat([F.pad(u, (1, 1, 1, 1))[:, :, 1:-1, 1:-1], n[:, :3], t], 1)
        return self.head(F.interpolate(y, size=x.shape[-2:], mode="nearest"))


def test_encoder_decoder_ops_traced_exactly():
    torch.manual_seed(0)
    model = _Decoder().eval()
    layers = ["down", "pool", "up", "head"]
    traced = receptive_fields(model, layers, (21, 26), cache=False, method="trace")
    probed = receptive_fields(model, layers, (21, 26), cache=False, method="probe")
    assert traced == probed
    assert traced["head"].size == (21, 26)  # the global branch reaches every output


def test_stochastic_depth_of_torchvision_ops_is_traced():
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), StochasticDepth(0.5, "row"), nn.ReLU(), nn.Conv2d(4, 4, 3, 2)).eval()
    traced = receptive_fields(model, ["1", "3"], (17, 17), cache=False, method="trace")
    probed = receptive_fields(model, ["1", "3"], (17, 17), cache=False, method="probe")
    assert traced["3"].method == "trace" and traced == probed
    assert traced["3"].box(0, 0) == (0, 0, 5, 5)


# ---------------------------------------------------------------------------------------
# 3. Cost: the trace needs a few forward passes, the probe one per input row and column
# ---------------------------------------------------------------------------------------


def _count_images(model: nn.Module, module: nn.Module):
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen, handle


def test_forward_passes_counted():
    model = tvm.resnet18(weights=None)
    size = 48
    seen, handle = _count_images(model, model.conv1)
    try:
        rf = receptive_field(model, "layer3", size, cache=False)
        traced = sum(seen)
        seen.clear()
        receptive_field(model, "layer3", size, cache=False, method="probe")
        probed = sum(seen)
    finally:
        handle.remove()
    rows = probe_mod.confirmation_indices(size)
    assert rf.method == "trace"
    # shape pass (2 images), clean image, rows, columns, one twice-as-tall image (the layout by shape)
    assert traced == 2 + 1 + 2 * len(rows) + 1 <= 32
    # the layouts first (clean, top row, bottom row, left column; the tall image), then the probe,
    # then, since layer3's field at 48 px spans the image (NaN from the top row reaches the bottom
    # of the map), the wrap check: clean and the four border rows / columns changed finitely
    assert probed == 4 + 1 + 1 + 2 * size + 5
    assert rf == receptive_field(model, "layer3", size, cache=False, method="probe")  # no wrap taken out


# ---------------------------------------------------------------------------------------
# 4. Fallbacks
# ---------------------------------------------------------------------------------------


def _small() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, dilation=2))


def test_plain_forward_function_falls_back_to_the_probe():
    model = _small()
    ref = receptive_field(model, "2", 20, cache=False, method="probe")
    got = receptive_field(lambda x: model(x), model[2], 20, cache=False)
    assert got == ref and got.method == "probe"
    with pytest.raises(TraceError, match="plain forward function"):
        receptive_field(lambda x: model(x), model[2], 20, cache=False, method="trace")
    assert receptive_field(model.forward, "2", 20, cache=False, method="trace") == ref  # a bound forward


class _Rolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.out(torch.roll(self.conv(x), 3, dims=2))  # not a known operation


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


@pytest.mark.parametrize("model, layers, why", [
    (_Rolled(), ["conv", "out"], "unknown operation.*roll"),
    (_Branchy(), ["conv"], "torch.fx cannot trace"),
])
def test_untraceable_graphs_fall_back_per_layer(model, layers, why):
    probed = receptive_fields(model, layers, 17, cache=False, method="probe")
    auto = receptive_fields(model, layers, 17, cache=False)
    assert auto == probed
    with pytest.raises(TraceError, match=why) as info:
        receptive_fields(model, layers, 17, cache=False, method="trace")
    failed = set(info.value.reasons)
    # the layer before the unknown operation is still traced
    assert {n for n in layers if auto[n].method == "probe"} == failed
    if isinstance(model, _Rolled):
        assert auto["conv"].method == "trace" and auto["out"].method == "probe"
        # out row 0 reads rolled rows 0, 1 = conv rows 14, 15 = input rows 13-16; out row 2
        # reads conv rows 15, 16, 0: the roll wraps around, the box spans the image
        assert auto["out"].box(0, 5) == (13, 3, 17, 8) and auto["out"].box(2, 5) == (0, 3, 17, 8)


def test_wrong_rule_is_caught_by_the_confirmation(monkeypatch):
    model = _small()
    ref = receptive_field(model, "2", 20, cache=False, method="probe")
    real = intervals_mod.window_map

    def shifted(n_in, n_out, kernel, stride, pad_begin, dilation=1):  # one pixel off
        return real(n_in, n_out, kernel, stride, pad_begin - 1, dilation)

    monkeypatch.setattr(intervals_mod, "window_map", shifted)
    got = receptive_field(model, "2", 20, cache=False)
    assert got == ref and got.method == "probe"
    with pytest.raises(TraceError, match="NaN probe disagrees"):
        receptive_field(model, "2", 20, cache=False, method="trace")


def test_channels_last_outputs_still_refused_without_a_full_probe():
    model = convnext_like()
    seen, handle = _count_images(model, model[0])
    try:
        for layer in ("2", "3"):
            seen.clear()
            with pytest.raises(ChannelsLastError, match="channels-last"):
                receptive_field(model, layer, 24, cache=False)
            assert sum(seen) <= 2 + 1 + 2 * 14 + 1 < 1 + 2 * 24  # found by the trace, confirmed permuted
    finally:
        handle.remove()
    traced = receptive_fields(model, ["4", "5"], 16, cache=False, method="trace")  # permuted back
    assert traced == receptive_fields(model, ["4", "5"], 16, cache=False, method="probe")
    assert traced["5"].size == (5, 5)


def _nhwc_fields_traced_like_the_full_probe(model, first_conv, nhwc, nchw, size):
    r"""Declared channels-last layers are traced (and equal the full NaN probe box by box);
    undeclared, the trace finds the layout, confirms it and refuses them with every field of
    the call read as the probe reads it, within the trace's forward passes; the miner then
    needs no second measurement.

    The full probe runs with its shifted-window correction: these blocks' residual branches
    are scaled by ``1e-6`` at init, so a finite change of the input vanishes in float32 where
    NaN does not, and only the float64 check keeps the correction from shrinking their fields."""
    layers = nhwc + nchw
    probed = receptive_fields(model, layers, size, cache=False, method="probe", channels_last=nhwc, progress=False)
    traced = receptive_fields(model, layers, size, cache=False, method="trace", channels_last=nhwc)
    assert traced == probed and all(f.method == "trace" for f in traced.values())
    seen, handle = _count_images(model, first_conv)
    try:
        with pytest.raises(ChannelsLastError, match="channels-last") as err:
            receptive_fields(model, layers, size, cache=False, method="trace")
        assert sum(seen) <= 2 + 1 + 2 * 14 + 1
        assert err.value.layers == nhwc and err.value.fields == probed
        seen.clear()
        clear_receptive_field_cache()
        with pytest.raises(ChannelsLastError):  # cached: under the key of the permutation
            receptive_fields(model, layers, size, method="trace")
        seen.clear()
        assert receptive_fields(model, layers, size, channels_last=nhwc) == probed and not seen
        clear_receptive_field_cache()
        LayerTopKPatches(model, layers, k=2).update(torch.rand(2, 3, size, size))
        assert sum(seen) - 2 <= 2 + 1 + 2 * 14 + 1  # one trace, one confirmation
    finally:
        handle.remove()


def _nan_alone(monkeypatch, model, layers, size):
    """The full probe's fields from NaN alone (no wrap-around check)."""
    with monkeypatch.context() as m:
        m.setattr(probe_mod, "_without_wrapped_nan", lambda forward, names, masks, *a: masks)
        return receptive_fields(model, layers, size, cache=False, method="probe", progress=False)


def _finite_change_falls_short(model, layer, size):
    """Whether NaN in the input's top row reaches the bottom of the map and a float32 finite change
    of that row does not (what the full probe reads as a wrap-around, before its float64 check)."""
    module = model.get_submodule(layer)
    forward = lambda batch: probe_mod.run_capture(model, [module], batch)  # noqa: E731
    nan = next(iter(probe_mod.probe_masks(forward, [layer], (size, size), 3, 8, rows=[0], cols=[0],
                                          check_layout=False).values()))[0][0]
    (finite,) = probe_mod._changed_masks(forward, 1, (size, size), 3, 8, None, torch.float32, [0], [])
    return bool(nan[-1].any()) and not bool(finite[0][-1].any())


class _LayerScaled(nn.Module):
    """Residual blocks ``x + 1e-6 * conv(x)``: a dependency two blocks away weighs ``1e-12``, lost
    to float32 rounding where NaN still reaches."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(4, 4, 5, padding=2) for _ in range(3))

    def forward(self, x):
        x = self.stem(x)
        for conv in self.blocks:
            x = x + 1e-6 * conv(x)
        return x


def test_layer_scale_is_not_taken_for_a_wrap(monkeypatch):
    # a finite change that rounding hides is no evidence against a dependency: the float64 check
    # sees it, and the full probe keeps NaN's field (= the trace's)
    torch.manual_seed(0)
    model = _LayerScaled().eval()
    layers = ["blocks.0", "blocks.2"]
    assert _finite_change_falls_short(model, "blocks.2", 8)  # three blocks away: 1e-18, lost in float64 too
    probed = receptive_fields(model, layers, 8, cache=False, method="probe", progress=False)
    assert probed == receptive_fields(model, layers, 8, cache=False, method="trace")
    assert probed == _nan_alone(monkeypatch, model, layers, 8)
    assert probed["blocks.2"].box(0, 0) == (0, 0, 8, 8) and probed["blocks.0"].box(0, 0) == (0, 0, 4, 4)
    # a plain forward function has no float64 twin: unknown, NaN's field is kept
    assert receptive_field(lambda x: model(x), {"blocks.2": model.blocks[2]}, 8, cache=False, method="probe",
                           progress=False) == probed["blocks.2"]


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_timm_convnext_full_probe_keeps_the_fields_that_layer_scale_hides(monkeypatch, conv_mlp):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=conv_mlp).eval()
    layers = ["stages.0.blocks.0", "stages.1.downsample", "stages.1.blocks.0"]
    assert _finite_change_falls_short(model, "stages.1.downsample", 32)
    probed = receptive_fields(model, layers, 32, cache=False, method="probe", progress=False)
    assert probed == receptive_fields(model, layers, 32, cache=False, method="trace")
    assert probed == _nan_alone(monkeypatch, model, layers, 32)
    assert probed["stages.1.downsample"].size == (32, 32)


def test_torchvision_convnext_full_probe_keeps_the_fields_that_layer_scale_hides(monkeypatch):
    torch.manual_seed(0)
    model = tvm.convnext_tiny(weights=None).eval()
    assert _finite_change_falls_short(model, "features.2.0", 32)
    probed = receptive_field(model, "features.2.0", 32, cache=False, method="probe", progress=False)
    assert probed == receptive_field(model, "features.2.0", 32, cache=False, method="trace")
    assert probed == _nan_alone(monkeypatch, model, ["features.2.0"], 32)["features.2.0"]
    assert probed.size == (32, 32)


@pytest.mark.slow
def test_torchvision_convnext_channels_last_layers_are_traced():
    torch.manual_seed(0)
    model = tvm.convnext_tiny(weights=None).eval()
    _nhwc_fields_traced_like_the_full_probe(
        model, model.features[0][0],
        ["features.1.0.block.2", "features.1.0.block.3", "features.3.0.block.5"],  # LayerNorm, Linear, Linear
        ["features.1.0", "features.2.0"], 32)  # NCHW around them: the block, LayerNorm2d (permute, norm, permute)


def test_timm_convnext_channels_last_layers_are_traced():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False).eval()
    _nhwc_fields_traced_like_the_full_probe(
        model, model.stem[0],
        ["stages.0.blocks.0.norm", "stages.0.blocks.0.mlp.fc1", "stages.1.blocks.0.mlp.fc2"],
        ["stages.0.blocks.0", "stages.1.downsample"], 32)


def test_method_survives_the_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_TOPK_CACHE_DIR", str(tmp_path))
    clear_receptive_field_cache()
    first = receptive_field(_small(), "2", 18)
    clear_receptive_field_cache()  # as if in a new process: the disk entry answers
    again = receptive_field(_small(), "2", 18)
    assert first.method == again.method == "trace" and again == first
    probed = receptive_field(_small(), "2", 18, method="probe")  # an explicit method is honoured
    assert probed.method == "probe" and probed == first
    assert receptive_field(_small(), "2", 18).method == "probe"  # "auto" takes what is cached
    assert ReceptiveField.from_dict(again.to_dict()).method == "trace"
    assert ReceptiveField.from_dict({k: v for k, v in again.to_dict().items() if k != "method"}).method == "probe"
    with pytest.raises(ValueError, match="method"):
        receptive_field(_small(), "2", 18, method="fast")
    clear_receptive_field_cache(disk=True)


# ---------------------------------------------------------------------------------------
# 5. ONNX: the same rules over ONNX nodes, confirmed through ONNX Runtime
# ---------------------------------------------------------------------------------------


def _export(model: nn.Module, size) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, 3, *size),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], do_constant_folding=True)
    return load_onnx(buf.getvalue())


def test_onnx_trace_equals_onnxruntime_probe_and_torch():
    torch.manual_seed(0)
    model = _Decoder().eval()
    size = (21, 26)
    proto = _export(model, size)
    tensors = [t.name for t in list_tensors(proto)]
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "MaxPool", "ConvTranspose", "Resize", "Concat", "Pad", "Slice", "ReduceMean"} <= ops
    traced = onnx_receptive_fields(proto, tensors, size, cache=False, progress=False, method="trace")
    probed = onnx_receptive_fields(proto, tensors, size, cache=False, progress=False, method="probe")
    assert len(tensors) > 10
    for t in tensors:
        assert traced[t].method == "trace" and probed[t].method == "probe"
        assert traced[t] == probed[t], t
    out = proto.graph.output[0].name
    assert traced[out] == receptive_field(model, "head", size, cache=False, method="probe")


def test_onnx_unknown_operator_falls_back_to_the_probe():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [1.0] * 9)
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [2])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("CumSum", ["c", "axis"], ["s"]),  # rows reach every later row
             helper.make_node("Relu", ["s"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 9, 9])
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, axis]),
                              opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    got = onnx_receptive_fields(proto, ["c", "y"], cache=False, progress=False)
    ref = onnx_receptive_fields(proto, ["c", "y"], cache=False, progress=False, method="probe")
    assert got == ref and got["c"].method == "trace" and got["y"].method == "probe"
    assert got["y"].box(0, 4) == (0, 3, 2, 6) and got["y"].box(8, 4) == (0, 3, 9, 6)
    with pytest.raises(TraceError, match="CumSum"):
        onnx_receptive_fields(proto, ["y"], cache=False, progress=False, method="trace")
