"""Programs that test_distributed_mpi.py starts with mpiexec (and alone, for the reference):

    python mpi_programs.py fit OUT_DIR [--distributed]
        fit() on synthetic 8x8 images of each MODEL ("bn": conv-BN-ReLU blocks, BatchNorm over
        all ranks when distributed; "plain": no BatchNorm, with dropout) and DTYPE (float64,
        float32); rank 0 writes the final state dict and the History's losses to
        OUT_DIR/MODEL-DTYPE.npz.
    python mpi_programs.py train-failing MODE RANK STEP STAMP -- fastconv-train options...
        fastconv-train whose rank RANK fails at optimiser step STEP: MODE "kill" (SIGKILL
        itself) or "raise" (RuntimeError); it first writes the time to the file STAMP.
    python mpi_programs.py train-audited FOLDER LOG -- fastconv-train options...
        fastconv-train with a Python audit hook that records every change this rank makes
        under FOLDER (a file opened for writing, created, renamed or removed); at exit each
        rank writes its records, one path a line, to LOG.RANK.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np


def _model(kind: str, dtype):
    from fastconv import nn
    r = np.random.default_rng(1)
    if kind == "bn":
        layers = [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                  nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                  nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)]
    else:
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.25, rng=7), nn.Linear(16, 10)]
    model = nn.Sequential(*layers)
    for name, p in model.named_parameters():
        if not name.endswith(("1.weight", "5.weight")) or kind != "bn":  # (BN scales stay 1)
            p.data[...] = r.standard_normal(p.shape) * 0.3
    return model.astype(dtype)


FIT_CASES = [(kind, dtype) for kind in ("bn", "plain") for dtype in ("float64", "float32")]


def fit_program(kind: str, dtype_name: str, out: str, distributed: bool) -> None:
    from fastconv import data, optim
    from fastconv.training import fit
    from fastconv.training.distributed import Distributed
    dtype = np.dtype(dtype_name)
    r = np.random.default_rng(0)
    x = r.integers(0, 256, (64, 3, 8, 8), dtype=np.uint8)
    y = r.integers(0, 10, 64)
    model = _model(kind, dtype)
    train = data.DataLoader(x.astype(dtype) / 255, y, 16, shuffle=True, augment=True, seed=3,
                            mean=None, std=None)
    val = data.DataLoader(x[:24].astype(dtype) / 255, y[:24], 10, mean=None, std=None)
    opt = optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)
    history = fit(model, train, 2, optimizer=opt, val=val, progress=False,
                  distributed=Distributed(sync_bn=True) if distributed else False)
    rank = 0
    if distributed:
        from fastconv.training.distributed import world
        rank = world().rank
    if rank == 0:
        np.savez(out, **model.state_dict(), loss=np.array(history.history["loss"]),
                 val_loss=np.array(history.history["val_loss"]))


def train_failing(mode: str, rank: int, step: int, stamp: str, args: list[str]) -> int:
    from fastconv.cli.train import main
    from fastconv.training import loop

    original = loop.Trainer._step

    def failing_step(self, *a):
        if self.rank == rank and self.step == step:
            with open(stamp, "w") as f:
                f.write(repr(time.time()))
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure at step {step}")
        return original(self, *a)

    loop.Trainer._step = failing_step
    return main(args)


def _changed_path(event: str, args: tuple) -> str | None:
    """The path an audit event changes (None for events that change no file)."""
    if event == "open":
        path, mode, flags = args
        writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                  else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        return path if writes else None
    if event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate"):
        return args[1] if event == "os.rename" else args[0]
    return None


def train_audited(folder: str, log: str, args: list[str]) -> int:
    from fastconv.cli.train import main
    root = os.path.realpath(folder)
    changed: list[str] = []

    def hook(event: str, hook_args: tuple) -> None:
        path = _changed_path(event, hook_args)
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(path))
            if path == root or path.startswith(root + os.sep):
                changed.append(path)

    sys.addaudithook(hook)
    try:
        return main(args)
    finally:
        rank = os.environ.get("PMI_RANK", "0")
        records = "".join(p + "\n" for p in changed)
        with open(f"{log}.{rank}", "w") as f:  # (outside FOLDER: not recorded)
            f.write(records)


if __name__ == "__main__":
    if sys.argv[1] == "fit":
        for kind, dtype in FIT_CASES:
            fit_program(kind, dtype, os.path.join(sys.argv[2], f"{kind}-{dtype}.npz"),
                        "--distributed" in sys.argv)
    elif sys.argv[1] == "train-failing":
        sep = sys.argv.index("--")
        sys.exit(train_failing(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                               sys.argv[sep + 1:]))
    elif sys.argv[1] == "train-audited":
        sep = sys.argv.index("--")
        sys.exit(train_audited(sys.argv[2], sys.argv[3], sys.argv[sep + 1:]))
    else:
        sys.exit(f"unknown program {sys.argv[1]!r}")
