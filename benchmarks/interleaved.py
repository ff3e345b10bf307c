"""fastconv and PyTorch timed in alternation, round by round, so both meet the same stretches of
a shared machine whose speed moves by tens of percent within seconds (the other benchmarks each
time their rounds back to back, and a slow stretch can cover one implementation's whole run)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def run_interleaved(benchmark, calls: dict[str, Callable[[], object]], rounds: int,
                    check: Callable[[str, object], None] | None = None) -> dict[str, list[float]]:
    """Times one call of each of `calls` per round, for `rounds` rounds, under pytest-benchmark
    (pedantic, one iteration per round); the order of the calls alternates from round to round.
    check(name, result), if given, sees every result. Returns each call's times in seconds."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for call in calls.values():  # warm-up
        call()

    def one_round() -> None:
        order = names if len(times[names[0]]) % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            result = calls[name]()
            times[name].append(time.perf_counter() - t0)
            if check is not None:
                check(name, result)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    return times


def paired_stats(times: dict[str, list[float]]) -> dict:
    """Both medians and the median and quartiles of the per-round ratios torch / fastconv."""
    ratios = [t / f for f, t in zip(times["fastconv"], times["torch"])]
    return dict(rounds=len(ratios),
                fastconv_median_s=statistics.median(times["fastconv"]),
                torch_median_s=statistics.median(times["torch"]),
                ratio_median=statistics.median(ratios),
                ratio_quartiles=statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3)


def rounds_for(calls: dict[str, Callable[[], object]], seconds: float, lo: int, hi: int) -> int:
    """Rounds that take about `seconds` in all, from one timed call of each after one untimed
    (first calls set things up), within [lo, hi]."""
    for call in calls.values():
        call()
    t0 = time.perf_counter()
    for call in calls.values():
        call()
    per_round = max(time.perf_counter() - t0, 1e-6)
    return max(lo, min(hi, int(seconds / per_round)))
