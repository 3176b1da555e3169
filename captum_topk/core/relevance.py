r"""Relevance-ranked top-k (RelMax): rank a channel's images by its attribution toward a target.

``LayerTopKPatches(model, layer, rank_by=LayerGradientXActivation, target=...)`` ranks each
channel's records by a Captum *layer* attribution instead of the activation: the images where
the unit mattered for the decision (RelMax of Concept Relevance Propagation, Achtibat et al.
2023), rather than those where it fired most.

What is ranked: the **per-position layer attribution** ``A[n, c, y, x]``, the Captum class's
output for the layer (``LayerGradientXActivation``: ``a * d target / d a``; ``LayerLRP``: the LRP
relevance at the layer), in the layer's canonical ``(N, C, h, w)`` / ``(N, C)`` form. Exactly as
activations are ranked: with ``distinct_images`` each image contributes its position of highest
attribution, top-k are the most positive attributions, bottom-k the most negative (where the
unit counted most *against* the target). A record's box is the receptive field of that
position, so the crop is exactly the input whose attribution is ranked. This is zennit-crp's
``Maximization(max_target="max")``; its ``"sum"`` target (the channel's attribution summed over
positions) is not used, since the sum mixes positions whose receptive fields are not the crop.
Values are raw attributions (no per-image normalisation, CRP's ``abs_norm``): they scale with
the target logit.

The attribution needs the model's full forward and a backward pass per batch (not the forward
stopped after the deepest layer); the Captum class registers and removes its own hooks (in
``finally``). Receptive fields and layer infos still come from the activation source, measured
once per input size.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..utils.modules import device_dtype
from .sources.concepts import concept_layer
from .sources.layouts import PREFIX_SUFFIX, canonical, check_shape
from .sources.torch import TorchSource

__all__ = ["RelevanceRanking", "TargetSpec"]

#: A class index, ``"label"``, ``"predicted"``, per-image targets indexed by the global image
#: index, or ``callable(labels, logits) -> (N,) targets``.
TargetSpec = Union[int, str, Tensor, Sequence[int], Callable[[Optional[Tensor], Tensor], Any]]


def _takes_layer_list(cls: type) -> bool:
    r"""Whether a Captum layer method's constructor accepts a list of layers."""
    try:
        annotation = inspect.signature(cls.__init__).parameters["layer"].annotation
    except (KeyError, TypeError, ValueError):
        return False
    return "List" in str(annotation) or "ModuleOrModuleList" in str(annotation)


class RelevanceRanking:
    r"""Per-batch layer attributions toward a target, in the canonical layout of each mined layer.

    Args:
        source (TorchSource): the miner's activation source (layers, layouts, receptive fields).
        method (type or instance): a Captum layer attribution class (``LayerGradientXActivation``,
            ``LayerLRP``, ``LayerIntegratedGradients``, ...) built on ``source``'s model and
            layers, or an instance already built on exactly those layers (in order).
        target: ``int`` (one class for every image); ``"label"`` (each image's label from the
            batch); ``"predicted"`` (the model's argmax, one extra forward without gradients);
            a 1-D tensor / sequence of per-image targets indexed by the global image index;
            or ``callable(labels, logits) -> (N,) targets`` (``labels`` a tensor or None,
            ``logits`` the model's output, one extra forward without gradients).
        attribute_kwargs (dict, optional): further arguments of ``method.attribute``
            (``baselines``, ``n_steps``, ...).
        concepts (sequence, optional): concept sets mined beside the channels (``.layer``,
            ``.name``, ``.directions`` (K, C), ``.encode``); with ``method`` the class
            ``LayerGradientXActivation`` only. A concept's relevance at a position is its
            gradient x concept activation, ``z_k * (d_k . dF/da)`` (``z = encode(a)``, the gradient
            reaching the concept through the decoder ``a ~ sum_k z_k d_k``: CRAFT's importance),
            and the channels' is ``a * dF/da``, from one gradient pass.
    """

    def __init__(self, source: TorchSource, method: Any, target: TargetSpec,
                 attribute_kwargs: Optional[Dict[str, Any]] = None, concepts: Sequence[Any] = ()) -> None:
        if not isinstance(source, TorchSource):
            raise TypeError("rank_by needs a PyTorch model (gradients): it is not available for "
                            f"a {type(source).__name__}.")
        if target is None:
            raise ValueError("rank_by needs target=: a class index, 'label', 'predicted', per-image "
                             "targets, or callable(labels, logits) -> targets.")
        if isinstance(target, str) and target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label', 'predicted', an int, per-image targets or a "
                             f"callable, got {target!r}.")
        self.source = source
        self.target = target
        self.attribute_kwargs = dict(attribute_kwargs or {})
        for reserved in ("inputs", "target", "additional_forward_args", "attribute_to_layer_input"):
            if reserved in self.attribute_kwargs:
                raise ValueError(f"attribute_kwargs may not set {reserved!r}: the miner passes it.")
        if isinstance(target, (list, tuple)) or (isinstance(target, Tensor) and target.dim() > 0):
            self._table: Optional[Tensor] = torch.as_tensor(target, dtype=torch.int64).reshape(-1)
        else:
            self._table = None
        modules = source.modules
        self.concepts = list(concepts)
        if self.concepts:
            from captum.attr import LayerGradientXActivation

            if method is not LayerGradientXActivation:
                raise ValueError("Relevance of concept directions is gradient x concept activation: mine concepts "
                                 "with rank_by=LayerGradientXActivation (the class), or without rank_by.")
            missing = [c.name for c in self.concepts if not isinstance(getattr(c, "directions", None), Tensor)]
            if missing:
                raise TypeError(f"Concepts {missing} have no .directions (K, C) tensor: their relevance needs it.")
            layer = list(modules) if len(modules) > 1 else modules[0]
            self._methods = [LayerGradientXActivation(source.forward_func, layer, device_ids=source.device_ids,
                                                      multiply_by_inputs=False)]  # the layer gradients
            self.method_name = "LayerGradientXActivation"
        elif inspect.isclass(method):
            if _takes_layer_list(method) and len(modules) > 1:
                self._methods = [method(source.forward_func, list(modules), device_ids=source.device_ids)
                                 if "device_ids" in inspect.signature(method.__init__).parameters
                                 else method(source.forward_func, list(modules))]
            else:
                self._methods = [self._build(method, m) for m in modules]
            self.method_name = method.__name__
        elif hasattr(method, "attribute") and hasattr(method, "layer"):
            layer = method.layer
            given = list(layer) if isinstance(layer, (list, tuple)) else [layer]
            if len(given) != len(modules) or any(a is not b for a, b in zip(given, modules)):
                raise ValueError(
                    f"rank_by={type(method).__name__}(...) is built on other layers than the mined ones "
                    f"{source.names}: build it on exactly those modules, in order, or pass the class.")
            self._methods = [method]
            self.method_name = type(method).__name__
        else:
            raise TypeError("rank_by must be a Captum layer attribution class (e.g. "
                            "captum.attr.LayerGradientXActivation) or an instance of one, got "
                            f"{type(method).__name__}.")

    def _build(self, cls: type, module: nn.Module) -> Any:
        params = inspect.signature(cls.__init__).parameters
        if "device_ids" in params:
            return cls(self.source.forward_func, module, device_ids=self.source.device_ids)
        return cls(self.source.forward_func, module)

    # ------------------------------------------------------------------ targets
    def _logits(self, images: Tensor, additional_forward_args: Any) -> Tensor:
        extra = () if additional_forward_args is None else (
            additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,))
        with torch.no_grad():
            out = self.source.forward_func(images, *extra)
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise ValueError(f"target={self.target!r} needs the model to return (N, classes) logits, got "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}.")
        return out

    def targets(self, images: Tensor, labels: Optional[List[int]], indices: Tensor,
                additional_forward_args: Any = None) -> Union[int, Tensor]:
        r"""The target of every image of the batch: an int, or an ``(N,)`` int64 tensor."""
        t = self.target
        n = images.shape[0]
        if isinstance(t, bool):
            raise TypeError("target must be a class index, not a bool.")
        if isinstance(t, int):
            return t
        if self._table is not None:
            if int(indices.max()) >= self._table.numel() or int(indices.min()) < 0:
                raise IndexError(f"target holds {self._table.numel()} per-image targets but the batch has "
                                 f"image index {int(indices.max())}: give one target per image of the data.")
            return self._table[indices.cpu()].to(images.device)
        if isinstance(t, Tensor):  # a 0-d tensor
            return int(t)
        label_t = torch.as_tensor(labels, dtype=torch.int64, device=images.device) if labels is not None else None
        if t == "label":
            if label_t is None or bool((label_t < 0).any()):
                raise ValueError("target='label' needs labelled batches ((images, labels) or a dict with "
                                 "'labels'); some images have none.")
            return label_t
        logits = self._logits(images, additional_forward_args)
        if t == "predicted":
            return logits.argmax(dim=1)
        out = torch.as_tensor(t(label_t, logits), dtype=torch.int64, device=images.device).reshape(-1)
        if out.numel() == 1:
            return out.expand(n).clone()
        if out.numel() != n:
            raise ValueError(f"target callable returned {out.numel()} targets for {n} images.")
        return out

    # ------------------------------------------------------------------ attributions
    def __call__(self, images: Tensor, labels: Optional[List[int]], indices: Tensor,
                 additional_forward_args: Any = None) -> Dict[str, Tensor]:
        r"""Canonical attributions of one batch.

        Args:
            images (Tensor): ``(N, C, H, W)``.
            labels (list of int, optional), indices (Tensor): the batch's labels, global indices.
        Returns:
            dict: layer name -> ``(N, C_l, h, w)`` / ``(N, C_l)`` float attributions (and
            ``"<layer>[prefix]"`` for the prefix tokens of token layers).
        """
        source = self.source
        device = device_dtype(source.root)[0]
        if device is not None and images.device != device and not source.device_ids:
            images = images.to(device, non_blocking=True)
        infos = source.layer_infos(images)  # a stopped forward once per input size
        target = self.targets(images, labels, indices, additional_forward_args)
        kwargs = dict(self.attribute_kwargs)
        if source.attribute_to_layer_input:
            kwargs["attribute_to_layer_input"] = True
        raws: List[Tensor] = []
        with torch.enable_grad():
            for method in self._methods:
                got = method.attribute(images, target=target, additional_forward_args=additional_forward_args,
                                       **kwargs)
                got = list(got) if isinstance(got, list) and len(self._methods) == 1 and len(source.names) > 1 else [got]
                raws.extend(_one_tensor(g, source.names[len(raws)]) for g in got)
        out: Dict[str, Tensor] = {}
        if self.concepts:  # raws are gradients: a * g for the channels, z * (d . g) for the concepts
            acts = source(images, additional_forward_args)
            grads: Dict[str, Tensor] = {}
            for name, raw in zip(source.names, raws):
                check_shape(raw, infos[name])
                grads.update(canonical(raw, infos[name], infos.get(name + PREFIX_SUFFIX)))
            out = {name: acts[name] * g for name, g in grads.items()}
            for c in self.concepts:
                d = c.directions.to(grads[c.layer].device, grads[c.layer].dtype)
                g = grads[c.layer]
                along = torch.einsum("nchw,kc->nkhw", g, d) if g.dim() == 4 else g @ d.T
                out[concept_layer(c)] = c.encode(acts[c.layer]).to(along.dtype) * along
            return out
        for name, raw in zip(source.names, raws):
            if tuple(raw.shape[1:]) != tuple(infos[name].raw_shape):
                raise ValueError(
                    f"{self.method_name} gives layer {name!r} attributions of shape {tuple(raw.shape[1:])}, "
                    f"not the layer's output shape {tuple(infos[name].raw_shape)}: rank_by needs one attribution "
                    "per channel and position (LayerGradientXActivation, LayerLRP, LayerIntegratedGradients, "
                    "LayerDeepLift, LayerConductance; not LayerGradCam, which sums the channels).")
            check_shape(raw, infos[name])
            out.update(canonical(raw, infos[name], infos.get(name + PREFIX_SUFFIX)))
        return out

    def describe(self) -> Dict[str, Any]:
        r"""JSON-able: ``{"method", "target", "ranked"}`` (recorded in results and run folders)."""
        t = self.target
        if isinstance(t, (int, str)) and not isinstance(t, bool):
            target: Any = t
        elif self._table is not None:
            digest = hashlib.sha1(self._table.numpy().tobytes()).hexdigest()[:12]
            target = f"per-image targets ({self._table.numel()}, sha1 {digest})"
        elif isinstance(t, Tensor):
            target = int(t)
        else:
            target = f"callable {getattr(t, '__qualname__', type(t).__name__)}"
        out = {"method": self.method_name, "target": target, "ranked": "per-position layer attribution"}
        if self.concepts:
            out["concepts"] = "gradient x concept activation: z_k * (d_k . dF/da)"
        return out


def _one_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"The attribution of layer {name!r} is a {type(value).__name__}, not one tensor: "
                        "rank_by needs layers whose output is one tensor.")
    return value.detach()
