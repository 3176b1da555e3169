"""timm and Hugging Face transformers models at random init and small sizes: every chosen layer is
either mined exactly (its layout, prefix and grid as stated here, and the top-k of every channel
equal to a plain forward hook's tensor reduced by hand) or refused with the stated reason; boxes
of window-local layers contain the input-gradient support."""

import warnings

import pytest
import torch

from captum_topk import LayerTopKPatches
from captum_topk.capture.batch import split_batch
from tests._reference import reference_topk
from tests._tolerance import assert_same_records

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def _timm(name, **kw):
    def build():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, **kw).eval()
    return build


def _hf(model_cls, config_cls, **kw):
    def build():
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw)).eval()
    return build


_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)
_SWIN = dict(img_size=32, patch_size=4, window_size=2, embed_dim=16, depths=(2, 2), num_heads=(1, 2))
_RESHAPED = "not the batch but the batch reshaped"

# (id, builder, input side, layer, expectation): "NCHW" / "NHWC" / ("NLC", prefix, (h, w)) / ("refused", regex)
CASES = [
    ("vit_tiny", _timm("vit_tiny_patch16_224", img_size=32, depth=2), 32, "patch_embed", ("NLC", 0, (2, 2))),
    ("vit_tiny", _timm("vit_tiny_patch16_224", img_size=32, depth=2), 32, "blocks.1", ("NLC", 1, (2, 2))),
    ("vit_tiny", _timm("vit_tiny_patch16_224", img_size=32, depth=2), 32, "blocks.0.attn.qkv", ("NLC", 1, (2, 2))),
    ("vit_reg4", _timm("vit_tiny_patch16_224", img_size=32, depth=2, reg_tokens=4), 32, "blocks.1", ("NLC", 5, (2, 2))),
    ("deit_distilled", _timm("deit_tiny_distilled_patch16_224", img_size=32, depth=2), 32, "blocks.1", ("NLC", 2, (2, 2))),
    ("eva02", _timm("eva02_tiny_patch14_224", img_size=28, depth=2), 28, "blocks.1", ("NLC", 1, (2, 2))),
    ("swin", _timm("swin_tiny_patch4_window7_224", **_SWIN), 32, "layers.0.blocks.1.mlp.fc1", ("NLC", 0, (8, 8))),
    ("swin", _timm("swin_tiny_patch4_window7_224", **_SWIN), 32, "layers.0", "NHWC"),
    ("swin", _timm("swin_tiny_patch4_window7_224", **_SWIN), 32, "layers.0.blocks.0.attn", ("refused", _RESHAPED)),
    ("pvt_v2_b0", _timm("pvt_v2_b0"), 32, "stages.0.blocks.0", ("NLC", 0, (8, 8))),
    ("pvt_v2_b0", _timm("pvt_v2_b0"), 32, "stages.1", "NCHW"),
    pytest.param(("coatnet", _timm("coatnet_nano_rw_224", img_size=64), 64, "stages.2", "NCHW"),
                 marks=pytest.mark.slow, id="coatnet:stages.2"),
    pytest.param(("maxvit", _timm("maxvit_nano_rw_256", img_size=64), 64, "stages.1", "NCHW"),
                 marks=pytest.mark.slow, id="maxvit:stages.1"),
    ("efficientvit", _timm("efficientvit_b0"), 32, "stages.1", "NCHW"),
    ("poolformer", _timm("poolformer_s12"), 32, "stages.1", "NCHW"),
    ("convnext_atto", _timm("convnext_atto"), 32, "stages.0", "NCHW"),
    ("convnext_atto", _timm("convnext_atto", conv_mlp=False), 32, "stages.0.blocks.0.mlp.fc1", "NHWC"),
    ("resnet18d", _timm("resnet18d"), 32, "layer2", "NCHW"),
    ("levit", _timm("levit_128s", img_size=64), 64, "stages.0.blocks.0", ("NLC", 0, (4, 4))),
    ("mobilevit", _timm("mobilevit_xxs"), 64, "stages.2.1", "NCHW"),
    ("mobilevit", _timm("mobilevit_xxs"), 64, "stages.2.1.transformer", ("refused", _RESHAPED)),
    ("regnet", _timm("regnetx_002"), 32, "s2", "NCHW"),
    ("efficientnet", _timm("efficientnet_b0"), 32, "blocks.2", "NCHW"),
    # Hugging Face transformers
    ("hf_vit", _hf("ViTModel", "ViTConfig", **_VIT), 32, "embeddings.patch_embeddings", ("NLC", 0, (4, 4))),
    ("hf_vit", _hf("ViTModel", "ViTConfig", **_VIT), 32, "layers.1.attention", ("NLC", 1, (4, 4))),
    ("hf_vit", _hf("ViTModel", "ViTConfig", **_VIT), 32, "layers.1", ("NLC", 1, (4, 4))),
    ("hf_deit", _hf("DeiTModel", "DeiTConfig", **_VIT), 32, "layers.1", ("NLC", 2, (4, 4))),
    ("hf_dinov2_reg", _hf("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", num_register_tokens=2, **_VIT),
     32, "encoder.layer.1", ("NLC", 3, (4, 4))),
    ("hf_clip", _hf("CLIPVisionModel", "CLIPVisionConfig", **_VIT), 32, "encoder.layers.1",
     ("NLC", 1, (4, 4))),
    ("hf_siglip", _hf("SiglipVisionModel", "SiglipVisionConfig", **_VIT), 32, "encoder.layers.1",
     ("NLC", 0, (4, 4))),
    ("hf_convnext", _hf("ConvNextModel", "ConvNextConfig", hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), 32,
     "encoder.stages.1", "NCHW"),
    ("hf_swin", _hf("SwinModel", "SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                    num_heads=[1, 2], window_size=2), 32, "encoder.layers.0.blocks.1", ("NLC", 0, (8, 8))),
    ("hf_swin", _hf("SwinModel", "SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                    num_heads=[1, 2], window_size=2), 32, "encoder.layers.0",
     ("refused", "several tensors")),
    ("hf_resnet", _hf("ResNetModel", "ResNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), 32,
     "encoder.stages.1", "NCHW"),
    ("hf_mobilevit", _hf("MobileViTModel", "MobileViTConfig", image_size=32, hidden_sizes=[16, 24, 32],
                         neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32]), 32, "encoder.layer.2.layernorm",
     ("refused", _RESHAPED)),
]


def _hidden(output):
    """A layer's tensor, unwrapped by hand: a ModelOutput's last_hidden_state, a tuple's first element."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0]


def _raw(model, layer, images):
    store = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(_hidden(o).detach().clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return store[0]


def _by_hand(raw, expected):
    """The (N, C, h, w) maps (and the (N, C, prefix, 1) prefix column) of a raw output, as the test states its layout."""
    if expected == "NCHW":
        return {"": raw}
    if expected == "NHWC":
        return {"": raw.permute(0, 3, 1, 2)}
    _, prefix, (h, w) = expected
    n, _, c = raw.shape
    maps = {"": raw[:, prefix:].reshape(n, h, w, c).permute(0, 3, 1, 2)}
    if prefix:
        maps["[prefix]"] = raw[:, :prefix].permute(0, 2, 1).unsqueeze(-1)
    return maps


def _assert_twin(result, layer, maps, k):
    got = result.states[layer].tensors
    for which in ("top", "bottom"):
        ref = reference_topk(maps, k, True, which)
        for c in range(maps.shape[1]):
            assert [tuple(e[1:]) for e in ref[c]] == list(zip(
                got[f"{which}_index"][c].tolist(), got[f"{which}_y"][c].tolist(), got[f"{which}_x"][c].tolist())), (layer, c)


def _id(case):
    return case.id if hasattr(case, "id") else f"{case[0]}:{case[3]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_layout_is_exact_or_refused_with_the_reason(case):
    _, build, side, layer, expected = case
    model = build()
    images = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    miner = LayerTopKPatches(model, layer, k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(expected, tuple) and expected[0] == "refused":
            with pytest.raises((ValueError, TypeError), match=expected[1]) as err:
                miner.mine(images, batch_size=3, progress=False)
            assert repr(layer) in str(err.value)  # the message names the layer
            return
        result = miner.mine(images, batch_size=3, progress=False)
    maps = _by_hand(_raw(model, layer, images), expected)
    assert result.layers == [layer + suffix for suffix in maps]
    assert result.layout(layer) == (expected if isinstance(expected, str) else "NLC")
    if not isinstance(expected, str):
        assert result.layer_info[layer]["prefix_tokens"] == expected[1]
        assert result.states[layer].out_size == expected[2]
    for suffix, m in maps.items():
        _assert_twin(result, layer + suffix, m, 2)


def test_one_miner_takes_a_patch_embedding_and_a_block_with_per_layer_options():
    model = _timm("vit_tiny_patch16_224", img_size=32, depth=2)()
    images = torch.randn(2, 3, 32, 32)
    res = LayerTopKPatches(model, ["patch_embed", "blocks.1"], k=2).mine(images, progress=False)
    assert res.layer_info["patch_embed"]["prefix_tokens"] == 0 and res.layer_info["blocks.1"]["prefix_tokens"] == 1
    res2 = LayerTopKPatches(model, ["patch_embed", "blocks.1"], k=2, layout="NLC",
                            token_grid={"patch_embed": (2, 2), "blocks.1": (2, 2)},
                            prefix_tokens={"blocks.1": 1}).mine(images, progress=False)
    assert torch.equal(res.values("blocks.1"), res2.values("blocks.1"))
    with pytest.raises(ValueError, match="not mined"):
        LayerTopKPatches(model, ["blocks.1"], k=2, prefix_tokens={"blocks.0": 1})
    with pytest.raises(ValueError, match="prefix_tokens="):  # a wrong grid is refused, never a remainder prefix
        LayerTopKPatches(model, ["blocks.1"], k=2, token_grid={"blocks.1": (2, 1)}).mine(images, progress=False)


def test_pvt_v2_at_its_default_size_is_not_mined_as_a_remainder_prefix():
    from captum_topk.capture.tokens import token_layout

    model = _timm("pvt_v2_b0")()
    assert token_layout(3136, (224, 224), model, name="stages.0.blocks.0") == (0, (56, 56))
    assert token_layout(784, (224, 224), model) == (0, (28, 28))


def test_transformers_batches_and_attribute_on_tuple_outputs():
    model = _hf("ViTModel", "ViTConfig", **_VIT)()
    images = torch.randn(4, 3, 32, 32)
    feature = transformers.BatchFeature({"pixel_values": images, "labels": torch.tensor([0, 1, 2, 3])})
    assert split_batch(feature).labels == [0, 1, 2, 3] and split_batch({"pixel_values": images}).images is images
    miner = LayerTopKPatches(model, "layers.0.attention", k=2)
    with pytest.warns(UserWarning, match="'layers.0.attention' returns a tuple"):
        res = miner.mine([feature], progress=False)
    assert res.n_images == 4
    got = miner.attribute(images)
    assert torch.equal(got, _raw(model, "layers.0.attention", images))
    maps = res.activation_maps(images, "layers.0.attention", 3, model=model)  # the hidden state, on its grid
    for m, r in zip(maps, res.records("layers.0.attention", 3)):
        assert float(m[r.y, r.x]) == pytest.approx(r.value, abs=1e-5)


def _gradient_support(model, layer, images, expected, y, x):
    """Input pixels whose gradient of the channel sum at token / position (y, x) is non-negligible."""
    images = images.clone().requires_grad_(True)
    store = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(_hidden(o)))
    try:
        model(images)
    finally:
        handle.remove()
    maps = _by_hand(store[0], expected)[""]
    (grad,) = torch.autograd.grad(maps[0, :, y, x].sum(), images)
    g = grad[0].abs().amax(0)
    # masked attention pairs weigh exp(-100) ~ 4e-44: below any float32 change of the output
    return g > 1e-20 * float(g.max())


SWINS = [
    ("timm", _timm("swin_tiny_patch4_window7_224", **_SWIN), "layers.0.blocks.1.mlp.fc1", ("NLC", 0, (8, 8))),
    ("transformers", _hf("SwinModel", "SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                         num_heads=[1, 2], window_size=2), "encoder.layers.0.blocks.1", ("NLC", 0, (8, 8))),
]


@pytest.mark.parametrize("case", SWINS, ids=[c[0] for c in SWINS])
def test_window_local_token_layers_get_boxes_that_hold_the_gradient_support(case):
    _, build, layer, expected = case
    model = build()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = LayerTopKPatches(model, layer, k=1).mine(images, progress=False)
    rf = res.receptive_fields[layer][(32, 32)]
    assert res.box_kind(layer) == "receptive_field"
    assert rf.size[0] < 32 and rf.size[1] < 32  # local: the shifted window's mask does not widen it to the image
    for y, x in ((0, 0), (3, 4), (7, 7), (0, 7)):
        support = _gradient_support(model, layer, images, expected, y, x)
        t, l, b, r = rf.box(y, x)
        inside = torch.zeros_like(support)
        inside[t:b, l:r] = True
        assert support.any() and not bool((support & ~inside).any()), (layer, y, x, rf.box(y, x))
        rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
        assert (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1) == (t, l, b, r)


def test_global_token_layers_keep_their_patch_footprint():
    model = _timm("vit_tiny_patch16_224", img_size=32, depth=2)()
    res = LayerTopKPatches(model, ["patch_embed", "blocks.0"], k=1).mine(torch.randn(2, 3, 32, 32), progress=False)
    assert res.box_kind("blocks.0") == "token"
    assert res.box_kind("patch_embed") == "receptive_field"  # a patch embedding's token sees its patch
    rf = res.receptive_fields["patch_embed"][(32, 32)]
    assert rf.box(1, 0) == (16, 0, 32, 16)


@pytest.mark.slow
def test_torchvision_swin_stage_boxes_hold_the_gradient_support():
    import torchvision

    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 1],
                                              window_size=[2, 2]).eval()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = LayerTopKPatches(swin, "features.1", k=1).mine(images, progress=False)
    rf = res.receptive_fields["features.1"][(32, 32)]
    assert res.layout("features.1") == "NHWC" and rf.size[0] < 32
    for y, x in ((0, 0), (3, 4), (7, 7)):
        support = _gradient_support(swin, "features.1", images, "NHWC", y, x)
        t, l, b, r = rf.box(y, x)
        rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
        assert (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1) == (t, l, b, r)


def test_timm_dynamic_img_size_takes_other_and_non_square_inputs():
    model = _timm("vit_tiny_patch16_224", img_size=32, depth=2, dynamic_img_size=True)()
    images = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(3))
    res = LayerTopKPatches(model, ["patch_embed", "blocks.1"], k=2).mine(images, progress=False)
    assert res.layout("patch_embed") == "NHWC" and res.states["patch_embed"].out_size == (3, 2)
    assert res.states["blocks.1"].out_size == (3, 2) and res.layer_info["blocks.1"]["prefix_tokens"] == 1
    for suffix, maps in _by_hand(_raw(model, "blocks.1", images), ("NLC", 1, (3, 2))).items():
        _assert_twin(res, "blocks.1" + suffix, maps, 2)


class _TokenStem(torch.nn.Module):
    """A 3x3 conv stem, its map flattened to tokens and a per-token Linear: a window-local token layer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.linear = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.linear(self.conv(x).flatten(2).transpose(1, 2)).mean(1)


def test_a_local_token_layer_has_the_same_field_through_onnx_runtime(tmp_path):
    from captum_topk.onnx import OnnxTopKPatches, export

    torch.manual_seed(0)
    net = _TokenStem().eval()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    res = LayerTopKPatches(net, "linear", k=2).mine(images, progress=False)
    rf = res.receptive_fields["linear"][(16, 16)]
    assert res.box_kind("linear") == "receptive_field" and res.states["linear"].out_size == (8, 8)
    assert rf.box(2, 3) == (3, 5, 6, 8)  # the 3x3 window at stride 2, not the 2x2 footprint
    exp = export(net, ["linear"], tmp_path / "stem.onnx", input_size=16, check_images=0, progress=False)
    ort = OnnxTopKPatches(exp.path, k=2, progress_rf=False).mine(images, progress=False)
    assert ort.box_kind("linear") == "receptive_field"
    assert ort.receptive_fields["linear"][(16, 16)] == rf
    assert_same_records(ort, res, "linear")  # two backends: up to near ties (tests/_tolerance.py)
