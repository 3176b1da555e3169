#!/usr/bin/env python
r"""Figure of docs/ecosystem.md: a model of your own, exported to ONNX and mined through ONNX
Runtime, with its activation maps computed by ONNX Runtime too.

The model is the packaged ImageNet MobileNetV2 (real weights, shipped in a package: see
docs/assets.md), loaded through a ``package.module:factory`` spec (``my_models:mobilenet``, a
file this script writes in a temporary folder). It is exported with ``features.7`` as a graph
output, the ONNX file is mined with ``captum-topk mine --onnx`` on the packaged photos, and
``captum-topk show --overlay`` draws each record's image with the channel's activation map,
computed by ONNX Runtime (no PyTorch model is involved after the export).

Usage::

    .venv/bin/python docs/make_ecosystem_figures.py      # writes docs/images/ecosystem_*.png
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_topk.cli.main import main  # noqa: E402

FACTORY = '''from captum_topk.models import load_model


def mobilenet():
    return load_model("mobilenet_v2-imagenet")  # (module, ModelInfo): the packaged ImageNet weights
'''


def run() -> None:
    out = ROOT / "docs" / "images"
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        Path("my_models.py").write_text(FACTORY)
        steps = [
            ["export", "my_models:mobilenet", "--layers", "features.7", "--out", "mnv2.onnx", "--no-progress"],
            ["mine", "--onnx", "mnv2.onnx", "--out", "runs/mnv2-onnx", "--no-progress"],
            ["show", "runs/mnv2-onnx", "--overlay", "--channels", "9", "12", "39", "--max-channels", "3"],
        ]
        for argv in steps:
            assert main(argv) == 0, argv
        shutil.copy("runs/mnv2-onnx/features_7_top9_overlay.png", out / "ecosystem_onnx_overlay.png")
        shutil.copy("runs/mnv2-onnx/features_7_top9.png", out / "ecosystem_onnx_top9.png")
    print("wrote", out / "ecosystem_onnx_overlay.png", out / "ecosystem_onnx_top9.png")


if __name__ == "__main__":
    run()
