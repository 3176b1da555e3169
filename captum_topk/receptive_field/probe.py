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
from .trace import Prediction, trace_fields

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
        ChannelsLastError: the output looks channels-last ``(N, H, W, C)``.
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

    todo = [(n, m) for n, m in pairs if n not in results]
    if todo:
        _check_nan_propagation(device, dtype)
        fresh = _probe(model, scope, todo, size, channels, attribute_to_layer_input,
                       int(batch_size), device, dtype, progress, method, channels_last)
        for name, rf in fresh.items():
            results[name] = rf
            if name in keys:
                with _CACHE_LOCK:
                    _CACHE[keys[name]] = rf
                    _CACHE.move_to_end(keys[name])
                    while len(_CACHE) > _CACHE_MAXSIZE:
                        _CACHE.popitem(last=False)
                _disk_put(keys[name], rf)
    # Copies, so that a caller mutating ``boxes`` cannot corrupt the cache.
    return {
        name: ReceptiveField(results[name].boxes.clone(), results[name].input_size,
                             results[name].size, results[name].stride, results[name].method)
        for name, _ in pairs
    }


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
) -> Dict[str, ReceptiveField]:
    r"""The full probe: :func:`probe_masks` for every input row and column, turned into one
    :class:`ReceptiveField` per output (``method="probe"``).

    Args:
        forward (callable): ``(n, channels, H, W)`` tensor -> one output per name, each
            ``(n, C, h, w)`` or ``(n, C)``.
        names (sequence of str): output names, in ``forward``'s order (for messages and keys).
        size, channels, batch_size, device, dtype: as :func:`probe_batches`.
        bar (tqdm, optional): advanced by the number of images of each chunk.

    Returns:
        dict name -> :class:`ReceptiveField`.
    """
    masks = probe_masks(forward, names, size, channels, batch_size, device, dtype, bar)
    masks = _without_wrapped_nan(forward, names, masks, size, channels, batch_size, device, dtype)
    return {name: _field_from_masks(r, c, size) for name, (r, c) in masks.items()}


def _changed_masks(forward: Callable[[Tensor], Sequence[Tensor]], n_out: int, size: Tuple[int, int],
                   channels: int, batch_size: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
                   rows: Sequence[int], cols: Sequence[int], pixels: Sequence[Tuple[int, int]] = ()) -> List[Tensor]:
    r"""The probe with *finite* changes: per output, ``(len(rows) + len(cols) + len(pixels), h, w)``
    bool, which positions change when an input row, column or pixel gets other finite values
    (``1 - background``) instead of NaN."""
    H, W = size
    background = _background(size, channels, device, dtype)
    plan = [("r", r) for r in rows] + [("c", c) for c in cols] + [("p", p) for p in pixels]
    clean = forward(background[None])
    step = max(1, int(batch_size))
    hits: List[List[Tensor]] = [[] for _ in range(n_out)]
    for start in range(0, len(plan), step):
        part = plan[start : start + step]
        batch = background.expand(len(part), channels, H, W).clone()
        for k, (kind, where) in enumerate(part):
            if kind == "r":
                batch[k, :, where, :] = 1.0 - batch[k, :, where, :]
            elif kind == "c":
                batch[k, :, :, where] = 1.0 - batch[k, :, :, where]
            else:
                batch[k, :, where[0], where[1]] = 1.0 - batch[k, :, where[0], where[1]]
        for i, (o, c) in enumerate(zip(forward(batch), clean)):
            changed = (o != c) & ~torch.isnan(o)
            hits[i].append((changed.any(dim=1) if o.dim() == 4 else changed.any(dim=1).reshape(-1, 1, 1)).cpu())
    return [torch.cat(h) for h in hits]


def _without_wrapped_nan(forward: Callable[[Tensor], Sequence[Tensor]], names: Sequence[str],
                         masks: Dict[str, Tuple[Tensor, Tensor]], size: Tuple[int, int], channels: int,
                         batch_size: int, device: Optional[torch.device],
                         dtype: Optional[torch.dtype]) -> Dict[str, Tuple[Tensor, Tensor]]:
    r"""Full-probe masks with the NaN that only wrapped around the image taken out.

    Shifted-window attention (Swin) rolls the map by half a window and masks the pairs that the
    roll brought together with ``-100`` before the softmax: their weight, ``exp(-100)``, is lost
    to float32 rounding, so a finite change of the input's top row never reaches the bottom of
    the map, but NaN does (``NaN - 100`` is NaN, and so is the softmax of its row). The
    signature: NaN from a border row (column) of the input reaching the far border of the map.
    Where the finite change of the same border row or column does not, the layer's masks are
    those of NaN *and* a finite change, for every probed row and column; elsewhere NaN alone
    decides (a finite change can vanish where a dependency is real: a max-pool, a dead ReLU)."""
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

    def chosen(batch: Tensor) -> List[Tensor]:
        outs = forward(batch)
        return [outs[i] for i in index]

    border = _changed_masks(chosen, len(index), size, channels, batch_size, device, dtype, [0, H - 1], [0, W - 1])
    out = dict(masks)
    for name, b in zip(suspects, border):
        rows, cols = masks[name]
        nan = torch.stack([rows[0], rows[-1], cols[0], cols[-1]])
        if torch.equal(nan & b, nan):
            continue  # a real wrap (torch.roll without a mask): finite changes go as far as NaN
        logger.info("receptive field of %r: NaN wraps around the image where finite changes do not "
                    "(a masked shifted window); measured with finite changes within NaN's reach", name)
        finite = _changed_masks(chosen, len(index), size, channels, batch_size, device, dtype,
                                range(H), range(W))[suspects.index(name)]
        out[name] = (rows & finite[:H], cols & finite[H:])
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
    if method != "probe":
        with eval_mode(scope, catch_calls=True), torch.no_grad():
            predicted = trace_fields(model, pairs, size, channels, attribute_to_layer_input, device, dtype,
                                     channels_last)
            module_of = dict(pairs)

            def forward_for(names: List[str]) -> Callable[[Tensor], Sequence[Tensor]]:
                modules = [module_of[n] for n in names]
                nhwc = [n in channels_last for n in names]

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
    rest = [(n, m) for n, m in pairs if n not in fields]
    if rest:
        fields.update(_full_probe(model, scope, rest, size, channels, attribute_to_layer_input,
                                  batch_size, device, dtype, progress, channels_last))
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

    def forward(batch: Tensor) -> Sequence[Tensor]:
        outs = run_capture(
            model, modules, batch,
            attribute_to_layer_input=attribute_to_layer_input, stop_early=True,
        )
        return _as_nchw(outs, last)

    with tqdm(total=total, desc="receptive-field probe (cached per architecture and input size)",
              unit="img", disable=not progress or total < 4 * batch_size, leave=False) as bar:
        with eval_mode(scope, catch_calls=True), torch.no_grad():
            return fields_from_probe(forward, [n for n, _ in pairs], size, channels,
                                     batch_size, device, dtype, bar)


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

        def patch_maps(entries: Sequence[tuple]) -> Callable[[Tensor], List[Tensor]]:
            r"""A forward giving each entry's patch tokens as an ``(N, C, h, w)`` map."""
            modules, names = [m for _, m, _, _ in entries], [n for n, _, _, _ in entries]

            def forward(batch: Tensor) -> List[Tensor]:
                outs = run_capture(model, modules, batch, attribute_to_layer_input=attribute_to_layer_input,
                                   stop_early=True, names=names)
                return [split_tokens(o, p, g)[0] for o, (_, _, p, g) in zip(outs, entries)]

            return forward

        forward = patch_maps(todo)
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
                forward_local = patch_maps(local)

                total = 1 + H + W
                with tqdm(total=total, desc="receptive-field probe of token layers (cached per architecture)",
                          unit="img", disable=not progress or total < 4 * batch_size, leave=False) as bar:
                    masks = probe_masks(forward_local, names_l, size, channels, batch_size, device, dtype, bar,
                                        check_layout=False)
                masks = _without_wrapped_nan(forward_local, names_l, masks, size, channels, batch_size, device, dtype)
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
