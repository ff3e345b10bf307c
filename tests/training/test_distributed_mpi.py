"""Data-parallel training on 2 MPI ranks of this machine, started with mpiexec: the same run as
one process with the whole batch, failures (a rank killed or raising) ending the job without
a hang and leaving a checkpoint that resumes, and set-ups refused on every rank.

Skipped, with the reason, without mpi4py or an mpiexec (``pip install '.[mpi]'`` installs
both). Every run has a time limit, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fake_cifar import fake_batches, write_folder
from fastconv import checkpoint as C
from fastconv.cli import train as T
from fastconv.training.distributed import find_mpiexec, mpi_missing

HERE = Path(__file__).resolve().parents[1]  # tests/: mpi_programs.py, thread_comm.py
PROGRAMS = HERE / "mpi_programs.py"
REPO = Path(fastconv.__file__).resolve().parents[1]
#: Limit of one mpiexec run (a few seconds each here): a hang fails, never stalls the suite.
RUN_LIMIT = 120
#: The other ranks must be gone this long after a rank failed (the issue's bound).
EXIT_LIMIT = 30


_REASON = mpi_missing()  # (the test process itself never initialises MPI)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("FASTCONV_DATA", None)
    env.pop("OMP_NUM_THREADS", None)  # (the ranks' default: cores / ranks)
    return env


def _run(args: list, ranks: int | None = 2, cwd=None) -> subprocess.CompletedProcess:
    """``args`` under ``mpiexec -n ranks`` (alone when ranks is None), with the time limit."""
    cmd = ([find_mpiexec(), "-n", str(ranks)] if ranks else []) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_LIMIT, env=_env(),
                          cwd=cwd)


def _train(*options) -> list:
    return [sys.executable, "-m", "fastconv.cli.train", *options]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_folder(root, fake_batches(learnable=True))
    return root


def _options(data_dir, out, *extra) -> list:
    return ["--data-dir", data_dir, "--out", out, "--no-download", "--quiet", *extra]


def _difference(a: dict, b: dict) -> float:
    """The largest difference between two state dicts, relative to the largest value in
    ``a`` (not each tensor's own: a tensor near zero, such as a BatchNorm bias whose gradient
    sums nearly cancelling values, carries the rounding of the larger ones)."""
    scale = max(float(np.abs(v).max()) for v in a.values())
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) / scale


# --------------------------------------------------------------------------------------------
# 2 ranks x batch B == 1 process x batch 2B
# --------------------------------------------------------------------------------------------

# Tolerances (see _difference), after 8 steps (2 epochs of 4) and 2 validations. The ranks run
# the same operations on their halves of each batch; what differs is the order of the sums
# over the batch (each rank sums its rows, then MPI sums the ranks': weight gradients,
# BatchNorm statistics, the loss), so results differ in the last bits, which training carries
# forward. float64: measured ~1e-16 here; float32: ~1e-7, and up to ~1e-5 where a BatchNorm's
# bias gradient sums values that nearly cancel (a BatchNorm's input gradient sums to zero per
# channel, and the BatchNorm before it receives that through a convolution), whose float32
# sum moves by ~1% of itself when taken in another order (one process's float32 run is as far
# from its float64 run). Longer float32 runs drift further.
FIT_TOL = {"float64": 1e-11, "float32": 1e-4}


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The folders of mpi_programs.py's fit runs: one process, and 2 ranks."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    r = _run([sys.executable, PROGRAMS, "fit", one], ranks=None)
    assert r.returncode == 0, r.stderr
    r = _run([sys.executable, PROGRAMS, "fit", two, "--distributed"])
    assert r.returncode == 0, r.stderr
    return one, two


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["bn", "plain"])
def test_two_ranks_train_as_one_process_with_the_whole_batch(fit_runs, kind, dtype):
    """BatchNorm over both ranks (--sync-bn's mode), or no BatchNorm but dropout (each rank
    draws the whole batch's mask and keeps its rows)."""
    a, b = (dict(np.load(folder / f"{kind}-{dtype}.npz")) for folder in fit_runs)
    assert set(a) == set(b)
    assert _difference(a, b) < FIT_TOL[dtype]
    if dtype == "float64":  # (and they are not equal by accident: training moved them)
        assert not np.array_equal(a["loss"][0], a["loss"][1])


def test_command_with_sync_bn_trains_as_one_process(data_dir, tmp_path):
    """fastconv-train --distributed --sync-bn on 2 ranks trains vgg_small (BatchNorm, max
    pooling) as one process with the same global batch, and without --sync-bn (each rank's
    statistics) it does not: 2 steps differ by 3e-4 here, against 4e-2 for each rank's
    statistics. Why not closer in float32: BatchNorm's statistics over two ranks round
    differently from one process's (~1e-6 of the outputs), and where the two largest values
    of a max-pooling window lie within that of each other, the window's arg-max and so its
    gradient moves to another pixel (as between any two float32 runs whose sums are taken in
    another order). The float64 twin in the test above shows the computation is the same."""
    common = ["--model", "vgg_small", "--epochs", 1, "--limit-train", 40, "--limit-test", 40,
              "--batch-size", 20, "--lr", 0.01, "--schedule", "constant", "--no-augment"]
    r = _run(_train(*_options(data_dir, tmp_path / "one", *common)), ranks=None)
    assert r.returncode == 0, r.stderr
    r = _run(_train(*_options(data_dir, tmp_path / "two", *common, "--distributed",
                              "--sync-bn")))
    assert r.returncode == 0, r.stderr
    r = _run(_train(*_options(data_dir, tmp_path / "local", *common, "--distributed")))
    assert r.returncode == 0, r.stderr
    a = C.load_weights(tmp_path / "one" / T.WEIGHTS_NAME)
    b = C.load_weights(tmp_path / "two" / T.WEIGHTS_NAME)
    assert _difference(a, b) < 2e-3
    assert _difference(a, C.load_weights(tmp_path / "local" / T.WEIGHTS_NAME)) > \
        10 * _difference(a, b)
    one = (tmp_path / "one" / T.METRICS_NAME).read_text().splitlines()
    two = (tmp_path / "two" / T.METRICS_NAME).read_text().splitlines()
    assert one[0] == two[0] and len(two) == 2
    assert one[1].split(",")[:2] == two[1].split(",")[:2] == ["1", "2"]
    for name in ("config.json", "checkpoint.npz", "confusion.txt"):
        assert (tmp_path / "two" / name).is_file()
    import json
    config = json.loads((tmp_path / "two" / T.CONFIG_NAME).read_text())
    assert config["distributed"]["ranks"] == 2 and config["distributed"]["sync_bn"] is True
    assert config["distributed"]["threads_per_rank"] == max(1, (os.cpu_count() or 1) // 2)


def test_a_one_process_run_resumes_on_two_ranks_with_the_whole_batch(data_dir, tmp_path):
    """A run of one process resumed with --distributed keeps normalising over the whole batch
    (sync_bn, given or not: one process did): its second epoch is one process's, to float32's
    rounding, where each rank's statistics differ by far more."""
    common = ["--model", "vgg_small", "--limit-train", 40, "--limit-test", 20,
              "--batch-size", 20, "--lr", 0.01, "--schedule", "constant", "--no-augment"]
    r = _run(_train(*_options(data_dir, tmp_path / "one", *common, "--epochs", 2)), ranks=None)
    assert r.returncode == 0, r.stderr
    whole = C.load_weights(tmp_path / "one" / T.WEIGHTS_NAME)
    results = {}
    for flags in ((), ("--sync-bn",), ("--no-sync-bn",)):
        out = tmp_path / ("resumed" + "".join(flags))
        r = _run(_train(*_options(data_dir, out, *common, "--epochs", 1)), ranks=None)
        assert r.returncode == 0, r.stderr
        r = _run(_train(*_options(data_dir, out, "--epochs", 2, "--resume", "--distributed",
                                  *flags)))
        assert r.returncode == 0, r.stderr
        results[flags] = _difference(whole, C.load_weights(out / T.WEIGHTS_NAME))
        import json
        config = json.loads((out / T.CONFIG_NAME).read_text())
        assert config["distributed"]["sync_bn"] is (flags != ("--no-sync-bn",))
    assert results[()] < 2e-3 and results[("--sync-bn",)] < 2e-3
    assert results[("--no-sync-bn",)] > 10 * max(results[()], results[("--sync-bn",)])


def test_rank_zero_alone_writes_the_run(data_dir, tmp_path):
    """Every change under --out (files opened for writing, renamed, removed: a Python audit
    hook on each rank) is rank 0's: its checkpoint, metrics, weights, config and plots; rank 1
    changes nothing there. --threads overrides the threads per rank (cores / ranks)."""
    out, log = tmp_path / "run", tmp_path / "changes"
    r = _run([sys.executable, PROGRAMS, "train-audited", out, log, "--",
              *_options(data_dir, out, "--model", "lenet5", "--epochs", 1, "--limit-train", 40,
                        "--limit-test", 20, "--batch-size", 20, "--distributed", "--threads",
                        1)])
    assert r.returncode == 0, r.stderr
    rank0 = {Path(p).name for p in Path(f"{log}.0").read_text().splitlines()}
    rank1 = Path(f"{log}.1").read_text().splitlines()
    written = {T.CHECKPOINT_NAME, T.METRICS_NAME, T.WEIGHTS_NAME, T.CONFIG_NAME, "confusion.txt"}
    from fastconv import plotting
    if plotting.have_matplotlib():
        written |= {"curves.png", "filters.png", "confusion.png"}
    assert written <= rank0 and written <= {p.name for p in out.iterdir()}
    assert rank1 == []
    import json
    assert json.loads((out / T.CONFIG_NAME).read_text())["distributed"]["threads_per_rank"] == 1


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------

FAULT_RUN = ["--model", "lenet5", "--epochs", 3, "--limit-train", 60, "--limit-test", 20,
             "--batch-size", 20]  # 3 steps per epoch


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict:
    """The weights of the fault runs' command when nothing fails."""
    out = tmp_path_factory.mktemp("whole") / "run"
    r = _run(_train(*_options(data_dir, out, *FAULT_RUN, "--distributed")))
    assert r.returncode == 0, r.stderr
    return C.load_weights(out / T.WEIGHTS_NAME)


def _resume(out: Path, data_dir: Path, ranks: int | None) -> dict:
    """The final weights of the run in ``out`` resumed on ``ranks`` ranks (one process when
    None)."""
    options = ["--out", out, "--resume", "--data-dir", data_dir, "--no-download", "--quiet"]
    r = _run(_train(*options, *(["--distributed"] if ranks else [])), ranks=ranks)
    assert r.returncode == 0, r.stderr
    return C.load_weights(out / T.WEIGHTS_NAME)


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_failing_rank_ends_the_job_and_the_run_resumes(data_dir, tmp_path, uninterrupted,
                                                         mode):
    """Rank 1 is killed (SIGKILL) or raises at step 4 (epoch 2): every rank is gone within
    30 s with a message saying what happened, the checkpoint of epoch 1 is intact, and the
    run resumes: on 2 ranks to the weights of the uninterrupted run, bit for bit; on one
    process to them up to float32 rounding."""
    out, stamp = tmp_path / "run", tmp_path / "failed-at"
    r = _run([sys.executable, PROGRAMS, "train-failing", mode, 1, 4, stamp, "--",
              *_options(data_dir, out, *FAULT_RUN, "--distributed")])
    ended = time.time()
    assert r.returncode != 0
    assert ended - float(stamp.read_text()) < EXIT_LIMIT
    if mode == "raise":
        assert "rank 1 of 2 failed" in r.stderr and "RuntimeError: injected failure" in r.stderr
        assert "ending all 2 ranks (MPI_Abort)" in r.stderr
    else:  # (the launcher's message: MPICH's hydra reports the signal and ends the others)
        assert "signal 9" in r.stdout + r.stderr or "KILLED" in r.stdout + r.stderr
    state = C.load_checkpoint(out / T.CHECKPOINT_NAME)  # (loads: intact)
    assert state["position"] == {"epoch": 1, "batch": 0, "step": 3, "batches_per_epoch": 3}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    resumed = _resume(out, data_dir, ranks=2)
    for k in uninterrupted:
        np.testing.assert_array_equal(resumed[k], uninterrupted[k])
    assert _difference(uninterrupted, _resume(alone, data_dir, ranks=None)) < FIT_TOL["float32"]


def test_a_stop_request_saves_and_resumes(data_dir, tmp_path, uninterrupted):
    """A stop (as Ctrl-C: --stop-after 4 asks for it after 4 steps) is agreed by the ranks: a
    checkpoint at step 4, exit status 130 on every rank, and the resumed run ends as the
    uninterrupted one."""
    out = tmp_path / "run"
    r = _run(_train(*_options(data_dir, out, *FAULT_RUN, "--distributed", "--stop-after", 4)))
    assert r.returncode == 130, r.stderr
    assert r.stderr.count("interrupted at epoch 2, batch 1/3") == 1  # (rank 0 says it)
    assert C.load_checkpoint(out / T.CHECKPOINT_NAME)["position"]["step"] == 4
    resumed = _resume(out, data_dir, ranks=2)
    for k in uninterrupted:
        np.testing.assert_array_equal(resumed[k], uninterrupted[k])


# --------------------------------------------------------------------------------------------
# Set-ups refused on every rank
# --------------------------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_global_batch_not_divisible_is_refused_on_every_rank(data_dir, tmp_path):
    r = _run(_train(*_options(data_dir, tmp_path / "run", "--batch-size", 21,
                              "--distributed")))
    assert r.returncode == 2
    lines = _lines(r.stderr)
    assert len(lines) == 2 and all("--batch-size 21 (the global batch) is not divisible by "
                                   "the 2 ranks" in line for line in lines)
    assert sorted(line.split(")")[0].split("(")[1] for line in lines) == ["rank 0 of 2",
                                                                          "rank 1 of 2"]


@pytest.mark.parametrize("rank1,message", [
    (["--lr", "0.1"], "the ranks were started with different options: --lr 0.1 on rank 1 but "
                      "--lr not given on rank 0"),
    (["--lr", "-1"], None),
    ([], "started by an MPI launcher as 2 processes but without --distributed"),
])
def test_ranks_started_differently_are_refused_on_every_rank(data_dir, tmp_path, rank1,
                                                             message):
    """Rank 1 with another option, with a usage error (its own message, and the other
    rank's), or every rank without --distributed: every rank stops, one line each."""
    base = [sys.executable, "-m", "fastconv.cli.train",
            *_options(data_dir, tmp_path / "run", "--epochs", 1)]
    if rank1 == []:
        cmd = base
    else:
        script = ('import os, sys; from fastconv.cli.train import main; extra = sys.argv[1:] '
                  'if os.environ["PMI_RANK"] == "1" else []; sys.exit(main(%r + extra))'
                  % [str(a) for a in base[3:] + ["--distributed"]])
        cmd = [sys.executable, "-c", script, *rank1]
    r = _run(cmd)
    assert r.returncode == 2
    lines = _lines(r.stderr)
    assert len(lines) == 2, r.stderr
    if message is None:
        assert any("argument --lr: must be > 0.0, got -1" in line for line in lines)
        assert any("rank 1 of 2 refused its command line" in line for line in lines)
    else:
        assert all(message in line for line in lines)
    assert not (tmp_path / "run" / T.CHECKPOINT_NAME).exists()


def test_docs_script_runs_on_two_ranks(tmp_path):
    """docs/distributed.md's ```python train.py block, as written, under mpiexec -n 2 (on a
    synthetic CIFAR-10 found through $FASTCONV_DATA). (tests/test_readme.py, which runs the
    other Python blocks of the README and docs in one process, leaves this one to this test.)"""
    import re
    page = HERE.parent / "docs" / "distributed.md"
    if not page.is_file():
        pytest.skip("docs/distributed.md is not beside the tests")
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python train\.py\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1
    script = tmp_path / "train.py"
    script.write_text(blocks[0])
    data_root = tmp_path / "data"
    write_folder(data_root, fake_batches(learnable=True))
    env = _env()
    env["FASTCONV_DATA"] = str(data_root)
    r = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True,
                       text=True, timeout=RUN_LIMIT, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and "'epoch': 2" in lines[0] and "val_accuracy" in lines[0]
