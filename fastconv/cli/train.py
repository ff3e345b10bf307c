"""``fastconv-train``: train a CNN from :mod:`fastconv.models` on CIFAR-10, CIFAR-100 or your own
images, evaluating every epoch.

    fastconv-train                                   # simple_cnn, the default recipe
    fastconv-train --model vgg_small --out runs/vgg
    fastconv-train --dataset cifar100 --out runs/c100
    fastconv-train --dataset folder:~/pictures/pets  # a sub-folder of images per class
    fastconv-train --out runs/vgg --resume           # continue after Ctrl-C or a crash
    mpiexec -n 4 fastconv-train --distributed        # data-parallel over 4 ranks (MPI)
    fastconv-train --out runs/vgg --resume --epochs 30   # extend a run (schedule re-planned)
    fastconv-train --recipe airbench94               # airbench94: 94% in 9.9 epochs
    python -m fastconv.cli.train --help

A command over :func:`fastconv.training.fit`: it turns options into a model, loaders, an
optimiser and a schedule, and adds what a run folder needs as callbacks (metrics.csv and the
console line per epoch, the checkpoint, the stop on Ctrl-C/SIGTERM) and final outputs.

Default recipe (``simple_cnn``): SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128,
random crop (4-pixel padding) + horizontal flip, one-cycle schedule (30% warm-up, max lr 0.05;
0.1 for ``vgg_small`` and ``resnet18``, 0.2 for ``resnet9``, 0.02 for ``alexnet_small``),
17 epochs (12 for ``resnet9``, 15 for the other models).

Recipes (``--recipe``) are named presets of the options; options given explicitly override
them. ``airbench94`` (:mod:`fastconv.training.recipes`): the airbench94 network, batch 1024,
9.9 epochs, Nesterov SGD with airbench's lr 11.5, momentum 0.85 and weight decay 0.0153 (in
its units: per 1024 examples, decoupled from momentum and lr; BatchNorm biases at 64x the
lr), 23% warm-up from 0.2 then linear decay to 0.07, label smoothing 0.2 with a summed loss,
lookahead, 2-pixel reflect translations with the alternating flip, and test-time augmentation
(level 2) for the final accuracy. The autoencoder of :mod:`fastconv.models` is not a classifier: it
trains with :func:`fastconv.training.fit` and an MSE loss, not with this command.

Output folder (``--out``, default ``runs/<model>``):

* ``config.json``   the run's resolved options and environment
* ``metrics.csv``   one row per epoch: epoch, step, train_loss, train_acc, test_loss, test_acc,
                    test_acc_1k (test rows 0-999), lr, seconds, images_per_s
* ``checkpoint.npz`` everything needed to resume (fit's training state: model, optimiser,
                    schedule position, RNG states, metrics; and the run's settings), saved
                    atomically after every epoch and on Ctrl-C/SIGTERM
* ``summary.json``  the final accuracies (with test-time augmentation when ``--tta`` > 0) and
                    minutes
* ``model.npz``     final weights (:func:`fastconv.checkpoint.save_weights`, usable by
                    ``fastconv-predict``)
* ``model.onnx``    with ``--export-onnx``: the trained model as ONNX
                    (:func:`fastconv.export.to_onnx`; input normalised as for ``model.npz``,
                    its mean, std and class names in the file's metadata)
* ``curves.png``, ``filters.png``, ``confusion.png`` (with matplotlib), ``confusion.txt``

Resuming is bit-exact: every mini-batch (order and augmentation) is a function of (seed,
epoch, batch index), and the checkpoint holds the weights, optimiser buffers, schedule step,
dropout generator state and position, so an interrupted and resumed run ends with the same
weights, bit for bit, as an uninterrupted one (with the same backend; the thread count may
differ, results do not depend on it).

Data (``--dataset``, :func:`fastconv.data.load_dataset`): CIFAR-10 and CIFAR-100 are looked
for in ``--data-dir`` (which must exist), else ``$FASTCONV_DATA``, else ``~/.cache/fastconv``.
When missing, they are downloaded (their size said first) into that default folder, but into
``--data-dir`` only with ``--download``; ``--no-download`` never downloads. The class names,
normalisation and dataset of the run are stored with the checkpoint and the weights, where
``fastconv-predict`` finds them.

The folder is locked while a run is going (``.fastconv-train.lock``, holding the process id,
removed at exit): a second run, or ``--resume``, on it is refused with "in use by process N".
Temporary files that a killed run left behind are removed by the next run on the folder.
``--resume --epochs N`` continues a run to N epochs (a finished one too); a per-step schedule
is re-planned over the N epochs from where the run is. ``config.json``'s ``resumed_at`` counts
epochs from 1, as the console does.

Usage errors (bad option, unwritable or busy folder, checkpoint of another model) print one
line on stderr and exit with status 2; missing, corrupt or truncated data and corrupt
checkpoints, 1; an interrupted run exits with 130 (SIGINT) or 143 (SIGTERM) after saving its
checkpoint.

Distributed (``--distributed``, started by ``mpiexec -n N``; ``pip install 'fastconv[mpi]'``):
``--batch-size`` is the global batch, split into equal shares over the N ranks (it must be a
multiple of N), so the same command trains the same way on any number of ranks; each rank
runs ``cores / ranks on its machine`` kernel threads unless ``--threads`` says otherwise;
``--sync-bn`` gives BatchNorm the statistics of the whole batch. Rank 0 alone writes the
output folder (on its machine: the other ranks need only the data) and reads the checkpoint
of ``--resume``, which may continue on another number of ranks. Every rank must be started
with the same options (data-dir aside), else every rank refuses with one line; a usage
error is reported, and the exit status given, by every rank. A rank that fails ends the
job (MPI_Abort) with its error; the last checkpoint stays intact.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..training.callbacks import Callback
from ..training.distributed import DEFAULT_BUCKET_MB, launcher_size, raised_on_every_rank
from ..training.history import csv_text

__all__ = ["main", "build_parser", "TrainConfig", "UserError", "DEFAULT_LR", "DEFAULT_EPOCHS",
           "RECIPES"]

PROG = "fastconv-train"
CHECKPOINT_NAME = "checkpoint.npz"
WEIGHTS_NAME = "model.npz"
ONNX_NAME = "model.onnx"
METRICS_NAME = "metrics.csv"
CONFIG_NAME = "config.json"
METRIC_FIELDS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc",
                 "test_acc_1k", "lr", "seconds", "images_per_s")
_CKPT_FORMAT = "fastconv-train"
_CKPT_VERSION = 1

MODEL_NAMES = ("simple_cnn", "lenet5", "vgg_small", "alexnet_small", "resnet9", "resnet18")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adamw")
TTA_LEVELS = (0, 1, 2)
SCHEDULES = ("onecycle", "cosine", "step", "constant")

#: Default (maximum) learning rate by optimiser, and by model for SGD. resnet9: Page's ResNet-9
#: recipe peaks at 0.4 for batch 512 (its summed loss and lr / 512 are a mean loss at 0.4),
#: scaled by sqrt(128 / 512) for batch 128; resnet18: kuangliu/pytorch-cifar's 0.1 at batch 128.
DEFAULT_LR: dict[str, Any] = {
    "sgd": {"simple_cnn": 0.05, "lenet5": 0.05, "vgg_small": 0.1, "alexnet_small": 0.02,
            "resnet9": 0.2, "resnet18": 0.1},
    "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3,
}


#: Default epochs by model: simple_cnn's 17 take ~4 minutes here (see the README); resnet9's 12
#: are half of Page's 24-epoch schedule (94% on a GPU), resnet18's 15 a fraction of kuangliu's
#: 200-epoch cosine run: shortened for a CPU, where an epoch of either takes tens of minutes.
DEFAULT_EPOCHS: dict[str, int] = {"simple_cnn": 17, "lenet5": 15, "vgg_small": 15,
                                  "alexnet_small": 15, "resnet9": 12, "resnet18": 15}


#: Named presets of TrainConfig fields (--recipe); explicit options override them. "default"
#: leaves the per-model defaults. airbench94's optimiser, schedule, augmentation and callbacks
#: are built by fastconv.training.recipes from these values (lr and weight decay in airbench's
#: units); the options it fixes (model, optimizer, schedule, nesterov) cannot be changed.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "airbench94": dict(model="airbench94", epochs=9.9, batch_size=1024, lr=11.5, optimizer="sgd",
                       momentum=0.85, nesterov=True, weight_decay=0.0153, schedule="airbench",
                       warmup=0.23, augment=True, label_smoothing=0.2, tta=2),
}
#: The options a recipe fixes (a different explicit value is an error).
_RECIPE_FIXED = {"airbench94": ("model", "optimizer", "schedule", "nesterov")}


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file, ...): reported in one line."""


@dataclass
class TrainConfig:
    """Settings that determine the training trajectory (saved in checkpoints; fixed on resume)."""

    recipe: str = "default"
    model: str = "simple_cnn"
    epochs: float | None = None        # None: DEFAULT_EPOCHS for the model; may be fractional
    batch_size: int = 128
    lr: float | None = None            # None: DEFAULT_LR for the optimiser / model
    optimizer: str = "sgd"
    momentum: float | None = None      # None: 0.9 for SGD, 0 for RMSprop (unused by Adam/AdamW)
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float | None = None        # fraction of steps; None: 0.3 for onecycle, 0 otherwise
    augment: bool = True
    label_smoothing: float = 0.0
    tta: int = 0                       # test-time augmentation level of the final evaluation
    seed: int = 0
    precision: str = "f32"             # "bf16": conv/linear operands in bfloat16 (fastconv.precision)
    limit_train: int | None = None
    limit_test: int | None = None
    sync_bn: bool | None = None        # None: off (BatchNorm statistics of each rank's share)
    dataset: str = "cifar10"

    def resolved(self) -> "TrainConfig":
        """A copy with the defaults that depend on other settings filled in."""
        cfg = TrainConfig(**asdict(self))
        if cfg.recipe != "default":
            return cfg
        if cfg.epochs is None:
            cfg.epochs = DEFAULT_EPOCHS[cfg.model]
        if cfg.lr is None:
            d = DEFAULT_LR[cfg.optimizer]
            cfg.lr = float(d[cfg.model] if isinstance(d, dict) else d)
        if cfg.warmup is None:
            cfg.warmup = 0.3 if cfg.schedule == "onecycle" else 0.0
        if cfg.momentum is None:
            cfg.momentum = 0.9 if cfg.optimizer == "sgd" else 0.0
        if cfg.optimizer != "sgd" or cfg.momentum == 0:
            cfg.nesterov = False
        cfg.sync_bn = bool(cfg.sync_bn)
        return cfg


_TRAJECTORY = tuple(TrainConfig.__dataclass_fields__)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _float_in(lo: float, hi: float = math.inf, open_lo: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
            rng = f"{'(' if open_lo else '['}{lo}, {hi}]" if hi < math.inf else \
                (f"> {lo}" if open_lo else f">= {lo}")
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v
    return parse


def _dataset_name(text: str) -> str:
    from ..data import parse_dataset
    try:
        kind, path = parse_dataset(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    # a folder is kept by its absolute path, so a resumed run finds it from anywhere
    return text if path is None else f"folder:{path.resolve()}"


def _recipe_help() -> str:
    lines = []
    for name, preset in RECIPES.items():
        if preset:
            lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in preset.items()))
    return "; ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastconv-train`` argument parser (options default to None = "not given")."""
    p = _Parser(prog=PROG, description="Train a CNN on CIFAR-10, CIFAR-100 or an image folder with fastconv's CPU kernels.",
                epilog="Interrupt with Ctrl-C (or SIGTERM): a checkpoint is saved and --resume "
                       "continues the run bit-exactly.")
    d = TrainConfig()
    g = p.add_argument_group("model and recipe")
    g.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="a named preset of the options below (explicit options override it): "
                        f"{_recipe_help()} (lr and weight decay in airbench's units, per 1024 "
                        "examples) [default: default, the per-model defaults]")
    g.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help=f"network from fastconv.models [default: {d.model}]")
    g.add_argument("--epochs", type=_float_in(0.0, open_lo=True), default=None,
                   help="training epochs, possibly fractional (the run then makes ceil(epochs x "
                        "batches per epoch) steps) [default: 17 for simple_cnn, 12 for resnet9, "
                        "15 for the "
                        "others]")
    g.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help=f"mini-batch size [default: {d.batch_size}]")
    g.add_argument("--lr", type=_float_in(0.0, open_lo=True), default=None,
                   help="(maximum) learning rate [default: 0.05 for simple_cnn/lenet5, 0.1 for "
                        "vgg_small/resnet18, 0.2 for resnet9, 0.02 for alexnet_small with sgd; "
                        "2e-3 adam/adamw; 1e-3 rmsprop]")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"optimiser [default: {d.optimizer}]")
    g.add_argument("--momentum", type=_float_in(0.0, 1.0), default=None,
                   help="SGD/RMSprop momentum; when > 0, one-cycle cycles it 0.95 -> 0.85 -> "
                        "0.95 instead, as PyTorch does [default: 0.9 for sgd, 0 for rmsprop]")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum for SGD [default: on]")
    g.add_argument("--weight-decay", type=_float_in(0.0), default=None,
                   help=f"L2 weight decay [default: {d.weight_decay}]")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule, stepped every batch: onecycle (warm-up then "
                        "cosine annealing), cosine, step (x0.1 after each third), constant "
                        f"[default: {d.schedule}]")
    g.add_argument("--warmup", type=_float_in(0.0, 1.0), default=None,
                   help="warm-up fraction of all steps [default: 0.3 for onecycle, else 0]")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (4-pixel padding) and horizontal flip [default: on]")
    g.add_argument("--label-smoothing", type=_float_in(0.0, 1.0), default=None,
                   help="label smoothing of the cross-entropy [default: 0]")
    g.add_argument("--tta", type=int, choices=TTA_LEVELS, default=None,
                   help="test-time augmentation of the final evaluation: 0 none, 1 mirror, 2 "
                        "mirror and 1-pixel translations (airbench's) [default: 0]")
    g.add_argument("--seed", type=_int_at_least(0), default=None,
                   help=f"seed of weights, shuffling, augmentation and dropout "
                        f"[default: {d.seed}]")
    g.add_argument("--precision", choices=("f32", "bf16"), default=None,
                   help="bf16: convolutions and linear layers take bfloat16-rounded operands and "
                        "sum in float32, weights and optimiser state stay float32 (fast with "
                        "AVX512_BF16 or AMX, emulated without; default f32)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=_dataset_name, default=None, metavar="NAME",
                   help="cifar10, cifar100 (its 100 fine classes) or folder:PATH (your images: "
                        "a sub-folder per class, resized and centre-cropped to 32 x 32; PATH "
                        "may hold train/ and test/ (or val/) class folders, else a tenth of "
                        "each class is held out for testing) [default: cifar10]")
    g.add_argument("--data-dir", default=None,
                   help="an existing folder holding the CIFAR archive (cifar-10-python.tar.gz, "
                        "cifar-100-python.tar.gz) or its extracted folder [default: "
                        "$FASTCONV_DATA, else ~/.cache/fastconv]")
    g.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download the CIFAR archive (~170 MB, MD5-checked) when it is not "
                        "found [default: into the default folder only, never into --data-dir "
                        "unless given]")
    g.add_argument("--limit-train", type=_int_at_least(1), default=None, metavar="N",
                   help="train on the first N training images only")
    g.add_argument("--limit-test", type=_int_at_least(1), default=None, metavar="N",
                   help="evaluate on the first N test images only")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder [default: runs/<model>]")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    g.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="threads of the compiled kernels [default: all cores / OMP_NUM_THREADS]")
    g.add_argument("--backend", choices=("fast", "reference"), default="fast",
                   help="conv/pool kernels: compiled (fast) or pure NumPy (reference) "
                        "[default: fast]")
    g.add_argument("--export-onnx", nargs="?", const="", default=None, metavar="PATH",
                   help=f"after training, also write the model as ONNX (opset 17, any batch "
                        f"size, images normalised as for the weights) to PATH [default: "
                        f"{ONNX_NAME} in --out]; needs pip install onnx")
    g.add_argument("--eval-batch-size", type=_int_at_least(1), default=250,
                   help="batch size for evaluation [default: 250]")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch lines (the bar is also hidden when "
                        "stderr is not a terminal)")
    g = p.add_argument_group("distributed (start with mpiexec -n N; pip install 'fastconv[mpi]')")
    g.add_argument("--distributed", action="store_true",
                   help="train data-parallel on the ranks started by mpiexec: --batch-size is "
                        "the global batch, each rank trains on its share (see docs/distributed.md)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm statistics of the whole batch over all ranks instead of "
                        "each rank's share [default: off]")
    g.add_argument("--bucket-mb", type=_float_in(0.0, open_lo=True), default=DEFAULT_BUCKET_MB,
                   metavar="MB", help=f"size of the gradient buckets, each summed over the "
                                      f"ranks by one non-blocking collective started while "
                                      f"backward runs: a reduce-scatter when every rank runs "
                                      f"on one machine (the ranks then share the optimiser's "
                                      f"update), an allreduce across machines "
                                      f"[default: {DEFAULT_BUCKET_MB:g}]")
    # Testing aid: behave as if Ctrl-C was pressed after N optimiser steps of this process.
    g.add_argument("--stop-after", type=_int_at_least(1), default=None, help=argparse.SUPPRESS)
    return p


def _config_from_args(ns: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The run's settings: the recipe's preset, overridden by the options given (``given``:
    the names of the options given, the recipe included)."""
    given = {k for k in _TRAJECTORY if getattr(ns, k, None) is not None}
    explicit = {k: getattr(ns, k) for k in given}
    recipe = explicit.get("recipe", "default")
    for k in _RECIPE_FIXED.get(recipe, ()):
        if k in explicit and explicit[k] != RECIPES[recipe][k]:
            raise UserError(f"--{k.replace('_', '-')} {explicit[k]} does not go with --recipe "
                            f"{recipe} (which uses {RECIPES[recipe][k]})")
    cfg = TrainConfig(**{**RECIPES[recipe], **explicit})
    # Options the optimiser has no use for are refused, not dropped (config.json would record
    # them as if they had been used).
    if "momentum" in explicit and cfg.optimizer in ("adam", "adamw"):
        raise UserError(f"--momentum does not apply to --optimizer {cfg.optimizer} (its "
                        f"momentum is beta1, 0.9): leave it out, or use sgd or rmsprop")
    if explicit.get("nesterov") and cfg.optimizer != "sgd":
        raise UserError(f"--nesterov is SGD's: it does not apply to --optimizer "
                        f"{cfg.optimizer}")
    if explicit.get("nesterov") and cfg.momentum == 0:
        raise UserError("--nesterov needs a momentum: --momentum 0 turns it off")
    if isinstance(cfg.epochs, float) and cfg.epochs.is_integer():
        cfg.epochs = int(cfg.epochs)
    return cfg, given


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------

class _Console:
    """The run's messages; only the rank that writes the run (rank 0) prints them."""

    def __init__(self, quiet: bool, writer: bool = True) -> None:
        self.quiet = quiet
        self.writer = writer

    def info(self, msg: str) -> None:
        if not self.quiet and self.writer:
            print(msg, flush=True)

    def always(self, msg: str) -> None:
        if self.writer:
            print(msg, flush=True)

    def note(self, msg: str) -> None:
        if self.writer:
            print(msg, file=sys.stderr, flush=True)


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror or e}") from e


LOCK_NAME = ".fastconv-train.lock"


class _OutLock:
    """The output folder, made and checked writable, and an exclusive lock on it for the whole
    run: a second fastconv-train on the same --out (the same command started twice, say)
    would otherwise interleave its files with the first's. flock on POSIX, released by the OS
    even if the process is killed; no lock where flock does not exist (Windows).

    The lock file holds the owner's process id and is removed when the run ends. Because a
    waiting process may have opened the file just before it was removed, a lock counts only
    while the path still names the locked file (checked after locking, retried otherwise).
    Once locked, temporary files that a killed run left behind (``.<name>.<random>.tmp`` of
    the atomic writes) are removed: no run writes them any more.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.fh = None

    def __enter__(self) -> "_OutLock":
        _prepare_out(self.out)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        path = self.out / LOCK_NAME
        while True:
            fh = open(path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                raise UserError(f"{self.out} is in use by another {PROG} run"
                                + (f" (process {holder})" if holder else "")
                                + ": wait for it to end, or choose another --out") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()                   # removed by the run that just ended: lock anew
        self.fh = fh
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
        except OSError:
            self.__exit__()  # (a full disk: no lock file left behind, empty)
            raise
        _remove_stale_temporaries(self.out)
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            try:
                os.unlink(self.out / LOCK_NAME)     # while locked: no one else owns it
            except OSError:
                pass
            self.fh.close()
            self.fh = None


def _remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary files of atomic writes (``.<name>.<random>.tmp``) that a killed
    run left in ``out``; only called while holding the folder's lock. Returns them."""
    removed = []
    names = (CHECKPOINT_NAME, WEIGHTS_NAME, METRICS_NAME, CONFIG_NAME, "confusion.txt")
    for path in out.glob(".*.tmp"):
        if any(path.name.startswith(f".{n}.") for n in names) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def _write_text_atomic(path: Path, text: str) -> None:
    from ..checkpoint import atomic_write
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _metrics_csv(rows: list[dict]) -> str:
    return csv_text(rows, METRIC_FIELDS, float_format=lambda v: f"{v:.6g}")


def _set_handlers(signums, handler) -> dict[int, Any]:
    """`handler` for each of `signums` (on the main thread only: elsewhere Python refuses
    them); returns the handlers replaced, for _restore_handlers."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in signums:
            try:
                previous[s] = signal.signal(s, handler)
            except (ValueError, OSError):
                pass
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


class _StopFlag(Callback):
    """Turns SIGINT/SIGTERM into a request to stop the fit after the current step (or
    validation batch); a second signal raises KeyboardInterrupt at once (abort without
    saving). Also the testing aid ``--stop-after N``: a request after N optimiser steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.signum: int | None = None
        self.stop_after = stop_after
        self.steps = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        self._previous = _set_handlers((signal.SIGINT, signal.SIGTERM), self._handle)
        return self

    def __exit__(self, *exc) -> None:
        _restore_handlers(self._previous)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        print(f"\n{PROG}: {signal.Signals(signum).name} received: saving a checkpoint after this "
              f"step (repeat to abort without saving)", file=sys.stderr, flush=True)
        self.request(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        if self.trainer is not None:
            self.trainer.stop_training = True

    def on_train_begin(self, logs: dict) -> None:
        if self.requested:                      # a signal before training started
            self.trainer.stop_training = True

    def on_batch_end(self, batch: int, logs: dict) -> None:
        self.steps += 1
        if self.stop_after is not None and self.steps >= self.stop_after:
            self.request(signal.SIGINT)


# --------------------------------------------------------------------------------------------
# Building the pieces
# --------------------------------------------------------------------------------------------

def _make_optimizer(cfg: TrainConfig, params):
    from .. import optim
    try:
        if cfg.optimizer == "sgd":
            return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                             nesterov=cfg.nesterov and cfg.momentum > 0,
                             weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay)
    except ValueError as e:
        raise UserError(str(e)) from e


def _make_schedule(cfg: TrainConfig, opt, total_steps: int):
    """A per-batch schedule (None for constant)."""
    from .. import optim
    warm = int(round(cfg.warmup * total_steps))
    if cfg.schedule == "onecycle":
        # as torch's OneCycleLR: momentum (Adam's beta1) cycles 0.95 -> 0.85 -> 0.95, unless
        # the run asked for no momentum at all
        cycle = cfg.optimizer in ("adam", "adamw") or cfg.momentum > 0
        return optim.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                pct_start=cfg.warmup, cycle_momentum=cycle)
    if cfg.schedule == "cosine":
        if warm < 1:
            return optim.CosineAnnealingLR(opt, T_max=total_steps)
        # a warm-up over every step (--warmup 1.0) leaves nothing to anneal
        after = optim.CosineAnnealingLR(opt, T_max=total_steps - warm) if warm < total_steps \
            else None
        return optim.LinearWarmup(opt, warmup_steps=warm, start_factor=0.1, after=after)
    if cfg.schedule == "step":
        step = optim.StepLR(opt, step_size=max(1, math.ceil(total_steps / 3)), gamma=0.1)
        if warm >= 1:
            return optim.LinearWarmup(opt, warmup_steps=warm, start_factor=0.1, after=step)
        return step
    if warm >= 1:
        return optim.LinearWarmup(opt, warmup_steps=warm, start_factor=0.1)
    return None


def _airbench94_run(cfg: TrainConfig, ds, backend: str):
    """fastconv.training.recipes' airbench94 run with the settings of `cfg`."""
    from ..training.recipes import Airbench94, airbench94_recipe
    hyp = Airbench94(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                     momentum=cfg.momentum, weight_decay=cfg.weight_decay, warmup=cfg.warmup,
                     label_smoothing=cfg.label_smoothing)
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"--momentum {cfg.momentum} must be < 1 for airbench94 (its lr is "
                        f"scaled by 1 - momentum)")
    try:
        run = airbench94_recipe(ds.x_train, ds.y_train, hyp, seed=cfg.seed,
                                augment=cfg.augment, num_classes=len(ds.class_names))
    except ValueError as e:
        raise UserError(str(e)) from e
    run.model.set_backend(backend)
    return run


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

# fit's metric names -> the columns of metrics.csv
_COLUMNS = {"epoch": "epoch", "step": "step", "loss": "train_loss", "accuracy": "train_acc",
            "val_loss": "test_loss", "val_accuracy": "test_acc",
            "val_accuracy_1k": "test_acc_1k", "lr": "lr", "seconds": "seconds",
            "images_per_s": "images_per_s"}


def _metric_rows(history) -> list[dict]:
    """The History's rows under the names of metrics.csv."""
    return [{_COLUMNS[k]: v for k, v in row.items() if k in _COLUMNS} for row in history]


class _RunLog(Callback):
    """After every epoch: the accuracy on the exact test rows 0-999 (``val_accuracy_1k``, added
    to the History), metrics.csv rewritten, and the epoch's line on the console."""

    def __init__(self, out: Path, y_test: np.ndarray, con: _Console) -> None:
        self.out = out
        self.y_test = y_test
        self.con = con

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        correct = self.trainer.val_predictions == self.y_test
        logs["val_accuracy_1k"] = float(correct[:1000].mean())
        if not self.trainer.is_global_zero:
            return
        rows = _metric_rows(self.trainer.history)
        _write_text_atomic(self.out / METRICS_NAME, _metrics_csv(rows))
        self.con.info(_epoch_line(rows[-1], self.trainer.epochs, len(self.y_test)))


def _run(ns: argparse.Namespace, comm=None) -> int:
    args_cfg, given = _config_from_args(ns)
    out = Path(ns.out if ns.out is not None else Path("runs") / args_cfg.model).expanduser()
    lock = _OutLock(out) if comm is None or comm.rank == 0 else None
    ns.onnx_path = None  # set on the rank that writes the outputs
    if ns.data_dir is not None and not Path(ns.data_dir).expanduser().exists() \
            and not ns.download:
        raise UserError(f"--data-dir {ns.data_dir} does not exist (give the folder that holds "
                        f"the dataset, or add --download to download it there)")

    def open_out() -> None:
        if ns.resume and not out.is_dir():
            raise UserError(f"nothing to resume: {out} does not exist (run without --resume to "
                            f"start, or point --out at the run's folder)")
        if ns.export_onnx is not None and importlib.util.find_spec("onnx") is None:
            raise UserError("--export-onnx needs the onnx package: pip install onnx")
        lock.__enter__()                 # first: a run still going is reported as such
        try:
            if ns.resume and not (out / CHECKPOINT_NAME).is_file():
                raise UserError(f"nothing to resume: {out / CHECKPOINT_NAME} does not exist "
                                f"(run without --resume to start, or point --out at the run's "
                                f"folder)")
            ns.onnx_path = _onnx_path(ns.export_onnx, out)
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    _on_rank0(comm, open_out)
    try:
        return _run_locked(ns, args_cfg, given, out, comm)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


# Errors a rank reports as a refusal of the run (the others are told and refuse with it).
def _refusals() -> tuple[type, ...]:
    from ..checkpoint import CheckpointError
    from ..data import DatasetError
    return UserError, CheckpointError, DatasetError, OSError


def _on_rank0(comm, fn):
    """``fn()`` on the rank that owns the output folder (rank 0; the only process without
    ``comm``); in a distributed run its result, or its refusal (raised on every rank), is
    sent to every rank."""
    if comm is None:
        return fn()
    from ..training.distributed import every_rank
    outcome = None
    if comm.rank == 0:
        try:
            outcome = ("ok", fn())
        except _refusals() as e:
            outcome = ("error", e)
    kind, value = comm.broadcast(outcome)
    if kind == "error":
        raise every_rank(value)
    return value


def _on_every_rank(comm, fn, *, machine_first: bool = False):
    """``fn()`` on every rank; when one refuses, every rank raises that refusal. With
    ``machine_first``, the first rank of each machine runs it before the others there (one
    download per machine into a shared cache)."""
    if comm is None:
        return fn()
    from ..training.distributed import every_rank
    result, error = None, None

    def attempt() -> None:
        nonlocal result, error
        try:
            result = fn()
        except _refusals() as e:
            error = e

    if machine_first and comm.local_rank == 0:
        attempt()
    if machine_first:
        comm.barrier()
    if not (machine_first and comm.local_rank == 0):
        attempt()
    errors = comm.allgather(error)
    for r, e in enumerate(errors):
        if e is not None:
            raise every_rank(error if error is not None else
                             type(e)(f"rank {r} of {comm.size}: {e}"))
    return result


def _count(n, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, plural but for exactly one: "1 epoch", "2 epochs", "9.9 epochs"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _onnx_path(option: str | None, out: Path) -> Path | None:
    """Where --export-onnx writes (None without it), its folder made now rather than after
    the training."""
    if option is None:
        return None
    path = Path(option).expanduser() if option else out / ONNX_NAME
    _prepare_out(path.parent)
    return path


def _load_resume_state(ckpt: Path, args_cfg: TrainConfig, given: set) -> tuple[dict, TrainConfig]:
    """The checkpoint's training state and the run's settings; options given again on the
    command line must equal the run's."""
    from .. import checkpoint as ck
    from ..training.state import STATE_FORMAT
    try:
        state = ck.load_checkpoint(ckpt)
    except ck.CheckpointError as e:
        raise ck.CheckpointError(f"{e}; cannot resume from it (start a new run in another "
                                 f"--out)") from e
    meta = state.get("metadata")
    if state.get("format") == _CKPT_FORMAT:       # version 1, before fastconv.training
        raise UserError(f"{ckpt} was written by an older fastconv-train and cannot be resumed "
                        f"by this one (its weights still load in fastconv-predict); start a "
                        f"new run in another --out")
    if state.get("format") != STATE_FORMAT or not isinstance(meta, dict) \
            or meta.get("format") != _CKPT_FORMAT:
        raise UserError(f"{ckpt} is not a fastconv-train checkpoint")
    try:
        saved = TrainConfig(**meta["config"])
    except (KeyError, TypeError) as e:
        raise UserError(f"checkpoint {ckpt} has an unreadable configuration ({e})") from e
    done = int(state.get("position", {}).get("epoch", 0)) + \
        (1 if state.get("position", {}).get("batch", 0) else 0)
    # A run of one process normalised over the whole batch: resumed on several ranks, it
    # keeps doing so (sync_bn) unless --no-sync-bn says otherwise.
    one_process = meta.get("ranks") == 1
    if one_process:
        saved.sync_bn = bool(args_cfg.sync_bn) if "sync_bn" in given else True
    for k in sorted(given):
        new, old = getattr(args_cfg, k), getattr(saved, k)
        if k == "sync_bn" and one_process:
            continue
        if k == "epochs" and new != old:
            if new < done:
                raise UserError(f"--epochs {new} is fewer than the {_count(done, 'epoch')} "
                                f"the run in {ckpt.parent} has begun; give --epochs {done} or "
                                f"more to extend it, or resume without --epochs")
            saved.epochs = new       # extend (or shorten) the run: the schedule is re-planned
            continue
        if k == "model" and new != old:
            raise UserError(f"checkpoint {ckpt} is from model {old}, not {new}: resume "
                            f"without --model, or use another --out")
        if new != old and not (k in ("lr", "warmup") and old is not None and
                               new is not None and float(new) == float(old)):
            raise UserError(f"--{k.replace('_', '-')} {new} differs from the checkpoint's "
                            f"{old}; resume without it (the run keeps its settings)")
    return state, saved


def _run_locked(ns: argparse.Namespace, args_cfg: "TrainConfig", given: set, out: Path,
                comm=None) -> int:
    """The run, holding the lock on its output folder `out` (on rank 0, in a distributed
    run: the other ranks write nothing)."""
    import fastconv
    from .. import data as D, losses, models
    from ..training import ModelCheckpoint, ProgressBar, fit
    from ..training.distributed import Distributed
    from ..training.state import ResumeError

    writer = comm is None or comm.rank == 0
    con = _Console(ns.quiet, writer)
    ckpt = out / CHECKPOINT_NAME
    if ns.sync_bn and not ns.distributed:
        raise UserError("--sync-bn needs --distributed (one process has one batch)")

    state: dict | None = None
    if ns.resume:
        state, cfg = _on_rank0(comm, lambda: _load_resume_state(ckpt, args_cfg, given))
        if comm is None:
            cfg.sync_bn = False  # (one process normalises over the whole batch either way)
    else:
        def fresh() -> None:
            if ckpt.exists():
                raise UserError(f"{out} already holds a run ({CHECKPOINT_NAME}); add --resume "
                                f"to continue it, or choose another --out")
        _on_rank0(comm, fresh)
        cfg = args_cfg.resolved()
    if comm is not None and cfg.batch_size % comm.size:
        from ..training.distributed import every_rank
        raise every_rank(UserError(
            f"--batch-size {cfg.batch_size} (the global batch) is not divisible by the "
            f"{comm.size} ranks, which take equal shares of every batch: choose a multiple of "
            f"{comm.size}"))

    if ns.threads is not None:
        fastconv.set_num_threads(ns.threads)

    # ---- data --------------------------------------------------------------------------
    ds = _on_every_rank(comm, lambda: _load_data(ns, cfg, con, progress=not ns.quiet and writer),
                        machine_first=True)
    if len(ds.y_train) == 0:
        raise UserError("no training images")
    mean, std = ds.mean, ds.std
    recipe_callbacks: list[Callback] = []
    if cfg.recipe == "airbench94":
        # ---- the recipe's model, loader, optimiser, schedule, loss and callbacks ----------
        run = _airbench94_run(cfg, ds, ns.backend)
        model, train_loader, opt, sched, crit = (run.model, run.train, run.optimizer,
                                                 run.scheduler, run.loss)
        recipe_callbacks = run.callbacks
        mean, std = run.train.mean, run.train.std
        n_batches = len(train_loader)
        total_steps = run.max_steps
    else:
        train_loader = D.DataLoader(ds.x_train, ds.y_train, cfg.batch_size, shuffle=True,
                                    augment=cfg.augment, seed=cfg.seed, prefetch=1,
                                    mean=mean, std=std)
        n_batches = len(train_loader)
        total_steps = math.ceil(cfg.epochs * n_batches)
        # ---- model, optimiser, schedule --------------------------------------------------
        model = models.get_model(cfg.model, num_classes=len(ds.class_names), seed=cfg.seed)
        model.set_backend(ns.backend)
        opt = _make_optimizer(cfg, model.parameters())
        sched = _make_schedule(cfg, opt, total_steps)
        crit = losses.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.to(precision=cfg.precision)
    test_loader = D.DataLoader(ds.x_test, ds.y_test, ns.eval_batch_size, shuffle=False,
                               mean=mean, std=std, prefetch=1)
    fit_epochs = math.ceil(cfg.epochs)
    start = state["position"] if state is not None else {"epoch": 0, "batch": 0}
    # (the epochs the checkpoint's run planned: fractional ones too, as airbench94's 9.9)
    planned = state["metadata"]["config"]["epochs"] if state is not None else cfg.epochs
    if planned != cfg.epochs and sched is not None:
        _replan_schedule(state, sched, opt)

    run_info = {
        "config": asdict(cfg),
        "backend": ns.backend,
        "threads": fastconv.get_num_threads(),
        "simd_level": fastconv.simd_level(),
        "bf16_path": fastconv.simd_level("bf16") if cfg.precision == "bf16" else None,
        "fastconv_version": fastconv.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "data": str(ds.source),
        "train_images": int(len(ds.y_train)),
        "test_images": int(len(ds.y_test)),
        "dataset": cfg.dataset,
        "normalization": {"mean": list(mean), "std": list(std)},
        "batches_per_epoch": n_batches,
        "parameters": int(model.num_parameters()),
        "argv": list(sys.argv[1:]) if ns.argv is None else list(ns.argv),
        # 1-based epoch, as the console's "resuming ... at epoch E, batch B"
        "resumed_at": ({"epoch": start["epoch"] + 1, "batch": start["batch"]}
                       if state is not None else None),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "distributed": None if comm is None else {
            "ranks": comm.size, "ranks_on_rank0_machine": comm.local_size,
            "threads_per_rank": fastconv.get_num_threads(), "sync_bn": cfg.sync_bn,
            "bucket_mb": ns.bucket_mb},
    }
    if writer:
        _write_text_atomic(out / CONFIG_NAME, json.dumps(run_info, indent=2) + "\n")
    ranks = "" if comm is None else f" x {comm.size} ranks"
    if state is None:
        con.info(f"{PROG}: {cfg.model} ({model.num_parameters():,} parameters) on "
                 f"{len(ds.y_train):,} training / {len(ds.y_test):,} test images, "
                 f"{_count(cfg.epochs, 'epoch')} of {_count(n_batches, 'batch', 'batches')}, "
                 f"{cfg.optimizer} lr {cfg.lr:g} "
                 f"{cfg.schedule}, backend {ns.backend}, {cfg.precision}"
                 f"{' (' + fastconv.simd_level('bf16') + ')' if cfg.precision == 'bf16' else ''}, "
                 f"{fastconv.get_num_threads()} threads{ranks} -> {out}")
    elif planned != cfg.epochs:
        con.info(f"{PROG}: resuming {out} at epoch {start['epoch'] + 1}, batch "
                 f"{start['batch']}, with {_count(cfg.epochs, 'epoch')} instead of {planned}"
                 + (f" (the {cfg.schedule} schedule re-planned over "
                    f"{_count(cfg.epochs, 'epoch')}; "
                    f"lr now {opt.param_groups[0]['lr']:.3g})" if sched is not None else ""))
    elif start["epoch"] >= fit_epochs:
        con.info(f"{PROG}: the run in {out} is already complete "
                 f"({_count(cfg.epochs, 'epoch')}): "
                 f"writing its final outputs again")
    else:
        con.info(f"{PROG}: resuming {out} at epoch {start['epoch'] + 1}, batch {start['batch']}")

    run_log = _RunLog(out, ds.y_test, con)
    callbacks: list[Callback] = [*recipe_callbacks, run_log, ModelCheckpoint(ckpt, metadata={
        "format": _CKPT_FORMAT, "version": _CKPT_VERSION, "config": asdict(cfg),
        "ranks": 1 if comm is None else comm.size, **_data_metadata(ds)})]
    if not ns.quiet and sys.stderr.isatty():
        callbacks.insert(0, ProgressBar(leave=False, epoch_lines=False))
    resume_cmd = f"{PROG} --out {out} --resume" + \
        (f" --data-dir {ns.data_dir}" if ns.data_dir is not None else "")
    distributed = False if comm is None else Distributed(sync_bn=cfg.sync_bn,
                                                         bucket_mb=ns.bucket_mb, comm=comm)
    ns.training = True  # (an interruption from here on is fit's: see _handled)
    with _StopFlag(ns.stop_after) as stop:
        callbacks.append(stop)
        try:
            history = fit(model, train_loader, fit_epochs, optimizer=opt, scheduler=sched,
                          loss=crit, val=test_loader, callbacks=callbacks, progress=False,
                          resume=state, distributed=distributed, max_steps=total_steps)
        except ResumeError as e:
            raise UserError(f"checkpoint {ckpt} does not fit this run ({e}); start a new run "
                            f"in another --out") from e
        except FloatingPointError as e:
            raise UserError(f"{e} (--lr {cfg.lr:g})") from e
        except ValueError as e:
            if comm is None:
                raise
            raise UserError(str(e)) from e  # (a distributed set-up refused on every rank)
        trainer = run_log.trainer
        if trainer.stop_training and trainer.epoch < fit_epochs:  # (agreed by the ranks)
            return _interrupted(stop, con, resume_cmd, trainer.position, n_batches)
    if not writer:
        return 0

    # ---- final outputs ------------------------------------------------------------------
    try:
        return _final_outputs(out, cfg, model, test_loader, ds, _metric_rows(history),
                              trainer.val_predictions, con, ns.onnx_path, (mean, std))
    except KeyboardInterrupt:
        con.note(f"\n{PROG}: interrupted while writing the final outputs; every epoch's "
                 f"checkpoint is saved: {resume_cmd} writes them again")
        return 130


def _load_data(ns: argparse.Namespace, cfg: TrainConfig, con: _Console, progress: bool = True):
    """The run's dataset (:func:`fastconv.data.load_dataset`). Downloads go into the default
    folder unless --download asks for --data-dir; a dataset that is not found there is an
    error saying how to get it."""
    from .. import data as D
    kind, path = D.parse_dataset(cfg.dataset)
    if kind == "folder" and ns.data_dir is not None:
        raise UserError(f"--data-dir applies to cifar10 and cifar100; the images of "
                        f"--dataset {cfg.dataset} are read from its path")
    download = ns.download if ns.download is not None else ns.data_dir is None
    try:
        ds = D.load_dataset(cfg.dataset, ns.data_dir, download=download,
                            limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                            seed=cfg.seed, progress=progress)
    except D.DatasetNotFoundError as e:
        if ns.download is None and not download:
            raise D.DatasetNotFoundError(f"{e} (add --download to download it into "
                                         f"{ns.data_dir})") from e
        raise
    except D.ImageReadError as e:
        # the library's advice ends with its bad_images='skip' keyword, which has no option
        # here: keep the reader's own message (it names the file) and what to do
        cause = e.__cause__ if isinstance(e.__cause__, D.ImageReadError) else e
        raise D.ImageReadError(f"{cause}; fix or remove the file") from e
    except D.DatasetError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from e
    if len(ds.y_test) == 0:
        raise UserError(f"no test images in {ds.source}: give the folder a test/ (or val/) "
                        f"class tree, or more images per class (a tenth of each is held out)")
    if ds.skipped:
        examples = ", ".join(f"{p} ({why})" for p, why in ds.skipped[:3])
        con.note(f"{PROG}: skipped {len(ds.skipped)} file(s) of {path}: {examples}"
                 + (", ..." if len(ds.skipped) > 3 else ""))
    return ds


def _data_metadata(ds) -> dict:
    """What fastconv-predict needs of the training data, stored with the weights."""
    return {"dataset": ds.name, "class_names": list(ds.class_names),
            "mean": list(ds.mean), "std": list(ds.std),
            "image_size": int(ds.x_train.shape[-1])}


def _replan_schedule(state: dict, sched, opt) -> None:
    """Make a checkpoint's state continue on ``sched``, the schedule planned for the run's
    new number of epochs: its position is the checkpoint's (one step per optimiser step),
    and the learning rate (and cycled momentum) that of the new plan at that position, written
    into the optimiser's saved hyper-parameters as well."""
    import copy
    steps = int(state["position"]["step"])
    sched.last_epoch = steps - 1
    sched.step()                       # writes the new plan's lr (and momentum) into opt
    state["scheduler"] = sched.state_dict()
    for saved, group in zip(state["optimizer"]["param_groups"], opt.param_groups):
        saved.update({k: copy.deepcopy(v) for k, v in group.items() if k != "params"})


def _final_outputs(out: Path, cfg: TrainConfig, model, test_loader, ds, rows: list[dict],
                   last_preds: np.ndarray | None, con: "_Console",
                   onnx_path: Path | None, normalization: tuple) -> int:
    """Weights (and the ONNX file when `onnx_path` is given), metrics, confusion matrix, plots
    and summary.json (with the test-time augmented accuracy when cfg.tta > 0) of a finished
    run; returns 0."""
    from .. import checkpoint as ck, data as D, plotting
    from ..training import predict, tta_logits
    if last_preds is None:                      # resumed a finished run: evaluate once more
        last_preds = predict(model, test_loader).argmax(axis=1)
    mean, std = normalization
    metadata = {"model": cfg.model, **_data_metadata(ds), "mean": list(mean), "std": list(std),
                "epochs": cfg.epochs, "seed": cfg.seed}
    ck.save_weights(out / WEIGHTS_NAME, model.state_dict(), metadata=metadata)
    if onnx_path is not None:
        from ..export import to_onnx
        to_onnx(model, onnx_path, input_shape=(1,) + ds.x_test.shape[1:],
                metadata={k: json.dumps(v) for k, v in metadata.items()})
    summary: dict[str, Any] = {"test_acc": float(np.mean(last_preds == ds.y_test)),
                               "test_acc_1k": float(np.mean(last_preds[:1000] == ds.y_test[:1000])),
                               "train_minutes": sum(float(r["seconds"]) for r in rows) / 60}
    if cfg.tta > 0:
        t0 = time.perf_counter()
        x_test = D.to_float32(ds.x_test, mean, std)
        correct = tta_logits(model, x_test, cfg.tta,
                             batch_size=test_loader.batch_size).argmax(axis=1) == ds.y_test
        summary.update(tta_level=cfg.tta, tta_acc=float(correct.mean()),
                       tta_acc_1k=float(correct[:1000].mean()),
                       tta_minutes=(time.perf_counter() - t0) / 60)
        con.always(f"{PROG}: test accuracy with test-time augmentation (level {cfg.tta}): "
                   f"{_acc_text(summary['tta_acc_1k'], summary['tta_acc'], len(ds.y_test))}")
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _write_text_atomic(out / METRICS_NAME, _metrics_csv(rows))
    cm = plotting.confusion_matrix(ds.y_test, last_preds, len(ds.class_names))
    table = plotting.format_confusion(cm, ds.class_names)
    _write_text_atomic(out / "confusion.txt", table + "\n")
    con.info("confusion matrix on the test set (rows: true class, columns: predicted)\n" + table)
    _make_plots(out, rows, model, cm, ds.class_names, con)
    if rows:
        last = rows[-1]
        total_s = sum(float(r["seconds"]) for r in rows)
        con.always(f"{PROG}: done: test accuracy {_test_acc_text(last, len(ds.y_test)).strip()}"
                   f"; {total_s / 60:.1f} min; weights in {out / WEIGHTS_NAME}"
                   + (f", ONNX in {onnx_path}" if onnx_path is not None else ""))
    return 0


def _test_acc_text(row: dict, n_test: int) -> str:
    return _acc_text(row["test_acc_1k"], row["test_acc"], n_test)


def _acc_text(acc_1k: float, acc: float, n_test: int) -> str:
    if n_test > 1000:
        return f"{100 * acc_1k:5.2f}% (rows 0-999) {100 * acc:5.2f}% (all {n_test})"
    return f"{100 * acc:5.2f}%"


def _epoch_line(row: dict, epochs: int, n_test: int) -> str:
    return (f"epoch {row['epoch']:>2}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_acc']:5.2f}%  test loss {row['test_loss']:.4f} "
            f"acc {_test_acc_text(row, n_test)}  lr {row['lr']:.3g}  {row['seconds']:.1f} s  "
            f"{row['images_per_s']:.0f} img/s")


def _interrupted(stop: _StopFlag, con: _Console, resume_cmd: str, position: tuple[int, int],
                 n_batches: int) -> int:
    """The message of a run stopped by a signal (its checkpoint is saved); the exit status."""
    epoch, batch = position
    where = (f"epoch {epoch + 1}, batch {batch}/{n_batches}" if batch < n_batches
             else f"end of epoch {epoch + 1} (before its evaluation)")
    con.note(f"{PROG}: interrupted at {where}; checkpoint saved; continue with: {resume_cmd}")
    return 128 + int(stop.signum or signal.SIGINT)


def _make_plots(out: Path, rows: list, model, cm: np.ndarray, class_names, con: _Console) -> None:
    from .. import nn, plotting
    if not plotting.have_matplotlib():
        con.note(f"{PROG}: matplotlib is not installed: plots skipped (pip install matplotlib); "
                 f"the metrics are in {out / METRICS_NAME}")
        return
    written = []
    if rows:
        plotting.plot_curves(rows, out / "curves.png", title=None)
        written.append("curves.png")
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and conv.weight.data.shape[1] in (1, 3):
        plotting.plot_filters(conv.weight.data, out / "filters.png")
        written.append("filters.png")
    plotting.plot_confusion(cm, class_names, out / "confusion.png")
    written.append("confusion.png")
    con.info(f"{PROG}: wrote {', '.join(written)} in {out}")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large activation arrays (14 MB at batch
    128 for simple_cnn). By default glibc trims the heap once more than ~2x the largest freed
    block sits free at its top, so the next step's arrays are fresh pages that the kernel
    zeroes on first touch: ~5% of a simple_cnn step here. The training command calls this
    for its own process (the library itself never changes allocator settings). Returns
    whether the settings were applied (False off glibc, e.g. macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # Blocks up to 32 MiB (glibc's maximum) come from the heap, whose free top is kept.
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def _start_mpi(args: list[str]):
    """The job's communicator when this process is a rank of a distributed run (asked with
    --distributed, or started by an MPI launcher as one of several processes: it must then
    take part in the ranks' check of the options), else None. UserError without mpi4py."""
    if "--distributed" not in args and (launcher_size() or 1) <= 1:
        return None
    from ..training.distributed import world
    try:
        return world()
    except ImportError as e:
        raise UserError(str(e)) from None


def _error_line(text: str) -> None:
    """``text`` and its newline on stderr in one write (ranks share mpiexec's stderr: a line
    written in pieces, as print does when stderr is unbuffered, can interleave with another
    rank's)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _agree_on_options(comm, ns: argparse.Namespace | None, status: int | None) -> int | None:
    """Collective: every rank's parsed options (or the status of its --help / usage error);
    the exit status every rank ends with when they differ, when a rank could not parse its
    command line, or when the ranks were started without --distributed; None to run."""
    facts = None if ns is None else {k: v for k, v in vars(ns).items() if k != "data_dir"}
    gathered = comm.allgather((status, facts))
    for r, (st, _) in enumerate(gathered):
        if st is not None:
            if status is None and st != 0:
                _error_line(f"{PROG}: error: rank {r} of {comm.size} refused its command line "
                            f"(see its message): every rank stops")
            return status if status is not None else st
    ref = gathered[0][1]
    for r, (_, f) in enumerate(gathered[1:], 1):
        for key in ref:
            if f[key] != ref[key]:
                _error_line(f"{PROG}: error: the ranks were started with different options: "
                            f"{_option_text(key, f[key])} on rank {r} but "
                            f"{_option_text(key, ref[key])} on rank 0 (start every rank with "
                            f"the same command)")
                return 2
    if not ns.distributed:
        if comm.size > 1:
            _error_line(f"{PROG}: error: started by an MPI launcher as {comm.size} processes "
                        f"but without --distributed: add --distributed (else each process "
                        f"would train alone)")
            return 2
    return None


def _option_text(key: str, value: Any) -> str:
    """How option ``key`` with parsed ``value`` reads on a command line."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return f"{flag} not given"
    if value is True:
        return flag
    if value is False:
        return f"no {flag}"
    return f"{flag} {value}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fastconv-train``; returns the exit status (see module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        comm = _start_mpi(args)
    except UserError as e:
        _error_line(f"{PROG}: error: {e}")
        return 2
    parser = build_parser()
    ns, status = None, None
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:                       # --help, or a usage error already printed
        status = int(e.code) if isinstance(e.code, int) else 2
    if comm is not None:
        status = _agree_on_options(comm, ns, status)
        if status is None and not ns.distributed:
            comm = None                           # (one process started by a launcher)
    if status is not None:
        return status
    ns.argv = argv
    keep_freed_memory()
    if comm is None:
        return _handled(ns, None)
    try:
        return _handled(ns, comm)
    except BaseException as e:                    # (a failure of this rank alone)
        from ..training.distributed import abort_job
        abort_job(comm, e, PROG)
        raise


def _handled(ns: argparse.Namespace, comm) -> int:
    """The run, its errors turned into one line and an exit status (see module docstring);
    in a distributed run, the errors every rank raised alike (the others propagate)."""
    from ..checkpoint import CheckpointError
    from ..data import DatasetError
    ns.training = False
    try:
        with _TermAsInterrupt() as term:
            return _run(ns, comm)
    except (UserError, DatasetError, CheckpointError, OSError, KeyboardInterrupt) as e:
        if comm is not None and comm.size > 1 and not _on_every_rank_alike(e):
            raise
        where = "" if comm is None or comm.size == 1 else f" (rank {comm.rank} of {comm.size})"
        if isinstance(e, KeyboardInterrupt):
            what = ("aborted (no checkpoint written for the current epoch)" if ns.training else
                    "interrupted before training began (nothing written)")
            print(f"\n{PROG}: {what}", file=sys.stderr)
            return 128 + (term.signum or signal.SIGINT)
        advice = ""
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and ns.training:
            advice = ("; the last checkpoint written is kept: free some space, then continue "
                      "with --resume")
        _error_line(f"{PROG}: error{where}: {e}{advice}")
        return 2 if isinstance(e, UserError) else 1


class _TermAsInterrupt:
    """SIGTERM as Ctrl-C for the whole run (fit's _StopFlag takes both over while it trains):
    a download or data preparation it stops cleans up after itself (the default action
    killed the process where it stood, leaving a partial download behind)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_TermAsInterrupt":
        self._previous = _set_handlers((signal.SIGTERM,), self._handle)
        return self

    def __exit__(self, *exc) -> None:
        _restore_handlers(self._previous)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        raise KeyboardInterrupt


def _on_every_rank_alike(exc: BaseException) -> bool:
    """Whether ``exc``, or the error it was raised from, was raised by every rank alike."""
    return raised_on_every_rank(exc) or (exc.__cause__ is not None
                                         and raised_on_every_rank(exc.__cause__))


if __name__ == "__main__":
    sys.exit(main())
