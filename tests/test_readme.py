"""The README's Python examples run as written.

Every ```python block of README.md runs, in order, in one namespace (as a reader pasting them
into one Python session or notebook would: a block may use what an earlier one defined), in a
temporary folder, with $FASTCONV_DATA pointing at a synthetic CIFAR-10 of 600 images in the
official format (tests/fake_cifar.py), so nothing is downloaded and the whole takes seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fake_cifar

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the first code line, code) of each ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S)]


def test_the_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert blocks == [(3, "a = 1\n"), (9, "b = 2\n")]


@pytest.mark.skipif(not README.is_file(), reason="README.md is not beside the tests")
def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    fake_cifar.write_folder(data_root, fake_cifar.fake_batches(learnable=True))
    monkeypatch.setenv("FASTCONV_DATA", str(data_root))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no python blocks"
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks:
        # padded with blank lines, so tracebacks give the README's own line numbers
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)


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
