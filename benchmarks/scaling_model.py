"""The scaling model of docs/distributed.md, from a run of test_bench_distributed.py.

    python benchmarks/scaling_model.py distributed.json

For each model in the JSON, a data-parallel step of BATCH images per rank on N ranks, one rank
per machine like the one measured (its images/s with all its cores, 1 rank x 2 threads: the
CPU time of a step shared by the threads, as on a machine running nothing else):

    compute     T_c = BATCH / images/s;  backward T_b = (backward's measured share) x T_c
    gradients   G = the float32 gradients' bytes, in buckets of B bytes (bucket_plan: the
                parameters in reverse order); bucket k is ready at r_k x T_b, r_k the latest
                measured share of backward at which one of its gradients was complete
    allreduce   of a bucket of g bytes, ring: d(g) = 2 (N - 1) / N x g / bandwidth
                                                    + 2 (N - 1) x latency   (one hop per step)
    overlap     the buckets cross the network one at a time, each once ready:
                end_k = max(r_k T_b, end_(k-1)) + d(g_k); exposed = max(0, end_last - T_b)
    no overlap  one allreduce of G after backward: exposed = d(G)
    efficiency  (N ranks' images/s) / (N x one rank's) = T_c / (T_c + exposed)

Prints markdown tables: the models' facts, the allreduce measured here, the predicted
efficiency at 8, 64 and 256 ranks on 10 and 100 Gbit/s networks, and what the bucket size
does to it.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass

from fastconv.training.distributed import DEFAULT_BUCKET_MB, bucket_plan

BATCH = 128
RANKS = (8, 64, 256)
#: (name, bytes/s, latency per message): line rates; latencies typical of TCP over 10 Gbit/s
#: Ethernet and of RDMA (InfiniBand/RoCE) at 100 Gbit/s.
NETWORKS = (("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 5e-6))
BUCKET_MB = (0.25, 1.0, 4.0, 16.0, 64.0)
MB = 1 << 20


@dataclass
class ModelFacts:
    """What the model needs of one model, measured by one process with all the cores."""

    parameters: int
    param_bytes: list[int]    # each trainable parameter's gradient, parameters() order
    ready: list[float]        # share of backward elapsed when each gradient is complete
    backward_share: float     # backward's share of a step
    images_per_s: float       # 1 rank x all threads, median of the runs

    @classmethod
    def from_summary(cls, s: dict) -> "ModelFacts":
        """From a model's entry of the benchmark's ``extra_info["models"]``. images/s: the
        step's CPU time shared by the threads (what a machine running nothing else takes;
        the wall time of a busy shared machine adds the other processes' turns), where the
        run recorded it, else the wall time; medians over the runs."""
        if "1x2_images_per_cpu_s" in s:
            ips = s.get("1x2_threads", 2) * statistics.median(s["1x2_images_per_cpu_s"])
        else:
            ips = statistics.median(s["1x2_images_per_s"])
        return cls(s["parameters"], s["param_bytes"], s["ready"], s["backward_share"], ips)

    @property
    def compute_seconds(self) -> float:
        return BATCH / self.images_per_s

    @property
    def gradient_bytes(self) -> int:
        return sum(self.param_bytes)

    def buckets(self, bucket_bytes: int) -> list[tuple[int, float]]:
        """(bytes, ready share of backward) of each bucket, in the order they are reduced."""
        return [(sum(self.param_bytes[i] for i in group), max(self.ready[i] for i in group))
                for group in bucket_plan(self.param_bytes, bucket_bytes)]


def ring_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    """A ring allreduce of ``nbytes`` over ``ranks``: 2 (N - 1) steps, each moving 1/N of the
    buffer."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def exposed_seconds(m: ModelFacts, ranks: int, bandwidth: float, latency: float,
                    bucket_bytes: int | None) -> float:
    """Communication time a step adds to compute: buckets reduced during backward, or, with
    ``bucket_bytes`` None, one allreduce of every gradient after backward."""
    if bucket_bytes is None:
        return ring_seconds(m.gradient_bytes, ranks, bandwidth, latency)
    t_b = m.backward_share * m.compute_seconds
    end = 0.0
    for nbytes, ready in m.buckets(bucket_bytes):
        end = max(ready * t_b, end) + ring_seconds(nbytes, ranks, bandwidth, latency)
    return max(0.0, end - t_b)


def efficiency(m: ModelFacts, ranks: int, bandwidth: float, latency: float,
               bucket_bytes: int | None) -> float:
    t_c = m.compute_seconds
    return t_c / (t_c + exposed_seconds(m, ranks, bandwidth, latency, bucket_bytes))


def facts_table(models: dict[str, ModelFacts]) -> str:
    bucket = int(DEFAULT_BUCKET_MB * MB)
    lines = [f"| model | parameters | gradient MB per step | buckets of {DEFAULT_BUCKET_MB:g} MB "
             f"| compute s per step (batch {BATCH}) | backward share | first bucket ready at |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in models.items():
        b = m.buckets(bucket)
        lines.append(f"| {name} | {m.parameters:,} | {m.gradient_bytes / 1e6:.1f} | {len(b)} | "
                     f"{m.compute_seconds:.3f} | {m.backward_share:.0%} | "
                     f"{b[0][1]:.0%} of backward |")
    return "\n".join(lines)


def efficiency_table(models: dict[str, ModelFacts]) -> str:
    bucket = int(DEFAULT_BUCKET_MB * MB)
    ranks = ", ".join(map(str, RANKS))
    lines = [f"| model | network | allreduce ms per step at {ranks} ranks | efficiency at "
             f"{ranks} ranks: one allreduce after backward / {DEFAULT_BUCKET_MB:g} MB buckets "
             f"during backward |", "| --- | --- | ---: | ---: |"]
    for name, m in models.items():
        for net, bw, lat in NETWORKS:
            ar = [ring_seconds(m.gradient_bytes, n, bw, lat) for n in RANKS]
            eff = [(efficiency(m, n, bw, lat, None), efficiency(m, n, bw, lat, bucket))
                   for n in RANKS]
            lines.append(f"| {name} | {net} | " + ", ".join(f"{t * 1e3:.0f}" for t in ar)
                         + " | " + ", ".join(f"{a:.0%} / {b:.0%}" for a, b in eff) + " |")
    return "\n".join(lines)


def bucket_table(models: dict[str, ModelFacts], ranks: int = RANKS[-1]) -> str:
    sizes = " / ".join(f"{b:g}" for b in BUCKET_MB)
    lines = [f"| model | network | efficiency at {ranks} ranks with buckets of {sizes} MB |",
             "| --- | --- | ---: |"]
    for name, m in models.items():
        for net, bw, lat in NETWORKS:
            eff = [efficiency(m, ranks, bw, lat, int(b * MB)) for b in BUCKET_MB]
            lines.append(f"| {name} | {net} | " + " / ".join(f"{e:.0%}" for e in eff) + " |")
    return "\n".join(lines)


def measured_tables(data: dict) -> str:
    """The data-parallel step and allreduce measurements of a benchmark JSON, as markdown."""
    out = []
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("kind") == "distributed":
            out += ["| model | 1 rank x 2 threads, images/s | 2 ranks x 1 thread, images/s | "
                    "ratio of medians | ratio per round | waiting for the reductions |",
                    "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for name, m in info["models"].items():
                one, two = m["1x2_images_per_s"], m["2x1_images_per_s"]
                ratios = m.get("ratios_by_round") or [b / a for a, b in zip(one, two)]
                out.append(f"| {name} | {_spread(one)} | {_spread(two)} | "
                           f"{m['ratio_of_medians']:.2f} | {min(ratios):.2f} - "
                           f"{max(ratios):.2f} | "
                           f"{statistics.median(m['2x1_comm_share']):.1%} of the step |")
            out.append("")
            if all("2x1_phases_ms" in m for m in info["models"].values()):
                out += ["| model | configuration | forward | backward | waiting for the "
                        "reductions | optimiser step | step |",
                        "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
                for name, m in info["models"].items():
                    for config, label in (("1x2", "1 rank x 2 threads, 128 images"),
                                          ("2x1", "2 ranks x 1 thread, 64 images each")):
                        ph = m[f"{config}_phases_ms"]
                        out.append(f"| {name} | {label} | " + " | ".join(
                            f"{ph[k]:.1f} ms" for k in ("forward", "backward", "wait",
                                                         "optimizer"))
                            + f" | {sum(ph.values()):.1f} ms |")
                out.append("")
        elif info.get("kind") == "allreduce":
            out += ["| bytes | time per call | bus bandwidth |", "| ---: | ---: | ---: |"]
            for n, row in info["sizes"].items():
                out.append(f"| {_bytes(int(n))} | {row['seconds'] * 1e6:,.0f} us | "
                           f"{row['bus_GBps']:.2f} GB/s |")
            out.append("")
    return "\n".join(out)


def _spread(values: list[float]) -> str:
    """Median (min - max)."""
    return f"{statistics.median(values):.0f} ({min(values):.0f} - {max(values):.0f})"


def _bytes(n: int) -> str:
    for unit, size in (("MB", MB), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def models_of(data: dict) -> dict[str, ModelFacts]:
    """{model: ModelFacts} from a benchmark JSON."""
    out = {}
    for b in data["benchmarks"]:
        if b["extra_info"].get("kind") == "distributed":
            for name, m in b["extra_info"]["models"].items():
                out[name] = ModelFacts.from_summary(m)
    return out


def main(paths: list[str]) -> None:
    models: dict[str, ModelFacts] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        print(measured_tables(data))
        models.update(models_of(data))
    print(facts_table(models), efficiency_table(models), bucket_table(models), sep="\n\n")


if __name__ == "__main__":
    main(sys.argv[1:])
