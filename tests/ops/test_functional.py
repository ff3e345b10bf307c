"""The compiled ops (fastconv.functional) against the pure-NumPy reference, PyTorch and
finite differences, on many shapes; thread-count independence; every SIMD level; layouts,
dtypes, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R

from numerics import assert_close

# (N, C, H, W, C_out, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 3, 8, 8, 4, 3, 1, 0, 1, 1),
    (1, 3, 8, 8, 4, 3, 1, 0, 1, 1),            # batch 1: GEMM split over threads
    (3, 4, 11, 9, 6, 3, 2, 1, 1, 2),           # odd sizes, stride 2, groups 2
    (2, 8, 7, 7, 8, 3, 1, 1, 2, 8),            # depthwise, dilation 2
    (2, 6, 9, 10, 12, 3, 3, 2, 3, 3),          # stride 3, dilation 3, groups 3
    (4, 16, 5, 5, 32, 1, 1, 0, 1, 1),          # 1x1 pointwise fast path
    (2, 16, 5, 5, 8, 1, 2, 0, 1, 1),           # 1x1 strided: pointwise on the subsampled image
    (3, 24, 9, 8, 40, 1, (2, 3), 0, 1, 2),     # 1x1 strided: odd sizes, strides a pair, grouped
    (2, 6, 7, 7, 5, 1, 2, 0, 3, 1),            # 1x1 strided, dilated (no effect on 1x1)
    (2, 8, 9, 9, 12, 1, 2, 1, 1, 1),           # 1x1 strided and padded: not subsampled
    (2, 4, 5, 5, 8, 1, 1, 1, 1, 2),            # 1x1 padded, grouped
    (2, 3, 5, 5, 7, 5, 1, 0, 1, 1),            # kernel == input size
    (2, 3, 5, 7, 7, (5, 7), 1, 0, 1, 1),       # kernel == input size, rectangular
    (3, 5, 13, 6, 9, (3, 1), (2, 1), (1, 0), (1, 2), 1),  # pairs everywhere
    (2, 3, 12, 12, 5, 4, 1, "same", 1, 1),     # even kernel 'same': extra pad bottom/right
    (2, 3, 12, 12, 5, 3, 1, "same", 2, 1),
    (2, 3, 9, 9, 5, 3, 1, "valid", 1, 1),
    (17, 3, 6, 6, 4, 3, 1, 1, 1, 1),           # batch not a multiple of the chunk count
    (2, 40, 9, 9, 70, 3, 1, 1, 1, 1),          # C_out not a multiple of the register tile
    (9, 3, 32, 32, 32, 3, 1, 0, 1, 1),         # simple_cnn's first layer
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),            # tiny
    (2, 2, 3, 3, 2, 3, 1, 2, 1, 1),            # padding larger than half the kernel is fine for conv
    # >= 16 channels per group: the direct channels-last kernels (float32, AVX-512 or AVX2)
    (2, 32, 15, 15, 64, 3, 1, 0, 1, 1),        # simple_cnn's second layer
    (3, 16, 8, 8, 48, 3, 1, 1, 1, 1),          # a 3-vector output block
    (2, 32, 9, 11, 16, 3, 2, 1, 1, 1),         # stride 2 (input gradient on the GEMM path)
    (2, 64, 6, 7, 40, 3, 1, 2, 2, 2),          # groups of 32, dilation 2, ragged output block
    (1, 128, 8, 8, 128, 3, 1, 1, 1, 1),        # batch 1: threads split the tiles of one image
    (2, 20, 7, 9, 36, (3, 5), 1, (4, 0), 1, 1),  # padding beyond the kernel: grad_y is cropped
    (2, 17, 5, 23, 33, (1, 3), (1, 2), (0, 1), 1, 1),  # wide rows, odd channel counts
    (3, 32, 17, 17, 32, 3, 1, 1, 1, 1),        # Winograd (all passes): odd size, partial tiles
    (2, 16, 9, 12, 24, 3, 1, 3, 1, 1),         # Winograd with padding beyond the kernel
    # many channels on few pixels: images share passes through the tiles (direct, Winograd),
    # the weight gradient runs as one GEMM over the batch (AVX2)
    (13, 40, 4, 4, 44, 3, 1, 1, 1, 1),
    (5, 20, 3, 5, 36, 3, 2, 1, 1, 1),
    (130, 24, 4, 4, 40, 3, 1, 1, 1, 1),        # that GEMM over two slabs of images
    (12, 16, 1, 1, 16, (3, 1), 1, (3, 0), 1, 1),  # tiny outputs run per pixel: some see only padding
    # few input channels (the NCHW first-layer kernels): lenet5's conv1, a padded RGB layer
    # with ragged rows, a 7-wide dilated kernel, and grouped
    (3, 3, 32, 32, 6, 5, 1, 0, 1, 1),
    (2, 3, 19, 21, 32, 3, 1, 1, 1, 1),
    (2, 2, 13, 40, 9, 7, 1, 3, 2, 1),
    (2, 4, 9, 18, 10, (2, 3), 1, (1, 0), 1, 2),
    (3, 6, 14, 14, 16, 5, 1, 0, 1, 1),         # lenet5's conv2: 6 input channels
    (2, 12, 11, 9, 8, 3, 1, (3, 1), 1, 2),     # padding beyond the kernel, groups of 6
]


def conv_args(case):
    N, C, H, W, Fo, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    return (N, C, H, W), (Fo, C // g, kh, kw), dict(stride=s, padding=p, dilation=d, groups=g)


def random_conv(rng, case, dtype):
    x_shape, w_shape, kw = conv_args(case)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b, kw


def check_conv_against_reference(rng, case, dtype):
    x, w, b, kw = random_conv(rng, case, dtype)
    y = F.conv2d(x, w, b, **kw)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, R.conv2d(x, w, b, **kw), what="forward")
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = F.conv2d_backward(gy, x, w, **kw)
    want = R.conv2d_backward(gy, x, w, **kw)
    for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        assert a.dtype == dtype
        assert_close(a, e, what=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_reference(rng, case, dtype):
    check_conv_against_reference(rng, case, dtype)


@pytest.fixture
def conv_algorithm():
    """Force one formulation of stride-1 convolutions; 'auto' restored afterwards."""
    yield lambda name: _core.set_conv_algorithm(name)
    _core.set_conv_algorithm("auto")


# The formulations that run on the register tiles of an ISA (direct channels-last, Winograd,
# few-channel NCHW), and the SIMD levels that have such tiles.
TILE_ALGORITHMS = ["direct", "winograd", "winograd4", "direct_nchw"]
TILE_LEVELS = ["avx2", "avx512"]


def use_tile_level(level):
    """Select `level` for the tiles' tests, or skip where this CPU or build has no tiles there
    (restore the level with the simd_level fixture)."""
    if not _core.set_simd_level(level) or _core.direct_kernel_lanes() == 0:
        pytest.skip(f"this CPU or build has no {level} conv tiles")


def skip_without_tiles(algorithm):
    """Skip a test of a tile algorithm at the current SIMD level if that level has no tiles."""
    if algorithm in TILE_ALGORITHMS and _core.direct_kernel_lanes() == 0:
        pytest.skip(f"no {algorithm} kernels at SIMD level {fastconv.simd_level()}")


@pytest.mark.parametrize("algorithm", ["im2col", "wide", "direct", "winograd", "winograd4",
                                       "direct_nchw", "subsampled", "valid_taps"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_every_algorithm_matches_reference(rng, conv_algorithm, case, dtype, algorithm):
    # Convolutions have several formulations (im2col packing, wide-row shifted GEMM, direct
    # channels-last tiles, Winograd F(2x2, 3x3) and F(4x4, 3x3)), chosen by size; each must be right on every
    # shape it accepts (and the others must fall back correctly).
    skip_without_tiles(algorithm)
    assert conv_algorithm(algorithm)
    check_conv_against_reference(rng, case, dtype)


@pytest.mark.parametrize("level", TILE_LEVELS)
@pytest.mark.parametrize("algorithm", TILE_ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_tile_algorithms_every_level_match_reference_and_ignore_threads(
        rng, conv_algorithm, simd_level, threads, case, algorithm, level):
    # The tiles of every ISA this CPU runs (an AVX-512 CPU runs the AVX2 ones too), forced
    # wherever they apply, float32: right on every case, and the same bits with 1 and 2
    # threads (threads split images or an image's tiles; every sum keeps its order).
    use_tile_level(level)
    assert conv_algorithm(algorithm)
    threads(1)
    check_conv_against_reference(rng, case, np.float32)
    x, w, b, kw = random_conv(rng, case, np.float32)
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, **kw)).astype(np.float32)
    assert_same_with_1_and_2_threads(
        threads, lambda: (F.conv2d(x, w, b, **kw), *F.conv2d_backward(gy, x, w, **kw)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9, 64, 8, 8, 128, 2), (5, 24, 9, 7, 40, 3), (3, 3, 4, 4, 2, 2)],
                         ids=str)
def test_strided_pointwise_runs_subsampled(rng, threads, shape, dtype):
    # 1x1 layers with a stride (ResNet's shortcuts) run as pointwise layers on the subsampled
    # image: the reference's values, no gradient between the strides, and the same bits
    # with 1 and 2 threads.
    N, C, H, W, Fo, s = shape
    x, w, b = (rng.standard_normal(sh).astype(dtype) for sh in ((N, C, H, W), (Fo, C, 1, 1), (Fo,)))
    oh, ow = (H - 1) // s + 1, (W - 1) // s + 1
    for pass_ in ("forward", "backward_input", "backward_weight"):
        assert _core.conv_algorithm(pass_, dtype, (N, C, H, W), (Fo, C, 1, 1), oh, ow, s, s,
                                    0, 0, 1, 1, 1) == "subsampled"
    gy = rng.standard_normal((N, Fo, oh, ow)).astype(dtype)
    threads(1)
    check_conv_against_reference(rng, (N, C, H, W, Fo, 1, s, 0, 1, 1), dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, stride=s)
    between = np.ones((H, W), bool)
    between[::s, ::s] = False
    assert not gx[:, :, between].any()
    assert_close(gw, R.conv2d_backward(gy, x, w, stride=s)[1], what="grad_weight")
    assert_same_with_1_and_2_threads(
        threads, lambda: (F.conv2d(x, w, b, stride=s), *F.conv2d_backward(gy, x, w, stride=s)))


def test_set_conv_algorithm_rejects_unknown():
    assert not _core.set_conv_algorithm("fft")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES[:8] + CONV_CASES[11:13] + CONV_CASES[19:], ids=str)
def test_conv2d_matches_torch(rng, torch, case, dtype):
    x, w, b, kw = random_conv(rng, case, dtype)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    y = F.conv2d(x, w, b, **kw)
    assert_close(y, yt.detach().numpy(), what="forward")
    gy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = F.conv2d_backward(gy, x, w, **kw)
    assert_close(gx, xt.grad.numpy(), what="grad_x")
    assert_close(gw, wt.grad.numpy(), what="grad_weight")
    assert_close(gb, bt.grad.numpy(), what="grad_bias")


def test_conv2d_backward_output_mask(rng):
    x, w, b, kw = random_conv(rng, CONV_CASES[2], np.float64)
    gy = rng.standard_normal(F.conv2d(x, w, **kw).shape)
    full = F.conv2d_backward(gy, x, w, **kw)
    for mask in [(True, False, False), (False, True, False), (False, False, True)]:
        part = F.conv2d_backward(gy, x, w, output_mask=mask, **kw)
        for m, p, f in zip(mask, part, full):
            if m:
                np.testing.assert_array_equal(p, f)
            else:
                assert p is None


# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    (2, 3, 8, 8, 2, None, 0, 1, False),
    (1, 1, 7, 7, 2, None, 0, 1, True),
    (2, 3, 7, 9, 3, 2, 1, 1, False),
    (2, 3, 7, 9, 3, 2, 1, 1, True),
    (2, 2, 10, 10, 3, 3, 1, 2, True),
    (3, 4, 11, 6, (3, 2), (2, 1), (1, 1), 1, False),
    (2, 2, 5, 5, 5, 1, 2, 1, False),
    (2, 2, 6, 6, 4, 3, 2, 1, True),
    (64, 8, 30, 30, 2, 2, 0, 1, False),
    (2, 3, 7, 9, 2, None, 0, 1, False),       # 2x2 fast path, odd sizes: last row/col unused
    (3, 2, 6, 70, 2, 2, 0, 1, False),         # 2x2 fast path, more than one block of 16
]


def pool_kwargs(case):
    N, C, H, W, k, s, p, d, ceil = case
    return (N, C, H, W), dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil), d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_matches_reference(rng, case, dtype):
    shape, kw, d = pool_kwargs(case)
    # A permutation: no ties, so the argmax is unambiguous.
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)
    y, idx = F.max_pool2d(x, dilation=d, return_indices=True, **kw)
    ry, ridx = R.max_pool2d(x, dilation=d, return_indices=True, **kw)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    assert idx.dtype == np.int64
    gy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.max_pool2d_backward(gy, idx, x.shape), R.max_pool2d_backward(gy, ridx, x.shape))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[7] == 1], ids=str)
def test_avg_pool2d_matches_reference(rng, case, dtype, count_include_pad):
    shape, kw, _ = pool_kwargs(case)
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d(x, count_include_pad=count_include_pad, **kw)
    assert_close(y, R.avg_pool2d(x, count_include_pad=count_include_pad, **kw))
    gy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.avg_pool2d_backward(gy, x.shape, count_include_pad=count_include_pad, **kw),
                 R.avg_pool2d_backward(gy, x.shape, count_include_pad=count_include_pad, **kw))


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pooling_matches_torch(rng, torch, case):
    shape, kw, d = pool_kwargs(case)
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, dilation=d, return_indices=True, **kw)
    y, idx = F.max_pool2d(x, dilation=d, return_indices=True, **kw)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    assert_close(F.max_pool2d_backward(gy, idx, shape), xt.grad.numpy())
    if d == 1:
        for cip in (True, False):
            xt.grad = None
            yt = torch.nn.functional.avg_pool2d(xt, count_include_pad=cip, **kw)
            y = F.avg_pool2d(x, count_include_pad=cip, **kw)
            assert_close(y, yt.detach().numpy())
            yt.backward(torch.tensor(gy))
            assert_close(F.avg_pool2d_backward(gy, shape, count_include_pad=cip, **kw),
                         xt.grad.numpy())


def test_max_pool2d_rejects_windows_wholly_in_the_padding():
    # PyTorch returns -inf and an index into another row for such a window; we refuse it.
    for m in (F, R):
        with pytest.raises(ValueError, match="lies entirely in the padding"):
            m.max_pool2d(np.ones((1, 1, 2, 1)), (1, 2), (2, 1), (0, 1), (1, 2))
        with pytest.raises(ValueError, match="window 0 along H"):
            m.max_pool2d(np.ones((1, 1, 3, 3)), 2, 1, 1, 4)


def test_max_pool2d_nan_propagates_and_first_max_wins():
    x = np.array([[[[1.0, 1.0], [np.nan, 0.0]]]])
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 2
    y, idx = F.max_pool2d(np.ones((1, 1, 2, 2)), 2, return_indices=True)
    assert y[0, 0, 0, 0] == 1.0 and idx[0, 0, 0, 0] == 0


# (N, C, H, W, kernel, dilation, padding, stride)
UNFOLD_CASES = [
    (2, 3, 6, 6, 3, 1, 0, 1),
    (1, 2, 7, 5, (2, 3), (1, 2), (1, 0), (2, 1)),
    (2, 1, 9, 9, 3, 2, 2, 3),
    (3, 4, 4, 4, 1, 1, 0, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", UNFOLD_CASES, ids=str)
def test_im2col_col2im_match_reference(rng, case, dtype):
    N, C, H, W, k, d, p, s = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    cols = F.im2col(x, k, d, p, s)
    np.testing.assert_array_equal(cols, R.im2col(x, k, d, p, s))  # pure copies: exact
    c = rng.standard_normal(cols.shape).astype(dtype)
    assert_close(F.col2im(c, (H, W), k, d, p, s), R.col2im(c, (H, W), k, d, p, s))
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>
    lhs = float(np.vdot(cols.astype(np.float64), c))
    rhs = float(np.vdot(x.astype(np.float64), F.col2im(c, (H, W), k, d, p, s)))
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


@pytest.mark.parametrize("case", UNFOLD_CASES, ids=str)
def test_im2col_col2im_match_torch(rng, torch, case):
    N, C, H, W, k, d, p, s = case
    x = rng.standard_normal((N, C, H, W))
    cols = torch.nn.functional.unfold(torch.tensor(x), k, d, p, s).numpy()
    np.testing.assert_array_equal(F.im2col(x, k, d, p, s), cols)
    folded = torch.nn.functional.fold(torch.tensor(cols), (H, W), k, d, p, s).numpy()
    assert_close(F.col2im(cols, (H, W), k, d, p, s), folded)


conv_configs = st.fixed_dictionaries({
    "N": st.integers(1, 3), "groups": st.integers(1, 3), "cpg": st.integers(1, 3),
    "fpg": st.integers(1, 4), "H": st.integers(1, 12), "W": st.integers(1, 12),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 3),
    "sw": st.integers(1, 3), "ph": st.integers(0, 2), "pw": st.integers(0, 2),
    "dh": st.integers(1, 3), "dw": st.integers(1, 3), "f64": st.booleans(), "seed": st.integers(0, 9),
})


@settings(max_examples=60, deadline=None)
@given(conv_configs)
def test_conv2d_random_configurations(cfg):
    check_random_conv(cfg)


@pytest.mark.parametrize("algorithm", TILE_ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(cfg=conv_configs, extra_c=st.integers(0, 40), extra_f=st.integers(0, 40),
       square3=st.booleans())
def test_fast_conv_algorithms_random_configurations(algorithm, cfg, extra_c, extra_f, square3):
    # The direct kernels and Winograd forced onto random geometries, with channel counts that
    # fill zero, one or several register vectors, ragged or not (square3: 3x3 stride 1
    # undilated, the shapes Winograd takes).
    skip_without_tiles(algorithm)
    cfg = dict(cfg, cpg=cfg["cpg"] + extra_c, fpg=cfg["fpg"] + extra_f, f64=False)
    if square3:
        cfg.update(kh=3, kw=3, sh=1, sw=1, dh=1, dw=1)
    assert _core.set_conv_algorithm(algorithm)
    try:
        check_random_conv(cfg)
    finally:
        _core.set_conv_algorithm("auto")


tile_edge_configs = st.fixed_dictionaries({
    "N": st.sampled_from([1, 2, 5, 13]), "cin": st.integers(1, 44), "cout": st.integers(1, 44),
    "H": st.integers(1, 19), "W": st.integers(1, 27), "k": st.sampled_from([1, 2, 3, 5]),
    "stride": st.integers(1, 2), "pad": st.integers(0, 2), "seed": st.integers(0, 9),
})


@pytest.mark.parametrize("level", TILE_LEVELS)
@pytest.mark.parametrize("algorithm", TILE_ALGORITHMS + ["auto"])
@settings(max_examples=40, deadline=None)
@given(cfg=tile_edge_configs)
def test_tile_edge_shapes_every_level(level, algorithm, cfg):
    # The register tiles of each ISA on their edges: channel counts that fill no vector or a
    # ragged last one (AVX2: not multiples of 8), rows of pixels not a multiple of the vector
    # (few-channel tiles), batch 1 (threads split one image), small images that share passes
    # (image batches: 13 images of 4x4) and many channels on few pixels (the weight gradient
    # as one GEMM); against the reference, and the same bits with 1 and 2 threads.
    before = (fastconv.simd_level(), fastconv.get_num_threads())
    try:
        if not _core.set_simd_level(level) or _core.direct_kernel_lanes() == 0:
            pytest.skip(f"this CPU or build has no {level} conv tiles")
        assert _core.set_conv_algorithm(algorithm)
        case = (cfg["N"], cfg["cin"], cfg["H"], cfg["W"], cfg["cout"], cfg["k"], cfg["stride"],
                cfg["pad"], 1, 1)
        x_shape, w_shape, kw = conv_args(case)
        try:
            F.conv2d_output_shape(x_shape, w_shape, **kw)
        except ValueError:
            return
        rng = np.random.default_rng(cfg["seed"])
        fastconv.set_num_threads(1)
        check_conv_against_reference(rng, case, np.float32)
        x, w, b, _ = random_conv(rng, case, np.float32)
        gy = rng.standard_normal(F.conv2d_output_shape(x_shape, w_shape, **kw)).astype(np.float32)
        runs = []
        for n in (1, 2):
            fastconv.set_num_threads(n)
            runs.append((F.conv2d(x, w, b, **kw), *F.conv2d_backward(gy, x, w, **kw)))
        for a, b_ in zip(*runs):
            np.testing.assert_array_equal(a, b_)
    finally:
        _core.set_conv_algorithm("auto")
        _core.set_simd_level(before[0])
        fastconv.set_num_threads(before[1])


def check_random_conv(cfg):
    g = cfg["groups"]
    case = (cfg["N"], g * cfg["cpg"], cfg["H"], cfg["W"], g * cfg["fpg"], (cfg["kh"], cfg["kw"]),
            (cfg["sh"], cfg["sw"]), (cfg["ph"], cfg["pw"]), (cfg["dh"], cfg["dw"]), g)
    x_shape, w_shape, kw = conv_args(case)
    try:
        fastconv.F.conv2d_output_shape(x_shape, w_shape, **kw)
    except ValueError:
        with pytest.raises(ValueError):  # both modules reject what does not fit
            R.conv2d(np.zeros(x_shape), np.zeros(w_shape), **kw)
        with pytest.raises(ValueError):
            F.conv2d(np.zeros(x_shape), np.zeros(w_shape), **kw)
        return
    check_conv_against_reference(np.random.default_rng(cfg["seed"]), case,
                                 np.float64 if cfg["f64"] else np.float32)


pool_configs = st.fixed_dictionaries({
    "N": st.integers(1, 2), "C": st.integers(1, 3), "H": st.integers(1, 11), "W": st.integers(1, 11),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 4), "sw": st.integers(1, 4),
    "ph": st.integers(0, 2), "pw": st.integers(0, 2), "dh": st.integers(1, 3), "dw": st.integers(1, 3),
    "ceil": st.booleans(), "cip": st.booleans(), "seed": st.integers(0, 9),
})


@settings(max_examples=80, deadline=None)
@given(pool_configs)
def test_pooling_random_configurations(cfg):
    rng = np.random.default_rng(cfg["seed"])
    shape = (cfg["N"], cfg["C"], cfg["H"], cfg["W"])
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    kw = dict(kernel_size=(cfg["kh"], cfg["kw"]), stride=(cfg["sh"], cfg["sw"]),
              padding=(cfg["ph"], cfg["pw"]), ceil_mode=cfg["ceil"])
    dil = (cfg["dh"], cfg["dw"])
    for fn, extra in ((F.max_pool2d, dict(dilation=dil)), (F.avg_pool2d, {})):
        ref = getattr(R, fn.__name__)
        try:
            want = ref(x, **kw, **extra)
        except ValueError:
            with pytest.raises(ValueError):
                fn(x, **kw, **extra)
            continue
        np.testing.assert_allclose(fn(x, **kw, **extra), want, rtol=1e-12)  # -inf == -inf
    try:
        y, idx = F.max_pool2d(x, dilation=dil, return_indices=True, **kw)
    except ValueError:
        return
    ry, ridx = R.max_pool2d(x, dilation=dil, return_indices=True, **kw)
    np.testing.assert_array_equal(idx, ridx)
    assert np.isfinite(y).all()  # every window sees the input (else it is rejected)
    gy = rng.standard_normal(y.shape)
    assert_close(F.max_pool2d_backward(gy, idx, shape), R.max_pool2d_backward(gy, ridx, shape))
    y = F.avg_pool2d(x, count_include_pad=cfg["cip"], **kw)
    gy = rng.standard_normal(y.shape)
    assert_close(F.avg_pool2d_backward(gy, shape, count_include_pad=cfg["cip"], **kw),
                 R.avg_pool2d_backward(gy, shape, count_include_pad=cfg["cip"], **kw))


def numerical_gradient(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of a (in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[4], CONV_CASES[11]], ids=str)
def test_conv2d_gradient_numerically(rng, case):
    x, w, b, kw = random_conv(rng, case, np.float64)
    r = rng.standard_normal(F.conv2d(x, w, b, **kw).shape)
    loss = lambda: float(np.sum(F.conv2d(x, w, b, **kw) * r))  # noqa: E731
    gx, gw, gb = F.conv2d_backward(r, x, w, **kw)
    for analytic, param in ((gx, x), (gw, w), (gb, b)):
        assert rel_error(analytic, numerical_gradient(loss, param)) < 1e-7


def test_pooling_gradients_numerically(rng):
    x = rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) / 10.0  # distinct: max is smooth
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    y, idx = F.max_pool2d(x, return_indices=True, **kw)
    r = rng.standard_normal(y.shape)
    num = numerical_gradient(lambda: float(np.sum(F.max_pool2d(x, **kw) * r)), x, eps=1e-4)
    assert rel_error(F.max_pool2d_backward(r, idx, x.shape), num) < 1e-7
    for cip in (True, False):
        r = rng.standard_normal(F.avg_pool2d(x, count_include_pad=cip, **kw).shape)
        num = numerical_gradient(lambda: float(np.sum(F.avg_pool2d(x, count_include_pad=cip, **kw) * r)), x)
        assert rel_error(F.avg_pool2d_backward(r, x.shape, count_include_pad=cip, **kw), num) < 1e-7


THREAD_CASES = [CONV_CASES[0], CONV_CASES[1], CONV_CASES[2], CONV_CASES[5], CONV_CASES[14],
                (64, 16, 10, 10, 32, 3, 1, 1, 1, 1), (3, 8, 12, 12, 16, 3, 1, 1, 1, 1),
                (1, 32, 9, 9, 48, 3, 1, 1, 1, 1), (12, 32, 9, 9, 48, 3, 1, 1, 1, 1),
                (1, 32, 24, 24, 16, 3, 1, 1, 1, 1), (10, 32, 24, 24, 16, 3, 1, 1, 1, 1),
                (1, 3, 32, 32, 32, 3, 1, 1, 1, 1), (10, 3, 32, 32, 6, 5, 1, 0, 1, 1),
                (1, 6, 14, 14, 16, 5, 1, 0, 1, 1), (10, 6, 14, 14, 16, 5, 1, 0, 1, 1)]


@pytest.mark.parametrize("case", THREAD_CASES, ids=str)
def test_results_do_not_depend_on_thread_count(rng, threads, case):
    x, w, b, kw = random_conv(rng, case, np.float32)
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, **kw)).astype(np.float32)

    def run():
        y = F.conv2d(x, w, b, **kw)
        grads = F.conv2d_backward(gy, x, w, **kw)
        p, idx = F.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
        a = F.avg_pool2d(x, 3, 1, 1)
        return (y, *grads, p, idx, a, F.max_pool2d_backward(p, idx, x.shape),
                F.avg_pool2d_backward(a, x.shape, 3, 1, 1))

    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(run())
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("dtype,precision", [(np.float32, "f32"), (np.float64, None),
                                             (np.float32, "bf16")])
@pytest.mark.parametrize("case", [(37, 16, 8, 8, 24, 3, 2, 1), (9, 8, 4, 4, 16, 3, 1, 1),
                                  (70, 4, 3, 3, 8, 2, 2, 0), (5, 12, 16, 16, 8, 3, 2, 1)],
                         ids=str)
def test_im2col_batches_images_with_the_bits_of_each_alone(rng, threads, forced, case, dtype,
                                                           precision):
    """The im2col forward and input gradient multiply several images' small maps in one GEMM
    (about 256 columns): each image's output and input gradient must still have the bits it
    has alone, at any thread count, the batch's last (partial) GEMM included. The weight
    gradient sums the images' batches in an order of its own, the same at any thread count."""
    n, c, h, w_, f, k, stride, pad = case
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    kw = dict(stride=stride, padding=pad, precision=precision)
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, stride=stride,
                                                   padding=pad)).astype(dtype)
    forced("im2col")
    alone_y = [F.conv2d(x[i:i + 1], w, b, **kw) for i in range(n)]
    alone_gx = [F.conv2d_backward(gy[i:i + 1], x[i:i + 1], w, output_mask=(True, False, False),
                                  **kw)[0] for i in range(n)]
    gws = []
    for t in (1, 2, 3):
        threads(t)
        np.testing.assert_array_equal(F.conv2d(x, w, b, **kw), np.concatenate(alone_y))
        gx, gw, _ = F.conv2d_backward(gy, x, w, **kw)
        np.testing.assert_array_equal(gx, np.concatenate(alone_gx))
        gws.append(gw)
    for gw in gws[1:]:
        np.testing.assert_array_equal(gw, gws[0])


@pytest.fixture
def simd_level():
    before = _core.simd_level()
    yield
    assert _core.set_simd_level(before)


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_every_simd_level_is_correct(rng, simd_level, level):
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    assert fastconv.simd_level() == level
    for case in (CONV_CASES[2], CONV_CASES[5], CONV_CASES[15], CONV_CASES[16], CONV_CASES[19]):
        for dtype in (np.float32, np.float64):
            check_conv_against_reference(rng, case, dtype)


def test_set_simd_level_rejects_unknown():
    assert not _core.set_simd_level("avx9000")


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy(rng, simd_level, level, trans_a, trans_b, dtype):
    """Every micro-kernel ISA, with partial register tiles on both sides (M and N not
    multiples of any tile), and C accumulated onto."""
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    # A . B^T with M < 16 or N < 32 runs as dot products of rows (AVX-512), the last two
    # shapes with threads splitting B's rows.
    for M, N, K in [(1, 1, 1), (7, 33, 5), (65, 130, 300), (128, 64, 1000), (3, 700, 17),
                    (13, 21, 40), (6, 16, 3), (64, 10, 1030), (5, 601, 700)]:
        a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
        b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
        want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
        c = np.empty((M, N), dtype)
        _core.gemm(a, b, c, trans_a, trans_b, False)
        assert_close(c, want, tol=TOL_GEMM[np.dtype(dtype)] * np.sqrt(K))
        c0 = c.copy()
        _core.gemm(a, b, c, trans_a, trans_b, True)  # accumulate: c += a b
        assert_close(c, c0 + want, tol=TOL_GEMM[np.dtype(dtype)] * np.sqrt(K))


TOL_GEMM = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-14}


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_large_outputs_written_once(rng, simd_level, level, dtype):
    # C of 2 MiB or more written by one k-block at 64-byte aligned rows: non-temporal stores
    # (AVX-512), partial tiles at the edges; also unaligned, accumulated and two k-blocks.
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    # (per thread 1025 rows of 528 floats or 264 doubles: 2.1 MiB, rows of a multiple of 64
    # bytes; 2050 rows = 256 panels of 8 and 2 more, 528 = 16 tiles of 32 and a half)
    M, N = 2050, 528 if dtype == np.float32 else 264
    for K, aligned, accumulate in [(64, True, False), (64, False, False), (64, True, True),
                                   (600, True, False)]:
        a = rng.standard_normal((K, M)).astype(dtype)  # the weight-gradient layout: A^T
        b = rng.standard_normal((K, N)).astype(dtype)
        want = a.T.astype(np.float64) @ b
        if aligned:
            c = F._empty_aligned((M, N), dtype)
            assert c.ctypes.data % 64 == 0
        else:
            c = F._empty_aligned((M * N + 1,), dtype)[1:].reshape(M, N)
        c[...] = 1.0
        _core.gemm(a, b, c, True, False, accumulate)
        assert_close(c, want + (1.0 if accumulate else 0.0), tol=TOL_GEMM[np.dtype(dtype)] * np.sqrt(K))



LAYOUTS = {
    "transposed_view": lambda a: np.ascontiguousarray(a.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
    "negative_strides": lambda a: np.ascontiguousarray(a[:, :, ::-1, ::-1])[:, :, ::-1, ::-1],
    "fortran_order": lambda a: np.asfortranarray(a),
    "strided_slice": lambda a: np.repeat(a, 2, axis=3)[:, :, :, ::2],
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_any_input_layout(rng, layout):
    make = LAYOUTS[layout]
    x, w, b, kw = random_conv(rng, CONV_CASES[2], np.float64)
    xv, wv = make(x), make(w)
    assert not xv.flags.c_contiguous
    np.testing.assert_array_equal(F.conv2d(xv, wv, b, **kw), F.conv2d(x, w, b, **kw))
    gy = rng.standard_normal(F.conv2d(x, w, **kw).shape)
    for a, e in zip(F.conv2d_backward(make(gy), xv, wv, **kw), F.conv2d_backward(gy, x, w, **kw)):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(F.max_pool2d(xv, 2), F.max_pool2d(x, 2))
    np.testing.assert_array_equal(F.avg_pool2d(xv, 2), F.avg_pool2d(x, 2))
    np.testing.assert_array_equal(F.im2col(xv, 3), F.im2col(x, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_that_went_through_pickle(rng, dtype):
    # multiprocessing / joblib hand arrays over by pickle: their dtype is equal to float32 (or
    # float64) but not the same object, which the bindings once took for a wrong dtype.
    import pickle
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    xp, wp = pickle.loads(pickle.dumps(x)), pickle.loads(pickle.dumps(w))
    assert xp.dtype == x.dtype
    y = F.conv2d(x, w)
    gy = rng.standard_normal(y.shape).astype(dtype)
    pooled, idx = F.max_pool2d(x, 2, return_indices=True)
    for fn in (lambda a, b: F.conv2d(a, b), lambda a, b: F.conv2d_backward(gy, a, b),
               lambda a, b: F.max_pool2d(a, 2, return_indices=True),
               lambda a, b: F.max_pool2d_backward(pooled, pickle.loads(pickle.dumps(idx)), a.shape),
               lambda a, b: F.avg_pool2d(a, 2), lambda a, b: F.relu(a),
               lambda a, b: F.im2col(a, 3), lambda a, b: F.batch_norm_train(a),
               lambda a, b: F.linear(a.reshape(16, -1), b.reshape(4, -1)[:, :24]),
               lambda a, b: F.conv2d_max_pool2d(a, b, kernel_size=2)):
        for got, want in zip(_as_tuple(fn(xp, wp)), _as_tuple(fn(x, w))):
            np.testing.assert_array_equal(got, want)


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def test_dtype_policy(rng):
    x = rng.integers(-5, 5, (2, 3, 6, 6))
    w = rng.integers(-2, 2, (4, 3, 3, 3))
    y = F.conv2d(x, w)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, F.conv2d(x.astype(np.float32), w.astype(np.float32)))
    assert F.conv2d(x.astype(np.float16), w.astype(np.float16)).dtype == np.float32
    assert F.max_pool2d(x.astype(np.uint8), 2).dtype == np.float32
    # mixed float32 / float64 promotes to float64
    assert F.conv2d(x.astype(np.float32), w.astype(np.float64)).dtype == np.float64
    assert F.conv2d_backward(y.astype(np.float64), x.astype(np.float32), w.astype(np.float32))[0].dtype == np.float64
    with pytest.raises(TypeError, match="x must hold real numbers"):
        F.conv2d(x.astype(np.complex64), w)
    # byte-swapped float64 (big-endian data from files) and longdouble compute in float64
    xf, wf = rng.standard_normal(x.shape) * 1e-3 + 1, w.astype(np.float64)
    want = F.conv2d(xf, wf)
    for xb in (xf.astype(">f8"), xf.astype(np.longdouble)):
        got = F.conv2d(xb, wf)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
        assert R.conv2d(xb, wf).dtype == np.float64
    np.testing.assert_array_equal(F.conv2d(xf.astype(">f4"), wf.astype(">f4")),
                                  F.conv2d(xf.astype(np.float32), wf.astype(np.float32)))
    with pytest.raises(TypeError, match="weight"):
        F.conv2d(x, np.full(w.shape, "a"))
    with pytest.raises(TypeError):
        F.max_pool2d(np.array([[[["a"]]]], dtype=object), 1)


def test_empty_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert F.conv2d(x, w, np.zeros(4, np.float32)).shape == (0, 4, 6, 6)
    gx, gw, gb = F.conv2d_backward(np.zeros((0, 4, 6, 6), np.float32), x, w)
    assert gx.shape == x.shape and not gw.any() and not gb.any() and gw.shape == w.shape
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 4, 4)
    assert F.max_pool2d_backward(y, idx, x.shape).shape == x.shape
    assert F.avg_pool2d(x, 2).shape == (0, 3, 4, 4)
    assert F.avg_pool2d_backward(y, x.shape, 2).shape == x.shape
    assert F.im2col(x, 3).shape == (0, 27, 36)
    assert F.col2im(np.zeros((0, 27, 36)), 8, 3).shape == (0, 3, 8, 8)
    assert F.max_pool2d(np.zeros((2, 0, 4, 4)), 2).shape == (2, 0, 2, 2)


BAD_CALLS = [
    (lambda m: m.conv2d(np.ones((8, 8)), np.ones((4, 3, 3, 3))), ValueError,
     r"x must be 4-D \(N, C, H, W\), or 3-D \(C, H, W\) for one unbatched image, got shape \(8, 8\)"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3))), ValueError, "weight must be 4-D"),
    (lambda m: m.conv2d(np.ones((1, 2, 8, 8)), np.ones((4, 3, 3, 3))), ValueError, r"expects 3 input channels.*has 2"),
    (lambda m: m.conv2d(np.ones((1, 4, 8, 8)), np.ones((3, 2, 3, 3)), groups=2), ValueError, "divisible by groups"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), groups=0), ValueError, "groups must be positive"),
    (lambda m: m.conv2d(np.ones((1, 3, 4, 4)), np.ones((4, 3, 5, 5))), ValueError, "larger than the padded input"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), stride=0), ValueError, "stride must be positive"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), dilation=-1), ValueError, "dilation must be positive"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding=-1), ValueError, "padding must be non-negative"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding="full"), ValueError, "padding must be"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding="same", stride=2), ValueError, "strided"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), stride=1.5), TypeError, "stride must be an int"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), stride=(1, 2, 3)), TypeError, "pair of ints"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), np.ones(3)), ValueError, r"bias must have shape \(4,\)"),
    (lambda m: m.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), padding=2**40), ValueError, "padding must be non-negative"),
    (lambda m: m.conv2d(np.ones((2**16, 1, 1, 1), np.float32), np.ones((2**16, 1, 1, 1), np.float32), padding=2**30),
     ValueError, "too large"),
    (lambda m: m.conv2d_backward(np.ones((1, 4, 5, 5)), np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3))), ValueError,
     r"grad_y must have the conv2d output shape \(1, 4, 6, 6\)"),
    (lambda m: m.conv2d_backward(np.ones((1, 4, 6, 6)), np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)), output_mask=(1, 0)),
     ValueError, "output_mask"),
    (lambda m: m.max_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2), ValueError, "at most half of kernel_size"),
    (lambda m: m.max_pool2d(np.ones((1, 1, 4, 4)), 0), ValueError, "kernel_size must be positive"),
    (lambda m: m.max_pool2d(np.ones((1, 1, 2, 2)), 3), ValueError, "too small"),
    (lambda m: m.max_pool2d(np.ones((4, 4)), 2), ValueError, "x must be 4-D"),
    (lambda m: m.avg_pool2d(np.ones((1, 1, 4, 4)), 2, stride=0), ValueError, "stride must be positive"),
    (lambda m: m.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.full((1, 1, 2, 2), 16), (1, 1, 4, 4)), ValueError,
     r"indices must lie in \[0, H\*W\)"),
    (lambda m: m.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.full((1, 1, 2, 2), -1), (1, 1, 4, 4)), ValueError,
     r"indices must lie"),
    (lambda m: m.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 1), np.int64), (1, 1, 4, 4)), ValueError,
     "indices shape"),
    (lambda m: m.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), (1, 1, 4, 4)), TypeError,
     "integer array"),
    (lambda m: m.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), int), (1, 2, 4, 4)), ValueError,
     "agree"),
    (lambda m: m.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), int), (1, 1, -4, 4)), ValueError,
     "input_shape"),
    (lambda m: m.avg_pool2d_backward(np.ones((1, 1, 3, 3)), (1, 1, 4, 4), 2), ValueError, r"pooled shape \(1, 1, 2, 2\)"),
    (lambda m: m.im2col(np.ones((1, 1, 2, 2)), 3), ValueError, "does not fit"),
    (lambda m: m.col2im(np.ones((1, 10, 4)), (3, 3), 2), ValueError, "divisible by kH\\*kW"),
    (lambda m: m.col2im(np.ones((1, 4, 5)), (3, 3), 2), ValueError, "number of blocks"),
    (lambda m: m.col2im(np.ones((5,)), (3, 3), 2), ValueError,
     r"cols must be 3-D \(N, C\*kH\*kW, L\), or 2-D \(C\*kH\*kW, L\) for one unbatched image"),
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_bad_input_raises_clear_errors(call, exc, match, module):
    # The reference raises exactly what the fast module raises (shared validation).
    with pytest.raises(exc, match=match):
        call(module)


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="n must be >= 1"):
        fastconv.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fastconv.set_num_threads(1.5)


def test_kernels_are_thread_safe_from_python_threads(rng):
    # Two Python threads run kernels at once (the GIL is released inside them): each must get
    # exactly its own result (no shared static scratch).
    cases = [random_conv(np.random.default_rng(i), (8, 16, 12, 12, 32, 3, 1, 1, 1, 1), np.float32)
             for i in range(2)]
    expected = [F.conv2d(x, w, b, **kw) for x, w, b, kw in cases]
    errors = []

    def work(i):
        x, w, b, kw = cases[i]
        for _ in range(5):
            if not np.array_equal(F.conv2d(x, w, b, **kw), expected[i]):
                errors.append(i)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_set_num_threads_is_process_wide(threads):
    # OpenMP keeps one thread count per thread: set in one Python thread, it must still hold
    # in the others (as torch.set_num_threads), for their kernel calls too.
    seen = []
    for n in (1, 3):
        threads(n)
        worker = threading.Thread(target=lambda: seen.append(
            (fastconv.get_num_threads(), F.relu(np.ones(4, np.float32)).sum())))
        worker.start()
        worker.join()
    assert seen == [(1, 4.0), (3, 4.0)]


def test_switching_simd_level_or_algorithm_while_kernels_run(rng):
    # The switches (for tests and benchmarks) wait for running kernels: a kernel that saw
    # AVX-512 and then found the generic level mid-call crashed the process.
    start = fastconv.simd_level()
    levels = [lv for lv in ("avx512", "avx2", "generic") if _core.set_simd_level(lv)]
    _core.set_simd_level(start)
    x = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    want = R.conv2d(x, w, padding=1)
    stop = threading.Event()

    def switch():
        while not stop.is_set():
            for lv, alg in zip(levels, ("winograd", "direct", "auto")):
                _core.set_simd_level(lv)
                _core.set_conv_algorithm(alg)

    worker = threading.Thread(target=switch)
    worker.start()
    try:
        for _ in range(200):
            assert_close(F.conv2d(x, w, padding=1), want)
    finally:
        stop.set()
        worker.join()
        _core.set_simd_level(start)
        _core.set_conv_algorithm("auto")


def test_output_shape_helpers():
    assert F.conv2d_output_shape((8, 3, 32, 32), (16, 3, 5, 5), stride=2, padding=2) == (8, 16, 16, 16)
    assert F.conv2d_output_shape((1, 3, 7, 7), (2, 3, 4, 4), padding="same") == (1, 2, 7, 7)
    assert F.pool2d_output_shape((1, 3, 7, 7), 2, ceil_mode=True) == (1, 3, 4, 4)
    assert F.pool2d_output_shape((1, 3, 7, 7), 2) == (1, 3, 3, 3)
    # ceil mode never starts a window in the padding: H=5, k=2, s=2, p=1 -> 3, not 4
    assert F.pool2d_output_shape((1, 1, 5, 5), 2, 2, 1, ceil_mode=True) == (1, 1, 3, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,out_f", [
    ((5, 7), 3), ((1, 2304), 1024), ((4, 3, 33), 65), ((0, 8), 4), ((6, 1), 1),
    # empty feature axes: y is the bias (zeros without one), as in PyTorch
    ((3, 0), 4), ((2, 3, 0), 4), ((3, 5), 0), ((0, 0), 0),
    # batches of 16-512 rows and a 4x wider output take the in-place-weight path (AVX-512)
    ((64, 2304), 1024), ((17, 300), 100), ((100, 70), 401), ((2, 20, 129), 333)])
def test_linear_matches_reference(rng, x_shape, out_f, dtype):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((out_f, x_shape[-1])).astype(dtype)
    b = rng.standard_normal(out_f).astype(dtype)
    for bias in (b, None):
        y = F.linear(x, w, bias)
        assert y.dtype == dtype and y.shape == x_shape[:-1] + (out_f,)
        assert_close(y, R.linear(x, w, bias))
        if x_shape[-1] == 0:
            np.testing.assert_array_equal(y, np.broadcast_to(0 if bias is None else bias, y.shape))
    gy = rng.standard_normal(y.shape).astype(dtype)
    for a, e in zip(F.linear_backward(gy, x, w), R.linear_backward(gy, x, w)):
        assert a.dtype == dtype
        assert_close(a, e)


def test_linear_matches_torch(rng, torch):
    x, w, b = rng.standard_normal((8, 20)), rng.standard_normal((5, 20)), rng.standard_normal(5)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    assert_close(F.linear(x, w, b), yt.detach().numpy())
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    for a, e in zip(F.linear_backward(gy, x, w), (xt.grad, wt.grad, bt.grad)):
        assert_close(a, e.numpy())


def assert_same_with_1_and_2_threads(threads, run):
    """run() (a tuple of arrays) gives the same bits with 1 and with 2 threads."""
    runs = []
    for n in (1, 2):
        threads(n)
        runs.append(run())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch,in_f,out_f", [(64, 2304, 1024), (64, 1024, 10), (3, 2304, 1024)])
def test_linear_does_not_depend_on_thread_count(rng, threads, batch, in_f, out_f):
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    gy = rng.standard_normal((batch, out_f)).astype(np.float32)
    assert_same_with_1_and_2_threads(threads, lambda: (F.linear(x, w), *F.linear_backward(gy, x, w)))


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_linear_bad_input(module):
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\)"):
        module.linear(np.ones((2, 4)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        module.linear(np.ones((2, 3)), np.ones((5, 3, 1)))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        module.linear(np.ones((2, 3)), np.ones((5, 3)), np.ones(4))
    with pytest.raises(ValueError, match="grad_y must have shape"):
        module.linear_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones((5, 3)))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        module.linear(np.ones((2, 3), complex), np.ones((5, 3)))


def batch_norm_inputs(rng, shape, dtype, affine):
    """x (shifted and scaled off zero mean / unit variance) and weight, bias (None if not affine)."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    C = shape[1]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    return x, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 3, 5, 7), (64, 32, 4, 4), (5, 6), (2, 4, 9)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_matches_reference_and_torch(rng, shape, dtype, affine):
    x, w, b = batch_norm_inputs(rng, shape, dtype, affine)
    got = F.batch_norm_train(x, w, b, 1e-5)
    want = R.batch_norm_train(x, w, b, 1e-5)
    for a, e in zip(got, want):
        assert a.dtype == dtype
        assert_close(a, e)
    gy = rng.standard_normal(shape).astype(dtype)
    for a, e in zip(F.batch_norm_train_backward(gy, x, got[1], got[2], w),
                    R.batch_norm_train_backward(gy, x, got[1], got[2], w)):
        assert_close(a, e)
    assert F.batch_norm_train_backward(gy, x, got[1], got[2], w, input_grad=False)[0] is None
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True) if affine else None
    bt = torch.tensor(b.astype(np.float64), requires_grad=True) if affine else None
    yt = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    assert_close(got[0], yt.detach().numpy(), tol=TOLERANCE_BN[np.dtype(dtype)])
    yt.backward(torch.tensor(gy.astype(np.float64)))
    gx, gw, gb = F.batch_norm_train_backward(gy, x, got[1], got[2], w)
    assert_close(gx, xt.grad.numpy(), tol=TOLERANCE_BN[np.dtype(dtype)])
    if affine:
        assert_close(gw, wt.grad.numpy(), tol=TOLERANCE_BN[np.dtype(dtype)])
        assert_close(gb, bt.grad.numpy(), tol=TOLERANCE_BN[np.dtype(dtype)])


# Normalisation divides by the batch std: float32 results carry a few ulps of the inputs'
# scale relative error; the float64 oracle is exact to ~1e-13.
TOLERANCE_BN = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}


def test_batch_norm_train_does_not_depend_on_thread_count(rng, threads):
    x = rng.standard_normal((64, 32, 8, 8)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.ones(32, np.float32), np.zeros(32, np.float32)
    runs = []
    for n in (1, 2):
        threads(n)
        y, mean, invstd, var = F.batch_norm_train(x, w, b)
        runs.append((y, mean, invstd, var, *F.batch_norm_train_backward(gy, x, mean, invstd, w)))
    for a, e in zip(*runs):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 3, 5, 7), (64, 32, 4, 4), (5, 6), (3, 17, 33)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_fused_relu_is_relu_of_batch_norm(rng, shape, dtype, affine):
    # relu=True must equal batch norm then ReLU, forward and backward, bit for bit on the fast
    # backend (the same expressions in one pass) and within tolerance of the reference.
    x, w, b = batch_norm_inputs(rng, shape, dtype, affine)
    y, mean, invstd, var = F.batch_norm_train(x, w, b, 1e-5)
    yr, mean_r, invstd_r, var_r = F.batch_norm_train(x, w, b, 1e-5, relu=True)
    np.testing.assert_array_equal(yr, F.relu(y))
    for a, e in ((mean_r, mean), (invstd_r, invstd), (var_r, var)):
        np.testing.assert_array_equal(a, e)
    assert 0 < np.count_nonzero(yr) < yr.size
    gy = rng.standard_normal(shape).astype(dtype)
    fused = F.batch_norm_train_backward(gy, x, mean, invstd, w, relu_output=yr)
    plain = F.batch_norm_train_backward(F.relu_backward(gy, yr), x, mean, invstd, w)
    for a, e in zip(fused, plain):
        np.testing.assert_array_equal(a, e)
    ref = R.batch_norm_train(x, w, b, 1e-5, relu=True)
    assert_close(yr, ref[0])
    ref_grads = R.batch_norm_train_backward(gy, x, mean, invstd, w, relu_output=ref[0])
    for a, e in zip(fused, ref_grads):
        assert_close(a, e)
    none = F.batch_norm_train_backward(gy, x, mean, invstd, w, input_grad=False, relu_output=yr)
    assert none[0] is None
    np.testing.assert_array_equal(none[1], fused[1])


def test_batch_norm_train_fused_relu_nan_and_inf(rng):
    # NaN propagates through the fused ReLU (as torch.relu) and NaN outputs pass their gradient.
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    x[1, 2, 3] = np.nan
    y, mean, invstd, _ = F.batch_norm_train(x, relu=True)
    y_ref = F.relu(F.batch_norm_train(x)[0])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    assert np.isnan(y[:, 2]).all() and not np.isnan(y[:, :2]).any()
    gy = np.ones_like(x)
    got = F.batch_norm_train_backward(gy, x, mean, invstd, relu_output=y)
    want = R.batch_norm_train_backward(gy, x, mean, invstd, relu_output=y)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))


def test_batch_norm_train_fused_relu_does_not_depend_on_thread_count(rng, threads):
    x = rng.standard_normal((10, 48, 7, 9)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    runs = []
    for n in (1, 2, 3):
        threads(n)
        y, mean, invstd, var = F.batch_norm_train(x, w, b, relu=True)
        runs.append((y, mean, invstd, var,
                     *F.batch_norm_train_backward(gy, x, mean, invstd, w, relu_output=y)))
    for run in runs[1:]:
        for a, e in zip(run, runs[0]):
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_batch_norm_train_backward_relu_output_shape(module):
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"relu_output shape \(2, 3\) must equal x shape \(2, 3, 4\)"):
        module.batch_norm_train_backward(x, x, np.zeros(3), np.ones(3), relu_output=np.ones((2, 3)))
    with pytest.raises(TypeError, match="relu_output must hold real numbers"):
        module.batch_norm_train_backward(x, x, np.zeros(3), np.ones(3),
                                         relu_output=np.array([["a"]]))


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_batch_norm_train_bad_input(module):
    with pytest.raises(ValueError, match=r"x must be \(N, C, \.\.\.\)"):
        module.batch_norm_train(np.ones(4))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        module.batch_norm_train(np.ones((2, 3, 4)), np.ones(4))
    with pytest.raises(ValueError, match="grad_y shape"):
        module.batch_norm_train_backward(np.ones((2, 3)), np.ones((2, 3, 4)), np.zeros(3), np.ones(3))
    for eps in ("a", -1.0, np.nan, None):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            module.batch_norm_train(np.ones((2, 3, 4)), eps=eps)
    # no values to take statistics of (PyTorch's native batch norm raises too); no channels is fine
    for shape in ((0, 3, 4), (2, 3, 0)):
        with pytest.raises(ValueError, match="no values per channel"):
            module.batch_norm_train(np.ones(shape))
    y, mean, invstd, var = module.batch_norm_train(np.ones((2, 0, 4)))
    assert y.shape == (2, 0, 4) and mean.shape == invstd.shape == var.shape == (0,)


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_batch_norm_train_promotes_to_float64_like_the_other_ops(module, rng):
    # float64 anywhere (x, weight, bias, or grad_y in the backward) computes in float64
    x = rng.standard_normal((4, 3, 5))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    want = module.batch_norm_train(x.astype(np.float32).astype(np.float64), w, b)
    for args in ((x.astype(np.float32), w, None), (x.astype(np.float32), None, b)):
        y, mean, invstd, var = module.batch_norm_train(*args)
        assert all(a.dtype == np.float64 for a in (y, mean, invstd, var))
    got = module.batch_norm_train(x.astype(np.float32), w, b)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)
    gy = rng.standard_normal(x.shape)
    grads = module.batch_norm_train_backward(gy, x.astype(np.float32), want[1], want[2], w)
    assert all(g.dtype == np.float64 for g in grads)
    for a, e in zip(grads, module.batch_norm_train_backward(gy, x.astype(np.float32).astype(np.float64),
                                                            want[1], want[2], w)):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_reference_and_torch(rng, dtype):
    x = rng.standard_normal((3, 5, 7, 9)).astype(dtype)
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    y = F.relu(x)
    np.testing.assert_array_equal(y, R.relu(x))
    gy = rng.standard_normal(x.shape).astype(dtype)
    gy[0, 0, 0, 4] = np.inf
    np.testing.assert_array_equal(F.relu_backward(gy, y), R.relu_backward(gy, y))
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    yt.backward(torch.tensor(gy))
    np.testing.assert_array_equal(F.relu_backward(gy, y), xt.grad.numpy())


def test_relu_does_not_depend_on_thread_count_and_checks_shapes(rng, threads):
    x = rng.standard_normal((64, 32, 30, 30)).astype(np.float32)
    runs = []
    for n in (1, 2):
        threads(n)
        y = F.relu(x)
        runs.append((y, F.relu_backward(x, y)))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    for m in (F, R):
        with pytest.raises(ValueError, match="grad_y shape"):
            m.relu_backward(np.ones(3), np.ones(4))
        for shape in ((), (0,), (5,)):  # any shape, 0-d included, as torch.relu
            a = np.full(shape, -1.5)
            assert m.relu(a).shape == m.relu_backward(a, m.relu(a)).shape == shape


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 3, 10, 7), (1, 2, 17, 16), (4, 3, 2, 2)])
def test_2x2_pooling_of_narrow_planes_matches_reference(rng, shape):
    # Planes with at most 8 outputs per row are pooled in blocks of 16 outputs that wrap
    # across rows; NaNs and ties must keep PyTorch's first-maximum / NaN-propagation rules.
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[::7] = np.nan
    flat[1::6] = flat[0::6][: len(flat[1::6])]  # ties within windows
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    y_ref, idx_ref = R.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(F.avg_pool2d(x, 2), R.avg_pool2d(x, 2))


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("shape", [(2, 3, 30, 30), (2, 4, 13, 13), (1, 2, 9, 4), (2, 2, 4, 70),
                                   (1, 3, 66, 33), (2, 2, 8, 8), (1, 1, 2, 2), (1, 2, 5, 3),
                                   (2, 3, 10, 14), (1, 2, 15, 17), (1, 2, 6, 35)])
def test_2x2_pooling_every_simd_level_matches_reference(rng, simd_level, level, shape):
    # The 2x2 / stride-2 forwards have AVX-512 and AVX2 kernels (16 or 8 windows per step:
    # wide rows in pieces, ragged ends masked; rows of at most 8 or 4 windows two at a time, an
    # odd last one alone) beside the portable ones: all must give the reference's values and
    # indices bit for bit, with NaN (first NaN kept), ties (first maximum), -0.0 against 0.0,
    # infinities and windows of equal values.
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[::13] = np.nan
    flat[5::17] = np.inf
    flat[7::19] = -np.inf
    flat[1::6] = flat[0::6][: len(flat[1::6])]  # ties within windows
    flat[3::23] = -0.0
    flat[4::23] = 0.0
    x[..., :2, :2] = 1.5  # a window of four equal values
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    y_ref, idx_ref = R.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(y_ref))  # NaN copied, sign and all
    np.testing.assert_array_equal(idx, idx_ref)
    with np.errstate(invalid="ignore"):  # inf + -inf in the reference's NumPy sums
        a, a_ref = F.avg_pool2d(x, 2), R.avg_pool2d(x, 2)  # summed in the reference's order
    np.testing.assert_array_equal(a, a_ref)
    # signs compared where not NaN: IEEE 754 leaves the sign of a computed NaN (inf + -inf)
    # open, and NumPy's sums give either sign, by version
    np.testing.assert_array_equal(np.signbit(a)[~np.isnan(a)], np.signbit(a_ref)[~np.isnan(a)])
    x[...] = -0.0  # 0 + (-0.0) = +0.0 first, as the reference's sum from 0
    assert not np.signbit(F.avg_pool2d(x, 2)).any()


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("shape", [(2, 3, 30, 30), (2, 4, 13, 13), (1, 2, 9, 4), (3, 2, 2, 35),
                                   (2, 3, 8, 8), (1, 1, 3, 3), (1, 2, 4, 34), (1, 2, 5, 19),
                                   (1, 1, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_backward_matches_reference_bit_for_bit(rng, simd_level, level, shape, dtype):
    # 2x2 / stride 2 gradients at every SIMD level, odd sizes leaving a last row and column
    # that no window covers: the same bits as the reference's zero-fill then scatter-add, with
    # NaN, ties and -0.0 in the gradient, through the ReLU's gradient (relu_output: 0 and NaN
    # outputs among them) or not, and an index in another window's block.
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::11] = np.nan
    x.reshape(-1)[1::5] = x.reshape(-1)[0::5][: len(x.reshape(-1)[1::5])]  # ties
    y, idx = F.max_pool2d(x, 2, return_indices=True, relu=True)
    y.reshape(-1)[2::7] = 0.0
    gy = rng.standard_normal(y.shape).astype(dtype)
    gy.reshape(-1)[::3] = -0.0
    for relu_output in (None, y):
        got = F.max_pool2d_backward(gy, idx, x.shape, relu_output=relu_output)
        want = R.max_pool2d_backward(gy, idx, x.shape, relu_output=relu_output)
        np.testing.assert_array_equal(got, want)
        assert not np.signbit(got[got == 0]).any()  # 0 + (-0.0) = +0.0, as the scatter-add
    shifted = idx.copy()
    shifted[..., -1, -1] = 0  # the last window names the first input of its plane
    np.testing.assert_array_equal(F.max_pool2d_backward(gy, shifted, x.shape),
                                  R.max_pool2d_backward(gy, shifted, x.shape))


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_fused_relu_is_relu_of_max_pool2d(rng, simd_level, level, dtype):
    # relu=True: relu(pool(x)) with the pooling's own indices, and a backward that applies the
    # ReLU's gradient in the scatter: the same bits as the two ops one after the other, on the
    # 2x2 plane kernels (wide and narrow rows) and on general windows; NaN, ties, zeros.
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    for shape, kw in [((2, 3, 30, 30), dict(kernel_size=2)), ((3, 2, 13, 13), dict(kernel_size=2)),
                      ((2, 2, 6, 70), dict(kernel_size=2)),
                      ((2, 3, 12, 11), dict(kernel_size=3, stride=2, padding=1)),
                      ((1, 2, 9, 9), dict(kernel_size=2, stride=1, ceil_mode=True))]:
        x = rng.integers(-3, 3, shape).astype(dtype)  # ties and zeros
        x.reshape(-1)[::17] = np.nan
        x.reshape(-1)[5::19] = -0.0
        y, idx = F.max_pool2d(x, return_indices=True, **kw)
        yr, idxr = F.max_pool2d(x, return_indices=True, relu=True, **kw)
        np.testing.assert_array_equal(idxr, idx)
        np.testing.assert_array_equal(yr, F.relu(y))
        np.testing.assert_array_equal(np.signbit(yr), np.signbit(F.relu(y)))
        ry, ridx = R.max_pool2d(x, return_indices=True, relu=True, **kw)
        np.testing.assert_array_equal(yr, ry)
        np.testing.assert_array_equal(idxr, ridx)
        gy = rng.standard_normal(y.shape).astype(dtype)
        gy.reshape(-1)[::7] = -0.0
        got = F.max_pool2d_backward(gy, idxr, x.shape, relu_output=yr)
        want = F.max_pool2d_backward(F.relu_backward(gy, yr), idx, x.shape)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
        np.testing.assert_array_equal(
            got, R.max_pool2d_backward(gy, ridx, x.shape, relu_output=ry))


# conv2d_max_pool2d: (x shape, weight shape, conv kwargs, pool kwargs). The first ones take
# the few-channel forward (3-4 channels per group, stride 1), pooled image by image from cache;
# the last two the two-call fallback (7 channels; stride 2).
FORWARD_POOL_CASES = [
    ((4, 3, 32, 32), (32, 3, 3, 3), {}, dict(kernel_size=2)),
    ((3, 3, 17, 19), (20, 3, 3, 3), dict(padding=1), dict(kernel_size=3, pool_stride=2, pool_padding=1)),
    ((2, 4, 14, 15), (6, 4, 5, 5), dict(padding=2), dict(kernel_size=2, ceil_mode=True)),
    ((2, 6, 12, 12), (32, 3, 3, 3), dict(groups=2), dict(kernel_size=2, pool_stride=1)),
    ((1, 3, 10, 9), (18, 3, 3, 3), dict(dilation=2), dict(kernel_size=2, pool_dilation=2)),
    ((3, 7, 11, 11), (6, 7, 3, 3), {}, dict(kernel_size=2)),
    ((3, 3, 11, 11), (6, 3, 3, 3), dict(stride=2, padding=1), dict(kernel_size=2)),
]


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FORWARD_POOL_CASES, ids=str)
def test_conv2d_max_pool2d_is_the_two_calls(rng, simd_level, level, case, dtype, relu):
    # Bit for bit the values and indices of conv2d then max_pool2d, with NaN and ties (integer
    # weights and inputs); the reference's within rounding.
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    x_shape, w_shape, conv_kw, pool_kw = case
    x = rng.integers(-2, 3, x_shape).astype(dtype)
    x.reshape(-1)[::41] = np.nan
    w = rng.integers(-1, 2, w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    for bias in (b, None):
        y, idx = F.conv2d_max_pool2d(x, w, bias, **conv_kw, **pool_kw, relu=relu)
        two = {k.removeprefix("pool_"): v for k, v in pool_kw.items()}
        want_y, want_idx = F.max_pool2d(F.conv2d(x, w, bias, **conv_kw), return_indices=True,
                                        relu=relu, **two)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(want_y))
        np.testing.assert_array_equal(idx, want_idx)
        assert y.dtype == dtype and idx.dtype == np.int64
    x[np.isnan(x)] = 0.5  # the reference's sums may place NaN differently
    y, _ = F.conv2d_max_pool2d(x, w, b, **conv_kw, **pool_kw, relu=relu)
    assert_close(R.conv2d_max_pool2d(x, w, b, **conv_kw, **pool_kw, relu=relu)[0], y)


# conv2d_max_pool2d on Winograd layers (3x3, stride 1, 16+ channels each way per group): each
# image's output planes pooled from cache. simple_cnn's conv2 first.
WINOGRAD_POOL_CASES = [
    ((3, 32, 15, 15), (64, 32, 3, 3), {}, dict(kernel_size=2)),
    ((2, 16, 9, 10), (16, 16, 3, 3), dict(padding=1),
     dict(kernel_size=3, pool_stride=2, pool_padding=1, ceil_mode=True)),
    ((2, 32, 8, 8), (48, 16, 3, 3), dict(groups=2, padding=2), dict(kernel_size=2, pool_stride=1)),
    ((1, 20, 7, 7), (17, 20, 3, 3), dict(padding=1), dict(kernel_size=2, pool_dilation=2)),
]


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("algorithm", ["auto", "winograd4"])
@pytest.mark.parametrize("case", WINOGRAD_POOL_CASES, ids=str)
def test_conv2d_max_pool2d_winograd_is_the_two_calls(rng, simd_level, conv_algorithm,
                                                     monkeypatch, case, algorithm, relu, level):
    # Bit for bit the values and indices of conv2d then max_pool2d: integer inputs (ties), then
    # real ones; the reference's within rounding. At a level with conv tiles the fused path
    # must run (the two-call fallback is disabled); ±inf or NaN make Winograd decline: the
    # two calls then. The dispatch's own choice (F(2x2) on these channel counts; a run that
    # forces another algorithm would take the two calls), and F(4x4) forced.
    if not _core.set_simd_level(level):
        pytest.skip(f"this CPU or build has no {level}")
    assert conv_algorithm(algorithm)
    x_shape, w_shape, conv_kw, pool_kw = case
    two = {k.removeprefix("pool_"): v for k, v in pool_kw.items()}
    w = rng.integers(-1, 2, w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    ties = rng.integers(-2, 3, x_shape).astype(np.float32)
    real = rng.standard_normal(x_shape).astype(np.float32)

    def two_calls(x, bias):
        return F.max_pool2d(F.conv2d(x, w, bias, **conv_kw), return_indices=True, relu=relu,
                            **two)

    wants = {(i, j): two_calls(x, bias) for i, x in enumerate((ties, real))
             for j, bias in enumerate((b, None))}
    if _core.direct_kernel_lanes() > 0:
        monkeypatch.setattr(F, "conv2d", None)  # the fallback would fail
    for (i, j), (want_y, want_idx) in wants.items():
        y, idx = F.conv2d_max_pool2d((ties, real)[i], w, (b, None)[j], **conv_kw, **pool_kw,
                                     relu=relu)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(want_y))
        np.testing.assert_array_equal(idx, want_idx)
    monkeypatch.undo()
    assert_close(R.conv2d_max_pool2d(real, w, b, **conv_kw, **pool_kw, relu=relu)[0],
                 F.conv2d_max_pool2d(real, w, b, **conv_kw, **pool_kw, relu=relu)[0])
    for bad in (np.nan, np.inf):
        x = real.copy()
        x[0, 1, 2, 3] = bad
        y, idx = F.conv2d_max_pool2d(x, w, b, **conv_kw, **pool_kw, relu=relu)
        want_y, want_idx = two_calls(x, b)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(idx, want_idx)


def test_conv2d_max_pool2d_does_not_depend_on_thread_count(rng, threads):
    # Batch 1 (the threads split one image's tiles and planes) and batch 9 (whole images); the
    # few-channel forward (3 channels) and Winograd (32).
    for n in (1, 9):
        for c in (3, 32):
            x = rng.standard_normal((n, c, 20, 20)).astype(np.float32)
            w = rng.standard_normal((32, c, 3, 3)).astype(np.float32)
            assert_same_with_1_and_2_threads(
                threads, lambda: F.conv2d_max_pool2d(x, w, kernel_size=2, relu=True))


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_conv2d_max_pool2d_bad_input(module):
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((16, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="bias"):
        module.conv2d_max_pool2d(x, w, np.ones(3, np.float32), kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size"):
        module.conv2d_max_pool2d(x, w, kernel_size=0)
    with pytest.raises(ValueError):
        module.conv2d_max_pool2d(x, w, kernel_size=9)  # larger than the 6x6 conv output
    with pytest.raises(TypeError):
        module.conv2d_max_pool2d(x, w)  # kernel_size is required
    y, idx = module.conv2d_max_pool2d(x[:0], w, kernel_size=2)
    assert y.shape == (0, 16, 3, 3) and idx.shape == (0, 16, 3, 3)


# conv2d_backward_through_max_pool: (x shape, weight shape, conv kwargs, pool kwargs). The
# first ones take the few-channel weight gradient (3-4 channels per group, 16+ filters,
# stride 1), where grad_y is made block by block; the others the stored-gradient fallback.
THROUGH_POOL_CASES = [
    ((4, 3, 32, 32), (32, 3, 3, 3), {}, dict(kernel_size=2)),
    ((3, 3, 17, 19), (20, 3, 3, 3), dict(padding=1), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 4, 14, 15), (16, 4, 5, 5), dict(padding=2, dilation=1), dict(kernel_size=2, ceil_mode=True)),
    ((2, 6, 12, 12), (32, 3, 3, 3), dict(groups=2), dict(kernel_size=2, stride=1)),
    ((1, 3, 10, 9), (18, 3, 3, 3), dict(dilation=2), dict(kernel_size=2)),
    ((3, 8, 11, 11), (6, 8, 3, 3), dict(stride=2, padding=1), dict(kernel_size=2)),
]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", THROUGH_POOL_CASES, ids=str)
def test_conv2d_backward_through_max_pool_is_the_two_backwards(rng, case, dtype, relu):
    # Bit for bit the gradients of max_pool2d_backward then conv2d_backward, NaN and zero
    # gradients included; the reference's within rounding.
    x_shape, w_shape, conv_kw, pool_kw = case
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    y = F.conv2d(x, w, **conv_kw)
    pooled, idx = F.max_pool2d(y, return_indices=True, relu=relu, **pool_kw)
    g = rng.standard_normal(pooled.shape).astype(dtype)
    g.reshape(-1)[::13] = -0.0
    g.reshape(-1)[7::29] = np.nan
    ro = pooled if relu else None
    gy = F.max_pool2d_backward(g, idx, y.shape, relu_output=ro)
    _, want_w, want_b = F.conv2d_backward(gy, x, w, **conv_kw)
    got_w, got_b = F.conv2d_backward_through_max_pool(g, idx, x, w, relu_output=ro, **conv_kw)
    np.testing.assert_array_equal(got_w, want_w)
    np.testing.assert_array_equal(got_b, want_b)
    assert got_w.dtype == dtype and got_b.dtype == dtype
    only_w = F.conv2d_backward_through_max_pool(g, idx, x, w, relu_output=ro,
                                                output_mask=(True, False), **conv_kw)
    np.testing.assert_array_equal(only_w[0], want_w)
    assert only_w[1] is None
    g[np.isnan(g)] = 0.5  # the reference's NaN positions can differ by rounding elsewhere
    gy = F.max_pool2d_backward(g, idx, y.shape, relu_output=ro)
    _, want_w, want_b = F.conv2d_backward(gy, x, w, **conv_kw)
    ref_w, ref_b = R.conv2d_backward_through_max_pool(g, idx, x, w, relu_output=ro, **conv_kw)
    assert_close(ref_w, want_w)
    assert_close(ref_b, want_b)


def test_conv2d_backward_through_max_pool_does_not_depend_on_thread_count(rng, threads):
    # Batch 1 (the threads split the filter blocks of one image) and batch 10 (whole images).
    for n in (1, 10):
        x = rng.standard_normal((n, 3, 20, 20)).astype(np.float32)
        w = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
        y = F.conv2d(x, w)
        pooled, idx = F.max_pool2d(y, 2, return_indices=True, relu=True)
        g = rng.standard_normal(pooled.shape).astype(np.float32)
        assert_same_with_1_and_2_threads(
            threads, lambda: F.conv2d_backward_through_max_pool(g, idx, x, w, relu_output=pooled))


@pytest.mark.parametrize("relu", [True, False])
def test_conv2d_backward_through_max_pool_indices_outside_their_windows(rng, relu):
    # 2x2 windows whose indices (as a caller may pass them) leave their own 2x2 block: the
    # same bits as max_pool2d_backward's scatter (two windows onto one input add up), in the
    # first window of a plane, the last of a row (15 a row) and the last row.
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(x, w)
    pooled, idx = F.max_pool2d(y, 2, return_indices=True, relu=relu)
    g = rng.standard_normal(pooled.shape).astype(np.float32)
    idx = idx.copy()
    idx[0, 1, 0, 0] = idx[0, 1, 0, 1]  # onto the next window's pick (first group)
    idx[1, 5, 7, 14] = 0  # the last window of a row (the partial group), onto the corner
    idx[2, 15, 14, 13] = 30 * 30 - 1  # the last row, onto the plane's last input
    ro = pooled if relu else None
    gy = F.max_pool2d_backward(g, idx, y.shape, relu_output=ro)
    _, want_w, want_b = F.conv2d_backward(gy, x, w)
    got_w, got_b = F.conv2d_backward_through_max_pool(g, idx, x, w, relu_output=ro)
    np.testing.assert_array_equal(got_w, want_w)
    np.testing.assert_array_equal(got_b, want_b)


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_conv2d_backward_through_max_pool_bad_input(module):
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((16, 3, 3, 3), np.float32)
    g = np.ones((2, 16, 3, 3), np.float32)
    idx = np.zeros((2, 16, 3, 3), np.int64)
    with pytest.raises(ValueError, match="indices must lie in"):
        module.conv2d_backward_through_max_pool(g, idx + 36, x, w)
    with pytest.raises(ValueError, match="must agree on"):
        module.conv2d_backward_through_max_pool(g[:, :8], idx[:, :8], x, w)
    with pytest.raises(ValueError, match="indices shape"):
        module.conv2d_backward_through_max_pool(g, idx[:, :, :2], x, w)
    with pytest.raises(ValueError, match="two booleans"):
        module.conv2d_backward_through_max_pool(g, idx, x, w, output_mask=(True, True, True))
    with pytest.raises(ValueError, match="relu_output shape"):
        module.conv2d_backward_through_max_pool(g, idx, x, w, relu_output=g[0])
    with pytest.raises(ValueError):
        module.conv2d_backward_through_max_pool(g, idx, x, w[:, :2])
    gw, gb = module.conv2d_backward_through_max_pool(g[:0], idx[:0], x[:0], w)
    assert not gw.any() and not gb.any()


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_max_pool2d_backward_relu_output_must_match_grad_y(module):
    gy = np.ones((1, 2, 2, 2), np.float32)
    idx = np.zeros((1, 2, 2, 2), np.int64)
    with pytest.raises(ValueError, match=r"relu_output shape \(1, 2, 2\) must equal grad_y"):
        module.max_pool2d_backward(gy, idx, (1, 2, 4, 4), relu_output=np.ones((1, 2, 2)))
    # another dtype is converted, as grad_y's
    got = module.max_pool2d_backward(gy, idx, (1, 2, 4, 4), relu_output=-np.ones((1, 2, 2, 2)))
    assert got.dtype == np.float32 and not got.any()


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode",
                         [(3, 2, 1, False), (2, 1, 0, False), (2, 2, 1, False), (2, 2, 0, True),
                          (3, 3, 0, False)])
def test_max_pool2d_backward_of_other_windows_sums_overlaps(rng, kernel, stride, padding,
                                                             ceil_mode):
    # Indices from overlapping or shifted windows: duplicates summed, as the reference.
    x = rng.standard_normal((2, 3, 12, 11)).astype(np.float32)
    y, idx = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(F.max_pool2d_backward(gy, idx, x.shape),
                                  R.max_pool2d_backward(gy, idx, x.shape))


def test_max_pool2d_backward_hand_made_indices():
    # Plane 0: every index in its own 2x2 block; plane 1: four outputs name the same input
    # (summed); plane 2: indices in other blocks.
    gy = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 2, 2)
    idx = np.array([[[[0, 3], [13, 15]],
                     [[5, 5], [5, 5]],
                     [[1, 2], [8, 14]]]], dtype=np.int64)
    got = F.max_pool2d_backward(gy, idx, (1, 3, 4, 4))
    np.testing.assert_array_equal(got, R.max_pool2d_backward(gy, idx, (1, 3, 4, 4)))
    assert got[0, 1, 1, 1] == 5 + 6 + 7 + 8
    for far in (16, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max):
        with pytest.raises(ValueError):
            F.max_pool2d_backward(gy, np.full_like(idx, far), (1, 3, 4, 4))
    # planes of zero pixels: no index can be valid, in either module
    for module in (F, R):
        with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 0\)"):
            module.max_pool2d_backward(gy, idx, (1, 3, 0, 6))
        assert module.max_pool2d_backward(gy[:, :0], idx[:, :0], (1, 0, 0, 6)).shape == (1, 0, 0, 6)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "grad_y"])
def test_nonfinite_values_propagate_as_in_direct_summation(rng, bad, where):
    # A 3x3 layer with 16+ channels (Winograd where there are conv tiles): its transforms subtract, so an
    # inf would turn into NaN (inf - inf) in outputs that direct summation leaves at ±inf.
    # Such inputs must take the direct path: same inf/NaN pattern as the reference.
    # (Non-finite weights: test_nonfinite_weights_meet_the_padding_as_in_the_reference.)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    {"x": x, "weight": w, "grad_y": gy}[where].reshape(-1)[37] = bad
    got = (F.conv2d(x, w, padding=1), *F.conv2d_backward(gy, x, w, padding=1)[:2])
    with np.errstate(invalid="ignore", over="ignore"):  # NumPy warns on inf - inf
        want = (R.conv2d(x, w, padding=1), *R.conv2d_backward(gy, x, w, padding=1)[:2])
    for a, e in zip(got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(e))
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(e))
        finite = np.isfinite(e)
        assert_close(a[finite], e[finite])


def assert_same_nonfinite(got, want):
    """Same NaN / +inf / -inf positions, and close finite values."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite])


@pytest.mark.parametrize("algorithm", ["auto", "wide", "im2col", "direct", "direct_nchw",
                                       "winograd", "winograd4", "valid_taps"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("c_in, c_out, kernel, padding, dtype", [
    (16, 16, 3, 1, np.float32),   # Winograd / direct channels-last
    (3, 32, 3, 1, np.float32),    # the few-channel forward
    (6, 16, 5, 2, np.float32),    # the few-channel input gradient
    (4, 8, 3, 0, np.float32),     # no padding: only the input gradient's zero-padded grad_y
    (16, 16, 3, 1, np.float64),   # the GEMM paths (wide rows, im2col)
])
def test_nonfinite_weights_meet_the_padding_as_in_the_reference(rng, conv_algorithm, algorithm,
                                                                 bad, c_in, c_out, kernel,
                                                                 padding, dtype):
    # An inf tap multiplies the zero padding in the forward (0 * inf = NaN, as in the
    # reference and PyTorch's native convolution; its oneDNN path skips the padding), but
    # reaches in the input gradient only the pixels its windows cover (as PyTorch's autograd). Paths that skip padded taps, or run the input gradient over a zero-padded grad_y
    # or junk columns, got both wrong: non-finite weights must take the im2col GEMM.
    skip_without_tiles(algorithm)
    assert conv_algorithm(algorithm)
    x = rng.standard_normal((2, c_in, 9, 11)).astype(dtype)
    w = rng.standard_normal((c_out, c_in, kernel, kernel)).astype(dtype)
    w[1, c_in - 1, 0, kernel - 1] = bad       # a corner tap: it meets the padding
    w[0, 0, kernel // 2, kernel // 2] = bad   # the centre tap: never on the border pixels
    y = F.conv2d(x, w, padding=padding)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = F.conv2d_backward(gy, x, w, padding=padding, output_mask=(True, False, False))[0]
    with np.errstate(invalid="ignore", over="ignore"):
        want_y = R.conv2d(x, w, padding=padding)
        want_gx = R.conv2d_backward(gy, x, w, padding=padding, output_mask=(True, False, False))[0]
        unpadded_nans = np.isnan(R.conv2d(x, w)).sum()
    assert_same_nonfinite(y, want_y)
    assert_same_nonfinite(gx, want_gx)
    assert np.isfinite(want_gx).any() and not np.isfinite(want_gx).all()
    if padding:  # the padding does make NaN
        assert np.isnan(want_y).sum() > unpadded_nans
    # The fused forward + max pool gives what the two calls give.
    pooled, idx = F.conv2d_max_pool2d(x, w, padding=padding, kernel_size=2)
    want_pooled, want_idx = F.max_pool2d(y, 2, return_indices=True)
    assert_same_nonfinite(pooled, want_pooled)
    np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.parametrize("algorithm", ["auto", "wide", "im2col", "direct", "direct_nchw"])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("column", [0, 30, 31])
def test_weight_gradient_keeps_nonfinite_inputs_where_they_belong(rng, conv_algorithm, algorithm,
                                                                  bad, column):
    # A first layer's weight gradient: the few-channel kernel runs 16-column vectors over rows
    # of 30 outputs, whose last vector's spare lanes read image columns that tap kw never
    # pairs with an output (column 31 for kw = 0); the wide-row GEMM pairs its junk columns
    # with image values too. An inf there must not leak into such a tap as 0 * inf = NaN.
    skip_without_tiles(algorithm)
    assert conv_algorithm(algorithm)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 16, 30, 30)).astype(np.float32)
    x[1, 2, 5, column] = bad
    got = F.conv2d_backward(gy, x, w, output_mask=(False, True, False))[1]
    want = R.conv2d_backward(gy, x, w, output_mask=(False, True, False))[1]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isfinite(want).sum() > 0 and not np.isfinite(want).all()
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite])


def test_geometry_memo_keeps_validation():
    # Layers' geometries are memoised; a cached valid call must not let an invalid one that
    # compares equal (True == 1, 2.0 == 2) through, and unhashable arguments still work.
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    for _ in range(2):
        assert F.conv2d(x, w, stride=1).shape == (1, 3, 4, 4)
        with pytest.raises(TypeError, match="stride"):
            F.conv2d(x, w, stride=True)
        with pytest.raises(TypeError, match="stride"):
            F.conv2d(x, w, stride=1.0)
        assert F.conv2d(x, w, stride=[2, 1], padding=[1, 0]).shape == (1, 3, 3, 4)
        assert F.max_pool2d(x, [2, 2]).shape == (1, 2, 3, 3)
        with pytest.raises(TypeError):
            F.max_pool2d(x, 2, stride=True)
        with pytest.raises(ValueError, match="padding"):
            F.conv2d(x, w, padding=-1)
