"""The compiled bindings' own dtype switch: float32 and float64 reach the kernels, any other
dtype is a TypeError naming the argument (fastconv.functional converts before calling)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastconv import _core


def calls(dtype):
    """One call per kind of op, every array of `dtype`, each with the argument that picks the
    kernel's dtype."""
    a = lambda *shape: np.ones(shape, dtype)  # noqa: E731
    return {
        "conv2d_forward": ("x", lambda: _core.conv2d_forward(
            a(1, 2, 4, 4), a(3, 2, 3, 3), None, a(1, 3, 2, 2), 1, 1, 0, 0, 1, 1, 1)),
        "conv2d_backward_weight": ("grad_y", lambda: _core.conv2d_backward_weight(
            a(1, 3, 2, 2), a(1, 2, 4, 4), a(3, 2, 3, 3), 1, 1, 0, 0, 1, 1, 1)),
        "max_pool2d_backward": ("grad_y", lambda: _core.max_pool2d_backward(
            a(1, 1, 1, 1), np.zeros((1, 1, 1, 1), np.int64), a(1, 1, 2, 2))),
        "gemm": ("a", lambda: _core.gemm(a(2, 3), a(3, 4), a(2, 4))),
        "sgd_update": ("param", lambda: _core.sgd_update(
            a(5), a(5), None, 0.1, 0.0, 0.0, 0.0, False, True)),
        "relu_forward": ("x", lambda: _core.relu_forward(a(5), a(5))),
    }


@pytest.mark.parametrize("op", sorted(calls(np.float32)))
def test_other_dtypes_are_a_type_error_naming_the_argument(op):
    name, call = calls(np.int32)[op]
    with pytest.raises(TypeError, match=f"^{name} must be a float32 or float64 array, got int32"):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(calls(np.float32)))
def test_float32_and_float64_reach_the_kernels(op, dtype):
    _, call = calls(dtype)[op]
    call()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_process_forked_after_kernels_ran_runs_them_on_one_thread():
    """multiprocessing's 'fork' children of a process whose kernels ran on 2 threads: the
    parent's OpenMP threads are not in the child, and a parallel region waited for them
    forever. The child runs its kernels on one thread (the same bits), says so when asked
    for more, and the parent keeps its threads."""
    import fastconv

    before = fastconv.get_num_threads()
    fastconv.set_num_threads(2)
    try:
        _fork_and_check()
    finally:
        fastconv.set_num_threads(before)


def _fork_and_check():
    """(The test's fork, on 2 threads.)"""
    import warnings

    import fastconv
    from fastconv import functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    want = F.conv2d(x, w, padding=1)  # (an OpenMP team of 2 now exists)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: fork with threads)
        pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fastconv.set_num_threads(2)
            same = np.array_equal(F.conv2d(x, w, padding=1), want)
            code = 0 if (same and fastconv.get_num_threads() == 1 and _core.forked_after_kernels()
                         and any("forked" in str(c.message) for c in caught)) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    import select
    ready, _, _ = select.select([read], [], [], 120)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in its first kernel")
    code = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert code == bytes([0])
    assert fastconv.get_num_threads() == 2 and not _core.forked_after_kernels()
