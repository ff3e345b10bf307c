"""The Python examples of the README and of docs/ run as written.

Every ```python block of a page runs, in order, in one namespace per page (as a reader pasting
them into one Python session or notebook would: a block may use what an earlier one defined),
in a temporary folder, with $FASTCONV_DATA pointing at a synthetic CIFAR-10 of 600 images in
the official format (tests/fake_cifar.py), so nothing is downloaded and the whole takes
seconds. A block whose fence names a file (```python train.py) is a script that needs more
than one process can give it: each is listed in RUN_ELSEWHERE with the test that runs it as
written, and any other such block fails here, so no example goes untested unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fake_cifar

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

#: The blocks not run here, by (page, the file name after ```python), with who runs them.
RUN_ELSEWHERE = {
    ("docs/distributed.md", "train.py"):
        "a script every MPI rank runs: tests/training/test_distributed_mpi.py's "
        "test_docs_script_runs_on_two_ranks runs it under mpiexec -n 2",
}


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number of the first code line, the file name after ```python or "", code) of
    each ```python block."""
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(1).strip(), m.group(2))
            for m in re.finditer(r"^```python([^\n]*)\n(.*?)^```", text, re.M | re.S)]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path) -> list[tuple[int, str, str]]:
    return python_blocks(page.read_text(encoding="utf-8")) if page.is_file() else []


def test_the_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python x.py\n"
                           "b = 2\n```\n")
    assert blocks == [(3, "", "a = 1\n"), (9, "x.py", "b = 2\n")]


@pytest.mark.skipif(not README.is_file(), reason="README.md is not beside the tests")
def test_every_block_is_run_here_or_by_the_test_named():
    named = {(_name(page), info) for page in PAGES for _, info, _ in _blocks(page) if info}
    assert named == set(RUN_ELSEWHERE), (
        "a ```python <file> block that this test skips must be run by another test and listed "
        "in RUN_ELSEWHERE (and an entry there must still name a block)")
    assert _blocks(README), "README.md has no python blocks"


@pytest.mark.parametrize("page", [p for p in PAGES if any(not info for _, info, _ in _blocks(p))],
                         ids=_name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    fake_cifar.write_folder(data_root, fake_cifar.fake_batches(learnable=True))
    monkeypatch.setenv("FASTCONV_DATA", str(data_root))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__readme__"}
    for line, info, code in _blocks(page):
        if info:
            continue  # (RUN_ELSEWHERE: checked above)
        # padded with blank lines, so tracebacks give the page's own line numbers
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)


CI = README.parent / ".ci" / "run"


@pytest.mark.skipif(not (README.is_file() and CI.is_file()), reason="no README.md or .ci/run")
def test_ci_installs_and_tests_as_the_readme_says():
    """CI's install and test commands are the README's test set-up, word for word: the set-up
    a reader follows is the one that is tested (one `pip install` with the test extras, so the
    C++ is built once)."""
    bash = "\n".join(re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"),
                                re.M | re.S))
    readme = [line.split("#")[0].strip() for line in bash.splitlines()]
    ci = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()]
    install = [c for c in ci if "pip install" in c and "'.[" in c]
    assert install, "CI installs fastconv"
    for command in install:
        assert command.replace("python -m pip install --quiet", "pip install") in readme
    assert "python -m pytest" in readme and "python -m pytest" in ci
