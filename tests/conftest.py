"""Shared fixtures: random data, optional torch, thread control (helpers: numerics.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv


@pytest.fixture
def rng():
    """A fresh seeded generator per test."""
    return np.random.default_rng(12345)


@pytest.fixture
def torch():
    """PyTorch as a test oracle; the test is skipped where it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture
def threads():
    """Set the kernels' thread count inside a test; restored afterwards."""
    before = fastconv.get_num_threads()
    yield fastconv.set_num_threads
    fastconv.set_num_threads(before)


@pytest.fixture
def forced():
    """Force a conv algorithm by name (fastconv._core.set_conv_algorithm); 'auto' restored
    afterwards."""
    def force(name):
        assert fastconv._core.set_conv_algorithm(name)
    yield force
    fastconv._core.set_conv_algorithm("auto")
