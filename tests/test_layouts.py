"""Modern backbones: channels-last (ConvNeXt, Swin) and token (ViT) layers mined as their
(N, C, h, w) equivalent, with brute-force twins, footprint boxes for tokens, activation maps."""

import pytest
import torch
import torchvision
from torch import nn

from captum_topk import LayerTopKPatches
from captum_topk.capture.tokens import TokenLayoutError, token_layout
from ._tolerance import assert_same_records
from tests._reference import full_activations, reference_topk


def _vit(image=32, patch=8):
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=image, patch_size=patch, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=10).eval()


def _images(n, size, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_topk(result, layer, maps, k):
    for which in ("top", "bottom"):
        ref = reference_topk(maps, k, True, which)
        got = result.states[layer].tensors
        for c in range(maps.shape[1]):
            assert [tuple(e[1:]) for e in ref[c]] == list(zip(
                got[f"{which}_index"][c].tolist(), got[f"{which}_y"][c].tolist(), got[f"{which}_x"][c].tolist())), (layer, c)


def test_vit_tokens_mined_on_their_grid_with_prefix_tokens_apart():
    vit = _vit()
    x = _images(7, 32)
    layer = "encoder.layers.encoder_layer_1"
    res = LayerTopKPatches(vit, layer, k=3).mine(x, batch_size=3, progress=False)
    assert res.layers == [layer, layer + "[prefix]"]
    tokens = full_activations(vit, vit.encoder.layers.encoder_layer_1, x)       # (7, 1 + 16, 16)
    patch_maps = tokens[:, 1:, :].reshape(7, 4, 4, 16).permute(0, 3, 1, 2)      # brute force grid
    _assert_topk(res, layer, patch_maps, 3)
    _assert_topk(res, layer + "[prefix]", tokens[:, :1, :].permute(0, 2, 1).unsqueeze(-1), 3)
    rec = res.records(layer, 5)[0]
    assert rec.box_kind == "token" and res.layout(layer) == "NLC"
    assert rec.box == (rec.y * 8, rec.x * 8, rec.y * 8 + 8, rec.x * 8 + 8)  # the patch footprint
    assert res.records(layer + "[prefix]", 5)[0].box == (0, 0, 32, 32)
    assert res.patches(x, layer, 5).shape == (3, 3, 8, 8)


def test_token_grid_from_the_model_from_arguments_or_a_clear_error():
    assert token_layout(196, (224, 224)) == (0, (14, 14))                  # 14 x 14 patches, inferred
    with pytest.raises(TokenLayoutError, match="prefix_tokens="):           # a prefix is never a remainder
        token_layout(197, (224, 224))
    assert token_layout(17, (32, 32), _vit()) == (1, (4, 4))                # torchvision attributes
    assert token_layout(20, (32, 32), prefix_tokens=4) == (4, (4, 4))
    with pytest.raises(TokenLayoutError, match="token_grid=.*prefix_tokens="):
        token_layout(31, (32, 32))
    vit = _vit()
    res = LayerTopKPatches(vit, "encoder.layers.encoder_layer_0", k=2, layout="NLC", token_grid=(4, 4),
                           prefix_tokens=1).mine(_images(3, 32), progress=False)
    assert res.states["encoder.layers.encoder_layer_0"].out_size == (4, 4)


class _ChannelsLastBlock(nn.Module):
    """conv -> permute to (N, H, W, C) -> Linear -> permute back: ConvNeXt's pattern."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.linear = nn.Linear(6, 5)
        self.out = nn.Conv2d(5, 4, 3, padding=1)

    def forward(self, x):
        y = self.linear(self.conv(x).permute(0, 2, 3, 1))
        return self.out(y.permute(0, 3, 1, 2))


def test_channels_last_layer_is_mined_as_its_channels_first_permutation():
    torch.manual_seed(0)
    net = _ChannelsLastBlock().eval()
    x = _images(6, 16)
    res = LayerTopKPatches(net, ["linear", "out"], k=2).mine(x, progress=False)
    assert res.layout("linear") == "NHWC" and res.layout("out") == "NCHW"
    maps = full_activations(net, net.linear, x).permute(0, 3, 1, 2)
    _assert_topk(res, "linear", maps, 2)
    # its receptive field is the conv's (the Linear mixes channels only): 3x3 at stride 2
    rf = res.receptive_fields["linear"][(16, 16)]
    assert rf.box(2, 3) == (3, 5, 6, 8) and rf.stride == (2, 2)
    with pytest.raises(ValueError, match="channels-last"):
        LayerTopKPatches(net, ["linear"], k=2, layout="NCHW").mine(x, progress=False)


@pytest.mark.slow
def test_torchvision_convnext_and_swin_internals():
    x = _images(2, 64)
    for model, layer in ((torchvision.models.convnext_tiny(), "features.1.0.block.3"),
                         (torchvision.models.swin_t(), "features.1")):
        model.eval()
        res = LayerTopKPatches(model, layer, k=2).mine(x, progress=False)
        raw = full_activations(model, model.get_submodule(layer), x)
        _assert_topk(res, layer, raw.permute(0, 3, 1, 2), 2)
        assert res.layout(layer) == "NHWC"


def test_swin_stages_are_channels_last_also_where_their_field_is_the_whole_image():
    # Shifted-window attention multiplies the wrapped rows by an exact-zero-after-rounding
    # weight: NaN crosses the image (0 * NaN), a finite change does not. Deeper stages see the
    # whole image, no locality is left to read; the shape under a taller input tells.
    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2, 2],
                                              num_heads=[1, 1, 1], window_size=[4, 4]).eval()
    x = _images(3, 64)
    layers = ["features.1", "features.3", "features.5"]
    res = LayerTopKPatches(swin, layers, k=2).mine(x, progress=False)
    for layer, channels in zip(layers, (8, 16, 32)):
        assert res.layout(layer) == "NHWC" and res.num_channels(layer) == channels, layer
        raw = full_activations(swin, swin.get_submodule(layer), x)
        _assert_topk(res, layer, raw.permute(0, 3, 1, 2), 2)
    # a model that takes one input size only: the shape at that size decides
    fixed = _FixedSize(swin, 64).eval()
    res = LayerTopKPatches(fixed, ["m." + layer for layer in layers], k=2).mine(x, progress=False)
    assert [res.num_channels("m." + layer) for layer in layers] == [8, 16, 32]
    assert all(res.layout("m." + layer) == "NHWC" for layer in layers)
    for model in (torchvision.models.resnet18().eval(), _FixedSize(torchvision.models.resnet18(), 64).eval()):
        pre = "m." if isinstance(model, _FixedSize) else ""   # channels-first maps stay channels-first
        res = LayerTopKPatches(model, [pre + "layer1", pre + "layer4"], k=2).mine(x, progress=False)
        assert res.layout(pre + "layer1") == res.layout(pre + "layer4") == "NCHW"
        assert res.num_channels(pre + "layer4") == 512


class _FixedSize(nn.Module):
    r"""A model that refuses any input size but one (as a fixed-size export would)."""

    def __init__(self, m: nn.Module, size: int) -> None:
        super().__init__()
        self.m, self.size = m, size

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"this model takes {self.size} x {self.size} inputs only")
        return self.m(x)


def test_activation_maps_hold_the_records_values():
    vit = _vit()
    x = _images(6, 32, seed=3)
    layer = "encoder.layers.encoder_layer_1"
    res = LayerTopKPatches(vit, layer, k=4).mine(x, progress=False)
    maps = res.activation_maps(x, layer, 2, model=vit)
    assert maps.shape == (4, 4, 4)
    from captum_topk.core.activation_maps import recorded_layout

    assert recorded_layout(res, layer) == {"layout": "NLC", "token_grid": (4, 4), "prefix_tokens": 1}
    assert recorded_layout(res, layer + "[prefix]") == recorded_layout(res, layer)
    for m, r in zip(maps, res.records(layer, 2)):
        assert float(m[r.y, r.x]) == pytest.approx(r.value, abs=1e-5) and float(m.max()) == pytest.approx(r.value, abs=1e-5)
    bottom = res.activation_maps(x, layer, 2, model=vit, which="bottom")
    for m, r in zip(bottom, res.records(layer, 2, "bottom")):
        assert float(m.min()) == pytest.approx(r.value, abs=1e-5)
    cnn = _ChannelsLastBlock().eval()
    res = LayerTopKPatches(cnn, "out", k=3, stats=True).mine(x, progress=False)
    assert recorded_layout(res, "out") == {"layout": "NCHW", "token_grid": None, "prefix_tokens": None}
    maps = res.activation_maps(x, "out", 1, model=cnn)
    for m, r in zip(maps, res.records("out", 1)):
        assert float(m[r.y, r.x]) == pytest.approx(r.value, abs=1e-6)
    from captum_topk.viz.overlay import record_overlays

    rgb = record_overlays(res, x, "out", 1, model=cnn)
    assert rgb.shape == (3, 32, 32, 3) and rgb.dtype.name == "uint8"


def test_onnx_runtime_mines_tokens_and_channels_last_like_pytorch(tmp_path):
    from captum_topk.onnx import OnnxTopKPatches, export

    vit = _vit()
    x = _images(6, 32, seed=4)
    layer = "encoder.layers.encoder_layer_1"
    exp = export(vit, [layer], tmp_path / "vit.onnx", input_size=32, check_images=0, progress=False)
    assert exp.sidecar.layouts[layer] == {"layout": "NLC", "prefix_tokens": 1, "grid": [4, 4]}
    ort = OnnxTopKPatches(exp.path, k=3, progress_rf=False).mine(x, progress=False)
    torch_res = LayerTopKPatches(vit, layer, k=3).mine(x, progress=False)
    assert ort.layers == torch_res.layers == [layer, layer + "[prefix]"]
    for name in ort.layers:
        assert_same_records(ort, torch_res, name)
    assert ort.records(layer, 1)[0].box == torch_res.records(layer, 1)[0].box

    net = _ChannelsLastBlock().eval()
    x = _images(5, 16, seed=5)
    exp = export(net, ["linear", "out"], tmp_path / "cl.onnx", input_size=16, check_images=0, progress=False)
    plain = tmp_path / "plain.onnx"  # the same graph without our sidecar: the layout is detected by probing
    plain.write_bytes(exp.path.read_bytes())
    torch_res = LayerTopKPatches(net, ["linear", "out"], k=2).mine(x, progress=False)
    for path in (exp.path, plain):
        ort = OnnxTopKPatches(path, ["linear", "out"], k=2, progress_rf=False).mine(x, progress=False)
        assert ort.layout("linear") == "NHWC" and ort.layout("out") == "NCHW"
        assert_same_records(ort, torch_res, "linear")
        assert ort.receptive_fields["linear"][(16, 16)] == torch_res.receptive_fields["linear"][(16, 16)]


def test_neuron_selectors_index_the_raw_output_of_every_layout():
    from captum.attr import LayerActivation

    vit = _vit()
    x = _images(5, 32, seed=6)
    layer = "encoder.layers.encoder_layer_1"
    res = LayerTopKPatches(vit, layer, k=2).mine(x, progress=False)
    net = _ChannelsLastBlock().eval()
    res_cl = LayerTopKPatches(net, ["linear", "out"], k=2).mine(_images(5, 16, seed=6), progress=False)
    cases = [(res, vit, vit.encoder.layers.encoder_layer_1, layer, x),
             (res, vit, vit.encoder.layers.encoder_layer_1, layer + "[prefix]", x),
             (res_cl, net, net.linear, "linear", _images(5, 16, seed=6))]
    for result, model, module, name, images in cases:
        for record, selector in result.neurons(name, 3):
            raw = LayerActivation(model, module).attribute(images[record.index][None])[0]
            assert float(raw[selector]) == pytest.approx(record.value, abs=1e-5), (name, selector)


@pytest.mark.slow
def test_a_users_vit_checkpoint_loads_and_mines_like_a_cnn(tmp_path):
    from captum_topk import TopKResult
    from captum_topk.cli import main

    torch.manual_seed(0)
    ckpt = tmp_path / "my_vit.pt"
    torch.save({"state_dict": torchvision.models.vit_b_32().state_dict()}, ckpt)
    layer = "encoder.layers.encoder_layer_1"
    assert main(["mine", "--model", "vit_b_32", "--checkpoint", str(ckpt), "--layers", layer, "--max-images", "4",
                 "--batch-size", "4", "--backend", "torch", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    result = TopKResult.load(tmp_path / "run" / "result.pt")
    assert result.layout(layer) == "NLC" and result.states[layer].out_size == (7, 7)
    assert main(["show", str(tmp_path / "run"), "--channels", "0", "--overlay"]) == 0
    assert (tmp_path / "run" / f"{layer.replace('.', '_')}_top9_overlay.png").is_file()


@pytest.mark.slow
def test_torchvision_maxvit_blocks_against_brute_force():
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t().eval()
    x = _images(2, 224)
    layer = "blocks.0.layers.0"
    res = LayerTopKPatches(model, layer, k=2).mine(x, progress=False)
    raw = full_activations(model, model.get_submodule(layer), x)
    maps = raw if res.layout(layer) == "NCHW" else raw.permute(0, 3, 1, 2)
    _assert_topk(res, layer, maps, 2)
