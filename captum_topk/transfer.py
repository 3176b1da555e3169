r"""Transfer learning and fine-tuning of a pretrained CNN on a new labelled task, on a CPU.

Two ways to reuse the convolutional layers of an ImageNet model for another task:

* **linear probe** (frozen base, "transfer learning"): the base is frozen and only a new
  final linear layer is trained, on the input of the old one (for MobileNetV2 the
  global-average-pooled ``features.18``, 1280 values per image). It is fitted as an
  L2-regularised multinomial logistic regression on standardised features (full-batch
  L-BFGS, deterministic); the L2 strength is chosen by stratified 3-fold cross-validation
  *on the training split only*.
* **fine-tuning**: the last ``unfreeze`` blocks (or ``"all"``) are trained together with the
  head, the head starting from the linear probe ("LP-FT", Kumar et al. 2022: fine-tuning
  from a fitted head distorts the pretrained features less than from a random one), with
  AdamW (default), a lower learning rate for the blocks than for the head and a cosine schedule.

Speed on a CPU: the frozen blocks never change, so their output is computed once per image
and cached (``(N, C, h, w)``: 230 MB for ELPV at 224 px up to ``features.10``, flipped
training copies included); every epoch
then runs only the unfrozen tail. The tail is run through a *view* of the model whose frozen
blocks are :class:`torch.nn.Identity` (parameters shared with the model, nothing copied);
this needs the blocks to form a chain, which is checked numerically on one batch.

Blocks (:func:`model_blocks`): the children of ``model.features`` when it is an
``nn.Sequential`` (MobileNet, EfficientNet, VGG, SqueezeNet, DenseNet, ConvNeXt...), else the
top-level children up to the last one holding a convolution (ResNet: ``conv1 ... layer4``).

Checkpoints (one per epoch, plus the probe and the final model) are written atomically and
hold only tensors and plain containers: ``state_dict`` (the whole model), ``arch``,
``classes``, ``epoch``, ``metrics``, the preprocessing (``input_size``, ``resize_size``,
``mean``, ``std``) and the training settings, so that
``load_model("mobilenet_v2-imagenet", checkpoint=path)`` (``torch.load(weights_only=True)``)
rebuilds the model with its new head and class names, and :func:`load_finetuned` rebuilds it
with its preprocessing too.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ._io import atomic_torch_save, atomic_write_text
from ._layers import resolve_layers, run_capture

__all__ = [
    "stratified_split",
    "model_blocks",
    "final_linear",
    "replace_head",
    "classification_metrics",
    "fit_linear_head",
    "FinetuneResult",
    "finetune",
    "load_finetuned",
    "finetune_run",
    "CHECKPOINT_FORMAT",
]

PathLike = Union[str, os.PathLike]
CHECKPOINT_FORMAT = "captum-topk-finetune/1"
_L2_GRID = (1000.0, 100.0, 10.0, 1.0)  # strongest first: each fit warm-starts the next


# --------------------------------------------------------------------------------------
# splits and metrics
# --------------------------------------------------------------------------------------


def stratified_split(
    labels: Sequence[int], val_fraction: float = 0.25, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    r"""A deterministic stratified train / validation split.

    Per class, the indices are shuffled with ``numpy.random.default_rng(seed)`` (one
    generator, classes in increasing order) and the first ``round(n_c * val_fraction)``
    go to validation (at least one when the class has two or more images).

    Args:
        labels (sequence of int): class of each item (``-1`` items are left out of both).
        val_fraction (float): share of each class held out, in (0, 1).
        seed (int): random seed.

    Returns:
        (numpy.ndarray, numpy.ndarray): sorted train and validation indices (int64).

    Example::

        >>> train_idx, val_idx = stratified_split(dataset.labels, 0.25, seed=0)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    if not train:
        raise ValueError("No labelled item (all labels are -1): cannot split for training.")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: Optional[int] = None
                           ) -> Dict[str, Any]:
    r"""Accuracy, balanced accuracy (mean per-class recall), mean cross-entropy, confusion.

    Args:
        logits (Tensor): ``(N, K)`` scores.
        labels (Tensor): ``(N,)`` int64 classes.
        num_classes (int, optional): ``K`` (default ``logits.shape[1]``).

    Returns:
        dict: ``accuracy``, ``balanced_accuracy``, ``loss``, ``n`` and ``confusion``
        (``K x K`` list, rows true class, columns predicted).
    """
    k = num_classes or logits.shape[1]
    labels = labels.long()
    pred = logits.argmax(1)
    conf = torch.zeros(k, k, dtype=torch.int64)
    conf.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = [conf[c, c].item() / conf[c].sum().item() for c in range(k) if conf[c].sum() > 0]
    return {
        "accuracy": float((pred == labels).double().mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.mean(per_class)) if per_class else float("nan"),
        "loss": float(F.cross_entropy(logits.double(), labels)) if len(labels) else float("nan"),
        "n": int(len(labels)),
        "confusion": conf.tolist(),
    }


# --------------------------------------------------------------------------------------
# model anatomy
# --------------------------------------------------------------------------------------


def model_blocks(model: nn.Module) -> List[str]:
    r"""Dotted names of the model's blocks, in forward order (what ``unfreeze`` counts).

    Returns:
        list of str: ``features.0 ... features.18`` for MobileNetV2; ``conv1, bn1, relu,
        maxpool, layer1 ... layer4`` for a ResNet.

    Raises:
        ValueError: when no block structure is recognised.
    """
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats) > 0:
        return [f"features.{n}" for n, _ in feats.named_children()]
    children = list(model.named_children())
    has_conv = [any(isinstance(m, nn.Conv2d) for m in c.modules()) for _, c in children]
    if any(has_conv):
        last = max(i for i, h in enumerate(has_conv) if h)
        return [n for n, _ in children[: last + 1]]
    raise ValueError(
        f"Cannot find the blocks of {type(model).__name__}: expected a `features` "
        "nn.Sequential or top-level convolutional children. Use unfreeze='all'."
    )


def final_linear(model: nn.Module) -> Tuple[str, nn.Linear]:
    r"""The classifier: the last ``nn.Linear`` in module order.

    Returns:
        (str, nn.Linear): its dotted name (``"classifier.1"`` for MobileNetV2) and module.

    Raises:
        ValueError: when the model has no ``nn.Linear`` (e.g. SqueezeNet's 1x1-conv head).
    """
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace.")
    return last  # type: ignore[return-value]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def replace_head(model: nn.Module, num_classes: int, seed: int = 0) -> str:
    r"""Replace the final classifier by a new one with ``num_classes`` outputs, in place.

    The new layer keeps the old one's name, so that a checkpoint's ``state_dict`` keys stay
    those of the architecture and :func:`captum_topk.models.load_model` reads the class
    count from the shape of its weight.

    Returns:
        str: the dotted name of the replaced layer.
    """
    name, old = final_linear(model)
    gen = torch.Generator().manual_seed(seed)
    new = nn.Linear(old.in_features, num_classes, bias=True)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(old.in_features)
        new.weight.uniform_(-bound, bound, generator=gen)
        if new.bias is not None:
            new.bias.zero_()
    _set_module(model, name, new.to(old.weight.device))
    return name


def _tail_view(model: nn.Module, frozen: Sequence[str]) -> nn.Module:
    r"""A shallow copy of ``model`` whose ``frozen`` blocks are ``nn.Identity``.

    Only the parents on the path to each frozen block are copied; every other module (and
    so every parameter and buffer) is shared with ``model``.
    """
    view = copy.copy(model)
    view._modules = dict(model._modules)  # type: ignore[assignment]
    copied = {"": view}
    for name in frozen:
        parts = name.split(".")
        parent_path = ""
        parent = view
        for part in parts[:-1]:
            path = f"{parent_path}.{part}" if parent_path else part
            if path not in copied:
                child = copy.copy(parent._modules[part])
                child._modules = dict(child._modules)  # type: ignore[assignment]
                parent._modules[part] = child
                copied[path] = child
            parent, parent_path = copied[path], path
        parent._modules[parts[-1]] = nn.Identity()
    return view


# --------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------


def _fit_logreg(z: Tensor, y: Tensor, k: int, l2: float, max_iter: int,
                init: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
    n, d = z.shape
    w0, b0 = init if init is not None else (torch.zeros(k, d, dtype=torch.float64),
                                            torch.zeros(k, dtype=torch.float64))
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.t() + b, y) + 0.5 * l2 * (w * w).sum() / n
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out: List[List[int]] = [[] for _ in range(folds)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        for j, i in enumerate(idx):
            out[j % folds].append(int(i))
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in out]


def fit_linear_head(
    features: Union[Tensor, np.ndarray],
    labels: Union[Tensor, np.ndarray, Sequence[int]],
    num_classes: Optional[int] = None,
    l2: Optional[float] = None,
    max_iter: int = 100,
    seed: int = 0,
) -> Tuple[nn.Linear, Dict[str, Any]]:
    r"""Fit a linear classifier on fixed features (the linear probe of a frozen base).

    Multinomial logistic regression on standardised features (per-dimension mean / std of
    the training features), loss ``CE + l2 / (2 N) * ||W||^2``, fitted by full-batch
    L-BFGS in float64 from zero (deterministic). The standardisation is folded into the
    returned layer, which takes the raw features.

    Args:
        features (Tensor or ndarray): ``(N, D)`` training features (e.g. from
            :func:`captum_topk.embed.embed`).
        labels: ``(N,)`` classes in ``[0, num_classes)``.
        num_classes (int, optional): default ``max(labels) + 1``.
        l2 (float, optional): L2 strength (``1 / C`` of scikit-learn's
            ``LogisticRegression``); ``None`` picks the best of ``(1000, 100, 10, 1)`` by
            stratified 3-fold cross-validation accuracy on these features (ties to the
            stronger penalty; along the path each fit starts from the previous solution).
        max_iter (int): L-BFGS iterations.
        seed (int): seed of the cross-validation folds.

    Returns:
        (nn.Linear, dict): the layer ``(D -> num_classes)`` in float32, and ``{"l2": ...,
        "cv_accuracy": {l2: acc}, "train": metrics}``.

    Example::

        >>> head, info = fit_linear_head(train_emb, train_labels)
        >>> pred = head(torch.from_numpy(val_emb)).argmax(1)
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if x.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"Need (N, D) features and N labels, got {tuple(x.shape)} and {tuple(y.shape)}.")
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"Labels must lie in [0, {k}); got {int(y.min())}..{int(y.max())}.")

    def standardise(xs: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        mu = xs.mean(0)
        sd = xs.std(0, unbiased=False).clamp_min(1e-6)
        return (xs - mu) / sd, mu, sd

    cv: Dict[str, float] = {}
    if l2 is None:
        folds = _stratified_folds(y.numpy(), 3, seed)
        correct = {lam: 0 for lam in _L2_GRID}
        for f in folds:
            tr = np.setdiff1d(np.arange(len(y)), f)
            z, mu, sd = standardise(x[tr])
            zf = (x[f] - mu) / sd
            wb = None
            for lam in _L2_GRID:  # the regularisation path, warm-started
                wb = _fit_logreg(z, y[tr], k, lam, max_iter, init=wb)
                correct[lam] += int((zf @ wb[0].t() + wb[1]).argmax(1).eq(y[f]).sum())
        cv = {repr(lam): correct[lam] / len(y) for lam in _L2_GRID}
        l2 = max(_L2_GRID, key=lambda lam: (correct[lam], lam))
    z, mu, sd = standardise(x)
    w, b = _fit_logreg(z, y, k, float(l2), max_iter)
    head = nn.Linear(x.shape[1], k)
    with torch.no_grad():
        w_raw = w / sd  # logits = ((x - mu) / sd) W^T + b = x (W / sd)^T + (b - (W / sd) mu)
        head.weight.copy_(w_raw.float())
        head.bias.copy_((b - w_raw @ mu).float())
        train = classification_metrics((x @ w_raw.t() + (b - w_raw @ mu)), y, k)
    return head, {"l2": float(l2), "cv_accuracy": cv, "train": train}


# --------------------------------------------------------------------------------------
# fine-tuning
# --------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    r"""What :func:`finetune` returns.

    Attributes:
        model (nn.Module): the fine-tuned model, eval mode, CPU.
        probe_model (nn.Module): the frozen base with the linear-probe head.
        probe (dict): linear-probe metrics: ``train`` / ``val`` (see
            :func:`classification_metrics`), ``l2``, ``cv_accuracy``.
        history (list of dict): per epoch: ``epoch``, ``train`` and ``val`` metrics, ``lr``,
            ``seconds``.
        checkpoints (list of Path): the per-epoch checkpoints, in order.
        probe_checkpoint (Path or None), final_checkpoint (Path or None): the probe model
            and the final (last-epoch) model.
        classes (list of str), train_index, val_index (ndarray): the task and its split.
        seconds (dict): wall time of ``cache``, ``probe`` and ``finetune``.
    """

    model: nn.Module
    probe_model: nn.Module
    probe: Dict[str, Any]
    history: List[Dict[str, Any]]
    checkpoints: List[Path]
    probe_checkpoint: Optional[Path]
    final_checkpoint: Optional[Path]
    classes: List[str]
    train_index: np.ndarray
    val_index: np.ndarray
    seconds: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        r"""JSON-able: probe and per-epoch metrics (without confusion matrices' tensors)."""
        return {
            "classes": self.classes,
            "n_train": int(len(self.train_index)),
            "n_val": int(len(self.val_index)),
            "linear_probe": self.probe,
            "finetune": self.history,
            "checkpoints": [str(p) for p in self.checkpoints],
            "probe_checkpoint": str(self.probe_checkpoint) if self.probe_checkpoint else None,
            "final_checkpoint": str(self.final_checkpoint) if self.final_checkpoint else None,
            "seconds": self.seconds,
        }


def _cache(model: nn.Module, layer: Optional[str], dataset: Any, indices: np.ndarray,
           batch_size: int, workers: int, flip: bool, progress: bool, desc: str
           ) -> Tuple[Tensor, Tensor]:
    r"""Model inputs (``layer=None``) or ``layer`` outputs for ``dataset[indices]``, eval mode."""
    from .data import make_loader

    sub = dataset.subset(indices.tolist()) if hasattr(dataset, "subset") else torch.utils.data.Subset(
        dataset, indices.tolist())
    loader = make_loader(sub, batch_size=batch_size, workers=workers)
    module = resolve_layers(model, layer)[0][1] if layer else None
    outs, labels = [], []
    bar = tqdm(total=len(indices), unit="img", desc=desc, disable=not progress)
    model.eval()
    try:
        with torch.no_grad():
            for images, lab, _ids in loader:
                if flip:
                    images = images.flip(-1)
                out = images if module is None else run_capture(model, [module], images)[0]
                outs.append(out.detach().clone())
                labels.append(torch.as_tensor(lab, dtype=torch.int64))
                bar.update(images.shape[0])
    finally:
        bar.close()
    return torch.cat(outs), torch.cat(labels)


def _logits(view: nn.Module, cache: Tensor, batch_size: int) -> Tensor:
    view.eval()
    with torch.no_grad():
        return torch.cat([view(cache[i : i + batch_size]) for i in range(0, len(cache), batch_size)])


def _head_input(view: nn.Module, head: nn.Module, cache: Tensor, batch_size: int) -> Tensor:
    r"""The input of the final classifier for each cached item (the probe's features)."""
    view.eval()
    chunks = []
    with torch.no_grad():
        for i in range(0, len(cache), batch_size):
            (inp,) = run_capture(view, [head], cache[i : i + batch_size],
                                 attribute_to_layer_input=True)
            chunks.append(inp.flatten(1).double())
    return torch.cat(chunks)


def _checkpoint(model: nn.Module, path: Path, meta: Dict[str, Any], **extra: Any) -> Path:
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": {k: v.detach().clone().cpu()
                                                           for k, v in model.state_dict().items()}}
    payload.update(meta)
    payload.update(extra)
    atomic_torch_save(payload, path)
    return path


def _epoch_path(out: Path, epoch: int) -> Path:
    return out.with_name(f"{out.stem}-epoch{epoch:02d}{out.suffix or '.pt'}")


def _probe_path(out: Path) -> Path:
    stem = out.stem.replace("finetuned", "linear-probe")
    if stem == out.stem:
        stem += "-linear-probe"
    return out.with_name(stem + (out.suffix or ".pt"))


def finetune(
    model: nn.Module,
    dataset: Any,
    train_index: Sequence[int],
    val_index: Sequence[int],
    classes: Sequence[str],
    unfreeze: Union[int, str] = 8,
    epochs: int = 5,
    lr: float = 3e-5,
    head_lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    flip: bool = True,
    train_bn: bool = False,
    optimizer: str = "adamw",
    probe_l2: Optional[float] = None,
    out: Optional[PathLike] = None,
    meta: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int, nn.Module, Dict[str, Any]], None]] = None,
) -> FinetuneResult:
    r"""Linear probe then fine-tuning of ``model`` on a labelled dataset, checkpointed per epoch.

    Steps: (1) replace the final classifier by one with ``len(classes)`` outputs; (2) run the
    frozen blocks once over the train and validation images and cache their output (also
    for the horizontally flipped training images when ``flip``); (3) fit the linear probe
    (:func:`fit_linear_head`) on the classifier's input over the (unflipped) training images
    and score it on the validation images; (4) train the last ``unfreeze`` blocks and the head (from
    the probe) for ``epochs`` epochs on the cached inputs (shuffled with ``seed``), the
    blocks at ``lr`` and the head at ``head_lr`` (``optimizer``, cosine decay to 0 over all steps,
    cross-entropy; BatchNorm layers keep their pretrained running statistics unless
    ``train_bn``);
    (5) after each epoch, score the validation split and write a checkpoint. The final model
    is the last epoch's (no selection on the validation split, so its accuracy is an honest
    held-out estimate).

    Args:
        model (nn.Module): a pretrained model (changed in place: new head, trained tail).
        dataset: an :class:`~captum_topk.data.ImageDataset` (with the preprocessing as its
            transform) or any dataset of ``(image, label, id)``.
        train_index, val_index (sequence of int): the split (see :func:`stratified_split`).
        classes (sequence of str): class names, ``labels`` index them.
        unfreeze (int or "all"): how many of the last :func:`model_blocks` to train.
        epochs (int): fine-tuning epochs (0: probe only).
        lr (float), head_lr (float): learning rates of the blocks and of the head.
        weight_decay (float): decoupled (AdamW) or L2 (SGD) weight decay.
        batch_size (int): images per step (and per caching batch).
        flip (bool): also train on horizontally flipped images (augmentation).
        optimizer (str): ``"sgd"`` (momentum 0.9, Nesterov) or ``"adamw"``. With AdamW keep
            ``head_lr`` small: its per-weight step of about ``lr`` is large next to the
            small weights of a fitted probe head.
        train_bn (bool): BatchNorm of the trained blocks in train mode (batch statistics,
            running statistics updated). Default False: the pretrained statistics are kept
            and only the affine weights train, so the features the probe head was fitted on
            do not jump at the first step.
        probe_l2 (float, optional): L2 of the probe; None: cross-validated.
        out (str, optional): final checkpoint path; per-epoch ones go beside it as
            ``<stem>-epochNN.pt`` and the probe as ``<stem with "finetuned" replaced by
            "linear-probe">.pt``; ``<stem>.json`` gets :meth:`FinetuneResult.summary`.
        meta (dict, optional): extra checkpoint entries (``arch``, ``input_size``,
            ``resize_size``, ``mean``, ``std``, ``dataset``...), plain JSON-able values.
        seed (int): seed of the head init, the shuffling and dropout.
        workers (int): DataLoader workers for the caching pass.
        progress (bool): tqdm bars.
        on_epoch_end (Callable, optional): ``f(epoch, model, epoch_metrics)`` after each
            epoch's checkpoint, the model in eval mode.

    Returns:
        FinetuneResult

    Example::

        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> ds = elpv_dataset(make_transform(112, resize_size=112))
        >>> tr, va = stratified_split(ds.labels, 0.25)
        >>> res = finetune(model, ds, tr, va, ds.classes, unfreeze=5, epochs=4,
        ...                out="checkpoints/mobilenet_v2-elpv-finetuned.pt")
        >>> res.probe["val"]["accuracy"], res.history[-1]["val"]["accuracy"]
    """
    t0 = time.monotonic()
    classes = [str(c) for c in classes]
    k = len(classes)
    train_index = np.asarray(train_index, dtype=np.int64)
    val_index = np.asarray(val_index, dtype=np.int64)
    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError("Both the training and the validation split need images.")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}.")
    blocks = model_blocks(model)
    if unfreeze == "all":
        n_train_blocks = len(blocks)
    elif isinstance(unfreeze, int) and 1 <= unfreeze <= len(blocks):
        n_train_blocks = unfreeze
    else:
        raise ValueError(
            f"unfreeze must be 'all' or an int in 1..{len(blocks)} (the blocks are "
            f"{blocks[0]} ... {blocks[-1]}), got {unfreeze!r}."
        )
    frozen, trained = blocks[: len(blocks) - n_train_blocks], blocks[len(blocks) - n_train_blocks:]
    torch.manual_seed(seed)
    head_name = replace_head(model, k, seed=seed)
    head = model.get_submodule(head_name)
    model.eval()
    view = _tail_view(model, frozen)
    boundary = frozen[-1] if frozen else None

    # (2) cache the frozen part's output
    tr_x, tr_y = _cache(model, boundary, dataset, train_index, batch_size, workers, False,
                        progress, "cache train")
    va_x, va_y = _cache(model, boundary, dataset, val_index, batch_size, workers, False,
                        progress, "cache val")
    if (tr_y < 0).any() or (tr_y >= k).any():
        raise ValueError(f"Training labels must lie in [0, {k}) for classes {classes}.")
    with torch.no_grad():  # the view must compute exactly what the model computes
        images = _cache(model, None, dataset, val_index[: min(4, len(val_index))], 4, 0, False,
                        False, "")[0]
        if not torch.allclose(view(va_x[: len(images)]), model(images), rtol=1e-4, atol=1e-4):
            raise ValueError(
                f"The blocks of {type(model).__name__} do not form a chain (running "
                f"{trained[0]}... on the cached output of {boundary} does not reproduce the "
                "model's output); use unfreeze='all'."
            )
    if flip:
        fl_x, fl_y = _cache(model, boundary, dataset, train_index, batch_size, workers, True,
                            progress, "cache flipped")
        tr_x, tr_y = torch.cat([tr_x, fl_x]), torch.cat([tr_y, fl_y])
    t_cache = time.monotonic()

    # (3) linear probe on the classifier's input, unflipped training images only (so that
    # no image and its mirror land in different cross-validation folds)
    n_plain = len(train_index)
    feats_tr = _head_input(view, head, tr_x[:n_plain], 2 * batch_size)
    feats_va = _head_input(view, head, va_x, 2 * batch_size)
    probe_head, probe_info = fit_linear_head(feats_tr, tr_y[:n_plain], k, l2=probe_l2, seed=seed)
    with torch.no_grad():
        head.weight.copy_(probe_head.weight.view_as(head.weight))
        head.bias.copy_(probe_head.bias)
        probe_val = classification_metrics(probe_head(feats_va.float()), va_y, k)
    probe = {**probe_info, "val": probe_val}
    probe_model = copy.deepcopy(model).eval()
    t_probe = time.monotonic()

    out_path = Path(out) if out is not None else None
    base_meta = {"classes": classes, **(meta or {}), "unfreeze": n_train_blocks,
                 "trained_blocks": trained, "head": head_name,
                 "split": {"val_index": val_index.tolist(), "seed": seed}}
    probe_ckpt = None
    if out_path is not None:
        probe_ckpt = _checkpoint(probe_model, _probe_path(out_path), base_meta, epoch=0,
                                 stage="linear_probe", metrics={"val": probe_val,
                                                                "train": probe_info["train"]})

    # (4) fine-tune the tail and the head
    head_params = list(head.parameters())
    head_ids = {id(p) for p in head_params}
    frozen_ids = {id(p) for name in frozen for p in model.get_submodule(name).parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids and id(p) not in frozen_ids]
    groups = [{"params": body, "lr": lr}, {"params": head_params, "lr": head_lr}]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True,
                                                     weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}.")
    steps_per_epoch = math.ceil(len(tr_x) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(seed)
    history: List[Dict[str, Any]] = []
    ckpts: List[Path] = []
    final_ckpt = None
    for epoch in range(1, epochs + 1):
        te = time.monotonic()
        view.train()
        if not train_bn:  # keep the pretrained BatchNorm statistics (and the probe's input)
            for m in view.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = torch.randperm(len(tr_x), generator=gen)
        seen, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch}/{epochs}",
                   unit="step", disable=not progress)
        for s in bar:
            idx = order[s : s + batch_size]
            if len(idx) < 2:  # BatchNorm needs two items
                continue
            logits = view(tr_x[idx])
            loss = F.cross_entropy(logits, tr_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            correct += int((logits.argmax(1) == tr_y[idx]).sum())
            loss_sum += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        model.eval()
        val = classification_metrics(_logits(view, va_x, 2 * batch_size), va_y, k)
        record = {"epoch": epoch, "train": {"loss": loss_sum / max(seen, 1),
                                            "accuracy": correct / max(seen, 1), "n": seen},
                  "val": val, "lr": [g["lr"] for g in opt.param_groups],
                  "seconds": time.monotonic() - te}
        history.append(record)
        if out_path is not None:
            ckpts.append(_checkpoint(model, _epoch_path(out_path, epoch), base_meta, epoch=epoch,
                                     stage="finetune", metrics={"val": val, "train": record["train"]}))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, record)
    model.eval()
    t_end = time.monotonic()
    if out_path is not None:
        final_ckpt = _checkpoint(model, out_path, base_meta, epoch=epochs, stage="finetune",
                                 metrics={"val": history[-1]["val"] if history else probe_val,
                                          "linear_probe_val": probe_val})
    result = FinetuneResult(
        model=model, probe_model=probe_model, probe=probe, history=history, checkpoints=ckpts,
        probe_checkpoint=probe_ckpt, final_checkpoint=final_ckpt, classes=classes,
        train_index=train_index, val_index=val_index,
        seconds={"cache": t_cache - t0, "probe": t_probe - t_cache, "finetune": t_end - t_probe},
    )
    if out_path is not None:
        atomic_write_text(out_path.with_suffix(".json"), json.dumps(
            {**result.summary(), "meta": meta or {}}, indent=1))
    return result


def load_finetuned(path: PathLike) -> Tuple[nn.Module, Any]:
    r"""Load a checkpoint written by :func:`finetune` with the preprocessing it was trained with.

    Same as :func:`captum_topk.models.load_model` (``weights_only=True``) with the
    checkpoint's ``arch``, and the returned ``ModelInfo``'s ``transform`` / ``input_size``
    / ``resize_size`` set from the checkpoint's ``input_size`` / ``resize_size``.

    Returns:
        (nn.Module, ModelInfo)

    Example::

        >>> model, info = load_finetuned("checkpoints/mobilenet_v2-elpv-finetuned.pt")
        >>> info.categories
        ['functional', 'defective']
    """
    from .models import load_checkpoint_state_dict, load_model, make_transform

    _, meta = load_checkpoint_state_dict(str(path))
    arch = meta.get("arch")
    if not isinstance(arch, str):
        raise ValueError(f"{path} has no 'arch' entry: load it with load_model(ARCH, checkpoint=...).")
    model, info = load_model(arch, checkpoint=str(path))
    size = meta.get("input_size")
    if isinstance(size, int):
        resize = int(meta.get("resize_size", round(size / 0.875)))
        info = replace(info, input_size=(size, size), resize_size=resize,
                       transform=make_transform(size, resize, info.mean, info.std))
    return model, info


# --------------------------------------------------------------------------------------
# a whole run, as the CLI does it
# --------------------------------------------------------------------------------------


def _labelled_dataset(data: str, task: str, transform: Callable) -> Tuple[Any, str]:
    if data == "elpv":
        from .elpv import elpv_dataset

        return elpv_dataset(transform, task=task), "elpv"
    from .data import image_folder

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {data!r}: not 'elpv' and not a folder. Give a folder with one sub-folder "
            "of images per class (e.g. fish/salmon/*.jpg, fish/trout/*.jpg), or 'elpv'."
        )
    ds = image_folder(str(root), transform=transform)
    if not ds.classes or len(ds.classes) < 2:
        raise ValueError(
            f"{root} needs at least two class sub-folders holding images; found "
            f"{ds.classes or 'none'}."
        )
    return ds, root.name


def finetune_run(
    model: str = "mobilenet_v2-imagenet",
    checkpoint: Optional[str] = None,
    data: str = "elpv",
    task: str = "binary",
    input_size: int = 224,
    resize_size: Optional[int] = None,
    unfreeze: Union[int, str] = 8,
    epochs: int = 5,
    lr: float = 3e-5,
    head_lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    val_fraction: float = 0.25,
    max_images: Optional[int] = None,
    flip: bool = True,
    train_bn: bool = False,
    optimizer: str = "adamw",
    probe_l2: Optional[float] = None,
    seed: int = 0,
    workers: int = 0,
    out: Optional[PathLike] = None,
    progress: bool = True,
) -> FinetuneResult:
    r"""Load a pretrained model and a labelled set, split, probe, fine-tune, checkpoint.

    What ``captum-topk finetune`` runs. The preprocessing is the model's normalisation at
    ``input_size`` px, the image resized so that its shorter side is ``resize_size``
    (default ``input_size``: the whole ELPV cell) then centre-cropped.

    Args:
        model (str), checkpoint (str, optional): as :func:`captum_topk.models.load_model`.
        data (str): ``"elpv"`` (the packaged solar-cell set) or a folder with one
            sub-folder of images per class.
        task (str): ELPV task, ``"binary"`` or ``"4class"``.
        input_size (int), resize_size (int, optional): preprocessing.
        max_images (int, optional): a stratified subset of this many images (faster runs).
        out (str, optional): final checkpoint; default
            ``checkpoints/<arch>-<dataset>-finetuned.pt``.
        others: see :func:`finetune` and :func:`stratified_split`.

    Returns:
        FinetuneResult
    """
    from .models import list_models, load_model, make_transform

    net, info = load_model(model, checkpoint=checkpoint)
    resize = int(resize_size or input_size)
    transform = make_transform(input_size, resize, info.mean, info.std)
    dataset, data_name = _labelled_dataset(data, task, transform)
    if max_images is not None and max_images < len(dataset):
        if max_images < 8:
            raise ValueError(f"max_images must be at least 8, got {max_images}.")
        _, keep = stratified_split(dataset.labels, max_images / len(dataset), seed=seed + 1)
        dataset = dataset.subset(keep.tolist())
    train_idx, val_idx = stratified_split(dataset.labels, val_fraction, seed=seed)
    if out is None:
        out = Path("checkpoints") / f"{info.arch}-{data_name}-finetuned.pt"
    meta = {
        "arch": model if model in list_models(available_only=False) else info.arch,
        "base_model": model,
        "base_checkpoint": str(checkpoint) if checkpoint else None,
        "dataset": data_name if data != "elpv" else f"elpv/{task}",
        "input_size": int(input_size),
        "resize_size": resize,
        "mean": list(info.mean),
        "std": list(info.std),
        "settings": {"unfreeze": str(unfreeze), "epochs": epochs, "lr": lr, "head_lr": head_lr,
                     "weight_decay": weight_decay, "batch_size": batch_size,
                     "val_fraction": val_fraction, "max_images": max_images, "flip": flip,
                     "train_bn": train_bn, "optimizer": optimizer, "probe_l2": probe_l2,
                     "seed": seed},
    }
    return finetune(net, dataset, train_idx, val_idx, dataset.classes, unfreeze=unfreeze,
                    epochs=epochs, lr=lr, head_lr=head_lr, weight_decay=weight_decay,
                    batch_size=batch_size, flip=flip, train_bn=train_bn, optimizer=optimizer, probe_l2=probe_l2, out=out, meta=meta, seed=seed,
                    workers=workers, progress=progress)
