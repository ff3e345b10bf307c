"""Convolutions in bf16 mode, on every bf16 path, conv algorithm (forced, and the dispatch's
own choice), shape family and pass: against the float64 reference on bf16-rounded operands
within the float32 summation bound; the emulated path bit for bit against the float32
kernels on rounded operands; thread counts; which algorithms the dispatch picks per path;
transposed convolutions and the fused conv + max-pool ops."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R
from fastconv._args import conv2d_geometry
from fastconv.precision import round_to_bf16

from bf16_paths import PATHS, assert_within_bound, bf16_path

ALGORITHMS = ("auto", "valid_taps", "winograd4", "winograd", "direct_nchw", "direct", "wide",
              "im2col")
PASSES = ("forward", "backward_input", "backward_weight")

# (N, C, H, W, F, kernel, stride, padding, dilation, groups)
SHAPES = {
    "pointwise": (2, 16, 6, 6, 24, 1, 1, 0, 1, 1),
    "3x3": (2, 16, 8, 8, 20, 3, 1, 1, 1, 1),
    "strided": (2, 8, 9, 9, 12, 3, 2, 1, 1, 1),
    "dilated": (2, 8, 10, 10, 8, 3, 1, 2, 2, 1),
    "grouped": (2, 16, 7, 7, 16, 3, 1, 1, 1, 4),
    "rgb_5x5": (2, 3, 12, 12, 16, 5, 1, 2, 1, 1),
    "odd_edges": (3, 5, 7, 7, 7, 3, 1, 0, 1, 1),
    "wide_rows": (2, 4, 11, 30, 6, 3, 1, 1, 1, 1),
}


def conv_args(shape):
    N, C, H, W, Fo, k, s, p, d, g = shape
    return (N, C, H, W), (Fo, C // g, k, k), dict(stride=s, padding=p, dilation=d, groups=g)


def data(shape, seed=0):
    xs, ws, kw = conv_args(shape)
    gen = np.random.default_rng(seed)
    x = gen.standard_normal(xs).astype(np.float32)
    w = gen.standard_normal(ws).astype(np.float32)
    b = gen.standard_normal(ws[0]).astype(np.float32)
    geom = conv2d_geometry(xs, ws, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    gy = gen.standard_normal(geom.output_shape).astype(np.float32)
    return x, w, b, gy, kw, geom


def running(pass_, shape, precision="bf16"):
    """The algorithm the dispatch runs for this pass and shape now."""
    xs, ws, kw = conv_args(shape)
    geom = conv2d_geometry(xs, ws, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    return _core.conv_algorithm(pass_, "float32", xs, ws, *geom.out, *geom.stride,
                                *geom.padding, *geom.dilation, geom.groups, precision=precision)


def exact_and_magnitude(x, w, b, gy, kw):
    """Per pass: (float64 result on the bf16-rounded operands, float64 sum of |products|, the
    number of products per output)."""
    xr, wr, gyr = (round_to_bf16(a).astype(np.float64) for a in (x, w, gy))
    y = R.conv2d(xr, wr, b.astype(np.float64), **kw)
    ymag = R.conv2d(np.abs(xr), np.abs(wr), np.abs(b).astype(np.float64), **kw)
    gx, gw, _ = R.conv2d_backward(gyr, xr, wr, **kw)
    gxmag, gwmag, _ = R.conv2d_backward(np.abs(gyr), np.abs(xr), np.abs(wr), **kw)
    Fo, Cg, kh, kwid = w.shape
    G = kw["groups"]
    terms = {"forward": Cg * kh * kwid + 1,
             "backward_input": (Fo // G) * kh * kwid,
             "backward_weight": gy.shape[0] * gy.shape[2] * gy.shape[3]}
    return {"forward": (y, ymag), "backward_input": (gx, gxmag),
            "backward_weight": (gw, gwmag)}, terms


def run_passes(x, w, b, gy, kw):
    y = F.conv2d(x, w, b, **kw, precision="bf16")
    gx, gw, gb = F.conv2d_backward(gy, x, w, **kw, precision="bf16")
    return {"forward": y, "backward_input": gx, "backward_weight": gw}, gb


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("family", sorted(SHAPES))
def test_every_algorithm_and_pass_within_the_bound(path, name, family, forced):
    shape = SHAPES[family]
    x, w, b, gy, kw, _ = data(shape)
    with bf16_path(path):
        forced(name)
        ran = {p: running(p, shape) for p in PASSES}
        if name != "auto" and name not in ran.values():
            pytest.skip(f"{name} takes no pass of {family}")
        got, gb = run_passes(x, w, b, gy, kw)
    want, terms = exact_and_magnitude(x, w, b, gy, kw)
    for p in PASSES:
        # Winograd's transforms add and subtract: a few more roundings than the sum's.
        factor = 8.0 if ran[p] in ("winograd", "winograd4") else 1.0
        assert_within_bound(got[p], *want[p], terms[p], f"{path} {name}->{ran[p]} {family} {p}",
                            factor)
    # The bias gradient sums grad_y as given (float32), in every precision.
    assert np.array_equal(gb, F.conv2d_backward(gy, x, w, **kw, output_mask=(0, 0, 1))[2])


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("family", sorted(SHAPES))
def test_emulated_path_is_float32_on_rounded_operands_bit_for_bit(name, family, forced):
    """Emulated, every algorithm computes exactly what it computes in float32 on the rounded
    operands: the GEMMs round while packing (with the float32 GEMM's kernel and blocks), the
    others get rounded copies. ("auto": float32 forced to the algorithm bf16 mode picked, which
    may differ: F(4x4) Winograd takes the forward in bf16 mode only.)"""
    shape = SHAPES[family]
    x, w, b, gy, kw, _ = data(shape, seed=1)
    xr, wr, gyr = round_to_bf16(x), round_to_bf16(w), round_to_bf16(gy)
    with bf16_path("emulated"):
        forced(name)
        ran = {p: running(p, shape) for p in PASSES}
        got, _ = run_passes(x, w, b, gy, kw)
    want = {}
    for p in PASSES:
        forced(ran[p])
        assert running(p, shape, "f32") == ran[p]
        want[p] = (F.conv2d(xr, wr, b, **kw) if p == "forward" else
                   F.conv2d_backward(gyr, xr, wr, **kw)[PASSES.index(p) - 1])
    for p in PASSES:
        assert np.array_equal(got[p], want[p]), f"{name}->{ran[p]} {family} {p}"


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16_twin", "amx_twin", "avx512_bf16",
                                  "amx"])
@pytest.mark.parametrize("family", ["3x3", "pointwise", "rgb_5x5"])
def test_bit_identical_across_thread_counts(path, family, threads):
    x, w, b, gy, kw, _ = data((8,) + SHAPES[family][1:], seed=2)
    out = []
    with bf16_path(path):
        for n in (1, 2, 3):
            threads(n)
            got, gb = run_passes(x, w, b, gy, kw)
            out.append((got, gb))
    for got, gb in out[1:]:
        assert np.array_equal(gb, out[0][1])
        for p in PASSES:
            assert np.array_equal(got[p], out[0][0][p]), f"{path} {family} {p}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["winograd4", "winograd"])
@pytest.mark.parametrize("family", ["3x3", "odd_edges", "wide_rows"])
def test_winograd_in_bf16_mode_is_float32_winograd_on_rounded_operands(path, name, family,
                                                                        forced):
    """Winograd rounds the images as it copies them (no rounded copy) and the weights in a
    copy: on every path, the bits of float32 Winograd on rounded operands, the forward's
    centring included (its plane means are of the rounded values)."""
    x, w, b, gy, kw, _ = data(SHAPES[family], seed=4)
    x += 3.0  # a mean to centre
    # Ties to even both ways, a carry into the exponent, a subnormal, -0, and a large value
    # (the transforms overflow: NaN in the same places).
    hard = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, np.nextafter(np.float32(1), 0), 1e-40, -0.0,
                     -3e38 / 7], np.float32)
    x.reshape(-1)[::97][:hard.size] = hard  # (views of x and gy)
    gy.reshape(-1)[::89][:hard.size] = hard
    xr, wr, gyr = round_to_bf16(x), round_to_bf16(w), round_to_bf16(gy)
    forced(name)
    with bf16_path(path):
        got, _ = run_passes(x, w, b, gy, kw)
    want = {"forward": F.conv2d(xr, wr, b, **kw),
            "backward_input": F.conv2d_backward(gyr, xr, wr, **kw)[0],
            "backward_weight": F.conv2d_backward(gyr, xr, wr, **kw)[1]}
    for p in PASSES:
        assert running(p, SHAPES[family], "f32") == name
        assert np.array_equal(got[p], want[p], equal_nan=True), f"{path} {name} {family} {p}"


#: Per path, the (algorithm, pass) pairs bf16 mode keeps in auto mode where float32 picks them:
#: those gaining at least as much over the GEMMs as the path's bf16 GEMM kernel gains in rate
#: (conv.h); elsewhere the GEMMs. F(4x4) Winograd also takes the forward in bf16 mode.
GEMMS = ("wide", "im2col")
WINOGRAD = ("winograd4", "winograd")
_VDPBF16PS = {(a, p) for a in WINOGRAD for p in PASSES} | {("direct_nchw", "backward_weight")}
KEPT = {"emulated": {(a, p) for a in WINOGRAD + ("direct_nchw", "direct") for p in PASSES},
        "avx512_bf16_twin": _VDPBF16PS, "avx512_bf16": _VDPBF16PS, "amx_twin": set(),
        "amx": set()}


@pytest.mark.parametrize("path", PATHS)
def test_bf16_mode_keeps_the_algorithms_that_gain_more_than_its_kernel(path, forced):
    """Auto mode: float32's choice where it is a GEMM or gains more over the GEMMs than the
    bf16 kernel gains in rate (emulated: all; vdpbf16ps, 2x: Winograd, F(4x4) in the forward
    too, and the few-channel weight gradient; AMX, 16x: none), a GEMM elsewhere; float32 is
    unchanged; a forced algorithm still runs where it applies."""
    f32 = {(family, p): running(p, shape, "f32") for family, shape in SHAPES.items()
           for p in PASSES}
    with bf16_path(path):
        for family, shape in SHAPES.items():
            for p in PASSES:
                want, got = f32[family, p], running(p, shape)
                if want in GEMMS:
                    assert got == want, (family, p)
                elif (want, p) not in KEPT[path]:
                    assert got in GEMMS, (family, p)
                elif want == "winograd" and p == "forward":
                    assert got in WINOGRAD, (family, p)
                else:
                    assert got == want, (family, p)
                assert running(p, shape, "f32") == want
        # The 3x3 family: F(2x2) forward in float32, F(4x4) in bf16 mode where Winograd stays.
        assert f32["3x3", "forward"] == "winograd"
        assert running("forward", SHAPES["3x3"]) == ("winograd4" if KEPT[path] else "im2col")
        forced("direct")
        if running("forward", SHAPES["3x3"], "f32") == "direct":
            assert running("forward", SHAPES["3x3"]) == "direct"


@pytest.mark.parametrize("path", PATHS)
def test_small_outputs_with_many_channels_take_the_valid_taps_gemms(path):
    """With a bf16 kernel faster than float32's (vdpbf16ps, AMX), padded 3x3 and 4x4 outputs
    with at least 256 x 256 channels run valid_taps (the bf16 GEMMs over the taps inside the
    image) in every pass; unpadded ones, with no tap to skip, the bf16 im2col GEMM forward;
    fewer channels and larger outputs keep Winograd (AMX: the GEMMs). vdpbf16ps's paths, which
    have the tap-reduce tile, also give valid_taps, from 64 x 128 channels, the forward of
    stride-1 outputs up to 8x8 and strided layers' forward and input gradient up to 16x16.
    The emulated path (float32's rate) decides as float32 does: valid_taps for the forward of
    3x3 outputs only."""
    tiny = {o: (4, 256, o, o, 256, 3, 1, 1, 1, 1) for o in (3, 4)}
    unpadded = (4, 256, 5, 5, 256, 3, 1, 0, 1, 1)  # 3x3 output
    kept = [(4, 128, 4, 4, 128, 3, 1, 1, 1, 1), (4, 256, 7, 7, 256, 3, 1, 1, 1, 1),
            (4, 512, 4, 4, 64, 3, 1, 1, 1, 1)]  # 512 x 64 channels: fewer than 256 x 256
    tap_reduce = path in ("avx512_bf16", "avx512_bf16_twin")
    forward_kept = [(4, 64, 8, 8, 64, 3, 1, 1, 1, 1),    # 64 x 64 channels
                    (4, 256, 9, 9, 256, 3, 1, 1, 1, 1),  # 9x9 output
                    (4, 64, 34, 34, 128, 3, 2, 1, 1, 1),  # strided, 17x17 output
                    (4, 32, 16, 16, 128, 3, 2, 1, 1, 1)]  # strided, 32 x 128 channels
    strided = [(4, 64, 32, 32, 128, 3, 2, 1, 1, 1), (4, 128, 16, 16, 256, 3, 2, 1, 1, 1),
               (4, 256, 8, 8, 512, 3, 2, 1, 1, 1)]
    amx = path in ("amx", "amx_twin")
    with bf16_path(path):
        if tap_reduce:
            for shape in kept + [(4, 64, 8, 8, 128, 3, 1, 1, 1, 1)]:
                assert running("forward", shape) == "valid_taps", shape
                assert running("backward_input", shape) != "valid_taps", shape
            for shape in forward_kept:
                assert running("forward", shape) != "valid_taps", shape
                assert running("backward_input", shape) != "valid_taps", shape
            for shape in strided:  # ResNet's stride-2 layers: the tile's residue classes
                for p in ("forward", "backward_input"):
                    assert running(p, shape) == "valid_taps", (shape, p)
            kept = []
        for o, shape in tiny.items():
            for p in PASSES:
                if path == "emulated":
                    want = running(p, shape, "f32")
                    assert (want == "valid_taps") == (o == 3 and p == "forward"), (shape, p)
                    assert running(p, shape) == want, (shape, p)
                else:
                    assert running(p, shape) == "valid_taps", (shape, p)
        assert running("forward", unpadded) == (
            "im2col" if path != "emulated" else running("forward", unpadded, "f32"))
        for shape in kept:
            assert running("forward", shape) in (GEMMS if amx else WINOGRAD), shape


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16_twin", "amx_twin"])
def test_nan_and_inf_propagate_as_in_float32(path):
    x, w, b, gy, kw, _ = data(SHAPES["3x3"], seed=3)
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 4, 4] = np.inf
    with bf16_path(path):
        y = F.conv2d(x, w, b, **kw, precision="bf16")
    y32 = F.conv2d(x, w, b, **kw)
    assert np.array_equal(np.isnan(y), np.isnan(y32))
    assert np.array_equal(np.isinf(y), np.isinf(y32))


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16_twin", "amx_twin"])
def test_fused_conv_max_pool_in_bf16(path):
    """conv2d_max_pool2d and its backward in bf16 give the unfused ops' bf16 results."""
    x, w, b, _, kw, geom = data(SHAPES["rgb_5x5"], seed=4)
    with bf16_path(path):
        y, idx = F.conv2d_max_pool2d(x, w, b, **kw, kernel_size=2, relu=True, precision="bf16")
        y2, idx2 = F.max_pool2d(F.conv2d(x, w, b, **kw, precision="bf16"), 2,
                                return_indices=True, relu=True)
        assert np.array_equal(y, y2) and np.array_equal(idx, idx2)
        gp = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
        gw, gb = F.conv2d_backward_through_max_pool(gp, idx, x, w, **kw, relu_output=y,
                                                    precision="bf16")
        gy = F.max_pool2d_backward(gp, idx, geom.output_shape, relu_output=y)
        _, gw2, gb2 = F.conv2d_backward(gy, x, w, **kw, precision="bf16")
    assert np.array_equal(gw, gw2) and np.array_equal(gb, gb2)


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16_twin", "amx_twin"])
def test_transposed_convolution_in_bf16(path):
    gen = np.random.default_rng(6)
    x = gen.standard_normal((2, 8, 5, 5)).astype(np.float32)
    w = gen.standard_normal((8, 6, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1)
    with bf16_path(path):
        y = F.conv_transpose2d(x, w, **kw, precision="bf16")
        gy = gen.standard_normal(y.shape).astype(np.float32)
        gx, gw, _ = F.conv_transpose2d_backward(gy, x, w, **kw, precision="bf16")
    xr, wr, gyr = (round_to_bf16(a).astype(np.float64) for a in (x, w, gy))
    want = R.conv_transpose2d(xr, wr, **kw)
    mag = R.conv_transpose2d(np.abs(xr), np.abs(wr), **kw)
    assert_within_bound(y, want, mag, 6 * 9, f"{path} transposed")
    wgx, wgw, _ = R.conv_transpose2d_backward(gyr, xr, wr, **kw)
    mgx, mgw, _ = R.conv_transpose2d_backward(np.abs(gyr), np.abs(xr), np.abs(wr), **kw)
    assert_within_bound(gx, wgx, mgx, 6 * 9, f"{path} transposed grad_x")
    assert_within_bound(gw, wgw, mgw, 2 * 25, f"{path} transposed grad_w")


def test_reference_bf16_is_float32_on_rounded_operands():
    x, w, b, gy, kw, _ = data(SHAPES["grouped"], seed=7)
    xr, wr, gyr = round_to_bf16(x), round_to_bf16(w), round_to_bf16(gy)
    assert np.array_equal(R.conv2d(x, w, b, **kw, precision="bf16"), R.conv2d(xr, wr, b, **kw))
    got = R.conv2d_backward(gy, x, w, **kw, precision="bf16")
    want = R.conv2d_backward(gyr, xr, wr, **kw)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert np.array_equal(got[2], R.conv2d_backward(gy, x, w, **kw)[2])


def test_bf16_needs_float32():
    x = np.ones((1, 2, 4, 4))
    w = np.ones((3, 2, 3, 3))
    for ops in (F, R):
        with pytest.raises(TypeError, match="needs float32"):
            ops.conv2d(x, w, precision="bf16")
        with pytest.raises(ValueError, match="precision must be one of"):
            ops.conv2d(x.astype(np.float32), w.astype(np.float32), precision="half")
    with pytest.raises(TypeError, match="needs float32"):
        _core.conv2d_forward(x, w, None, np.empty((1, 3, 2, 2)), 1, 1, 0, 0, 1, 1, 1,
                             precision="bf16")


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16_twin", "amx_twin"])
@pytest.mark.parametrize("value", ["0x1.FFp127", "-0x1.FFp127", "0x1.FF02p127"])
def test_weights_that_round_to_inf_run_as_inf(path, value):
    """A weight at or past 0x1.FFp127 (halfway between bf16's largest and 2^128) is inf once
    rounded to bf16. The dispatch sees that without rounding a copy, and runs a path on which
    the inf propagates as in direct summation (Winograd's transforms would make NaN of
    inf - inf): the NaN and inf of the outputs are the reference's."""
    edge = np.float32(float.fromhex("0x1.FFp127"))
    assert np.isinf(round_to_bf16(np.array([edge])))[0]
    assert np.isfinite(round_to_bf16(np.array([np.nextafter(edge, np.float32(0))])))[0]
    x, w, b, gy, kw, _ = data(SHAPES["3x3"], seed=6)
    w[1, 0, 1, 1] = np.float32(float.fromhex(value))
    with bf16_path(path):
        y = F.conv2d(x, w, b, **kw, precision="bf16")
        gx = F.conv2d_backward(gy, x, w, **kw, precision="bf16")[0]
    ry = R.conv2d(x, w, b, **kw, precision="bf16")
    rgx = R.conv2d_backward(gy, x, w, **kw, precision="bf16")[0]
    for got, want in ((y, ry), (gx, rgx)):
        assert np.isinf(want).any()
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isinf(got), np.isinf(want))
