"""Feature visualization on the models researchers load (timm, transformers), tiny and at random
init: every layer the miner takes is visualized with the miner's layout detection, at the input
size the model needs, through transforms that end at that size; the objective grows.

Each case: the images have the requested shape and are finite, the model saw its own input
size (``settings["input_size"]``), and every unit's objective after a few steps exceeds its
value on the starting image (the same seed, ``steps=0``). Heavier architectures are slow-marked.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_topk.featvis import Compose, Jitter, Pad, Rotate, Scale, visualize
from captum_topk.featvis.layouts import declared_input_size, fixed_input_size, model_input_size, size_multiple

timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _timm(name: str, **kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


def vit():
    return _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def deit():  # class + distillation tokens
    return _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def dinov2_registers():  # class + 4 register tokens, any size that the patch (7) divides
    return _timm("vit_small_patch14_reg4_dinov2", img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2,
                 dynamic_img_size=True)


def swin():  # NHWC stages, shifted windows, one input size
    return _timm("swin_tiny_patch4_window7_224", img_size=32, patch_size=4, window_size=4, embed_dim=16,
                 depths=(1, 1), num_heads=(1, 2))


def maxvit():  # windows and grids that must divide the maps
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg, MaxxVitTransformerCfg

    torch.manual_seed(0)
    cfg = MaxxVitCfg(embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"), stem_width=16,
                     conv_cfg=MaxxVitConvCfg(block_type="mbconv", expand_ratio=2.0),
                     transformer_cfg=MaxxVitTransformerCfg(dim_head=8))
    return MaxxVit(cfg, img_size=64, num_classes=10).eval()


def levit():  # attention biases tied to one resolution
    return _timm("levit_128s", img_size=64, embed_dim=(32, 48, 64), num_heads=(2, 2, 2), depth=(1, 1, 1), key_dim=8)


def convnext_nhwc():  # conv_mlp=False: the MLP runs channels-last
    return _timm("convnext_atto", conv_mlp=False, dims=(16, 32, 48, 64), depths=(1, 1, 1, 1))


slow = pytest.mark.slow
#: Lucid's chain at the scale of 32-64 px images (the default's 12 px pad and 8 px jitter are
#: meant for 128 px): still grows the image, so the final Fit back to the model's size is tested.
SMALL = Compose([Pad(4), Jitter(3), Scale((0.95, 1.05)), Rotate(5.0), Jitter(2)])
CASES = [
    # (builder, layer, size, expected input size)
    (vit, "blocks.1", 48, (32, 32)),                      # fixed 32 px: 48 px images rescaled
    (vit, "blocks.1.mlp.fc1", 32, (32, 32)),
    (deit, "blocks.1", 32, (32, 32)),
    (deit, "blocks.1[prefix]", 32, (32, 32)),             # class and distillation tokens
    (dinov2_registers, "blocks.1", 48, (42, 42)),         # rounded to the patch size
    pytest.param(swin, "layers.0.blocks.0", 32, (32, 32), marks=slow),   # NHWC map
    (swin, "layers.0.blocks.0.mlp.fc1", 32, (32, 32)),
    pytest.param(maxvit, "stages.0.blocks.0", 48, (48, 48), marks=slow),
    (maxvit, "stages.0.blocks.0.attn_block.mlp.fc1", 32, (32, 32)),  # NHWC inside the block
    (levit, "stages.0.blocks.0", 64, (64, 64)),
    (convnext_nhwc, "stages.1.blocks.0.mlp.fc1", 32, (32, 32)),
]


@pytest.mark.parametrize("build,layer,size,input_size", CASES,
                         ids=[f"{v[0].__name__}:{v[1]}" for v in (getattr(c, "values", c) for c in CASES)])
def test_visualize_every_layer_the_miner_takes(build, layer, size, input_size):
    model = build()
    kw = dict(size=size, lr=0.05, transforms=SMALL, progress=False)
    start = visualize(model, layer, [0, 3], steps=0, **kw)
    vis = visualize(model, layer, [0, 3], steps=12, **kw)
    assert vis.images.shape == (2, 3, size, size) and bool(torch.isfinite(vis.images).all())
    assert tuple(vis.settings["input_size"]) == input_size
    assert bool(torch.isfinite(vis.values).all())
    assert torch.all(vis.values > start.values), (vis.values, start.values)


@slow
def test_clip_vision_tower():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2)
    model = transformers.CLIPVisionModel(config).eval()
    assert fixed_input_size(model) == (32, 32)  # config.image_size
    for layer in ("encoder.layers.1", "encoder.layers.1.mlp.fc1"):
        kw = dict(size=32, lr=0.05, transforms=SMALL, progress=False)
        start = visualize(model, layer, [0, 3], steps=0, **kw)
        vis = visualize(model, layer, [0, 3], steps=12, **kw)
        assert vis.images.shape == (2, 3, 32, 32) and bool(torch.isfinite(vis.images).all())
        assert torch.all(vis.values > start.values), (layer, vis.values, start.values)


def test_input_sizes_from_the_models_description():
    assert fixed_input_size(vit()) == (32, 32) and model_input_size(vit(), 100) == (32, 32)
    dino = dinov2_registers()
    assert fixed_input_size(dino) is None and size_multiple(dino) == 7 and model_input_size(dino, 48) == (42, 42)
    assert declared_input_size(maxvit()) == (64, 64) and fixed_input_size(maxvit()) is None
    assert fixed_input_size(convnext_nhwc()) is None and size_multiple(convnext_nhwc()) == 1


@slow
def test_a_size_the_model_refuses_falls_back_to_the_size_it_was_built_for():
    model = maxvit()  # 36 px: windows do not divide the maps; built for 64
    vis = visualize(model, "stages.1.blocks.0.attn_block.mlp.fc1", [1], size=36, steps=2, progress=False)
    assert vis.images.shape == (1, 3, 36, 36) and tuple(vis.settings["input_size"]) == (64, 64)


def test_channels_last_layers_are_read_channels_last_by_default():
    from captum_topk.featvis import layer_layout

    model = convnext_nhwc()  # stages.1 MLP: (N, 4, 4, 128) at 32 px, channels last
    layer = "stages.1.blocks.0.mlp.fc1"
    _, to_mined, key = layer_layout(model, layer, 32)
    assert key.startswith("NHWC")
    raw = torch.randn(1, 4, 4, 128)
    assert torch.equal(to_mined(raw)[0, 100, 2, 3], raw[0, 2, 3, 100])
    vis = visualize(model, layer, [100], size=32, steps=1, transforms=SMALL, progress=False)  # > H: NCHW would refuse
    assert vis.images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="channels-last"):  # forced NCHW: the miner's refusal
        visualize(model, layer, [100], size=32, steps=1, layout="NCHW", progress=False)


def test_default_size_is_the_models_own():
    vis = visualize(vit(), "blocks.1", [0], steps=1, transforms=SMALL, progress=False)
    assert vis.images.shape == (1, 3, 32, 32) and vis.settings["size"] == 32
