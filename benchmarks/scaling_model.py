"""The scaling model of docs/distributed.md, from a run of test_bench_distributed.py.

    python benchmarks/scaling_model.py distributed.json [resnet9.json]

For each model in the JSON (its parameters and the images/s of one rank with the machine's
threads, 1 rank x 2 threads), a step of per-rank batch BATCH on N ranks, one rank per
machine like this one, costs

    compute      T_c  = BATCH / (images/s of one rank)
    gradients    G    = 4 bytes x parameters, summed over the ranks every step
    allreduce    T_ar = 2 (N - 1) / N x G / bandwidth            (ring: bandwidth term)
                        + 2 (N - 1) x latency x buckets           (ring: one hop per step)

and the efficiency (images/s of N ranks over N x one rank's) is T_c / (T_c + exposed) with
exposed = T_ar when no allreduce overlaps computation, and max(0, T_ar - 2/3 T_c) when the
buckets reduce during backward (about two thirds of a step). Prints markdown tables.
"""

from __future__ import annotations

import json
import math
import sys

BATCH = 128
RANKS = (8, 64, 256)
#: (name, bytes/s, latency per message) of the networks: line rates; latencies typical of
#: TCP over 10 Gbit/s Ethernet and of RDMA (InfiniBand/RoCE) at 100 Gbit/s.
NETWORKS = (("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 5e-6))
BUCKET_BYTES = 4 << 20


def models_of(path: str) -> dict:
    """{model: (parameters, images/s of one rank with every core)} from a benchmark JSON."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        if b["extra_info"].get("kind") != "distributed":
            continue
        for name, m in b["extra_info"]["models"].items():
            one = sorted(m["1x2_images_per_s"])
            out[name] = (m["parameters"], one[len(one) // 2])
    return out


def allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float,
                      bucket: int = BUCKET_BYTES) -> float:
    buckets = max(1, math.ceil(nbytes / bucket))
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency * buckets


def table(models: dict) -> str:
    lines = ["| model | parameters | gradient MB/step | compute s/step (batch %d) | network "
             "| allreduce s/step at %s ranks | efficiency at %s ranks, no overlap / overlap |"
             % (BATCH, ", ".join(map(str, RANKS)), ", ".join(map(str, RANKS))),
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for name, (params, ips) in models.items():
        g = 4 * params
        tc = BATCH / ips
        for net, bw, lat in NETWORKS:
            tar = [allreduce_seconds(g, n, bw, lat) for n in RANKS]
            eff = [(tc / (tc + t), tc / (tc + max(0.0, t - 2 / 3 * tc))) for t in tar]
            lines.append(f"| {name} | {params:,} | {g / 1e6:.1f} | {tc:.3f} | {net} | "
                         + ", ".join(f"{t * 1e3:.1f} ms" for t in tar) + " | "
                         + ", ".join(f"{a:.0%} / {b:.0%}" for a, b in eff) + " |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    models: dict = {}
    for path in paths:
        models.update(models_of(path))
    print(table(models))


if __name__ == "__main__":
    main(sys.argv[1:])
