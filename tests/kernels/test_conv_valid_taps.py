"""The valid-taps convolution (csrc/conv/conv_valid_taps.cpp: GEMMs over the kernel taps inside
the image only), forced: its three passes against the NumPy reference on random geometries in
float32, float64 and bf16 mode, against PyTorch on the small many-channel layers the dispatch
gives it, on outputs that see only padding, taps that see no pixel and non-finite inputs;
the same bits with 1 and 2 threads and (forward, input gradient) whatever batch an image is
computed in. (Its bf16 paths: tests/precision/test_bf16_conv.py;
its dispatch rule: tests/kernels/test_conv_dispatch.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R
from fastconv._args import conv2d_geometry
from fastconv.precision import round_to_bf16

from numerics import assert_close


@pytest.fixture(autouse=True)
def _valid_taps_forced():
    """Every test runs with valid_taps forced (it then runs the forward and the weight
    gradient everywhere, the input gradient at stride 1)."""
    assert _core.set_conv_algorithm("valid_taps")
    yield
    _core.set_conv_algorithm("auto")


def conv_data(rng, shape, dtype=np.float32):
    N, C, H, W, Fo, (kh, kw), stride, padding, dilation, groups = shape
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fo, C // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, w, b, kwargs


def algorithm_running(pass_, x, w, kwargs, precision="f32"):
    """The algorithm the dispatch runs for this pass now."""
    geom = conv2d_geometry(x.shape, w.shape, kwargs["stride"], kwargs["padding"],
                           kwargs["dilation"], kwargs["groups"])
    return _core.conv_algorithm(pass_, str(x.dtype), x.shape, w.shape, *geom.out, *geom.stride,
                                *geom.padding, *geom.dilation, geom.groups, precision=precision)


geometries = st.fixed_dictionaries({
    "N": st.integers(1, 5), "groups": st.integers(1, 3), "cpg": st.integers(1, 40),
    "fpg": st.integers(1, 20), "H": st.integers(1, 9), "W": st.integers(1, 9),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 3),
    "sw": st.integers(1, 3), "ph": st.integers(0, 4), "pw": st.integers(0, 4),
    "dh": st.integers(1, 3), "dw": st.integers(1, 3),
    "dtype": st.sampled_from(["float32", "float64", "bf16"]), "seed": st.integers(0, 99),
})


@settings(max_examples=80, deadline=None)
@given(geometries)
def test_random_geometries_match_the_reference(cfg):
    # Strides, dilations, paddings up to beyond the kernel (outputs that read only padding),
    # channel counts that leave ragged GEMM panels and pairs: the forward, the input gradient
    # (stride 1 here, else another algorithm) and the weight gradient against the reference;
    # bf16 mode against the float64 reference on bf16-rounded operands.
    g = cfg["groups"]
    shape = (cfg["N"], g * cfg["cpg"], cfg["H"], cfg["W"], g * cfg["fpg"], (cfg["kh"], cfg["kw"]),
             (cfg["sh"], cfg["sw"]), (cfg["ph"], cfg["pw"]), (cfg["dh"], cfg["dw"]), g)
    rng = np.random.default_rng(cfg["seed"])
    dtype = np.float64 if cfg["dtype"] == "float64" else np.float32
    x, w, b, kwargs = conv_data(rng, shape, dtype)
    try:
        out_shape = F.conv2d_output_shape(x.shape, w.shape, **kwargs)
    except ValueError:
        assume(False)
    precision = "bf16" if cfg["dtype"] == "bf16" else None
    y = F.conv2d(x, w, b, **kwargs, precision=precision)
    gy = rng.standard_normal(out_shape).astype(dtype)
    gx, gw, _ = F.conv2d_backward(gy, x, w, **kwargs, output_mask=(True, True, False),
                                  precision=precision)
    if precision:
        x, w, gy = (round_to_bf16(a).astype(np.float64) for a in (x, w, gy))
        b = b.astype(np.float64)
    want_y = R.conv2d(x, w, b, **kwargs)
    want_gx, want_gw, _ = R.conv2d_backward(gy, x, w, **kwargs, output_mask=(True, True, False))
    tol = 1e-5 if dtype == np.float32 else None
    assert_close(y, want_y, tol=tol, what="forward")
    assert_close(gx, want_gx, tol=tol, what="grad_x")
    assert_close(gw, want_gw, tol=tol, what="grad_w")
    for pass_ in ("forward", "backward_weight"):
        assert algorithm_running(pass_, x.astype(dtype), w.astype(dtype), kwargs) == "valid_taps"
    stride1 = cfg["sh"] == cfg["sw"] == 1
    assert (algorithm_running("backward_input", x.astype(dtype), w.astype(dtype), kwargs)
            == "valid_taps") == stride1
    # bf16 mode where the tap-reduce tile runs (vdpbf16ps, its twin) takes strided input
    # gradients too
    tile = _core.bf16_gemm_blocks()["path"] in ("avx512_bf16", "avx512_bf16_twin")
    assert (algorithm_running("backward_input", x.astype(np.float32), w.astype(np.float32),
                              kwargs, "bf16") == "valid_taps") == (stride1 or tile)


# The layers the dispatch gives it (small outputs, 256 x 256 channels and more), at small
# batches, and wider or grouped kin.
TORCH_SHAPES = [
    (3, 512, 4, 4, 512, (3, 3), 1, 1, 1, 1),   # ResNet-18's last stage
    (5, 256, 3, 3, 256, (3, 3), 1, 1, 1, 1),   # airbench94's last layer
    (2, 256, 7, 7, 96, (3, 3), 1, 1, 1, 1),
    (2, 512, 3, 3, 512, (3, 3), 1, 1, 1, 2),   # two groups of 256
    (2, 256, 5, 6, 128, (3, 3), 2, 1, 1, 1),   # strided (bf16 mode: the tile's input gradient)
    (2, 256, 8, 8, 512, (3, 3), 2, 1, 1, 1),   # ResNet-18's 256 -> 512 stride-2 layer
    (2, 320, 4, 4, 272, (5, 3), 1, (2, 1), (1, 2), 1),
]


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=str)
def test_small_wide_layers_match_torch(rng, torch, shape, precision):
    x, w, b, kwargs = conv_data(rng, shape)
    y = F.conv2d(x, w, b, **kwargs, precision=precision)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw, _ = F.conv2d_backward(gy, x, w, **kwargs, output_mask=(True, True, False),
                                  precision=precision)
    if precision == "bf16":
        x, w, gy = (round_to_bf16(a) for a in (x, w, gy))
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    tw = torch.tensor(w.astype(np.float64), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, torch.tensor(b.astype(np.float64)), **kwargs)
    ty.backward(torch.tensor(gy.astype(np.float64)))
    # float32 sums of a few thousand products, relative to the outputs' scale
    assert_close(y, ty.detach().numpy(), tol=2e-5, what="forward")
    assert_close(gx, tx.grad.numpy(), tol=2e-5, what="grad_x")
    assert_close(gw, tw.grad.numpy(), tol=2e-5, what="grad_w")


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_outputs_that_see_only_padding_are_the_bias(rng, precision):
    # A 2x2 image, a 3x3 kernel, padding 3: the border outputs (20 of 36) hold no pixel.
    x, w, b, kwargs = conv_data(rng, (2, 3, 2, 2, 4, (3, 3), 1, 3, 1, 1))
    y = F.conv2d(x, w, b, **kwargs, precision=precision)
    want = R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kwargs)
    empty = R.conv2d(np.ones_like(x), np.ones_like(w), **kwargs) == 0  # windows without pixels
    assert y.size // 2 < empty.sum() < y.size
    np.testing.assert_array_equal(y[empty], np.broadcast_to(b[None, :, None, None], y.shape)[empty])
    if precision == "f32":
        assert_close(y, want, tol=1e-5)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_taps_that_see_no_pixel_get_no_gradient(rng, precision):
    # A 1x2 image under a 3x3 kernel, padding 1 and stride 2: one output, whose window keeps
    # only taps (1, 1) and (1, 2); the other seven see only padding.
    x, w, b, kwargs = conv_data(rng, (3, 4, 1, 2, 5, (3, 3), 2, 1, 1, 1))
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, **kwargs)).astype(np.float32)
    gw = F.conv2d_backward(gy, x, w, **kwargs, output_mask=(False, True, False),
                           precision=precision)[1]
    seen = np.zeros((3, 3), bool)
    seen[1, 1:] = True
    assert (gw[:, :, ~seen] == 0).all() and (gw[:, :, seen] != 0).all()
    if precision == "f32":
        assert_close(gw, R.conv2d_backward(gy, x, w, **kwargs)[1], tol=1e-5)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_pixels_reach_only_the_windows_that_hold_them(rng, bad):
    # No padding is multiplied and no junk column: a non-finite pixel makes exactly the
    # reference's non-finite outputs (its padding is zeros times finite weights).
    x, w, b, kwargs = conv_data(rng, (2, 6, 4, 5, 5, (3, 3), 1, 1, 1, 1))
    x[1, 2, 0, 4] = bad
    y = F.conv2d(x, w, b, **kwargs)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gy[0, 3, 3, 0] = bad
    gx, gw, _ = F.conv2d_backward(gy, x, w, **kwargs, output_mask=(True, True, False))
    with np.errstate(invalid="ignore", over="ignore"):
        want_y = R.conv2d(x, w, b, **kwargs)
        want_gx, want_gw, _ = R.conv2d_backward(gy, x, w, **kwargs,
                                                output_mask=(True, True, False))
    for got, want in ((y, want_y), (gx, want_gx), (gw, want_gw)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        assert not np.isfinite(want).all() and np.isfinite(want).any()
        finite = np.isfinite(want)
        assert_close(got[finite], want[finite], tol=1e-5)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("shape", [
    (131, 16, 3, 3, 24, (3, 3), 1, 1, 1, 1),   # 1-position corners: batches of 64 images
    (70, 12, 7, 5, 8, (3, 3), 1, 1, 1, 1),
    (1, 40, 4, 4, 33, (3, 3), 1, 1, 1, 1),     # one image: each GEMM split over the threads
], ids=str)
def test_bits_do_not_depend_on_threads_or_batch(rng, threads, shape, precision):
    x, w, b, kwargs = conv_data(rng, shape)
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, **kwargs)).astype(np.float32)

    def run(images):
        y = F.conv2d(x[images], w, b, **kwargs, precision=precision)
        gx, gw, _ = F.conv2d_backward(gy[images], x[images], w, **kwargs,
                                      output_mask=(True, True, False), precision=precision)
        return y, gx, gw

    everything = slice(None)
    threads(1)
    one = run(everything)
    threads(2)
    two = run(everything)
    for a, c in zip(one, two):
        np.testing.assert_array_equal(a, c)
    # Each image alone (a batch of 1, its GEMMs split over the threads) gives its bits in the
    # whole batch: every output sums its taps and channels in one order.
    for i in {0, len(x) // 2, len(x) - 1}:
        alone = run(slice(i, i + 1))
        np.testing.assert_array_equal(alone[0][0], two[0][i])
        np.testing.assert_array_equal(alone[1][0], two[1][i])


@pytest.mark.parametrize("small_blocks", [False, True], ids=["blocks", "small_blocks"])
@pytest.mark.parametrize("path", ["avx512_bf16_twin", "amx_twin"])
@pytest.mark.parametrize("shape", [
    (5, 40, 3, 3, 33, (3, 3), 1, 1, 1, 1),
    (3, 17, 4, 5, 20, (3, 3), 2, 1, 1, 1),
    (2, 64, 4, 4, 96, (3, 3), 1, 1, 1, 2),
], ids=str)
def test_bf16_packings_have_the_same_bits_at_every_simd_level(rng, shape, path, small_blocks):
    # The channels-last operands' pair words (ColumnsB through the 16 x 16 register
    # transposer at avx512, through a buffer below; RowsB and ColumnsA row pair by row pair,
    # in registers at avx512, the portable loop below), on a twin path, whose kernel and
    # blocks are the same at every level: the same bits, hostile values (ties, subnormals,
    # -0, huge) and odd k included; small blocks cut every tap's K into many pairs.
    from fuzzing import Settings, simd_levels

    x, w, b, kwargs = conv_data(rng, shape)
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, **kwargs)).astype(np.float32)
    hostile = np.array([0x3F808000, 0x3F818000, 0x3F7FFFFF, 0x00000001, 0x807FFFFF,
                        0x80000000, 0x7F7F0000, 0x3F80FFFF], np.uint32).view(np.float32)
    for a in (x, w, gy):
        where = rng.random(a.shape) < 0.1
        a[where] = rng.choice(hostile, size=int(where.sum()))
    runs = []
    for level in simd_levels():
        with Settings(level, "valid_taps"):
            assert _core.set_bf16_path(path)
            cfg = _core.bf16_gemm_blocks()
            if small_blocks:  # kc of 2 pairs (amx_rows: one group of 32 k)
                assert _core.set_bf16_gemm_blocks(cfg["mr"], 2 * cfg["k_group"], cfg["nr"])
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    y = F.conv2d(x, w, b, **kwargs, precision="bf16")
                    gx, gw, _ = F.conv2d_backward(gy, x, w, **kwargs, precision="bf16")
            finally:
                assert _core.set_bf16_gemm_blocks(0, 0, 0)
                _core.set_bf16_path("auto")
            runs.append((level, y, gx, gw))
    assert len(runs) >= 1
    for level, *arrays in runs[1:]:
        for first, other in zip(runs[0][1:], arrays):
            np.testing.assert_array_equal(first.view(np.uint32), other.view(np.uint32), level)


@pytest.mark.parametrize("shape", [
    (3, 33, 7, 7, 40, (3, 3), 1, 1, 1, 1),     # odd channels (a half pair), ragged columns
    (2, 16, 5, 6, 70, (3, 3), 2, 1, 1, 1),     # strided: residue classes of the input
    (2, 10, 9, 7, 12, (3, 2), (3, 2), (2, 1), (2, 1), 1),  # stride 3 x 2, dilated
    (2, 24, 4, 4, 36, (3, 3), 1, 1, 2, 2),     # dilated, two groups
    (13, 8, 3, 3, 8, (3, 3), 1, 1, 1, 1),      # tiles across many images (short tiles)
    (24, 8, 3, 3, 40, (3, 3), 1, 1, 1, 1),     # 12 images per batch: full 12-row tiles
    (2, 6, 2, 3, 5, (3, 3), 1, 3, 1, 1),       # outputs that see only padding
], ids=str)
def test_tap_reduce_tile_matches_its_twin_bit_for_bit(rng, shape):
    # bf16 mode on vdpbf16ps runs valid_taps' forward and input gradient on the tap-reduce
    # tile (every valid tap and channel summed in registers); its portable twin sums the same
    # products in the same order with the instruction's arithmetic: the same bits, hostile
    # values (ties, subnormals, -0, huge, inf, NaN) included.
    reason = _core.bf16_paths()["avx512_bf16"]
    if reason is not None:
        pytest.skip(f"bf16 path avx512_bf16: {reason}")
    x, w, b, kwargs = conv_data(rng, shape)
    gy = rng.standard_normal(F.conv2d_output_shape(x.shape, w.shape, **kwargs)).astype(np.float32)
    hostile = np.array([0x3F808000, 0x3F818000, 0x3F7FFFFF, 0x00000001, 0x807FFFFF,
                        0x80000000, 0x7F7F0000, 0x3F80FFFF], np.uint32).view(np.float32)
    for a in (x, gy):
        where = rng.random(a.shape) < 0.1
        a[where] = rng.choice(hostile, size=int(where.sum()))
    x[0, 0, 0, 0], gy.flat[-1] = np.inf, np.nan
    runs = []
    for path in ("avx512_bf16", "avx512_bf16_twin"):
        assert _core.set_bf16_path(path)
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                y = F.conv2d(x, w, b, **kwargs, precision="bf16")
                gx = F.conv2d_backward(gy, x, w, **kwargs, output_mask=(True, False, False),
                                       precision="bf16")[0]
        finally:
            _core.set_bf16_path("auto")
        runs.append((y, gx))
    np.testing.assert_array_equal(runs[0][0].view(np.uint32), runs[1][0].view(np.uint32))
    np.testing.assert_array_equal(runs[0][1].view(np.uint32), runs[1][1].view(np.uint32))
