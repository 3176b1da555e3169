"""Examples that cannot rot: every Python and shell example in README.md and docs/*.md runs here
as written.

Per Markdown file, the fenced ``python`` blocks run in order in one namespace (a later block may
use what an earlier one defined), and every command of the ``bash`` / ``sh`` blocks runs (lines
joined at ``\\``, comments dropped): ``captum-topk ...`` and ``python -m captum_topk ...`` in
this process through ``captum_topk.cli.main``, ``python file.py ...`` as a subprocess. The
working directory is a fresh temporary folder, so files an example writes land there.

An HTML comment right before a block changes how it is run:

* ``<!-- test: skip REASON -->``: not run (a command that starts a server, installs packages, or
  calls ``make`` / the test suite itself); the reason is required.
* ``<!-- test: slow -->``: run only with ``pytest -m slow`` (minutes of CPU).
* ``<!-- test: env NAME=VALUE ... -->``: environment variables for that block.

``make`` and ``streamlit run`` lines are never run here (the bootstrap is what CI itself runs);
they must sit in a skipped block so that the choice is visible in the document.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"(?:<!--\s*test:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)\n```",
                    re.S)


def blocks(path: Path):
    r"""``(language, code, mark)`` of every fenced block of a Markdown file, in order."""
    for m in _FENCE.finditer(path.read_text()):
        yield m.group("lang").lower(), m.group("body"), (m.group("mark") or "").strip()


def commands(code: str):
    r"""The commands of a shell block: continuation lines joined, comments and blanks dropped."""
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            yield line


def _run_command(line: str, env: dict) -> None:
    from captum_topk.cli import main

    argv = shlex.split(line)
    if argv[0] == "captum-topk":
        rc = main(argv[1:])
    elif argv[:3] == ["python", "-m", "captum_topk"]:
        rc = main(argv[3:])
    elif argv[0] in ("python", "python3"):
        rc = subprocess.run([sys.executable, *[a if not a.startswith(("docs/", "benchmarks/")) else str(ROOT / a)
                                               for a in argv[1:]]], env=env).returncode
    elif argv[0] in ("mkdir", "cp", "ls", "cat", "echo", "torchrun"):
        if argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        rc = subprocess.run(argv, env=env).returncode
    else:
        raise AssertionError(f"Unknown command in a docs example (mark its block skip or slow): {line}")
    assert rc == 0, f"`{line}` exited with {rc}"


def _params():
    out = []
    for path in DOCS:
        marks = [m for lang, _, m in blocks(path) if lang in ("python", "bash", "sh")]
        if not marks:
            continue
        slow = any(m.startswith("slow") for m in marks)
        out.append(pytest.param(path, marks=[pytest.mark.slow] if slow else [], id=path.name))
    return out


@pytest.mark.parametrize("path", _params())
def test_examples_run_as_written(path, tmp_path, monkeypatch, request):
    run_slow = "slow" in (request.config.getoption("-m") or "")
    namespace: dict = {"__name__": "__docs__"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTUM_TOPK_PROGRESS", "0")
    ran = 0
    for lang, code, mark in blocks(path):
        if lang not in ("python", "bash", "sh"):
            continue
        if mark.startswith("skip"):
            assert mark[4:].strip(), f"{path.name}: a skipped example must say why: <!-- test: skip REASON -->"
            continue
        if mark.startswith("slow") and not run_slow:
            continue
        env = dict(os.environ)
        if mark.startswith("env"):
            for pair in mark[3:].split():
                key, _, value = pair.partition("=")
                env[key] = value
                monkeypatch.setenv(key, value)
        if lang == "python":
            exec(compile(code, f"{path.name}:python-block", "exec"), namespace)  # noqa: S102
        else:
            for line in commands(code):
                assert not line.startswith(("make", "streamlit", "pip")), (
                    f"{path.name}: `{line}` must be in a block marked <!-- test: skip REASON -->")
                _run_command(line, env)
        ran += 1
    assert ran or run_slow is False
