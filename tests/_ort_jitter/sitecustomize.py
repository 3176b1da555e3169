r"""Loaded by every Python process of a test run with ``CAPTUM_TOPK_TEST_ORT_JITTER`` set
(tests/conftest.py puts this folder first on ``PYTHONPATH``): ONNX Runtime with another CPU's
rounding, simulated (tests/_tolerance.py)."""

import importlib.abc
import importlib.util
import os
import sys


def _jitter(ort, relative: float) -> None:
    r"""Multiply every float32 output of ``ort.InferenceSession.run`` by ``1 + relative * e``, ``e``
    in [-1, 1] a hash of the value's bits: deterministic like a real CPU (the same input gives
    the same output), different from this CPU's kernels by up to ``relative``."""
    import numpy as np

    run = ort.InferenceSession.run
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
    ort.InferenceSession.run = jittered


class _JitterOnImport(importlib.abc.MetaPathFinder):
    r"""Patches ``onnxruntime`` when something imports it, so that a process that never uses it
    (``tests/test_import_cost.py``'s fresh interpreter) loads nothing more than without the
    simulation."""

    def __init__(self, relative: float) -> None:
        self.relative = relative

    def find_spec(self, name, path=None, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module, relative = spec.loader.exec_module, self.relative

        def exec_and_jitter(module):
            exec_module(module)
            _jitter(module, relative)

        spec.loader.exec_module = exec_and_jitter
        return spec


def install(relative: float) -> None:
    if "onnxruntime" in sys.modules:
        _jitter(sys.modules["onnxruntime"], relative)
    elif not any(isinstance(f, _JitterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _JitterOnImport(relative))


if os.environ.get("CAPTUM_TOPK_TEST_ORT_JITTER"):
    install(float(os.environ["CAPTUM_TOPK_TEST_ORT_JITTER"]))
