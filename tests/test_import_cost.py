"""`import captum_topk` stays light (issue 22), held here by what the import loads, not by its
time, which depends on the machine (`benchmarks/import_cost.py` prints the time next to
`import captum.attr`'s). And every public name still imports on first use."""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Never loaded by ``import captum_topk``: heavy packages the miner has no use for until a
#: feature needs them (torchvision.ops pulls in torch._dynamo and sympy, about 2 s). Not listed:
#: matplotlib and PIL, which ``import captum.attr`` loads itself (captum.attr._utils.visualization
#: imports matplotlib.pyplot), and the miner subclasses ``captum.attr.LayerAttribution``.
HEAVY = ("torch._dynamo", "sympy", "torchvision", "torchvision.ops", "onnx", "onnxruntime", "streamlit",
         "pandas", "plotly", "scipy", "sklearn", "skimage", "timm", "transformers")

#: The miner and what it runs on: capture, accumulators, sources, the result, ``ReceptiveField``
#: (27 modules with the packages, today). Not the tracer, which loads on the first batch.
MAX_OWN_MODULES = 30
#: Parts of the project the import never runs.
NOT_LOADED = ("captum_topk.receptive_field.trace", "captum_topk.receptive_field.ops",
              "captum_topk.receptive_field.probe", "captum_topk.viz", "captum_topk.featvis", "captum_topk.onnx",
              "captum_topk.compare", "captum_topk.transfer", "captum_topk.runs", "captum_topk.dashboard",
              "captum_topk.data", "captum_topk.models", "captum_topk.cli")

_PACKAGES = ("captum_topk", "captum_topk.core", "captum_topk.core.accumulators", "captum_topk.core.sources",
             "captum_topk.receptive_field")


def _run(code: str):
    r"""The JSON that ``code`` prints, run in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded():
    r"""``sys.modules`` of a fresh interpreter after ``import captum.attr``, then after ``import
    captum_topk`` (one interpreter: its start costs seconds)."""
    where, base, after = _run("import sys, json, captum.attr; base = sorted(sys.modules); import captum_topk; "
                              "print(json.dumps([captum_topk.__file__, base, sorted(sys.modules)]))")
    assert Path(where).resolve().is_relative_to(REPO), where
    return set(base), set(after)


@pytest.fixture(scope="module")
def after_import(loaded):
    return loaded[1]


def test_import_loads_no_heavy_module(after_import):
    heavy = sorted(m for m in after_import if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], heavy


def test_import_loads_no_package_that_captum_attr_does_not(loaded):
    base, after = loaded
    new = {m.split(".")[0] for m in after - base} - set(sys.stdlib_module_names) - {"captum_topk"}
    assert new == set(), sorted(new)


def test_import_loads_the_miner_only(after_import):
    own = sorted(m for m in after_import if m.split(".")[0] == "captum_topk")
    assert "captum_topk.core.miner" in own and len(own) <= MAX_OWN_MODULES, own
    assert not [m for m in own if any(m == n or m.startswith(n + ".") for n in NOT_LOADED)], own


@pytest.mark.parametrize("package", _PACKAGES)
def test_a_public_name_that_is_also_a_module_name_is_the_public_object(package):
    pkg = importlib.import_module(package)
    shared = [n for n in pkg._LAZY if importlib.util.find_spec(f"{package}.{n}") is not None]
    for name in shared:  # importing the submodule binds it in the package: it must not win
        importlib.import_module(f"{package}.{name}")
        module, attr = pkg._LAZY[name]
        assert getattr(pkg, name) is getattr(importlib.import_module(module, package), attr), name
    assert shared == (["receptive_field"] if package == "captum_topk" else [])


@pytest.mark.slow  # imports every subpackage
@pytest.mark.parametrize("package", _PACKAGES)
def test_every_public_name_imports_on_first_use(package):
    pkg = importlib.import_module(package)
    assert set(pkg.__all__) <= set(dir(pkg))
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert value is not None and getattr(pkg, name) is value, name
        if package != "captum_topk" or name in pkg._LAZY:
            module, attr = pkg._LAZY[name]
            assert value is getattr(importlib.import_module(module, package), attr), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(pkg, "nope")


@pytest.mark.slow
def test_from_import_of_every_name_in_a_fresh_interpreter():
    import captum_topk

    names = ", ".join(captum_topk.__all__)
    got = _run(f"import json; from captum_topk import {names}; print(json.dumps(sorted(dir())))")
    assert set(captum_topk.__all__) <= set(got)
