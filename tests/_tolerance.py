r"""How far two backends (PyTorch eager, ONNX Runtime) may differ: the stated parity bound.

docs/onnx.md states it: an export passes when ``max |ORT - torch| <= atol + rtol * max |torch|``
with the defaults of :func:`captum_topk.onnx.export` (``atol = rtol = 1e-4``). ONNX Runtime's CPU
kernels are chosen by instruction set (AVX2, AVX-512, ...), so the difference seen on one CPU
(about 1e-6 relative on the development machine, 1.7e-5 on an AMD EPYC) says nothing about
another: every comparison of two backends in the suite uses this bound, never ``allclose``'s
defaults, and records may differ only where two candidates are closer than the bound (a near
tie ranks either way).

``CAPTUM_TOPK_TEST_ORT_JITTER=3e-5 make test`` multiplies every ONNX Runtime output, in the test
process and every process it starts (tests/_ort_jitter/sitecustomize.py), by ``1 + e`` with
``|e| <= 3e-5`` a deterministic hash of the value: the suite passing that way shows that no test
relies on one CPU's kernels.
"""

from __future__ import annotations

import inspect

import torch


def _export_default(name: str) -> float:
    from captum_topk.onnx.export import export

    return float(inspect.signature(export).parameters[name].default)


BACKEND_ATOL = _export_default("atol")
BACKEND_RTOL = _export_default("rtol")


def backend_bound(reference: torch.Tensor) -> float:
    r"""``atol + rtol * max |reference|`` over the finite entries of ``reference``."""
    finite = reference[torch.isfinite(reference)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return BACKEND_ATOL + BACKEND_RTOL * scale


def assert_backends_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    r"""``actual`` (one backend) within the parity bound of ``expected`` (the other); the same
    entries infinite (empty top-k slots) on both sides."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, (what, tuple(actual.shape), tuple(expected.shape))
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(actual)), what
    assert torch.equal(actual[~finite], expected[~finite]), what
    diff = float((actual[finite] - expected[finite]).abs().max()) if finite.any() else 0.0
    bound = backend_bound(expected)
    assert diff <= bound, f"{what}: max |difference| {diff:.3g} > parity bound {bound:.3g}"


def near_tie_slots(values: torch.Tensor, bound: float) -> torch.Tensor:
    r"""``(C, k)`` bool: the slots whose record may differ between backends. A slot may hold
    another image when its value is within ``2 * bound`` of a neighbouring slot's (two
    candidates that rank either way); the last slot also competes with the first candidate
    left out, whose value the result does not keep."""
    near = torch.zeros(values.shape, dtype=torch.bool)
    near[:, -1] = True
    if values.shape[1] > 1:
        v = values.double()
        gap = (v[:, 1:] - v[:, :-1]).abs()
        tied = (gap <= 2 * bound) | (torch.isinf(v[:, 1:]) & torch.isinf(v[:, :-1]))
        near[:, 1:] |= tied
        near[:, :-1] |= tied
    return near


def assert_same_records(actual, expected, layer: str, sides=("top", "bottom")) -> torch.Tensor:
    r"""Two backends' results of one layer agree: values within the parity bound, and the same
    image in every slot that is not a near tie (:func:`near_tie_slots`). Returns the ``(C, k)``
    bool mask of the ``top`` slots whose images agree (for comparing what is drawn from them).
    """
    agree = None
    for side in sides:
        va, vb = actual.values(layer, side), expected.values(layer, side)
        assert_backends_close(va, vb, f"{layer} {side} values")
        ia, ib = actual.indices(layer, side), expected.indices(layer, side)
        same = ia == ib
        allowed = near_tie_slots(vb, backend_bound(vb))
        bad = ~same & ~allowed
        assert not bad.any(), (f"{layer} {side}: records differ where no near tie explains it, "
                               f"channels {sorted(set(bad.nonzero()[:, 0].tolist()))[:10]}")
        if side == "top":
            agree = same
    return agree
