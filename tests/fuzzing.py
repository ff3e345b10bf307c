"""The fuzzers: differential (random small geometries, every conv algorithm and SIMD level,
conv2d in bfloat16 on every bf16 path, NaN/inf values, non-contiguous layouts; fast against
the NumPy reference) and extreme geometry (strides, paddings, dilations and sizes up to
2**31 - 1; a result equal to an independent answer, a ValueError or a MemoryError, never a
crash), shared by tests/kernels/test_fuzz.py (seeded and bounded, in the suite) and tools/fuzz.py
(longer runs).

Every case is drawn from np.random.default_rng([FUZZER_ID, seed, index]), so a failure names
its reproducer: `python tools/fuzz.py --replay conv:SEED:INDEX`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from typing import Callable

import numpy as np

from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
LEVELS_KNOWN = ("generic", "avx2", "avx512")


# ---- what this machine and build run -----------------------------------------------------

def simd_levels() -> list[str]:
    """The SIMD levels this CPU and build run (the selected level is left as it was)."""
    before = _core.simd_level()
    levels = [lv for lv in LEVELS_KNOWN if _core.set_simd_level(lv)]
    _core.set_simd_level(before)
    return levels


def conv_algorithms() -> list[str]:
    """'auto' and every algorithm of conv2d's dispatch table."""
    return ["auto", *_core.conv_algorithms()]


def threads_for(index: int) -> int:
    """The OpenMP threads case `index` runs on: one mostly (on a loaded machine every parallel
    region of a tiny kernel costs a barrier: ten times the run time on two threads), three for
    every tenth case (the kernels' splits between threads: a buffer overrun there shows too)."""
    return 3 if index % 10 == 9 else 1


class Settings:
    """Runs code at one SIMD level, forced conv algorithm and thread count; restores them
    afterwards."""

    def __init__(self, level: str, algorithm: str = "auto", threads: int = 1):
        self.level, self.algorithm, self.threads = level, algorithm, threads

    def __enter__(self):
        self.before = (_core.simd_level(), _core.get_num_threads())
        assert _core.set_simd_level(self.level), self.level
        assert _core.set_conv_algorithm(self.algorithm), self.algorithm
        _core.set_num_threads(self.threads)

    def __exit__(self, *exc):
        _core.set_conv_algorithm("auto")
        _core.set_simd_level(self.before[0])
        _core.set_num_threads(self.before[1])


# ---- reports -------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    """What a fuzzer ran: cases drawn, cases run (the rest were invalid geometries, skipped),
    runs (cases x settings x checks), and failures (each with its reproducer)."""

    fuzzer: str
    cases: int = 0
    valid: int = 0
    runs: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)  # extreme: per kind

    def add(self, other: "Report") -> "Report":
        self.cases += other.cases
        self.valid += other.valid
        self.runs += other.runs
        self.failures += other.failures
        for kind, count in other.outcomes.items():
            self.outcomes[kind] = self.outcomes.get(kind, 0) + count
        return self

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (f"{self.fuzzer}{f' ({kinds})' if kinds else ''}: {self.cases} cases "
                f"({self.valid} valid geometries), {self.runs} checks, "
                f"{len(self.failures)} failures")


# ---- comparisons -----------------------------------------------------------------------------

def mismatch(got, want, dtype, what: str, exact: bool = False) -> str | None:
    """None if `got` has `want`'s shape, NaN, +inf and -inf exactly where `want` has them, and
    finite values within TOLERANCE * max(1, max |finite want|) (exact: equal); else why not."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"{what}: shape {got.shape} != {want.shape}"
    if got.size == 0:
        return None
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        g, w = test(got), test(want)
        if not np.array_equal(g, w):
            at = tuple(int(i) for i in np.argwhere(g != w)[0])
            return f"{what}: {name} map differs at {at}: got {got[at]}, want {want[at]}"
    finite = np.isfinite(want)
    if not finite.any():
        return None
    g, w = got[finite].astype(np.float64), want[finite].astype(np.float64)
    if exact:
        if not np.array_equal(g, w):
            return f"{what}: not bit-identical (max diff {np.max(np.abs(g - w)):.3g})"
        return None
    tol = TOLERANCE[np.dtype(dtype)] * max(1.0, float(np.max(np.abs(w))))
    err = float(np.max(np.abs(g - w)))
    return None if err <= tol else f"{what}: max error {err:.3g} > {tol:.3g}"


# ---- random inputs -------------------------------------------------------------------------

def values(rng, shape, dtype, special: bool) -> np.ndarray:
    """N(0, 1) values; special: a few NaN, +inf and -inf at random places too."""
    a = rng.standard_normal(shape).astype(dtype)
    if special and a.size:
        flat = a.reshape(-1)
        for v in (np.nan, np.inf, -np.inf):
            if rng.random() < 0.6:
                flat[rng.integers(0, a.size, size=rng.integers(1, 3))] = v
    return a


def layout(rng, a: np.ndarray) -> np.ndarray:
    """`a`'s values in a random memory layout: C order, Fortran order, a strided slice of a
    larger array, negative strides or a transposed view."""
    kind = rng.integers(0, 5) if a.ndim else 0
    if kind == 1:
        return np.asfortranarray(a)
    if kind == 2:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == 3:
        flipped = np.ascontiguousarray(a[..., ::-1])
        return flipped[..., ::-1]
    if kind == 4 and a.ndim >= 2:
        return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    return a


def case_rng(fuzzer_id: int, seed: int, index: int):
    return np.random.default_rng([fuzzer_id, seed, index])


class quiet:
    """NumPy's floating-point warnings and Python warnings (padding='same' with an even
    kernel) silenced: the fuzzers feed NaN and inf on purpose."""

    def __enter__(self):
        self.err = np.seterr(all="ignore")
        self.warn = warnings.catch_warnings()
        self.warn.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self.warn.__exit__(*exc)
        np.seterr(**self.err)


# ---- differential fuzzers ----------------------------------------------------------------------

def conv_geometry(rng, max_channels: int = 20) -> dict:
    """A random small convolution: 3x3 and stride 1 often (Winograd, the few-channel and wide
    paths), channel counts around the register widths (the direct tiles from 16)."""
    groups = int(rng.choice([1, 1, 1, 2, 3]))
    cg = int(rng.choice([1, 2, 3, 4, 5, 7, 8, 16, 17, 24])) if rng.random() < 0.8 else \
        int(rng.integers(1, max_channels + 1))
    fg = int(rng.choice([1, 2, 5, 6, 8, 9, 16, 17, 24, 32])) if rng.random() < 0.8 else \
        int(rng.integers(1, max_channels + 1))
    square3 = rng.random() < 0.4
    k = (3, 3) if square3 else tuple(int(v) for v in rng.integers(1, 6, size=2))
    stride = (1, 1) if square3 or rng.random() < 0.5 else \
        tuple(int(v) for v in rng.integers(1, 4, size=2))
    dilation = (1, 1) if square3 or rng.random() < 0.6 else \
        tuple(int(v) for v in rng.integers(1, 4, size=2))
    padding = "same" if stride == (1, 1) and rng.random() < 0.1 else \
        tuple(int(v) for v in rng.integers(0, 4, size=2))
    g = dict(N=int(rng.choice([1, 1, 2, 3, 5])), C=groups * cg, F=groups * fg,
             H=int(rng.integers(1, 13)), W=int(rng.integers(1, 13)), k=k, stride=stride,
             padding=padding, dilation=dilation, groups=groups,
             dtype="float32" if rng.random() < 0.8 else "float64", bias=bool(rng.random() < 0.7),
             special=bool(rng.random() < 0.3))
    batch_path = rng.random()
    if batch_path < 0.05:
        # Tiny outputs in batches of images (one group): the direct tiles per pixel, a tile
        # across the images at one pixel, some pixels seeing only padding.
        g.update(N=int(rng.integers(6, 20)), groups=1, C=int(rng.choice([3, 16, 24])),
                 F=int(rng.choice([8, 16, 24])), H=int(rng.integers(1, 5)),
                 W=int(rng.integers(1, 5)), k=(3, int(rng.choice([1, 3]))), stride=(1, 1),
                 dilation=(1, 1), padding=(int(rng.integers(1, 4)), 1))
    elif batch_path < 0.056:  # (rare: the reference takes ~1 s on these)
        # Many channels on small images, more images than one slab (AVX2: ~2048 positions):
        # the weight gradient as GEMMs over slabs of the batch, accumulated slab by slab.
        g.update(N=int(rng.integers(33, 37)), groups=1, C=int(rng.integers(24, 33)),
                 F=int(rng.integers(32, 37)), H=8, W=int(rng.integers(7, 10)), k=(3, 3),
                 stride=(1, 1), dilation=(1, 1), padding=(1, 1))
    return g


def conv_kwargs(g: dict) -> dict:
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"])


def conv_arrays(rng, g: dict):
    """x, weight, bias of geometry g (the specials: in x and the weights separately)."""
    dtype = np.dtype(g["dtype"])
    x = values(rng, (g["N"], g["C"], g["H"], g["W"]), dtype, g["special"] and rng.random() < 0.7)
    w = values(rng, (g["F"], g["C"] // g["groups"], *g["k"]), dtype,
               g["special"] and rng.random() < 0.4)
    b = values(rng, (g["F"],), dtype, False) if g["bias"] else None
    return x, w, b


def settings_grid(algorithms: bool = True) -> list[tuple[str, str]]:
    levels = simd_levels()
    algs = conv_algorithms() if algorithms else ["auto"]
    return [(lv, alg) for lv in levels for alg in algs]


def _checks(report: Report, label: str, checks) -> None:
    """Counts each (what, problem) check, recording the problems under `label`."""
    for problem in checks:
        report.runs += 1
        if problem is not None:
            report.failures.append(f"{label}: {problem}")


def conv_case(rng, dtype: str | None = None):
    """A random conv2d case: (geometry, conv kwargs, x, weight, bias, grad_y), or None where
    the geometry has no valid output. dtype: force the geometry's dtype."""
    g = conv_geometry(rng)
    if dtype is not None:
        g["dtype"] = dtype
    kw = conv_kwargs(g)
    try:
        shape = F.conv2d_output_shape((g["N"], g["C"], g["H"], g["W"]),
                                      (g["F"], g["C"] // g["groups"], *g["k"]), **kw)
    except ValueError:
        return None
    x, w, b = conv_arrays(rng, g)
    gy = values(rng, shape, x.dtype, g["special"] and rng.random() < 0.3)
    return g, kw, x, w, b, gy


def fuzz_conv(seed: int, cases: int, first: int = 0) -> Report:
    """conv2d forward and backward (all three gradients), every (SIMD level, algorithm),
    against the reference computed once per case."""
    report = Report("conv2d")
    grid = settings_grid()
    for index in range(first, first + cases):
        report.cases += 1
        rng = case_rng(1, seed, index)
        case = conv_case(rng)
        if case is None:
            continue
        report.valid += 1
        g, kw, x, w, b, gy = case
        with quiet():
            want = (R.conv2d(x, w, b, **kw), *R.conv2d_backward(gy, x, w, **kw))
        xs, ws, gys = layout(rng, x), layout(rng, w), layout(rng, gy)
        for level, alg in grid:
            label = f"conv:{seed}:{index} {g} level={level} algorithm={alg}"
            with Settings(level, alg, threads_for(index)), quiet():
                got = (F.conv2d(xs, ws, b, **kw), *F.conv2d_backward(gys, xs, ws, **kw))
            _checks(report, label, (mismatch(a, e, x.dtype, what) for a, e, what in
                                    zip(got, want, ("y", "grad_x", "grad_weight", "grad_bias"))))
    return report


def bf16_paths() -> list[str]:
    """The bf16 GEMM paths this CPU runs: the emulated one and the portable twins of the
    AVX512_BF16 and AMX kernels everywhere, the hardware kernels where the CPU has them."""
    return [path for path, reason in _core.bf16_paths().items() if reason is None]


class Bf16Path:
    """Runs code on bf16 GEMM path `path`; the best one ("auto") restored afterwards."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        assert _core.set_bf16_path(self.path), self.path

    def __exit__(self, *exc):
        _core.set_bf16_path("auto")


def fuzz_conv_bf16(seed: int, cases: int, first: int = 0) -> Report:
    """conv2d forward and backward with precision="bf16" (float32 geometries of fuzz_conv), on
    every bf16 path x every algorithm (the emulated path at every SIMD level, the twins and
    hardware kernels at the best), against the reference on the same bf16-rounded operands:
    both sum exact products (bf16 x bf16 fits float32) in float32, so fuzz_conv's float32
    tolerance holds."""
    report = Report("conv2d bf16")
    best = simd_levels()[-1]
    grid = [(path, level, alg) for path in bf16_paths() for level, alg in settings_grid()
            if path == "emulated" or level == best]
    for index in range(first, first + cases):
        report.cases += 1
        rng = case_rng(6, seed, index)
        case = conv_case(rng, dtype="float32")
        if case is None:
            continue
        report.valid += 1
        g, kw, x, w, b, gy = case
        with quiet():
            want = (R.conv2d(x, w, b, **kw, precision="bf16"),
                    *R.conv2d_backward(gy, x, w, **kw, precision="bf16"))
        xs, ws, gys = layout(rng, x), layout(rng, w), layout(rng, gy)
        for path, level, alg in grid:
            label = f"bf16:{seed}:{index} {g} path={path} level={level} algorithm={alg}"
            with Bf16Path(path), Settings(level, alg, threads_for(index)), quiet():
                got = (F.conv2d(xs, ws, b, **kw, precision="bf16"),
                       *F.conv2d_backward(gys, xs, ws, **kw, precision="bf16"))
            _checks(report, label, (mismatch(a, e, x.dtype, what) for a, e, what in
                                    zip(got, want, ("y", "grad_x", "grad_weight", "grad_bias"))))
    return report


def pool_geometry(rng) -> dict:
    k = tuple(int(v) for v in rng.integers(1, 6, size=2))
    stride = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 5, size=2))
    return dict(N=int(rng.integers(1, 4)), C=int(rng.integers(1, 5)),
                H=int(rng.integers(1, 15)), W=int(rng.integers(1, 40)), k=k, stride=stride,
                padding=tuple(int(rng.integers(0, v // 2 + 1)) for v in k),
                dilation=(1, 1) if rng.random() < 0.5 else
                tuple(int(v) for v in rng.integers(1, 4, size=2)),
                ceil_mode=bool(rng.random() < 0.4), relu=bool(rng.random() < 0.3),
                count_include_pad=bool(rng.random() < 0.5),
                dtype="float32" if rng.random() < 0.7 else "float64",
                special=bool(rng.random() < 0.4), ties=bool(rng.random() < 0.3),
                divisor_override=divisor_override(rng))


# avg_pool2d's divisor_override values that must be refused, with the error: 0 and magnitudes
# from 2**31 (ValueError), and what is not an int (TypeError; a bool is not one either)
HOSTILE_DIVISORS = [(0, ValueError), (2**31, ValueError), (-(2**31), ValueError),
                    (2**63, ValueError), (True, TypeError), (False, TypeError),
                    (2.0, TypeError), (np.float64(3.0), TypeError), ("2", TypeError)]


def divisor_override(rng):
    """avg_pool2d's divisor_override: None (half the time), a positive int (small, around the
    window areas, or up to 2**31 - 1), a negative int (PyTorch takes them), or an index into
    HOSTILE_DIVISORS as ("hostile", i) (a JSON-able marker)."""
    r = rng.random()
    if r < 0.5:
        return None
    if r < 0.8:
        return int(rng.integers(1, 30)) if rng.random() < 0.9 else 2**31 - 1
    if r < 0.9:
        return -int(rng.integers(1, 30))
    return ("hostile", int(rng.integers(len(HOSTILE_DIVISORS))))


def _refusal(call, exc, what: str) -> str | None:
    """None if call() raises `exc` naming divisor_override, else what happened instead."""
    try:
        call()
    except exc as e:
        return None if "divisor_override" in str(e) else f"{what}: {exc.__name__} without " \
            f"naming divisor_override: {e}"
    except Exception as e:  # noqa: BLE001 (any other error is the finding)
        return f"{what}: {type(e).__name__} instead of {exc.__name__}: {e}"
    return f"{what}: accepted"


def fuzz_pool(seed: int, cases: int, first: int = 0) -> Report:
    """max_pool2d (values and indices bit for bit, fused ReLU) and avg_pool2d (divisor_override
    drawn too: None, positive and negative ints, and hostile values both must refuse), forward
    and backward, at every SIMD level; the 2x2 / stride-2 kernels drawn often."""
    report = Report("pool2d")
    levels = simd_levels()
    for index in range(first, first + cases):
        rng = case_rng(2, seed, index)
        g = pool_geometry(rng)
        if rng.random() < 0.3:
            g.update(k=(2, 2), stride=None, padding=(0, 0), dilation=(1, 1))
        report.cases += 1
        dtype = np.dtype(g["dtype"])
        x_shape = (g["N"], g["C"], g["H"], g["W"])
        pkw = dict(kernel_size=g["k"], stride=g["stride"], padding=g["padding"],
                   ceil_mode=g["ceil_mode"])
        try:
            shape = F.pool2d_output_shape(x_shape, dilation=g["dilation"], **pkw)
            F.pool2d_output_shape(x_shape, **pkw)  # avg pooling: dilation 1
        except ValueError:
            continue
        report.valid += 1
        x = (rng.integers(-2, 3, x_shape).astype(dtype) if g["ties"]
             else values(rng, x_shape, dtype, g["special"]))
        gy = values(rng, shape, dtype, g["special"] and rng.random() < 0.3)
        avg_shape = F.pool2d_output_shape(x_shape, **pkw)
        gya = values(rng, avg_shape, dtype, False)
        akw = dict(pkw, count_include_pad=g["count_include_pad"])
        divisor = g["divisor_override"]
        if isinstance(divisor, tuple):  # a hostile one: refused by both, then the case goes on
            value, exc = HOSTILE_DIVISORS[divisor[1]]
            label = f"pool:{seed}:{index} divisor_override={value!r}"
            _checks(report, label, [
                _refusal(lambda: M.avg_pool2d(x, divisor_override=value, **akw), exc,
                         f"{M.__name__} avg_pool2d") for M in (F, R)] + [
                _refusal(lambda: M.avg_pool2d_backward(gya, x_shape, divisor_override=value,
                                                       **akw), exc,
                         f"{M.__name__} avg_pool2d_backward") for M in (F, R)])
        else:
            akw["divisor_override"] = divisor
        with quiet():
            y_ref, idx_ref = R.max_pool2d(x, dilation=g["dilation"], return_indices=True,
                                          relu=g["relu"], **pkw)
            gx_ref = R.max_pool2d_backward(gy, idx_ref, x_shape,
                                           relu_output=y_ref if g["relu"] else None)
            a_ref = R.avg_pool2d(x, **akw)
            ga_ref = R.avg_pool2d_backward(gya, x_shape, **akw)
        xs = layout(rng, x)
        for level in levels:
            label = f"pool:{seed}:{index} {g} level={level}"
            with Settings(level, threads=threads_for(index)), quiet():
                y, idx = F.max_pool2d(xs, dilation=g["dilation"], return_indices=True,
                                      relu=g["relu"], **pkw)
                gx = F.max_pool2d_backward(layout(rng, gy), idx, x_shape,
                                           relu_output=y if g["relu"] else None)
                a = F.avg_pool2d(xs, **akw)
                ga = F.avg_pool2d_backward(gya, x_shape, **akw)
            _checks(report, label, [
                mismatch(y, y_ref, dtype, "max y", exact=True),
                mismatch(idx, idx_ref, dtype, "max indices", exact=True),
                mismatch(gx, gx_ref, dtype, "max grad_x"),
                mismatch(a, a_ref, dtype, "avg y"),
                mismatch(ga, ga_ref, dtype, "avg grad_x")])
    return report


def fuzz_fused(seed: int, cases: int, first: int = 0) -> Report:
    """conv2d_max_pool2d and conv2d_backward_through_max_pool, every (SIMD level, algorithm):
    bit for bit the two calls they fuse (conv2d then max_pool2d; max_pool2d_backward then
    conv2d_backward), and within rounding of the reference. Few-channel and Winograd layers
    drawn often (the fused paths)."""
    report = Report("conv2d+max_pool2d")
    grid = settings_grid()
    for index in range(first, first + cases):
        rng = case_rng(3, seed, index)
        g = conv_geometry(rng)
        if rng.random() < 0.5:
            g.update(stride=(1, 1), dilation=(1, 1))
        if g["padding"] == "same" and g["stride"] != (1, 1):
            g["padding"] = (1, 1)
        p = pool_geometry(rng)
        report.cases += 1
        kw = conv_kwargs(g)
        pool_kw = dict(kernel_size=p["k"], pool_stride=p["stride"], pool_padding=p["padding"],
                       pool_dilation=p["dilation"], ceil_mode=p["ceil_mode"], relu=p["relu"])
        try:
            shape = F.conv2d_output_shape((g["N"], g["C"], g["H"], g["W"]),
                                          (g["F"], g["C"] // g["groups"], *g["k"]), **kw)
            pooled = F.pool2d_output_shape(shape, p["k"], p["stride"], p["padding"],
                                           p["dilation"], p["ceil_mode"])
        except ValueError:
            continue
        report.valid += 1
        x, w, b = conv_arrays(rng, g)
        gp = values(rng, pooled, x.dtype, False)
        two_kw = dict(kernel_size=p["k"], stride=p["stride"], padding=p["padding"],
                      dilation=p["dilation"], ceil_mode=p["ceil_mode"], relu=p["relu"])
        with quiet():
            y_ref = R.conv2d_max_pool2d(x, w, b, **kw, **pool_kw)[0]
        for level, alg in grid:
            label = f"fused:{seed}:{index} {g} pool={p} level={level} algorithm={alg}"
            with Settings(level, alg, threads_for(index)), quiet():
                y, idx = F.conv2d_max_pool2d(x, w, b, **kw, **pool_kw)
                conv = F.conv2d(x, w, b, **kw)
                y2, idx2 = F.max_pool2d(conv, return_indices=True, **two_kw)
                relu_y = y if p["relu"] else None
                gw, gb = F.conv2d_backward_through_max_pool(gp, idx, x, w, **kw,
                                                            relu_output=relu_y)
                gy = F.max_pool2d_backward(gp, idx, shape, relu_output=relu_y)
                _, gw2, gb2 = F.conv2d_backward(gy, x, w, **kw, output_mask=(False, True, True))
            _checks(report, label, [
                mismatch(y, y2, x.dtype, "y (fused vs two calls)", exact=True),
                mismatch(idx, idx2, x.dtype, "indices (fused vs two calls)", exact=True),
                mismatch(gw, gw2, x.dtype, "grad_weight (fused vs two calls)", exact=True),
                mismatch(gb, gb2, x.dtype, "grad_bias (fused vs two calls)", exact=True),
                mismatch(y, y_ref, x.dtype, "y (reference)")])
    return report


def _elementwise_case(rng):
    shape = tuple(int(v) for v in rng.integers(0, 7, size=rng.integers(0, 5)))
    dtype = np.dtype("float32" if rng.random() < 0.7 else "float64")
    x = values(rng, shape, dtype, rng.random() < 0.5) * float(rng.choice([0.1, 1, 5, 30]))
    return x, values(rng, shape, dtype, rng.random() < 0.2), dtype


def _underflow_times_inf(bwd, gy, x, dtype) -> np.ndarray:
    """Where an infinite grad_y meets a derivative that one formula rounds to 0 (NaN) and
    another keeps (+-inf), neither wrong: the reference's derivative is 0 in the working dtype
    (GELU-tanh: torch's formula, which cancels to 0 in float32 below x ~ -7 where the kernel's
    sigmoid form keeps 5e-15), or the exact one is within 2**24 of the dtype's smallest
    normal."""
    ones = np.ones(np.shape(x))
    derivative = bwd(R, ones, np.asarray(x, np.float64))
    rounded = bwd(R, ones.astype(dtype), x)
    return np.isinf(gy) & ((rounded == 0) | (np.abs(derivative) < np.finfo(dtype).tiny * 2.0**24))


def fuzz_new_ops(seed: int, cases: int, first: int = 0) -> Report:
    """GELU (exact and tanh) and SiLU, adaptive average pooling, nearest upsampling and the
    transposed convolution (on the conv kernels: every algorithm), forward and backward, at
    every SIMD level, against the reference."""
    report = Report("gelu/silu/adaptive/upsample/conv_transpose")
    levels = simd_levels()
    grid = settings_grid()
    for index in range(first, first + cases):
        rng = case_rng(4, seed, index)
        kind = index % 4
        report.cases += 1
        if kind == 0:
            x, gy, dtype = _elementwise_case(rng)
            approx = str(rng.choice(["none", "tanh"]))
            ops = [("gelu", lambda m, a: m.gelu(a, approximate=approx),
                    lambda m, g, a: m.gelu_backward(g, a, approximate=approx)),
                   ("silu", lambda m, a: m.silu(a), lambda m, g, a: m.silu_backward(g, a))]
            report.valid += 1
            for name, fwd, bwd in ops:
                with quiet():
                    want = (fwd(R, x), bwd(R, gy, x))
                    ambiguous = _underflow_times_inf(bwd, gy, x, dtype)
                for level in levels:
                    with Settings(level, threads=threads_for(index)), quiet():
                        got = (fwd(F, layout(rng, x)), bwd(F, gy, layout(rng, x)))
                    _checks(report, f"new:{seed}:{index} {name} {x.shape} {dtype} level={level}",
                            [mismatch(got[0], want[0], dtype, "y"),
                             mismatch(np.where(ambiguous, 0, got[1]),
                                      np.where(ambiguous, 0, want[1]), dtype, "grad_x")])
            continue
        if kind in (1, 2):
            dtype = np.dtype("float32" if rng.random() < 0.7 else "float64")
            x_shape = (int(rng.integers(0, 3)), int(rng.integers(1, 4)),
                       int(rng.integers(1, 14)), int(rng.integers(1, 14)))
            x = values(rng, x_shape, dtype, rng.random() < 0.3)
            if kind == 1:
                out = tuple(None if rng.random() < 0.15 else int(rng.integers(1, 16))
                            for _ in range(2))
                fwd = lambda m, a: m.adaptive_avg_pool2d(a, out)  # noqa: E731
                bwd = lambda m, g: m.adaptive_avg_pool2d_backward(g, x_shape)  # noqa: E731
                name = f"adaptive_avg_pool2d {x_shape} -> {out}"
            else:
                if rng.random() < 0.5:
                    up = dict(size=tuple(int(v) for v in rng.integers(1, 30, size=2)))
                else:
                    up = dict(scale_factor=float(rng.choice([0.5, 1.0, 1.5, 2.0, 2.7, 3.0])))
                try:
                    F.upsample_nearest2d(np.empty((0, *x_shape[1:]), dtype), **up)
                except ValueError:
                    continue
                fwd = lambda m, a: m.upsample_nearest2d(a, **up)  # noqa: E731
                bwd = lambda m, g: m.upsample_nearest2d_backward(g, x_shape, **up)  # noqa: E731
                name = f"upsample_nearest2d {x_shape} {up}"
            report.valid += 1
            with quiet():
                y_ref = fwd(R, x)
                gy = values(rng, y_ref.shape, dtype, rng.random() < 0.2)
                gx_ref = bwd(R, gy)
            for level in levels:
                with Settings(level, threads=threads_for(index)), quiet():
                    got = (fwd(F, layout(rng, x)), bwd(F, layout(rng, gy)))
                _checks(report, f"new:{seed}:{index} {name} {dtype} level={level}",
                        [mismatch(got[0], y_ref, dtype, "y"),
                         mismatch(got[1], gx_ref, dtype, "grad_x")])
            continue
        # conv_transpose2d: weight (C_in, C_out / groups, kH, kW)
        g = conv_geometry(rng)
        op = tuple(int(rng.integers(0, 3)) for _ in range(2))
        padding = (0, 0) if g["padding"] == "same" else g["padding"]
        tkw = dict(stride=g["stride"], padding=padding, output_padding=op,
                   groups=g["groups"], dilation=g["dilation"])
        dtype = np.dtype(g["dtype"])
        x = values(rng, (g["N"], g["C"], g["H"], g["W"]), dtype, g["special"])
        w = values(rng, (g["C"], g["F"] // g["groups"], *g["k"]), dtype, False)
        b = values(rng, (g["F"],), dtype, False) if g["bias"] else None
        try:
            with quiet():
                y_ref = R.conv_transpose2d(x, w, b, **tkw)
        except ValueError:
            continue
        report.valid += 1
        gy = values(rng, y_ref.shape, dtype, False)
        with quiet():
            want = (y_ref, *R.conv_transpose2d_backward(gy, x, w, **tkw))
        for level, alg in grid:
            with Settings(level, alg, threads_for(index)), quiet():
                got = (F.conv_transpose2d(layout(rng, x), w, b, **tkw),
                       *F.conv_transpose2d_backward(gy, x, w, **tkw))
            _checks(report, f"new:{seed}:{index} conv_transpose2d {g} {tkw} level={level} "
                            f"algorithm={alg}",
                    (mismatch(a, e, dtype, what) for a, e, what in
                     zip(got, want, ("y", "grad_x", "grad_weight", "grad_bias"))))
    return report


DIFFERENTIAL = {"conv": fuzz_conv, "pool": fuzz_pool, "fused": fuzz_fused, "new": fuzz_new_ops,
                "bf16": fuzz_conv_bf16}


# ---- extreme geometry ------------------------------------------------------------------------
# Cases are JSON dicts, run in a child process (run_extreme_child) so that a crash fails the
# case instead of killing the run. Each case's outcome must be "ok" (a result equal to an
# independent answer computed from the taps that reach the image), "ValueError" or
# "MemoryError".

HUGE = [2**31 - 1, 2**31 - 2, 2**30, 2**30 + 1, 2**16 + 3, 65535, 4097, 1000, 7]


def _big(rng, small_max: int = 4) -> int:
    """An int in [1, 2**31 - 1]: small, or huge (half the time)."""
    if rng.random() < 0.5:
        return int(rng.integers(1, small_max + 1))
    return int(rng.choice(HUGE)) if rng.random() < 0.7 else int(rng.integers(1, 2**31))


def extreme_case(seed: int, index: int) -> dict:
    """One extreme-geometry case (JSON-able): conv (forward, backward, fused with pooling;
    any forced algorithm and SIMD level), pooling, im2col, shape helpers, and _core called
    directly with out-of-range integers."""
    rng = case_rng(5, seed, index)
    kind = str(rng.choice(["conv", "conv", "conv", "conv_backward", "conv_pool", "pool",
                           "im2col", "shape", "core"]))
    case = dict(kind=kind, seed=seed, index=index,
                level=str(rng.choice(simd_levels())),
                algorithm=str(rng.choice(conv_algorithms())),
                dtype="float32" if rng.random() < 0.7 else "float64")
    pair = lambda f: [f(), f()]  # noqa: E731
    if kind in ("conv", "conv_backward", "conv_pool", "im2col"):
        groups = int(rng.choice([1, 1, 2]))
        k, dilation = pair(lambda: int(rng.integers(1, 4))), pair(lambda: _big(rng))

        def padding(kk, d):  # often enough for the dilated kernel to fit the padded image
            reach = d * (kk - 1)
            return int(rng.choice([_big(rng) - 1, (reach + 1) // 2, min(reach, 2**31 - 1),
                                   min(reach // 2 + int(rng.integers(0, 3)), 2**31 - 1)]))
        case.update(N=int(rng.integers(1, 3)), C=groups * int(rng.choice([1, 3, 16, 20])),
                    F=groups * int(rng.choice([1, 4, 16])), H=int(rng.integers(1, 8)),
                    W=int(rng.integers(1, 8)), k=k, stride=pair(lambda: _big(rng)),
                    padding=[padding(kk, d) for kk, d in zip(k, dilation)], dilation=dilation,
                    groups=groups, mask=[bool(v) for v in rng.random(3) < 0.7])
        if kind == "conv_pool":
            case.update(pool_k=pair(lambda: int(rng.integers(1, 4))),
                        pool_stride=pair(lambda: _big(rng, 3)), ceil_mode=bool(rng.random() < 0.5))
    elif kind == "pool":
        # a huge window fits a small image only undilated and padded by about half of it
        k = pair(lambda: _big(rng, 5))
        case.update(N=1, C=int(rng.integers(1, 3)), H=int(rng.integers(1, 9)),
                    W=int(rng.integers(1, 9)), k=k, stride=pair(lambda: _big(rng, 3)),
                    padding=[v // 2 - (int(rng.integers(0, min(3, v // 2) + 1))
                                       if rng.random() < 0.3 else 0) for v in k],
                    dilation=[_big(rng, 3) if rng.random() < (0.4 if v < 9 else 0.1) else 1
                              for v in k],
                    ceil_mode=bool(rng.random() < 0.5),
                    count_include_pad=bool(rng.random() < 0.5))
    elif kind == "shape":
        case.update(input=[int(rng.integers(0, 3)), 1, _big(rng, 9) if rng.random() < 0.5
                           else int(rng.choice([2**31 - 1, 2**25, 2**30])), _big(rng, 9)],
                    k=pair(lambda: _big(rng, 9)), stride=pair(lambda: _big(rng, 3)),
                    dilation=pair(lambda: _big(rng, 4)), pad=pair(lambda: _big(rng, 3) - 1),
                    ceil_mode=bool(rng.random() < 0.5))
    else:  # core: _core's conv and pooling entry points with raw integers
        bad = [0, 1, 2, 3, -1, 2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]
        case.update(fn=str(rng.choice(["conv2d_forward", "conv2d_backward_input",
                                       "conv2d_backward_weight", "max_pool2d_forward",
                                       "avg_pool2d_forward", "im2col",
                                       "conv2d_forward_max_pool"])),
                    ints=[int(rng.choice(bad)) if rng.random() < 0.4 else int(rng.integers(0, 4))
                          for _ in range(18)],
                    out=pair(lambda: int(rng.choice([1, 2, 5, 6, 2**31 - 1, 2**40]))))
    case["threads"] = int(rng.choice([1, 3]))
    return case


def _taps(out: int, size: int, k: int, s: int, p: int, d: int):
    """(o, i, at) for every output o < out and kernel tap i < k whose input index
    at = o*s - p + i*d lies in [0, size): Python ints of any magnitude, the taps in range
    found by division (at most `size` per output, whatever k)."""
    taps = []
    for o in range(out):
        start = o * s - p
        first = max(0, -(start // d) if start < 0 else 0)  # ceil(-start / d)
        last = min(k - 1, (size - 1 - start) // d)
        taps += [(o, i, start + i * d) for i in range(first, last + 1)]
    return taps


def conv_by_taps(x, w, b, stride, padding, dilation, groups, out):
    """conv2d and its three gradients' operator, from the taps that reach the image, in
    float64: returns (y, grad functions). `padding` (top, left); out (OH, OW)."""
    N, C, H, W = x.shape
    Fo, cg, kh, kw = w.shape
    fg = Fo // groups
    rows = _taps(out[0], H, kh, stride[0], padding[0], dilation[0])
    cols = _taps(out[1], W, kw, stride[1], padding[1], dilation[1])
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = np.zeros((N, Fo, *out))
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    terms = [(oh, i, ih, ow, j, iw) for oh, i, ih in rows for ow, j, iw in cols]
    for g in range(groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for oh, i, ih, ow, j, iw in terms:
            y[:, fs, oh, ow] += x64[:, cs, ih, iw] @ w64[fs, :, i, j].T

    def backward(gy):
        gy64 = gy.astype(np.float64)
        gx, gw = np.zeros(x.shape), np.zeros(w.shape)
        for g in range(groups):
            cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            for oh, i, ih, ow, j, iw in terms:
                gx[:, cs, ih, iw] += gy64[:, fs, oh, ow] @ w64[fs, :, i, j]
                gw[fs, :, i, j] += gy64[:, fs, oh, ow].T @ x64[:, cs, ih, iw]
        return gx, gw, gy64.sum(axis=(0, 2, 3))

    return y, backward


def pool_by_taps(x, k, stride, padding, dilation, out, count_include_pad):
    """max_pool2d (values, first-maximum indices, NaN propagating) and avg_pool2d's output
    (divisor as PyTorch: clipped to [-p, size + p), or to the input) from the taps."""
    N, C, H, W = x.shape
    y = np.full((N, C, *out), -np.inf)
    idx = np.zeros((N, C, *out), np.int64)
    for oh in range(out[0]):
        rows = [at for o, i, at in _taps(1, H, k[0], stride[0], padding[0] - oh * stride[0],
                                         dilation[0])]
        for ow in range(out[1]):
            cols = [at for o, i, at in _taps(1, W, k[1], stride[1], padding[1] - ow * stride[1],
                                             dilation[1])]
            best = np.full((N, C), -np.inf)
            where = np.full((N, C), (rows[0] if rows else 0) * W + (cols[0] if cols else 0))
            for ih in rows:
                for iw in cols:
                    v = x[:, :, ih, iw].astype(np.float64)
                    take = (v > best) | np.isnan(v)
                    best = np.where(take, v, best)
                    where = np.where(take, ih * W + iw, where)
            y[:, :, oh, ow], idx[:, :, oh, ow] = best, where
    avg = None
    if dilation == [1, 1]:
        avg = np.zeros((N, C, *out))
        for oh in range(out[0]):
            for ow in range(out[1]):
                div = 1
                for axis, o in ((0, oh), (1, ow)):
                    size = (H, W)[axis]
                    start = o * stride[axis] - padding[axis]
                    end = min(start + k[axis], size + padding[axis])
                    div *= (end - start) if count_include_pad else \
                        min(end, size) - max(start, 0)
                rows = range(max(oh * stride[0] - padding[0], 0),
                             min(oh * stride[0] - padding[0] + k[0], H))
                cols = range(max(ow * stride[1] - padding[1], 0),
                             min(ow * stride[1] - padding[1] + k[1], W))
                total = sum(x[:, :, ih, iw].astype(np.float64) for ih in rows for iw in cols)
                avg[:, :, oh, ow] = total / div
    return y, idx, avg


MAX_OUTPUT = 1 << 16  # outputs checked against the taps (larger ones: skipped as too costly)


def _run_extreme(case: dict) -> str:
    """Runs one extreme case in this process: "ok", "skip" (a valid but costly output),
    or a failure description. ValueError and MemoryError count as "ok" outcomes (the kind is
    returned: "ValueError" / "MemoryError")."""
    try:
        with Settings(case["level"], case["algorithm"], case["threads"]), quiet():
            return _run_extreme_unguarded(case)
    except (ValueError, MemoryError) as exc:
        return type(exc).__name__
    except TypeError as exc:
        if case["kind"] == "core":  # an integer past int64: pybind11 refuses the call
            return "TypeError"
        return f"TypeError: {exc}"


def _run_extreme_unguarded(case: dict) -> str:
    kind, dtype = case["kind"], np.dtype(case["dtype"])
    if kind == "abort":  # the harness's own test: a crash must fail this case alone
        os.abort()
    rng = np.random.default_rng([6, case["seed"], case["index"]])
    if kind == "shape":  # arithmetic only: quick, and no memory whatever the sizes
        for shape_of in (
                lambda: F.pool2d_output_shape(case["input"], case["k"], case["stride"],
                                              [k // 2 for k in case["k"]], case["dilation"],
                                              case["ceil_mode"]),
                lambda: F.pool2d_output_shape(case["input"], case["k"], case["stride"],
                                              [k // 2 for k in case["k"]], 1, case["ceil_mode"]),
                lambda: F.conv2d_output_shape(case["input"], (1, 1, *case["k"]), case["stride"],
                                              case["pad"], case["dilation"])):
            try:
                shape_of()
            except ValueError:
                pass
        return "ok"
    if kind == "core":
        return _run_core(case, dtype)
    if kind == "pool":
        x = values(rng, (case["N"], case["C"], case["H"], case["W"]), dtype, rng.random() < 0.3)
        shape = F.pool2d_output_shape(x.shape, case["k"], case["stride"], case["padding"],
                                      case["dilation"], case["ceil_mode"])
        if np.prod(shape) > MAX_OUTPUT:
            return "skip"
        pkw = dict(kernel_size=case["k"], stride=case["stride"], padding=case["padding"],
                   ceil_mode=case["ceil_mode"])
        y, idx = F.max_pool2d(x, dilation=case["dilation"], return_indices=True, **pkw)
        y_ref, idx_ref, _ = pool_by_taps(x, case["k"], case["stride"], case["padding"],
                                         case["dilation"], shape[2:], False)
        problems = [mismatch(y, y_ref.astype(dtype), dtype, "max y", exact=True),
                    mismatch(idx, idx_ref, dtype, "max indices", exact=True),
                    mismatch(F.max_pool2d_backward(np.ones_like(y), idx, x.shape),
                             _scatter(np.ones(y.shape), idx, x.shape), dtype, "max grad_x")]
        try:
            a_shape = F.pool2d_output_shape(x.shape, **pkw)
        except ValueError:
            a_shape = None
        if a_shape is not None and np.prod(a_shape) <= MAX_OUTPUT:
            a = F.avg_pool2d(x, count_include_pad=case["count_include_pad"], **pkw)
            _, _, a_ref = pool_by_taps(x, case["k"], case["stride"], case["padding"], [1, 1],
                                       a_shape[2:], case["count_include_pad"])
            problems.append(mismatch(a, a_ref, dtype, "avg y"))
            F.avg_pool2d_backward(np.ones_like(a), x.shape,
                                  count_include_pad=case["count_include_pad"], **pkw)
        return _outcome(problems)
    x = values(rng, (case["N"], case["C"], case["H"], case["W"]), dtype, False)
    w = values(rng, (case["F"], case["C"] // case["groups"], *case["k"]), dtype, False)
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              groups=case["groups"])
    if kind == "im2col":
        out = F.conv2d_output_shape(x.shape, (1, case["C"], *case["k"]), case["stride"],
                                    case["padding"], case["dilation"])[2:]
        if np.prod(out) * case["C"] * case["k"][0] * case["k"][1] > MAX_OUTPUT:
            return "skip"
        cols = F.im2col(x, case["k"], case["dilation"], case["padding"], case["stride"])
        eye = np.eye(case["C"] * case["k"][0] * case["k"][1]).reshape(-1, case["C"], *case["k"])
        ref, _ = conv_by_taps(x, eye, None, case["stride"], case["padding"], case["dilation"], 1,
                              out)
        back = F.col2im(cols, (case["H"], case["W"]), case["k"], case["dilation"],
                        case["padding"], case["stride"])
        _, grads = conv_by_taps(x, eye, None, case["stride"], case["padding"], case["dilation"],
                                1, out)
        return _outcome([mismatch(cols, ref.reshape(cols.shape), dtype, "im2col"),
                         mismatch(back, grads(ref)[0], dtype, "col2im(im2col)")])
    shape = F.conv2d_output_shape(x.shape, w.shape, **kw)
    if np.prod(shape) > MAX_OUTPUT:
        return "skip"
    b = values(rng, (case["F"],), dtype, False)
    y_ref, grads = conv_by_taps(x, w, b, case["stride"], case["padding"], case["dilation"],
                                case["groups"], shape[2:])
    if kind == "conv":
        return _outcome([mismatch(F.conv2d(x, w, b, **kw), y_ref, dtype, "y")])
    if kind == "conv_backward":
        gy = values(rng, shape, dtype, False)
        got = F.conv2d_backward(gy, x, w, **kw, output_mask=case["mask"])
        want = grads(gy)
        return _outcome([mismatch(a, e, dtype, name) for a, e, name in
                         zip(got, want, ("grad_x", "grad_weight", "grad_bias")) if a is not None])
    # conv_pool
    pooled = F.pool2d_output_shape(shape, case["pool_k"], case["pool_stride"], 0, 1,
                                   case["ceil_mode"])
    y, idx = F.conv2d_max_pool2d(x, w, b, **kw, kernel_size=case["pool_k"],
                                 pool_stride=case["pool_stride"], ceil_mode=case["ceil_mode"])
    y2, idx2 = F.max_pool2d(F.conv2d(x, w, b, **kw), case["pool_k"], case["pool_stride"],
                            ceil_mode=case["ceil_mode"], return_indices=True)
    gp = values(rng, pooled, dtype, False)
    gw, gb = F.conv2d_backward_through_max_pool(gp, idx, x, w, **kw)
    _, gw2, gb2 = F.conv2d_backward(F.max_pool2d_backward(gp, idx, shape), x, w, **kw,
                                    output_mask=(False, True, True))
    return _outcome([mismatch(F.conv2d(x, w, b, **kw), y_ref, dtype, "y"),
                     mismatch(y, y2, dtype, "pooled y (fused vs two calls)", exact=True),
                     mismatch(idx, idx2, dtype, "indices (fused vs two calls)", exact=True),
                     mismatch(gw, gw2, dtype, "grad_weight (fused vs two calls)", exact=True),
                     mismatch(gb, gb2, dtype, "grad_bias (fused vs two calls)", exact=True)])


def _scatter(gy, idx, shape):
    gx = np.zeros(shape)
    N, C = shape[:2]
    for n in range(N):
        for c in range(C):
            np.add.at(gx[n, c].reshape(-1), idx[n, c].reshape(-1), gy[n, c].reshape(-1))
    return gx


def _outcome(problems) -> str:
    problems = [p for p in problems if p is not None]
    return "ok" if not problems else "; ".join(problems)


def _run_core(case: dict, dtype) -> str:
    """_core's entry points with raw integers (window arguments, output sizes) and small
    arrays: a result (not checked: the arguments need not describe a convolution) or an
    exception, never a crash."""
    v = case["ints"]
    fn = case["fn"]
    oh, ow = case["out"]
    a = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    k = (max(1, min(v[0], 3)), max(1, min(v[1], 3)))
    x, w = a(1, 2, 6, 6), a(3, 2, *k)
    if fn == "conv2d_forward":
        _core.conv2d_forward(x, w, None, a(1, 3, min(oh, 64), min(ow, 64)), *v[2:9])
    elif fn == "conv2d_backward_input":
        _core.conv2d_backward_input(a(1, 3, min(oh, 64), min(ow, 64)), w, x, *v[2:9])
    elif fn == "conv2d_backward_weight":
        _core.conv2d_backward_weight(a(1, 3, min(oh, 64), min(ow, 64)), x, w, *v[2:9])
    elif fn == "conv2d_forward_max_pool":
        y = a(1, 3, 2, 2)
        _core.conv2d_forward_max_pool(x, w, None, y, np.zeros(y.shape, np.int64), oh, ow,
                                      *v[2:9], *v[9:17], False)
    elif fn == "im2col":
        _core.im2col(x, a(1, 2 * v[0] * v[1] if 0 < v[0] * v[1] < 64 else 2, 4), *v[0:8], oh,
                     ow)
    else:
        y = a(1, 2, min(oh, 64), min(ow, 64))
        if fn == "max_pool2d_forward":
            _core.max_pool2d_forward(x, y, np.zeros(y.shape, np.int64), *v[0:8], False)
        else:
            _core.avg_pool2d_forward(x, y, *v[0:6], bool(v[6] % 2), v[7])  # v[7]: divisor
    return "ok"


def run_extreme_child() -> None:
    """The child's side: reads a JSON list of cases from stdin, prints one JSON line
    [index, outcome] per case as it finishes (flushed: a crash leaves the finished ones)."""
    cases = json.load(sys.stdin)
    for case in cases:
        print(json.dumps([case["index"], _run_extreme(case)]), flush=True)


_CHILD = ("import sys; sys.path.insert(0, {tests!r}); import fuzzing; "
          "fuzzing.run_extreme_child()")


def _spawn(cases: list[dict], timeout: float):
    """Runs cases in a child Python: (returncode, {index: outcome}, stderr tail)."""
    code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases),
                              capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    done = {}
    for line in out.splitlines():
        try:
            index, outcome = json.loads(line)
            done[index] = outcome
        except ValueError:
            pass
    return rc, done, err[-3000:]


OK_OUTCOMES = ("ok", "skip", "ValueError", "MemoryError", "TypeError")


def run_extreme_cases(cases: list[dict], report: Report, batch: int = 150,
                      timeout: float = 300.0) -> dict[str, int]:
    """Runs extreme cases in child processes of `batch` cases each, into `report`; a batch
    that crashes (or times out) is re-run case by case to name the culprits. Returns the
    count of each outcome."""
    outcomes: dict[str, int] = {}
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        rc, done, err = _spawn(chunk, timeout)
        if rc != 0 or len(done) != len(chunk):
            done = {}
            for case in chunk:
                rc1, one, err1 = _spawn([case], timeout)
                if rc1 != 0 or case["index"] not in one:
                    outcomes["crash"] = outcomes.get("crash", 0) + 1
                    report.failures.append(
                        f"extreme:{case['seed']}:{case['index']} {json.dumps(case)}: child "
                        f"exited with {rc1}; stderr: {err1.strip()[-1500:]}")
                else:
                    done.update(one)
        for case in chunk:
            outcome = done.get(case["index"])
            if outcome is None:
                continue
            report.runs += 1
            kind = outcome if outcome in OK_OUTCOMES else "wrong"
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if outcome not in OK_OUTCOMES:
                report.failures.append(f"extreme:{case['seed']}:{case['index']} "
                                       f"{json.dumps(case)}: {outcome}")
    return outcomes


def fuzz_extreme(seed: int, cases: int, first: int = 0, batch: int = 150) -> Report:
    """Extreme-geometry cases [first, first + cases) of `seed`, in child processes."""
    report = Report("extreme geometry")
    outcomes = run_extreme_cases([extreme_case(seed, i) for i in range(first, first + cases)],
                                 report, batch)
    report.cases = cases
    report.valid = cases - outcomes.get("ValueError", 0) - outcomes.get("TypeError", 0)
    report.outcomes = outcomes
    return report


FUZZERS: dict[str, Callable[[int, int], Report]] = {**DIFFERENTIAL, "extreme": fuzz_extreme}


def replay(spec: str) -> str:
    """Re-runs one case, `fuzzer:seed:index` (as the failures name them): its problems, or
    'ok'."""
    name, seed, index = spec.split(":")
    seed, index = int(seed), int(index)
    if name == "extreme":
        report = fuzz_extreme(seed, 1, first=index)
        return "\n".join(report.failures) or next(iter(report.outcomes))
    report = DIFFERENTIAL[name](seed, 1, first=index)
    return "\n".join(report.failures) or "ok"
