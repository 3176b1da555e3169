"""Brute-force twins: full-storage top-k references computed the slow, obvious way."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor


def full_activations(model, module, images: Tensor, batch_size: int = 16) -> Tensor:
    """Every activation of ``module`` for every image, stored in full: (N, C, H, W) or (N, C)."""
    store: List[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: store.append(o.detach().clone()))
    try:
        with torch.no_grad():
            for s in range(0, images.shape[0], batch_size):
                model(images[s : s + batch_size])
    finally:
        handle.remove()
    return torch.cat(store)


def reference_topk(
    acts: Tensor, k: int, distinct_images: bool = True, which: str = "top"
) -> Dict[int, List[Tuple[float, int, int, int]]]:
    """Per channel, the list of (value, index, y, x), ordered as the spec says.

    Order: value (desc for top, asc for bottom), then lower index, then lower (y, x).
    NaNs are never ranked. With ``distinct_images`` each image contributes only its best
    position (under the same order).
    """
    if acts.dim() == 2:
        acts = acts[:, :, None, None]
    n, c, h, w = acts.shape
    a = acts.double().numpy()
    sign = -1.0 if which == "top" else 1.0
    out = {}
    for ch in range(c):
        cands = []
        for i in range(n):
            per_image = []
            for y in range(h):
                for x in range(w):
                    v = a[i, ch, y, x]
                    if v != v:  # NaN
                        continue
                    per_image.append((sign * v, i, y, x))
            per_image.sort()
            if distinct_images:
                cands.extend(per_image[:1])
            else:
                cands.extend(per_image)
        cands.sort()
        out[ch] = [(sign * v, i, y, x) for v, i, y, x in cands[:k]]
    return out
