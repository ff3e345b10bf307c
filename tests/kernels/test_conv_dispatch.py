"""conv2d's dispatch table (csrc/conv/dispatch.cpp): which algorithm runs for a shape, pass, dtype and
forced algorithm, against the documented rules, and that the one reported is the one that ran."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fastconv import _core
from fastconv import functional as F
from fastconv._args import conv2d_geometry


@pytest.fixture(autouse=True)
def _dispatch_on_its_own(_forced_kernels):
    """Each test starts with no algorithm forced (a run's --conv-algorithm would decide every
    choice these tests check); the tests force algorithms themselves."""
    _core.set_conv_algorithm("auto")


PASSES = ("forward", "backward_input", "backward_weight")
ALGORITHMS = ("subsampled", "valid_taps", "winograd4", "winograd", "direct_nchw", "direct", "wide",
              "im2col")
DIRECT_KERNEL_ALGORITHMS = ("winograd4", "winograd", "direct_nchw", "direct")
WINOGRAD_ALGORITHMS = ("winograd4", "winograd")

# (N, C, H, W, F, kernel, stride, padding, dilation, groups): the benchmarked layers and
# shapes at the edges of each rule (pointwise, strided, dilated, grouped, few channels).
SHAPES = [
    (64, 3, 32, 32, 32, 3, 1, 0, 1, 1),     # simple_cnn.conv1
    (64, 32, 15, 15, 64, 3, 1, 0, 1, 1),    # simple_cnn.conv2
    (64, 3, 32, 32, 6, 5, 1, 0, 1, 1),      # lenet5.conv1
    (64, 6, 14, 14, 16, 5, 1, 0, 1, 1),     # lenet5.conv2
    (64, 32, 32, 32, 32, 3, 1, 1, 1, 1),    # vgg_small.conv2
    (64, 64, 16, 16, 64, 3, 1, 1, 1, 1),    # vgg_small.conv4
    (64, 128, 8, 8, 128, 3, 1, 1, 1, 1),    # vgg_small.conv6
    (8, 64, 16, 16, 128, 1, 1, 0, 1, 1),    # pointwise
    (8, 64, 16, 16, 128, 3, 2, 1, 1, 1),    # stride 2
    (8, 64, 16, 16, 128, 1, 2, 0, 1, 1),    # 1x1 stride 2 (ResNet's shortcut): subsampled
    (8, 64, 16, 16, 128, 1, 2, 1, 1, 1),    # 1x1 stride 2, padded: not subsampled
    (8, 32, 16, 16, 32, 3, 1, 2, 2, 1),     # dilation 2
    (8, 32, 16, 16, 32, 3, 1, 1, 1, 4),     # groups 4: 8 channels per group
    (8, 4, 20, 20, 8, 7, 1, 3, 1, 1),       # few channels, 7x7
    (8, 16, 9, 9, 4, 3, 1, 1, 1, 1),        # few filters
    (0, 16, 9, 9, 16, 3, 1, 1, 1, 1),       # empty batch
    (4, 256, 3, 3, 256, 3, 1, 1, 1, 1),     # airbench94's last layer: valid_taps
    (4, 512, 4, 4, 512, 3, 1, 1, 1, 2),     # 4x4, groups of 256: valid_taps in bf16 mode
    (4, 256, 4, 4, 256, 3, 2, 1, 1, 1),     # strided, 2x2 output: valid_taps forward
    (4, 256, 5, 5, 256, 3, 1, 0, 1, 1),     # 3x3 output, unpadded: no tap to skip
    (4, 128, 3, 3, 256, 3, 1, 1, 1, 1),     # 128 x 256 channels: too few
]


def algorithm(pass_, dtype, shape):
    N, C, H, W, Fo, k, s, p, d, g = shape
    geom = conv2d_geometry((N, C, H, W), (Fo, C // g, k, k), s, p, d, g)
    return _core.conv_algorithm(pass_, dtype, (N, C, H, W), (Fo, C // g, k, k), *geom.out,
                                *geom.stride, *geom.padding, *geom.dilation, g)


def direct_kernels_available():
    """Whether the selected SIMD level has the direct tiles (asked through the table itself:
    forced, the direct algorithm takes any float32 3x3 forward)."""
    _core.set_conv_algorithm("direct")
    try:
        return algorithm("forward", "float32", SHAPES[4]) == "direct"
    finally:
        _core.set_conv_algorithm("auto")


def wide_fits(shape):
    N, C, H, W, Fo, k, s, p, d, g = shape
    return s == 1 and not (k == 1 and p == 0)


def wide_pays(pass_, shape):
    """conv_gemm.cpp's wide_pays: the junk columns (Wp / OW - 1) against narrow GEMMs."""
    N, C, H, W, Fo, k, s, p, d, g = shape
    ow = (W + 2 * p - d * (k - 1) - 1) // s + 1
    wp = ow + (k - 1) * d
    fg = Fo // g
    if pass_ == "forward":
        return 20 * wp <= 23 * ow or fg <= 16
    if pass_ == "backward_input":
        return 10 * wp <= 11 * ow or fg <= 16
    return 10 * wp <= 11 * ow or fg <= 8


def subsampled_fits(shape):
    """conv_subsampled.cpp's use_subsampled: 1x1, strided, unpadded, a non-empty batch."""
    N, C, H, W, Fo, k, s, p, d, g = shape
    return N > 0 and k == 1 and s > 1 and p == 0


def valid_taps_fits(pass_, shape):
    """conv_valid_taps.cpp's valid_taps_fits: every pass but strided input gradients."""
    s = shape[6]
    return pass_ != "backward_input" or s == 1


def valid_taps_pays(pass_, shape, gemms_only):
    """conv_valid_taps.cpp's valid_taps_pays on the float32 GEMM: padded outputs with at
    least 256 x 256 channels per group; every pass that fits on outputs of at most 4x4 where
    the GEMMs are the only other algorithms (float64, or no direct kernels), else the forward
    of outputs of at most 3x3 (Winograd keeps the rest)."""
    N, C, H, W, Fo, k, s, p, d, g = shape
    oh = (H + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (W + 2 * p - d * (k - 1) - 1) // s + 1
    if not (valid_taps_fits(pass_, shape) and p > 0 and (C // g) * (Fo // g) >= 256 * 256):
        return False
    return oh * ow <= 16 if gemms_only else pass_ == "forward" and oh * ow <= 9


def gemm_choice(pass_, shape, forced="auto"):
    """wide or im2col, as the last two entries decide."""
    if forced == "im2col" or not wide_fits(shape):
        return "im2col"
    return "wide" if forced == "wide" or wide_pays(pass_, shape) else "im2col"


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float64_takes_the_gemm_paths_by_their_rule(pass_, shape, forced):
    # The direct kernels are float32 only: float64 sees valid_taps (small outputs, many
    # channels), wide and im2col alone, in every mode.
    # Strided 1x1 layers run subsampled (any dtype) unless another algorithm is forced.
    for mode in ("auto",) + ALGORITHMS:
        forced(mode)
        if mode in ("auto", "subsampled") and subsampled_fits(shape):
            want = "subsampled"
        elif (mode == "valid_taps" and valid_taps_fits(pass_, shape)) or (
                mode == "auto" and valid_taps_pays(pass_, shape, gemms_only=True)):
            want = "valid_taps"
        else:
            want = gemm_choice(pass_, shape, mode)
        assert algorithm(pass_, "float64", shape) == want, mode


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_choice_follows_the_table(pass_, shape, forced):
    direct = direct_kernels_available()
    auto = algorithm(pass_, "float32", shape)
    assert (auto == "subsampled") == subsampled_fits(shape)
    assert (auto == "valid_taps") == valid_taps_pays(pass_, shape, gemms_only=not direct)
    if auto in ("subsampled", "valid_taps"):
        pass
    elif not direct:
        assert auto == gemm_choice(pass_, shape)
    elif auto in ("wide", "im2col"):
        # The direct-kernel entries declined: the GEMM entries decide as for float64.
        assert auto == gemm_choice(pass_, shape)
    # Forcing a GEMM path turns the direct-kernel entries off.
    for mode in ("wide", "im2col"):
        forced(mode)
        assert algorithm(pass_, "float32", shape) == gemm_choice(pass_, shape, mode)
    # Forcing an algorithm runs it wherever it can: then it is reported for the shape.
    N, C, H, W, Fo, k, s, p, d, g = shape
    winograd_fits = direct and N > 0 and k == 3 and s == 1 and d == 1
    for name in WINOGRAD_ALGORITHMS:
        forced(name)
        got = algorithm(pass_, "float32", shape)
        assert (got == name) == winograd_fits
        if not winograd_fits:
            # Winograd forced elsewhere: the generic entries by their heuristics, never the
            # specialists (the other tile size, the few-channel tiles).
            assert got in ("direct", "wide", "im2col")
    forced("valid_taps")
    got = algorithm(pass_, "float32", shape)
    assert (got == "valid_taps") == valid_taps_fits(pass_, shape)
    forced("direct")
    got = algorithm(pass_, "float32", shape)
    assert got not in ("valid_taps", "winograd4", "winograd", "direct_nchw")
    direct_fits = direct and N > 0 and (pass_ != "backward_input" or s == 1)
    assert (got == "direct") == direct_fits
    if not direct_fits:
        assert got == gemm_choice(pass_, shape)


def test_valid_taps_takes_every_pass_where_only_the_gemms_compete():
    # Small padded outputs with 256 x 256 channels: float64, and float32 at a SIMD level with no
    # direct kernels (generic), have no Winograd to weigh against: valid_taps takes all three
    # passes; float32 with the direct kernels only the forward of 3x3 outputs.
    shape = (4, 256, 3, 3, 256, 3, 1, 1, 1, 1)
    assert [algorithm(p, "float64", shape) for p in PASSES] == ["valid_taps"] * 3
    if direct_kernels_available():
        got = [algorithm(p, "float32", shape) for p in PASSES]
        assert got[0] == "valid_taps" and "valid_taps" not in got[1:]
    before = _core.simd_level()
    try:
        assert _core.set_simd_level("generic")
        assert [algorithm(p, "float32", shape) for p in PASSES] == ["valid_taps"] * 3
    finally:
        assert _core.set_simd_level(before)


def test_unknown_names_are_refused():
    assert not _core.set_conv_algorithm("fft")
    with pytest.raises(ValueError, match="pass_"):
        algorithm("sideways", "float32", SHAPES[0])
    with pytest.raises(TypeError, match="dtype"):
        algorithm("forward", "int32", SHAPES[0])


CHECKED = [SHAPES[0], SHAPES[3], SHAPES[6], SHAPES[7], SHAPES[8], SHAPES[10]]


@pytest.mark.parametrize("shape", [(2,) + s[1:] for s in CHECKED], ids=str)
def test_reported_algorithm_is_the_one_that_runs(rng, shape, forced):
    # Auto mode and the reported algorithm forced give the same bits: forcing an algorithm on
    # a shape it takes runs it.
    N, C, H, W, Fo, k, s, p, d, g = shape
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((Fo, C // g, k, k)).astype(np.float32)
    args = dict(stride=s, padding=p, dilation=d, groups=g)
    y = F.conv2d(x, w, **args)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    results = {}
    for pass_, mode in itertools.product(PASSES, ("auto", "reported")):
        if mode == "reported":
            forced(algorithm(pass_, "float32", shape))
        if pass_ == "forward":
            results[pass_, mode] = F.conv2d(x, w, **args)
        else:
            gx, gw, _ = F.conv2d_backward(gy, x, w, **args)
            results[pass_, mode] = gx if pass_ == "backward_input" else gw
        _core.set_conv_algorithm("auto")
    for pass_ in PASSES:
        np.testing.assert_array_equal(results[pass_, "auto"], results[pass_, "reported"])


@pytest.fixture
def avx2_tiles():
    """The AVX2 conv tiles selected (skip where this CPU or build has none); the level before
    restored afterwards."""
    before = _core.simd_level()
    if not _core.set_simd_level("avx2") or _core.direct_kernel_lanes() == 0:
        _core.set_simd_level(before)
        pytest.skip("this CPU or build has no AVX2 conv tiles")
    yield
    assert _core.set_simd_level(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_avx2_tiny_outputs_in_batches_run_direct_per_pixel(avx2_tiles, threads):
    # 4x4 outputs (padding 1) with enough images for a batch of tiles per pixel: the direct
    # tiles (every tap that reads padding skipped), not Winograd; two images: F(2x2) (F(4x4)
    # from 160 images of one 4x4 tile, see use_winograd4); 8x8 outputs: the input gradient
    # with 4x4 tiles (they cover them exactly; the forward keeps F(2x2)). The same with 1 and
    # 2 threads (the batches, not the choice, follow the threads).
    before = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        for pass_ in ("forward", "backward_input"):
            assert algorithm(pass_, "float32", (64, 32, 4, 4, 32, 3, 1, 1, 1, 1)) == "direct"
            tiles4 = "winograd4" if pass_ == "backward_input" else "winograd"
            assert algorithm(pass_, "float32", (2, 32, 4, 4, 32, 3, 1, 1, 1, 1)) == "winograd"
            # 8x8 outputs: Winograd; 6x6: F(2x2) (F(4x4)'s tiles would be 56% inside).
            assert algorithm(pass_, "float32", (64, 32, 8, 8, 32, 3, 1, 1, 1, 1)) == tiles4
            assert algorithm(pass_, "float32", (2, 32, 6, 6, 32, 3, 1, 1, 1, 1)) == "winograd"
    finally:
        _core.set_num_threads(before)


def test_avx2_gradients_take_4x4_tiles_where_they_multiply_less(avx2_tiles):
    # The gradients of 3x3 layers take F(4x4) where its tiles are mostly inside (7x7 and up)
    # or where it does fewer element-wise multiplies than F(2x2) (36 per 4x4 tile against 16
    # per 2x2 tile): 13x13 (16 tiles, 576, against 49 tiles, 784: only 66% of the 4x4 tiles'
    # values inside) and 9x9; 5x5 and 6x6 (144 each way) do not; the forward never does.
    # For the weight gradient the tiles are grad_y's (the output), for the input gradient
    # dL/dx's (the input): simple_cnn's conv2 (15x15 -> 13x13) takes F(4x4) in both.
    def gradients(shape):
        return [algorithm(p, "float32", shape) for p in ("backward_input", "backward_weight")]

    assert gradients((64, 32, 15, 15, 64, 3, 1, 0, 1, 1)) == ["winograd4", "winograd4"]
    for size in (13, 9, 10):
        assert gradients((2, 32, size, size, 32, 3, 1, 1, 1, 1)) == ["winograd4", "winograd4"]
        assert algorithm("forward", "float32", (2, 32, size, size, 32, 3, 1, 1, 1, 1)) == "winograd"
    for size in (5, 6):
        assert "winograd4" not in gradients((2, 32, size, size, 32, 3, 1, 1, 1, 1))
    # Outputs of one 4x4 tile (3x3: 1 tile against F(2x2)'s 4) from 160 images: F(4x4)'s
    # kernels or sums are then paid for. (The input gradient of such tiny images in batches
    # goes to the direct tiles with AVX2.)
    for size in (3, 4):
        assert algorithm("backward_weight", "float32",
                         (160, 32, size, size, 32, 3, 1, 1, 1, 1)) == "winograd4"
        assert algorithm("backward_weight", "float32",
                         (159, 32, size, size, 32, 3, 1, 1, 1, 1)) != "winograd4"


def test_direct_with_padding_beyond_the_windows(rng):
    # Width padding wider than the one window column reaches (stride 3000: one output column,
    # a padded copy 1 column wide, the image 999 columns to its right): the copy's rows are
    # zeroed whole, with nothing written past them (the border zeroing once ran 999 columns
    # past each row).
    if not direct_kernels_available():
        pytest.skip("this SIMD level has no direct tiles")
    from fastconv import reference as R

    x = rng.standard_normal((2, 32, 6, 5)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 1)).astype(np.float32)
    kw = dict(stride=(1, 3000), padding=(1, 999), groups=2)
    y = F.conv2d(x, w, **kw)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    _core.set_conv_algorithm("direct")
    try:
        got = (F.conv2d(x, w, **kw), *F.conv2d_backward(gy, x, w, **kw))
    finally:
        _core.set_conv_algorithm("auto")
    want = (R.conv2d(x, w, **kw), *R.conv2d_backward(gy, x, w, **kw))
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1024, 24, 31, 31, 64, 3, 1, 1, 1, 1),
                                   (1024, 64, 15, 15, 64, 3, 1, 1, 1, 1),
                                   (1024, 64, 15, 15, 256, 3, 1, 1, 1, 1),
                                   (1024, 256, 7, 7, 256, 3, 1, 1, 1, 1),
                                   (64, 32, 32, 32, 32, 3, 1, 1, 1, 1)], ids=str)
def test_avx2_forward_keeps_2x2_tiles_where_the_gradients_take_4x4(avx2_tiles, shape):
    # airbench94's 3x3 layers at batch 1024 and vgg_small.conv2: F(4x4) in both gradients,
    # F(2x2) in the forward, centred or not (see use_winograd4: F(4x4)'s forward errors, 1e-5
    # of the output channel's spread on activations, flip max-pool near-ties); forced, the
    # forward takes F(4x4).
    assert algorithm("forward", "float32", shape) == "winograd"
    assert [algorithm(p, "float32", shape) for p in ("backward_input", "backward_weight")] == [
        "winograd4", "winograd4"]
    _core.set_conv_algorithm("winograd4")
    try:
        assert algorithm("forward", "float32", shape) == "winograd4"
    finally:
        _core.set_conv_algorithm("auto")
