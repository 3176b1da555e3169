"""Examples that cannot rot: every Python and shell example in README.md and docs/*.md runs here
as written.

Per Markdown file, the fenced ``python`` blocks run in order in one namespace (a later block may
use what an earlier one defined), and every command of the ``bash`` / ``sh`` blocks runs (lines
joined at ``\\``, ``#`` comments dropped as the shell drops them): ``captum-topk ...`` and
``python -m captum_topk ...`` in this process through ``captum_topk.cli.main``, any other
``python ...`` and ``torchrun ...`` as a subprocess (with this checkout first on
``PYTHONPATH``), and the plain file commands ``mkdir``, ``cp``, ``ls``, ``cat``, ``echo``. Any
other command, and shell syntax (pipes, ``&&``, redirections, ``$VARIABLES``), fails the test:
one plain command a line. Every command must exit with 0. The working directory is a fresh
temporary folder shared by the blocks of one file, so files an example writes land there and
later blocks can use them. A failure names the Markdown file and line.

An HTML comment on the line right before a block changes how it is run:

* ``<!-- test: skip REASON -->``: not run (a command that starts a server, installs packages, or
  calls ``make`` / the test suite itself); the reason is required.
* ``<!-- test: slow -->``: run only in the file's ``-slow`` variant (minutes of CPU), which is
  marked ``slow`` and runs only when ``-m`` selects slow tests *and* ``CAPTUM_TOPK_DOCS_SLOW=1``
  (``CAPTUM_TOPK_DOCS_SLOW=1 pytest -m slow tests/test_docs.py``: tens of minutes, they fine-tune
  and embed the whole ELPV set; ``make test-slow`` leaves them out); otherwise it is reported
  as skipped. The fast variant never runs it, so no fast block may depend on it.
* ``<!-- test: env NAME=VALUE ... -->``: environment variables for that block only.

Nothing is skipped silently: before anything runs, every block of the file is checked. A block
must be ``python``, ``bash`` / ``sh`` or a non-code language (none, ``text``, ``json``, ...);
a mark must be one of the three above and sit right before a block; ``make``, ``streamlit`` and
``pip`` lines must sit in a skipped block (so that the choice is visible in the document); the
commands of slow blocks are checked too, and their Python is compiled.

The examples run with one intra-op thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``
for subprocesses), like the other tests that time or run real models: on a shared 2-core
machine two OpenMP threads per process spin against the other jobs and made this file three
times slower (CPU 288 s against 100 s); the examples' results do not depend on it.

Receptive fields are measured with the suite's private, empty cache (``tests/conftest.py``):
a cold start is what the examples cost (tracing makes it cheap), not a cache of earlier runs.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN_LANGS = ("python", "bash", "sh")
TEXT_LANGS = ("", "text", "json", "toml", "yaml", "ini", "csv", "diff")
SHELL_TOOLS = ("mkdir", "cp", "ls", "cat", "echo")
NEVER_RUN = ("make", "streamlit", "pip")
SHELL_SYNTAX = ("|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1")
_MARK = re.compile(r"^<!--\s*test:\s*(?P<mark>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^`]*$")  # the info string's first word


@dataclass
class Block:
    lang: str
    code: str
    mark: str  # "", "skip", "slow" or "env"
    arg: str  # the skip reason, or the env assignments
    line: int  # 1-based line of the opening fence


def blocks(path: Path) -> List[Block]:
    r"""Every fenced block of a Markdown file, in order, with its mark; fails on a mark that is
    not right before a block, an unknown mark or an unclosed fence."""
    lines = path.read_text().splitlines()
    out: List[Block] = []
    i = 0
    while i < len(lines):
        mark_match = _MARK.match(lines[i].strip())
        if mark_match:
            fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            assert fence, f"{path.name}:{i + 1}: a test mark must be on the line right before a ``` block"
        fence = _FENCE.match(lines[i])
        if fence:
            start = i
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            assert end is not None, f"{path.name}:{i + 1}: unclosed ``` block"
            mark, arg = "", ""
            previous = _MARK.match(lines[start - 1].strip()) if start else None
            if previous:
                mark, _, arg = previous.group("mark").partition(" ")
                arg = arg.strip()
                assert mark in ("skip", "slow", "env"), (
                    f"{path.name}:{start}: unknown test mark {mark!r} (skip REASON, slow, env NAME=VALUE ...)")
            out.append(Block(fence.group("lang").lower(), "\n".join(lines[start + 1:end]), mark, arg, start + 1))
            i = end + 1
            continue
        i += 1
    return out


def commands(block: Block) -> Iterator[Tuple[int, List[str]]]:
    r"""``(line, argv)`` of every command of a shell block: continuation lines joined, comments
    and blanks dropped."""
    lines = block.code.split("\n")
    i = 0
    while i < len(lines):
        first = i
        text = lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        argv = shlex.split(text, comments=True)
        if argv:
            yield block.line + 1 + first, argv


def _check(path: Path, all_blocks: List[Block]) -> None:
    r"""Static checks of every block, run or not (see the module docstring)."""
    for b in all_blocks:
        where = f"{path.name}:{b.line}"
        assert b.lang in RUN_LANGS or b.lang in TEXT_LANGS, (
            f"{where}: ```{b.lang} blocks are neither run nor known as text: use python, bash, or text")
        if b.mark == "skip":
            assert b.arg, f"{where}: a skipped example must say why: <!-- test: skip REASON -->"
            continue
        if b.mark == "env":
            assert b.arg and all("=" in pair for pair in b.arg.split()), f"{where}: <!-- test: env NAME=VALUE ... -->"
        if b.lang not in RUN_LANGS:
            assert not b.mark, f"{where}: a test mark on a block that is not run (```{b.lang})"
        elif b.lang == "python":
            compile(b.code, f"{path}:{b.line}", "exec")
        else:
            for line, argv in commands(b):
                assert argv[0] not in NEVER_RUN, (
                    f"{path.name}:{line}: `{' '.join(argv)}` must be in a block marked <!-- test: skip REASON -->")
                known = argv[0] in ("captum-topk", "python", "python3", "torchrun", *SHELL_TOOLS)
                assert known, f"{path.name}:{line}: unknown command `{argv[0]}` (mark its block skip, with the reason)"
                shell = [a for a in argv if a in SHELL_SYNTAX or "$" in a or "`" in a]
                assert not shell, f"{path.name}:{line}: shell syntax {shell} is not run here: one plain command a line"


def _subprocess_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run_command(argv: List[str], where: str) -> None:
    from captum_topk.cli import main

    if argv[0] == "captum-topk" or argv[:3] in (["python", "-m", "captum_topk"], ["python3", "-m", "captum_topk"]):
        saved = dict(os.environ)
        try:
            rc = main(argv[1:] if argv[0] == "captum-topk" else argv[3:])
        finally:  # a command may set variables for the processes it starts: not for later examples
            os.environ.clear()
            os.environ.update(saved)
    elif argv[0] in ("python", "python3", "torchrun"):
        head = [sys.executable, "-m", "torch.distributed.run"] if argv[0] == "torchrun" else [sys.executable]
        args = [str(ROOT / a) if a.startswith(("docs/", "benchmarks/")) else a for a in argv[1:]]
        rc = subprocess.run([*head, *args], env=_subprocess_env()).returncode
    else:
        rc = subprocess.run(argv, env=_subprocess_env()).returncode
    assert rc == 0, f"{where}: `{shlex.join(argv)}` exited with {rc}"


def _cpu_seconds() -> float:
    r"""CPU time of this process and its finished subprocesses (a measure of the work that a
    loaded machine's wall clock does not give)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _params():
    out = []
    for path in DOCS:  # every file: its blocks and marks are checked even when none runs
        bs = blocks(path)
        out.append(pytest.param(path, False, id=path.name))
        if any(b.mark == "slow" for b in bs):
            out.append(pytest.param(path, True, marks=[pytest.mark.slow], id=f"{path.name}-slow"))
    return out


def _slow_selected(config) -> bool:
    expr = (config.getoption("-m") or "").replace(" ", "")
    return "slow" in expr and "notslow" not in expr and os.environ.get("CAPTUM_TOPK_DOCS_SLOW") == "1"


@pytest.mark.parametrize("path, with_slow", _params())
def test_examples_run_as_written(path, with_slow, tmp_path, monkeypatch, request):
    all_blocks = blocks(path)
    _check(path, all_blocks)
    if with_slow and not _slow_selected(request.config):
        pytest.skip(f"{path.name} has <!-- test: slow --> blocks: they run with "
                    "`CAPTUM_TOPK_DOCS_SLOW=1 pytest -m slow tests/test_docs.py`")
    namespace: dict = {"__name__": "__docs__"}
    monkeypatch.chdir(tmp_path)
    import torch  # one intra-op thread, here and in subprocesses (see the module docstring)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for b in all_blocks:
        if b.lang not in RUN_LANGS or b.mark == "skip" or (b.mark == "slow" and not with_slow):
            continue
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        with monkeypatch.context() as block_env:
            if b.mark == "env":
                for pair in b.arg.split():
                    key, _, value = pair.partition("=")
                    block_env.setenv(key, value)
            if b.lang == "python":
                # Line numbers of tracebacks are the Markdown file's.
                exec(compile("\n" * b.line + b.code, str(path), "exec"), namespace)  # noqa: S102
            else:
                for line, argv in commands(b):
                    _run_command(argv, f"{path.name}:{line}")
        print(f"{path.name}:{b.line} ({b.lang}{', ' + b.mark if b.mark else ''}): "
              f"{time.perf_counter() - t0:.1f} s, CPU {_cpu_seconds() - cpu0:.1f} s")


# ---------------------------------------------------------------------- the runner's own rules
@pytest.mark.parametrize("text, expected", [
    ("<!-- test: slow -->\n\n```python\nx = 1\n```\n", "right before a ``` block"),
    ("<!-- test: slwo -->\n```python\nx = 1\n```\n", "unknown test mark 'slwo'"),
    ("<!-- test: skip -->\n```bash\nmake run\n```\n", "must say why"),
    ("```bash\nmake run\n```\n", "<!-- test: skip REASON -->"),
    ("<!-- test: slow -->\n```bash\npip install x\n```\n", "<!-- test: skip REASON -->"),
    ("```console\n$ captum-topk layers\n```\n", "neither run nor known as text"),
    ("```bash\nrm -rf runs\n```\n", "unknown command `rm`"),
    ("```bash\ncaptum-topk layers | head\n```\n", "shell syntax ['|']"),
    ("```python\nx = 1\n", "unclosed"),
    ("<!-- test: env -->\n```python\nx = 1\n```\n", "env NAME=VALUE"),
])
def test_the_runner_refuses_what_it_would_not_run(tmp_path, text, expected):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n" + text)
    with pytest.raises(AssertionError, match=re.escape(expected)):
        _check(doc, blocks(doc))


def test_the_runner_reads_blocks_commands_and_lines(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\n<!-- test: skip starts a server -->\n```bash\nmake run\n```\n\n"
                   "```bash\n# a comment\ncaptum-topk mine --layers a \\\n    b --out 'x y'   # why\n\n"
                   "captum-topk show x\n```\n```text\noutput\n```\n<!-- test: env A=1 B=2 -->\n```python\nx = 1\n```\n")
    bs = blocks(doc)
    assert [(b.lang, b.mark, b.arg, b.line) for b in bs] == [
        ("bash", "skip", "starts a server", 4), ("bash", "", "", 8), ("text", "", "", 15), ("python", "env", "A=1 B=2", 19)]
    assert list(commands(bs[1])) == [(10, ["captum-topk", "mine", "--layers", "a", "b", "--out", "x y"]),
                                     (13, ["captum-topk", "show", "x"])]
    _check(doc, bs)  # all allowed
    with pytest.raises(SyntaxError):
        doc.write_text("```python\nx = (\n```\n")
        _check(doc, blocks(doc))
