"""Benchmark fixtures: implementations side by side, machine facts recorded with each run.

Run (see README): pytest benchmarks --benchmark-enable ...  In the normal test run the
benchmarks execute once each with timing disabled, so they cannot rot.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np
import pytest

import fastconv
from fastconv.cli.train import keep_freed_memory

THREADS = int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))

# The process runs with the malloc settings of `fastconv-train` (freed memory kept for reuse
# rather than returned to the OS and page-faulted in again on the next step), so the step
# benchmarks time what the training command runs. It applies to every implementation in the
# process alike, PyTorch included; recorded in machine_info.
MALLOC_KEEPS_FREED = keep_freed_memory()


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = [x for x in flags if x.startswith(("avx", "fma", "sse4", "amx"))]
                    return " ".join(sorted(keep))
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the numbers depend on: CPU, ISA, threads, library versions."""
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_flags"] = cpu_flags()
    machine_info["cores"] = os.cpu_count()
    machine_info["bench_threads"] = THREADS
    machine_info["malloc_keeps_freed_memory"] = MALLOC_KEEPS_FREED
    machine_info["fastconv"] = fastconv.build_info()
    machine_info["numpy"] = np.__version__
    machine_info["openblas_env"] = {k: os.environ.get(k) for k in
                                    ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")}
    try:
        import torch

        machine_info["torch"] = torch.__version__
    except ImportError:
        machine_info["torch"] = None


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    """Every implementation runs with the same number of threads."""
    fastconv.set_num_threads(THREADS)
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    yield


def cpu_times() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, all CPUs (/proc/stat's first
    line: busy = user + nice + system + irq + softirq; steal = time the hypervisor gave to other
    guests while this one wanted to run), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq) / tick, steal / tick


def process_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.fixture(autouse=True)
def outside_load(request):
    """Records how much of the machine's CPU time went elsewhere while a benchmark ran, as
    shares of wall time x CPUs in extra_info: `others_share`, other processes on this machine;
    `steal_share`, other guests of the hypervisor. A benchmark whose times jump between runs
    with these near zero is slow by itself; with them high, it was crowded out."""
    if "benchmark" not in request.fixturenames:  # e.g. the tests of report.py
        yield
        return
    benchmark = request.getfixturevalue("benchmark")
    t0, m0, p0 = time.perf_counter(), cpu_times(), process_cpu_seconds()
    yield
    t1, m1, p1 = time.perf_counter(), cpu_times(), process_cpu_seconds()
    if m0 is None or m1 is None:
        return
    capacity = (t1 - t0) * (os.cpu_count() or 1)
    others = max(0.0, (m1[0] - m0[0]) - (p1 - p0))
    benchmark.extra_info["others_share"] = round(others / capacity, 4)
    benchmark.extra_info["steal_share"] = round((m1[1] - m0[1]) / capacity, 4)


@pytest.fixture
def torch_or_skip():
    return pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
