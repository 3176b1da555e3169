r"""Image datasets for mining: real photos shipped in packages (:mod:`.demo`), folders
(:mod:`.folder`), ImageNet validation (:mod:`.imagenet`), ELPV solar cells (:mod:`.elpv`), all
:class:`~.dataset.ImageDataset`; decoding (:mod:`.images`) within size limits (:mod:`.limits`),
batching that skips images failing to load (:mod:`.loader`, :mod:`.failures`); the JSON descriptor
that reopens a run's dataset and its fingerprint (:mod:`.descriptor`)."""

from .dataset import ImageDataset
from .demo import DEFAULT_DEMO_GROUPS, DEMO_GROUPS, demo_images
from .elpv import elpv_available, elpv_dataset, elpv_modules
from .folder import image_folder
from .imagenet import imagenet_val
from .failures import LoadFailure, SkippedImage
from .images import IMAGE_EXTENSIONS, to_rgb
from .limits import DEFAULT_LIMITS, ImageLimits, ImageRejected
from .loader import GuardedDataset, ImageLoader, LoaderBatch, collate, make_loader

__all__ = ["ImageDataset", "to_rgb", "demo_images", "image_folder", "imagenet_val", "elpv_dataset",
           "elpv_modules", "elpv_available", "collate", "make_loader", "IMAGE_EXTENSIONS", "DEMO_GROUPS",
           "DEFAULT_DEMO_GROUPS", "ImageLimits", "DEFAULT_LIMITS", "ImageRejected",
           "SkippedImage", "LoadFailure", "LoaderBatch", "ImageLoader", "GuardedDataset"]
