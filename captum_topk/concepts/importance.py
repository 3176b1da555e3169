r"""What concepts do for a decision: importance toward a class, and per-image heatmaps.

**Importance** (CRAFT, Fel et al. 2023, gradient x input on the concept activations): write the
layer's canonical activation at every position as ``a = u D + r`` (``u`` the concept
activations, ``D`` the directions, ``r`` the residual held fixed); the gradient of the target
logit ``y`` with respect to ``u_k`` is then ``(dy/da) · d_k``, and concept ``k``'s importance on
one image is ``sum over positions of u_k (dy/da · d_k)``, averaged over images. The gradient
``dy/da`` comes from Captum's ``LayerGradientXActivation(multiply_by_inputs=False)`` on the raw
output, brought to the canonical layout the way activations are (a permutation / token split).

**Heatmaps**: the concept activations ``(N, K, h, w)`` of each image, bilinearly upsampled to the
image size (``align_corners=False``: grid cell ``(i, j)`` is centred on pixel
``((i + 0.5) H / h, (j + 0.5) W / w)``, the usual approximation of a cell's receptive field
centre), which concept is where.

Sobol indices (CRAFT's other measure) are not computed: they need ``N_masks x (K + 2)``
forwards of the rest of the model per image (thousands for 16 concepts), against one backward
here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..capture.hooks import resolve_layers
from ..compare.inputs import image_batches
from ..core.loop import count_images
from ..core.sources.layouts import canonical
from ..core.sources.torch import TorchSource
from ..utils.modules import device_dtype, eval_mode, root_module

__all__ = ["concept_gradients", "importance", "heatmaps"]


def _source(model: Any, concepts: Any, **source_kw: Any) -> TorchSource:
    return TorchSource(model, concepts.layer, progress=False, **source_kw)


def concept_gradients(model: Any, concepts: Any, images: Tensor, target: Any,
                      source: Optional[TorchSource] = None, additional_forward_args: Any = None):
    r"""Concept activations and the target's gradient with respect to them, of one batch.

    Args:
        model (nn.Module or callable): the model.
        concepts (Concepts): concepts of one of its layers.
        images (Tensor): ``(N, C, H, W)`` inputs.
        target: Captum's ``target`` (an int class, one per image, ...).
        source (TorchSource, optional): a source of ``concepts.layer`` to reuse.

    Returns:
        (Tensor, Tensor): ``u`` and ``dy/du``, both ``(N, K, h, w)`` or ``(N, K)``.
    """
    from captum.attr import LayerGradientXActivation

    source = source or _source(model, concepts)
    info = source.layer_infos(images)[source.names[0]]
    (name, module), = resolve_layers(model, concepts.layer)
    device = device_dtype(root_module(model))[0]
    if device is not None:
        images = images.to(device)
    grad_raw = LayerGradientXActivation(model, module, multiply_by_inputs=False).attribute(
        images, target=target,
        additional_forward_args=additional_forward_args)
    if isinstance(grad_raw, (tuple, list)):
        grad_raw = grad_raw[0]
    grad = canonical(grad_raw.detach(), info)[info.name]
    with torch.no_grad():
        acts = source(images, additional_forward_args)[info.name]
        codes = concepts.encode(acts)
        d = concepts.directions.to(grad.device, grad.dtype)
        if grad.dim() == 2:
            dgrad = grad @ d.T
        else:
            dgrad = torch.einsum("nchw,kc->nkhw", grad, d)
    return codes, dgrad


def importance(concepts: Any, model: Any, data: Any, target: Any, *, batch_size: int = 32,
               max_images: Optional[int] = None, per_image: bool = False, progress: bool = False,
               **source_kw: Any) -> Tensor:
    r"""Each concept's contribution to ``target``: ``u_k (dy/du_k)`` summed over positions,
    averaged over images (see the module docstring). See :meth:`Concepts.importance`."""
    from tqdm.auto import tqdm

    source = _source(model, concepts, **source_kw)
    root = root_module(model)
    out = []
    offset = 0
    bar = tqdm(total=count_images(data, max_images), unit="img", desc="importance", disable=not progress)
    try:
        for batch in image_batches(data, batch_size=batch_size, max_images=max_images):
            n = batch.images.shape[0]
            t = target
            if isinstance(target, Tensor) and target.dim() > 0 and target.shape[0] > n:
                t = target[offset:offset + n]
            elif isinstance(target, (list, tuple)) and len(target) > n:
                t = list(target[offset:offset + n])
            offset += n
            with eval_mode(*([root] if root is not None else [])), torch.enable_grad():
                codes, dgrad = concept_gradients(model, concepts, batch.images, t, source)
            contrib = codes * dgrad
            out.append((contrib.flatten(2).sum(2) if contrib.dim() == 4 else contrib).cpu())
            bar.update(n)
    finally:
        bar.close()
    if not out:
        raise ValueError("no images: the data gave no batch.")
    scores = torch.cat(out)
    return scores if per_image else scores.mean(0)


def heatmaps(concepts: Any, model: Any, images: Tensor, *, size: Optional[Any] = None,
             batch_size: int = 32, **source_kw: Any) -> Tensor:
    r"""Per-image concept maps upsampled to the image size. See :meth:`Concepts.heatmaps`."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("heatmaps takes an (N, C, H, W) image tensor.")
    source = _source(model, concepts, **source_kw)
    root = root_module(model)
    size = tuple(images.shape[-2:]) if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    maps = []
    with eval_mode(*([root] if root is not None else [])), torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            acts = source(images[i:i + batch_size])[source.names[0]]
            codes = concepts.encode(acts)
            if codes.dim() == 2:  # a vector layer: one value per image, the same everywhere
                codes = codes[:, :, None, None]
            maps.append(F.interpolate(codes, size=size, mode="bilinear", align_corners=False).cpu())
    return torch.cat(maps)
