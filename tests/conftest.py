"""Shared fixtures: random data, optional torch, thread control (helpers: numerics.py);
the run's forced SIMD level and conv algorithm (--simd-level, --conv-algorithm: the tests
must hold under any of them); the fuzzers' counts in the summary (fuzzing.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _core


def pytest_addoption(parser):
    group = parser.getgroup("fastconv")
    group.addoption("--simd-level", default=None,
                    help="run every test at this SIMD level (generic, avx2, avx512); a test "
                         "that sets a level of its own restores this one")
    group.addoption("--conv-algorithm", default=None,
                    help="force this conv algorithm (a name of _core.conv_algorithms()) in "
                         "every test, wherever it applies")
    group.addoption("--fuzz-scale", type=float, default=1.0,
                    help="multiply the fuzz tests' case counts (tests/kernels/test_fuzz.py) by this")


def pytest_configure(config):
    level = config.getoption("--simd-level")
    if level and not _core.set_simd_level(level):
        raise pytest.UsageError(f"--simd-level {level}: not available on this CPU or build")
    algorithm = config.getoption("--conv-algorithm")
    if algorithm and not _core.set_conv_algorithm(algorithm):
        raise pytest.UsageError(f"--conv-algorithm {algorithm}: not one of "
                                f"{_core.conv_algorithms()}")


@pytest.fixture(autouse=True)
def _forced_kernels(request):
    """Each test starts at the run's SIMD level and conv algorithm (tests that switch them
    restore their defaults, not necessarily the run's)."""
    level = request.config.getoption("--simd-level")
    algorithm = request.config.getoption("--conv-algorithm")
    if level:
        _core.set_simd_level(level)
    if algorithm:
        _core.set_conv_algorithm(algorithm)
    yield


FUZZ_REPORTS: list = []  # fuzzing.Report objects of this run, for the summary


@pytest.fixture
def fuzz_reports():
    """The list a fuzz test appends its fuzzing.Report to (printed in the summary)."""
    return FUZZ_REPORTS


def pytest_terminal_summary(terminalreporter):
    if FUZZ_REPORTS:
        terminalreporter.section("fuzz")
        for report in FUZZ_REPORTS:
            terminalreporter.write_line(report.summary())


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
