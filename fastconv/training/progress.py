"""Progress display of a fit: a tqdm bar per epoch, or a plain line per epoch without tqdm."""

from __future__ import annotations

import sys
from typing import Any

from .callbacks import Callback

__all__ = ["ProgressBar", "format_metrics"]

_hinted = False      # the "pip install tqdm" hint is given once per process


def _tqdm() -> Any:
    """``tqdm.auto.tqdm`` (a widget in Jupyter, text in a terminal), or None."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def format_metrics(logs: dict, keys: tuple[str, ...] = ("loss", "accuracy", "val_loss",
                                                         "val_accuracy", "lr", "seconds",
                                                         "images_per_s")) -> str:
    """``"loss 0.5123  accuracy 81.20%  ...  3.2 s  4,012 img/s"`` for the ``keys`` present."""
    parts = []
    for k in keys:
        v = logs.get(k)
        if v is None:
            continue
        if k == "seconds":
            parts.append(f"{v:.1f} s")
        elif k == "images_per_s":
            parts.append(f"{v:,.0f} img/s")
        elif k.endswith("accuracy"):
            parts.append(f"{k} {100 * v:.2f}%")
        elif k == "lr":
            parts.append(f"lr {v:.3g}")
        else:
            parts.append(f"{k} {v:.4f}")
    return "  ".join(parts)


class ProgressBar(Callback):
    """A ``tqdm.auto`` bar per epoch (a widget in Jupyter, text on stderr in a terminal) with
    the running loss, accuracy and images/s, and the epoch's metrics when it ends.

    Without tqdm: one plain line per epoch on stdout (``epoch_lines``), and once per process a
    hint on stderr that ``pip install tqdm`` gives a bar. ``fit(progress=True)`` adds
    ``ProgressBar()``; give your own instance in ``callbacks`` (with ``progress=False``) to
    change ``leave`` (keep each finished epoch's bar) or ``epoch_lines``. In a distributed
    fit, rank 0 alone shows progress.
    """

    def __init__(self, *, leave: bool = True, epoch_lines: bool = True) -> None:
        self.leave = bool(leave)
        self.epoch_lines = bool(epoch_lines)
        self._tqdm: Any = None
        self._bar: Any = None
        self._shown = True

    def on_train_begin(self, logs: dict) -> None:
        global _hinted
        self._shown = self.trainer.is_global_zero
        if not self._shown:
            return
        self._tqdm = _tqdm()
        if self._tqdm is None and not _hinted:
            _hinted = True
            print("fastconv.training: pip install tqdm to see a progress bar", file=sys.stderr,
                  flush=True)

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        if self._tqdm is not None:
            t = self.trainer
            self._bar = self._tqdm(total=len(t.train), initial=t.batch,
                                   desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch",
                                   leave=self.leave, dynamic_ncols=True)

    def on_batch_end(self, batch: int, logs: dict) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(format_metrics(logs, ("loss", "accuracy",
                                                            "images_per_s")), refresh=False)
            self._bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(format_metrics(logs), refresh=True)
            self._close()
        elif self.epoch_lines and self._shown:
            print(f"epoch {epoch + 1}/{self.trainer.epochs}  {format_metrics(logs)}", flush=True)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, logs: dict) -> None:
        self._close()

    def on_exception(self, exception: BaseException) -> None:
        self._close()
