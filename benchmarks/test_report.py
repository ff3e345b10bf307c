"""report.py on a small hand-made pytest-benchmark JSON: every table it writes, and the chart."""

from __future__ import annotations

import json

import pytest

import report


def _bench(group, name, median, **info):
    return {"group": group, "name": name, "stats": {"median": median}, "extra_info": info}


DATA = {
    "datetime": "2026-11-22T14:44:00.000000",
    "machine_info": {"cpu_model": "Test CPU", "cores": 2, "bench_threads": 2, "numpy": "2.4",
                     "torch": "2.13", "fastconv": {"version": "0.1.0", "simd_level": "avx512"}},
    "benchmarks": [
        _bench("conv a forward", "c-f", 0.002, kind="conv", impl="fastconv", flops=4e9,
               others_share=0.0, steal_share=0.0),
        _bench("conv a forward", "c-r", 0.010, kind="conv", impl="reference",
               others_share=0.25, steal_share=0.0),
        _bench("conv a forward", "c-t", 0.003, kind="conv", impl="torch",
               others_share=0.0, steal_share=0.03),
        _bench("train m step", "t-f", 0.010, kind="train", impl="fastconv", images=64),
        _bench("gemm g float64", "g", 0.004, kind="gemm", impl="fastconv", dtype="float64",
               flops=4e9),
        _bench("fma peak float32 1 thread", "p1", 0.5, kind="peak", dtype="float32", threads=1,
               gflops=2100.0),
        _bench("fma peak float32 2 threads", "p2", 0.5, kind="peak", dtype="float32", threads=2,
               gflops=4000.0),
        {"group": "train m step, interleaved", "name": "p", "stats": {"median": 0.03},
         "extra_info": {"kind": "paired", "model": "m", "rounds": 40, "fastconv_median_s": 0.01,
                        "torch_median_s": 0.021, "ratio_median": 2.1,
                        "ratio_quartiles": [2.0, 2.1, 2.2]}},
        {"group": "conv a forward, interleaved", "name": "pc", "stats": {"median": 0.005},
         "extra_info": {"kind": "paired_conv", "layer": "a", "pass_": "forward", "rounds": 200,
                        "fastconv_median_s": 0.002, "torch_median_s": 0.0031, "flops": 4e9,
                        "ratio_median": 1.55, "ratio_quartiles": [1.4, 1.55, 1.7],
                        "others_share": 0.0, "steal_share": 0.0}},
        {"group": "bf16 conv a forward", "name": "bf", "stats": {"median": 0.01},
         "extra_info": {"kind": "bf16", "layer": "a", "pass_": "forward", "batch": 256,
                        "bf16_path": "emulated", "rounds": 12, "f32_median_s": 0.004,
                        "bf16_median_s": 0.005, "speedup_bf16_over_f32_median": 0.8,
                        "torch_bf16_median_s": 0.02}},
        {"group": "train airbench94 step", "name": "pl", "stats": {"median": 5.0},
         "extra_info": {"kind": "paired_layouts", "model": "airbench94", "images": 1024,
                        "rounds": 3, "median_s": {"fastconv": 2.65, "torch_channels_last": 5.76},
                        "gflop_per_s": {"fastconv": 273.0, "torch_channels_last": 126.0},
                        "ratio_median": {"torch_channels_last": 2.15}}},
        {"group": "memory", "name": "mem", "stats": {"median": 1.0},
         "extra_info": {"kind": "memory", "others_share": 0.9, "steal_share": 0.0,
                        "rss_mib": {"fastconv": {"baseline": 50, "peak": 150, "delta": 100}}}},
    ],
}


def test_report_tables(tmp_path):
    src = tmp_path / "b.json"
    src.write_text(json.dumps(DATA))
    out = tmp_path / "b.md"
    assert report.main([str(src), "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "Measured 2026-11-22T14:44:00 on Test CPU (2 cores, 2 threads, SIMD avx512)" in text
    # fastconv 2 ms, reference 10 ms, PyTorch 3 ms: 1.50x and 5.00x, 4e9 / 2 ms = 2000 GFLOP/s,
    # half the float32 peak measured on the 2 benchmark threads.
    assert ("| conv a forward | 2.00 ms | 10.00 ms | 3.00 ms | 1.50x | 5.00x | "
            "2000 GFLOP/s (50% of peak) |") in text
    # No float64 peak in the run: GFLOP/s alone.
    assert "| gemm g float64 | 4.00 ms | - | - | - | - | 1000 GFLOP/s |" in text
    assert "| float32 | 1 | 2100 GFLOP/s |" in text and "| float32 | 2 | 4000 GFLOP/s |" in text
    assert "fma peak" not in text
    assert "| train m step | 10.00 ms | - | - | - | - | 6,400 img/s |" in text
    assert "| m | 40 | 10.00 ms | 21.00 ms | 2.10x | 2.00-2.20x |" in text
    assert "| airbench94 | 1024 | fastconv | 3 | 2.65 s | 273 | - |" in text
    assert "| airbench94 | 1024 | torch_channels_last | 3 | 5.76 s | 126 | 2.15x |" in text
    assert ("| a forward | 200 | 2.00 ms | 3.10 ms | 1.55x | 1.40-1.70x | "
            "2000 GFLOP/s (50% of peak) |") in text
    assert "| memory | fastconv | 50 | 150 | 100 |" in text
    assert ("| a forward (batch 256) | emulated | 12 | 4.00 ms | 5.00 ms | 0.80x | 20.00 ms |"
            in text)
    assert "bf16 conv a forward" not in text  # not in the main table
    # Outside load: the reference (25% others) and PyTorch (3% steal), not the memory run.
    crowded = text[text.index("Benchmarks during which"):]
    assert "| conv a forward | reference | 25.0% | 0.0% |" in crowded
    assert "| conv a forward | torch | 0.0% | 3.0% |" in crowded
    assert "fastconv" not in crowded and "memory" not in crowded


def test_report_conv_share_of_own_peak(tmp_path):
    """An interleaved conv pass in a run without a peak benchmark: its GFLOP/s as a share of
    the peak it measured itself (extra_info peak_gflops); without either, GFLOP/s alone."""
    own = {"kind": "paired_conv", "pass_": "forward", "rounds": 20, "fastconv_median_s": 0.002,
           "torch_median_s": 0.003, "flops": 4e9, "ratio_median": 1.5,
           "ratio_quartiles": [1.4, 1.5, 1.6]}
    data = {"machine_info": DATA["machine_info"], "benchmarks": [
        {"group": "b", "name": "b", "stats": {"median": 0.005},
         "extra_info": {**own, "layer": "b", "peak_gflops": 2500.0}},
        {"group": "c", "name": "c", "stats": {"median": 0.005},
         "extra_info": {**own, "layer": "c"}}]}
    text = report.paired_table(data, "paired_conv")
    row = "forward | 20 | 2.00 ms | 3.00 ms | 1.50x | 1.40-1.60x | 2000 GFLOP/s"
    assert f"| b {row} (80% of peak) |" in text
    assert f"| c {row} |" in text


def test_report_conv_names_pytorchs_layout_when_channels_last_was_faster():
    info = {"kind": "paired_conv", "pass_": "forward", "rounds": 5, "fastconv_median_s": 0.002,
            "torch_median_s": 0.003, "ratio_median": 1.5, "ratio_quartiles": [1.4, 1.5, 1.6]}
    data = {"machine_info": DATA["machine_info"], "benchmarks": [
        {"group": g, "name": g, "stats": {"median": 0.005},
         "extra_info": {**info, "layer": g, "torch_layout": layout,
                        "torch_medians_s": {"nchw": 0.004, "channels_last": 0.003}}}
        for g, layout in (("cl", "channels_last"), ("nchw", "nchw"))]}
    text = report.paired_table(data, "paired_conv")
    assert "| cl forward | 5 | 2.00 ms | 3.00 ms (channels_last) | 1.50x |" in text
    assert "| nchw forward | 5 | 2.00 ms | 3.00 ms | 1.50x |" in text


def test_report_chart(tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "b.json"
    src.write_text(json.dumps(DATA))
    assert report.main([str(src), "--markdown", str(tmp_path / "b.md"),
                        "--plot", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
