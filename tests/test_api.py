"""The public API: argument order as in Captum, layer inputs, max_images cuts, layer names,
no old import paths, a light `import captum_topk`, and a layout without import cycles."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from captum.attr import LayerActivation
from torch import nn

from captum_topk import LayerTopKPatches

PACKAGE = Path(__file__).resolve().parents[1] / "captum_topk"


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2)).eval()


def test_k_is_never_taken_as_device_ids():
    model = _net()
    with pytest.raises(TypeError, match=r"k=3"):
        LayerTopKPatches(model, "2", 3)
    miner = LayerTopKPatches(model, "2", k=3)
    assert miner.k == 3 and miner.device_ids is None
    res = miner.mine(torch.randn(5, 3, 12, 12), progress=False)
    assert res.k == 3 and len(res.records("2", 0)) == 3


def test_onnx_miner_takes_the_same_argument_order(tmp_path):
    from captum_topk.onnx import OnnxTopKPatches, export

    exp = export(_net(), ["2"], tmp_path / "net.onnx", input_size=12, check_images=0, progress=False)
    with pytest.raises(TypeError, match=r"k=3"):
        OnnxTopKPatches(exp.path, "2", 3)
    assert OnnxTopKPatches(exp.path, "2", k=3).k == 3


@pytest.mark.parametrize("where", ["constructor", "call"])
def test_attribute_to_layer_input_returns_the_input_like_layer_activation(where):
    model = _net()
    x = torch.randn(2, 3, 12, 12)
    miner = LayerTopKPatches(model, model[2], attribute_to_layer_input=where == "constructor")
    got = miner.attribute(x) if where == "constructor" else miner.attribute(x, attribute_to_layer_input=True)
    want = LayerActivation(model, model[2]).attribute(x, attribute_to_layer_input=True)
    assert got.shape == (2, 4, 12, 12) and torch.equal(got, want)  # the ReLU output, not conv 2's
    assert torch.equal(miner.attribute(x, attribute_to_layer_input=False) if where == "call"
                       else LayerTopKPatches(model, model[2]).attribute(x),
                       LayerActivation(model, model[2]).attribute(x))


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_max_images_keeps_ids_and_indices_of_the_cut_batch(kind):
    model = _net()
    x = torch.randn(10, 3, 12, 12)
    ids = [f"img{i}" for i in range(10)]
    if kind == "dict":  # ids and global indices, no labels
        batches = [{"images": x[i:i + 4], "ids": ids[i:i + 4], "indices": torch.arange(100 + i, 104 + i)}
                   for i in range(0, 10, 4)]
    else:  # (images, labels, ids)
        batches = [(x[i:i + 4], [None] * len(ids[i:i + 4]), ids[i:i + 4]) for i in range(0, 10, 4)]
    res = LayerTopKPatches(model, "2", k=6).mine(batches, max_images=6, progress=False)
    assert res.n_images == 6
    seen = {r.index: r.image_id for c in range(5) for r in res.records("2", c)}
    offset = 100 if kind == "dict" else 0
    assert seen and all(img_id == f"img{i - offset}" for i, img_id in seen.items())
    assert set(seen) <= set(range(offset, offset + 6))  # the 7th image on was never mined


def test_layers_of_a_plain_forward_function_are_named():
    model = _net()
    forward = lambda x: model(x)  # noqa: E731  (no module tree to name layers in)
    x = torch.randn(4, 3, 12, 12)
    res = LayerTopKPatches(forward, [model[0], model[2]], k=2).mine(x, progress=False)
    assert res.layers == ["conv2d_0", "conv2d_1"]  # documented: "<class>_<position>"
    named = LayerTopKPatches(forward, {"early": model[0], "late": model[2]}, k=2).mine(x, progress=False)
    assert named.layers == ["early", "late"]
    assert torch.equal(named.values("late"), res.values("conv2d_1"))
    with pytest.raises(TypeError, match="name it"):
        LayerTopKPatches(forward, "2")


@pytest.mark.parametrize("old", ["result", "layer_topk", "projections", "stats", "cka", "filters", "plot",
                                 "embed", "elpv", "distributed"])
def test_the_flat_module_paths_of_the_first_version_are_gone(old):
    with pytest.raises(ImportError):
        importlib.import_module(f"captum_topk.{old}")


def test_the_names_of_the_first_version_are_gone():
    import captum_topk.core.accumulators as accumulators
    import captum_topk.core.accumulators.topk as topk
    import captum_topk.runs.folder as folder

    assert not hasattr(topk, "LayerState") and not hasattr(accumulators, "LayerState")
    assert not hasattr(folder, "load_run")


def test_import_loads_the_core_only():
    code = ("import sys, captum_topk; heavy = {'streamlit', 'plotly', 'onnxruntime', 'pandas', 'onnx'}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _imports(path: Path, module: str):
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("captum_topk"):
                    yield alias.name


def test_no_import_cycle_including_function_level_imports():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path, name):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c imports a.b too
                dep = ".".join(parts[:i])
                if dep in modules and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in graph[v]:
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(w):] + [w]))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in graph:
        if v not in state:
            visit(v)
    assert len(graph) > 50
