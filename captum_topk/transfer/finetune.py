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

Model selection is honest: the probe's L2 is chosen by cross-validation on the training
split, the epoch on the validation split, and the test split (when given) is read only
after the choice is made, once, to score the probe and the chosen model.

Speed on a CPU: the frozen blocks never change, so their output is computed once per image
and cached (``(N, C, h, w)``: 230 MB for ELPV at 224 px up to ``features.10``, flipped
training copies included); every epoch
then runs only the unfrozen tail. The tail is run through a *view* of the model whose frozen
blocks are :class:`torch.nn.Identity` (parameters shared with the model, nothing copied);
this needs the blocks to form a chain, which is checked numerically on one batch.

Blocks (:func:`model_blocks`): the children of ``model.features`` when it is an
``nn.Sequential`` (MobileNet, EfficientNet, VGG, SqueezeNet, DenseNet, ConvNeXt...), else the
top-level children up to the last one holding a convolution (ResNet: ``conv1 ... layer4``).

Checkpoints (one per epoch, plus the probe and the final, selected, model) are written
atomically and hold only tensors and plain containers: ``state_dict`` (the whole model),
``arch``, ``classes``, ``epoch``, ``metrics``, ``split``, ``selection``, the preprocessing (``input_size``, ``resize_size``,
``mean``, ``std``) and the training settings, so that
``load_model("mobilenet_v2-imagenet", checkpoint=path)`` (``torch.load(weights_only=True)``)
rebuilds the model with its new head and class names, and :func:`load_finetuned` rebuilds it
with its preprocessing too.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from ..utils.files import atomic_torch_save, atomic_write_text
from ..capture.hooks import resolve_layers, run_capture
from .metrics import classification_metrics
from .linear import fit_linear_head
from ..models.anatomy import model_blocks, replace_head
from ..utils.files import PathLike





CHECKPOINT_FORMAT = "captum-topk-finetune/1"


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


@dataclass
class FinetuneResult:
    r"""What :func:`finetune` returns.

    Attributes:
        model (nn.Module): the fine-tuned model at the selected epoch, eval mode, CPU.
        probe_model (nn.Module): the frozen base with the linear-probe head.
        probe (dict): linear-probe metrics: ``train`` / ``val`` / ``test`` (see
            :func:`classification_metrics`; ``test`` None without a test split), ``l2``,
            ``cv_accuracy``.
        history (list of dict): per epoch: ``epoch``, ``train`` and ``val`` metrics, ``lr``,
            ``seconds`` (no test metrics: the test split is not looked at per epoch).
        checkpoints (list of Path): the per-epoch checkpoints, in order.
        probe_checkpoint (Path or None), final_checkpoint (Path or None): the probe model
            and the final model (the selected epoch's weights).
        classes (list of str), train_index, val_index (ndarray): the task and its split.
        test_index (ndarray): the test split (empty when none was given).
        selected_epoch (int): the epoch chosen on validation (0: no fine-tuning epoch, the
            probe).
        final (dict): the chosen model: ``epoch``, ``selected_by`` (``"val accuracy"``...),
            ``val`` and ``test`` metrics (``test`` None without a test split).
        seconds (dict): wall time of ``cache``, ``probe``, ``finetune`` and ``test``.
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
    test_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    selected_epoch: int = 0
    final: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        r"""JSON-able: probe, per-epoch (validation) and final (validation and test) metrics."""
        return {
            "classes": self.classes,
            "n_train": int(len(self.train_index)),
            "n_val": int(len(self.val_index)),
            "n_test": int(len(self.test_index)),
            "linear_probe": self.probe,
            "finetune": self.history,
            "final": self.final,
            "checkpoints": [str(p) for p in self.checkpoints],
            "probe_checkpoint": str(self.probe_checkpoint) if self.probe_checkpoint else None,
            "final_checkpoint": str(self.final_checkpoint) if self.final_checkpoint else None,
            "seconds": self.seconds,
        }


def _cache(model: nn.Module, layer: Optional[str], dataset: Any, indices: np.ndarray,
           batch_size: int, workers: int, flip: bool = False, progress: bool = False, desc: str = ""
           ) -> Tuple[Tensor, Tensor]:
    r"""Model inputs (``layer=None``) or ``layer`` outputs for ``dataset[indices]``, eval mode."""
    from ..data.loader import make_loader

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
    test_index: Optional[Sequence[int]] = None,
    select: str = "accuracy",
    groups: Optional[Sequence] = None,
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
    (5) after each epoch, score the validation split and write a checkpoint; (6) keep the
    epoch with the best validation ``select`` metric (the earliest among ties) as the final
    model; (7) only then read the test images (when ``test_index`` is given), once, and
    score the probe and the final model on them. Validation figures of the chosen model are
    optimistic (it was chosen on them); its test figures are not.

    Args:
        model (nn.Module): a pretrained model (changed in place: new head, trained tail).
        dataset: an :class:`~captum_topk.data.ImageDataset` (with the preprocessing as its
            transform) or any dataset of ``(image, label, id)``.
        train_index, val_index (sequence of int): the split (see
            :func:`~captum_topk.transfer.split.train_val_test_split`): train fits, validation
            chooses the epoch.
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
        test_index (sequence of int, optional): the test split, scored once at the end.
        select (str): how the final epoch is chosen on the validation split:
            ``"accuracy"`` (default), ``"balanced_accuracy"``, ``"loss"`` (lowest), or
            ``"last"`` (no choice: the last epoch).
        groups (sequence, optional): group of each dataset item (e.g.
            :func:`~captum_topk.data.elpv.elpv_modules`): the probe's cross-validation folds
            keep groups whole.

    Returns:
        FinetuneResult

    Example::

        >>> model, info = load_model("mobilenet_v2-imagenet")
        >>> ds = elpv_dataset(make_transform(112, resize_size=112))
        >>> tr, va, te = train_val_test_split(ds.labels, 0.2, 0.2, groups=elpv_modules())
        >>> res = finetune(model, ds, tr, va, ds.classes, unfreeze=5, epochs=4, test_index=te,
        ...                out="checkpoints/mobilenet_v2-elpv-finetuned.pt")
        >>> res.selected_epoch, res.final["val"]["accuracy"], res.final["test"]["accuracy"]
    """
    t0 = time.monotonic()
    classes = [str(c) for c in classes]
    k = len(classes)
    train_index, val_index, test_index = _check_split(train_index, val_index, test_index)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}.")
    if select not in _SELECT:
        raise ValueError(f"select must be one of {', '.join(_SELECT)}, got {select!r}.")
    frozen, trained = _split_blocks(model, unfreeze)

    # (1) the new head; the view runs the trained tail on the cached frozen part's output
    torch.manual_seed(seed)
    head_name = replace_head(model, k, seed=seed)
    head = model.get_submodule(head_name)
    model.eval()
    view = _tail_view(model, frozen)
    boundary = frozen[-1] if frozen else None

    # (2) cache the frozen part's output (train and validation only: test waits for the end)
    cache = functools.partial(_cache, model, boundary, dataset, batch_size=batch_size, workers=workers,
                              progress=progress)
    tr_x, tr_y = cache(train_index, desc="cache train")
    va_x, va_y = cache(val_index, desc="cache val")
    if (tr_y < 0).any() or (tr_y >= k).any():
        raise ValueError(f"Training labels must lie in [0, {k}) for classes {classes}.")
    _check_chain(model, view, dataset, val_index, va_x, boundary, trained)
    if flip:  # the flipped copies after the plain ones: the probe fits on tr_x[:len(train_index)]
        fl_x, fl_y = cache(train_index, flip=True, desc="cache flipped")
        tr_x, tr_y = torch.cat([tr_x, fl_x]), torch.cat([tr_y, fl_y])
    t_cache = time.monotonic()

    # (3) linear probe on the classifier's input, unflipped training images only (so that
    # no image and its mirror land in different cross-validation folds)
    n_plain = len(train_index)
    train_groups = None if groups is None else np.asarray(groups)[train_index]
    probe_info, probe_val = _fit_probe(view, head, tr_x[:n_plain], tr_y[:n_plain], va_x, va_y, k,
                                       probe_l2, seed, train_groups, 2 * batch_size)
    probe = {**probe_info, "val": probe_val, "test": None}
    probe_model = copy.deepcopy(model).eval()
    t_probe = time.monotonic()

    out_path = Path(out) if out is not None else None
    split = {"train_index": train_index.tolist(), "val_index": val_index.tolist(),
             "test_index": test_index.tolist(), "seed": seed, "grouped": groups is not None}
    base_meta = {"classes": classes, **(meta or {}), "unfreeze": len(trained),
                 "trained_blocks": trained, "head": head_name, "split": split}
    probe_ckpt = None
    if out_path is not None:
        probe_ckpt = _checkpoint(probe_model, _probe_path(out_path), base_meta, epoch=0,
                                 stage="linear_probe", metrics={"val": probe_val,
                                                                "train": probe_info["train"]})

    # (4) fine-tune the tail and the head; (5) score and checkpoint each epoch; (6) keep the
    # epoch chosen on validation
    save_epoch = None if out_path is None else (
        lambda epoch, metrics: _checkpoint(model, _epoch_path(out_path, epoch), base_meta, epoch=epoch,
                                           stage="finetune", metrics=metrics))
    history, ckpts, best_epoch = _finetune_epochs(
        model, view, _optimizer(model, head, frozen, optimizer, lr, head_lr, weight_decay),
        tr_x, tr_y, va_x, va_y, k, epochs=epochs, batch_size=batch_size, train_bn=train_bn,
        select=select, seed=seed, save_epoch=save_epoch, on_epoch_end=on_epoch_end, progress=progress)
    model.eval()
    t_end = time.monotonic()
    selected_by = "last epoch" if select == "last" else f"val {select}"
    final = {"epoch": best_epoch, "selected_by": selected_by,
             "val": history[best_epoch - 1]["val"] if best_epoch else probe_val, "test": None}

    # (7) the test split, looked at once, after every choice is made
    if len(test_index):
        te_x, te_y = cache(test_index, desc="cache test")
        probe["test"] = classification_metrics(
            _logits(_tail_view(probe_model, frozen), te_x, 2 * batch_size), te_y, k)
        final["test"] = classification_metrics(_logits(view, te_x, 2 * batch_size), te_y, k)
    t_test = time.monotonic()
    final_ckpt = None
    if out_path is not None:
        probe_ckpt, final_ckpt = _final_checkpoints(model, probe_model, out_path, base_meta, probe,
                                                    final, has_test=len(test_index) > 0)
    result = FinetuneResult(
        model=model, probe_model=probe_model, probe=probe,
        history=history, checkpoints=ckpts, probe_checkpoint=probe_ckpt,
        final_checkpoint=final_ckpt, classes=classes, train_index=train_index,
        val_index=val_index, test_index=test_index, selected_epoch=best_epoch, final=final,
        seconds={"cache": t_cache - t0, "probe": t_probe - t_cache, "finetune": t_end - t_probe,
                 "test": t_test - t_end},
    )
    if out_path is not None:
        atomic_write_text(out_path.with_suffix(".json"), json.dumps(
            {**result.summary(), "meta": meta or {}}, indent=1))
    return result


def _check_split(train_index: Sequence[int], val_index: Sequence[int],
                 test_index: Optional[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The three splits as int64 arrays (test empty when None), refused unless train and
    validation hold images and no two splits share one."""
    train_index = np.asarray(train_index, dtype=np.int64)
    val_index = np.asarray(val_index, dtype=np.int64)
    test_index = np.zeros(0, dtype=np.int64) if test_index is None else np.asarray(
        test_index, dtype=np.int64)
    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError("Both the training and the validation split need images.")
    for a, b, what in ((train_index, val_index, "train and validation"),
                       (train_index, test_index, "train and test"),
                       (val_index, test_index, "validation and test")):
        shared = np.intersect1d(a, b)
        if len(shared):
            raise ValueError(f"The {what} splits share {len(shared)} image(s) (e.g. index "
                             f"{int(shared[0])}): give disjoint splits (train_val_test_split).")
    return train_index, val_index, test_index


def _split_blocks(model: nn.Module, unfreeze: Union[int, str]) -> Tuple[List[str], List[str]]:
    r"""``(frozen, trained)`` block names: the last ``unfreeze`` of :func:`model_blocks` train."""
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
    return blocks[: len(blocks) - n_train_blocks], blocks[len(blocks) - n_train_blocks:]


def _check_chain(model: nn.Module, view: nn.Module, dataset: Any, val_index: np.ndarray,
                 va_x: Tensor, boundary: Optional[str], trained: Sequence[str]) -> None:
    r"""Refuse a model whose blocks do not form a chain: the tail view run on the cached
    boundary output of a few validation images must reproduce the model's output."""
    with torch.no_grad():
        images = _cache(model, None, dataset, val_index[: min(4, len(val_index))], 4, 0, False,
                        False, "")[0]
        if not torch.allclose(view(va_x[: len(images)]), model(images), rtol=1e-4, atol=1e-4):
            raise ValueError(
                f"The blocks of {type(model).__name__} do not form a chain (running "
                f"{trained[0]}... on the cached output of {boundary} does not reproduce the "
                "model's output); use unfreeze='all'."
            )


def _fit_probe(view: nn.Module, head: nn.Module, tr_x: Tensor, tr_y: Tensor, va_x: Tensor,
               va_y: Tensor, k: int, l2: Optional[float], seed: int, groups: Optional[np.ndarray],
               batch_size: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    r"""Fit the linear probe on the classifier's input (:func:`fit_linear_head`), copy it into
    ``head`` and score it on the validation items; returns ``(fit info, validation metrics)``."""
    feats_tr = _head_input(view, head, tr_x, batch_size)
    feats_va = _head_input(view, head, va_x, batch_size)
    probe_head, info = fit_linear_head(feats_tr, tr_y, k, l2=l2, seed=seed, groups=groups)
    with torch.no_grad():
        head.weight.copy_(probe_head.weight.view_as(head.weight))
        head.bias.copy_(probe_head.bias)
        val = classification_metrics(probe_head(feats_va.float()), va_y, k)
    return info, val


def _optimizer(model: nn.Module, head: nn.Module, frozen: Sequence[str], optimizer: str,
               lr: float, head_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    r"""The optimizer of the trained blocks (at ``lr``) and of the head (at ``head_lr``); the
    frozen blocks' parameters are left out."""
    head_params = list(head.parameters())
    head_ids = {id(p) for p in head_params}
    frozen_ids = {id(p) for name in frozen for p in model.get_submodule(name).parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids and id(p) not in frozen_ids]
    param_groups = [{"params": body, "lr": lr}, {"params": head_params, "lr": head_lr}]
    if optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}.")


def _train_epoch(view: nn.Module, tr_x: Tensor, tr_y: Tensor, opt: torch.optim.Optimizer,
                 sched: Any, gen: torch.Generator, batch_size: int, train_bn: bool, desc: str,
                 progress: bool) -> Dict[str, Any]:
    r"""One epoch over the cached training items, shuffled by ``gen``; returns the training
    ``loss``, ``accuracy`` and number ``n`` of items seen."""
    view.train()
    if not train_bn:  # keep the pretrained BatchNorm statistics (and the probe's input)
        for m in view.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    order = torch.randperm(len(tr_x), generator=gen)
    seen, correct, loss_sum = 0, 0, 0.0
    bar = tqdm(range(0, len(order), batch_size), desc=desc, unit="step", disable=not progress)
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
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "n": seen}


def _finetune_epochs(
    model: nn.Module, view: nn.Module, opt: torch.optim.Optimizer, tr_x: Tensor, tr_y: Tensor,
    va_x: Tensor, va_y: Tensor, k: int, *, epochs: int, batch_size: int, train_bn: bool,
    select: str, seed: int, save_epoch: Optional[Callable[[int, Dict[str, Any]], Path]],
    on_epoch_end: Optional[Callable[[int, nn.Module, Dict[str, Any]], None]], progress: bool,
) -> Tuple[List[Dict[str, Any]], List[Path], int]:
    r"""``epochs`` epochs of the tail ``view`` on the cached items (cosine learning-rate decay
    to 0 over all steps), each scored on the validation items and saved by ``save_epoch``;
    ``model`` ends with the weights of the epoch chosen by ``select`` (the earliest among
    ties). Returns ``(history, checkpoints, chosen epoch)`` (epoch 0: no epoch ran)."""
    total = max(1, math.ceil(len(tr_x) / batch_size) * epochs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    gen = torch.Generator().manual_seed(seed)
    history: List[Dict[str, Any]] = []
    ckpts: List[Path] = []
    best_epoch, best_state = 0, None
    for epoch in range(1, epochs + 1):
        te = time.monotonic()
        train = _train_epoch(view, tr_x, tr_y, opt, sched, gen, batch_size, train_bn,
                             f"epoch {epoch}/{epochs}", progress)
        model.eval()
        val = classification_metrics(_logits(view, va_x, 2 * batch_size), va_y, k)
        record = {"epoch": epoch, "train": train, "val": val, "lr": [g["lr"] for g in opt.param_groups],
                  "seconds": time.monotonic() - te}
        history.append(record)
        if best_state is None or _better(val, history[best_epoch - 1]["val"], select):
            best_epoch = epoch
            best_state = {name: v.detach().clone() for name, v in model.state_dict().items()}
        if save_epoch is not None:
            ckpts.append(save_epoch(epoch, {"val": val, "train": train}))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, record)
    if best_state is not None:
        model.load_state_dict(best_state)
    return history, ckpts, best_epoch


def _final_checkpoints(model: nn.Module, probe_model: nn.Module, out_path: Path,
                       base_meta: Dict[str, Any], probe: Dict[str, Any], final: Dict[str, Any],
                       has_test: bool) -> Tuple[Path, Path]:
    r"""The final model's checkpoint at ``out_path`` (the selected epoch, with its choice and
    the probe's figures) and the probe's, written again with its test figures when there is a
    test split; returns ``(probe checkpoint, final checkpoint)``."""
    probe_ckpt = _probe_path(out_path)
    if has_test:
        _checkpoint(probe_model, probe_ckpt, base_meta, epoch=0, stage="linear_probe",
                    metrics={"val": probe["val"], "train": probe["train"], "test": probe["test"]})
    final_ckpt = _checkpoint(model, out_path, base_meta, epoch=final["epoch"],
                             stage="finetune" if final["epoch"] else "linear_probe",
                             selection={"epoch": final["epoch"], "selected_by": final["selected_by"]},
                             metrics={"val": final["val"], "test": final["test"],
                                      "linear_probe_val": probe["val"],
                                      "linear_probe_test": probe["test"]})
    return probe_ckpt, final_ckpt


_SELECT = ("accuracy", "balanced_accuracy", "loss", "last")


def _better(new: Dict[str, Any], best: Dict[str, Any], select: str) -> bool:
    r"""Whether validation metrics ``new`` beat ``best`` (strictly: ties keep the earlier)."""
    if select == "last":
        return True
    if select == "loss":
        return new["loss"] < best["loss"]
    return new[select] > best[select]


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
    from ..models.checkpoints import load_checkpoint_state_dict
    from ..models.registry import load_model
    from ..models.info import make_transform

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
