"""The im2col row kernels of each SIMD level (csrc/conv/im2col_avx512.cpp, im2col_avx2.cpp):
masked vector copies of rows at stride 1 and 2, with the padding's lanes masked off, and
AVX-512's col2im of small planes in registers. Their column matrices must be
the portable loops' bit for bit (copies), col2im's sums too (the same order), and the im2col
GEMM passes that pack from them must match the NumPy reference, on rows shorter than a
vector, exactly one, and longer, with every kind of edge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R

from numerics import assert_close

LEVELS = ["avx512", "avx2"]  # each skips where this CPU or build does not run it


@pytest.fixture
def at_level():
    """Run the kernels at a SIMD level (skips where this CPU or build lacks it); restored."""
    before = _core.simd_level()

    def select(level):
        if not _core.set_simd_level(level):
            pytest.skip(f"this CPU or build does not run {level}")

    yield select
    assert _core.set_simd_level(before)


# (C, H, W, kernel, dilation, padding, stride): output rows of 1-4, 7-9, 15-17 and 30-33
# columns (one vector or partial, AVX2's 8, AVX-512's 16, several), padding wider than the
# kernel's reach, dilation, stride 3 (the scalar copy) and rectangular windows.
CASES = [
    (3, 16, 16, 3, 1, 1, 2),
    (2, 17, 17, 3, 1, 1, 2),
    (2, 33, 34, 3, 1, 1, 2),
    (2, 64, 66, 3, 1, 1, 2),
    (2, 9, 9, 3, 1, 1, 1),
    (2, 5, 18, 3, 1, 1, 1),
    (1, 8, 35, 5, 1, 2, 1),
    (2, 8, 8, 1, 1, 0, 2),
    (2, 7, 7, 3, 2, 3, 2),
    (1, 6, 6, 2, 1, 4, 2),
    (2, 15, 15, (3, 5), (1, 2), (1, 4), (2, 2)),
    (2, 13, 13, 3, 1, 1, 3),
    (1, 4, 40, (1, 3), 1, (0, 1), (1, 2)),
    (1, 3, 3, 3, 1, 1, 2),
    # outputs of at most 16 values on planes of at most 64 (col2im's register kernel on
    # AVX-512)
    (2, 8, 8, 3, 1, 1, 2),
    (1, 7, 7, 3, 1, 1, 2),
    (2, 5, 12, 3, 1, 0, 3),
    (2, 6, 6, 2, 1, 0, 2),
    (3, 4, 4, 3, 1, 1, 1),
    (2, 3, 3, 3, 1, 1, 1),
    (2, 4, 4, 2, 1, 0, 1),
    (2, 2, 8, (1, 3), (1, 2), (0, 2), (1, 2)),
    (2, 4, 4, 3, 2, 2, 1),
    (2, 4, 4, 9, 1, 4, 1),
    (1, 1, 2, 3, 1, 1, 1),
]


def cols_and_back(x, c, case):
    C, H, W, k, d, p, s = case
    return F.im2col(x, k, d, p, s), F.col2im(c, (H, W), k, d, p, s)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rows_match_the_portable_loops_bit_for_bit(rng, at_level, level, case):
    C, H, W, k, d, p, s = case
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    x[0, 0, 0, :2] = [-0.0, np.nan]  # copied as they are: no arithmetic on the copies
    shape = F.im2col(x, k, d, p, s).shape
    c = rng.standard_normal(shape).astype(np.float32)
    at_level("generic")
    expected = cols_and_back(x, c, case)
    at_level(level)
    actual = cols_and_back(x, c, case)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a.view(np.uint32), e.view(np.uint32))
    np.testing.assert_array_equal(actual[0], R.im2col(x, k, d, p, s))


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_im2col_passes_match_the_reference(rng, at_level, forced, level, case, precision):
    C, H, W, k, d, p, s = case
    at_level(level)
    forced("im2col")
    x = rng.standard_normal((3, C, H, W)).astype(np.float32)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = (rng.standard_normal((5, C, kh, kw)) / np.sqrt(C * kh * kw)).astype(np.float32)
    y = F.conv2d(x, w, None, s, p, d, precision=precision)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw, _ = F.conv2d_backward(gy, x, w, s, p, d, precision=precision)
    ry = R.conv2d(x, w, None, s, p, d, precision=precision)
    rgx, rgw, _ = R.conv2d_backward(gy, x, w, s, p, d, precision=precision)
    # bf16: the reference rounds the same operands; the sums differ only in float32's order.
    for a, e, what in ((y, ry, "y"), (gx, rgx, "grad_x"), (gw, rgw, "grad_w")):
        assert_close(a, e, tol=1e-5, what=what)


@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # at_level: per test
@given(data=st.data())
def test_rows_on_drawn_windows(at_level, level, data):
    H = data.draw(st.integers(1, 24), label="H")
    W = data.draw(st.integers(1, 40), label="W")
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    d = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    p = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
    s = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    if H + 2 * p[0] < d[0] * (kh - 1) + 1 or W + 2 * p[1] < d[1] * (kw - 1) + 1:
        return  # the window does not fit
    case = (2, H, W, (kh, kw), d, p, s)
    rng = np.random.default_rng(H * 1000 + W)
    x = rng.standard_normal((1, 2, H, W)).astype(np.float32)
    shape = F.im2col(x, (kh, kw), d, p, s).shape
    c = rng.standard_normal(shape).astype(np.float32)
    at_level("generic")
    expected = cols_and_back(x, c, case)
    at_level(level)
    for a, e in zip(cols_and_back(x, c, case), expected):
        np.testing.assert_array_equal(a.view(np.uint32), e.view(np.uint32))
