"""Training plots (optional matplotlib) and confusion matrices (NumPy only).

matplotlib is an optional dependency: it is imported inside the plotting functions, and
:func:`have_matplotlib` tells whether it is installed. Figures are built with
``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, so pyplot, the global
backend and the global figure list are never touched (safe in threads and headless runs).

:func:`confusion_matrix`, :func:`format_confusion` and :func:`filter_grid` need only NumPy.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "have_matplotlib",
    "confusion_matrix",
    "format_confusion",
    "filter_grid",
    "plot_curves",
    "plot_filters",
    "plot_confusion",
]


def have_matplotlib() -> bool:
    """True when matplotlib (with its Agg backend) imports; the plotting functions need it."""
    try:
        importlib.import_module("matplotlib.backends.backend_agg")
    except Exception:  # noqa: BLE001 - missing or broken install: no plots either way
        return False
    return True


def _new_figure(figsize: tuple[float, float]) -> Any:
    """A Figure attached to an Agg canvas, without pyplot or global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install matplotlib "
                          "(or fastconv[plot])") from e
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


# --------------------------------------------------------------------------------------------
# Confusion matrices (NumPy only)
# --------------------------------------------------------------------------------------------

def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts ``m[i, j]`` of samples with true class i predicted as j; int64 (K, K).

    Rows are true classes, columns predictions (as in scikit-learn). ``m.trace() / m.sum()``
    is the accuracy and ``m.diagonal() / m.sum(1)`` the per-class recall.
    """
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: y_true has {t.size} entries, y_pred {p.size}")
    if num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    if t.size and not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        raise TypeError("confusion_matrix: labels must be integers")
    t = t.astype(np.int64, copy=False)
    p = p.astype(np.int64, copy=False)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: labels must be in 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes) \
        .reshape(num_classes, num_classes)


def format_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> str:
    """Printable confusion matrix: rows = true class, columns = predicted, plus recall.

    Column headers are the class names cut to the column width; a final column gives each
    class's recall (diagonal / row sum) and a final line the overall accuracy.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"format_confusion: expected a square matrix, got shape {m.shape}")
    k = m.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"format_confusion: {len(names)} class names for {k} classes")
    cell = max(5, len(str(int(m.max()))) if m.size else 1)
    corner = "true \\ pred"
    label_w = max(len(corner), max((len(n) for n in names), default=0))
    header = f"{corner:<{label_w}} " + " ".join(f"{n[:cell]:>{cell}}" for n in names) + "  recall"
    lines = [header]
    rows = m.sum(axis=1)
    for i, name in enumerate(names):
        recall = f"{100.0 * m[i, i] / rows[i]:6.1f}%" if rows[i] else "     -"
        lines.append(f"{name:<{label_w}} " + " ".join(f"{int(v):>{cell}}" for v in m[i])
                     + f"  {recall}")
    total = m.sum()
    acc = f"{100.0 * np.trace(m) / total:.2f}%" if total else "-"
    lines.append(f"accuracy {acc} ({int(np.trace(m))}/{int(total)})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------

def filter_grid(weight: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile conv filters (F, C, kh, kw) into one image, each filter min-max normalised.

    C must be 3 (shown as RGB) or 1 (grey). Returns float (rows*(kh+pad)+pad,
    ncols*(kw+pad)+pad, 3) in [0, 1] with white separators; ``ncols`` defaults to
    ceil(sqrt(F)). Constant filters are drawn mid-grey.
    """
    w = np.asarray(getattr(weight, "data", weight), dtype=np.float64)  # a Parameter's values
    if w.ndim != 4 or w.shape[1] not in (1, 3) or w.shape[0] == 0:
        raise ValueError(f"filter_grid: expected weights (F, 3 or 1, kh, kw), got {w.shape}")
    f, c, kh, kw = w.shape
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    hi = w.max(axis=(1, 2, 3), keepdims=True)
    span = hi - lo
    norm = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)
    img = norm.transpose(0, 2, 3, 1)                       # (F, kh, kw, C)
    if c == 1:
        img = np.repeat(img, 3, axis=3)
    ncols = int(ncols) if ncols else int(np.ceil(np.sqrt(f)))
    nrows = -(-f // ncols)
    grid = np.ones((nrows * (kh + pad) + pad, ncols * (kw + pad) + pad, 3))
    tiles = np.ones((nrows * ncols, kh, kw, 3))
    tiles[:f] = img
    # (rows, cols, kh, kw, 3) -> place each tile in its cell in one vectorised assignment
    tiles = tiles.reshape(nrows, ncols, kh, kw, 3)
    cells = grid[pad:, pad:].reshape(nrows, kh + pad, ncols, kw + pad, 3)
    cells[:, :kh, :, :kw] = tiles.transpose(0, 2, 1, 3, 4)
    return grid


# --------------------------------------------------------------------------------------------
# Plots (need matplotlib)
# --------------------------------------------------------------------------------------------

def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray | None:
    vals = []
    for r in rows:
        v = r.get(key)
        if v is None or v == "":
            vals.append(np.nan)
        else:
            vals.append(float(v))
    arr = np.asarray(vals, dtype=np.float64)
    return None if np.all(np.isnan(arr)) else arr


_CURVES = (  # (axis 0 loss / 1 accuracy, key, label)
    (0, "train_loss", "train"), (0, "test_loss", "test"),
    (1, "train_acc", "train"), (1, "test_acc", "test"), (1, "test_acc_1k", "test rows 0-999"),
    # fit's History (Keras' names)
    (0, "loss", "train"), (0, "val_loss", "validation"),
    (1, "accuracy", "train"), (1, "val_accuracy", "validation"),
)


def plot_curves(metrics_rows: Iterable[Mapping[str, Any]], path: str | os.PathLike,
                title: str | None = None, dpi: int = 120) -> Path:
    """Loss and accuracy against epoch, train and test, side by side, saved to ``path``.

    ``metrics_rows`` are dicts (e.g. rows of ``metrics.csv`` read with ``csv.DictReader``;
    strings are converted) with ``epoch`` and any of ``train_loss``, ``test_loss``,
    ``train_acc``, ``test_acc``, ``test_acc_1k`` (test rows 0-999), or a
    :class:`~fastconv.training.History` from ``fit`` (or its ``rows``: ``loss``, ``val_loss``,
    ``accuracy``, ``val_accuracy``); accuracies are fractions in [0, 1] and are drawn in
    percent. Rows with the same epoch (e.g. mid-epoch rows) are all drawn. ValueError when the
    rows hold none of these curves.
    """
    rows = list(getattr(metrics_rows, "rows", metrics_rows))
    if not rows:
        raise ValueError("plot_curves: no metrics rows")
    epoch = _column(rows, "epoch")
    if epoch is None:
        raise ValueError("plot_curves: rows need an 'epoch' value")
    columns = [(axis, _column(rows, key), label) for axis, key, label in _CURVES]
    columns = [c for c in columns if c[1] is not None]
    if not columns:
        raise ValueError(f"plot_curves: the rows hold no curve to draw (keys "
                         f"{sorted(rows[0])}; expected some of "
                         f"{', '.join(key for _, key, _ in _CURVES)})")
    fig = _new_figure((10, 4))
    axes = fig.subplots(1, 2)
    ax_loss, ax_acc = axes
    for axis, col, label in columns:
        factor = 100.0 if axis == 1 else 1.0
        axes[axis].plot(epoch, col * factor, marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    for ax, ylabel in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))    # epochs 1, 2, not 1.25
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_filters(weight: np.ndarray, path: str | os.PathLike, ncols: int | None = None,
                 title: str | None = "first-layer filters", dpi: int = 120) -> Path:
    """Draw first-layer conv filters (F, 3, kh, kw) as a colour image grid (see
    :func:`filter_grid`), each filter min-max normalised, saved to ``path``."""
    grid = filter_grid(weight, ncols=ncols)
    h, w = grid.shape[:2]
    scale = 6.0 / max(h, w)
    fig = _new_figure((max(2.0, w * scale), max(2.0, h * scale) + (0.4 if title else 0.0)))
    ax = fig.subplots()
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path, dpi)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str] | None,
                   path: str | os.PathLike, normalize: bool = True,
                   title: str | None = None, dpi: int = 120) -> Path:
    """Confusion matrix heat map (rows true, columns predicted) with counts in the cells.

    With ``normalize`` the colour is the row fraction (recall per class); the text is always
    the count.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"plot_confusion: expected a square matrix, got shape {m.shape}")
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"plot_confusion: {len(names)} class names for {k} classes")
    rows = m.sum(axis=1, keepdims=True)
    shown = m / np.where(rows > 0, rows, 1) if normalize else m
    size = max(4.0, 0.6 * k + 2)
    fig = _new_figure((size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = shown.max() / 2 if shown.size else 0
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > threshold else "black")
    total = m.sum()
    ax.set_title(title or (f"accuracy {100.0 * np.trace(m) / total:.2f}%" if total else ""))
    return _save(fig, path, dpi)
