r"""Argument groups several ``captum-topk`` commands share, one builder each: the model
(``mine``, ``layers``, ``export``, ``filters``, ``concepts learn`` / ``compare``) and a pass over
images (``mine``, ``concepts learn`` / ``compare``)."""

from __future__ import annotations

import argparse

from ..models.registry import DEFAULT_MODEL

__all__ = ["MODEL_HELP", "add_model_args", "add_input_args"]


MODEL_HELP = ("a built-in name, a torchvision architecture or checkpoint, timm:NAME, hf:DIR (a save_pretrained "
              "folder), package.module:factory, or (layers) MODEL.onnx; default " + DEFAULT_MODEL)


def add_model_args(sp: argparse.ArgumentParser, positional: bool = False) -> None:
    r"""The model spec (positional or ``--model``) and ``--checkpoint``."""
    if positional:
        sp.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=MODEL_HELP)
    else:
        sp.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    sp.add_argument("--checkpoint", default=None,
                    help="weights: .safetensors, or a state_dict / training checkpoint (.pth / .pt, weights_only)")


def add_input_args(sp: argparse.ArgumentParser, layouts: bool = True) -> None:
    r"""What a pass over images takes (``mine``, ``concepts learn`` / ``compare``): the data, how
    many images, batches, crop size, random weights and (``layouts``) the layers' layout."""
    sp.add_argument("--data", default=None,
                    help="image folder or ImageNet val folder (default, or 'demo': the packaged photos)")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--input-size", type=int, default=None, help="crop size in px (default: the model's)")
    sp.add_argument("--random-init", action="store_true",
                    help="a torchvision architecture with random (seeded) weights: what its units respond to untrained")
    if not layouts:
        return
    sp.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NHWC", "NLC", "NC"],
                    help="layout of the layers' outputs (default auto: detected on the first batch)")
    sp.add_argument("--token-grid", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="patch grid of token (NLC) layers when the model does not expose it")
    sp.add_argument("--prefix-tokens", type=int, default=None,
                    help="class / register tokens before the patches of token layers")
