r"""Models: built-ins with real ImageNet weights shipped in packages (:mod:`.builtin`), any
torchvision architecture with a user checkpoint (:mod:`.checkpoints`, always
``weights_only=True``), what a model expects (:mod:`.info`) and its anatomy (:mod:`.anatomy`)."""

from .anatomy import final_linear, model_blocks, replace_head
from .checkpoints import load_checkpoint_state_dict
from .info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, imagenet_categories, make_transform
from .registry import list_models, load_model

__all__ = ["ModelInfo", "load_model", "list_models", "imagenet_categories", "make_transform",
           "load_checkpoint_state_dict", "IMAGENET_MEAN", "IMAGENET_STD", "model_blocks",
           "final_linear", "replace_head"]
