"""Turn a pytest-benchmark JSON file into a markdown table of ratios and a bar chart.

    python benchmarks/report.py BENCH.json [--markdown OUT.md] [--plot OUT.png]

Rows: one per benchmark group (a layer and pass, a GEMM, or a model's training step), with each
implementation's median time, fastconv's speed-up over PyTorch and over the reference, and
fastconv's GFLOP/s (conv, GEMM) or images/s (training). GFLOP/s come with their share of the
machine's multiply-add peak measured in the same run (benchmarks of kind "peak", see
test_bench_peak.py; the peak on the benchmark threads, for the dtype), which gets a table of its
own. The machine and date come from the JSON.
Memory benchmarks (extra_info kind "memory", rss_mib per implementation) and the interleaved
fastconv/PyTorch training steps, conv passes and activation passes (kinds "paired",
"paired_conv", "paired_activation") get tables of their own, and so do benchmarks
crowded out by load from outside the process (extra_info others_share / steal_share).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def load_groups(data: dict) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if bench.get("stats") is None or info.get("kind") in ("memory", "paired", "paired_conv",
                                                             "paired_activation", "peak",
                                                             "bf16"):
            continue
        groups[bench["group"]][info.get("impl", bench["name"])] = {
            "median": bench["stats"]["median"], **info}
    return groups


def fmt_ratio(a, b):
    return f"{b / a:.2f}x" if a and b else "-"


def peaks(data: dict) -> dict[tuple[str, int], float]:
    """{(dtype, threads): GFLOP/s} of the FMA-peak benchmarks (extra_info kind "peak")."""
    return {(info["dtype"], info["threads"]): info["gflops"]
            for info in (b.get("extra_info", {}) for b in data["benchmarks"])
            if info.get("kind") == "peak" and "gflops" in info}


def gflops_text(data: dict, flops: float, seconds: float, dtype: str = "float32",
                own_peak: float | None = None) -> str:
    """flops / seconds as GFLOP/s, with its share of the peak measured for dtype on the
    benchmark threads when the run has one (a peak benchmark), else of `own_peak` (the peak a
    benchmark measured for itself, e.g. the interleaved conv passes' peak_gflops fixture)."""
    gflops = flops / seconds / 1e9
    peak = peaks(data).get((dtype, data.get("machine_info", {}).get("bench_threads")), own_peak)
    share = f" ({100 * gflops / peak:.0f}% of peak)" if peak else ""
    return f"{gflops:.0f} GFLOP/s{share}"


def peak_table(data: dict) -> str:
    """The measured multiply-add peak: one row per dtype and thread count."""
    lines = [f"| {dtype} | {threads} | {gflops:.0f} GFLOP/s |"
             for (dtype, threads), gflops in sorted(peaks(data).items())]
    return markdown_table("| FMA peak | threads | measured |", "| --- | ---: | ---: |", lines)


def table(data: dict) -> tuple[str, list[tuple[str, float | None, float | None]]]:
    groups = load_groups(data)
    lines = ["| benchmark | fastconv | reference | PyTorch | vs PyTorch | vs reference | throughput |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    bars = []
    for name, impls in groups.items():
        fast = impls.get("fastconv", {}).get("median")
        ref = impls.get("reference", {}).get("median")
        torch = impls.get("torch", {}).get("median")
        info = impls.get("fastconv", {})
        if info.get("flops") and fast:
            throughput = gflops_text(data, info["flops"], fast, info.get("dtype", "float32"))
        elif info.get("images") and fast:
            throughput = f"{info['images'] / fast:,.0f} img/s"
        else:
            throughput = ""
        ms = lambda t: f"{t * 1e3:.2f} ms" if t else "-"  # noqa: E731
        lines.append(f"| {name} | {ms(fast)} | {ms(ref)} | {ms(torch)} | {fmt_ratio(fast, torch)} | "
                     f"{fmt_ratio(fast, ref)} | {throughput} |")
        bars.append((name, torch / fast if fast and torch else None, ref / fast if fast and ref else None))
    return "\n".join(lines), bars


def markdown_table(head: str, align: str, rows: list[str]) -> str:
    """A markdown table from its header row, its alignment row and its rows; "" without rows."""
    return "\n".join([head, align] + rows) if rows else ""


def memory_table(data: dict) -> str:
    """Peak-RSS results (benchmarks with kind == "memory"): one row per group and implementation,
    peak RSS in MiB before the first step (baseline), after the steps (peak) and the difference."""
    lines = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != "memory" or not info.get("rss_mib"):
            continue
        for impl, r in info["rss_mib"].items():
            lines.append(f"| {bench['group']} | {impl} | {r['baseline']:.0f} | {r['peak']:.0f} | "
                         f"{r['delta']:.0f} |")
    return markdown_table("| memory | implementation | baseline MiB | peak MiB | step delta MiB |",
                          "| --- | --- | ---: | ---: | ---: |", lines)


def paired_table(data: dict, kind: str = "paired") -> str:
    """fastconv and PyTorch interleaved round by round: training steps (extra_info kind
    "paired", one row per model), conv passes (kind "paired_conv", one row per layer and
    pass, with fastconv's GFLOP/s and share of the peak; PyTorch's time is its faster memory
    format's where both ran, named when channels_last) or activation passes (kind
    "paired_activation", one row per op and pass): both medians and the median (quartiles) of
    the per-round ratios."""
    conv = kind == "paired_conv"
    lines = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != kind or "ratio_median" not in info:
            continue
        q = info.get("ratio_quartiles") or [info["ratio_median"]] * 3
        what = info["model"] if kind == "paired" else f"{info['layer']} {info['pass_']}"
        layout = " (channels_last)" if info.get("torch_layout") == "channels_last" else ""
        line = (f"| {what} | {info['rounds']} | {info['fastconv_median_s'] * 1e3:.2f} ms | "
                f"{info['torch_median_s'] * 1e3:.2f} ms{layout} | {info['ratio_median']:.2f}x | "
                f"{q[0]:.2f}-{q[2]:.2f}x |")
        if conv:
            flops = info.get("flops")
            text = gflops_text(data, flops, info["fastconv_median_s"],
                               own_peak=info.get("peak_gflops")) if flops else "-"
            line += f" {text} |"
        lines.append(line)
    head = {"paired": "model (batch 64 step)", "paired_conv": "conv pass (batch 64)",
            "paired_activation": "activation pass (256x64x32x32)"}[kind]
    extra = (" fastconv GFLOP/s |", " ---: |") if conv else ("", "")
    return markdown_table(f"| {head} | rounds | fastconv | PyTorch | per-round ratio, median | "
                          f"quartiles |{extra[0]}",
                          f"| --- | ---: | ---: | ---: | ---: | ---: |{extra[1]}", lines)


def bf16_table(data: dict) -> str:
    """bf16 mode against float32 (and PyTorch's bf16 autocast) interleaved round by round
    (extra_info kind "bf16"): per layer and pass, the bf16 path that ran next to the medians
    and the median per-round speed-up of bf16 over float32."""
    lines = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != "bf16" or "speedup_bf16_over_f32_median" not in info:
            continue
        torch = info.get("torch_bf16_median_s")
        lines.append(f"| {info['layer']} {info['pass_']} (batch {info['batch']}) | "
                     f"{info['bf16_path']} | {info['rounds']} | {info['f32_median_s'] * 1e3:.2f} ms"
                     f" | {info['bf16_median_s'] * 1e3:.2f} ms | "
                     f"{info['speedup_bf16_over_f32_median']:.2f}x | "
                     f"{f'{torch * 1e3:.2f} ms' if torch else '-'} |")
    return markdown_table("| pass | bf16 path | rounds | fastconv f32 | fastconv bf16 | "
                          "bf16 speed-up, median | PyTorch bf16 |",
                          "| --- | --- | ---: | ---: | ---: | ---: | ---: |", lines)


#: extra_info others_share / steal_share from which a benchmark is listed as crowded out.
CROWDED = 0.02


def outside_load_table(data: dict) -> str:
    """Benchmarks during which other processes (others_share) or other guests of the
    hypervisor (steal_share) took at least CROWDED of the machine's CPU time (see the
    outside_load fixture); the memory benchmark is left out (its child processes count as
    others)."""
    lines = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        others, steal = info.get("others_share"), info.get("steal_share")
        if info.get("kind") == "memory" or others is None or steal is None:
            continue
        if max(others, steal) >= CROWDED:
            lines.append(f"| {bench['group']} | {info.get('impl', '')} | {100 * others:.1f}% | "
                         f"{100 * steal:.1f}% |")
    return markdown_table("| benchmark | implementation | other processes | other guests (steal) |",
                          "| --- | --- | ---: | ---: |", lines)


def header(data: dict) -> str:
    m = data.get("machine_info", {})
    fc = m.get("fastconv", {})
    return (f"Measured {data.get('datetime', '?')[:19]} on {m.get('cpu_model', '?')} "
            f"({m.get('cores', '?')} cores, {m.get('bench_threads', '?')} threads, SIMD "
            f"{fc.get('simd_level', '?')}); fastconv {fc.get('version', '?')}, NumPy "
            f"{m.get('numpy', '?')}, PyTorch {m.get('torch') or 'not installed'}. "
            f"Times are medians; ratios > 1 mean fastconv is faster.")


def plot(bars, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart written", file=sys.stderr)
        return False
    names = [b[0] for b in bars]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(names) + 1.5))
    ys = range(len(names))
    h = 0.4
    ax.barh([y - h / 2 for y in ys], [b[1] or 0 for b in bars], h, label="vs PyTorch")
    ax.barh([y + h / 2 for y in ys], [b[2] or 0 for b in bars], h, label="vs reference")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("fastconv speed-up (x, log scale)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def layouts_table(data: dict) -> str:
    """Training steps against PyTorch in several memory formats, interleaved (extra_info kind
    "paired_layouts", e.g. airbench94 at batch 1024): each median, the step's GFLOP/s and
    the median of the per-round ratios against each PyTorch variant."""
    lines = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != "paired_layouts":
            continue
        med, gflops = info["median_s"], info.get("gflop_per_s", {})
        for impl, seconds in med.items():
            ratio = info["ratio_median"].get(impl)
            lines.append(f"| {info['model']} | {info['images']} | {impl} | {info['rounds']} | "
                         f"{seconds:.2f} s | {gflops.get(impl, 0):.0f} | "
                         + (f"{ratio:.2f}x |" if ratio else "- |"))
    return markdown_table("| model | batch | implementation | rounds | step (median) | GFLOP/s | "
                          "fastconv's speed-up (per-round median) |",
                          "| --- | ---: | --- | ---: | ---: | ---: | ---: |", lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print)")
    parser.add_argument("--plot", type=Path, help="write a bar chart of the speed-ups here")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    md, bars = table(data)
    text = header(data) + "\n\n" + md + "\n"
    # The other tables, each after its caption, where the run has rows for it.
    sections = [
        ("The machine's multiply-add peak, measured in this run (an FMA loop on every thread; "
         "GFLOP/s above are shares of the float32 or float64 peak on the benchmark threads):",
         peak_table(data)),
        ("Training steps of fastconv and PyTorch interleaved, one of each per round (the "
         "machine's slow stretches then hit both):", paired_table(data)),
        ("Training steps against PyTorch in each memory format, interleaved, one step of "
         "each per round:", layouts_table(data)),
        ("Conv passes of fastconv and PyTorch interleaved, one call of each per round:",
         paired_table(data, "paired_conv")),
        ("GELU and SiLU passes of fastconv and PyTorch interleaved, one call of each per round:",
         paired_table(data, "paired_activation")),
        ("bf16 mode against float32 in the same run, interleaved call by call (the bf16 path "
         "says which kernels ran: 'emulated' is float32 arithmetic on rounded operands):",
         bf16_table(data)),
        ("Peak RSS of a fresh process per implementation (VmHWM, else ru_maxrss; baseline = "
         "after imports and model set-up, delta = what the training steps add):",
         memory_table(data)),
        (f"Benchmarks during which at least {100 * CROWDED:.0f}% of the machine's CPU time went "
         "to other processes or, through the hypervisor, to other guests:",
         outside_load_table(data)),
    ]
    for caption, section in sections:
        if section:
            text += f"\n{caption}\n\n{section}\n"
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text)
    if args.plot:
        plot(bars, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
