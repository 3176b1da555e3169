r"""The dataset a run mines (packaged photos, an ImageNet val folder or any image folder) and a JSON descriptor that reopens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional
from ..data.demo import demo_images
from ..data.folder import image_folder
from ..data.imagenet import imagenet_val
from ..utils.files import PathLike



def open_dataset(data: Optional[PathLike], transform: Optional[Callable]):
    r"""The dataset a run mines: packaged photos (``None``), an ImageNet val folder
    (``ILSVRC2012_val_*.JPEG`` files) or any image folder.

    Returns:
        (dataset, descriptor): ``descriptor`` is JSON-able and reopens the same dataset.
    """
    if data is None or str(data) == "demo":
        return demo_images(transform=transform), {"kind": "demo"}
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {root} does not exist (or is not a folder).")
    if any(p.name.upper().startswith("ILSVRC2012_VAL_") for p in root.iterdir()):
        return imagenet_val(root, transform=transform), {"kind": "imagenet_val", "root": str(root.resolve())}
    return image_folder(root, transform=transform), {"kind": "folder", "root": str(root.resolve())}


def _reopen(descriptor: Dict[str, Any], transform: Optional[Callable]):
    kind = descriptor.get("kind")
    if kind == "demo":
        return demo_images(transform=transform)
    if kind == "imagenet_val":
        return imagenet_val(descriptor["root"], transform=transform)
    return image_folder(descriptor["root"], transform=transform)
