"""fastconv.reference against PyTorch (the oracle): forward values, autograd gradients, indices,
shapes, dtype/layout policy and argument errors.

Tolerances: float64 compares with rtol=1e-10 and atol = 1e-10 * max(1, max|expected|): both
sides sum at most a few hundred products of O(1) numbers in different orders (BLAS vs
oneDNN), so the real discrepancy is ~1e-15 relative to the magnitude of the result. float32
uses 1e-5 on the same scale: a ~50-term float32 dot product is accurate to ~1e-6 relative to
the magnitude of its terms, and the expected magnitude bounds those terms here (inputs are
standard normal). Pooling values and indices are compared exactly where the kernels select
or add in the same order as PyTorch's CPU kernels.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
TF = torch.nn.functional

from fastconv import reference as R  # noqa: E402

DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def rtol_for(dtype) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-5


def assert_close(actual, expected, dtype) -> None:
    """Same shape, working dtype, C-contiguous, and values within the documented tolerance."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray)
    assert actual.shape == expected.shape
    assert actual.dtype == np.dtype(dtype)
    assert actual.flags.c_contiguous
    rtol = rtol_for(dtype)
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def t(a: np.ndarray, grad: bool = False):
    """A torch tensor with a copy of `a` (contiguous, same dtype)."""
    return torch.tensor(np.ascontiguousarray(a), requires_grad=grad)


def quiet(fn, *args, **kwargs):
    """Call a torch function with its UserWarnings silenced (padding='same' with even kernels
    warns about a padded copy; pytest turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def seed_of(name: str) -> int:
    """A deterministic seed per test case (str hashes are randomised per process)."""
    return zlib.crc32(name.encode())


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def relayout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as `a` in a non-C-contiguous memory layout."""
    if layout == "transposed" and a.ndim >= 2:  # the last two axes swapped in memory
        out = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    elif layout == "negative" or layout == "transposed":  # negative strides on every axis
        flip = (slice(None, None, -1),) * a.ndim
        out = np.ascontiguousarray(a[flip])[flip]
    elif layout == "fortran":
        out = np.asfortranarray(a)
    elif layout == "strided":  # every other element of a bigger buffer
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        out = big[(slice(None, None, 2),) * a.ndim]
        out[...] = a
    else:
        raise AssertionError(layout)
    np.testing.assert_array_equal(out, a)
    if a.ndim >= 2 and min(a.shape[-2:]) > 1:
        assert not out.flags.c_contiguous
    return out


LAYOUTS = ["transposed", "negative", "fortran", "strided"]


def torch_conv_grads(x, w, b, gy, **kw):
    """(y, grad_x, grad_w, grad_b) from torch autograd."""
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    y = quiet(TF.conv2d, xt, wt, bt, **kw)
    y.backward(t(gy))
    gb = bt.grad.numpy() if bt is not None else None
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), gb


# --------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------

# (N, C, H, W, F, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 3, 7, 7, 4, 3, 1, 0, 1, 1),
    (1, 3, 8, 9, 5, 3, 1, 1, 1, 1),                    # batch 1, odd width
    (2, 4, 9, 7, 6, 3, 2, 1, 1, 2),                    # stride 2, groups 2
    (2, 4, 10, 11, 4, (2, 3), 3, 2, 1, 1),             # stride 3, padding 2
    (1, 2, 11, 9, 3, 3, 1, 2, 2, 1),                   # dilation 2
    (2, 3, 12, 13, 2, (3, 2), (2, 3), (1, 2), (3, 2), 1),
    (2, 6, 8, 8, 6, 3, 1, 1, 1, 6),                    # depthwise
    (2, 4, 8, 8, 8, 3, 2, 1, 1, 4),                    # depthwise, multiplier 2
    (2, 6, 7, 9, 9, 3, 1, "same", 1, 3),
    (2, 3, 7, 8, 4, 4, 1, "same", 1, 1),               # even kernel: extra pad bottom/right
    (1, 2, 9, 9, 3, (2, 4), 1, "same", (3, 2), 1),     # even dilated kernel
    (2, 3, 9, 6, 4, 2, 1, "same", 2, 1),
    (2, 3, 7, 7, 4, 3, 2, "valid", 1, 1),
    (3, 5, 6, 6, 7, 1, 1, 0, 1, 1),                    # 1x1
    (2, 4, 9, 9, 6, 1, 2, 1, 1, 2),                    # 1x1, stride 2, padded
    (2, 3, 5, 6, 4, (5, 6), 1, 0, 1, 1),               # kernel == input
    (2, 3, 5, 6, 4, (5, 6), 1, 2, 1, 1),
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
    (2, 2, 3, 3, 2, 3, 3, 2, 3, 1),                    # dilated kernel == padded input
    (2, 3, 13, 5, 4, 3, 3, 0, 1, 1),                   # stride leaves trailing rows unused
    (2, 3, 10, 10, 2, 2, 3, 1, 2, 1),
    (4, 8, 6, 6, 4, 3, 1, 1, 1, 2),
]


def _conv_case_id(case):
    return "N{}C{}H{}W{}F{}-k{}-s{}-p{}-d{}-g{}".format(*case).replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_case_id)
def test_conv2d_forward_and_backward_match_torch(case, dtype):
    N, C, H, W, F, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed_of(_conv_case_id(case)))
    x = randn(rng, (N, C, H, W), dtype)
    w = randn(rng, (F, C // g, kh, kw), dtype)
    b = randn(rng, (F,), dtype)
    kw_args = dict(stride=s, padding=p, dilation=d, groups=g)
    y = R.conv2d(x, w, b, **kw_args)
    gy = randn(rng, y.shape, dtype)
    y_t, gx_t, gw_t, gb_t = torch_conv_grads(x, w, b, gy, **kw_args)
    assert_close(y, y_t, dtype)
    assert R.conv2d_output_shape(x.shape, w.shape, **kw_args) == y_t.shape
    gx, gw, gb = R.conv2d_backward(gy, x, w, **kw_args)
    assert_close(gx, gx_t, dtype)
    assert_close(gw, gw_t, dtype)
    assert_close(gb, gb_t, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_without_bias(dtype):
    rng = np.random.default_rng(1)
    x, w = randn(rng, (2, 3, 6, 7), dtype), randn(rng, (4, 3, 3, 3), dtype)
    assert_close(R.conv2d(x, w, padding=1), TF.conv2d(t(x), t(w), padding=1).numpy(), dtype)


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, False, False), (True, True, False), [1, 0, 1]])
def test_conv2d_backward_output_mask(mask):
    rng = np.random.default_rng(2)
    x, w = randn(rng, (2, 4, 7, 6), np.float64), randn(rng, (6, 2, 3, 2), np.float64)
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    gy = randn(rng, R.conv2d_output_shape(x.shape, w.shape, **kw), np.float64)
    full = R.conv2d_backward(gy, x, w, **kw)
    part = R.conv2d_backward(gy, x, w, output_mask=mask, **kw)
    assert len(part) == 3
    for flag, got, ref in zip(mask, part, full):
        if flag:
            np.testing.assert_array_equal(got, ref)
        else:
            assert got is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_any_input_layout(layout):
    rng = np.random.default_rng(3)
    x, w = randn(rng, (2, 4, 7, 8), np.float64), randn(rng, (6, 2, 3, 2), np.float64)
    b = randn(rng, (6,), np.float64)
    kw = dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2)
    gy = randn(rng, R.conv2d_output_shape(x.shape, w.shape, **kw), np.float64)
    y_t, gx_t, gw_t, gb_t = torch_conv_grads(x, w, b, gy, **kw)
    xl, wl, bl, gyl = (relayout(a, layout) for a in (x, w, b, gy))
    assert_close(R.conv2d(xl, wl, bl, **kw), y_t, np.float64)
    gx, gw, gb = R.conv2d_backward(gyl, xl, wl, **kw)
    assert_close(gx, gx_t, np.float64)
    assert_close(gw, gw_t, np.float64)
    assert_close(gb, gb_t, np.float64)


def test_conv2d_dtype_policy():
    rng = np.random.default_rng(4)
    xi = rng.integers(-3, 4, size=(2, 3, 5, 5))
    wi = rng.integers(-2, 3, size=(2, 3, 3, 3)).astype(np.int16)
    y = R.conv2d(xi, wi, padding=1)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    expected = TF.conv2d(t(xi.astype(np.float64)), t(wi.astype(np.float64)), padding=1).numpy()
    np.testing.assert_array_equal(y, expected)  # small integers: exact in float32
    # bool and float16 are converted to float32 as well
    assert R.conv2d(xi > 0, wi.astype(np.float16)).dtype == np.float32
    # mixed float32 / float64 -> float64 (NumPy promotion)
    x32, w64 = xi.astype(np.float32), wi.astype(np.float64)
    assert R.conv2d(x32, w64).dtype == np.float64
    assert R.conv2d(x32, w64.astype(np.float32), bias=np.zeros(2)).dtype == np.float64
    gx, gw, gb = R.conv2d_backward(np.ones((2, 2, 3, 3), np.float32), x32, w64)
    assert gx.dtype == gw.dtype == gb.dtype == np.float64
    # nested lists are accepted
    assert R.conv2d([[[[1.0, 2.0], [3.0, 4.0]]]], [[[[1.0]]]]).tolist() == [[[[1.0, 2.0], [3.0, 4.0]]]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_batch_zero(dtype):
    x = np.zeros((0, 4, 6, 5), dtype)
    w = np.ones((6, 2, 3, 3), dtype)
    y = R.conv2d(x, w, np.ones(6, dtype), stride=2, padding=1, groups=2)
    assert y.shape == (0, 6, 3, 3) and y.dtype == dtype and y.flags.c_contiguous
    assert y.shape == tuple(TF.conv2d(t(x), t(w), stride=2, padding=1, groups=2).shape)
    gx, gw, gb = R.conv2d_backward(y, x, w, stride=2, padding=1, groups=2)
    assert gx.shape == x.shape and gx.dtype == dtype
    np.testing.assert_array_equal(gw, np.zeros(w.shape, dtype))
    np.testing.assert_array_equal(gb, np.zeros(6, dtype))
    assert gw.dtype == gb.dtype == dtype


# --------------------------------------------------------------------------------------------
# max_pool2d
# --------------------------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (2, 3, 8, 8, 2, None, 0, 1, False),
    (2, 3, 7, 9, 3, 2, 1, 1, False),
    (2, 3, 7, 9, 3, 2, 1, 1, True),
    (1, 2, 10, 11, (2, 3), (1, 2), (1, 1), (2, 1), True),
    (2, 2, 5, 5, 3, 1, 1, 1, False),
    (2, 2, 6, 6, 4, 3, 2, 1, True),
    (1, 2, 9, 8, 3, 3, 0, 2, True),
    (2, 3, 5, 6, (5, 6), None, 0, 1, False),   # kernel == input
    (2, 3, 5, 5, 1, 1, 0, 1, False),           # 1x1
    (2, 3, 4, 4, 2, 1, 1, 3, False),           # dilation 3
    (1, 1, 3, 4, 4, 2, 0, 1, True),            # ceil_mode: window larger than the input
    (2, 2, 11, 7, 3, (3, 2), (1, 0), (1, 2), True),
]


def _pool_case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=_pool_case_id)
def test_max_pool2d_matches_torch(case, dtype):
    N, C, H, W, k, s, p, d, ceil = case
    rng = np.random.default_rng(seed_of(_pool_case_id(case)))
    x = randn(rng, (N, C, H, W), dtype)
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    xt = t(x, True)
    y_t, i_t = TF.max_pool2d(xt, return_indices=True, **kw)
    y, idx = R.max_pool2d(x, return_indices=True, **kw)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert idx.dtype == np.int64 and idx.flags.c_contiguous
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(idx, i_t.numpy())
    np.testing.assert_array_equal(R.max_pool2d(x, **kw), y)
    assert R.pool2d_output_shape(x.shape, k, s, p, d, ceil) == y.shape
    gy = randn(rng, y.shape, dtype)
    y_t.backward(t(gy))
    assert_close(R.max_pool2d_backward(gy, idx, x.shape), xt.grad.numpy(), dtype)


def test_max_pool2d_window_in_padding():
    # A dilated window whose taps all fall in the padding: torch outputs -inf and an index
    # one row past the plane (ih0 * W + iw0 after skipping the padding), which would send
    # its gradient to an unrelated pixel. We refuse the configuration instead (a documented
    # difference from torch).
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y_t, i_t = TF.max_pool2d(t(x), 2, stride=1, padding=1, dilation=4, return_indices=True)
    assert y_t[0, 0, 0, 0] == -np.inf and i_t[0, 0, 0, 0] == 12
    with pytest.raises(ValueError, match="lies entirely in the padding"):
        R.max_pool2d(x, 2, stride=1, padding=1, dilation=4, return_indices=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_ties_nan_and_inf_like_torch(dtype):
    rng = np.random.default_rng(5)
    # ties: the first maximum in row-major window order wins
    x = rng.integers(0, 3, size=(2, 3, 9, 8)).astype(dtype)
    # NaN propagates, and the index is the last NaN of the window
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = x[1, 2, 4, 4] = np.nan
    x[0, 1] = -np.inf  # an all -inf plane: the first valid position is selected
    x[1, 0, :3, :3] = np.inf
    for kw in [dict(kernel_size=3, stride=1, padding=1),
               dict(kernel_size=(2, 3), stride=2, padding=(1, 0), dilation=(2, 1), ceil_mode=True)]:
        xt = t(x, True)
        y_t, i_t = TF.max_pool2d(xt, return_indices=True, **kw)
        y, idx = R.max_pool2d(x, return_indices=True, **kw)
        np.testing.assert_array_equal(y, y_t.detach().numpy())  # NaN == NaN here
        np.testing.assert_array_equal(idx, i_t.numpy())
        np.testing.assert_array_equal(R.max_pool2d(x, **kw), y)
        gy = rng.standard_normal(y.shape).astype(dtype)
        y_t.backward(t(gy))
        assert_close(R.max_pool2d_backward(gy, idx, x.shape), xt.grad.numpy(), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_any_layout(layout):
    rng = np.random.default_rng(6)
    x = randn(rng, (2, 3, 9, 7), np.float32)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    y_t, i_t = TF.max_pool2d(t(x), return_indices=True, **kw)
    y, idx = R.max_pool2d(relayout(x, layout), return_indices=True, **kw)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(idx, i_t.numpy())
    gy = randn(rng, y.shape, np.float32)
    ref = R.max_pool2d_backward(gy, idx, x.shape)
    got = R.max_pool2d_backward(relayout(gy, layout), relayout(idx, layout), x.shape)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref)


def test_max_pool2d_backward_accepts_other_integer_indices_and_sums_duplicates():
    gy = np.array([[[[1.0, 2.0], [4.0, 8.0]]]])
    idx = np.array([[[[0, 3], [3, 3]]]], dtype=np.int32)
    gx = R.max_pool2d_backward(gy, idx, (1, 1, 2, 2))
    np.testing.assert_array_equal(gx, [[[[1.0, 0.0], [0.0, 14.0]]]])
    gx = R.max_pool2d_backward(gy.astype(np.float32), idx.astype(np.uint8), [1, 1, 2, 2])
    assert gx.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_batch_zero(dtype):
    x = np.zeros((0, 3, 7, 6), dtype)
    y, idx = R.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 4, 3) and y.dtype == dtype and idx.dtype == np.int64
    assert y.shape == tuple(TF.max_pool2d(t(x), 3, 2, 1).shape)
    gx = R.max_pool2d_backward(y, idx, x.shape)
    assert gx.shape == x.shape and gx.dtype == dtype


# --------------------------------------------------------------------------------------------
# avg_pool2d
# --------------------------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding, ceil_mode)
AVG_CASES = [
    (2, 3, 8, 8, 2, None, 0, False),
    (2, 3, 7, 9, 3, 2, 1, False),
    (2, 3, 7, 9, 3, 2, 1, True),
    (1, 2, 10, 11, (2, 3), (1, 2), (1, 1), True),
    (2, 2, 6, 6, 4, 3, 2, True),
    (2, 2, 5, 7, 3, (3, 2), (1, 0), True),
    (2, 3, 5, 6, (5, 6), None, 0, False),   # kernel == input
    (2, 3, 5, 5, 1, 1, 0, False),           # 1x1
    (1, 1, 3, 4, 4, 2, 0, True),            # ceil_mode: window larger than the input
    (1, 2, 11, 6, 3, 3, 1, True),
    (2, 2, 4, 4, 5, 1, 2, True),
]


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=_pool_case_id)
def test_avg_pool2d_matches_torch(case, dtype, count_include_pad):
    N, C, H, W, k, s, p, ceil = case
    rng = np.random.default_rng(seed_of(_pool_case_id(case)))
    x = randn(rng, (N, C, H, W), dtype)
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil,
              count_include_pad=count_include_pad)
    xt = t(x, True)
    y_t = TF.avg_pool2d(xt, **kw)
    y = R.avg_pool2d(x, **kw)
    assert_close(y, y_t.detach().numpy(), dtype)
    assert R.pool2d_output_shape(x.shape, k, s, p, 1, ceil) == y.shape
    gy = randn(rng, y.shape, dtype)
    y_t.backward(t(gy))
    assert_close(R.avg_pool2d_backward(gy, x.shape, **kw), xt.grad.numpy(), dtype)


def test_avg_pool2d_divisors_exact():
    # 5x5 ones, k=3, s=2, p=1, ceil_mode: windows clipped at the padding border count 2 or 3
    # rows with count_include_pad (torch: 4/9, 6/9, ...), and an all-ones input averages to 1
    # without it.
    x = np.ones((1, 1, 5, 5))
    y = R.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True)
    np.testing.assert_allclose(y[0, 0], np.outer([2, 3, 2], [2, 3, 2]) / 9, rtol=1e-15)
    np.testing.assert_array_equal(TF.avg_pool2d(t(x), 3, 2, 1, ceil_mode=True).numpy(), y)
    y = R.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_array_equal(y, np.ones((1, 1, 3, 3)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool2d_any_layout(layout):
    rng = np.random.default_rng(7)
    x = randn(rng, (2, 3, 9, 7), np.float64)
    kw = dict(kernel_size=(3, 2), stride=(2, 1), padding=1, ceil_mode=True, count_include_pad=False)
    y = R.avg_pool2d(relayout(x, layout), **kw)
    assert_close(y, TF.avg_pool2d(t(x), **kw).numpy(), np.float64)
    gy = randn(rng, y.shape, np.float64)
    got = R.avg_pool2d_backward(relayout(gy, layout), x.shape, **kw)
    assert_close(got, R.avg_pool2d_backward(gy, x.shape, **kw), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_batch_zero(dtype):
    x = np.zeros((0, 3, 7, 6), dtype)
    y = R.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert y.shape == tuple(TF.avg_pool2d(t(x), 3, 2, 1, ceil_mode=True).shape)
    assert y.dtype == dtype and y.flags.c_contiguous
    gx = R.avg_pool2d_backward(y, x.shape, 3, 2, 1, ceil_mode=True)
    assert gx.shape == x.shape and gx.dtype == dtype


def test_pool_int_input_converted_to_float32():
    x = np.arange(2 * 16).reshape(2, 1, 4, 4)
    y, idx = R.max_pool2d(x, 2, return_indices=True)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, TF.max_pool2d(t(x.astype(np.float32)), 2).numpy())
    a = R.avg_pool2d(x.astype(np.uint8), 2)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, TF.avg_pool2d(t(x.astype(np.float32)), 2).numpy())
    assert R.max_pool2d_backward(np.ones((2, 1, 2, 2), int), idx, x.shape).dtype == np.float32


# --------------------------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------------------------

# (N, C, H, W, kernel, dilation, padding, stride)
UNFOLD_CASES = [
    (2, 3, 7, 8, 3, 1, 0, 1),
    (2, 3, 7, 8, (2, 3), (1, 2), (1, 2), (2, 1)),
    (1, 2, 5, 5, 5, 1, 0, 1),
    (2, 1, 9, 7, 1, 1, 1, 2),
    (2, 2, 10, 10, 3, 2, 2, 3),
    (1, 3, 6, 11, (1, 4), (3, 1), 0, (1, 3)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", UNFOLD_CASES, ids=_pool_case_id)
def test_im2col_col2im_match_unfold_fold(case, dtype):
    N, C, H, W, k, d, p, s = case
    rng = np.random.default_rng(seed_of(_pool_case_id(case)))
    x = randn(rng, (N, C, H, W), dtype)
    cols = R.im2col(x, k, d, p, s)
    cols_t = TF.unfold(t(x), k, d, p, s).numpy()
    assert cols.dtype == dtype and cols.flags.c_contiguous
    np.testing.assert_array_equal(cols, cols_t)  # a pure gather: exact
    c = randn(rng, cols.shape, dtype)
    assert_close(R.col2im(c, (H, W), k, d, p, s), TF.fold(t(c), (H, W), k, d, p, s).numpy(), dtype)
    assert_close(R.col2im(relayout(c, "negative"), [H, W], k, d, p, s),
                 TF.fold(t(c), (H, W), k, d, p, s).numpy(), dtype)
    np.testing.assert_array_equal(R.im2col(relayout(x, "transposed"), k, d, p, s), cols)


def test_im2col_col2im_adjoint_and_batch_zero():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 8, 7))
    c = rng.standard_normal(R.im2col(x, 3, 2, 1, 2).shape)
    # <im2col(x), c> == <x, col2im(c)>
    lhs = np.vdot(R.im2col(x, 3, 2, 1, 2), c)
    rhs = np.vdot(x, R.col2im(c, (8, 7), 3, 2, 1, 2))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    assert R.im2col(np.zeros((0, 3, 8, 7)), 3).shape == (0, 27, 30)
    out = R.col2im(np.zeros((0, 27, 30), np.float32), (8, 7), 3)
    assert out.shape == (0, 3, 8, 7) and out.dtype == np.float32


# --------------------------------------------------------------------------------------------
# property-based tests
# --------------------------------------------------------------------------------------------

@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    cg, fg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.sampled_from(["same", "valid"])))
    if padding == "same":
        stride = 1
    else:
        stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ph, pw = (0, 0) if isinstance(padding, str) else (padding, padding) if isinstance(padding, int) else padding
    # the smallest input the (dilated) kernel fits in, plus some slack
    H = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 4))
    W = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 4))
    N = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from(DTYPES))
    return dict(x_shape=(N, groups * cg, H, W), w_shape=(groups * fg, cg, kh, kw), dtype=dtype,
                kw=dict(stride=stride, padding=padding, dilation=(dh, dw), groups=groups),
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_conv2d_property_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    dtype = cfg["dtype"]
    x, w = randn(rng, cfg["x_shape"], dtype), randn(rng, cfg["w_shape"], dtype)
    b = randn(rng, (cfg["w_shape"][0],), dtype) if cfg["bias"] else None
    y = R.conv2d(x, w, b, **cfg["kw"])
    gy = randn(rng, y.shape, dtype)
    y_t, gx_t, gw_t, gb_t = torch_conv_grads(x, w, b, gy, **cfg["kw"])
    assert_close(y, y_t, dtype)
    gx, gw, gb = R.conv2d_backward(gy, x, w, **cfg["kw"])
    assert_close(gx, gx_t, dtype)
    assert_close(gw, gw_t, dtype)
    if b is not None:
        assert_close(gb, gb_t, dtype)
    # im2col @ weight is the same convolution (groups=1 view of the first group)
    if cfg["kw"]["groups"] == 1 and not isinstance(cfg["kw"]["padding"], str):
        cols = R.im2col(x, w.shape[2:], cfg["kw"]["dilation"], cfg["kw"]["padding"],
                        cfg["kw"]["stride"])
        y2 = (w.reshape(w.shape[0], -1) @ cols).reshape(y.shape)
        if b is not None:
            y2 += b[:, None, None]
        assert_close(y, y2, dtype)


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    return dict(kernel_size=(kh, kw), stride=stride, padding=(ph, pw),
                dilation=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)),
                       draw(st.integers(1, 10)), draw(st.integers(1, 10))),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_configs())
def test_pooling_property_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    dtype = cfg["dtype"]
    x = randn(rng, cfg["shape"], dtype)
    common = dict(kernel_size=cfg["kernel_size"], stride=cfg["stride"], padding=cfg["padding"],
                  ceil_mode=cfg["ceil_mode"])
    mkw = dict(common, dilation=cfg["dilation"])
    akw = dict(common, count_include_pad=cfg["count_include_pad"])
    xt = t(x, True)
    # max pooling: the reference raises when torch does, and also for a window wholly in the
    # padding (where torch gives -inf)
    try:
        y, idx = R.max_pool2d(x, return_indices=True, **mkw)
    except ValueError as exc:
        if "lies entirely in the padding" in str(exc):
            assert np.isinf(TF.max_pool2d(xt, **mkw).detach().numpy()).any()
        else:
            with pytest.raises(RuntimeError):
                TF.max_pool2d(xt, **mkw)
    else:
        y_t, i_t = TF.max_pool2d(xt, return_indices=True, **mkw)
        np.testing.assert_array_equal(y, y_t.detach().numpy())
        np.testing.assert_array_equal(idx, i_t.numpy())
        gy = randn(rng, y.shape, dtype)
        y_t.backward(t(gy))
        assert_close(R.max_pool2d_backward(gy, idx, x.shape), xt.grad.numpy(), dtype)
    # average pooling
    xt = t(x, True)
    try:
        y = R.avg_pool2d(x, **akw)
    except ValueError:
        with pytest.raises(RuntimeError):
            TF.avg_pool2d(xt, **akw)
    else:
        y_t = TF.avg_pool2d(xt, **akw)
        assert_close(y, y_t.detach().numpy(), dtype)
        gy = randn(rng, y.shape, dtype)
        y_t.backward(t(gy))
        assert_close(R.avg_pool2d_backward(gy, x.shape, **akw), xt.grad.numpy(), dtype)


# --------------------------------------------------------------------------------------------
# argument errors
# --------------------------------------------------------------------------------------------

_X = np.zeros((2, 4, 6, 6), np.float32)
_W = np.zeros((6, 4, 3, 3), np.float32)
_GY = np.zeros((2, 6, 4, 4), np.float32)

ERROR_CASES = [
    # (id, call, exception, message regex)
    ("conv-2d-x", lambda: R.conv2d(_X[0, 0], _W), ValueError,
     r"conv2d: x must be 4-D \(N, C, H, W\), or 3-D \(C, H, W\) for one unbatched image"),
    ("conv-3d-w", lambda: R.conv2d(_X, _W[0]), ValueError, r"conv2d: weight must be 4-D"),
    ("conv-channels", lambda: R.conv2d(_X, np.zeros((6, 3, 3, 3))), ValueError,
     r"conv2d: .*expects 3 input channels.*has 4"),
    ("conv-groups-channels", lambda: R.conv2d(_X, np.zeros((6, 2, 3, 3)), groups=3), ValueError,
     r"expects 6 input channels"),
    ("conv-groups-out", lambda: R.conv2d(_X, np.zeros((5, 2, 3, 3)), groups=2), ValueError,
     r"divisible by groups=2"),
    ("conv-groups-zero", lambda: R.conv2d(_X, _W, groups=0), ValueError, r"groups must be positive"),
    ("conv-groups-float", lambda: R.conv2d(_X, _W, groups=1.0), TypeError, r"groups must be an int"),
    ("conv-kernel-too-big", lambda: R.conv2d(_X, np.zeros((6, 4, 7, 3))), ValueError,
     r"larger than the padded input"),
    ("conv-dilated-too-big", lambda: R.conv2d(_X, _W, dilation=3), ValueError,
     r"larger than the padded input"),
    ("conv-stride-zero", lambda: R.conv2d(_X, _W, stride=0), ValueError, r"stride must be positive"),
    ("conv-stride-neg", lambda: R.conv2d(_X, _W, stride=(1, -1)), ValueError,
     r"stride must be positive"),
    ("conv-dilation-zero", lambda: R.conv2d(_X, _W, dilation=0), ValueError,
     r"dilation must be positive"),
    ("conv-padding-neg", lambda: R.conv2d(_X, _W, padding=-1), ValueError,
     r"padding must be non-negative"),
    ("conv-padding-str", lambda: R.conv2d(_X, _W, padding="full"), ValueError,
     r"padding must be 'valid', 'same'"),
    ("conv-same-strided", lambda: R.conv2d(_X, _W, stride=2, padding="same"), ValueError,
     r"padding='same' is not supported for strided"),
    ("conv-stride-float", lambda: R.conv2d(_X, _W, stride=1.5), TypeError,
     r"stride must be an int or a pair"),
    ("conv-stride-triple", lambda: R.conv2d(_X, _W, stride=(1, 1, 1)), TypeError,
     r"stride must be an int or a pair"),
    ("conv-complex", lambda: R.conv2d(_X.astype(np.complex64), _W), TypeError,
     r"conv2d: x must hold real numbers"),
    ("conv-complex-w", lambda: R.conv2d(_X, _W.astype(complex)), TypeError,
     r"conv2d: weight must hold real numbers"),
    ("conv-object", lambda: R.conv2d(_X.astype(object), _W), TypeError, r"real numbers"),
    ("conv-str", lambda: R.conv2d(np.full((1, 1, 2, 2), "a"), _W), TypeError, r"real numbers"),
    ("conv-bias-shape", lambda: R.conv2d(_X, _W, np.zeros(5)), ValueError, r"conv2d: bias"),
    ("conv-bias-2d", lambda: R.conv2d(_X, _W, np.zeros((6, 1))), ValueError, r"conv2d: bias"),
    ("conv-empty-weight", lambda: R.conv2d(_X, np.zeros((0, 4, 3, 3))), ValueError,
     r"empty dimension"),
    ("convb-grad-shape", lambda: R.conv2d_backward(_GY[:, :, :3], _X, _W), ValueError,
     r"conv2d_backward: grad_y"),
    ("convb-grad-3d", lambda: R.conv2d_backward(_GY[0], _X, _W), ValueError,
     r"conv2d_backward: grad_y"),
    ("convb-mask", lambda: R.conv2d_backward(_GY, _X, _W, output_mask=(True, True)), ValueError,
     r"output_mask must be three booleans"),
    ("convb-complex", lambda: R.conv2d_backward(_GY.astype(complex), _X, _W), TypeError,
     r"grad_y must hold real numbers"),
    ("conv-shape-input", lambda: R.conv2d_output_shape((4, 6), (6, 4, 3, 3)), ValueError,
     r"conv2d_output_shape: input_shape must be a sequence of 4 non-negative ints"),
    ("conv-shape-negative", lambda: R.conv2d_output_shape((2, 4, -6, 6), (6, 4, 3, 3)), ValueError,
     r"conv2d_output_shape: input_shape must be a sequence of 4 non-negative ints"),
    ("conv-shape-groups", lambda: R.conv2d_output_shape((2, 4, 6, 6), (6, 4, 3, 3), groups=2),
     ValueError, r"conv2d_output_shape: .*input channels"),
    ("max-2d", lambda: R.max_pool2d(_X[0, 0], 2), ValueError, r"max_pool2d: x must be 4-D.*unbatched"),
    ("max-pad-half", lambda: R.max_pool2d(_X, 3, padding=2), ValueError, r"at most half"),
    ("max-kernel-zero", lambda: R.max_pool2d(_X, 0), ValueError, r"kernel_size must be positive"),
    ("max-stride-zero", lambda: R.max_pool2d(_X, 2, stride=0), ValueError, r"stride must be positive"),
    ("max-dilation-zero", lambda: R.max_pool2d(_X, 2, dilation=0), ValueError,
     r"dilation must be positive"),
    ("max-too-small", lambda: R.max_pool2d(_X, 7), ValueError, r"max_pool2d: x of shape .* too small"),
    ("max-complex", lambda: R.max_pool2d(_X.astype(complex), 2), TypeError, r"real numbers"),
    ("maxb-idx-shape", lambda: R.max_pool2d_backward(np.zeros((2, 4, 3, 3)),
                                                     np.zeros((2, 4, 3, 2), np.int64), _X.shape),
     ValueError, r"max_pool2d_backward: indices shape .* must equal grad_y shape"),
    ("maxb-idx-neg", lambda: R.max_pool2d_backward(np.zeros((2, 4, 3, 3)),
                                                   np.full((2, 4, 3, 3), -1), _X.shape),
     ValueError, r"indices must lie in \[0, H\*W\)"),
    ("maxb-idx-big", lambda: R.max_pool2d_backward(np.zeros((2, 4, 3, 3)),
                                                   np.full((2, 4, 3, 3), 36), _X.shape),
     ValueError, r"indices must lie in \[0, H\*W\) = \[0, 36\)"),
    ("maxb-idx-float", lambda: R.max_pool2d_backward(np.zeros((2, 4, 3, 3)),
                                                     np.zeros((2, 4, 3, 3)), _X.shape),
     TypeError, r"indices must be an integer array"),
    ("maxb-shape", lambda: R.max_pool2d_backward(np.zeros((2, 4, 3, 3)),
                                                 np.zeros((2, 4, 3, 3), int), (4, 6)),
     ValueError, r"input_shape must be a sequence of 4"),
    ("maxb-nc", lambda: R.max_pool2d_backward(np.zeros((2, 4, 3, 3)),
                                              np.zeros((2, 4, 3, 3), int), (2, 5, 6, 6)),
     ValueError, r"must agree on \(N, C\)"),
    ("avg-2d", lambda: R.avg_pool2d(_X[0, 0], 2), ValueError, r"avg_pool2d: x must be 4-D"),
    ("avg-pad-half", lambda: R.avg_pool2d(_X, 2, padding=(0, 2)), ValueError, r"at most half"),
    ("avg-too-small", lambda: R.avg_pool2d(_X, (2, 8)), ValueError, r"too small"),
    ("avg-str-input", lambda: R.avg_pool2d(_X.astype("U1"), 2), TypeError, r"real numbers"),
    ("avgb-shape", lambda: R.avg_pool2d_backward(np.zeros((2, 4, 3, 2)), _X.shape, 2), ValueError,
     r"avg_pool2d_backward: grad_y must have the pooled shape \(2, 4, 3, 3\)"),
    ("avgb-input-shape", lambda: R.avg_pool2d_backward(np.zeros((2, 4, 3, 3)), (2, 4, 6, 6.5), 2),
     ValueError, r"input_shape must be a sequence of 4"),
    ("pool-shape", lambda: R.pool2d_output_shape((2, 4, 6, 6), 3, padding=2), ValueError,
     r"pool2d_output_shape: .*at most half"),
    ("im2col-2d", lambda: R.im2col(_X[0, 0], 2), ValueError, r"im2col: x must be 4-D"),
    ("im2col-too-big", lambda: R.im2col(_X, 7), ValueError, r"im2col: kernel_size .* does not fit"),
    ("im2col-stride-zero", lambda: R.im2col(_X, 2, stride=0), ValueError, r"stride must be positive"),
    ("col2im-1d", lambda: R.col2im(np.zeros((25,)), (6, 6), 2), ValueError,
     r"col2im: cols must be 3-D"),
    ("col2im-rows", lambda: R.col2im(np.zeros((2, 10, 25)), (6, 6), 2), ValueError,
     r"cols.shape\[1\] \(10\) must be divisible by kH\*kW"),
    ("col2im-blocks", lambda: R.col2im(np.zeros((2, 8, 24)), (6, 6), 2), ValueError,
     r"cols.shape\[2\] \(24\) must equal the number of blocks 5\*5 = 25"),
    ("col2im-complex", lambda: R.col2im(np.zeros((2, 8, 25), complex), (6, 6), 2), TypeError,
     r"real numbers"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_argument_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_torch_also_rejects_the_geometry_errors():
    """The geometric errors above are errors in PyTorch too (no stricter validation here)."""
    xt, wt = t(_X), t(_W)
    for fn in [lambda: TF.conv2d(xt, t(np.zeros((6, 3, 3, 3), np.float32))),
               lambda: TF.conv2d(xt, t(np.zeros((5, 2, 3, 3), np.float32)), groups=2),
               lambda: TF.conv2d(xt, t(np.zeros((6, 4, 7, 3), np.float32))),
               lambda: TF.conv2d(xt, wt, stride=0),
               lambda: TF.conv2d(xt, wt, stride=2, padding="same"),
               lambda: TF.max_pool2d(xt, 3, padding=2),
               lambda: TF.max_pool2d(xt, 7),
               lambda: TF.avg_pool2d(xt, (2, 8)),
               lambda: TF.unfold(xt, 7)]:
        with pytest.raises((RuntimeError, ValueError)):
            fn()


@pytest.mark.parametrize("bad", [
    dict(weight=np.ones((4, 2, 3, 3), np.float32), kernel_size=2),
    dict(kernel_size=2, pool_padding=2),
    dict(kernel_size=5),
    dict(kernel_size=2, pool_stride=0),
    dict(kernel_size=2, ceil_mode="yes"),
    dict(kernel_size=2, bias=np.ones(3, np.float32)),
], ids=["channels", "pool_padding", "pool_too_big", "pool_stride", "ceil_mode", "bias"])
def test_conv2d_max_pool2d_errors_are_the_fast_ops(bad):
    """The reference's fused op raises what the fast one raises (naming conv2d_max_pool2d and
    its pool_* arguments), not the errors of the two calls it makes."""
    from fastconv import functional as F
    from fastconv import reference as R

    args = {"weight": np.ones((4, 3, 3, 3), np.float32), **bad}
    x = np.ones((1, 3, 6, 6), np.float32)
    errors = []
    for op in (F.conv2d_max_pool2d, R.conv2d_max_pool2d):
        with pytest.raises((ValueError, TypeError)) as err:
            op(x, **args)
        errors.append((err.type, str(err.value)))
    assert errors[0] == errors[1] and errors[0][1].startswith("conv2d_max_pool2d: ")
