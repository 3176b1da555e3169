r"""A set of concepts: directions in one layer's activation space, and how to encode them.

A :class:`Concepts` holds ``K`` directions of a layer with ``C`` channels and the method that
produced them, which decides the *encoding* (a concept's activation at one image position):

* ``"vectors"``, ``"tcav"``, ``"classifier"``: the projection ``a · d_k`` (directions as given);
* ``"pca"``: the principal-component score ``(a - mean) · d_k`` (unit-norm components; the
  mean is a constant per concept, so rankings equal those of the plain projection);
* ``"nmf"``: the non-negative coefficients ``h >= 0`` minimising ``||a - h D||^2`` against the
  fixed basis ``D`` (unit-norm rows), solved exactly (a strictly convex problem when the
  directions are independent) by accelerated projected gradient, batched over positions,
  deterministic;
* ``"sae"``: a TopK sparse autoencoder's latents ``TopK(ReLU(W_enc (a - b_pre) + b_enc))``; the
  directions are its unit-norm decoder rows.

The object only depends on torch: the miner, feature visualization and the dashboard read
``.layer``, ``.name``, ``.directions`` and call :meth:`Concepts.encode` on canonical activations.
Learning lives in :mod:`captum_topk.concepts.learn`.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from ..utils.files import atomic_torch_save

__all__ = ["Concepts", "METHODS", "nnls"]

#: Methods and what their encoding is (see the module docstring).
METHODS = ("vectors", "tcav", "classifier", "pca", "nmf", "sae")
_FORMAT = "captum-topk-concepts"
_VERSION = 1


def nnls(x: Tensor, basis: Tensor, *, n_iter: int = 300, tol: float = 1e-6) -> Tensor:
    r"""Non-negative coefficients of rows of ``x`` against a fixed basis:
    ``argmin_{h >= 0} ||x - h basis||^2`` for every row, by FISTA (accelerated projected
    gradient with step ``1 / ||basis basis^T||_2``), started at zero. Deterministic; stops
    early when no coefficient moves by more than ``tol`` (relative to the largest).

    Args:
        x (Tensor): ``(M, C)`` rows.
        basis (Tensor): ``(K, C)`` directions.
        n_iter (int): the most iterations.
        tol (float): relative change below which iterations stop.

    Returns:
        Tensor: ``(M, K)`` non-negative coefficients, dtype of ``x``.

    Example::

        >>> h = nnls(torch.rand(100, 8), torch.rand(3, 8))
        >>> bool((h >= 0).all())
        True
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    b = basis.to(x.device, work)
    xs = x.to(work)
    gram = b @ b.T                                       # (K, K)
    xb = xs @ b.T                                        # (M, K)
    lip = torch.linalg.matrix_norm(gram, ord=2).clamp_min(torch.finfo(work).tiny)
    h = torch.zeros_like(xb)
    y = h
    t = 1.0
    for _ in range(int(n_iter)):
        h_next = (y - (y @ gram - xb) / lip).clamp_min(0)
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        y = h_next + ((t - 1.0) / t_next) * (h_next - h)
        moved = (h_next - h).abs().max()
        h, t = h_next, t_next
        if moved <= tol * h.abs().max().clamp_min(torch.finfo(work).tiny):
            break
    return h.to(x.dtype)


class Concepts:
    r"""``K`` concept directions of one layer, with the method's own encoding.

    Args:
        layer (str): the layer's name, as the miner names it (e.g. ``"features.14"``).
        directions (Tensor): ``(K, C)`` directions (stored as float32 on the CPU); a ``(C,)``
            vector is one concept.
        method (str): one of :data:`METHODS`; decides :meth:`encode`.
        name (str, optional): a short name; default ``f"{method}{K}"`` (e.g. ``"nmf16"``). The
            miner calls the concepts' result layer ``f"{layer}:{name}"``.
        encoder_state (dict, optional): what the encoding needs beyond the directions: tensors
            (``"mean"`` for ``"pca"``; ``"W_enc"`` ``(K, C)``, ``"b_enc"`` ``(K,)``,
            ``"b_pre"`` ``(C,)`` for ``"sae"``) and JSON-able scalars (``"k"`` for ``"sae"``,
            ``"n_iter"`` and ``"clamp"`` (encode ``max(a, 0)``) for ``"nmf"``, facts about the
            learning run).
        labels (list of str, optional): one label per concept (a class name, a TCAV concept).

    Example::

        >>> concepts = Concepts.from_vectors("features.14", torch.randn(4, 160))
        >>> concepts.name, concepts.encode(torch.rand(2, 160, 7, 7)).shape
        ('vectors4', torch.Size([2, 4, 7, 7]))
    """

    def __init__(
        self,
        layer: str,
        directions: Tensor,
        method: str,
        *,
        name: Optional[str] = None,
        encoder_state: Optional[Mapping[str, Any]] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if not isinstance(layer, str) or not layer:
            raise TypeError(f"layer must be a layer's name (str), got {layer!r}.")
        directions = torch.as_tensor(directions).detach()
        if directions.dim() == 1:
            directions = directions[None]
        if directions.dim() != 2 or directions.shape[0] == 0 or directions.shape[1] == 0:
            raise ValueError(f"directions must be a (K, C) tensor, got shape {tuple(directions.shape)}.")
        if not torch.isfinite(directions).all():
            raise ValueError("directions contain NaN or infinite values.")
        self._layer = layer
        self._method = method
        self._directions = directions.to("cpu", torch.float32).contiguous()
        self._name = str(name) if name else f"{method}{self.n_concepts}"
        if ":" in self._name:
            raise ValueError(f"a concepts' name cannot contain ':' (the miner names its layer "
                             f"'<layer>:<name>'), got {self._name!r}.")
        state: Dict[str, Any] = {}
        for key, value in dict(encoder_state or {}).items():
            state[str(key)] = value.detach().to("cpu", torch.float32).contiguous() if isinstance(value, Tensor) else value
        self._state = state
        self._check_state()
        if labels is not None:
            labels = [str(v) for v in labels]
            if len(labels) != self.n_concepts:
                raise ValueError(f"{len(labels)} labels for {self.n_concepts} concepts.")
        self.labels: Optional[List[str]] = labels

    def _check_state(self) -> None:
        k, c = self._directions.shape
        need = {"pca": {"mean": (c,)}, "sae": {"W_enc": (k, c), "b_enc": (k,), "b_pre": (c,)}}.get(self._method, {})
        for key, shape in need.items():
            value = self._state.get(key)
            if key == "mean" and value is None:
                continue  # a PCA without a stored mean projects uncentred
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else value
                raise ValueError(f"method {self._method!r} needs encoder_state[{key!r}] of shape {shape}, got {got}.")
        if self._method == "sae":
            kk = self._state.get("k")
            if not isinstance(kk, int) or not 1 <= kk <= k:
                raise ValueError(f"method 'sae' needs encoder_state['k'], an int in [1, {k}], got {kk!r}.")

    # ------------------------------------------------------------------ facts
    @property
    def layer(self) -> str:
        r"""The layer's name."""
        return self._layer

    @property
    def method(self) -> str:
        r"""How the directions were made, one of :data:`METHODS`."""
        return self._method

    @property
    def name(self) -> str:
        r"""Short name (``f"{method}{K}"`` by default)."""
        return self._name

    @property
    def directions(self) -> Tensor:
        r"""``(K, C)`` float32 directions (a copy: the object is not changed through it)."""
        return self._directions.clone()

    @property
    def n_concepts(self) -> int:
        r"""``K``."""
        return int(self._directions.shape[0])

    @property
    def channels(self) -> int:
        r"""``C``, the layer's channels."""
        return int(self._directions.shape[1])

    @property
    def encoder_state(self) -> Dict[str, Any]:
        r"""What the encoding needs beyond the directions (tensors cloned)."""
        return {k: v.clone() if isinstance(v, Tensor) else v for k, v in self._state.items()}

    def __len__(self) -> int:
        return self.n_concepts

    def __repr__(self) -> str:
        return (f"Concepts(layer={self.layer!r}, method={self.method!r}, name={self.name!r}, "
                f"n_concepts={self.n_concepts}, channels={self.channels})")

    # ------------------------------------------------------------------ encoding
    def _rows(self, acts: Tensor) -> tuple:
        if not isinstance(acts, Tensor) or acts.dim() not in (2, 4):
            shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
            raise ValueError(f"encode takes canonical (N, C, h, w) or (N, C) activations, got {shape}; "
                             f"TorchSource / OnnxSource hand activations in that layout.")
        if acts.shape[1] != self.channels:
            raise ValueError(f"the activations have {acts.shape[1]} channels but the concepts of "
                             f"{self.layer!r} have {self.channels}: were they learned on another layer?")
        if acts.dim() == 2:
            return acts, None
        n, c, h, w = acts.shape
        return acts.permute(0, 2, 3, 1).reshape(n * h * w, c), (n, h, w)

    def encode_rows(self, x: Tensor) -> Tensor:
        r"""The encoding of ``(M, C)`` activation rows: ``(M, K)`` (see :meth:`encode`)."""
        work = x.dtype if x.is_floating_point() else torch.float32
        d = self._directions.to(x.device, work)
        state = {k: v.to(x.device, work) if isinstance(v, Tensor) else v for k, v in self._state.items()}
        x = x.to(work)
        if self._method == "nmf":
            if state.get("clamp"):
                x = x.clamp_min(0)  # learned on max(a, 0) (``negatives="clamp"``)
            return nnls(x, d, n_iter=int(state.get("n_iter", 300)))
        if self._method == "sae":
            pre = (x - state["b_pre"]) @ state["W_enc"].T + state["b_enc"]
            pre = pre.clamp_min(0)
            top = pre.topk(state["k"], dim=1)
            return torch.zeros_like(pre).scatter_(1, top.indices, top.values)
        if self._method == "pca" and "mean" in state:
            x = x - state["mean"]
        return x @ d.T

    def encode(self, acts: Tensor) -> Tensor:
        r"""Concept activations of canonical layer activations, with the method's encoding.

        Args:
            acts (Tensor): ``(N, C, h, w)`` or ``(N, C)`` activations of :attr:`layer` in the
                canonical layout (as :class:`~captum_topk.core.sources.torch.TorchSource`
                returns them, whatever the layer's raw layout).

        Returns:
            Tensor: ``(N, K, h, w)`` or ``(N, K)``, on the activations' device (float32 unless
            the activations are float64). Differentiable for every method except ``"nmf"``.

        Example::

            >>> concepts.encode(torch.rand(8, concepts.channels, 14, 14)).shape
            torch.Size([8, 16, 14, 14])
        """
        rows, grid = self._rows(acts)
        codes = self.encode_rows(rows)
        if grid is None:
            return codes
        n, h, w = grid
        return codes.reshape(n, h, w, self.n_concepts).permute(0, 3, 1, 2).contiguous()

    def decode(self, codes: Tensor) -> Tensor:
        r"""Activations rebuilt from concept activations: ``codes · directions`` (plus the
        SAE's pre-bias or the PCA mean). Exact for ``"pca"`` with all components.

        Args:
            codes (Tensor): ``(N, K, h, w)`` or ``(N, K)``.
        Returns:
            Tensor: ``(N, C, h, w)`` or ``(N, C)``.
        """
        if codes.dim() not in (2, 4) or codes.shape[1] != self.n_concepts:
            raise ValueError(f"codes must be (N, {self.n_concepts}[, h, w]), got {tuple(codes.shape)}.")
        work = codes.dtype if codes.is_floating_point() else torch.float32
        d = self._directions.to(codes.device, work)
        offset = self._state.get("b_pre" if self._method == "sae" else "mean")
        if codes.dim() == 2:
            out = codes.to(work) @ d
        else:
            out = torch.einsum("nkhw,kc->nchw", codes.to(work), d)
        if isinstance(offset, Tensor) and self._method in ("sae", "pca"):
            shape = (1, -1) if codes.dim() == 2 else (1, -1, 1, 1)
            out = out + offset.to(codes.device, work).reshape(shape)
        return out

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_vectors(cls, layer: str, tensor: Tensor, name: Optional[str] = None,
                     labels: Optional[Sequence[str]] = None) -> "Concepts":
        r"""Concepts given as vectors (any directions: a CAV, a probe's weights, a difference of
        means); encoded by projection.

        Args:
            layer (str): the layer's name.
            tensor (Tensor): ``(K, C)`` or ``(C,)``.
            name (str, optional): default ``f"vectors{K}"``.
            labels (list of str, optional): one per concept.
        Returns:
            Concepts: method ``"vectors"``.
        """
        return cls(layer, tensor, "vectors", name=name, labels=labels)

    @classmethod
    def from_classifier(cls, layer: str, classifier: Any, *, classes: Optional[Sequence[str]] = None,
                        name: Optional[str] = None) -> "Concepts":
        r"""A linear classifier's class weights as directions of the layer whose global-average
        pooled activation it reads (e.g. the head :func:`~captum_topk.transfer.linear.fit_linear_head`
        or ``captum-topk finetune`` fits on ``features.18`` of MobileNetV2). The projection of
        a position's activation on class ``j``'s weights is that position's share of the
        class's logit: its mean over positions is the logit minus the bias.

        Args:
            layer (str): the pooled layer.
            classifier (nn.Linear, nn.Module or Tensor): the head (its last ``nn.Linear`` is
                taken: a ``Sequential(Dropout, Linear)`` or a whole model works) or its
                ``(classes, C)`` weight.
            classes (list of str, optional): class names (the labels of the concepts).
            name (str, optional): default ``f"classifier{classes}"``.
        Returns:
            Concepts: method ``"classifier"``, one concept per class.
        Example::

            >>> head, _ = fit_linear_head(embeddings, labels)
            >>> Concepts.from_classifier("features.18", head, classes=["good", "cracked"])
        """
        from .given import classifier_weights

        return cls(layer, classifier_weights(classifier), "classifier", name=name, labels=classes)

    @classmethod
    def from_tcav(cls, model: Any, layer: str, concepts: Sequence[Any], random_concept: Any, *,
                  name: Optional[str] = None, save_path: Optional[str] = None, **tcav_kw: Any) -> "Concepts":
        r"""Concept activation vectors of Captum's ``captum.concept.TCAV``: one CAV per concept,
        each trained against ``random_concept`` on ``layer``'s activations.

        Captum flattens a spatial layer's activations, so a CAV holds one weight per (channel,
        position); the concept's direction is its sum over positions (the CAV's response to a
        map that is the same everywhere), in the layer's raw layout (NCHW, NHWC, tokens).

        Args:
            model (nn.Module): the model.
            layer (str): the layer's name.
            concepts (list of captum.concept.Concept): the concepts (examples in ``data_iter``).
            random_concept (captum.concept.Concept): the counter-examples.
            name (str, optional): default ``f"tcav{K}"``.
            save_path (str, optional): Captum's activation / CAV folder (default: a temporary
                folder, removed after); CAVs are always trained anew (Captum's own loader
                unpickles files).
            tcav_kw: further arguments of ``TCAV`` (``classifier``, ``model_id``).
        Returns:
            Concepts: method ``"tcav"``, labelled with the concepts' names.
        """
        from .given import tcav_directions

        directions, labels = tcav_directions(model, layer, concepts, random_concept,
                                             save_path=save_path, **tcav_kw)
        return cls(layer, directions, "tcav", name=name, labels=labels)

    # ------------------------------------------------------------------ decisions
    def importance(self, model: Any, data: Any, target: Any, *, batch_size: int = 32,
                   max_images: Optional[int] = None, per_image: bool = False, progress: bool = False,
                   **source_kw: Any) -> Tensor:
        r"""Each concept's contribution to the ``target`` logit (CRAFT's gradient x concept
        activation): ``sum over positions of u_k (dy/da · d_k)``, averaged over images, with
        ``u`` the concept activations and ``dy/da`` the target's gradient at the layer.

        Args:
            model (nn.Module or callable): the model the concepts' layer belongs to.
            data: a DataLoader / iterable of batches, a dataset, or an ``(N, C, H, W)`` tensor.
            target: Captum's ``target``: a class index, or one per image (a list / tensor of
                the data's length, taken batch by batch).
            batch_size (int): for a dataset or a tensor.
            max_images (int, optional): stop after this many images.
            per_image (bool): return every image's ``(N, K)`` scores instead of the mean.
            progress (bool): a tqdm bar.
            source_kw: ``layout``, ``token_grid``, ``prefix_tokens`` of the TorchSource.
        Returns:
            Tensor: ``(K,)`` (or ``(N, K)`` with ``per_image``).
        Example::

            >>> concepts.importance(model, images, target=281).topk(3)
        """
        from .importance import importance

        return importance(self, model, data, target, batch_size=batch_size, max_images=max_images,
                          per_image=per_image, progress=progress, **source_kw)

    def heatmaps(self, model: Any, images: Tensor, *, size: Any = None, batch_size: int = 32,
                 **source_kw: Any) -> Tensor:
        r"""Which concept is where: every image's concept activations bilinearly upsampled to
        the image size.

        Args:
            model (nn.Module or callable): the model.
            images (Tensor): ``(N, C, H, W)``.
            size (int or tuple, optional): output size (default the images' ``(H, W)``).
            batch_size (int): images per forward.
        Returns:
            Tensor: ``(N, K, H, W)`` on the CPU.
        """
        from .importance import heatmaps

        return heatmaps(self, model, images, size=size, batch_size=batch_size, **source_kw)

    # ------------------------------------------------------------------ files
    def state_dict(self) -> Dict[str, Any]:
        r"""Tensors and a JSON string, loadable with ``torch.load(weights_only=True)``."""
        tensors = {k: v for k, v in self._state.items() if isinstance(v, Tensor)}
        scalars = {k: v for k, v in self._state.items() if not isinstance(v, Tensor)}
        meta = {"format": _FORMAT, "version": _VERSION, "layer": self.layer, "method": self.method,
                "name": self.name, "labels": self.labels, "scalars": scalars}
        return {"meta": json.dumps(meta), "directions": self._directions.clone(),
                "tensors": {k: v.clone() for k, v in tensors.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Concepts":
        r"""The inverse of :meth:`state_dict`."""
        try:
            meta = json.loads(state["meta"])
            directions = state["directions"]
            tensors = dict(state.get("tensors", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a saved Concepts object ({exc!r}).") from exc
        if meta.get("format") != _FORMAT:
            raise ValueError(f"not a saved Concepts object (format {meta.get('format')!r}).")
        if int(meta.get("version", 0)) > _VERSION:
            raise ValueError(f"saved by a newer captum-topk (format version {meta['version']}); upgrade to load it.")
        return cls(meta["layer"], directions, meta["method"], name=meta["name"],
                   encoder_state={**meta.get("scalars", {}), **tensors}, labels=meta.get("labels"))

    def save(self, path: Union[str, os.PathLike]) -> None:
        r"""Write the concepts atomically (tensors + JSON metadata, no pickled objects).

        Args:
            path (str or PathLike): the file (``.pt`` by convention).
        """
        for key, value in self._state.items():
            if not isinstance(value, Tensor):
                try:
                    json.dumps(value)
                except TypeError as exc:
                    raise TypeError(f"encoder_state[{key!r}] is neither a tensor nor JSON-able: {exc}") from exc
        atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Concepts":
        r"""Read concepts written by :meth:`save` (``torch.load(weights_only=True)``).

        Args:
            path (str or PathLike): the file.
        Returns:
            Concepts
        Raises:
            ValueError: the file is not one :meth:`save` wrote (another torch file, garbage bytes).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{os.fspath(path)} is not a concepts file (written by Concepts.save or "
                             f"`captum-topk concepts learn`): torch.load failed ({type(exc).__name__}).") from exc
        return cls.from_state_dict(state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Concepts):
            return NotImplemented
        a, b = self._state, other._state
        return (self.layer == other.layer and self.method == other.method and self.name == other.name
                and self.labels == other.labels and torch.equal(self._directions, other._directions)
                and a.keys() == b.keys()
                and all(torch.equal(a[k], b[k]) if isinstance(a[k], Tensor) else a[k] == b[k] for k in a))

    __hash__ = None  # type: ignore[assignment]
