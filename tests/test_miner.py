"""LayerTopKPatches against brute-force twins, plus the streaming-state contract."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torchvision
from captum.attr import LayerActivation
from torch import nn

from captum_topk import LayerTopKPatches, PatchRecord, TopKResult, receptive_field

from ._models import convnext_like
from ._reference import full_activations, reference_topk


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _images(n=23, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _batches(images, bs=5):
    return [images[i : i + bs] for i in range(0, images.shape[0], bs)]


def _assert_matches(result, layer, ref, which="top", atol=0.0):
    for ch, expected in ref.items():
        recs = result.records(layer, ch, which)
        got = [(r.value, r.index, r.y, r.x) for r in recs]
        assert [g[1:] for g in got] == [e[1:] for e in expected], (layer, ch, which)
        for g, e in zip(got, expected):
            assert g[0] == pytest.approx(e[0], abs=atol, rel=1e-6)


CASES = [
    ("tiny", _tiny_cnn, ["0", "3", "7"], 16),
    ("resnet18", lambda: torchvision.models.resnet18(num_classes=10).eval(), ["layer1.0", "layer2"], 32),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=10).eval(),
     ["features.2.conv.1", "features.4"], 32),
]


@pytest.mark.parametrize("name,make,layers,size", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("distinct", [True, False])
def test_brute_force_twin(name, make, layers, size, distinct):
    torch.manual_seed(0)
    model = make()
    images = _images(13, size)
    k = 4
    miner = LayerTopKPatches(model, layers, k=k, distinct_images=distinct)
    result = miner.mine(_batches(images, 4), progress=False)
    named = dict(model.named_modules())
    for layer in layers:
        acts = full_activations(model, named[layer], images, batch_size=4)
        for which in ("top", "bottom"):
            ref = reference_topk(acts, k, distinct_images=distinct, which=which)
            _assert_matches(result, layer, ref, which)


def test_ties_go_to_lower_index_then_lower_position():
    # A ReLU layer on duplicated / constant images: massive ties at 0 and between copies.
    model = _tiny_cnn()
    base = _images(4, 16)
    images = torch.cat([base, base, torch.zeros(3, 3, 16, 16), -10 * torch.ones(2, 3, 16, 16)])
    for distinct in (True, False):
        miner = LayerTopKPatches(model, ["1", "4"], k=6, distinct_images=distinct)
        result = miner.mine(_batches(images, 3), progress=False)
        for layer in ("1", "4"):
            acts = full_activations(model, dict(model.named_modules())[layer], images, batch_size=3)
            for which in ("top", "bottom"):
                ref = reference_topk(acts, 6, distinct, which)
                _assert_matches(result, layer, ref, which)
    # duplicated image: its copy (higher index) never beats the original at equal value
    recs = LayerTopKPatches(model, "4", k=8).mine(images, progress=False).records("4", 0)
    firsts = {}
    for r in recs:
        firsts.setdefault(round(r.value, 6), r.index)
    assert all(i == min(j.index for j in recs if round(j.value, 6) == v) for v, i in firsts.items())


def test_distinct_images_rule_and_several_per_image():
    model = _tiny_cnn()
    images = _images(3, 16)
    distinct = LayerTopKPatches(model, "0", k=3).mine(images, progress=False)
    several = LayerTopKPatches(model, "0", k=3, distinct_images=False).mine(images, progress=False)
    for ch in range(6):
        idx = [r.index for r in distinct.records("0", ch)]
        assert sorted(idx) == [0, 1, 2]
    # with 256 positions per image, the top-3 of some channel come from one image
    assert any(len({r.index for r in several.records("0", ch)}) < 3 for ch in range(6))


def test_linear_layer_is_mined_without_position():
    model = _tiny_cnn()
    images = _images(10, 16)
    result = LayerTopKPatches(model, "7", k=3).mine(images, progress=False)
    acts = full_activations(model, model[7], images)
    _assert_matches(result, "7", reference_topk(acts, 3))
    r = result.records("7", 2)[0]
    assert (r.y, r.x) == (0, 0) and r.box == (0, 0, 16, 16)


def test_merged_shards_equal_one_pass():
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = _images(20, 32)
    layers = ["layer1", "layer2.0.conv1"]
    one = LayerTopKPatches(model, layers, k=5).mine(_batches(images, 5), progress=False)
    a = LayerTopKPatches(model, layers, k=5)
    b = LayerTopKPatches(model, layers, k=5)
    for s in (0, 10):  # shard a: batches 0,2 ; shard b: batches 1,3 (interleaved, like ranks)
        a.update(images[s : s + 5], indices=range(s, s + 5))
        b.update(images[s + 5 : s + 10], indices=range(s + 5, s + 10))
    merged = a.merge(b).compute()
    assert merged.n_images == one.n_images == 20
    for layer in layers:
        for name, t in one.states[layer].tensors.items():
            assert torch.equal(t, merged.states[layer].tensors[name]), (layer, name)


def test_save_load_roundtrip_is_safe_and_atomic(tmp_path):
    model = _tiny_cnn()
    images = _images(12, 16)
    labels = torch.arange(12) % 3
    ids = [f"img{i:02d}" for i in range(12)]
    data = [(images[i : i + 4], labels[i : i + 4], ids[i : i + 4]) for i in range(0, 12, 4)]
    result = LayerTopKPatches(model, ["0", "3"], k=3).mine(data, progress=False)
    path = tmp_path / "sub" / "res.pt"
    result.save(path)
    assert sorted(os.listdir(path.parent)) == ["res.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert set(raw) == {"header", "tensors"}
    back = TopKResult.load(path)
    assert back.metadata["layers"] == ["0", "3"] and back.metadata["k"] == 3
    for layer in ("0", "3"):
        for ch in range(result.num_channels(layer)):
            assert back.records(layer, ch) == result.records(layer, ch)
    rec = back.records("3", 1)[0]
    assert rec.image_id == ids[rec.index] and rec.label == rec.index % 3
    with pytest.raises(ValueError, match="not a readable"):
        (tmp_path / "bad.pt").write_bytes(b"garbage")
        TopKResult.load(tmp_path / "bad.pt")


def test_patches_are_receptive_field_crops():
    model = _tiny_cnn()
    images = _images(8, 16)
    result = LayerTopKPatches(model, "3", k=4).mine(images, progress=False)
    crops = result.patches(images, "3", 2)
    rf = result.receptive_fields["3"][(16, 16)]
    assert crops.shape == (4, 3, *rf.size)
    # conv3 s1 p1 -> pool 2 -> conv3 s2 p1: input rows [4y - 3, 4y + 4], size 8
    assert rf.size == (8, 8)
    for rec, crop in zip(result.records("3", 2), crops):
        t, l, b, r = rec.box
        assert (t, l) == (max(0, 4 * rec.y - 3), max(0, 4 * rec.x - 3))
        assert (b, r) == (min(16, 4 * rec.y + 5), min(16, 4 * rec.x + 5))
        h, w = b - t, r - l
        oy = 8 - h if t == 0 and h < 8 else 0  # clipped at the top: padded on the top
        ox = 8 - w if l == 0 and w < 8 else 0
        assert torch.equal(crop[:, oy : oy + h, ox : ox + w], images[rec.index][:, t:b, l:r])


def test_attribute_is_layer_activation():
    model = _tiny_cnn()
    images = _images(4, 16)
    single = LayerTopKPatches(model, "3").attribute(images)
    assert torch.equal(single, LayerActivation(model, model[3]).attribute(images))
    several = LayerTopKPatches(model, ["0", model[3]]).attribute(images)
    assert isinstance(several, list) and len(several) == 2
    assert torch.equal(several[1], single)
    inp = LayerTopKPatches(model, "3").attribute(images, attribute_to_layer_input=True)
    assert torch.equal(inp, LayerActivation(model, model[3]).attribute(images, attribute_to_layer_input=True))


def test_forward_stops_after_deepest_layer():
    model = _tiny_cnn()
    calls = []
    model[5].register_forward_hook(lambda *a: calls.append(1))
    LayerTopKPatches(model, ["0", "3"], k=2).mine(_images(6, 16), progress=False)
    assert calls == []  # nothing past layer 3 ran
    LayerTopKPatches(model, ["7"], k=2).mine(_images(6, 16), progress=False)
    assert len(calls) == 1


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class _Boom(nn.Module):
    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return x


def test_no_hook_left_after_success_or_exception():
    model = _tiny_cnn()
    LayerTopKPatches(model, ["0", "3"]).mine(_images(6, 16), progress=False)
    assert _hook_counts(model) == 0
    boom = nn.Sequential(nn.Conv2d(3, 4, 3), _Boom(after=2), nn.Conv2d(4, 4, 3)).eval()
    miner = LayerTopKPatches(boom, ["0", "2"], k=2)
    with pytest.raises(RuntimeError, match="boom"):
        miner.mine(_batches(_images(12, 16), 3), progress=False)  # fails in the 3rd batch
    assert _hook_counts(boom) == 0
    with pytest.raises(RuntimeError, match="boom"):
        miner.attribute(_images(2, 16))
    assert _hook_counts(boom) == 0


def test_bad_inputs():
    model = _tiny_cnn()
    with pytest.raises(ValueError, match="No images were mined"):
        LayerTopKPatches(model, "3").mine([], progress=False)
    with pytest.raises(ValueError, match="Closest valid names.*features|Unknown layer"):
        LayerTopKPatches(torchvision.models.mobilenet_v2(), "feature.3")
    with pytest.raises(ValueError, match="channels but the model's first convolution takes 3"):
        LayerTopKPatches(model, "3").mine(torch.randn(2, 1, 16, 16), progress=False)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        LayerTopKPatches(model, "3", k=0)
    # k larger than the dataset: as many records as there are images
    res = LayerTopKPatches(model, "3", k=9).mine(_images(4, 16), progress=False)
    assert len(res.records("3", 0)) == 4 and len(res.records("3", 0, "bottom")) == 4


def test_unknown_layer_lists_close_names():
    model = torchvision.models.mobilenet_v2()
    with pytest.raises(ValueError) as err:
        LayerTopKPatches(model, "feature.3")
    assert "features.3" in str(err.value)


def test_nan_activations_are_skipped_with_warning():
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    images = _images(6, 8)
    images[2, :, 3, 3] = float("nan")  # image 2 is NaN at one position in every channel
    with pytest.warns(RuntimeWarning, match="NaN activations skipped"):
        res = LayerTopKPatches(model, "0", k=6).mine(images, progress=False)
    acts = full_activations(model, model[0], images)
    for which in ("top", "bottom"):
        _assert_matches(res, "0", reference_topk(acts, 6, True, which), which)
    assert res.states["0"].nan_count == 2
    all_nan = torch.full((2, 3, 8, 8), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = LayerTopKPatches(model, "0", k=3).mine(all_nan, progress=False)
    assert res.records("0", 0) == []


def test_wrong_number_of_layer_channels_between_batches():
    conv = nn.Conv2d(3, 4, 1)
    miner = LayerTopKPatches(conv, conv, k=2)
    miner.update(torch.randn(2, 3, 8, 8))
    conv.weight.data = torch.randn(5, 3, 1, 1)
    conv.bias.data = torch.randn(5)
    with pytest.raises(ValueError, match="5 channels but earlier batches gave 4"):
        miner.update(torch.randn(2, 3, 8, 8))


def test_records_are_patch_records_sorted():
    res = LayerTopKPatches(_tiny_cnn(), "3", k=5).mine(_images(9, 16), progress=False)
    recs = res.records("3", 0)
    assert all(isinstance(r, PatchRecord) for r in recs)
    assert [r.rank for r in recs] == list(range(5))
    assert [r.value for r in recs] == sorted((r.value for r in recs), reverse=True)
    bottom = res.records("3", 0, "bottom")
    assert [r.value for r in bottom] == sorted(r.value for r in bottom)


def test_labels_ids_from_dict_batches_and_snapshot_resume(tmp_path):
    model = _tiny_cnn()
    images = _images(16, 16)
    batches = [{"images": images[i : i + 4], "labels": list(range(i, i + 4)),
                "ids": [f"p{j}" for j in range(i, i + 4)]} for i in range(0, 16, 4)]
    full = LayerTopKPatches(model, ["0", "3"], k=3).mine(batches, progress=False)
    first = LayerTopKPatches(model, ["0", "3"], k=3)
    first.mine(batches[:2], progress=False, snapshot_path=tmp_path / "snap.pt")
    resumed = LayerTopKPatches(model, ["0", "3"], k=3)
    resumed.load_state(tmp_path / "snap.pt")
    assert resumed.n_images == 8
    res = resumed.mine(batches[2:], progress=False, reset=False)
    for layer in ("0", "3"):
        for ch in range(res.num_channels(layer)):
            assert res.records(layer, ch) == full.records(layer, ch)


def test_images_of_different_sizes_keep_their_own_positions_and_boxes():
    # batch size 1 with alternating input sizes: positions of a wide image must survive
    # being merged with those of a narrow one, and each box uses its own image's size.
    model = _tiny_cnn()
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 16 if i % 2 else 24, 24 if i % 2 else 16, generator=g) for i in range(7)]
    for distinct in (True, False):
        res = LayerTopKPatches(model, "3", k=4, distinct_images=distinct).mine(
            [im[None] for im in images], progress=False)
        for which, sign in (("top", -1.0), ("bottom", 1.0)):
            for ch in range(8):
                cands = []
                for i, im in enumerate(images):
                    a = full_activations(model, model[3], im[None], batch_size=1)[0, ch]
                    per = sorted((sign * float(a[y, x]), i, y, x)
                                 for y in range(a.shape[0]) for x in range(a.shape[1]))
                    cands.extend(per[:1] if distinct else per)
                expected = [(i, y, x) for _, i, y, x in sorted(cands)[:4]]
                recs = res.records("3", ch, which)
                assert [(r.index, r.y, r.x) for r in recs] == expected
                for r in recs:
                    assert r.input_size == tuple(images[r.index].shape[-2:])
                    rf = res.receptive_fields["3"][r.input_size]
                    assert r.box == rf.box(r.y, r.x)


def test_outputs_changed_in_place_later_in_the_forward_are_mined_as_they_were():
    # resnet18: bn1 is followed by ReLU(inplace=True); mined together with a deeper layer,
    # bn1's negative values must survive (they are what bn1 output).
    model = torchvision.models.resnet18(num_classes=3).eval()
    images = _images(6, 32)
    both = LayerTopKPatches(model, ["bn1", "layer1"], k=3).mine(images, progress=False)
    alone = LayerTopKPatches(model, "bn1", k=3).mine(images, progress=False)
    for which in ("top", "bottom"):
        assert torch.equal(both.values("bn1", which), alone.values("bn1", which))
        assert torch.equal(both.indices("bn1", which), alone.indices("bn1", which))
    assert (both.values("bn1", "bottom") < 0).all()


# ---------------------------------------------------------------- channels-last outputs
@pytest.mark.parametrize("layer", ["2", "3"])
def test_channels_last_outputs_are_mined_as_channels_first_or_refused_when_forced(layer):
    model = convnext_like()
    images = torch.rand(3, 3, 16, 16)
    result = LayerTopKPatches(model, [layer], k=2).mine([images], progress=False)
    assert result.layout(layer) == "NHWC"
    maps = full_activations(model, model.get_submodule(layer), images).permute(0, 3, 1, 2)
    assert result.num_channels(layer) == maps.shape[1]
    for which in ("top", "bottom"):
        _assert_matches(result, layer, reference_topk(maps, 2, True, which), which)
    miner = LayerTopKPatches(model, [layer], k=2, layout="NCHW")  # forced: rows would be channels
    with pytest.raises(ValueError, match=r"\(N, 16, 16, \d+\).*channels-last \(N, H, W, C\).*Permute back"):
        miner.mine([images], progress=False)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="channels-last"):  # receptive_field() says it too
        receptive_field(model, layer, 16)


def test_channels_first_layers_of_the_same_block_are_mined():
    model = convnext_like()
    images = torch.rand(3, 3, 16, 16)
    result = LayerTopKPatches(model, ["0", "4", "5"], k=2).mine([images], progress=False)
    assert [result.num_channels(n) for n in ("0", "4", "5")] == [8, 16, 4]
    # the check ran in eval mode and left the model's flags alone
    assert not any(m.training for m in model.modules())


def test_channel_layouts_that_depend_on_rows_are_not_mistaken_for_images():
    # space-to-depth: each output channel sees every other row (interleaved channel sets)
    model = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 6, 1)).eval()
    result = LayerTopKPatches(model, ["0", "1"], k=1).mine([torch.rand(2, 3, 8, 8)], progress=False)
    assert result.num_channels("0") == 12 and result.num_channels("1") == 6
    # grayscale: channels 0, 1 hold even rows and 2, 3 odd rows (a prefix and a suffix),
    # but the left column reaches only channels 0 and 2, so dimension 1 is not an image axis
    gray = nn.Sequential(nn.PixelUnshuffle(2)).eval()
    result = LayerTopKPatches(gray, ["0"], k=1).mine([torch.rand(2, 1, 8, 8)], progress=False)
    assert result.num_channels("0") == 4


def test_torchvision_convnext_inner_layer_and_its_block_are_mined():
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None).eval()
    images = torch.rand(3, 3, 32, 32)
    layers = ["features.1.0.block.3", "features.1.0.block"]
    result = LayerTopKPatches(model, layers, k=2).mine([images], progress=False)
    assert [result.layout(n) for n in layers] == ["NHWC", "NCHW"]
    assert [result.num_channels(n) for n in layers] == [384, 96]
    inner = full_activations(model, model.features[1][0].block[3], images).permute(0, 3, 1, 2)
    _assert_matches(result, layers[0], reference_topk(inner, 2, True, "top"), "top")
    # the Linear mixes channels only: its field is the 7x7 depthwise conv's on the stem's 4x4 patches
    assert result.receptive_fields[layers[0]][(32, 32)].size == (28, 28)


def test_space_to_depth_stem_survives_resume_and_merge(tmp_path):
    # the probe must be fed images with the mined channel count, also after load_state / merge
    torch.manual_seed(0)
    model = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 4, 3, padding=1)).eval()
    images = torch.rand(4, 3, 16, 16)
    direct = LayerTopKPatches(model, ["1"], k=2).mine([images], progress=False)
    half = LayerTopKPatches(model, ["1"], k=2)
    half.update(images[:2])
    half.save_state(tmp_path / "snap.pt")
    resumed = LayerTopKPatches(model, ["1"], k=2)
    resumed.load_state(tmp_path / "snap.pt")
    resumed.update(images[2:])
    other = LayerTopKPatches(model, ["1"], k=2)
    other.update(images[2:], indices=[2, 3])
    merged = LayerTopKPatches(model, ["1"], k=2).merge(half).merge(other)
    for result in (resumed.compute(), merged.compute()):
        assert torch.equal(result.indices("1"), direct.indices("1"))
        assert result.records("1", 0)[0].box == direct.records("1", 0)[0].box



def test_count_images_of_every_data_form():
    from torch.utils.data import DataLoader, TensorDataset

    from captum_topk.core.loop import count_images

    x = torch.zeros(10, 3, 4, 4)
    ds = TensorDataset(x, torch.zeros(10, dtype=torch.long))
    assert count_images(x) == 10 and count_images(x, max_images=4) == 4
    assert count_images(ds) == 10 and count_images(DataLoader(ds, batch_size=3)) == 10
    assert count_images([(x[:5],), (x[5:],)]) is None  # a list of 2 batches, not 2 images
    assert count_images(iter([x])) is None
