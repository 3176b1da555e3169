r"""Exact receptive fields of any module graph: traced and confirmed, or measured by
NaN-propagation probing.

Zeiler & Fergus style top-k patches need, for every position ``(y, x)`` of a layer's
``(N, C, h, w)`` output, the rectangle of input pixels that position depends on. Instead of
composing kernel / stride / padding formulas per architecture by hand (which breaks on
branches, concatenations, dilations, ``ceil_mode`` pooling or custom ``forward`` code), the
field comes from the model itself, by one of two methods (``method=``):

**Trace, then confirm** (``"trace"``; the default ``"auto"`` tries it first). The model is
traced with ``torch.fx`` and its graph run once on two images; along it, per-axis
dependency sets are propagated by the rule of every known operation
(:mod:`.trace`, :mod:`.intervals`). The prediction is then *confirmed* by a few NaN probes
(:func:`confirm_predictions`: the clean image and about 14 input rows and 14 columns,
including the first and last ones): every output position each probe reaches must be
exactly the predicted one. About 31 single-image forward passes in all, whatever the input
size. With ``"auto"``, a layer the trace cannot predict (a plain forward function, an
untraceable ``forward``, an unknown operation, a channels-last output) or whose confirmation
disagrees is measured by the full probe below, transparently; ``"trace"`` raises
:class:`~captum_topk.receptive_field.intervals.TraceError` instead. The confirmation runs the
same checks as the full probe (NaN for a finite input, channels-last outputs).

**NaN-propagation probing** (``"probe"``). ``NaN`` survives every operation that structurally reads a
value: a convolution (``NaN * 0 == NaN``, so even a zero weight propagates it), additions
and residual connections, ``torch.cat``, batch norm in eval mode, ReLU / ReLU6 / hardtanh /
clamp, max- and average-pooling, upsampling, ... For an input of size ``(H, W)`` a batch of
``H + W`` probe images is built: image ``i`` holds ``NaN`` in every channel of input row
``i``, image ``H + j`` holds ``NaN`` in input column ``j``; every other pixel is a finite,
fixed pseudo-random background. The model runs (temporarily in eval mode, so that batch
norm neither mixes the batch nor updates its running statistics: every module that runs is
switched, including modules a plain forward function calls, and every ``training`` flag is
restored afterwards; under ``torch.no_grad``; in chunks of ``batch_size`` images; stopped
right after the deepest requested layer) and, for each requested layer,
``isnan(out).any(dim=1)`` says which output positions each probe reached. The rows that
reach ``(y, x)`` are exactly the projection onto the row axis of the set of input pixels
``(y, x)`` depends on, so

- ``top = min`` of those rows and ``bottom = max + 1``; the same for columns,

which is the *exact* bounding box of the dependency set, even when that set is neither a
rectangle nor contiguous (dilated convolutions leave holes). Boxes are clipped to the input
by construction (only real input pixels are probed). A position reached by no probe gets an
empty box ``(0, 0, 0, 0)``. One extra clean image checks that the layer is NaN-free without
probe; otherwise the measurement would be meaningless and a ``ValueError`` is raised. Before
the first probe on a device / dtype, the basic operations are checked to propagate NaN
(they all do in current PyTorch); a ``RuntimeError`` is raised if they do not.

Cost of the full probe: ``H + W + 1`` forward passes up to the deepest requested layer (so
it grows like ``H**3`` for square inputs; NaN arithmetic is also somewhat slower on CPU).
Either way the result is computed once: results are cached in-process (LRU) and on disk
(:mod:`.cache`) under a *structural* signature of the model — the module names, class
qualnames and ``repr`` of the model — plus the layer name, input size,
``attribute_to_layer_input``, input channels, device type and dtype. Weights change neither
the trace nor how NaN propagates, so the cache is shared between differently-initialised or
trained copies of one architecture. A custom module whose ``repr`` hides a structural option (for instance
a stride stored in a plain attribute and applied in ``forward``) would share a cache entry
with differently configured copies: pass ``cache=False`` or call
:func:`clear_receptive_field_cache` for such models.

Limitations: an operation that *drops* NaN (``torch.where(x > 0, x, 0)``,
``torch.nan_to_num``, data-dependent indexing) hides dependencies and makes the measured box
too small (the tracer does not know such operations: those layers are probed); an operation
that *creates* NaN independently of the input is detected by the clean image. ``torch.fx``
patches ``torch.nn.Module.__call__`` process-wide while it traces (tens of milliseconds):
a forward pass run by *another thread* at that moment would be traced too; use
``method="probe"`` where other threads run models concurrently. Outputs must be 4-D ``(N, C, h, w)`` or 2-D ``(N, C)`` (one position, whose
box is normally the whole image).

The ``stride`` of a :class:`ReceptiveField` is measured from neighbouring boxes whose edges are
not clipped by the image; where every box is clipped along an axis (a field larger than the
input) or there is one position, it falls back to the rounded input / output size ratio,
which is then an estimate (e.g. 19 instead of 16 for AlexNet ``features.8`` at 96 px).
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from ..capture.layouts import ChannelsLastError, looks_channels_last
from ..utils.modules import device_dtype, eval_mode, first_conv
from ..capture.hooks import LayerSpec, resolve_layers, run_capture
from ..capture.tokens import split_tokens
from .field import METHODS, ReceptiveField, SizeSpec, _parse_size
from .cache import _CACHE, _CACHE_LOCK, _CACHE_MAXSIZE, _disk_get, _disk_put, _structural_signature
from .intervals import LayoutUnsupported, TraceError, Unsupported
from .trace import ChannelsLastPrediction, Prediction, trace_fields

logger = logging.getLogger("captum_topk.receptive_field")

CONFIRM_PER_AXIS = 14
"""Input rows (and columns) probed to confirm a traced field: the first three, the middle
two, the last three and random others (fixed per size)."""



_NAN_CHECKED: Dict[Tuple[str, torch.dtype], bool] = {}


def receptive_field(
    model: Union[nn.Module, Callable[..., Any]],
    layer: LayerSpec,
    input_size: SizeSpec,
    *,
    attribute_to_layer_input: bool = False,
    batch_size: int = 32,
    in_channels: int | None = None,
    cache: bool = True,
    progress: bool = True,
    method: str = "auto",
) -> ReceptiveField:
    r"""Exact receptive field of every output position of ``layer``.

    See the module docstring for the methods. The model is run in eval mode (each module's
    ``training`` flag is restored afterwards) under ``torch.no_grad``, on the device and in
    the dtype of its first parameter; no hook is left behind, even when the forward raises.

    Args:
        model (nn.Module or Callable): the network (only its structure matters, not its
            weights), or a Captum-style forward function such as a bound method of it (a
            plain function's result is not cached).
        layer (str or nn.Module): dotted name from ``model.named_modules()`` or the module.
        input_size (int or tuple of int): ``H`` (square) or ``(H, W)`` of the model input.
        attribute_to_layer_input (bool, optional): measure the layer's *input* instead of
            its output, as in Captum. Default: False
        batch_size (int, optional): probe images per forward pass. Default: 32
        in_channels (int, optional): channels of the model input; inferred from the first
            ``nn.Conv2d`` in ``model.modules()``, else 3.
        cache (bool, optional): reuse / store the result in the in-process cache keyed by
            the model's structural signature. Default: True
        progress (bool, optional): a progress bar while the full probe runs. Default: True
        method (str, optional): ``"auto"`` (trace and confirm, else the full probe),
            ``"trace"`` (trace and confirm, or raise) or ``"probe"`` (the full NaN probe).
            Both give the same boxes; :attr:`ReceptiveField.method` says which one produced
            a field. ``"auto"`` takes a cached field whatever produced it, an explicit
            method only one it produced (else it measures, and caches the result).
            Default: ``"auto"``

    Returns:
        ReceptiveField: ``boxes`` of shape ``(H_out, W_out, 4)`` (``(1, 1, 4)`` for a 2-D
        ``(N, C)`` output), ``size``, ``stride``, ``input_size``, ``method``.

    Raises:
        ValueError: unknown layer (with the closest names), a 3-D / 5-D / ... output, or an
            output that already contains NaN for a finite input.
        ChannelsLastError: the output looks channels-last ``(N, H, W, C)`` (pass it in
            ``receptive_fields(..., channels_last=)``); where the trace found the layout, its
            ``fields`` holds the field of the permutation ``(N, C, H, W)``, already measured.
        TraceError: ``method="trace"`` and the field could not be traced or confirmed.
        RuntimeError: this PyTorch build does not propagate NaN through basic operations.

    Example::

        >>> import torchvision
        >>> model = torchvision.models.resnet18(weights=None)
        >>> rf = receptive_field(model, "layer1", 64)
        >>> rf.output_size, rf.size, rf.stride
        ((16, 16), (43, 43), (4, 4))
        >>> rf.box(0, 0)
        (0, 0, 22, 22)
        >>> rf.method
        'trace'
    """
    pairs = resolve_layers(model, layer)
    if len(pairs) != 1:
        raise ValueError("receptive_field takes one layer; use receptive_fields for several.")
    return next(
        iter(
            _receptive_fields(
                model, pairs, input_size, attribute_to_layer_input, batch_size, in_channels, cache,
                progress, method,
            ).values()
        )
    )


def receptive_fields(
    model: Union[nn.Module, Callable[..., Any]],
    layers: LayerSpec | Sequence[LayerSpec],
    input_size: SizeSpec,
    *,
    attribute_to_layer_input: bool = False,
    batch_size: int = 32,
    in_channels: int | None = None,
    cache: bool = True,
    progress: bool = True,
    method: str = "auto",
    channels_last: Sequence[LayerSpec] = (),
) -> Dict[str, ReceptiveField]:
    r"""Receptive fields of several layers from one trace (or one probe).

    All layers are traced, confirmed or probed at once and every forward stops after the
    deepest of them, so asking for several layers costs about as much as asking for the
    deepest one. Layers already in the cache are not measured again.

    Args:
        model (nn.Module or Callable): the network or its forward function.
        layers (str, nn.Module or list of them): dotted names or modules.
        input_size (int or tuple of int): ``H`` or ``(H, W)`` of the model input.
        attribute_to_layer_input, batch_size, in_channels, cache, progress, method: as in
            :func:`receptive_field`.
        channels_last (sequence of str or nn.Module): layers among ``layers`` whose 4-D
            output is ``(N, H, W, C)`` (ConvNeXt / Swin internals): their positions are read on
            dimensions 1 and 2.

    Returns:
        dict of str to ReceptiveField: keyed by the dotted layer name, in the order given.

    Example::

        >>> model = torchvision.models.resnet18(weights=None)
        >>> rfs = receptive_fields(model, ["layer1", "layer2", "layer3"], 128)
        >>> {name: rf.size for name, rf in rfs.items()}
        {'layer1': (43, 43), 'layer2': (99, 99), 'layer3': (128, 128)}
    """
    pairs = resolve_layers(model, layers)
    last = {id(m) for _, m in resolve_layers(model, list(channels_last))} if channels_last else set()
    return _receptive_fields(
        model, pairs, input_size, attribute_to_layer_input, batch_size, in_channels, cache, progress,
        method, frozenset(n for n, m in pairs if id(m) in last),
    )


def _receptive_fields(
    model: Union[nn.Module, Callable[..., Any]],
    pairs: List[Tuple[str, nn.Module]],
    input_size: SizeSpec,
    attribute_to_layer_input: bool,
    batch_size: int,
    in_channels: int | None,
    cache: bool,
    progress: bool = True,
    method: str = "auto",
    channels_last: frozenset = frozenset(),
) -> Dict[str, ReceptiveField]:
    if method not in ("auto", *METHODS):
        raise ValueError(f"method must be 'auto', 'trace' or 'probe', got {method!r}.")
    if not callable(model):
        raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}.")
    # The module owning the forward: model itself, or the owner of a bound method. A plain
    # function only exposes the requested layers: they give device / dtype, nothing is
    # cached, and the modules it calls are put in eval mode as they run (eval_mode(catch_calls=True)).
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    owner = owner if isinstance(owner, nn.Module) else None
    scope = nn.ModuleList([m for _, m in pairs]) if owner is None else owner
    size = _parse_size(input_size)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    conv = first_conv(owner)
    channels = int(in_channels) if in_channels is not None else (int(conv[1].in_channels) if conv else 3)
    if channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    device, dtype = device_dtype(scope)
    device = device or torch.device("cpu")

    keys: Dict[str, tuple] = {}
    results: Dict[str, ReceptiveField] = {}
    if cache and owner is not None:
        signature = _structural_signature(owner)
        if model is not owner:  # a bound method: which one matters
            signature += ":" + getattr(model, "__qualname__", repr(model))
        for name, _ in pairs:
            key = (signature, name, size, bool(attribute_to_layer_input), channels,
                   device.type, dtype) + (("NHWC",) if name in channels_last else ())
            keys[name] = key
            with _CACHE_LOCK:
                hit = _CACHE.get(key)
                if hit is not None:
                    _CACHE.move_to_end(key)
            if hit is None:
                hit = _disk_get(key)
                if hit is not None:
                    with _CACHE_LOCK:
                        _CACHE[key] = hit
            if hit is not None and method in ("auto", hit.method):  # an explicit method is honoured
                results[name] = hit

    def remember(key: tuple, rf: ReceptiveField) -> None:
        with _CACHE_LOCK:
            _CACHE[key] = rf
            _CACHE.move_to_end(key)
            while len(_CACHE) > _CACHE_MAXSIZE:
                _CACHE.popitem(last=False)
        _disk_put(key, rf)

    todo = [(n, m) for n, m in pairs if n not in results]
    if todo:
        _check_nan_propagation(device, dtype)
        try:
            fresh = _probe(model, scope, todo, size, channels, attribute_to_layer_input,
                           int(batch_size), device, dtype, progress, method, channels_last)
        except ChannelsLastError as exc:
            if exc.fields is None:
                raise
            # the trace found the layout: keep what was measured (the channels-last layers under
            # the key of their permutation), and give the caller every field of this call
            for name, rf in exc.fields.items():
                if name in keys:
                    remember(keys[name] + (("NHWC",) if name in exc.layers else ()), rf)
            exc.fields = {n: _copy(rf) for n, rf in {**results, **exc.fields}.items()}
            raise
        for name, rf in fresh.items():
            results[name] = rf
            if name in keys:
                remember(keys[name], rf)
    # Copies, so that a caller mutating ``boxes`` cannot corrupt the cache.
    return {name: _copy(results[name]) for name, _ in pairs}


def _copy(rf: ReceptiveField) -> ReceptiveField:
    return ReceptiveField(rf.boxes.clone(), rf.input_size, rf.size, rf.stride, rf.method)


def _check_nan_propagation(device: torch.device, dtype: torch.dtype) -> None:
    """Fail loudly if the ops the probe relies on do not propagate NaN on this device."""
    key = (str(device), dtype)
    if _NAN_CHECKED.get(key):
        return
    x = torch.zeros(1, 2, 5, 5, device=device, dtype=dtype)
    x[0, :, 2, 2] = float("nan")
    zero_w = torch.zeros(2, 2, 3, 3, device=device, dtype=dtype)
    ones = torch.ones(2, device=device, dtype=dtype)
    checks = {
        "relu": lambda t: F.relu(t),
        "relu(inplace)": lambda t: F.relu(t.clone(), inplace=True),
        "relu6": F.relu6,
        "hardtanh": F.hardtanh,
        "clamp": lambda t: t.clamp(0.0, 6.0),
        "max_pool2d": lambda t: F.max_pool2d(t, 3, 1, 1),
        "adaptive_max_pool2d": lambda t: F.adaptive_max_pool2d(t, 1),
        "avg_pool2d": lambda t: F.avg_pool2d(t, 3, 1, 1),
        "conv2d(zero weight)": lambda t: F.conv2d(t, zero_w, padding=1),
        "batch_norm(eval)": lambda t: F.batch_norm(t, ones * 0, ones, ones, ones * 0, False),
    }
    broken = []
    for name, fn in checks.items():
        try:
            with torch.no_grad():
                out = fn(x)
            if not bool(torch.isnan(out).flatten(2).any(dim=-1).all()):  # NaN in every channel
                broken.append(name)
        except Exception as exc:  # an op unsupported for this dtype / device: skip it
            if dtype in (torch.float32, torch.float64):
                broken.append(f"{name} ({type(exc).__name__})")
    if broken:
        raise RuntimeError(
            "NaN-propagation probing needs operations that propagate NaN, but on "
            f"{device} / {dtype} these do not: {', '.join(broken)}. Receptive fields "
            "measured this way would be too small; run the model on another device / dtype."
        )
    _NAN_CHECKED[key] = True


def _background(size: Tuple[int, int], channels: int, device: Optional[torch.device],
                dtype: Optional[torch.dtype]) -> Tensor:
    r"""The probe's fixed background: ``(channels, H, W)`` uniform in [0.25, 0.75], seed 0."""
    gen = torch.Generator().manual_seed(0)
    return (0.25 + 0.5 * torch.rand(channels, *size, generator=gen)).to(
        device or torch.device("cpu"), dtype or torch.float32)


def _changed_entries(forward: Callable[[Tensor], Sequence[Tensor]], size: Tuple[int, int], channels: int,
                     device: Optional[torch.device], dtype: Optional[torch.dtype],
                     batch_size: int = 4) -> List[Optional[Tensor]]:
    r"""The layout check again with *finite* changes: per output, ``(3, D1)`` bool (None for
    outputs that are not 4-D): which entries of dimension 1 change when the input's top row,
    bottom row, left column get other finite values.

    NaN over-reaches where a model multiplies by an exact zero: ``0 * NaN`` is NaN, so
    masked attention (Swin's shifted windows, whose mask wraps the image's top rows onto its
    bottom ones) carries a NaN row to the far side of the map, while a finite change there
    is scaled by ``exp(-100)`` and lost to rounding. Four images, in chunks of ``batch_size``."""
    H, W = size
    clean = _background(size, channels, device, dtype)
    batch = clean.expand(4, channels, H, W).clone()
    batch[1, :, 0, :] = 1.0 - batch[1, :, 0, :]
    batch[2, :, H - 1, :] = 1.0 - batch[2, :, H - 1, :]
    batch[3, :, :, 0] = 1.0 - batch[3, :, :, 0]
    step = max(1, int(batch_size))
    parts = [forward(batch[i : i + step]) for i in range(0, 4, step)]
    out: List[Optional[Tensor]] = []
    for chunks in zip(*parts):
        o = torch.cat(list(chunks)) if all(isinstance(c, Tensor) for c in chunks) else None
        if isinstance(o, Tensor) and o.dim() == 4 and o.shape[0] == 4:
            diff = (o[1:] != o[:1]) & ~torch.isnan(o[1:])
            out.append(diff.flatten(2).any(2).cpu())
        else:
            out.append(None)
    return out


def _grid_axes(shape: Tuple[int, ...], size: Tuple[int, int]) -> Optional[bool]:
    r"""Which pair of a 4-D output's dimensions (batch dropped) is the image grid, from the
    shape alone, where it is unmistakable: True when dimensions 1 and 2 subsample the input
    ``(H, W)`` by one common stride (within 15 %) and dimensions 2 and 3 by strides at least 2x
    apart (channels-last, e.g. ``(7, 7, 768)`` at 224 px), False for the converse, else None
    (e.g. ``(64, 56, 56)`` or ``(7, 7, 7)``)."""
    H, W = size

    def spread(h: int, w: int) -> float:
        sh, sw = H / max(h, 1), W / max(w, 1)
        return max(sh, sw) / min(sh, sw)

    first, last = spread(shape[0], shape[1]), spread(shape[1], shape[2])
    if first <= 1.15 and last >= 2.0:
        return True
    if last <= 1.15 and first >= 2.0:
        return False
    return None


def _axis_one_is_height(forward: Callable[[Tensor], Sequence[Tensor]], size: Tuple[int, int], channels: int,
                        device: Optional[torch.device], dtype: Optional[torch.dtype],
                        shapes: Sequence[Optional[Tuple[int, ...]]]) -> List[Optional[bool]]:
    r"""The layout check by shape: per 4-D output (``shapes[i]``, batch dimension dropped;
    None to skip), whether an input twice as tall grows dimension 1 alone (True: dimension 1
    is the image's height, channels-last), dimension 2 alone (False: channels-first), or
    neither (then :func:`_grid_axes` on the shape; None: undecided). One image of ``(2H, W)``.
    When the model refuses that size (a fixed-size ViT or Swin, an ONNX graph with a static
    input), the shape itself decides where it can: :func:`_grid_axes`. It also decides maps
    whose every position sees the whole image (deep Swin stages), where no probe has locality
    left to read."""
    H, W = size
    taller = _background((2 * H, W), channels, device, dtype)[None]
    try:
        outs = forward(taller)
    except Exception:  # noqa: BLE001 -- a refusal of the size: the shape at (H, W) alone
        return [None if shape is None else _grid_axes(shape, size) for shape in shapes]
    verdict: List[Optional[bool]] = []
    for o, shape in zip(outs, shapes):
        grew = tuple(o.shape[1:]) if isinstance(o, Tensor) and o.dim() == 4 else None
        if shape is None or grew is None:
            verdict.append(None)
        elif grew[0] > shape[0] and grew[1:] == tuple(shape[1:]):
            verdict.append(True)
        elif grew[1] > shape[1] and (grew[0], grew[2]) == (shape[0], shape[2]):
            verdict.append(False)
        else:  # no axis follows the height (a pooled map, a model resizing its input): the shape
            verdict.append(_grid_axes(shape, size))
    return verdict


def probe_batches(
    size: Tuple[int, int],
    channels: int,
    batch_size: int,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    rows: Optional[Sequence[int]] = None,
    cols: Optional[Sequence[int]] = None,
) -> Iterator[Tensor]:
    r"""The probe images, in chunks of at most ``batch_size``: first the clean image, then
    one image per input row of ``rows`` set to NaN, then one per column of ``cols`` (by
    default every row and column: ``1 + H + W`` images), all on the same fixed background
    (uniform in [0.25, 0.75], seed 0).

    Args:
        size (tuple): ``(H, W)`` of the input.
        channels (int): input channels.
        batch_size (int): images per chunk (the last one may be smaller).
        device, dtype: of the yielded tensors (default: CPU, float32).
        rows, cols (sequence of int, optional): the input rows / columns to probe.

    Returns:
        Iterator of ``(n, channels, H, W)`` tensors.
    """
    H, W = size
    rows = list(range(H)) if rows is None else [int(r) for r in rows]
    cols = list(range(W)) if cols is None else [int(c) for c in cols]
    # probe index -> (row, -1) or (-1, col); the clean image is (-1, -1)
    plan = torch.tensor([(-1, -1)] + [(r, -1) for r in rows] + [(-1, c) for c in cols], dtype=torch.int64)
    background = _background(size, channels, device, dtype)
    step = max(1, int(batch_size))
    for start in range(0, len(plan), step):
        part = plan[start : start + step]
        n = len(part)
        batch = background.expand(n, channels, H, W).clone()
        k = torch.arange(n)
        is_row, is_col = part[:, 0] >= 0, part[:, 1] >= 0
        batch[k[is_row], :, part[is_row, 0], :] = float("nan")
        batch[k[is_col], :, :, part[is_col, 1]] = float("nan")
        yield batch


def probe_masks(
    forward: Callable[[Tensor], Sequence[Tensor]],
    names: Sequence[str],
    size: Tuple[int, int],
    channels: int,
    batch_size: int,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    bar: Optional[Any] = None,
    rows: Optional[Sequence[int]] = None,
    cols: Optional[Sequence[int]] = None,
    check_layout: bool = True,
) -> Dict[str, Tuple[Tensor, Tensor]]:
    r"""Runs :func:`probe_batches` through ``forward`` and says which output positions each
    probed row and column reaches. The engine-independent half of the probe: the PyTorch
    path (hooks) and the ONNX Runtime path share it, for the full probe and for the
    confirmation of a traced field.

    The clean image must reach nothing (else ``ValueError``: the layer outputs NaN for a
    finite input). Rows ``0`` and ``H - 1`` and column ``0`` are always probed: their images
    tell a channels-last ``(N, H, W, C)`` output (:func:`looks_channels_last`), refused with
    :class:`ChannelsLastError`.

    Args:
        forward (callable): ``(n, channels, H, W)`` tensor -> one output per name, each
            ``(n, C, h, w)`` or ``(n, C)``.
        names (sequence of str): output names, in ``forward``'s order (for messages and keys).
        size, channels, batch_size, device, dtype: as :func:`probe_batches`.
        bar (tqdm, optional): advanced by the number of images of each chunk.
        rows, cols (sequence of int, optional): the input rows / columns to probe (default all).
            A full probe settles the layouts first, on those three images alone, so a
            channels-last output is refused before the ``H + W + 1`` images, not after.
        check_layout (bool): False skips the layout checks (already made by the caller).

    Returns:
        dict name -> ``(row_hits, col_hits)``: ``(len(rows), h, w)`` and ``(len(cols), h, w)``
        bool (``h = w = 1`` for a 2-D output), rows and columns in increasing order.
    """
    H, W = size
    if check_layout and rows is None and cols is None and H + W > 3:
        probe_masks(forward, names, size, channels, batch_size, device, dtype, None, [0], [0])
        check_layout = False
    rows = list(range(H)) if rows is None else sorted(set(int(r) for r in rows) | {0, H - 1})
    cols = list(range(W)) if cols is None else sorted(set(int(c) for c in cols) | {0})
    hit: List[List[Tensor]] = [[] for _ in names]
    layout: List[Dict[int, Tensor]] = [{} for _ in names]  # slot -> (D1,) NaN, 4-D outputs
    wanted = {1 + rows.index(0): 0, 1 + rows.index(H - 1): 1, 1 + len(rows) + cols.index(0): 2}
    first = True
    start = 0
    outs: Sequence[Tensor] = []
    for batch in probe_batches(size, channels, batch_size, device, dtype, rows, cols):
        n = batch.shape[0]
        outs = forward(batch)
        for i, (name, out) in enumerate(zip(names, outs)):
            nan = _nan_positions(name, out, n).cpu()
            if out.dim() == 4:
                for j, slot in wanted.items():
                    if start <= j < start + n:
                        layout[i][slot] = torch.isnan(out[j - start]).flatten(1).any(1).cpu()
            if first and bool(nan[0].any()):  # the clean image: fail fast
                bad = nan[0].nonzero()[:5].tolist()
                raise ValueError(
                    f"Layer {name!r} already outputs NaN for a finite input (e.g. at "
                    f"positions {bad}), so NaN probing cannot measure its receptive "
                    "field; check the model's weights and buffers for NaN / inf."
                )
            hit[i].append(nan)
        first = False
        start += n
        if bar is not None:
            bar.update(n)
    last = [] if not check_layout else [(name, o.shape) for name, slots, o in zip(names, layout, outs)
            if len(slots) == 3 and looks_channels_last(torch.stack([slots[0], slots[1], slots[2]]))]
    found = {name for name, _ in last}
    shapes = [tuple(o.shape[1:]) if check_layout and len(slots) == 3 and name not in found else None
              for name, slots, o in zip(names, layout, outs)]
    if any(shape is not None for shape in shapes):  # NaN left them undecided: a look by shape,
        by_shape = _axis_one_is_height(forward, size, channels, device, dtype, shapes)
        last += [(name, o.shape) for name, o, tall in zip(names, outs, by_shape) if tall]
        if any(tall is None and shape is not None for tall, shape in zip(by_shape, shapes)):
            # then, for what the shape does not decide, a look with finite changes (a finite
            # change can vanish where NaN does not, so it must agree with NaN: within its sets)
            changes = _changed_entries(forward, size, channels, device, dtype, batch_size)
            for name, changed, o, tall, shape, slots in zip(names, changes, outs, by_shape, shapes, layout):
                if (tall is None and shape is not None and changed is not None and shape[2] > 1
                        and looks_channels_last(changed)
                        and all(bool((changed[i] <= slots[i]).all()) for i in range(3))):
                    last.append((name, o.shape))
    if last:
        raise ChannelsLastError([name for name, _ in last], last[0][1])
    out = {}
    for name, chunks in zip(names, hit):
        mask = torch.cat(chunks, dim=0)
        out[name] = (mask[1 : 1 + len(rows)], mask[1 + len(rows) :])
    return out


def fields_from_probe(
    forward: Callable[[Tensor], Sequence[Tensor]],
    names: Sequence[str],
    size: Tuple[int, int],
    channels: int,
    batch_size: int,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    bar: Optional[Any] = None,
    precise: Optional[Callable[[], Optional[Callable[[Tensor], Sequence[Tensor]]]]] = None,
) -> Dict[str, ReceptiveField]:
    r"""The full probe: :func:`probe_masks` for every input row and column, turned into one
    :class:`ReceptiveField` per output (``method="probe"``), NaN that only wraps around the
    image through a shifted-window mask taken out (:func:`_without_wrapped_nan`).

    Args:
        forward (callable): ``(n, channels, H, W)`` tensor -> one output per name, each
            ``(n, C, h, w)`` or ``(n, C)``.
        names (sequence of str): output names, in ``forward``'s order (for messages and keys).
        size, channels, batch_size, device, dtype: as :func:`probe_batches`.
        bar (tqdm, optional): advanced by the number of images of each chunk.
        precise (callable, optional): builds ``forward`` in float64 (None where it cannot);
            called only where NaN may have wrapped around. Without it (an ONNX graph), NaN's
            field is kept wherever the finite check alone cannot tell a wrap from rounding.

    Returns:
        dict name -> :class:`ReceptiveField`.
    """
    masks = probe_masks(forward, names, size, channels, batch_size, device, dtype, bar)
    masks = _without_wrapped_nan(forward, names, masks, size, channels, batch_size, device, dtype, precise)
    return {name: _field_from_masks(r, c, size) for name, (r, c) in masks.items()}


def _changed_masks(forward: Callable[[Tensor], Sequence[Tensor]], n_out: int, size: Tuple[int, int],
                   channels: int, batch_size: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
                   rows: Sequence[int], cols: Sequence[int], pixels: Sequence[Tuple[int, int]] = ()) -> List[Tensor]:
    r"""The probe with *finite* changes: per output, ``(len(rows) + len(cols) + len(pixels), h, w)``
    bool, which positions change when an input row, column or pixel gets other finite values
    (``1 - background``) instead of NaN. Every chunk holds the clean image too, first, and is
    compared with it: kernels round differently for other batch sizes (a convolution batched by
    4 differs from the same image alone in the last bit), which would read as a change."""
    H, W = size
    background = _background(size, channels, device, dtype)
    plan = [("r", r) for r in rows] + [("c", c) for c in cols] + [("p", p) for p in pixels]
    step = max(1, int(batch_size) - 1)
    hits: List[List[Tensor]] = [[] for _ in range(n_out)]
    for start in range(0, len(plan), step):
        part = plan[start : start + step]
        batch = background.expand(1 + len(part), channels, H, W).clone()
        for k, (kind, where) in enumerate(part, start=1):
            if kind == "r":
                batch[k, :, where, :] = 1.0 - batch[k, :, where, :]
            elif kind == "c":
                batch[k, :, :, where] = 1.0 - batch[k, :, :, where]
            else:
                batch[k, :, where[0], where[1]] = 1.0 - batch[k, :, where[0], where[1]]
        for i, out in enumerate(forward(batch)):
            o, c = out[1:], out[:1]
            changed = (o != c) & ~torch.isnan(o)
            hits[i].append((changed.any(dim=1) if o.dim() == 4 else changed.any(dim=1).reshape(-1, 1, 1)).cpu())
    return [torch.cat(h) for h in hits]


def _float64_twin(model: Any, modules: Sequence[nn.Module]) -> Optional[Tuple[Any, List[nn.Module]]]:
    r"""A float64 copy of ``model`` (a module or a bound method of one) and the copies of
    ``modules`` inside it, or None where there is none: a plain function (its closure holds the
    original model), a model that cannot be copied. The copy keeps the eval flags and the
    hooks of the original; the caller's model is not touched."""
    try:
        twin, twin_modules = copy.deepcopy((model, list(modules)))
    except Exception:  # noqa: BLE001 -- an uncopyable model: no twin, the caller keeps NaN's field
        return None
    root = twin if isinstance(twin, nn.Module) else getattr(twin, "__self__", None)
    if not isinstance(root, nn.Module):
        return None
    inside = {id(m) for m in root.modules()}
    if not all(id(m) in inside for m in twin_modules):
        return None
    root.double()
    return twin, twin_modules


def _without_wrapped_nan(forward: Callable[[Tensor], Sequence[Tensor]], names: Sequence[str],
                         masks: Dict[str, Tuple[Tensor, Tensor]], size: Tuple[int, int], channels: int,
                         batch_size: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
                         precise: Optional[Callable[[], Optional[Callable[[Tensor], Sequence[Tensor]]]]] = None,
                         ) -> Dict[str, Tuple[Tensor, Tensor]]:
    r"""Full-probe masks with the NaN that only wrapped around the image taken out.

    Shifted-window attention (Swin) rolls the map by half a window and masks the pairs that the
    roll brought together with ``-100`` before the softmax: their weight, ``exp(-100)``, is lost
    to rounding, so a finite change of the input's top row never reaches the bottom of the
    map, but NaN does (``NaN - 100`` is NaN, and so is the softmax of its row). The
    signature: NaN from a border row (column) of the input reaching the far border of the map
    where the finite change of the same border row or column does not.

    A finite change that is not seen is not yet "no dependency": rounding hides small real
    ones too (ConvNeXt's layer scale, ``1e-6`` at init, scales a change by ``1e-6`` per block
    it crosses, ``1e-12`` after two, lost in float32). So the border check runs again in
    float64 (``precise``): where the finite change reaches what NaN reached, or reaches
    further than in float32, its cutoff is rounding, and NaN's field stays. Only a cutoff that
    29 more bits of precision do not move (a weight of ``exp(-100)``, not a product of small
    factors) is a masked wrap; the layer is then measured with finite changes of every row and
    column, in both precisions, and a probe's reach is that of NaN *and* the float64 change
    where the two precisions agree on it, NaN's alone where they do not. Without ``precise``
    (ONNX graphs, plain forward functions, models that cannot be copied or run in float64),
    nothing is shrunk: unknown keeps NaN's field, which is never too small. Where there is no
    wrap, NaN alone decides (a finite change can vanish where a dependency is real: a
    max-pool, a dead ReLU)."""
    H, W = size
    suspects = []
    for name in names:
        rows, cols = masks[name]
        tall, wide = rows.shape[1] > 1, rows.shape[2] > 1
        if ((tall and bool(rows[0, -1].any() or rows[-1, 0].any()))
                or (wide and bool(cols[0][:, -1].any() or cols[-1][:, 0].any()))):
            suspects.append(name)
    if not suspects:
        return masks
    index = [names.index(n) for n in suspects]

    def pick(fwd: Callable[[Tensor], Sequence[Tensor]]) -> Callable[[Tensor], List[Tensor]]:
        def chosen(batch: Tensor) -> List[Tensor]:
            outs = fwd(batch)
            return [outs[i] for i in index]
        return chosen

    def finite(fwd: Callable[[Tensor], Sequence[Tensor]], kind: Optional[torch.dtype], rows: Sequence[int],
               cols: Sequence[int]) -> List[Tensor]:
        return _changed_masks(pick(fwd), len(index), size, channels, batch_size, device, kind, rows, cols)

    def nan_of(name: str) -> Tensor:
        rows, cols = masks[name]
        return torch.stack([rows[0], rows[-1], cols[0], cols[-1]])

    border = finite(forward, dtype, [0, H - 1], [0, W - 1])
    wrapped = [k for k, (name, b) in enumerate(zip(suspects, border))
               if not torch.equal(nan_of(name) & b, nan_of(name))]  # else a real wrap (torch.roll), or none
    if not wrapped:
        return masks
    forward64 = None
    try:
        forward64 = precise() if precise is not None else None
        border64 = finite(forward64, torch.float64, [0, H - 1], [0, W - 1]) if forward64 is not None else None
    except Exception as exc:  # noqa: BLE001 -- no float64 run (a device without it, a fixed dtype inside)
        logger.info("receptive field: no float64 run to check a wrap-around (%s: %s)", type(exc).__name__, exc)
        border64 = None
    if border64 is None:
        for k in wrapped:
            logger.info("receptive field of %r: NaN reaches the far border where a finite change does not; "
                        "without a float64 run rounding cannot be ruled out, NaN's field is kept", suspects[k])
        return masks
    masked = []
    for k in wrapped:
        nan = nan_of(suspects[k])
        if torch.equal(nan & border64[k], nan & border[k]):
            masked.append(k)
        else:
            logger.info("receptive field of %r: a finite change reaches other positions in float64 than in "
                        "float32 (rounding, not a mask): NaN's field is kept", suspects[k])
    if not masked:
        return masks
    for k in masked:
        logger.info("receptive field of %r: NaN wraps around the image where finite changes do not, in float32 "
                    "and in float64 (a masked shifted window); measured with finite changes within NaN's reach",
                    suspects[k])
    all_rows, all_cols = range(H), range(W)
    f32 = finite(forward, dtype, all_rows, all_cols)
    f64 = finite(forward64, torch.float64, all_rows, all_cols)
    out = dict(masks)
    for k in masked:
        name = suspects[k]
        nan = torch.cat(masks[name])
        a, b = nan & f32[k], nan & f64[k]
        stable = (a == b).flatten(1).all(1)[:, None, None]  # per probe: a cutoff precision does not move
        kept = torch.where(stable, b, nan)
        out[name] = (kept[:H], kept[H:])
    return out


def confirmation_indices(n: int, count: int = CONFIRM_PER_AXIS) -> List[int]:
    r"""The input rows (or columns) of a length-``n`` axis probed to confirm a traced field:
    ``0, 1, 2``, the middle two, the last three, and random others up to ``count`` (seeded by
    ``n``: the same for every call)."""
    fixed = {0, 1, 2, n // 2 - 1, n // 2, n - 3, n - 2, n - 1}
    chosen = {i for i in fixed if 0 <= i < n}
    rng = random.Random(n)
    while len(chosen) < min(n, count):
        chosen.add(rng.randrange(n))
    return sorted(chosen)


def confirm_predictions(
    forward: Callable[[Tensor], Sequence[Tensor]],
    names: Sequence[str],
    predictions: Dict[str, Optional[Prediction]],
    size: Tuple[int, int],
    channels: int,
    batch_size: int,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    bar: Optional[Any] = None,
) -> Dict[str, Union[ReceptiveField, str]]:
    r"""Check traced dependency sets against a few NaN probes and turn the ones that agree
    into fields.

    The probes are those of :func:`probe_masks` (same images, same checks: NaN for a finite
    input raises ``ValueError``, a channels-last output :class:`ChannelsLastError`) for the
    rows and columns of :func:`confirmation_indices`. A prediction ``(rows, cols)`` says
    that the probe of input row ``i`` reaches output ``(y, x)`` iff ``rows[y, i]`` and
    ``cols[x]`` is not empty (likewise for columns); every probed row and column must reach
    exactly the predicted positions, on the predicted output grid.

    Args:
        forward (callable): as in :func:`probe_masks`, one output per name.
        names (sequence of str): the outputs of ``forward``.
        predictions (dict): name -> ``(rows, cols)``, ``(h, H)`` and ``(w, W)`` bool, or
            None (only checked, e.g. a channels-last candidate).
        size, channels, batch_size, device, dtype, bar: as in :func:`probe_masks`.

    Returns:
        dict name -> :class:`ReceptiveField` (``method="trace"``) or the reason it was not
        confirmed (str).
    """
    H, W = size
    sel_r, sel_c = confirmation_indices(H), confirmation_indices(W)
    masks = probe_masks(forward, names, size, channels, batch_size, device, dtype, bar, sel_r, sel_c)
    sel_r = sorted(set(sel_r) | {0, H - 1})
    sel_c = sorted(set(sel_c) | {0})
    out: Dict[str, Union[ReceptiveField, str]] = {}
    for name in names:
        pred = predictions.get(name)
        if pred is None:
            out[name] = "not predicted"
            continue
        rows, cols = pred
        got_r, got_c = masks[name]
        grid = (rows.shape[0], cols.shape[0])
        if tuple(got_r.shape[1:]) != grid:
            out[name] = f"predicted a {grid[0]}x{grid[1]} output, the model gives {tuple(got_r.shape[1:])}"
            continue
        exp_r = rows[:, sel_r].T[:, :, None] & cols.any(1)[None, None, :]
        exp_c = cols[:, sel_c].T[:, None, :] & rows.any(1)[None, :, None]
        bad_r = [i for i, a, b in zip(sel_r, exp_r, got_r) if not torch.equal(a, b)]
        bad_c = [j for j, a, b in zip(sel_c, exp_c, got_c) if not torch.equal(a, b)]
        if bad_r or bad_c:
            out[name] = (f"the NaN probe disagrees with the trace for input rows {bad_r[:5]} / "
                         f"columns {bad_c[:5]}")
            continue
        out[name] = field_from_sets(rows, cols, size)
    return out


def confirm_traced(
    forward_for: Callable[[List[str]], Callable[[Tensor], Sequence[Tensor]]],
    names: Sequence[str],
    predicted: Dict[str, Union[Prediction, Unsupported]],
    size: Tuple[int, int],
    channels: int,
    batch_size: int,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Dict[str, ReceptiveField], Dict[str, str]]:
    r"""The confirmation step of a trace, for the PyTorch and the ONNX trace alike: the traced
    outputs (and those the trace refused for their layout, which the probe's layout checks must
    see) are checked by :func:`confirm_predictions`; the rest keep the trace's reason.

    Args:
        forward_for (callable): names to confirm -> a ``forward`` for :func:`confirm_predictions`.
        names (sequence of str): every output traced.
        predicted (dict): name -> the trace's prediction or :class:`Unsupported`.
        size, channels, batch_size, device, dtype: as in :func:`probe_masks`.

    Returns:
        (dict, dict): name -> :class:`ReceptiveField` for the confirmed outputs; name -> why
        not (to be probed fully) for the others.
    """
    checked = [n for n in names
               if not isinstance(predicted[n], Unsupported) or isinstance(predicted[n], LayoutUnsupported)]
    confirmed: Dict[str, Union[ReceptiveField, str]] = {}
    if checked:
        confirmed = confirm_predictions(
            forward_for(checked), checked,
            {n: p for n, p in predicted.items() if not isinstance(p, Unsupported)},
            size, channels, batch_size, device, dtype)
    fields: Dict[str, ReceptiveField] = {}
    reasons: Dict[str, str] = {}
    for name in names:
        got = confirmed.get(name)
        if isinstance(got, ReceptiveField):
            fields[name] = got
        else:
            why = predicted[name]
            reasons[name] = str(why) if isinstance(why, Unsupported) else str(got)
    return fields, reasons


def _probe(
    model: Any,
    scope: nn.Module,
    pairs: List[Tuple[str, nn.Module]],
    size: Tuple[int, int],
    channels: int,
    attribute_to_layer_input: bool,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    method: str = "auto",
    channels_last: frozenset = frozenset(),
) -> Dict[str, ReceptiveField]:
    """Measure the fields of ``pairs``: trace and confirm, then the full probe for the rest
    (``channels_last`` layers are read as their ``(N, C, H, W)`` permutation)."""
    fields: Dict[str, ReceptiveField] = {}
    traced_last: Dict[str, Tuple[int, ...]] = {}  # undeclared layers the trace finds channels-last
    if method != "probe":
        with eval_mode(scope, catch_calls=True), torch.no_grad():
            predicted = trace_fields(model, pairs, size, channels, attribute_to_layer_input, device, dtype,
                                     channels_last)
            traced_last = {n: p.shape for n, p in predicted.items() if isinstance(p, ChannelsLastPrediction)}
            module_of = dict(pairs)

            def forward_for(names: List[str]) -> Callable[[Tensor], Sequence[Tensor]]:
                modules = [module_of[n] for n in names]
                nhwc = [n in channels_last or n in traced_last for n in names]

                def forward(batch: Tensor) -> Sequence[Tensor]:
                    outs = run_capture(model, modules, batch,
                                       attribute_to_layer_input=attribute_to_layer_input, stop_early=True)
                    return _as_nchw(outs, nhwc)
                return forward

            fields, reasons = confirm_traced(forward_for, [n for n, _ in pairs], predicted, size, channels,
                                             batch_size, device, dtype)
        for name, why in reasons.items():
            logger.info("receptive field of %r: full NaN probe (%s)", name, why)
        if method == "trace" and reasons:
            raise TraceError(reasons)
    # undeclared layers read channels-last by the trace and confirmed so (those not confirmed go
    # to the full probe below, whose layout checks decide)
    found = [n for n in traced_last if n in fields]
    rest = [(n, m) for n, m in pairs if n not in fields]
    if rest:
        try:
            fields.update(_full_probe(model, scope, rest, size, channels, attribute_to_layer_input,
                                      batch_size, device, dtype, progress, channels_last))
        except ChannelsLastError as exc:
            if not found:
                raise
            raise ChannelsLastError(found + exc.layers, traced_last[found[0]], dict(fields)) from None
    if found:  # refused as before, with the fields read as the permutation (cached by the caller)
        raise ChannelsLastError(found, traced_last[found[0]], {n: fields[n] for n, _ in pairs})
    return {n: fields[n] for n, _ in pairs}


def _as_nchw(outs: Sequence[Tensor], channels_last: Sequence[bool]) -> List[Tensor]:
    return [o.permute(0, 3, 1, 2) if nhwc and o.dim() == 4 else o for o, nhwc in zip(outs, channels_last)]


def _full_probe(
    model: Any,
    scope: nn.Module,
    pairs: List[Tuple[str, nn.Module]],
    size: Tuple[int, int],
    channels: int,
    attribute_to_layer_input: bool,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    channels_last: frozenset = frozenset(),
) -> Dict[str, ReceptiveField]:
    modules = [m for _, m in pairs]
    last = [name in channels_last for name, _ in pairs]
    total = 1 + size[0] + size[1]

    def forward_of(net: Any, layers: Sequence[nn.Module]) -> Callable[[Tensor], Sequence[Tensor]]:
        def forward(batch: Tensor) -> Sequence[Tensor]:
            outs = run_capture(
                net, layers, batch,
                attribute_to_layer_input=attribute_to_layer_input, stop_early=True,
            )
            return _as_nchw(outs, last)
        return forward

    def precise() -> Optional[Callable[[Tensor], Sequence[Tensor]]]:
        twin = _float64_twin(model, modules)
        return None if twin is None else forward_of(*twin)

    with tqdm(total=total, desc="receptive-field probe (cached per architecture and input size)",
              unit="img", disable=not progress or total < 4 * batch_size, leave=False) as bar:
        with eval_mode(scope, catch_calls=True), torch.no_grad():
            return fields_from_probe(forward_of(model, modules), [n for n, _ in pairs], size, channels,
                                     batch_size, device, dtype, bar, precise)


def _nan_positions(name: str, out: Tensor, n: int) -> Tensor:
    """``(n, h, w)`` bool: which output positions are NaN, over all channels."""
    if not isinstance(out, Tensor):
        raise TypeError(f"Layer {name!r} did not produce a tensor.")
    if out.dim() not in (2, 4):
        raise ValueError(
            f"Layer {name!r} produces a {out.dim()}-D output of shape {tuple(out.shape)}; "
            "receptive fields are defined for 4-D (N, C, H, W) feature maps and 2-D (N, C) "
            "outputs only. Pick a convolutional layer (or a module whose output is 4-D)."
        )
    if out.shape[0] != n:
        raise ValueError(
            f"Layer {name!r} output has batch size {out.shape[0]} for {n} inputs; its first "
            "dimension must be the batch."
        )
    if not out.is_floating_point() and not out.is_complex():
        raise ValueError(f"Layer {name!r} output has dtype {out.dtype}, which cannot hold NaN.")
    nan = torch.isnan(out)
    if out.dim() == 2:
        return nan.any(dim=1).reshape(n, 1, 1)
    return nan.any(dim=1)


def _span(mask: Tensor, n: int, dim: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """First index, last index + 1 and any-flag along ``dim`` of a bool mask of length ``n`` there."""
    as_int = mask.to(torch.int32)
    first = as_int.argmax(dim=dim)  # argmax returns the first maximal index
    last = n - as_int.flip(dim).argmax(dim=dim)
    return first, last, mask.any(dim=dim)


def _field_from_masks(row_mask: Tensor, col_mask: Tensor, size: Tuple[int, int]) -> ReceptiveField:
    """The full probe's hits (``(H, h, w)``, ``(W, h, w)``) -> field."""
    H, W = size
    top, bottom, any_r = _span(row_mask, H)
    left, right, any_c = _span(col_mask, W)
    return _field_from_spans(top, bottom, any_r, left, right, any_c, size, "probe")


def field_from_sets(rows: Tensor, cols: Tensor, size: Tuple[int, int]) -> ReceptiveField:
    r"""The field of dependency sets ``rows`` ``(h, H)`` and ``cols`` ``(w, W)`` (bool): the
    box of ``(y, x)`` is the hull of ``rows[y]`` x ``cols[x]``, empty when either is; exactly
    what the full probe would measure (``method="trace"``)."""
    H, W = size
    top, bottom, any_r = _span(rows, H, dim=1)
    left, right, any_c = _span(cols, W, dim=1)
    h, w = rows.shape[0], cols.shape[0]
    grid = lambda t: t[:, None].expand(h, w)  # noqa: E731
    gridc = lambda t: t[None, :].expand(h, w)  # noqa: E731
    return _field_from_spans(grid(top), grid(bottom), grid(any_r), gridc(left), gridc(right),
                             gridc(any_c), size, "trace")


def _field_from_spans(top: Tensor, bottom: Tensor, any_r: Tensor, left: Tensor, right: Tensor,
                      any_c: Tensor, size: Tuple[int, int], method: str) -> ReceptiveField:
    H, W = size
    boxes = torch.stack([top, left, bottom, right], dim=-1).to(torch.int64)
    valid = any_r & any_c
    boxes[~valid] = 0
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    rf_size = (int(heights.max()), int(widths.max()))
    h, w = boxes.shape[:2]
    stride = (
        _stride(boxes[..., 0], boxes[..., 2], valid, H, h, dim=0),
        _stride(boxes[..., 1], boxes[..., 3], valid, W, w, dim=1),
    )
    return ReceptiveField(boxes=boxes, input_size=size, size=rf_size, stride=stride, method=method)


def _stride(lo: Tensor, hi: Tensor, valid: Tensor, n_in: int, n_out: int, dim: int) -> int:
    """Most frequent positive step of unclipped box edges between neighbouring positions."""
    steps = []
    if n_out > 1:
        a, b = (lambda t: t.narrow(dim, 0, n_out - 1)), (lambda t: t.narrow(dim, 1, n_out - 1))
        both = a(valid) & b(valid)
        ok_lo = both & (a(lo) > 0) & (b(lo) > 0)
        ok_hi = both & (a(hi) < n_in) & (b(hi) < n_in)
        steps.append((b(lo) - a(lo))[ok_lo])
        steps.append((b(hi) - a(hi))[ok_hi])
    values = torch.cat(steps) if steps else torch.empty(0, dtype=torch.int64)
    values = values[values > 0]
    if values.numel():
        return int(torch.bincount(values).argmax())
    return max(1, int(round(n_in / n_out)))


def token_fields(
    model: Union[nn.Module, Callable[..., Any]],
    layers: Sequence[Tuple[str, nn.Module, int, Tuple[int, int]]],
    input_size: SizeSpec,
    *,
    attribute_to_layer_input: bool = False,
    batch_size: int = 32,
    in_channels: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Dict[str, Optional[ReceptiveField]]:
    r"""Receptive fields of token layers ``(N, prefix + h * w, C)``, or None where every token
    sees the whole image (global attention).

    Global: the NaN in the input's top-left pixel and the one in its bottom-right pixel each
    reach every patch token, and so do finite changes of the same pixels (5 images): the
    token's box would be the whole image, and its patch footprint says more. Otherwise (windowed
    attention: Swin, a patch embedding, a convolutional stem's tokens) the patch tokens are
    measured on their ``(h, w)`` grid by the full probe (:func:`fields_from_probe`, shifted-window
    wrap-around taken out), ``method="probe"``; cached like every field.

    Args:
        model (nn.Module or Callable): the network or its forward function.
        layers (sequence): ``(name, module, prefix, (h, w))`` of each token layer.
        input_size (int or tuple of int): ``H`` or ``(H, W)``.
        attribute_to_layer_input, batch_size, in_channels, cache, progress: as in
            :func:`receptive_field`.
    Returns:
        dict name -> :class:`ReceptiveField` of the patch grid, or None (global).
    Example::
        >>> token_fields(swin, [("layers.0.blocks.1.mlp", swin.layers[0].blocks[1].mlp, 0, (16, 16))], 64)
    """
    size = _parse_size(input_size)
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    owner = owner if isinstance(owner, nn.Module) else None
    scope = nn.ModuleList([m for _, m, _, _ in layers]) if owner is None else owner
    conv = first_conv(owner)
    channels = int(in_channels) if in_channels is not None else (int(conv[1].in_channels) if conv else 3)
    device, dtype = device_dtype(scope)
    device = device or torch.device("cpu")
    keys: Dict[str, tuple] = {}
    results: Dict[str, Optional[ReceptiveField]] = {}
    if cache and owner is not None:
        signature = _structural_signature(owner)
        for name, _, prefix, grid in layers:
            keys[name] = (signature, name, size, bool(attribute_to_layer_input), channels, device.type, dtype,
                          "NLC", int(prefix), tuple(grid))
            with _CACHE_LOCK:
                hit = _CACHE.get(keys[name], False)
            if hit is False:
                hit = _disk_get(keys[name])
                hit = False if hit is None else hit
            if hit is not False:
                results[name] = None if isinstance(hit, str) else hit
    todo = [entry for entry in layers if entry[0] not in results]
    if todo:
        _check_nan_propagation(device, dtype)
        modules = [m for _, m, _, _ in todo]

        def forward_of(net: Any, entries: Sequence[Tuple[str, nn.Module, int, Tuple[int, int]]],
                       mods: Sequence[nn.Module]) -> Callable[[Tensor], List[Tensor]]:
            r"""A forward of ``net`` giving each entry's patch tokens as an ``(N, C, h, w)`` map."""
            names = [n for n, _, _, _ in entries]

            def forward(batch: Tensor) -> List[Tensor]:
                outs = run_capture(net, mods, batch, attribute_to_layer_input=attribute_to_layer_input,
                                   stop_early=True, names=names)
                return [split_tokens(o, p, g)[0] for o, (_, _, p, g) in zip(outs, entries)]

            return forward

        forward = forward_of(model, todo, modules)
        H, W = size
        corners = [(0, 0), (H - 1, W - 1)]
        with eval_mode(scope, catch_calls=True), torch.no_grad():
            nan = []
            batch = _background(size, channels, device, dtype).expand(3, channels, H, W).clone()
            for k, (y, x) in enumerate(corners, start=1):
                batch[k, :, y, x] = float("nan")
            for o in forward(batch):
                reach = torch.isnan(o).any(dim=1)
                if bool(reach[0].any()):
                    raise ValueError("A token layer outputs NaN for a finite input; its receptive field cannot be probed.")
                nan.append(bool(reach[1:].all()))
            finite = _changed_masks(forward, len(todo), size, channels, batch_size, device, dtype, [], [], corners)
            local = [entry for entry, n, f in zip(todo, nan, finite) if not (n and bool(f.all()))]
            for entry in todo:
                results[entry[0]] = None
            if local:
                names_l = [n for n, _, _, _ in local]
                modules_l = [m for _, m, _, _ in local]
                forward_local = forward_of(model, local, modules_l)

                def precise() -> Optional[Callable[[Tensor], List[Tensor]]]:
                    twin = _float64_twin(model, modules_l)
                    return None if twin is None else forward_of(twin[0], local, twin[1])

                total = 1 + H + W
                with tqdm(total=total, desc="receptive-field probe of token layers (cached per architecture)",
                          unit="img", disable=not progress or total < 4 * batch_size, leave=False) as bar:
                    masks = probe_masks(forward_local, names_l, size, channels, batch_size, device, dtype, bar,
                                        check_layout=False)
                masks = _without_wrapped_nan(forward_local, names_l, masks, size, channels, batch_size, device, dtype,
                                             precise)
                for name in names_l:
                    results[name] = _field_from_masks(*masks[name], size)
        for name, _, _, _ in todo:
            if name in keys:
                with _CACHE_LOCK:
                    _CACHE[keys[name]] = results[name] if results[name] is not None else "global"
                    while len(_CACHE) > _CACHE_MAXSIZE:
                        _CACHE.popitem(last=False)
                if results[name] is not None:  # a global layer costs 5 images: kept in memory only
                    _disk_put(keys[name], results[name])
    return {name: (None if results[name] is None else
                   ReceptiveField(results[name].boxes.clone(), results[name].input_size, results[name].size,
                                  results[name].stride, results[name].method))
            for name, _, _, _ in layers}
