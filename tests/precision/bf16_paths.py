"""The bf16 paths the tests run on, and the error bound every bf16 result is held to."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from fastconv import _core

#: Every bf16 GEMM path: the emulated one and the twins run everywhere, the hardware ones where
#: the CPU has the instructions (their tests skip elsewhere, with the reason).
PATHS = ("emulated", "avx512_bf16_twin", "amx_twin", "avx512_bf16", "amx")
HARDWARE = {"avx512_bf16": "avx512_bf16_twin", "amx": "amx_twin"}

#: float32's unit roundoff.
U32 = 2.0 ** -24


@contextlib.contextmanager
def bf16_path(path):
    """Run the block on bf16 path `path` (skips the test, with the reason, where it cannot run
    here); the best path restored afterwards."""
    reason = _core.bf16_paths()[path]
    if reason is not None:
        pytest.skip(f"bf16 path {path}: {reason}")
    assert _core.set_bf16_path(path)
    try:
        yield
    finally:
        _core.set_bf16_path("auto")


def assert_within_bound(actual, exact, magnitude, terms, what="", factor=1.0):
    """|actual - exact| <= factor * (terms + 2) * u32 * magnitude elementwise: the classic bound
    of a float32 sum of `terms` products (each exact here: bf16 x bf16 fits float32) in any
    order, `magnitude` being the sum of the products' absolute values (float64), `exact` the
    float64 result on the same bf16-rounded operands. NaN where exact is NaN."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == exact.shape, f"{what}: shape {actual.shape} != {exact.shape}"
    nan = np.isnan(exact)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN in different places"
    bound = factor * (terms + 2) * U32 * magnitude[~nan] + 1e-30
    err = np.abs(actual[~nan] - exact[~nan])
    worst = int(np.argmax(err - bound)) if err.size else 0
    assert np.all(err <= bound), (f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"({terms} terms)")
