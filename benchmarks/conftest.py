"""Benchmark fixtures: implementations side by side, machine facts recorded with each run.

Run (see README): pytest benchmarks --benchmark-enable ...  In the normal test run the
benchmarks execute once each with timing disabled, so they cannot rot.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest

import fastconv
from fastconv.train import keep_freed_memory

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
                    keep = [x for x in flags if x.startswith(("avx", "fma", "sse4"))]
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


@pytest.fixture
def torch_or_skip():
    return pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
