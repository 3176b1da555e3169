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
