r"""torchvision classification architectures by name (built without weights: nothing is downloaded)."""

from __future__ import annotations

from typing import Callable, List

from torch import nn


def _torchvision_builder(arch: str) -> Callable[..., nn.Module]:
    import torchvision

    return lambda **kw: torchvision.models.get_model(arch, weights=None, **kw)


def _torchvision_classification_names() -> List[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))
