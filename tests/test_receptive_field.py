"""Tests for captum_topk.receptive_field (NaN-propagation probing).

Ground truth comes from two independent sources:

* closed formulas for a hand-computable conv / ceil-mode max-pool stack;
* input gradients of a *dependency-faithful* copy of real torchvision architectures (random
  init, no downloads): every weight strictly positive, BatchNorm an identity-like positive
  affine map in eval mode, every MaxPool2d replaced by an AvgPool2d with the same window, a
  strictly positive input. Then every pre-activation is strictly positive, every ReLU /
  ReLU6 is in its identity regime (activations are kept far below 6), no path can cancel
  another, and the input gradient of an output position is non-zero exactly on the pixels it
  depends on. Its bounding box must equal the probed box: soundness (every non-zero pixel
  inside) and tightness (the non-zero set touches all four box edges).
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import random

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from captum_topk.capture.hooks import run_capture
from captum_topk.receptive_field import (
    ReceptiveField,
    clear_receptive_field_cache,
    receptive_field,
    receptive_fields,
)

# ``captum_topk.receptive_field`` is also a function re-exported by the package: import the
# module itself by its dotted path.
rf_mod = importlib.import_module("captum_topk.receptive_field.probe")

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


# ---------------------------------------------------------------------------------------
# Helpers: closed formulas
# ---------------------------------------------------------------------------------------


def _out_len(n: int, k: int, s: int, p: int, ceil_mode: bool = False, d: int = 1) -> int:
    span = n + 2 * p - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # the last window must start inside the input
        out -= 1
    return out


def _compose_1d(n_in: int, layers) -> list:
    """Boxes [(lo, hi)] per output index of a chain of (k, s, p, ceil_mode) windows."""
    boxes = [(i, i + 1) for i in range(n_in)]
    for k, s, p, ceil_mode in layers:
        n = len(boxes)
        new = []
        for y in range(_out_len(n, k, s, p, ceil_mode)):
            first = max(0, y * s - p)
            last = min(n, y * s - p + k) - 1
            new.append((boxes[first][0], boxes[last][1]))
        boxes = new
    return boxes


# ---------------------------------------------------------------------------------------
# Helpers: gradient ground truth
# ---------------------------------------------------------------------------------------


def _executed(model: nn.Module, layers, input_size, in_channels) -> set:
    """Names of the modules that run before the forward stops at the deepest of ``layers``."""
    named = dict(model.named_modules())
    ran = set()
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: ran.add(n))
               for n, m in named.items()]
    try:
        with torch.no_grad():
            run_capture(model.eval(), [named[name] for name in layers],
                        torch.rand(1, in_channels, *input_size))
    finally:
        for h in handles:
            h.remove()
    return ran


def _dependency_faithful_copy(model: nn.Module, executed: set | None = None) -> nn.Module:
    """Deep copy in which a non-zero input gradient <=> a structural dependency.

    Modules outside ``executed`` (e.g. VGG's 120M-parameter classifier when only feature
    layers are checked) never run: their tensors are shared with ``model``, not copied, and
    left untouched.
    """
    memo = {}
    if executed is not None:
        for name, mod in model.named_modules():
            if name not in executed:
                for t in (*mod.parameters(recurse=False), *mod.buffers(recurse=False)):
                    memo[id(t)] = t
    m = copy.deepcopy(model, memo)
    for parent_name, parent in list(m.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1)), "AvgPool2d has no dilation"
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride,
                                                   child.padding, ceil_mode=child.ceil_mode,
                                                   count_include_pad=True))
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
    with torch.no_grad():
        for name, mod in m.named_modules():
            if executed is not None and name not in executed:
                continue
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                w = mod.weight.abs()
                # A floor at the mean keeps every tap well away from 0 (no float underflow of
                # long products); each output unit's weights sum to 1 so activations neither
                # explode (ReLU6 must stay unsaturated) nor vanish.
                w = w + w.mean() + 1e-3
                mod.weight.copy_(w / w.flatten(1).sum(1).view(-1, *[1] * (w.dim() - 1)))
                if mod.bias is not None:
                    mod.bias.fill_(1e-5)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()  # mean 0, var 1
                if mod.affine:
                    mod.weight.fill_(1.0)
                    mod.bias.fill_(1e-5)
            elif list(mod.parameters(recurse=False)):
                raise AssertionError(f"no faithful version of {type(mod).__name__}")
    return m.eval()


def _positions(h: int, w: int, n_random: int = 2, seed: int = 0) -> list:
    rng = random.Random(seed)
    pos = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, w // 2), (h // 2, 0),
           (h - 1, w // 2), (h // 2, w - 1), (h // 2, w // 2)]
    pos += [(rng.randrange(h), rng.randrange(w)) for _ in range(n_random)]
    return sorted(set(pos))


def _gradient_support(fmodel, layer, input_size, positions, in_channels=3):
    """(P, H, W) bool: pixels with a non-zero gradient of the channel-sum at each position."""
    H, W = input_size
    module = dict(fmodel.named_modules())[layer]
    g = torch.Generator().manual_seed(1)
    x = ((0.5 + 0.5 * torch.rand(len(positions), in_channels, H, W, generator=g)) * 1e-3)
    x.requires_grad_(True)
    out = run_capture(fmodel, [module], x)[0]
    if out.dim() == 2:
        out = out[:, :, None, None]
    # ReLU6 (mobilenet_v2) must not saturate, or the gradient would vanish there.
    assert float(out.detach().max()) < 1.0
    ys = torch.tensor([p[0] for p in positions])
    xs = torch.tensor([p[1] for p in positions])
    out[torch.arange(len(positions)), :, ys, xs].sum().backward()
    return x.grad.abs().sum(dim=1) > 0


def _assert_matches_gradient(model, layers, input_size, in_channels=3):
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    rfs = receptive_fields(model, layers, input_size, in_channels=in_channels)
    fmodel = _dependency_faithful_copy(model, _executed(model, layers, input_size, in_channels))
    for layer in layers:
        rf = rfs[layer]
        h, w = rf.output_size
        positions = _positions(h, w)
        support = _gradient_support(fmodel, layer, input_size, positions, in_channels)
        for (y, x), mask in zip(positions, support):
            nz = mask.nonzero()
            assert nz.numel() > 0, f"{layer} ({y},{x}): gradient is zero everywhere"
            top, left, bottom, right = rf.box(y, x)
            got = (int(nz[:, 0].min()), int(nz[:, 1].min()),
                   int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)
            # soundness: every dependent pixel inside the box
            assert top <= got[0] and left <= got[1] and got[2] <= bottom and got[3] <= right, (
                f"{layer} ({y},{x}): gradient bbox {got} not inside probed box "
                f"{(top, left, bottom, right)}")
            # tightness: the dependency set touches all four box edges
            assert got == (top, left, bottom, right), (
                f"{layer} ({y},{x}): probed box {(top, left, bottom, right)} is looser "
                f"than the gradient bbox {got}")
        heights = rf.boxes[..., 2] - rf.boxes[..., 0]
        widths = rf.boxes[..., 3] - rf.boxes[..., 1]
        assert rf.size == (int(heights.max()), int(widths.max()))
    return rfs


# ---------------------------------------------------------------------------------------
# 1. Hand-computable stack
# ---------------------------------------------------------------------------------------


def test_conv_maxpool_ceil_mode_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    )
    H, W = 15, 20  # both make ceil_mode add a last, partly outside window
    rfs = receptive_fields(model, ["0", "2"], (H, W), cache=False)

    conv = rfs["0"]
    rows, cols = _compose_1d(H, [(3, 2, 1, False)]), _compose_1d(W, [(3, 2, 1, False)])
    assert conv.output_size == (len(rows), len(cols)) == (8, 10)
    expected = torch.tensor([[[t, l, b, r] for (l, r) in cols] for (t, b) in rows])
    assert torch.equal(conv.boxes, expected)
    assert conv.box(0, 0) == (0, 0, 2, 2)  # clipped by the padding
    assert conv.box(3, 4) == (5, 7, 8, 10)
    assert conv.box(7, 9) == (13, 17, 15, 20)  # 2*7-1+3 = 16 clipped to 15
    assert conv.size == (3, 3) and conv.stride == (2, 2)
    assert conv.input_size == (H, W)

    pool = rfs["2"]
    layers = [(3, 2, 1, False), (3, 2, 1, True)]
    rows, cols = _compose_1d(H, layers), _compose_1d(W, layers)
    assert pool.output_size == (len(rows), len(cols)) == (5, 6)
    assert _out_len(8, 3, 2, 1, ceil_mode=False) == 4  # ceil_mode really adds a row
    expected = torch.tensor([[[t, l, b, r] for (l, r) in cols] for (t, b) in rows])
    assert torch.equal(pool.boxes, expected)
    assert pool.box(0, 0) == (0, 0, 4, 4)
    assert pool.box(2, 2) == (5, 5, 12, 12)
    assert pool.box(4, 5) == (13, 17, 15, 20)  # window [7, 10) of 8 rows: only row 7
    assert pool.size == (7, 7) and pool.stride == (4, 4)
    assert pool.boxes.dtype == torch.int64


def test_single_position_and_dilation_closed_form():
    model = nn.Sequential(nn.Conv2d(1, 2, kernel_size=3, dilation=4, padding=0))
    rf = receptive_field(model, "0", (12, 16), cache=False)
    assert rf.output_size == (4, 8)
    assert rf.box(2, 5) == (2, 5, 11, 14)  # rows {2, 6, 10}: bounding box, holes included
    assert rf.size == (9, 9) and rf.stride == (1, 1)


def test_batch_size_and_multi_layer_consistency():
    model = tvm.squeezenet1_1(weights=None)
    many = receptive_fields(model, ["features.2", "features.5"], 32, cache=False)
    one = receptive_field(model, "features.2", 32, batch_size=7, cache=False)
    assert one == many["features.2"]
    by_module = receptive_field(model, model.features[5], 32, cache=False)
    assert by_module == many["features.5"]
    assert list(many) == ["features.2", "features.5"]


# ---------------------------------------------------------------------------------------
# 2. Gradient ground truth on real architectures
# ---------------------------------------------------------------------------------------

ARCHS = {
    # name: (constructor, input size, layers)
    "alexnet": (lambda: tvm.alexnet(weights=None), 80,
                ["features.2", "features.5", "classifier.1"]),
    "vgg11": (lambda: tvm.vgg11(weights=None), 48, ["features.5", "features.10"]),
    "resnet18": (lambda: tvm.resnet18(weights=None), 64,
                 ["maxpool", "layer1.0", "layer1", "layer2.0.downsample"]),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(weights=None), 64,
                     ["features.1", "features.3", "features.5.conv.0"]),
    "googlenet": (lambda: tvm.googlenet(weights=None, aux_logits=False, init_weights=True),
                  64, ["maxpool1", "maxpool2", "inception3a"]),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(weights=None), 64,
                      ["features.2", "features.3", "features.6"]),
    "densenet121": (lambda: tvm.densenet121(weights=None), 64,
                    ["features.pool0", "features.denseblock1.denselayer2",
                     "features.transition1"]),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_matches_gradient_ground_truth(arch):
    torch.manual_seed(0)
    build, size, layers = ARCHS[arch]
    rfs = _assert_matches_gradient(build(), layers, size)
    # Some positions must be unclipped interior boxes, so that tightness is not trivial.
    first = rfs[layers[0]]
    assert first.size[0] < size and first.size[1] < size


def test_alexnet_known_values():
    # same structure and size as in ARCHS: served by the cache when that test ran first
    rfs = receptive_fields(tvm.alexnet(weights=None), ["features.2", "classifier.1"], 80)
    pool = rfs["features.2"]  # conv 11/4/p2 then max-pool 3/2: 11 + 2*4 = 19, stride 8
    assert pool.size == (19, 19) and pool.stride == (8, 8) and pool.output_size == (9, 9)
    assert pool.box(4, 4) == (30, 30, 49, 49)  # 4*8 - 2 = 30
    assert pool.box(0, 0) == (0, 0, 17, 17)
    lin = rfs["classifier.1"]
    assert lin.output_size == (1, 1) and lin.box(0, 0) == (0, 0, 80, 80)


def _dilated_stack() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, dilation=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(4, 6, kernel_size=3, dilation=3, padding=3, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
        nn.Conv2d(6, 5, kernel_size=3, dilation=2, padding=0, groups=1),
        nn.Hardtanh(0.0, 6.0),
    )


# Dilation: a custom stack rather than torchvision's replace_stride_with_dilation (ResNet-50
# only): there the first dilated conv (layer2.1.conv2) already has a ~59 px field, so at the
# small inputs this file can afford every box is the whole image and the check says little.
def test_dilated_stack_gradient_ground_truth_and_holes():
    torch.manual_seed(0)
    model = _dilated_stack()
    rfs = _assert_matches_gradient(model, ["0", "2", "5", "7"], (40, 36))
    # offsets {-2,0,2} + {-3,0,3} = [-5, 5] minus {-4, 4}: a non-contiguous set
    rf = rfs["2"]
    assert rf.box(6, 6) == (7, 7, 18, 18) and rf.size == (11, 11) and rf.stride == (2, 2)
    support = _gradient_support(_dependency_faithful_copy(model), "2", (40, 36), [(6, 6)])[0]
    assert not bool(support[7 + 1].any()) and not bool(support[7 + 9].any())  # holes
    assert bool(support[7].any()) and bool(support[17].any())
    assert rfs["7"].size == (23, 23) and rfs["7"].stride == (2, 2)


# ---------------------------------------------------------------------------------------
# 3. padded_crop
# ---------------------------------------------------------------------------------------


def test_padded_crop_border_and_interior():
    model = nn.Sequential(nn.Conv2d(2, 2, kernel_size=5, stride=2, padding=2))
    rf = receptive_field(model, "0", (11, 13), cache=False)
    assert rf.size == (5, 5)
    image = torch.arange(2 * 11 * 13, dtype=torch.float32).reshape(2, 11, 13) + 1

    tl = rf.padded_crop(image, 0, 0, fill=-1)  # box (0, 0, 3, 3): padded top and left
    assert rf.box(0, 0) == (0, 0, 3, 3)
    assert tl.shape == (2, 5, 5)
    assert torch.equal(tl[:, 2:, 2:], image[:, 0:3, 0:3])
    assert bool((tl[:, :2, :] == -1).all()) and bool((tl[:, :, :2] == -1).all())

    h, w = rf.output_size
    br_box = rf.box(h - 1, w - 1)
    assert br_box == (8, 10, 11, 13)
    br = rf.padded_crop(image, h - 1, w - 1)  # padded bottom and right
    assert torch.equal(br[:, :3, :3], image[:, 8:11, 10:13])
    assert bool((br[:, 3:, :] == 0).all()) and bool((br[:, :, 3:] == 0).all())

    top_edge = rf.padded_crop(image, 0, 3)  # padded on the top only
    t, l, b, r = rf.box(0, 3)
    assert (t, b - t, r - l) == (0, 3, 5)
    assert torch.equal(top_edge[:, 2:, :], image[:, 0:3, l:r])
    assert bool((top_edge[:, :2] == 0).all())

    inner = rf.padded_crop(image, 2, 3)
    t, l, b, r = rf.box(2, 3)
    assert (b - t, r - l) == rf.size
    assert torch.equal(inner, image[:, t:b, l:r])

    uint8 = rf.padded_crop(image.to(torch.uint8), 0, 0, fill=7)
    assert uint8.dtype == torch.uint8 and int(uint8[0, 0, 0]) == 7

    with pytest.raises(ValueError, match="input size"):
        rf.padded_crop(image[:, :10], 0, 0)
    with pytest.raises(IndexError):
        rf.box(h, 0)


def test_padded_crop_centres_small_interior_box_and_empty_box():
    boxes = torch.zeros(1, 3, 4, dtype=torch.int64)
    boxes[0, 0] = torch.tensor([2, 2, 7, 7])
    boxes[0, 1] = torch.tensor([3, 4, 6, 6])  # interior, 3x2 instead of 5x5
    # boxes[0, 2] stays empty
    rf = ReceptiveField(boxes, input_size=(10, 10), size=(5, 5), stride=(1, 1))
    image = torch.arange(100.0).reshape(1, 10, 10)
    crop = rf.padded_crop(image, 0, 1, fill=-1)
    assert torch.equal(crop[:, 1:4, 1:3], image[:, 3:6, 4:6])  # pad 1/1 rows, 1/2 cols
    assert int((crop == -1).sum()) == 25 - 6
    assert bool((rf.padded_crop(image, 0, 2, fill=3) == 3).all())


# ---------------------------------------------------------------------------------------
# 4. Output ranks and names
# ---------------------------------------------------------------------------------------


def test_linear_output_is_whole_image():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 10, 4))
    rf = receptive_field(model, "3", (10, 12), cache=False)  # in_channels inferred: 1
    assert rf.boxes.shape == (1, 1, 4)
    assert rf.output_size == (1, 1)
    assert rf.box(0, 0) == (0, 0, 10, 12)
    assert rf.size == (10, 12) and rf.stride == (10, 12)


def test_non_4d_outputs_raise():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(2))
    with pytest.raises(ValueError, match=r"3-D output .*4-D \(N, C, H, W\)"):
        receptive_field(model, "1", 16, cache=False)

    class Unsqueeze(nn.Module):
        def forward(self, x):
            return x.unsqueeze(2)

    model5 = nn.Sequential(nn.Conv2d(3, 2, 3), Unsqueeze())
    with pytest.raises(ValueError, match="5-D output"):
        receptive_field(model5, "1", 16, cache=False)


def test_unknown_layer_lists_close_names():
    model = tvm.resnet18(weights=None)
    with pytest.raises(ValueError, match=r"Unknown layer 'layer1\.0\.conv'.*layer1\.0\.conv1"):
        receptive_field(model, "layer1.0.conv", 32)
    with pytest.raises(ValueError, match="input_size"):
        receptive_field(model, "layer1", (0, 32))


def test_nan_producing_model_is_rejected():
    class LogShift(nn.Module):
        def forward(self, x):
            return torch.log(x - 10.0)  # NaN for every finite input in (0, 1)

    model = nn.Sequential(nn.Conv2d(3, 2, 1), LogShift())
    with pytest.raises(ValueError, match="already outputs NaN"):
        receptive_field(model, "1", 8, cache=False)


def test_nan_propagation_self_check_passes_on_cpu():
    rf_mod._NAN_CHECKED.clear()
    rf_mod._check_nan_propagation(torch.device("cpu"), torch.float32)
    assert rf_mod._NAN_CHECKED[("cpu", torch.float32)]


# ---------------------------------------------------------------------------------------
# 5. Side effects: training flags, hooks, cache, serialisation
# ---------------------------------------------------------------------------------------


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_training_flags_restored_and_no_hooks_left():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    model.train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    rf = receptive_field(model, "3", 12, cache=False)
    assert rf.size == (3, 3)  # BatchNorm in train mode would spread NaN over the batch
    assert [m.training for m in model.modules()] == before
    assert _no_hooks(model)
    receptive_field(model, "1", 12, attribute_to_layer_input=True, cache=False)
    assert [m.training for m in model.modules()] == before
    assert _no_hooks(model)


def test_hooks_removed_and_flags_restored_when_forward_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.head = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            x = self.stem(x)
            raise RuntimeError("boom before head")

    model = Broken().train()
    model.stem.eval()
    before = [m.training for m in model.modules()]
    for attr_input in (False, True):
        with pytest.raises(RuntimeError, match="boom before head"):
            receptive_field(model, "head", 10, attribute_to_layer_input=attr_input)
        assert _no_hooks(model)
        assert [m.training for m in model.modules()] == before


def test_forward_function_in_training_mode_leaves_model_untouched():
    """A Captum-style plain forward function: modules are put in eval mode as they run."""
    model = tvm.resnet18(weights=None).train()
    model.layer1.eval()
    before = [m.training for m in model.modules()]
    stats = copy.deepcopy(model.bn1.state_dict())
    rf = receptive_field(lambda x: model(x), model.layer1, 32)
    assert rf.size == (32, 32) and rf.output_size == (8, 8) and rf.stride == (4, 4)
    assert rf.box(0, 0) == (0, 0, 22, 22)
    assert [m.training for m in model.modules()] == before
    for k, v in model.bn1.state_dict().items():  # no running-stat update from the probe
        assert torch.equal(v, stats[k]), k
    assert _no_hooks(model)
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert receptive_field(model.forward, "layer1", 32) == rf  # a bound method


def test_cache_is_structural_and_results_are_independent_copies(monkeypatch):
    clear_receptive_field_cache()
    calls = []
    real_probe = rf_mod._probe

    def counting_probe(*args, **kwargs):
        calls.append(1)
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(rf_mod, "_probe", counting_probe)
    a = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
    b = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())  # other weights, same structure
    c = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, dilation=2), nn.ReLU())
    ra = receptive_field(a, "1", 16)
    ra.boxes.zero_()  # must not corrupt the cache
    rb = receptive_field(b, "1", 16)
    assert len(calls) == 1
    assert rb.box(0, 0) == (0, 0, 3, 3)
    rc = receptive_field(c, "1", 16)
    assert len(calls) == 2 and rc.size == (5, 5)
    receptive_fields(a, ["0", "1"], 16)  # only "0" is probed
    assert len(calls) == 3
    receptive_field(a, "1", (16, 17))
    receptive_field(a, "1", 16, attribute_to_layer_input=True)
    assert len(calls) == 5
    receptive_field(a, "1", 16, cache=False)
    assert len(calls) == 6
    clear_receptive_field_cache()


def test_serialisation_round_trip(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
    rf = receptive_field(model, "1", (9, 7), cache=False)
    d = rf.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert all(type(v) is int for v in d["size"] + d["stride"] + d["input_size"])
    assert ReceptiveField.from_dict(json.loads(json.dumps(d))) == rf
    path = tmp_path / "rf.pt"
    torch.save(d, path)
    assert ReceptiveField.from_dict(torch.load(path, weights_only=True)) == rf
    assert "output_size=(5, 4)" in repr(rf)
    assert hash(ReceptiveField.from_dict(d)) == hash(rf)
