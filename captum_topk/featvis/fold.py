r"""A copy of a model with eval-mode BatchNorm folded into the convolution before it: the same
function (to float rounding), fewer operations per optimisation step.

In eval mode ``BatchNorm2d(Conv2d(x))`` is one affine map per channel, so it can be folded into
the convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). On a CPU this
makes MobileNetV2's forward + input-gradient about 30 % faster, since batch-norm backward is a
large share of it. Only pairs whose order of execution is certain are folded: a ``Conv2d``
immediately followed by a ``BatchNorm2d`` among the children of an ``nn.Sequential`` (as in
torchvision's ``Conv2dNormActivation``, used by MobileNet, EfficientNet, RegNet...). The
model itself is never modified.
"""

from __future__ import annotations

import copy
import warnings
from typing import Collection, List, Optional, Tuple

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def fold_batchnorm(model: nn.Module, keep: Collection[str] = ()) -> Tuple[nn.Module, int]:
    r"""A deep copy of ``model`` in eval mode with every ``Conv2d -> BatchNorm2d`` pair of an
    ``nn.Sequential`` fused into one ``Conv2d`` (the BatchNorm becomes ``nn.Identity``).

    Args:
        model (nn.Module): the model; left unchanged.
        keep (collection of str): dotted module names whose own output must stay exact (the
            layer being visualized): a pair is not folded when its convolution is one of them
            (the convolution's output would change) or its BatchNorm is (it would vanish).

    Returns:
        tuple: ``(copy, n_folded)``; when nothing can be folded, ``(model, 0)`` (no copy).
    """
    named = dict(model.named_modules())
    uses: dict = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        uses[id(mod)] = uses.get(id(mod), 0) + 1
    pairs = []
    hooked: List[str] = []
    for name, mod in named.items():
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod._modules.items())
        for (a, ca), (b, cb) in zip(kids, kids[1:]):
            full_a = f"{name}.{a}" if name else a
            full_b = f"{name}.{b}" if name else b
            if (
                ca is not None and cb is not None and _foldable(ca, cb)
                and full_a not in keep and full_b not in keep
                and uses[id(ca)] == 1 and uses[id(cb)] == 1  # not shared with another place
            ):
                if _hooked(ca) or _hooked(cb):  # the hooks must see what they were put on
                    hooked.append(full_a if _hooked(ca) else full_b)
                else:
                    pairs.append((name, a, b))
    if hooked:
        warnings.warn(
            f"{len(hooked)} Conv2d -> BatchNorm2d pair(s) not folded because hooks sit on them "
            f"({', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}): folding would change "
            "what those hooks see (leftovers of another library? remove them with "
            "handle.remove()). Visualization stays correct, only slower; fold_bn=False silences this.",
            UserWarning, stacklevel=3)
    if not pairs:
        return model, 0
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # a model that cannot be copied is visualized as it is
        warnings.warn(f"BatchNorm not folded: the model cannot be copied ({type(exc).__name__}: {exc}); "
                      "visualizing the model itself (correct, only slower).", UserWarning, stacklevel=3)
        return model, 0
    clone.eval()
    cloned = dict(clone.named_modules())
    for seq_name, a, b in pairs:
        seq: Optional[nn.Module] = cloned.get(seq_name)
        conv, bn = seq._modules[a], seq._modules[b]
        seq._modules[a] = fuse_conv_bn_eval(conv, bn)
        seq._modules[b] = nn.Identity()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone, len(pairs)
