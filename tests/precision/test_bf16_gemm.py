"""The bf16 GEMM on every path (gemm_bf16.h): against float64 products of the bf16-rounded
operands within the float32 summation bound, across the edges of its tiles, k groups and
blocks, transposed operands, accumulation, and thread counts; the emulated path against the
float32 GEMM on rounded operands (bit for bit); the hardware kernels against their twins."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastconv
from fastconv import _core
from fastconv.precision import round_to_bf16

from bf16_paths import HARDWARE, PATHS, assert_within_bound, bf16_path
from fuzzing import Settings, simd_levels

# (M, N, K): one element, tile edges (mr 6/12/32, nr 16/32), odd and short K (pairs, AMX's 32),
# K over several k-blocks (kc 320/192 here), wide and tall products.
SHAPES = [(1, 1, 1), (5, 7, 3), (13, 33, 31), (32, 32, 32), (33, 65, 33), (12, 32, 64),
          (40, 20, 700), (100, 3, 257), (3, 150, 96), (70, 90, 45)]


def exact(a, b):
    """(a @ b on the rounded operands, sum of |products|), in float64."""
    ar, br = round_to_bf16(a).astype(np.float64), round_to_bf16(b).astype(np.float64)
    return ar @ br, np.abs(ar) @ np.abs(br)


def operands(rng, M, N, K, trans_a=False, trans_b=False):
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    return a, b


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_within_the_summation_bound(path, shape, rng):
    M, N, K = shape
    a, b = operands(rng, M, N, K)
    want, mag = exact(a, b)
    with bf16_path(path):
        c = np.empty((M, N), np.float32)
        _core.gemm(a, b, c, precision="bf16")
    assert_within_bound(c, want, mag, K, f"{path} {shape}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("trans_a,trans_b", [(True, False), (False, True), (True, True)])
def test_transposed_operands_and_accumulation(path, trans_a, trans_b, rng):
    M, N, K = 29, 45, 77
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    aa, bb = (a.T if trans_a else a), (b.T if trans_b else b)
    want, mag = exact(aa, bb)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    with bf16_path(path):
        c = c0.copy()
        _core.gemm(a, b, c, trans_a, trans_b, True, precision="bf16")
    assert_within_bound(c, want + c0, mag + np.abs(c0), K + 1, f"{path} accumulate")


@pytest.mark.parametrize("path", PATHS)
def test_small_blocks_cover_every_block_edge(path, rng):
    """Blocks forced small: several row, column and k blocks, each with edge tiles."""
    M, N, K = 75, 99, 130
    a, b = operands(rng, M, N, K)
    want, mag = exact(a, b)
    with bf16_path(path):
        cfg = _core.bf16_gemm_blocks()
        mr, nr, group = cfg["mr"], cfg["nr"], cfg["k_group"]
        try:
            assert _core.set_bf16_gemm_blocks(2 * mr, 2 * group if group > 1 else 24, 2 * nr)
            assert not _core.set_bf16_gemm_blocks(mr + 1, 64, nr)  # mc not a multiple of mr
            if group > 1:
                assert not _core.set_bf16_gemm_blocks(mr, group + 1, nr)
            c = np.empty((M, N), np.float32)
            _core.gemm(a, b, c, precision="bf16")
        finally:
            assert _core.set_bf16_gemm_blocks(0, 0, 0)
        assert _core.bf16_gemm_blocks() == cfg
    assert_within_bound(c, want, mag, K, f"{path} small blocks")


@pytest.mark.parametrize("path", PATHS)
def test_bit_identical_across_thread_counts(path, rng, threads):
    a, b = operands(rng, 96, 160, 200)
    with bf16_path(path):
        out = []
        for n in (1, 2, 3):
            threads(n)
            c = np.empty((96, 160), np.float32)
            _core.gemm(a, b, c, precision="bf16")
            out.append(c)
    assert all(np.array_equal(out[0], c) for c in out[1:])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_path_is_the_float32_gemm_on_rounded_operands(shape, rng):
    M, N, K = shape
    a, b = operands(rng, M, N, K)
    with bf16_path("emulated"):
        c = np.empty((M, N), np.float32)
        _core.gemm(a, b, c, precision="bf16")
    ref = np.empty((M, N), np.float32)
    _core.gemm(round_to_bf16(a), round_to_bf16(b), ref)
    assert np.array_equal(c, ref)


@pytest.mark.parametrize("twin", ["avx512_bf16_twin", "amx_twin"])
def test_twins_agree_with_the_emulated_path(twin, rng):
    M, N, K = 61, 83, 300
    a, b = operands(rng, M, N, K)
    _, mag = exact(a, b)
    results = {}
    for path in ("emulated", twin):
        with bf16_path(path):
            c = np.empty((M, N), np.float32)
            _core.gemm(a, b, c, precision="bf16")
            results[path] = c.astype(np.float64)
    # Both within K * u of the exact sum: within 2 K * u of each other.
    assert_within_bound(results[twin], results["emulated"], 2 * mag, K, twin)


@pytest.mark.parametrize("hardware", sorted(HARDWARE))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_hardware_kernel_is_its_twin_bit_for_bit(hardware, shape, rng):
    """The twins emulate the instructions' arithmetic and order (SDM): on a CPU with the
    instructions, the same bits (AMX: see assert_is_twin)."""
    a, b = operands(rng, *shape)
    got, want = on_hardware_and_twin(hardware, a, b)
    assert_is_twin(hardware, got, want, a, b)


def on_hardware_and_twin(hardware, a, b):
    """C = A . B in bf16 on hardware path `hardware`, then on its twin."""
    out = []
    for path in (hardware, HARDWARE[hardware]):
        with bf16_path(path):
            c = np.empty((a.shape[0], b.shape[1]), np.float32)
            _core.gemm(a, b, c, precision="bf16")
            out.append(c)
    return out


def assert_is_twin(hardware, got, want, a, b):
    """vdpbf16ps: got has the twin's bits (one order, the SDM's, which the Zen 4 matches).
    tdpbf16ps: Intel documents two orders (the SDM sums a tile's even and odd products apart,
    the intrinsics guide one after the other into C) and this kernel has not run on an AMX CPU
    yet, so there got is held to the float32 summation bound of the exact sum (as the twin is)
    with the non-finite entries where the twin has them, and bits that differ from the twin's
    are reported as a warning, not failed on."""
    if hardware != "amx":
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))
        return
    assert np.array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    assert np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    # The exact sums of the operands as tdpbf16ps reads them: bf16, subnormals as zero (its
    # flushed subnormal results are within the bound's absolute slack).
    ar, br = (round_to_bf16(np.where(np.isfinite(x), x, 0)).astype(np.float64) for x in (a, b))
    for x in (ar, br):
        x[np.abs(x) < np.finfo(np.float32).tiny] = 0
    ref, mag = ar @ br, np.abs(ar) @ np.abs(br)
    assert_within_bound(got[finite], ref[finite], mag[finite], a.shape[1], "amx")
    differ = int(np.count_nonzero(got[finite].view(np.uint32) != want[finite].view(np.uint32)))
    if differ:
        warnings.warn(f"amx: {differ} of {got.size} sums differ in their last bits from the twin's "
                      "(tdpbf16ps adds in another order than gemm_bf16_twin.cpp emulates)")


def hostile_values(rng, shape):
    """Random normals with a tenth of the entries replaced by values rounding to bf16 is hard
    on: ties to even (up and down), a carry into the exponent, subnormals, -0, infinities, a
    value that rounds up to inf, and NaNs (quiet, signalling, with payload bits)."""
    x = rng.standard_normal(shape).astype(np.float32)
    bits = np.array([0x3F808000, 0x3F818000, 0x3F7FFFFF, 0x00000001, 0x807FFFFF, 0x80000000,
                     0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x7FC00000, 0x7F800001, 0xFFC12345],
                    np.uint32).view(np.float32)
    where = rng.random(shape) < 0.1
    x[where] = rng.choice(bits, size=int(where.sum()))
    return x


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("level", simd_levels())
@pytest.mark.parametrize("small_blocks", [False, True], ids=["blocks", "small_blocks"])
@pytest.mark.parametrize("operand", ["a", "b"])
@pytest.mark.parametrize("shape", [(5, 45, 77), (13, 16, 32), (3, 100, 33), (20, 70, 700),
                                   (1, 1, 1), (7, 17, 2), (2, 64, 31), (40, 3, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_operand_packed_from_columns_has_the_bits_of_packing_from_rows(path, level, small_blocks,
                                                                       operand, shape, rng):
    """An operand whose pairs run along its rows in memory (A as given, B transposed: a
    Linear's input and weight in the forward pass) is packed column by column of its packed
    form (by 16 x 16 blocks in registers at avx512, through a buffer below), the other
    layout row by row: the same panels, so the same bits of C, hostile values and every k,
    row and column edge included."""
    M, N, K = shape
    a = hostile_values(rng, (M, K))
    b = hostile_values(rng, (K, N))
    if operand == "a":
        forms = ((a, b, False, False), (np.ascontiguousarray(a.T), b, True, False))
    else:
        forms = ((a, np.ascontiguousarray(b.T), False, True), (a, b, False, False))
    out = []
    with bf16_path(path), Settings(level):
        cfg = _core.bf16_gemm_blocks()
        if small_blocks:
            assert _core.set_bf16_gemm_blocks(cfg["mr"], 2 * cfg["k_group"] if cfg["k_group"] > 1
                                              else 24, cfg["nr"])
        try:
            for aa, bb, trans_a, trans_b in forms:
                c = np.empty((M, N), np.float32)
                _core.gemm(aa, bb, c, trans_a, trans_b, precision="bf16")
                out.append(c)
        finally:
            assert _core.set_bf16_gemm_blocks(0, 0, 0)
    assert np.array_equal(out[0].view(np.uint32), out[1].view(np.uint32))


@pytest.mark.parametrize("hardware", sorted(HARDWARE))
@pytest.mark.parametrize("shape", [(13, 33, 31), (40, 20, 700), (12, 32, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_hardware_kernel_is_its_twin_on_hostile_values(hardware, shape, rng):
    """Subnormal operands (read as zero), products that underflow (flushed to zero), ties,
    an exponent carry, -0, and a NaN and an inf in one row and column each: the twin emulates
    each as the instruction does, so the hardware and the twin agree bit for bit."""
    M, N, K = shape
    finite = np.array([0x3F808000, 0x3F818000, 0x3F7FFFFF, 0x00000001, 0x807FFFFF, 0x80000000,
                       0x00010000, 0x1C800000], np.uint32).view(np.float32)  # .., 2^-70
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    for x in (a, b):
        where = rng.random(x.shape) < 0.3
        x[where] = rng.choice(finite, size=int(where.sum()))
    b[:, 0] = np.float32(2.0 ** -130)  # subnormal in bf16 too: read as zero
    a[1, :] = np.float32(2.0 ** 60)    # 2^60 * 2^-130 = 2^-70 were it read
    a[2, :] = np.float32(2.0 ** -70)
    b[:, 1] = np.float32(2.0 ** -70)   # products of 2^-140: flushed
    a[3, 0], b[0, 2] = np.nan, np.inf
    got, want = on_hardware_and_twin(hardware, a, b)
    assert got[1, 0] == 0 and got[2, 1] == 0  # DAZ and FTZ, as the twin emulates them
    nan = np.isnan(want)
    assert nan[3].all() and not nan.all()
    assert_is_twin(hardware, got, want, a, b)


def test_nonfinite_operands_propagate(rng):
    a, b = operands(rng, 8, 40, 20)
    a[2, 3] = np.nan
    b[5, 7] = np.inf
    b[6, 7] = 0.0
    a[:, 6] = 0.0  # inf * 0 in column 7 is NaN for every row
    for path in ("emulated", "avx512_bf16_twin", "amx_twin"):
        with bf16_path(path):
            c = np.empty((8, 40), np.float32)
            _core.gemm(a, b, c, precision="bf16")
        want = round_to_bf16(a).astype(np.float64) @ round_to_bf16(b).astype(np.float64)
        assert np.array_equal(np.isnan(c), np.isnan(want)), path
        assert np.array_equal(np.isinf(c), np.isinf(want)), path


def test_precision_argument_is_checked():
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    c = np.empty((2, 4), np.float32)
    with pytest.raises(ValueError, match="precision must be 'f32' or 'bf16'"):
        _core.gemm(a, b, c, precision="fp8")
    with pytest.raises(TypeError, match="needs float32"):
        _core.gemm(a.astype(np.float64), b.astype(np.float64), c.astype(np.float64),
                   precision="bf16")
    with pytest.raises(ValueError, match="unknown path"):
        _core.set_bf16_path("sse")


def test_build_info_reports_the_bf16_path():
    info = fastconv.build_info()["bf16"]
    assert info["path"] == fastconv.simd_level("bf16") == fastconv.precision.bf16_path()
    assert set(info["paths"]) == set(PATHS)
    assert info["paths"]["emulated"] is None
    assert info["paths"]["avx512_bf16_twin"] is None and info["paths"]["amx_twin"] is None
    features = set(fastconv.build_info()["cpu"]["features"])
    if "avx512_bf16" not in features:
        assert info["paths"]["avx512_bf16"] == "CPU lacks avx512_bf16"
    if "amx_bf16" not in features:
        assert info["paths"]["amx"] == "CPU lacks amx_bf16"
    # The best path is a hardware one wherever one runs, else the emulated one (never a twin).
    runs = [p for p in ("amx", "avx512_bf16") if info["paths"][p] is None]
    assert info["best"] == (runs[0] if runs else "emulated")
    assert info["gemm"]["path"] == info["path"]


def test_hardware_kernels_are_compiled_in_on_x86():
    """The build compiles both hardware kernels (their TUs with -mavx512bf16 / -mamx-bf16):
    nowhere is a path reported as not compiled in on an x86-64 build with GCC or Clang."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("not an x86-64 build")
    for path in HARDWARE:
        assert "not compiled in" not in (_core.bf16_paths()[path] or "")


def test_forcing_a_plainer_isa_turns_the_hardware_paths_off():
    before = _core.simd_level()
    try:
        assert _core.set_simd_level("generic")
        assert _core.bf16_path() == "emulated"
        for path in HARDWARE:
            assert _core.bf16_paths()[path] is not None
            assert not _core.set_bf16_path(path)
        assert _core.bf16_gemm_blocks()["mr"] == _core.gemm_blocks("float32")["mr"]
    finally:
        assert _core.set_simd_level(before)
