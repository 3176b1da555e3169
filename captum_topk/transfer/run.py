r"""``captum-topk finetune``: a whole transfer run (data, probe, fine-tuning, checkpoints) with the default recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union
import numpy as np
from .finetune import FinetuneResult, finetune
from .split import stratified_split, train_val_test_split
from ..utils.files import PathLike



def _labelled_dataset(data: str, task: str, transform: Callable
                      ) -> Tuple[Any, str, Optional[np.ndarray]]:
    r"""The dataset, its short name, and the group of each item (ELPV: its module) or None."""
    if data == "elpv":
        from ..data.elpv import elpv_dataset, elpv_modules

        return elpv_dataset(transform, task=task), "elpv", elpv_modules()
    from ..data.folder import image_folder

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
    return ds, root.name, None


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
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    grouped: bool = True,
    select: str = "accuracy",
    evaluate_test: bool = True,
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

    The data are split three ways (:func:`train_val_test_split`, stratified by class): the
    probe's L2 is cross-validated on train, the epoch is chosen on validation (``select``),
    the test split is scored once at the end. ELPV is split by module (whole solar panels,
    :func:`~captum_topk.data.elpv.elpv_modules`) unless ``grouped=False``; a folder carries
    no grouping and is split by image.

    Args:
        model (str), checkpoint (str, optional): as :func:`captum_topk.models.load_model`.
        data (str): ``"elpv"`` (the packaged solar-cell set) or a folder with one
            sub-folder of images per class.
        task (str): ELPV task, ``"binary"`` or ``"4class"``.
        input_size (int), resize_size (int, optional): preprocessing.
        val_fraction (float), test_fraction (float): shares of the validation and test
            splits (approximate when grouped: modules are indivisible).
        grouped (bool): split ELPV by module (default) rather than by cell.
        select (str): the validation metric that picks the epoch (see :func:`finetune`).
        evaluate_test (bool): score the test split at the end (default). False holds it
            back (its indices are still recorded in the checkpoints' ``split``), for a
            comparison of several recipes on validation whose winner alone is then scored
            on test (:func:`~captum_topk.transfer.evaluate.evaluate`).
        max_images (int, optional): a stratified subset of this many images (faster runs).
        out (str, optional): final checkpoint; default
            ``checkpoints/<arch>-<dataset>-finetuned.pt``.
        others: see :func:`finetune` and :func:`stratified_split`.

    Returns:
        FinetuneResult
    """
    from ..models.registry import list_models, load_model
    from ..models.info import make_transform

    net, info = load_model(model, checkpoint=checkpoint)
    resize = int(resize_size or input_size)
    transform = make_transform(input_size, resize, info.mean, info.std)
    dataset, data_name, groups = _labelled_dataset(data, task, transform)
    if max_images is not None and max_images < len(dataset):
        if max_images < 8:
            raise ValueError(f"max_images must be at least 8, got {max_images}.")
        _, keep = stratified_split(dataset.labels, max_images / len(dataset), seed=seed + 1)
        dataset = dataset.subset(keep.tolist())
        groups = None if groups is None else groups[keep]
    if not grouped:
        groups = None
    train_idx, val_idx, test_idx = train_val_test_split(
        dataset.labels, val_fraction, test_fraction, seed=seed, groups=groups)
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
                     "val_fraction": val_fraction, "test_fraction": test_fraction,
                     "grouped_by": "module" if groups is not None else None, "select": select,
                     "max_images": max_images, "flip": flip,
                     "train_bn": train_bn, "optimizer": optimizer, "probe_l2": probe_l2,
                     "seed": seed},
    }
    if not evaluate_test:
        meta["held_back_test_index"] = test_idx.tolist()
    return finetune(net, dataset, train_idx, val_idx, dataset.classes, unfreeze=unfreeze,
                    epochs=epochs, lr=lr, head_lr=head_lr, weight_decay=weight_decay,
                    batch_size=batch_size, flip=flip, train_bn=train_bn, optimizer=optimizer,
                    probe_l2=probe_l2, out=out, meta=meta, seed=seed, workers=workers,
                    progress=progress, test_index=test_idx if evaluate_test else None,
                    select=select, groups=groups)
