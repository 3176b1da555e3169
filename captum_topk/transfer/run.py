r"""``captum-topk finetune``: a whole transfer run (data, probe, fine-tuning, checkpoints) with the default recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union
from .finetune import FinetuneResult, finetune
from .split import stratified_split
from ..utils.files import PathLike



def _labelled_dataset(data: str, task: str, transform: Callable) -> Tuple[Any, str]:
    if data == "elpv":
        from ..data.elpv import elpv_dataset

        return elpv_dataset(transform, task=task), "elpv"
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
    from ..models.registry import list_models, load_model
    from ..models.info import make_transform

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
