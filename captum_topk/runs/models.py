r"""The model of a run and its preprocessing: a built-in, a torchvision architecture with a
checkpoint, a checkpoint that names its architecture, or an ONNX file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from ..models.info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, make_transform
from ..models.registry import DEFAULT_MODEL, load_model
from ..utils.files import PathLike

__all__ = ["load_run_model", "onnx_model_info", "with_input_size"]


def with_input_size(info: ModelInfo, input_size: Optional[int]) -> ModelInfo:
    r"""``info`` with another square input size (the resize keeps ImageNet's 0.875 crop ratio)."""
    if not input_size or tuple(info.input_size) == (input_size, input_size):
        return info
    return dataclasses.replace(info, input_size=(input_size, input_size), resize_size=round(input_size / 0.875),
                               transform=make_transform(input_size, mean=info.mean, std=info.std))


#: The seed of random weights (``random_init``): a run reopened later gets the same model.
RANDOM_INIT_SEED = 0


def load_run_model(model: Optional[str], checkpoint: Optional[PathLike] = None,
                   input_size: Optional[int] = None, random_init: bool = False) -> Tuple[nn.Module, ModelInfo]:
    r"""Load the PyTorch model of a run (always ``torch.load(..., weights_only=True)``).

    Args:
        model (str, optional): a built-in name, a torchvision architecture or a checkpoint
            path; empty / None with a ``checkpoint`` that records its architecture.
        checkpoint (str, optional): weights for ``model``.
        input_size (int, optional): crop size instead of the model's own.
        random_init (bool): random weights, always the same ones (seeded with
            :data:`RANDOM_INIT_SEED`, the global RNG left untouched): runs of an architecture without
            weights (demos, tests) reopen with the model that mined them.
    Returns:
        (nn.Module, ModelInfo)
    """
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net, info = load_model(model or DEFAULT_MODEL, random_init=True)
    elif checkpoint and not model:
        net, info = load_model(str(checkpoint))
    else:
        net, info = load_model(model or DEFAULT_MODEL, checkpoint=str(checkpoint) if checkpoint else None)
    return net, with_input_size(info, input_size)


def onnx_model_info(onnx_path: PathLike, input_size: Optional[int] = None) -> ModelInfo:
    r"""Preprocessing of an ONNX model: from its export sidecar, else ImageNet's with the
    graph's static input size (``input_size`` is required when the size is dynamic)."""
    from ..onnx.graph import input_spec, load_onnx
    from ..onnx.sidecar import load_sidecar

    onnx_path = Path(onnx_path)
    sc = load_sidecar(onnx_path)
    if sc is not None:
        size = tuple(sc.input_size)
        mean = tuple(sc.mean) if sc.mean else IMAGENET_MEAN
        std = tuple(sc.std) if sc.std else IMAGENET_STD
        cats = sc.categories
    else:
        spec = input_spec(load_onnx(onnx_path))
        if spec.size is None and not input_size:
            raise ValueError(f"{onnx_path.name} has a dynamic input size and no sidecar: give an input size.")
        size = tuple(spec.size) if spec.size else (input_size, input_size)
        mean, std, cats = IMAGENET_MEAN, IMAGENET_STD, None
    if input_size:
        size = (input_size, input_size)
    return ModelInfo(name=onnx_path.name, categories=cats, input_size=size, mean=mean, std=std,
                     transform=make_transform(size, mean=mean, std=std), source=str(onnx_path),
                     arch="onnx", num_classes=len(cats) if cats else 0,
                     resize_size=round(min(size) / 0.875))
