"""The packed GEMM's cache blocks: derived from the CPU's caches by the model of
csrc/gemm/gemm_config.cpp, and only kc (never the thread count, mc or nc) sets the order of the
sums."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _core

DTYPES = ["float32", "float64"]


@pytest.fixture
def blocks():
    """set_gemm_blocks for a test, the derived blocks (and thread count) restored after."""
    threads = fastconv.get_num_threads()
    yield lambda dtype, mc, kc, nc: _core.set_gemm_blocks(dtype, mc, kc, nc)
    for dtype in DTYPES:
        assert _core.set_gemm_blocks(dtype, 0, 0, 0)
    fastconv.set_num_threads(threads)


def model(mr, nr, itemsize, caches):
    """gemm_blocks_for of csrc/gemm/gemm_config.cpp, written out again."""
    l1, l2, l3 = caches["l1d"], caches["l2"], caches["l3"]
    ways = l1["ways"] if l1["ways"] > 1 else 8
    b_ways = max(1, (ways - 1) * nr // (mr + nr))
    down = lambda a, b: max(b, a // b * b)  # noqa: E731
    kc = min(1 << 16, down(b_ways * (l1["bytes"] // ways) // (nr * itemsize), 8))
    mc = min(down(1 << 16, mr), down(l2["bytes"] // 2 // (kc * itemsize), mr))
    l3_per_cpu = l3["bytes"] // max(1, l3["shared_by"])
    nc = min(down(1 << 16, nr), down(l3_per_cpu // 4 // (kc * itemsize), nr))
    return mc, kc, nc


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocks_follow_the_cache_model(dtype):
    b = _core.gemm_blocks(dtype)
    assert b["isa"] == _core.simd_level()
    caches = _core.cpu_info()["caches"]
    assert (b["mc"], b["kc"], b["nc"]) == model(b["mr"], b["nr"], np.dtype(dtype).itemsize,
                                                caches)
    assert b["mc"] % b["mr"] == 0 and b["nc"] % b["nr"] == 0 and b["kc"] % 8 == 0
    assert fastconv.build_info()["gemm"][dtype] == b


def test_model_on_known_caches():
    # A Zen 3 core as this VM reports it (32 KiB 8-way L1, 512 KiB L2, 32 MiB L3 for 2 CPUs):
    # the AVX2 float32 tile 6 x 16 streams its B micro-panel through 5 of the 8 ways.
    zen3 = {"l1d": {"bytes": 32 << 10, "ways": 8}, "l2": {"bytes": 512 << 10, "ways": 8},
            "l3": {"bytes": 32 << 20, "ways": 16, "shared_by": 2}}
    assert model(6, 16, 4, zen3) == (204, 320, 3264)
    assert model(6, 8, 8, zen3) == (126, 256, 2048)


@pytest.mark.parametrize("dtype", DTYPES)
def test_only_kc_sets_the_bits(rng, blocks, dtype):
    a = rng.standard_normal((203, 1100)).astype(dtype)
    b = rng.standard_normal((1100, 301)).astype(dtype)
    tile = _core.gemm_blocks(dtype)
    mr, nr, kc = tile["mr"], tile["nr"], tile["kc"]
    results = []
    for mc, nc, threads in [(mr, nr, 1), (10 * mr, 3 * nr, 2), (100 * mr, 40 * nr, 3),
                            (tile["mc"], tile["nc"], 1)]:
        assert blocks(dtype, mc, kc, nc)
        fastconv.set_num_threads(threads)
        c = np.empty((203, 301), dtype)
        _core.gemm(a, b, c)
        results.append(c)
    for c in results[1:]:
        np.testing.assert_array_equal(c, results[0])
    # Another kc sums in another order: the same product to rounding.
    assert blocks(dtype, tile["mc"], kc // 2, tile["nc"])
    c = np.empty((203, 301), dtype)
    _core.gemm(a, b, c)
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(c, results[0], rtol=tol, atol=tol * np.sqrt(1100))
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=tol, atol=tol * np.sqrt(1100))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_results_do_not_depend_on_mc_or_nc(rng, blocks, dtype):
    x = rng.standard_normal((3, 20, 17, 17)).astype(dtype)
    w = rng.standard_normal((24, 20, 3, 3)).astype(dtype)
    tile = _core.gemm_blocks(dtype)
    want = fastconv.F.conv2d(x, w, padding=1)
    assert blocks(dtype, tile["mr"], tile["kc"], tile["nr"])
    np.testing.assert_array_equal(fastconv.F.conv2d(x, w, padding=1), want)


def test_invalid_blocks_are_refused(blocks):
    tile = _core.gemm_blocks("float32")
    before = dict(tile)
    mr, nr = tile["mr"], tile["nr"]
    for mc, kc, nc in [(mr + 1, 64, nr), (mr, 64, nr + 1), (0, 64, nr), (mr, 0, nr),
                       (mr, -8, nr), (mr, 1 << 17, nr)]:
        assert not _core.set_gemm_blocks("float32", mc, kc, nc)
    assert _core.gemm_blocks("float32") == before
    with pytest.raises(TypeError, match="dtype"):
        _core.set_gemm_blocks("int8", mr, 64, nr)
