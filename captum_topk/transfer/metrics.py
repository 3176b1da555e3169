r"""Classification metrics of logits against labels (accuracy, balanced accuracy, loss, confusion).
"""

from __future__ import annotations

from typing import Any, Dict, Optional
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F



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
