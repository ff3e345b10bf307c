"""airbench94's training epochs, fastconv against PyTorch on the real CIFAR-10, back to back in
one process: each runs the recipe (the full 9.9-epoch schedule) from its whitening init and
stops after ``--epochs`` epochs; every epoch's wall time includes its data augmentation and
batching (fastconv's loader prepares the next batch while a step runs; airbench's
``CifarLoader``, ported in airbench_torch.py, flips, pads and crops at the epoch's start).
Prints each epoch, then one JSON line: the per-epoch seconds of both, the ratio of their mean
epochs, the CPU and the other processes' share of the machine meanwhile.

    python benchmarks/airbench94_epochs.py --epochs 2 --data-dir ../shared/data --threads 2

``--layout nchw`` runs PyTorch in its default memory format instead of channels_last (the
faster of the two in test_bench_airbench.py's step). ``--train-images`` and ``--batch-size``
make a small trial run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import fastconv
from fastconv import data, memory
from fastconv.cli.train import keep_freed_memory
from fastconv.training import Airbench94, Callback, airbench94_recipe

import airbench_torch
from conftest import cpu_times, process_cpu_seconds


class EpochTimes(Callback):
    """Each epoch's wall time; stops the fit after ``stop_after`` epochs."""

    def __init__(self, stop_after: int) -> None:
        self.stop_after = stop_after
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        print(f"fastconv  epoch {epoch + 1}  {self.seconds[-1]:7.1f} s  "
              f"train loss {logs['loss']:.4f}", flush=True)
        if len(self.seconds) >= self.stop_after:
            self.trainer.stop_training = True


def fastconv_epochs(x, y, epochs: int, seed: int, batch_size: int | None) -> list[float]:
    """The first ``epochs`` epochs of fastconv's recipe (fit, inside the block cache)."""
    hyp = Airbench94()
    if batch_size:
        hyp = hyp.with_(batch_size=batch_size, whitening_images=min(len(x), 5000))
    run = airbench94_recipe(x, y, hyp, seed=seed)
    timer = EpochTimes(epochs)
    run.fit(callbacks=[timer], progress=False)
    return timer.seconds


def torch_epochs(x, y, epochs: int, seed: int, channels_last: bool,
                 batch_size: int | None) -> list[float]:
    """The first ``epochs`` epochs of airbench's own loop (airbench_torch.train)."""
    seconds: list[float] = []

    def on_epoch_end(epoch, s, loss):
        seconds.append(s)
        # the last batch's summed loss per image (fastconv's line: the epoch's mean per image)
        print(f"PyTorch   epoch {epoch + 1}  {s:7.1f} s  "
              f"train loss {loss / (batch_size or 1024):.4f}", flush=True)

    airbench_torch.train(x, y, seed=seed, channels_last=channels_last,
                         stop_after_epochs=epochs, on_epoch_end=on_epoch_end,
                         batch_size=batch_size, whitening_images=min(len(x), 5000))
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs of each (default 2)")
    p.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-images", type=int, default=None, help="use the first N only")
    p.add_argument("--batch-size", type=int, default=None, help="instead of 1024")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error(f"--epochs must be >= 1, got {a.epochs}")
    keep_freed_memory()
    fastconv.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    cifar = data.load_cifar10(a.data_dir, download=False)
    x, y = cifar.x_train[:a.train_images], cifar.y_train[:a.train_images]

    t0, m0, p0 = time.perf_counter(), cpu_times(), process_cpu_seconds()
    ours = fastconv_epochs(x, y, a.epochs, a.seed, a.batch_size)
    memory.release()
    theirs = torch_epochs(x, y, a.epochs, a.seed, a.layout == "channels_last", a.batch_size)
    t1, m1, p1 = time.perf_counter(), cpu_times(), process_cpu_seconds()

    result = {"epochs": a.epochs, "threads": a.threads, "train_images": len(x),
              "batch_size": a.batch_size or 1024, "torch_layout": a.layout,
              "fastconv_epoch_s": ours, "torch_epoch_s": theirs,
              "fastconv_mean_s": statistics.fmean(ours), "torch_mean_s": statistics.fmean(theirs),
              "speedup": statistics.fmean(theirs) / statistics.fmean(ours),
              "torch_version": torch.__version__,
              "cpu": fastconv.build_info()["cpu"]["model_name"]}
    if m0 is not None and m1 is not None:
        capacity = (t1 - t0) * (os.cpu_count() or 1)
        result["others_share"] = round(max(0.0, (m1[0] - m0[0]) - (p1 - p0)) / capacity, 4)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
