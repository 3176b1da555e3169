"""The public API: argument order as in Captum, layer inputs, max_images cuts, layer names,
no old import paths, and a layout without import cycles."""

import ast
import importlib
import re
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


def _import_targets(tree: ast.AST, path: Path, module: str):
    r"""(import node, dotted name) of every project import in ``tree``, function-level ones included;
    ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a module)."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            yield node, target
            for alias in node.names:
                yield node, f"{target}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "captum_topk":
            yield node, node.module
            for alias in node.names:
                yield node, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("captum_topk"):
                    yield node, alias.name


def _imports(path: Path, module: str):
    for _node, target in _import_targets(ast.parse(path.read_text()), path, module):
        yield target


def _project_modules():
    r"""Every module of the package: dotted name -> file."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def test_no_import_cycle_including_function_level_imports():
    modules = _project_modules()
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


#: The rows of the table of docs/architecture.md ("Layers and who owns what"), top to bottom. A
#: module may import from its own package and from the rows above its package's row, never from
#: a row below nor from another package of its own row.
LAYERS = [
    ["utils"],
    ["capture"],
    ["receptive_field"],
    ["core/sources"],
    ["core/accumulators"],
    ["core"],
    ["models"],
    ["data"],
    ["viz"],
    ["featvis"],
    ["onnx"],
    ["transfer", "compare"],
    ["concepts"],
    ["runs"],
    ["dashboard"],
    ["cli"],
    ["app_streamlit"],  # outside the package: its imports of the package are all upward
]
#: Modules at the top of the package, outside the table: the version sits above everything; the
#: package's facade (lazy public names) and ``python -m captum_topk`` below everything.
_TOP_LEVEL = {"captum_topk._version": -1, "captum_topk": len(LAYERS), "captum_topk.__main__": len(LAYERS)}


def _layer_of(module: str):
    r"""(row, package) of a project module: the longest package of ``LAYERS`` that holds it."""
    if module in _TOP_LEVEL:
        return _TOP_LEVEL[module], module
    best = None
    for row, packages in enumerate(LAYERS):
        for package in packages:
            dotted = "captum_topk." + package.replace("/", ".")
            if (module == dotted or module.startswith(dotted + ".")) and (best is None or len(dotted) > len(best[1])):
                best = (row, dotted)
    assert best is not None, f"{module} is in no row of LAYERS: add its package to the table and here"
    return best


def _type_checking_only(tree: ast.AST):
    r"""The import nodes under ``if TYPE_CHECKING:`` (exempt: they never run)."""
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            exempt.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return exempt


def test_layers_are_the_rows_of_the_architecture_table():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table = doc.split("## Layers and who owns what", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1] for line in ("|" + table).splitlines()[2:]]
    assert [[cell.strip("/") for cell in re.findall(r"`([^`]+)`", row)] for row in rows] == LAYERS


def test_packages_import_only_from_the_rows_above_them_including_function_level_imports():
    modules = _project_modules()
    wrong = set()
    for name, path in sorted(modules.items()):
        row, package = _layer_of(name)
        tree = ast.parse(path.read_text())
        exempt = _type_checking_only(tree)
        for node, target in _import_targets(tree, path, name):
            if id(node) in exempt:
                continue
            parts = target.split(".")
            found = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules),
                         None)
            if found is None:
                continue
            their_row, their_package = _layer_of(found)
            if their_package != package and their_row >= row and not package.startswith(their_package + "."):
                wrong.add(f"{name} (line {node.lineno}) imports {found}")
    assert not wrong, "imports against the order of docs/architecture.md:\n" + "\n".join(sorted(wrong))
