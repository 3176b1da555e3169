r"""Feature visualizations kept in a folder, one file per channel, computed only when missing.

Layout::

    FOLDER/<layer slug>/<settings key>/settings.json   the settings and weights digest (for people)
    FOLDER/<layer slug>/<settings key>/ch<C>.pt        {"images": (samples, 3, S, S) float32,
                                                        "values": (samples,), "channel", "layer", "key"}
    FOLDER/<layer slug>/<settings key>/ch<C>.png       the channel's image(s), side by side

The settings key is a digest of the weights digest, the layer name and every setting that
changes the images (size, steps, seed, objective, lr, samples, diversity, mean, std,
transforms, decorrelate). Files are written atomically (:mod:`captum_topk.utils.files`) and
read with ``torch.load(weights_only=True)``, so a crashed or concurrent run never leaves a
half-written channel, and a cache file cannot run code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..capture.hooks import LayerSpec, resolve_layers
from ..core.sources.layouts import PREFIX_SUFFIX, base_layer
from ..utils.files import PathLike, atomic_torch_save, atomic_write_text
from ..utils.naming import slug
from ..viz.plot import save_png, to_display
from .render import FeatureVisualization, _normalisation, visualize
from .transforms import default_transforms

__all__ = ["cached_visualize", "cached_channels", "cache_dir", "model_digest"]

#: Keyword arguments of :func:`visualize` accepted here; batch_size, fold_bn, progress and
#: device do not change the images and are not part of the key.
_ALLOWED = {"info", "mean", "std", "size", "steps", "seed", "objective", "lr", "batch_size",
            "samples", "diversity", "layout", "layout_key", "transforms", "decorrelate",
            "fold_bn", "progress", "device"}


def model_digest(model: nn.Module) -> str:
    r"""SHA-1 of a model's ``state_dict`` (names, shapes, dtypes and bytes): a weights digest
    for models that do not come from one checkpoint file (else use
    :func:`captum_topk.utils.files.file_digest` of the file).

    Returns:
        str: 40 hex digits.
    """
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _key_settings(name: str, weights_digest: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(settings) - _ALLOWED
    if unknown:
        raise TypeError(f"Unknown setting(s) {', '.join(sorted(unknown))}; visualize() takes "
                        f"{', '.join(sorted(_ALLOWED))}.")
    objective = settings.get("objective", "channel")
    if not isinstance(objective, str):
        raise TypeError("cached_visualize needs a named objective ('channel', 'neuron', '-channel', "
                        "'-neuron'): a callable cannot be keyed. Call visualize() directly for it.")
    if isinstance(settings.get("layout"), str):  # the miner's layouts: their name is the key
        settings = {**settings, "layout_key": settings["layout"]}
    if settings.get("layout") is not None and not settings.get("layout_key"):
        raise TypeError("layout= is a function that cannot be keyed: also pass layout_key='a name "
                        "for it' (e.g. 'nhwc').")
    mean, std = _normalisation(settings.get("info"), settings.get("mean"), settings.get("std"))
    transforms = settings.get("transforms")
    return {
        "weights_digest": str(weights_digest),
        "layer": name,
        "size": int(settings.get("size", 128)),
        "steps": int(settings.get("steps", 256)),
        "seed": int(settings.get("seed", 0)),
        "objective": objective,
        "lr": float(settings.get("lr", 0.05)),
        "samples": int(settings.get("samples", 1)),
        "diversity": float(settings.get("diversity", 0.0)),
        "mean": list(mean),
        "std": list(std),
        "transforms": repr(default_transforms() if transforms is None else transforms),
        "decorrelate": bool(settings.get("decorrelate", True)),
        "layout": settings.get("layout_key"),
    }


def cache_dir(folder: PathLike, model: nn.Module, layer: LayerSpec, *, weights_digest: str,
              **settings: Any) -> Path:
    r"""The folder that holds one layer's visualizations for these weights and settings.

    Args:
        folder (str or PathLike): the cache root.
        model, layer: as in :func:`~captum_topk.featvis.visualize`.
        weights_digest (str): identifies the weights (e.g. a checkpoint's
            :func:`~captum_topk.utils.files.file_digest`, or :func:`model_digest`).
        **settings: keyword arguments of :func:`~captum_topk.featvis.visualize`.

    Returns:
        pathlib.Path: ``folder / <layer slug> / <key>``.
    """
    return _cache_entry(folder, model, layer, weights_digest, settings)[2]


def _cache_entry(folder: PathLike, model: nn.Module, layer: LayerSpec, weights_digest: str,
                 settings: Dict[str, Any]) -> Tuple[str, Dict[str, Any], Path]:
    r"""``(layer name, keyed settings, folder)`` of :func:`cache_dir`; a token layer's prefix
    tokens (``"<layer>[prefix]"``) are keyed apart from its patches."""
    if isinstance(layer, str) and layer.endswith(PREFIX_SUFFIX):
        name = resolve_layers(model, base_layer(layer))[0][0] + PREFIX_SUFFIX
    else:
        name = resolve_layers(model, layer)[0][0]
    keyed = _key_settings(name, weights_digest, settings)
    key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return name, keyed, Path(folder) / slug(name, keep="_.-") / key


def _channel_file(d: Path, channel: int) -> Path:
    return d / f"ch{int(channel)}.pt"


def cached_channels(folder: PathLike, model: nn.Module, layer: LayerSpec, channels: Sequence[int], *,
                    weights_digest: str, **settings: Any) -> List[int]:
    r"""Which of ``channels`` are already in the cache (nothing is computed).

    Returns:
        list of int: in the order of ``channels``.
    """
    d = cache_dir(folder, model, layer, weights_digest=weights_digest, **settings)
    return [int(c) for c in channels if _channel_file(d, c).is_file()]


def _load(path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["images"], data["values"]


def cached_visualize(
    folder: PathLike,
    model: nn.Module,
    layer: LayerSpec,
    channels: Union[int, Sequence[int]],
    *,
    weights_digest: str,
    **settings: Any,
) -> FeatureVisualization:
    r""":func:`~captum_topk.featvis.visualize` with a folder cache: channels already there are
    loaded, the missing ones are computed (in one batch) and stored, one file per channel.

    A channel's images do not depend on which other channels share its batch (each image has
    its own random generator, seeded from ``(seed, channel, sample)``), so channels computed
    in different calls fit together.

    Args:
        folder (str or PathLike): the cache root (created when missing).
        model (nn.Module): the model.
        layer (str or nn.Module): the layer.
        channels (int or sequence of int): the channels.
        weights_digest (str): identifies the weights; a different digest is a different cache.
        **settings: keyword arguments of :func:`~captum_topk.featvis.visualize`; ``objective``
            must be a name, and ``layout=`` needs ``layout_key=`` (a name for it).

    Returns:
        FeatureVisualization: as from :func:`visualize`, channels in the order given;
        ``seconds`` is the time spent computing (0 when everything was cached).

    Example::

        >>> vis = cached_visualize("results/featvis", model, "features.7", [3, 12],
        ...                        weights_digest=model_digest(model), info=info, size=64, steps=32)
    """
    chans = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if len(set(chans)) != len(chans):
        raise ValueError(f"Channels must be distinct, got {chans}.")
    name, keyed, d = _cache_entry(folder, model, layer, weights_digest, settings)
    missing = [c for c in chans if not _channel_file(d, c).is_file()]
    seconds = 0.0
    if missing:
        run = {k: v for k, v in settings.items() if k != "layout_key"}
        vis = visualize(model, layer, missing, **run)
        seconds = vis.seconds
        d.mkdir(parents=True, exist_ok=True)
        settings_file = d / "settings.json"
        if not settings_file.is_file():
            atomic_write_text(settings_file, json.dumps(keyed, indent=2, sort_keys=True) + "\n")
        for c in missing:
            imgs, vals = vis.of(c).contiguous(), vis.values_of(c).contiguous()
            atomic_torch_save({"images": imgs, "values": vals, "channel": c, "layer": name,
                               "key": d.name}, _channel_file(d, c))
            save_png(np.concatenate(list(to_display(imgs)), axis=1), d / f"ch{c}.png")
    images, values = [], []
    for c in chans:
        imgs, vals = _load(_channel_file(d, c))
        images.append(imgs)
        values.append(vals)
    objective = keyed["objective"]
    out_settings = {k: v for k, v in keyed.items() if k not in ("weights_digest", "layer")}
    out_settings["cache"] = str(d)
    return FeatureVisualization(images=torch.cat(images), values=torch.cat(values), channels=chans,
                                layer=name, objective=objective, samples=keyed["samples"],
                                settings=out_settings, seconds=seconds)
