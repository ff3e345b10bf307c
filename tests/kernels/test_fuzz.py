"""The fuzzers of fuzzing.py, seeded and bounded (tools/fuzz.py runs them longer, on new
seeds): differential fuzzing of every op against the reference at every SIMD level and conv
algorithm, and extreme geometry in child processes. Their counts go to the summary."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fuzzing

SEED = 15  # the same cases every run: a failure here is a regression, not bad luck

# Cases per fuzzer: a few thousand geometries in ~30 s of one Zen 3 core (each conv case runs
# at every SIMD level x every algorithm; the pooling and elementwise ones are cheap).
# --fuzz-scale multiplies them (the sanitizer build runs a fraction).
COUNTS = {"conv": 800, "pool": 2000, "fused": 300, "new": 1500, "bf16": 150, "extreme": 2000}


@pytest.fixture
def count(request):
    """Cases for fuzzer `name` (the test's parameter, else 'extreme') at the run's scale."""
    name = getattr(request.node, "callspec", None)
    name = name.params["name"] if name else "extreme"
    return max(1, round(COUNTS[name] * request.config.getoption("--fuzz-scale")))


@pytest.mark.parametrize("name", sorted(fuzzing.DIFFERENTIAL))
def test_differential_fuzz(name, count, fuzz_reports):
    report = fuzzing.DIFFERENTIAL[name](SEED, count)
    fuzz_reports.append(report)
    assert not report.failures, "\n".join(report.failures[:20])
    assert report.valid >= count // 2  # the generator still draws mostly valid cases


def test_extreme_geometry_fuzz(count, fuzz_reports):
    report = fuzzing.fuzz_extreme(SEED, count)
    fuzz_reports.append(report)
    assert not report.failures, "\n".join(report.failures[:20])
    assert report.runs == count


def test_a_crashing_case_fails_and_is_named():
    # The harness itself: a child that aborts mid-batch fails its batch, which is re-run
    # case by case; the culprit is named, the others still run.
    cases = [fuzzing.extreme_case(SEED, i) for i in range(3)]
    cases[1] = dict(cases[1], kind="abort")
    report = fuzzing.Report("harness")
    fuzzing.run_extreme_cases(cases, report, batch=3, timeout=120)
    assert report.runs == 2
    assert len(report.failures) == 1 and report.failures[0].startswith(
        f"extreme:{SEED}:1 "), report.failures


@pytest.mark.parametrize("spec", ["conv:15:3", "pool:15:7", "extreme:15:11"])
def test_replay_runs_one_case(spec):
    assert fuzzing.replay(spec) in ("ok", "skip", "ValueError", "MemoryError")


REPRODUCERS = """
import sys
import numpy as np
from fastconv import _core, functional as F
assert _core.set_conv_algorithm(sys.argv[1])
x, w = np.ones((1, 3, 6, 6)), np.ones((3, 3, 3, 3))
for dtype in (np.float32, np.float64):
    x, w = x.astype(dtype), w.astype(dtype)
    y = F.conv2d(x, w, padding=2**30, dilation=2**30)
    assert y.shape == (1, 3, 6, 6) and (y == 3).all(), y
    big = 2**31 - 1
    gy = np.ones(F.conv2d_output_shape(x.shape, w.shape, big, big, big))
    gx, gw, gb = F.conv2d_backward(gy.astype(dtype), x, w, stride=big, padding=big,
                                   dilation=big)
    assert gw.shape == w.shape and gb.shape == (3,)
    y, idx = F.conv2d_max_pool2d(x, w, padding=2**30, dilation=2**30, kernel_size=2)
    assert y.shape == (1, 3, 3, 3) and (y == 3).all(), y
# (the empty-window check in O(1) memory: 2.5 GB for the first, MemoryError for the second)
assert F.pool2d_output_shape((1, 1, 2**25, 1), (7, 1), stride=1, dilation=(3, 1)) == \\
    (1, 1, 2**25 - 18, 1)
assert F.pool2d_output_shape((1, 1, 2**31 - 1, 1), (7, 1), stride=1, dilation=(3, 1)) == \\
    (1, 1, 2**31 - 19, 1)
print("ok")
"""


@pytest.mark.parametrize("algorithm", ["auto", *fuzzing.conv_algorithms()[1:]])
def test_issue_reproducers_give_results_in_a_child_process(algorithm):
    # The crashes the reliability audit found (padded copies of mostly-padding images sized
    # past int64), each algorithm forced: in a child, so that a crash fails this test alone.
    proc = subprocess.run([sys.executable, "-c", REPRODUCERS, algorithm], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_the_pool_fuzzer_draws_every_kind_of_divisor_override():
    # None, positive and negative ints (valid, as PyTorch's), and every hostile value (which
    # fastconv.functional and fastconv.reference must refuse) within the suite's cases
    drawn = [fuzzing.pool_geometry(fuzzing.case_rng(2, SEED, i))["divisor_override"]
             for i in range(COUNTS["pool"])]
    assert None in drawn
    assert any(isinstance(d, int) and d > 0 for d in drawn)
    assert any(isinstance(d, int) and d < 0 for d in drawn)
    hostile = {d[1] for d in drawn if isinstance(d, tuple)}
    assert hostile == set(range(len(fuzzing.HOSTILE_DIVISORS)))
