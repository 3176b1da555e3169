r"""Models from the libraries researchers load them from: timm, Hugging Face ``transformers``, and
any Python callable returning an ``nn.Module``.

A model is named by a *spec* string (:func:`parse_model_spec`), the same on the command line, in
the dashboard, in a :class:`~captum_topk.runs.spec.RunSpec` and in :func:`~.registry.load_model`:

* ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=False)``, weights from ``checkpoint``
  (``.safetensors``, ``.pth`` / ``.pt`` or a timm training checkpoint) or random;
* ``"hf:DIR"``: a folder written by ``save_pretrained`` (``config.json`` + weights), loaded
  offline (``local_files_only=True``) with its image-classification head when it has one;
* ``"package.module:factory"``: ``factory()`` returning an ``nn.Module`` (or ``(module,
  ModelInfo)``).

Preprocessing (:class:`~.info.ModelInfo`) comes from the model's own description: timm's
``resolve_model_data_config``; the folder's ``preprocessor_config.json`` (else its
``config.json``'s ``image_size``); ImageNet's defaults otherwise. timm and transformers are
imported inside the functions that need them (``pip install captum-topk[timm]`` /
``[transformers]``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, make_transform

__all__ = ["ModelSpec", "parse_model_spec", "require_extra", "PixelValuesModel", "load_timm", "load_hf",
           "load_factory", "model_files", "output_tensor"]

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
#: The spec prefixes of library models.
PREFIXES = ("timm:", "hf:")
#: Weight files of a ``save_pretrained`` folder.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class ModelSpec(NamedTuple):
    r"""A parsed model spec: ``kind`` is ``"timm"``, ``"hf"``, ``"factory"``, ``"onnx"`` or
    ``"named"`` (a built-in, a torchvision architecture or a checkpoint path: :mod:`.registry`),
    ``target`` what follows the prefix (the timm name, the folder, ``module:attr``, the path)."""

    kind: str
    target: str


def parse_model_spec(spec: str) -> ModelSpec:
    r"""What a model string names.

    Args:
        spec (str): ``"timm:resnet18d"``, ``"hf:path/to/folder"``, ``"my_pkg.models:build"``,
            ``"model.onnx"``, or a built-in / torchvision name / checkpoint path.
    Returns:
        ModelSpec
    Example::
        >>> parse_model_spec("timm:vit_tiny_patch16_224")
        ModelSpec(kind='timm', target='vit_tiny_patch16_224')
    """
    if not isinstance(spec, str):
        raise TypeError(f"A model spec is a str, got {type(spec).__name__}.")
    for prefix in PREFIXES:
        if spec.startswith(prefix):
            target = spec[len(prefix):].strip()
            if not target:
                raise ValueError(f"{spec!r} names no model: write {prefix}NAME.")
            return ModelSpec(prefix[:-1], target)
    if spec.lower().endswith(".onnx"):
        return ModelSpec("onnx", spec)
    if _FACTORY.match(spec):
        return ModelSpec("factory", spec)
    return ModelSpec("named", spec)


def require_extra(module: str, extra: str) -> Any:
    r"""``import module``, or an ``ImportError`` that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"This model needs the {module!r} package, which is not installed: "
            f"pip install captum-topk[{extra}]"
        ) from exc


def output_tensor(out: Any) -> Tensor:
    r"""The tensor a model output stands for: itself, ``.logits`` of a ``ModelOutput``, else the
    first tensor of a ``ModelOutput`` / mapping / tuple (``last_hidden_state`` of a headless
    transformers model).

    Raises:
        TypeError: the output holds no tensor.
    """
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    values = list(out.values()) if hasattr(out, "values") and callable(out.values) else (
        list(out) if isinstance(out, (tuple, list)) else [])
    for v in values:
        if isinstance(v, Tensor):
            return v
    raise TypeError(f"The model returned {type(out).__name__}, which holds no tensor.")


class PixelValuesModel(nn.Module):
    r"""A transformers vision model called with one image tensor, returning one tensor (the logits,
    else the first tensor of its output).

    The wrapper *shares* the wrapped model's submodules, parameters and buffers (the same
    dictionaries), so every layer keeps the name it has in the transformers model
    (``vit.encoder.layer.3``), ``state_dict()`` keys are unchanged, and ``.to()`` / ``.eval()``
    reach the same tensors and modules.

    Args:
        model (nn.Module): a transformers model whose ``forward`` takes ``pixel_values``.

    Example::
        >>> net = PixelValuesModel(ViTForImageClassification(config))
        >>> net(torch.randn(2, 3, 32, 32)).shape        # the logits
        torch.Size([2, 10])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["inner"] = model  # not a child: its children are ours
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.training = model.training

    @property
    def config(self) -> Any:
        return getattr(self.inner, "config", None)

    def train(self, mode: bool = True) -> "PixelValuesModel":
        super().train(mode)
        self.inner.training = mode
        return self

    def forward(self, pixel_values: Tensor) -> Tensor:
        return output_tensor(self.inner(pixel_values=pixel_values))

    def extra_repr(self) -> str:
        return f"wraps {type(self.inner).__name__}"


# ---------------------------------------------------------------------------------------- timm
def _timm_info(model: nn.Module, spec: str, source: str, categories: Optional[List[str]]) -> ModelInfo:
    r"""Preprocessing of a timm model from its ``pretrained_cfg`` (``resolve_model_data_config``);
    a fixed ``patch_embed.img_size`` other than the config's wins (the model takes only that)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    size = tuple(int(v) for v in cfg["input_size"][1:])
    pe = getattr(model, "patch_embed", None)
    fixed = getattr(pe, "img_size", None)
    if fixed is not None and not getattr(pe, "dynamic_img_size", False) and not getattr(pe, "dynamic_img_pad", False):
        size = tuple(int(v) for v in fixed)
    crop = float(cfg.get("crop_pct") or 0.875)
    resize = int(round(min(size) / crop))
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    n = int(getattr(model, "num_classes", 0) or 0)
    return ModelInfo(name=spec, categories=categories, input_size=size, mean=mean, std=std,  # type: ignore[arg-type]
                     transform=make_transform(size, resize, mean, std), source=source,
                     arch=str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__),
                     num_classes=n, resize_size=resize)


def load_timm(name: str, checkpoint: Optional[str] = None, num_classes: Optional[int] = None,
              spec: Optional[str] = None) -> Tuple[nn.Module, ModelInfo]:
    r"""``timm.create_model(name, pretrained=False)`` with the weights of ``checkpoint``.

    Args:
        name (str): a timm architecture (``timm.list_models()``).
        checkpoint (str, optional): ``.safetensors`` (read with ``safetensors``), ``.pth`` /
            ``.pt`` (``torch.load(weights_only=True)``), plain or a training checkpoint
            (``state_dict`` / ``model`` / ``state_dict_ema``). None: random weights.
        num_classes (int, optional): default: the checkpoint's classifier, else timm's.
        spec (str, optional): the spec string recorded in the info (default ``"timm:NAME"``).
    Returns:
        (nn.Module, ModelInfo): the model in eval mode and its preprocessing.
    """
    from .checkpoints import _checkpoint_categories, _load_strict, load_checkpoint_state_dict

    timm = require_extra("timm", "timm")
    if name not in timm.list_models():
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        raise ValueError(f"Unknown timm model {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else
                                                            " See timm.list_models()."))
    state_dict, meta = (load_checkpoint_state_dict(checkpoint) if checkpoint else (None, {}))
    kw: Dict[str, Any] = {}
    if num_classes is None and state_dict is not None:
        num_classes = _timm_num_classes(timm, name, state_dict)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    model = timm.create_model(name, pretrained=False, **kw)
    if state_dict is not None:
        _load_strict(model, state_dict, repr(checkpoint))
        source = f"checkpoint {Path(checkpoint).resolve()}"  # type: ignore[arg-type]
    else:
        source = "random initialisation (timm, pretrained=False)"
    model.eval()
    n = int(getattr(model, "num_classes", 0) or 0)
    categories = _checkpoint_categories(meta, n)
    if categories is None and n == 1000 and state_dict is not None:
        from .info import imagenet_categories

        categories = imagenet_categories()
    return model, _timm_info(model, spec or f"timm:{name}", source, categories)


def _timm_num_classes(timm: Any, name: str, state_dict: Dict[str, Tensor]) -> Optional[int]:
    r"""The class count of a checkpoint: the rows of the weight the timm model names its classifier."""
    try:
        with torch.device("meta"):
            ref = timm.create_model(name, pretrained=False)
        head = ref.default_cfg.get("classifier")
    except Exception:  # an architecture that does not build on the meta device
        return None
    heads = [f"{h}.weight" for h in ([head] if isinstance(head, str) else list(head or []))]
    for key in heads:
        w = state_dict.get(key)
        if isinstance(w, Tensor) and w.dim() >= 1:
            return int(w.shape[0])
    # a headless checkpoint (features only) of a model that has a classifier
    return 0 if any(key in ref.state_dict() for key in heads) else None


# -------------------------------------------------------------------------------- transformers
def _hf_preprocessing(folder: Path, config: Any) -> Tuple[Tuple[int, int], int, Tuple[float, ...], Tuple[float, ...]]:
    r"""``(input size, resize size, mean, std)`` of a ``save_pretrained`` folder: its image
    processor's ``preprocessor_config.json`` when present, else ``config.image_size`` with
    ImageNet's normalisation."""
    image_size = getattr(config, "image_size", None)
    if isinstance(image_size, (list, tuple)):
        size = (int(image_size[0]), int(image_size[-1]))
    elif image_size:
        size = (int(image_size), int(image_size))
    else:
        size = (224, 224)
    mean, std = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    resize = None
    pp = folder / "preprocessor_config.json"
    if pp.is_file():
        try:
            cfg = json.loads(pp.read_text())
        except ValueError as exc:
            raise ValueError(f"{pp} is not valid JSON ({exc}).") from exc
        if cfg.get("image_mean") is not None and cfg.get("image_std") is not None:
            mean = tuple(float(v) for v in cfg["image_mean"])
            std = tuple(float(v) for v in cfg["image_std"])
        crop, s = cfg.get("crop_size"), cfg.get("size")
        for d in (crop, s):
            if isinstance(d, dict) and "height" in d and "width" in d:
                size = (int(d["height"]), int(d["width"]))
                break
            if isinstance(d, dict) and "shortest_edge" in d and d is s and not crop:
                size = (int(d["shortest_edge"]),) * 2
                break
            if isinstance(d, int):
                size = (d, d)
                break
        if isinstance(s, dict) and "shortest_edge" in s and crop:
            resize = int(s["shortest_edge"])
        elif crop is None:
            resize = min(size)  # the processor resizes straight to the model's size
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return size, resize or int(round(min(size) / 0.875)), mean, std


def load_hf(folder: str, random_init: bool = False, spec: Optional[str] = None) -> Tuple[nn.Module, ModelInfo]:
    r"""A transformers vision model from a local ``save_pretrained`` folder, offline.

    The image-classification head is used when the config has one
    (``AutoModelForImageClassification``), else ``AutoModel``; the model is wrapped in
    :class:`PixelValuesModel` (called with one tensor, returns the logits or the first tensor;
    its layers keep the transformers names).

    Args:
        folder (str): holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``).
        random_init (bool): build from the config only (layer listings, tests).
        spec (str, optional): the spec recorded in the info (default ``"hf:FOLDER"``).
    Returns:
        (nn.Module, ModelInfo)
    """
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a save_pretrained folder: it has no config.json.")
    if not random_init and not any((path / w).is_file() for w in _HF_WEIGHTS):
        raise FileNotFoundError(f"{folder} holds no weights ({' or '.join(_HF_WEIGHTS)}); "
                                "write them with model.save_pretrained(folder).")
    tf = require_extra("transformers", "transformers")
    config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    headed = any(a.endswith("ForImageClassification") for a in archs)
    auto = tf.AutoModelForImageClassification if headed else tf.AutoModel
    if random_init:
        inner = auto.from_config(config)
        source = "random initialisation (transformers config)"
    else:
        inner = auto.from_pretrained(str(path), local_files_only=True)
        source = f"save_pretrained folder {path.resolve()}"
    inner.eval()
    size, resize, mean, std = _hf_preprocessing(path, config)
    labels = getattr(config, "id2label", None) or {}
    categories = [str(labels[i]) for i in sorted(labels)] if labels else None
    if categories and all(re.fullmatch(r"LABEL_\d+", c) for c in categories):
        categories = None  # transformers' placeholders, not class names
    n = int(getattr(config, "num_labels", 0) or 0) if headed else 0
    info = ModelInfo(name=spec or f"hf:{folder}", categories=categories if headed else None, input_size=size,
                     mean=mean, std=std, transform=make_transform(size, resize, mean, std),  # type: ignore[arg-type]
                     source=source, arch=type(inner).__name__, num_classes=n, resize_size=resize)
    return PixelValuesModel(inner).eval(), info


# ------------------------------------------------------------------------------------ factories
def _import_module(name: str) -> Any:
    r"""``import name``; a module not found on ``sys.path`` is looked for in the working folder
    too, as ``python -m`` would (the ``captum-topk`` script's path does not hold it)."""
    import os
    import sys

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(cwd)


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = _import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"Cannot import {module_name!r} for the model {target!r} ({exc}); is it on "
                         "PYTHONPATH?") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (model {target!r}).")
        obj = getattr(obj, part)
    return obj


def load_factory(target: str, checkpoint: Optional[str] = None) -> Tuple[nn.Module, ModelInfo]:
    r"""The model returned by a Python callable named ``"package.module:factory"``.

    ``factory()`` returns an ``nn.Module`` or ``(nn.Module, ModelInfo)``. Without an info, the
    preprocessing is timm's when the module is a timm model (it has a ``pretrained_cfg``), else
    ImageNet's at 224 px. ``checkpoint`` loads weights into it as for any model.

    Args:
        target (str): ``"module.path:callable"`` (``"module:Class"`` works as well); the module
            is imported from ``sys.path``, else from the working folder.
        checkpoint (str, optional): weights (see :func:`load_timm`).
    Returns:
        (nn.Module, ModelInfo)
    """
    from .checkpoints import _checkpoint_categories, _load_strict, load_checkpoint_state_dict

    factory = _import_target(target)
    if not callable(factory):
        raise ValueError(f"{target!r} is a {type(factory).__name__}, not a callable returning a model.")
    made = factory()
    info: Optional[ModelInfo] = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], ModelInfo):
        made, info = made
    if not isinstance(made, nn.Module):
        raise ValueError(f"{target}() returned {type(made).__name__}, not an nn.Module.")
    meta: Dict[str, Any] = {}
    source = info.source if info is not None else f"python factory {target}"
    if checkpoint:
        state_dict, meta = load_checkpoint_state_dict(checkpoint)
        _load_strict(made, state_dict, repr(checkpoint))
        source = f"checkpoint {Path(checkpoint).resolve()}"
    made.eval()
    if info is None and getattr(made, "pretrained_cfg", None) is not None and _has("timm"):
        info = _timm_info(made, target, source, None)
    if info is None:
        info = ModelInfo(name=target, categories=None, input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         transform=make_transform(224), source=source, arch=type(made).__name__)
    cats = _checkpoint_categories(meta, info.num_classes) if meta else None
    info = dataclasses.replace(info, name=target, source=source, categories=cats or info.categories)
    return made, info


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------- files
def model_files(model: str, checkpoint: Optional[str] = None) -> List[Path]:
    r"""The files whose bytes decide a model's weights (for a run's ``weights_sha1``).

    The checkpoint when one is given; else an ONNX file or a checkpoint given as the model;
    the ``config.json`` and weight files of an ``hf:`` folder; the source file of a factory's
    module. Built-ins, torchvision and timm architectures without a checkpoint: none (their
    weights are fixed by the installed packages, or seeded random).
    """
    if checkpoint:
        return [Path(checkpoint)]
    if not model:
        return []
    kind, target = parse_model_spec(model)
    if kind == "hf":
        folder = Path(target)
        return [p for p in [folder / "config.json", *(folder / w for w in _HF_WEIGHTS),
                            folder / "preprocessor_config.json"] if p.is_file()]
    if kind == "factory":
        name = target.partition(":")[0]
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and Path(found.origin).is_file():
            return [Path(found.origin)]
        here = Path.cwd().joinpath(*name.split("."))  # a module of the working folder
        return [p for p in (here.with_suffix(".py"), here / "__init__.py") if p.is_file()][:1]
    if kind in ("onnx", "named") and Path(target).is_file():
        return [Path(target)]
    return []
