r"""Feature visualizations kept in a folder, one file per channel, computed only when missing.

Layout::

    FOLDER/<layer slug>/<settings key>/settings.json   the settings and weights digest (for people)
    FOLDER/<layer slug>/<settings key>/ch<C>.pt        {"images": (samples, 3, S, S) float32,
                                                        "values": (samples,), "channel", "layer", "key"}
    FOLDER/<layer slug>/<settings key>/ch<C>.png       the channel's image(s), side by side
    FOLDER/<layer slug>/<settings key>/dir<D>.pt       a direction's, D the digest of its values
                                                       (+ "direction": its (C,) values)

The settings key is a digest of the weights digest, the layer name and every setting that
changes the images (size, steps, seed, objective, lr, samples, diversity, mean, std, layout,
decorrelate, ``cossim_pow`` for directions), with the transforms and the parametrization
entered as their own configurations (:meth:`Transform.config
<captum_topk.featvis.transforms.Transform.config>`, :meth:`FourierImage.config
<captum_topk.featvis.param.FourierImage.config>`): a changed default changes the key. A
direction is keyed by its values, so the same direction is computed once whatever set it
comes in. Images are cached only when they do not depend on their batch (``batch_size``
at most ``samples``, :func:`~captum_topk.featvis.visualize`). Files are written atomically
(:mod:`captum_topk.utils.files`) and read with ``torch.load(weights_only=True)``, so a crashed
or concurrent run never leaves a half-written unit, and a cache file cannot run code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from ..capture.hooks import LayerSpec, resolve_layers
from ..core.sources.layouts import PREFIX_SUFFIX, base_layer
from ..utils.files import PathLike, atomic_torch_save, atomic_write_text
from ..utils.naming import slug
from ..viz.plot import save_png, to_display
from .param import FourierImage
from .render import FeatureVisualization, _normalisation, _Units, default_size, direction_digest, visualize
from .transforms import default_transforms

__all__ = ["cached_visualize", "cached_channels", "cache_dir", "model_digest"]

#: Keyword arguments of :func:`visualize` accepted here; batch_size (at most samples), fold_bn,
#: progress and device do not change the images and are not part of the key.
_ALLOWED = {"info", "mean", "std", "size", "steps", "seed", "objective", "lr", "batch_size",
            "samples", "diversity", "layout", "layout_key", "transforms", "decorrelate",
            "cossim_pow", "fold_bn", "progress", "device"}


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
    r"""Everything that decides the images, JSON-able: the key's content (and settings.json)."""
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
    samples = int(settings.get("samples", 1))
    if settings.get("batch_size") is not None and int(settings["batch_size"]) > samples:
        raise TypeError(f"batch_size={settings['batch_size']} optimises several units in one forward, so "
                        "their images depend on which units share it: the cache cannot hold them. Leave "
                        "batch_size out (each unit alone, exactly reproducible) or call visualize() directly.")
    mean, std = _normalisation(settings.get("info"), settings.get("mean"), settings.get("std"))
    transforms = settings.get("transforms")
    keyed = {
        "weights_digest": str(weights_digest),
        "layer": name,
        "size": int(settings.get("size", 128)),
        "steps": int(settings.get("steps", 256)),
        "seed": int(settings.get("seed", 0)),
        "objective": objective,
        "lr": float(settings.get("lr", 0.05)),
        "samples": samples,
        "diversity": float(settings.get("diversity", 0.0)),
        "mean": list(mean),
        "std": list(std),
        "transforms": (default_transforms() if transforms is None else transforms).config(),
        "param": FourierImage.config(decorrelate=bool(settings.get("decorrelate", True))),
        "layout": settings.get("layout_key") or "auto",
    }
    if float(settings.get("cossim_pow", 0.0)):
        keyed["cossim_pow"] = float(settings["cossim_pow"])
    return keyed


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
    if settings.get("size") is None:  # what visualize will use
        settings = {**settings, "size": default_size(model)}
    keyed = _key_settings(name, weights_digest, settings)
    key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return name, keyed, Path(folder) / slug(name, keep="_.-") / key


def _channel_file(d: Path, channel: int) -> Path:
    return d / f"ch{int(channel)}.pt"


def _unit_files(d: Path, units: _Units) -> List[Path]:
    r"""One file per unit: ``ch<C>.pt`` for a channel, ``dir<digest>.pt`` for a direction."""
    if units.vectors is None:
        return [_channel_file(d, c) for c in units.ids]
    return [d / f"dir{direction_digest(v)}.pt" for v in units.vectors]


def _layer_spec(layer: Any, units: _Units) -> Any:
    if layer is None and units.layer is None:
        raise ValueError("No layer given: pass layer=, or directions that carry their .layer.")
    return units.layer if layer is None else layer


def cached_channels(folder: PathLike, model: nn.Module, layer: LayerSpec, channels: Any, *,
                    weights_digest: str, **settings: Any) -> List[int]:
    r"""Which of ``channels`` are already in the cache (nothing is computed).

    Args:
        channels: channels (integers of any kind) or directions, as in :func:`cached_visualize`.
    Returns:
        list of int: in the order of ``channels`` (for directions: the indices of those cached).
    """
    units = _Units.parse(channels)
    d = cache_dir(folder, model, _layer_spec(layer, units), weights_digest=weights_digest, **settings)
    return [u for u, f in zip(units.ids, _unit_files(d, units)) if f.is_file()]


def _load(path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["images"], data["values"]


def cached_visualize(
    folder: PathLike,
    model: nn.Module,
    layer: LayerSpec,
    channels: Any,
    *,
    weights_digest: str,
    **settings: Any,
) -> FeatureVisualization:
    r""":func:`~captum_topk.featvis.visualize` with a folder cache: units already there are
    loaded, the missing ones are computed and stored, one file per unit.

    A unit's images do not depend on which other units are requested (each image has its own
    random generator, seeded from ``(seed, unit, sample)``, and each unit goes through the model
    in a forward of its own), so units computed in different calls fit together.

    Args:
        folder (str or PathLike): the cache root (created when missing).
        model (nn.Module): the model.
        layer (str or nn.Module): the layer (None: the directions' ``.layer``).
        channels: channels (an integer or a sequence of integers of any kind) or directions (a
            float ``(K, C)`` tensor, or an object with ``.directions`` and ``.layer``, e.g. a
            ``Concepts``), as in :func:`~captum_topk.featvis.visualize`.
        weights_digest (str): identifies the weights; a different digest is a different cache.
        **settings: keyword arguments of :func:`~captum_topk.featvis.visualize`; ``objective``
            must be a name, ``layout=`` a name or a function with ``layout_key=`` (a name for
            it), and ``batch_size`` at most ``samples``.

    Returns:
        FeatureVisualization: as from :func:`visualize`, units in the order given; ``seconds``
        is the time spent computing (0 when everything was cached).

    Example::

        >>> vis = cached_visualize("results/featvis", model, "features.7", [3, 12],
        ...                        weights_digest=model_digest(model), info=info, size=64, steps=32)
    """
    units = _Units.parse(channels)
    if not units.ids:
        raise ValueError("No channels given: pass a channel index or a list of them.")
    if len(set(units.ids)) != len(units.ids):
        raise ValueError(f"Channels must be distinct, got {units.ids}.")
    layer = _layer_spec(layer, units)
    name, keyed, d = _cache_entry(folder, model, layer, weights_digest, settings)
    files = _unit_files(d, units)
    missing = [u for u, f in zip(units.ids, files) if not f.is_file()]
    seconds = 0.0
    if missing:
        run = {k: v for k, v in settings.items() if k != "layout_key"}
        todo = missing if units.vectors is None else units.vectors[missing]
        vis = visualize(model, layer, todo, **run)
        seconds = vis.seconds
        d.mkdir(parents=True, exist_ok=True)
        settings_file = d / "settings.json"
        if not settings_file.is_file():
            atomic_write_text(settings_file, json.dumps(keyed, indent=2, sort_keys=True) + "\n")
        for i, u in enumerate(missing):
            imgs, vals = vis.of(vis.channels[i]).contiguous(), vis.values_of(vis.channels[i]).contiguous()
            entry = {"images": imgs, "values": vals, "channel": u, "layer": name, "key": d.name}
            if units.vectors is not None:
                entry["direction"] = units.vectors[u].contiguous()
            path = files[units.ids.index(u)]
            atomic_torch_save(entry, path)
            save_png(np.concatenate(list(to_display(imgs)), axis=1), path.with_suffix(".png"))
    images, values = [], []
    for f in files:
        imgs, vals = _load(f)
        images.append(imgs)
        values.append(vals)
    objective = keyed["objective"]
    out_settings = {k: v for k, v in keyed.items() if k not in ("weights_digest", "layer")}
    out_settings["cache"] = str(d)
    return FeatureVisualization(images=torch.cat(images), values=torch.cat(values), channels=units.ids,
                                layer=name, objective=objective, samples=keyed["samples"],
                                settings=out_settings, seconds=seconds, directions=units.vectors)
