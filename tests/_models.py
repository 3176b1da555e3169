"""Small test models shared by several test files."""

from __future__ import annotations

import torch
from torch import nn


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def convnext_like() -> nn.Module:
    r"""A ConvNeXt-style stretch: conv, then channels-last LayerNorm + Linear between Permutes
    ("1"-"3" output (N, H, W, C)), then back to channels-first and a conv. Seeded."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        Permute(0, 2, 3, 1),  # (N, H, W, C): LayerNorm and Linear act on channels last
        nn.LayerNorm(8),
        nn.Linear(8, 16),
        Permute(0, 3, 1, 2),  # back to (N, C, H, W)
        nn.Conv2d(16, 4, 3, padding=1),
    ).eval()


def tiny_timm_vit() -> nn.Module:
    r"""A timm ViT small enough for the CLI tests: 32 px, 8 px patches, 2 blocks of width 32,
    5 classes (random, seeded by the loader). A ``package.module:factory`` target."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=5)


def tiny_hf_vit(num_labels: int = 5):
    r"""A transformers ViTForImageClassification at 32 px (8 px patches, 2 layers of width 32), seeded."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=num_labels)
    return tf.ViTForImageClassification(cfg).eval()


def save_hf_vit(folder, num_labels: int = 5) -> str:
    r"""``save_pretrained`` of :func:`tiny_hf_vit` into ``folder``; returns the folder as a str."""
    tiny_hf_vit(num_labels).save_pretrained(str(folder))
    return str(folder)


def small_classifier() -> nn.Module:
    r"""Two conv blocks and a 5-class head, seeded, in eval mode: the tiny model of the concept
    mining and relevance twins (layers ``"0"`` / ``"1"`` at 16 px, ``"3"`` / ``"4"`` at 4 px)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def seeded_images(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    r"""``(n, 3, size, size)`` normal images from their own generator."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
