"""Data-parallel throughput on this machine, and the allreduce bandwidth between its ranks.

* Training steps: images/s of 2 ranks x 1 thread (``mpiexec -n 2``, OMP_NUM_THREADS=1, a
  global batch of 128 shared 64 + 64, gradients reduce-scattered and the update shared by
  DistributedDataParallel, as fit runs it) against 1 rank x 2 threads (one process, the
  whole batch): the same machine's cores used two ways. The two configurations run in their
  own processes, alternated ROUNDS times (a slow stretch of the shared machine then hits
  both); each run times every model's steps after a warm-up; the ratio of the medians, the
  ratio of each alternated pair, images per CPU-second (every thread's CPU time: the work's
  cost, less sensitive than images/s to what else the machine runs), the share of the step
  spent waiting for the reductions after backward, where a step's time goes (forward,
  backward, wait, optimiser: medians, ms) in both configurations, and the machine's load
  average at each launch, go to ``extra_info``. On a machine shared with other busy
  processes, run with ``OMP_WAIT_POLICY=passive`` (passed to both configurations): spinning
  OpenMP threads waiting at a barrier for a descheduled one slow the 2-thread process far
  more than the 1-thread ranks. Models: simple_cnn, vgg_small, and resnet9 where
  fastconv.models has it.
* Allreduce: MPI_Allreduce of float32 buffers of 1 KB to 64 MB between 2 ranks: seconds per
  call (median), algorithm bandwidth bytes / s and bus bandwidth 2 (N - 1) / N x bytes / s
  (the ring allreduce's traffic per rank, the figure docs/distributed.md's model uses).

Run (timing on: minutes; with timing off, as in the test suite, one step of each at a tiny
batch and a few small buffers)::

    flock /work/wt/timing.lock python -m pytest benchmarks/test_bench_distributed.py \\
        --benchmark-enable --benchmark-json=distributed.json -s

Skipped, with the reason, without mpi4py or mpiexec (``pip install '.[mpi]'``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import scaling_model
from fastconv.models import MODELS
from fastconv.training.distributed import find_mpiexec, mpi_missing

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "distributed_runs.py"
REPO = HERE.parent
BATCH = 128
RANKS = 2
THREADS_TOTAL = 2
ROUNDS = 9
WARMUP = 2
#: Timed steps per run (about 2-5 s of each model per run on the quiet machine).
STEPS = {"simple_cnn": 60, "vgg_small": 12, "resnet9": 3}
DISTRIBUTED_MODELS = [m for m in ("simple_cnn", "vgg_small", "resnet9") if m in MODELS]
ALLREDUCE_BYTES = [1 << k for k in range(10, 27, 2)]  # 1 KB .. 64 MB


_REASON = mpi_missing()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def _launch(args: list, ranks: int | None, threads: int) -> dict:
    """Run distributed_runs.py (under mpiexec -n ranks, or alone) and parse its JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = ([find_mpiexec(), "-n", str(ranks)] if ranks else []) + \
        [sys.executable, str(PROGRAM), *map(str, args)]
    load = os.getloadavg()[0]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for value in result.values():
        if isinstance(value, dict):  # (how busy the shared machine was: see the report)
            value["load_average"] = load
    return result


def _median_phases(runs: list[dict], name: str) -> dict:
    return {k: statistics.median(r[name]["phases_ms"][k] for r in runs)
            for k in runs[0][name]["phases_ms"]}


def _text(phases: dict) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in phases.items())


def test_data_parallel_step_throughput(benchmark):
    """2 ranks x 1 thread vs 1 rank x 2 threads, models alternated by configuration."""
    if benchmark.disabled:
        batch, warmup, rounds, steps = 4, 0, 1, {}
    else:
        batch, warmup, rounds, steps = BATCH, WARMUP, ROUNDS, STEPS
    runs: dict[str, list[dict]] = {"1x2": [], "2x1": []}

    def compare() -> None:
        for _ in range(rounds):
            for config, ranks, threads, extra in (("1x2", None, THREADS_TOTAL, []),
                                                   ("2x1", RANKS, 1, ["--distributed"])):
                if benchmark.disabled:  # (one launch for every model: cheap)
                    results = _launch(["steps", batch, warmup, 1, *DISTRIBUTED_MODELS, *extra],
                                      ranks, threads)
                else:  # (a launch per model: its two configurations run close in time)
                    results = {}
                    for name in DISTRIBUTED_MODELS:
                        results.update(_launch(["steps", batch, warmup, steps[name], name,
                                                *extra], ranks, threads))
                runs[config].append(results)

    benchmark.group = "data-parallel training step, images/s"
    benchmark.pedantic(compare, rounds=1, iterations=1, warmup_rounds=0)
    summary = {}
    for name in DISTRIBUTED_MODELS:
        one = [r[name]["images_per_s"] for r in runs["1x2"]]
        two = [r[name]["images_per_s"] for r in runs["2x1"]]
        ready = [r[name]["ready"] for r in runs["1x2"]]
        summary[name] = {
            "1x2_images_per_s": one, "2x1_images_per_s": two,
            "ratio_of_medians": statistics.median(two) / statistics.median(one),
            "ratios_by_round": [b / a for a, b in zip(one, two)],
            "1x2_images_per_cpu_s": [r[name]["images_per_cpu_s"] for r in runs["1x2"]],
            "1x2_threads": runs["1x2"][0][name]["threads"],
            "2x1_images_per_cpu_s": [r[name]["images_per_cpu_s"] for r in runs["2x1"]],
            "2x1_comm_share": [r[name]["comm_share"] for r in runs["2x1"]],
            # (where a step's time goes: medians over the runs of each run's median, ms)
            "1x2_phases_ms": _median_phases(runs["1x2"], name),
            "2x1_phases_ms": _median_phases(runs["2x1"], name),
            "load_average": [r[name]["load_average"] for c in runs.values() for r in c],
            "parameters": runs["2x1"][0][name]["parameters"],
            # (for the scaling model: one process's backward, medians over the runs)
            "param_bytes": runs["1x2"][0][name]["param_bytes"],
            "backward_share": statistics.median(r[name]["backward_share"]
                                                for r in runs["1x2"]),
            "ready": [statistics.median(column) for column in zip(*ready)]}
        assert min(one) > 0 and min(two) > 0
        assert runs["2x1"][0][name]["ranks"] == RANKS and runs["2x1"][0][name]["threads"] == 1
    predicted = scaling_model.efficiency_table(
        {name: scaling_model.ModelFacts.from_summary(s) for name, s in summary.items()})
    benchmark.extra_info.update(kind="distributed", batch=batch, ranks=RANKS,
                                models=summary, scaling_model=predicted,
                                missing=[m for m in ("resnet9",) if m not in MODELS])
    if not benchmark.disabled:
        print("\n" + predicted)
        for name, s in summary.items():
            ratios = s["ratios_by_round"]
            print(f"\n{name}: 2 ranks x 1 thread / 1 rank x 2 threads = "
                  f"{s['ratio_of_medians']:.3f} (per round {min(ratios):.2f} - "
                  f"{max(ratios):.2f}; images/s {[round(v) for v in s['2x1_images_per_s']]} vs "
                  f"{[round(v) for v in s['1x2_images_per_s']]}); step phases, ms: "
                  f"1x2 {_text(s['1x2_phases_ms'])}, 2x1 {_text(s['2x1_phases_ms'])}")


def test_allreduce_bandwidth(benchmark):
    if benchmark.disabled:
        repeats, sizes = 2, ALLREDUCE_BYTES[:3]
    else:
        repeats, sizes = 30, ALLREDUCE_BYTES
    out: dict = {}
    benchmark.group = "allreduce between 2 ranks"
    benchmark.pedantic(lambda: out.update(_launch(["allreduce", repeats, *sizes], RANKS, 1)),
                       rounds=1, iterations=1, warmup_rounds=0)
    table = {}
    for nbytes, seconds in out.items():
        n = int(nbytes)
        table[n] = {"seconds": seconds, "algorithm_GBps": n / seconds / 1e9,
                    "bus_GBps": 2 * (RANKS - 1) / RANKS * n / seconds / 1e9}
        assert seconds > 0
    benchmark.extra_info.update(kind="allreduce", ranks=RANKS, sizes=table)
    if not benchmark.disabled:
        for n, row in table.items():
            print(f"\nallreduce {n:>9} B: {row['seconds'] * 1e6:9.1f} us  "
                  f"bus {row['bus_GBps']:.2f} GB/s")
