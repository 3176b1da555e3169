r"""Pretrained models as feature extractors: embeddings (:mod:`.embed`), stratified (and
grouped) train / validation / test splits (:mod:`.split`), the linear probe (:mod:`.linear`),
fine-tuning (:mod:`.finetune`), scoring (:mod:`.evaluate`) and the ``captum-topk finetune`` run
(:mod:`.run`)."""

from ..models.anatomy import final_linear, model_blocks, replace_head
from .embed import embed, load_embeddings, pool_features
from .evaluate import evaluate
from .finetune import CHECKPOINT_FORMAT, FinetuneResult, finetune, load_finetuned
from .linear import fit_linear_head
from .metrics import classification_metrics
from .run import finetune_run
from .split import stratified_split, train_val_test_split

__all__ = ["embed", "load_embeddings", "pool_features", "stratified_split",
           "train_val_test_split", "evaluate", "model_blocks",
           "final_linear", "replace_head", "classification_metrics", "fit_linear_head",
           "FinetuneResult", "finetune", "load_finetuned", "finetune_run", "CHECKPOINT_FORMAT"]
