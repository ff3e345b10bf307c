"""Winograd F(4x4, 3x3)'s forward centres each input plane on its mean and puts the shift back
in the bias (csrc/conv/conv_winograd_driver.h, centre_image): conv(x) = conv(x - c) + c sum_taps(w),
exact with the padding at -c. Checked on inputs whose mean is large beside their spread, where
the transforms' errors would otherwise scale with the mean: against float64 (padding, groups,
bias, the pool-fused forward), against F(2x2)'s error, across thread counts."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R
from fastconv._args import conv2d_geometry


@pytest.fixture(autouse=True)
def _tiles_and_auto(_forced_kernels):
    """F(4x4) runs on the direct register tiles; each test forces the algorithms it compares
    and restores 'auto'."""
    if _core.direct_kernel_lanes() == 0:
        pytest.skip("no conv tiles at this SIMD level")
    yield
    _core.set_conv_algorithm("auto")


def ran(x_shape, w_shape, padding, groups):
    """The algorithm the dispatch takes for this forward (as forced now)."""
    geom = conv2d_geometry(x_shape, w_shape, 1, padding, 1, groups)
    return _core.conv_algorithm("forward", "float32", x_shape, w_shape, *geom.out,
                                *geom.stride, *geom.padding, *geom.dilation, groups)


def shifted_inputs(rng, shape, mean=40.0):
    """Positive inputs (after ReLU: spread ~0.6) whose planes have means of 0.5 to 1.5 times
    `mean`, each channel's different, and each image's a spread or so apart (the output
    channels' spread stays that of the pixels, not of the offsets)."""
    N, C = shape[:2]
    offsets = mean * rng.uniform(0.5, 1.5, (1, C, 1, 1)) + rng.uniform(-1, 1, (N, 1, 1, 1))
    return (np.maximum(rng.standard_normal(shape), 0) + offsets).astype(np.float32)


def spread_error(y, want):
    """max over output channels of max |y - want| / the channel's std (over batch and
    pixels): what a BatchNorm after the conv sees."""
    spread = want.std(axis=(0, 2, 3))
    return float((np.abs(y - want).max(axis=(0, 2, 3)) / spread).max())


def forward(algorithm, x, w, b=None, padding=0, groups=1):
    assert _core.set_conv_algorithm(algorithm)
    assert ran(x.shape, w.shape, padding, groups) == algorithm
    return F.conv2d(x, w, b, padding=padding, groups=groups)


def weights(rng, shape):
    return (rng.standard_normal(shape) / np.sqrt(9 * shape[1])).astype(np.float32)


# (x shape, weight shape, padding, groups)
CASES = [
    ((4, 32, 15, 15), (64, 32, 3, 3), 0, 1),     # simple_cnn.conv2's shape
    ((3, 32, 13, 11), (48, 32, 3, 3), 1, 1),     # cut-off tiles both ways
    ((2, 64, 9, 9), (64, 32, 3, 3), 1, 2),       # groups: each group's own shift and sums
    ((2, 16, 8, 8), (20, 16, 3, 3), 2, 1),       # padding 2: the border rows and columns at -c
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_of_inputs_with_large_means_matches_float64(rng, case, bias):
    # Uncentred, F(4x4)'s error here scales with the mean (40 spreads): ~3e-4 of the output
    # channel's spread; centred it stays near the mean-free ~1e-5.
    x_shape, w_shape, padding, groups = case
    x = shifted_inputs(rng, x_shape)
    w = weights(rng, w_shape)
    b = (100 * rng.standard_normal(w_shape[0])).astype(np.float32) if bias else None
    want = R.conv2d(x.astype(np.float64), w.astype(np.float64),
                    None if b is None else b.astype(np.float64), padding=padding, groups=groups)
    y = forward("winograd4", x, w, b, padding, groups)
    assert spread_error(y, want) < 4e-5


def test_pool_fused_forward_of_inputs_with_large_means_matches_float64(rng):
    x = shifted_inputs(rng, (3, 32, 16, 16))
    w = weights(rng, (32, 32, 3, 3))
    b = rng.standard_normal(32).astype(np.float32)
    conv = R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                    padding=1)
    assert _core.set_conv_algorithm("winograd4")
    y, idx = F.conv2d_max_pool2d(x, w, b, padding=1, kernel_size=2)
    want = R.max_pool2d(conv, 2)
    spread = conv.std(axis=(0, 2, 3))[:, None, None]
    assert (np.abs(y - want).max(axis=0) / spread).max() < 4e-5
    # Each index points at the window's largest output (float64) up to that error.
    picked = np.take_along_axis(conv.reshape(*conv.shape[:2], -1),
                                idx.reshape(*idx.shape[:2], -1), axis=2).reshape(want.shape)
    assert (np.abs(picked - want) / spread).max() < 1e-4


@pytest.mark.parametrize("mean", [20.0, 100.0])
@pytest.mark.parametrize("case", [((8, 32, 15, 15), (64, 32, 3, 3)),
                                  ((2, 256, 9, 9), (256, 256, 3, 3))], ids=str)
def test_error_relative_to_the_channel_spread_is_bounded_like_f2x2s(rng, case, mean):
    # On positive inputs with a large mean, F(4x4) (centred) is no further from float64,
    # relative to each output channel's spread, than F(2x2) (not centred: its error grows
    # with the mean); measured F(4x4) 9e-6 to 5e-5, F(2x2) 1.5e-5 to 4.7e-4; F(4x4)
    # uncentred 6e-5 to 6e-4. Padding 0: the tiles at the bottom and right edges reach past
    # the image, into rows that must stay 0 after the shift.
    x_shape, w_shape = case
    x = shifted_inputs(rng, x_shape, mean)
    w = weights(rng, w_shape)
    want = R.conv2d(x.astype(np.float64), w.astype(np.float64))
    f4 = spread_error(forward("winograd4", x, w), want)
    f2 = spread_error(forward("winograd", x, w), want)
    assert f4 <= 1.5 * f2
    assert f4 < 1e-4


def test_centred_forward_does_not_depend_on_thread_count(rng, threads):
    x = shifted_inputs(rng, (5, 32, 15, 15))
    w = weights(rng, (64, 32, 3, 3))
    b = rng.standard_normal(64).astype(np.float32)
    runs = []
    for n in (1, 2):
        threads(n)
        runs.append(forward("winograd4", x, w, b, padding=1))
        runs.append(F.conv2d_max_pool2d(x, w, b, padding=1, kernel_size=2)[0])
    np.testing.assert_array_equal(runs[0], runs[2])
    np.testing.assert_array_equal(runs[1], runs[3])
