"""One full, seeded airbench94 run of fastconv's recipe on the real CIFAR-10, for the seed
tables of docs/training.md and docs/benchmarks.md: train (fit, 476 steps), then TTA on the
test set; prints one line per epoch and the result (accuracy on the exact test rows 0-999 and
on all 10,000, minutes, peak RSS).

    python benchmarks/airbench94_run.py --seed 0 [--data-dir DIR] [--threads 2] [--precision bf16]

Wall time covers everything after the data is in memory: whitening init, training, TTA.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


import fastconv
from fastconv import data
from fastconv.cli.train import keep_freed_memory
from fastconv.training import Callback, airbench94_recipe, tta_logits
from fastconv.training.recipes import AIRBENCH_MEAN, AIRBENCH_STD


class EpochLine(Callback):
    """A line per epoch: steps, train loss and accuracy, minutes so far."""

    def __init__(self, start: float) -> None:
        self.start = start

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        minutes = (time.perf_counter() - self.start) / 60
        print(f"epoch {epoch + 1:2d}  step {logs['step']:3d}  train loss {logs['loss']:.4f}  "
              f"acc {100 * logs['accuracy']:.2f}%  {minutes:.1f} min", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                   help="bf16: conv/linear operands in bfloat16, float32 master weights "
                        "(training and TTA)")
    a = p.parse_args()
    keep_freed_memory()
    fastconv.set_num_threads(a.threads)
    cifar = data.load_cifar10(a.data_dir, download=False)
    start = time.perf_counter()
    run = airbench94_recipe(cifar.x_train, cifar.y_train, seed=a.seed)
    run.model.to(precision=a.precision)
    run.fit(callbacks=[EpochLine(start)], progress=False)
    t_train = time.perf_counter() - start
    x_test = data.to_float32(cifar.x_test, AIRBENCH_MEAN, AIRBENCH_STD)
    plain = tta_logits(run.model, x_test, level=0).argmax(1) == cifar.y_test
    t_plain = time.perf_counter()
    tta = tta_logits(run.model, x_test, level=2).argmax(1) == cifar.y_test
    t_tta = time.perf_counter() - t_plain
    minutes = (t_train + t_tta) / 60
    result = {"seed": a.seed, "threads": a.threads, "precision": a.precision,
              "bf16_path": fastconv.simd_level("bf16") if a.precision == "bf16" else None,
              "tta_acc_1k": float(tta[:1000].mean()), "tta_acc_all": float(tta.mean()),
              "acc_1k": float(plain[:1000].mean()), "acc_all": float(plain.mean()),
              "train_minutes": t_train / 60, "tta_minutes": t_tta / 60,
              "minutes_train_plus_tta": minutes,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "cpu": fastconv.build_info()["cpu"]["model_name"]}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
