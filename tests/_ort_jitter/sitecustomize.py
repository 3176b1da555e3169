r"""Loaded by every Python process of a test run with ``CAPTUM_TOPK_TEST_ORT_JITTER`` set
(tests/conftest.py puts this folder first on ``PYTHONPATH``): ONNX Runtime with another CPU's
rounding, simulated (tests/_tolerance.py)."""

import os


def _jitter_onnxruntime(relative: float) -> None:
    r"""Multiply every float32 ONNX Runtime output by ``1 + relative * e``, ``e`` in [-1, 1] a
    hash of the value's bits: deterministic like a real CPU (the same input gives the same
    output), different from this CPU's kernels by up to ``relative``."""
    import numpy as np
    import onnxruntime

    run = onnxruntime.InferenceSession.run
    if getattr(run, "jittered", False):
        return

    def jittered(self, *args, **kwargs):
        outs = run(self, *args, **kwargs)
        for i, o in enumerate(outs):
            if isinstance(o, np.ndarray) and o.dtype == np.float32:
                bits = o.view(np.uint32).astype(np.uint64)
                e = ((bits * 2654435761) % 2001).astype(np.float32) / 1000 - 1
                outs[i] = (o * (1 + relative * e)).astype(np.float32)
        return outs

    jittered.jittered = True
    onnxruntime.InferenceSession.run = jittered


if os.environ.get("CAPTUM_TOPK_TEST_ORT_JITTER"):
    _jitter_onnxruntime(float(os.environ["CAPTUM_TOPK_TEST_ORT_JITTER"]))
