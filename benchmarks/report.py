"""Turn a pytest-benchmark JSON file into a markdown table of ratios and a bar chart.

    python benchmarks/report.py BENCH.json [--markdown OUT.md] [--plot OUT.png]

Rows: one per benchmark group (a layer and pass, or a model's training step), with each
implementation's median time, fastconv's speed-up over PyTorch and over the reference, and
fastconv's GFLOP/s (conv) or images/s (training). The machine and date come from the JSON.
Memory benchmarks (extra_info kind "memory", rss_mib per implementation) and the interleaved
fastconv/PyTorch training steps and conv passes (kinds "paired", "paired_conv") get tables of
their own, and so do benchmarks
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
        if bench.get("stats") is None or info.get("kind") in ("memory", "paired", "paired_conv"):
            continue
        groups[bench["group"]][info.get("impl", bench["name"])] = {
            "median": bench["stats"]["median"], **info}
    return groups


def fmt_ratio(a, b):
    return f"{b / a:.2f}x" if a and b else "-"


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
            throughput = f"{info['flops'] / fast / 1e9:.0f} GFLOP/s"
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
    "paired", one row per model) or conv passes (kind "paired_conv", one row per layer and
    pass): both medians and the median (quartiles) of the per-round ratios; for conv passes
    also fastconv's GFLOP/s and its share of the FMA peak measured in the run, where
    recorded."""
    conv = kind == "paired_conv"
    lines = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != kind or "ratio_median" not in info:
            continue
        q = info.get("ratio_quartiles") or [info["ratio_median"]] * 3
        what = f"{info['layer']} {info['pass_']}" if conv else info["model"]
        row = (f"| {what} | {info['rounds']} | {info['fastconv_median_s'] * 1e3:.2f} ms | "
               f"{info['torch_median_s'] * 1e3:.2f} ms | {info['ratio_median']:.2f}x | "
               f"{q[0]:.2f}-{q[2]:.2f}x |")
        if conv:
            gflops, share = info.get("fastconv_gflops"), info.get("fastconv_peak_share")
            row += (f" {gflops:.0f} |" if gflops else " - |") + \
                   (f" {100 * share:.0f}% |" if share else " - |")
        lines.append(row)
    head = "conv pass" if conv else "model (batch 64 step)"
    extra = (" GFLOP/s | of FMA peak |", " ---: | ---: |") if conv else ("", "")
    return markdown_table(f"| {head} | rounds | fastconv | PyTorch | per-round ratio, median | "
                          f"quartiles |{extra[0]}",
                          f"| --- | ---: | ---: | ---: | ---: | ---: |{extra[1]}", lines)


def peak_line(data: dict) -> str:
    """The FMA peak benchmark's GFLOP/s (extra_info kind "fma_peak"), or ""."""
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") == "fma_peak" and info.get("gflops_median"):
            return (f"Float32 FMA peak of this machine on the benchmark threads, measured in this "
                    f"run: {info['gflops_median']:.0f} GFLOP/s median, "
                    f"{info['gflops_best']:.0f} best.")
    return ""


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print)")
    parser.add_argument("--plot", type=Path, help="write a bar chart of the speed-ups here")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    md, bars = table(data)
    peak = peak_line(data)
    text = header(data) + ("\n\n" + peak if peak else "") + "\n\n" + md + "\n"
    # The other tables, each after its caption, where the run has rows for it.
    sections = [
        ("Training steps of fastconv and PyTorch interleaved, one of each per round (the "
         "machine's slow stretches then hit both):", paired_table(data)),
        ("Conv passes of fastconv and PyTorch interleaved, one call of each per round:",
         paired_table(data, "paired_conv")),
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
