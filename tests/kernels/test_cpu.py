"""The CPU facts the kernels read once at start-up (features, caches) against what Linux says,
and the SIMD levels they allow."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

import fastconv
from fastconv import _core

X86 = platform.machine().lower() in ("x86_64", "amd64")
SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def proc_cpuinfo_flags() -> set[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def sysfs_caches() -> dict[int, int]:
    """{level: bytes} of cpu0's data and unified caches, from sysfs ({} where there is none)."""
    sizes = {}
    for index in sorted(SYSFS_CACHE.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip()
            level = int((index / "level").read_text())
        except (OSError, ValueError):
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        sizes[level] = int(size.rstrip("KMG")) * unit
    return sizes


def test_build_info_keeps_its_keys_and_adds_the_cpu():
    info = fastconv.build_info()
    for key in ("version", "openmp", "num_threads", "simd_level", "best_simd_level"):
        assert key in info
    cpu = info["cpu"]
    assert set(cpu) >= {"vendor", "model_name", "features", "caches"}
    assert set(cpu["caches"]) == {"l1d", "l2", "l3", "source"}
    assert cpu["caches"]["source"] in ("cpuid", "sysfs", "defaults")


@pytest.mark.skipif(not X86 or proc_cpuinfo_flags() is None, reason="needs x86 Linux")
def test_features_match_the_kernel_flags():
    # Linux lists a feature only if the CPU has it and the kernel enabled its registers: the
    # same rule cpu.cpp applies with cpuid and XCR0.
    flags = proc_cpuinfo_flags()
    features = set(_core.cpu_info()["features"])
    for ours, linux in [("avx", "avx"), ("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"),
                        ("avx512f", "avx512f"), ("avx512vl", "avx512vl"),
                        ("avx512dq", "avx512dq"), ("avx512bw", "avx512bw"),
                        ("avx512_bf16", "avx512_bf16"), ("amx_tile", "amx_tile"),
                        ("amx_bf16", "amx_bf16")]:
        assert (ours in features) == (linux in flags), ours


@pytest.mark.skipif(not sysfs_caches(), reason="no sysfs cache information")
def test_cache_sizes_match_sysfs():
    caches = _core.cpu_info()["caches"]
    sysfs = sysfs_caches()
    for level, name in ((1, "l1d"), (2, "l2"), (3, "l3")):
        if level in sysfs:
            assert caches[name]["bytes"] == sysfs[level], name


def test_cache_sizes_are_plausible():
    caches = _core.cpu_info()["caches"]
    l1, l2, l3 = (caches[n]["bytes"] for n in ("l1d", "l2", "l3"))
    assert 4 << 10 <= l1 <= l2 <= 64 << 20 and l3 >= l2
    for name in ("l1d", "l2", "l3"):
        assert caches[name]["line"] in (32, 64, 128, 256)
        assert caches[name]["shared_by"] >= 1


def test_best_simd_level_follows_the_features():
    features = set(_core.cpu_info()["features"])
    best = _core.best_simd_level()
    if {"avx512f", "avx512vl", "avx512dq", "fma"} <= features and X86:
        assert best == "avx512"
    elif {"avx2", "fma"} <= features and X86:
        assert best == "avx2"
    else:
        assert best == "generic"
    # Every level up to the best one can be selected, none above it.
    levels = ["generic", "avx2", "avx512"]
    before = _core.simd_level()
    try:
        for i, level in enumerate(levels):
            assert _core.set_simd_level(level) == (i <= levels.index(best))
    finally:
        assert _core.set_simd_level(before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_peak_runs_on_every_level(dtype):
    before = _core.simd_level()
    try:
        for level in ("generic", "avx2", "avx512"):
            if _core.set_simd_level(level):
                gflops = _core.fma_peak_gflops(0.01, dtype)
                assert 0 < gflops < 1e6
    finally:
        assert _core.set_simd_level(before)


def test_bf16_peak_runs_on_the_hardware_paths_only():
    """The bf16 instruction's peak where the path has one; a clear error on the emulated path
    and the twins. (Its speed is measured in benchmarks/test_bench_peak.py.)"""
    try:
        for path, why in _core.bf16_paths().items():
            if why is not None:
                continue
            assert _core.set_bf16_path(path)
            if path in ("avx512_bf16", "amx"):
                gflops = _core.bf16_peak_gflops(0.02)
                assert 0 < gflops < 1e6
            else:
                with pytest.raises(ValueError, match=f"bf16 path '{path}' has no bf16 instr"):
                    _core.bf16_peak_gflops(0.01)
    finally:
        assert _core.set_bf16_path("auto")
    for seconds in (0, -1, 61, float("nan")):
        with pytest.raises(ValueError, match="seconds"):
            _core.bf16_peak_gflops(seconds)


def test_fma_peak_checks_its_arguments():
    for seconds in (0, -1, 61, float("nan")):
        with pytest.raises(ValueError, match="seconds"):
            _core.fma_peak_gflops(seconds)
    with pytest.raises(TypeError, match="dtype"):
        _core.fma_peak_gflops(0.01, "int32")
