#!/usr/bin/env python3
"""Runs the fuzzers of tests/fuzzing.py for longer than the test suite does (before a release,
after a kernel change): new seeds, more cases, every SIMD level and conv algorithm.

    python tools/fuzz.py                          # every fuzzer, 10x the suite's cases, seed 1000
    python tools/fuzz.py --scale 50 --seed 7      # more cases, another seed
    python tools/fuzz.py --fuzzers conv fused --minutes 30
    python tools/fuzz.py --replay conv:7:1234     # one case again (as a failure names it)

Each fuzzer runs in chunks of cases until its count (or the time) is used up; the counts, and
every failure with its reproducer, are printed. Exit status 1 on any failure. Under the
ASan + UBSan build: `tools/sanitize.sh --fuzz [these arguments]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import fuzzing  # noqa: E402
from test_fuzz import COUNTS  # noqa: E402  (the suite's counts: --scale multiplies them)

CHUNK = 50  # cases per call, between which the time limit is checked


def run(name: str, seed: int, cases: int, deadline: float) -> fuzzing.Report:
    """Fuzzer `name`, cases [0, cases) of `seed` (fewer if the deadline passes)."""
    fuzz = fuzzing.FUZZERS[name]
    report = fuzzing.Report(name)
    for first in range(0, cases, CHUNK):
        if time.monotonic() > deadline:
            break
        part = fuzz(seed, min(CHUNK, cases - first), first=first)
        report.fuzzer = part.fuzzer
        report.add(part)
        for failure in part.failures:
            print("FAIL", failure, flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1000,
                        help="cases are drawn from (fuzzer, seed, index); the suite uses 15")
    parser.add_argument("--scale", type=float, default=10.0,
                        help="cases per fuzzer: this times the suite's (tests/kernels/test_fuzz.py)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop each fuzzer after its share of this many minutes")
    parser.add_argument("--fuzzers", nargs="+", choices=sorted(fuzzing.FUZZERS),
                        default=sorted(fuzzing.FUZZERS))
    parser.add_argument("--replay", metavar="FUZZER:SEED:INDEX",
                        help="re-run one case and print its problems (or 'ok')")
    args = parser.parse_args(argv)
    if args.replay:
        outcome = fuzzing.replay(args.replay)
        print(outcome)
        return 0 if outcome in fuzzing.OK_OUTCOMES else 1
    print(f"SIMD levels {fuzzing.simd_levels()}, conv algorithms {fuzzing.conv_algorithms()}, "
          f"seed {args.seed}", flush=True)
    share = None if args.minutes is None else 60 * args.minutes / len(args.fuzzers)
    failed = 0
    for name in args.fuzzers:
        start = time.monotonic()
        deadline = float("inf") if share is None else start + share
        report = run(name, args.seed, max(1, round(COUNTS[name] * args.scale)), deadline)
        print(f"{report.summary()} in {time.monotonic() - start:.0f} s", flush=True)
        failed += len(report.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
