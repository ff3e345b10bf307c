"""Tests of fastconv.backend: the global backend switch and the lazy module lookup."""

from __future__ import annotations

import importlib

import pytest

from fastconv import backend


@pytest.fixture(autouse=True)
def restore_backend():
    before = backend.current_backend()
    yield
    backend.use_backend(before)


def test_default_and_modules():
    assert backend.current_backend() == "fast"
    assert backend.get_backend() is importlib.import_module("fastconv.functional")
    assert backend.get_backend("reference") is importlib.import_module("fastconv.reference")
    assert backend.get_backend("fast") is backend.get_backend("fast")
    assert sorted(backend.BACKENDS) == ["fast", "reference"]


def test_use_backend_sets_globally_and_as_context_manager():
    backend.use_backend("reference")
    assert backend.current_backend() == "reference"
    assert backend.get_backend().__name__ == "fastconv.reference"
    with backend.use_backend("fast") as ctx:
        assert backend.current_backend() == "fast" and ctx.name == "fast"
        with backend.use_backend("reference"):
            assert backend.current_backend() == "reference"
        assert backend.current_backend() == "fast"
    assert backend.current_backend() == "reference"
    with pytest.raises(RuntimeError):
        with backend.use_backend("fast"):
            raise RuntimeError("boom")
    assert backend.current_backend() == "reference"  # restored after an exception too
    assert repr(backend.use_backend("fast")) == "use_backend('fast')"


@pytest.mark.parametrize("name", ["cuda", "", None, 1, "Fast"])
def test_unknown_backend(name):
    if name is not None:
        with pytest.raises(ValueError, match="unknown backend"):
            backend.use_backend(name)
        with pytest.raises(ValueError, match="unknown backend"):
            backend.get_backend(name)
    else:
        with pytest.raises(ValueError):
            backend.use_backend(None)
    assert backend.current_backend() == "fast"
