"""Models of other libraries: spec parsing, timm / transformers / factory loading (checkpoints of
every kind, preprocessing, layer names), ONNX export of ModelOutputs, and ONNX Runtime mining
equal to PyTorch mining on 3 timm and 3 transformers models (random init, small sizes)."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from torch import nn

from captum_topk import LayerTopKPatches
from captum_topk.models import load_model
from captum_topk.models.ecosystem import ModelSpec, PixelValuesModel, model_files, output_tensor, parse_model_spec
from captum_topk.runs.spec import RunSpec

from ._models import save_hf_vit, tiny_hf_vit
from ._tolerance import BACKEND_ATOL, BACKEND_RTOL

timm = pytest.importorskip("timm")
tf = pytest.importorskip("transformers")

#: The export's parity bound (docs/onnx.md): max |ORT - torch| <= ATOL + RTOL * max |torch|.
ATOL, RTOL = BACKEND_ATOL, BACKEND_RTOL


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- specs
@pytest.mark.parametrize("text,expected", [
    ("timm:resnet18d", ModelSpec("timm", "resnet18d")),
    ("hf:runs/my vit", ModelSpec("hf", "runs/my vit")),
    ("my_pkg.models:build", ModelSpec("factory", "my_pkg.models:build")),
    ("pkg:Cls.make", ModelSpec("factory", "pkg:Cls.make")),
    ("model.ONNX", ModelSpec("onnx", "model.ONNX")),
    ("resnet18", ModelSpec("named", "resnet18")),
    ("mobilenet_v2-imagenet", ModelSpec("named", "mobilenet_v2-imagenet")),
    ("/abs/ckpt.pth", ModelSpec("named", "/abs/ckpt.pth")),
])
def test_parse_model_spec(text, expected):
    assert parse_model_spec(text) == expected


def test_empty_spec_and_onnx_given_to_load_model_are_refused():
    with pytest.raises(ValueError, match="names no model"):
        parse_model_spec("timm:")
    with pytest.raises(ValueError, match="--onnx"):
        load_model("x.onnx")


def test_missing_extra_says_which_to_install(monkeypatch, capsys):
    from captum_topk.cli.main import main

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match=r"pip install captum-topk\[timm\]"):
        load_model("timm:resnet10t")
    assert main(["layers", "timm:resnet10t"]) == 2
    assert "pip install captum-topk[timm]" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install captum-topk\[transformers\]"):
        from captum_topk.models.ecosystem import require_extra

        require_extra("transformers", "transformers")


# ------------------------------------------------------------------------------ timm
def test_timm_random_weights_are_seeded_and_info_is_timms():
    a, info = load_model("timm:resnet10t")
    b, _ = load_model("timm:resnet10t")
    assert _same_weights(a, b) and not a.training
    cfg = timm.data.resolve_model_data_config(a)
    assert info.input_size == tuple(cfg["input_size"][1:]) and info.mean == tuple(cfg["mean"])
    assert info.resize_size == round(info.input_size[0] / cfg["crop_pct"])
    assert "random" in info.source and info.arch == "resnet10t"
    with pytest.raises(ValueError, match="Did you mean: resnet10t"):
        load_model("timm:resnet10tt")


@pytest.mark.parametrize("kind", ["safetensors", "pth", "timm_training", "state_dict_ema"])
def test_timm_checkpoints_of_every_kind_load_exactly(tmp_path, kind):
    torch.manual_seed(3)
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    sd = ref.state_dict()
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif kind == "pth":
        torch.save(sd, path)
    elif kind == "timm_training":
        torch.save({"epoch": 3, "arch": "resnet10t", "state_dict": sd, "classes": list("abcdefg")}, path)
    else:
        torch.save({"epoch": 3, "state_dict_ema": {"module." + k: v for k, v in sd.items()}}, path)
    net, info = load_model("timm:resnet10t", checkpoint=str(path))
    assert _same_weights(net, ref) and info.num_classes == 7
    assert info.categories == (list("abcdefg") if kind == "timm_training" else None)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(net(x), ref(x))


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "obj": ModelSpec("a", "b")}, path)
    with pytest.raises(ValueError, match="weights_only|Refusing"):
        load_model("timm:resnet10t", checkpoint=str(path))


# ----------------------------------------------------------------------- transformers
def test_hf_folder_keeps_the_transformers_names_and_outputs(tmp_path):
    folder = save_hf_vit(tmp_path / "vit")
    ref = tiny_hf_vit()
    net, info = load_model(f"hf:{folder}")
    assert isinstance(net, PixelValuesModel) and not net.training
    assert [n for n, _ in net.named_modules()][1:] == [n for n, _ in ref.named_modules()][1:]
    assert _same_weights(net, ref)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(x), ref(pixel_values=x).logits)
    assert info.input_size == (32, 32) and info.num_classes == 5 and info.categories is None
    assert info.mean == (0.485, 0.456, 0.406)  # no image processor saved: ImageNet's
    net.train()
    assert net.inner.training and net.vit.training
    # the miner resolves the transformers layer names through the wrapper
    miner = LayerTopKPatches(net.eval(), ["vit.layers.0"], k=2)
    miner.update(x)
    assert miner.n_images == 2


def test_hf_image_processor_and_labels_set_the_preprocessing(tmp_path):
    folder = tmp_path / "vit"
    model = tiny_hf_vit(num_labels=3)
    model.config.id2label = {0: "cat", 1: "dog", 2: "eel"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
                         ).save_pretrained(folder)
    _, info = load_model(f"hf:{folder}")
    assert info.categories == ["cat", "dog", "eel"]
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.25, 0.25, 0.25) and info.input_size == (32, 32)
    # the processor resizes straight to the model's size (no crop)
    assert info.resize_size == 32


def test_hf_headless_folder_gives_the_hidden_states(tmp_path):
    torch.manual_seed(0)
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    tf.ViTModel(cfg).save_pretrained(tmp_path / "m")
    net, info = load_model(f"hf:{tmp_path / 'm'}")
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 17, 32)  # last_hidden_state
    assert info.num_classes == 0


def test_hf_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_vit().config.to_dict()))
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_model(f"hf:{tmp_path}", checkpoint="x.pth")


# ---------------------------------------------------------------------------- factories
def _returns_info():
    m, info = load_model("resnet18", random_init=True)
    return m, info


def _not_a_module():
    return {"weights": 1}


def test_factory_models_and_their_errors():
    net, info = load_model("tests._models:tiny_timm_vit")
    assert info.input_size == (32, 32) and info.name == "tests._models:tiny_timm_vit"
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    _, info = load_model("tests.test_ecosystem:_returns_info")
    assert info.arch == "resnet18"
    with pytest.raises(ValueError, match="Cannot import"):
        load_model("no_such_pkg.models:build")
    with pytest.raises(ValueError, match="no attribute"):
        load_model("tests._models:nothing_here")
    with pytest.raises(ValueError, match="returned dict, not an nn.Module"):
        load_model("tests.test_ecosystem:_not_a_module")


def test_run_spec_digests_the_files_of_each_kind(tmp_path):
    folder = save_hf_vit(tmp_path / "vit")
    files = model_files(f"hf:{folder}")
    assert [p.name for p in files] == ["config.json", "model.safetensors"]
    a = RunSpec(model=f"hf:{folder}").resolve()
    b = RunSpec(model="tests._models:tiny_timm_vit").resolve()
    assert a.weights_sha1 and b.weights_sha1 and a.weights_sha1 != b.weights_sha1
    assert RunSpec(model="timm:resnet10t").resolve().weights_sha1 is None
    tiny_hf_vit(num_labels=4).save_pretrained(folder)
    assert RunSpec(model=f"hf:{folder}").resolve().weights_sha1 != a.weights_sha1
    assert "timm-resnet10t" in RunSpec(model="timm:resnet10t").run_name()


# --------------------------------------------------------------------- activation maps
def test_activation_maps_of_a_plain_function_and_no_training_warning_for_an_eval_core():
    from captum_topk.core.activation_maps import activation_maps

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3)).eval()
    images = torch.randn(6, 3, 12, 12)

    def forward(x):
        return net(x)

    result = LayerTopKPatches(forward, {"conv": net[2]}, k=2).mine([images], progress=False)
    maps = activation_maps(result, images, "conv", 3, model=forward, layer_module=net[2])
    for rec, m in zip(result.records("conv", 3), maps):
        assert float(m[rec.y, rec.x]) == pytest.approx(rec.value, abs=1e-6)
    with pytest.raises(ValueError, match="layer_module"):
        activation_maps(result, images, "conv", 3, model=forward)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    wrapper = Wrapper()
    wrapper.training = True  # the wrapper alone in training mode: its core computes in eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerTopKPatches(wrapper, "net.2", k=2).update(images)
    net[1].train()  # a leaf in training mode: warned
    with pytest.warns(UserWarning, match="training mode"):
        LayerTopKPatches(wrapper, "net.2", k=2).update(images)
    net.eval()


# ------------------------------------------------------------------------- ONNX export
class _Tuple(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return (self.conv(x).mean((2, 3)), None)


class _NoTensor(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return {"shape": tuple(self.conv(x).shape)}


def test_export_unwraps_model_outputs_and_refuses_outputs_without_a_tensor(tmp_path):
    from captum_topk.onnx import export

    hf = tiny_hf_vit()
    exp = export(hf, ["vit.layers.0.mlp"], tmp_path / "vit.onnx", input_size=32, progress=False, check_images=2)
    assert exp.output_names == ["output", "vit.layers.0.mlp"] and exp.sidecar.output_shapes["output"] == [5]
    conv = nn.Conv2d(3, 4, 3).eval()
    exp = export(_Tuple(conv).eval(), ["conv"], tmp_path / "t.onnx", input_size=16, progress=False,
                 check_images=0, with_receptive_fields=False)
    assert exp.sidecar.output_shapes["output"] == [4]
    with pytest.raises(ValueError, match="without a tensor"):
        export(_NoTensor(conv).eval(), ["conv"], tmp_path / "n.onnx", input_size=16, progress=False)
    assert output_tensor((None, torch.ones(1))).shape == (1,)


# ------------------------------------------------------- ONNX Runtime parity, 3 + 3 models
def _hf(cls, cfg):
    torch.manual_seed(0)
    return PixelValuesModel(cls(cfg)).eval()


PARITY = {
    "timm-resnet10t": (lambda: timm.create_model("resnet10t", pretrained=False, num_classes=5), "layer2", 64),
    "timm-convnext_atto": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=5), "stages.1", 64),
    "timm-vit": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                           depth=2, embed_dim=32, num_heads=2, num_classes=5), "blocks.1", 32),
    "hf-vit": (lambda: PixelValuesModel(tiny_hf_vit()).eval(), "vit.layers.1.mlp", 32),
    "hf-convnext": (lambda: _hf(tf.ConvNextForImageClassification, tf.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32, num_labels=5)), "convnext.encoder.stages.1", 32),
    "hf-resnet": (lambda: _hf(tf.ResNetForImageClassification, tf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)), "resnet.encoder.stages.1", 32),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_onnxruntime_mining_equals_pytorch_mining(tmp_path, name):
    from captum_topk.onnx import OnnxTopKPatches, export

    make, layer, size = PARITY[name]
    torch.manual_seed(0)
    model = make().eval()
    exp = export(model, [layer], tmp_path / f"{name}.onnx", input_size=size, progress=False, check_images=2,
                 atol=ATOL, rtol=RTOL)
    images = torch.randn(10, 3, size, size, generator=torch.Generator().manual_seed(1))
    batches = [images[:5], images[5:]]
    k = 3
    got = OnnxTopKPatches(exp.path, [layer], k=k).mine(batches, progress=False)
    ref = LayerTopKPatches(model, [layer], k=k + 1).mine(batches, progress=False)  # k + 1: the gap below the k-th
    assert got.layers == ref.layers
    compared = total = 0
    for lay in ref.layers:
        vr = ref.values(lay)
        tol = ATOL + RTOL * float(vr[torch.isfinite(vr)].abs().max())
        vo = got.values(lay)
        assert torch.allclose(vo, vr[:, :k], atol=tol, rtol=0), lay
        for ch in range(vr.shape[0]):
            total += 1
            if (vr[ch, :-1] - vr[ch, 1:]).min() <= 2 * tol:
                continue  # a near-tie: either order is within the parity bound
            compared += 1
            assert ([(r.index, r.y, r.x) for r in got.records(lay, ch)]
                    == [(r.index, r.y, r.x) for r in ref.records(lay, ch)[:k]]), (lay, ch)
            assert got.records(lay, ch)[0].box == ref.records(lay, ch)[0].box
    # dead ReLU channels (all zeros) tie at random init: at least half of the channels are compared
    assert compared >= total / 2, f"only {compared}/{total} channels free of near-ties"
