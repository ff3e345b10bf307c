"""Tests for fastconv.plotting: confusion matrices and filter grids always, plots when
matplotlib is installed."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from fastconv import plotting as P

NAMES = ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck")
PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_matches_loop():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 10, 500)
    p = np.where(rng.random(500) < 0.6, t, rng.integers(0, 10, 500))
    m = P.confusion_matrix(t, p, 10)
    ref = np.zeros((10, 10), np.int64)
    for a, b in zip(t, p):
        ref[a, b] += 1
    np.testing.assert_array_equal(m, ref)
    assert m.dtype == np.int64 and m.sum() == 500
    assert np.trace(m) == np.sum(t == p)
    # classes never seen still get rows/columns
    np.testing.assert_array_equal(P.confusion_matrix([0, 0, 2], [0, 2, 2], 4),
                                  [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert P.confusion_matrix([], [], 3).sum() == 0


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="0..2"):
        P.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="0..2"):
        P.confusion_matrix([0, 1], [-1, 1], 3)
    with pytest.raises(ValueError, match="entries"):
        P.confusion_matrix([0, 1], [0], 3)
    with pytest.raises(TypeError, match="integers"):
        P.confusion_matrix([0.5], [0], 3)


def test_format_confusion():
    m = np.diag(np.arange(1, 11)) + 1
    text = P.format_confusion(m, NAMES)
    lines = text.splitlines()
    assert len(lines) == 12                                  # header, 10 rows, accuracy
    assert "recall" in lines[0] and "airpl" in lines[0]
    for name, line in zip(NAMES, lines[1:11]):
        assert line.startswith(name)
    row = lines[3].split()                                   # bird: 1 ... 4 ... 1
    assert row[0] == "bird" and row[1:11] == ["1"] * 2 + ["4"] + ["1"] * 7
    assert row[11] == f"{100 * 4 / 13:.1f}%"
    total, correct = m.sum(), np.trace(m)
    assert lines[-1] == f"accuracy {100 * correct / total:.2f}% ({correct}/{total})"
    # without names, empty rows
    text = P.format_confusion(np.zeros((2, 2), int))
    assert text.splitlines()[1].split()[0] == "0" and "-" in text.splitlines()[-1]
    with pytest.raises(ValueError, match="class names"):
        P.format_confusion(m, NAMES[:3])


def test_filter_grid_layout_and_normalisation():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 3, 5, 5)) * 7 + 3
    w[4] = 2.0                                               # a constant filter
    grid = P.filter_grid(w, pad=1)
    assert grid.shape == (3 * 6 + 1, 4 * 6 + 1, 3)           # ceil(sqrt(10)) = 4 columns, 3 rows
    assert grid.min() >= 0 and grid.max() <= 1
    for f in range(10):
        r, c = divmod(f, 4)
        tile = grid[1 + r * 6:1 + r * 6 + 5, 1 + c * 6:1 + c * 6 + 5]
        if f == 4:
            np.testing.assert_allclose(tile, 0.5)
            continue
        expect = (w[f] - w[f].min()) / (w[f].max() - w[f].min())
        np.testing.assert_allclose(tile, expect.transpose(1, 2, 0), rtol=1e-12)
    # separators and unused cells are white
    assert np.all(grid[0] == 1) and np.all(grid[:, 0] == 1)
    assert np.all(grid[1 + 2 * 6:, 1 + 2 * 6:] == 1)
    grey = P.filter_grid(rng.standard_normal((3, 1, 3, 3)), ncols=3)
    assert grey.shape == (5, 13, 3) and np.all(grey[..., 0] == grey[..., 2])
    with pytest.raises(ValueError, match="filter_grid"):
        P.filter_grid(np.ones((4, 2, 3, 3)))


def test_have_matplotlib_is_bool(monkeypatch):
    assert isinstance(P.have_matplotlib(), bool)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)         # as if not installed
    assert P.have_matplotlib() is False


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def test_plot_curves_from_csv_rows(tmp_path, mpl):
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"])
        w.writeheader()
        for e in range(1, 6):
            w.writerow({"epoch": e, "train_loss": 2 / e, "train_acc": 0.3 + e / 10,
                        "test_loss": 2.1 / e, "test_acc": 0.28 + e / 10, "lr": 0.1})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    pyplot_before = "matplotlib.pyplot" in sys.modules
    out = P.plot_curves(rows, tmp_path / "curves.png", title="run")
    assert _is_png(out)
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before   # no global pyplot state
    with pytest.raises(ValueError, match="no metrics"):
        P.plot_curves([], tmp_path / "x.png")


def test_plot_curves_of_a_fit_history_draws_its_curves(tmp_path, mpl, monkeypatch):
    # fit's History rows (loss, accuracy, val_loss, val_accuracy: Keras' names) gave two empty
    # axes without a word; a Parameter to plot_filters failed in np.asarray
    from fastconv import nn, optim
    from fastconv.training import fit

    figures = []
    new_figure = P._new_figure
    monkeypatch.setattr(P, "_new_figure", lambda size: figures.append(new_figure(size))
                        or figures[-1])
    x = np.random.default_rng(0).standard_normal((16, 3, 6, 6)).astype(np.float32)
    y = np.arange(16) % 2
    model = nn.Sequential(nn.Conv2d(3, 2, 3, rng=0), nn.Flatten(), nn.Linear(32, 2, rng=1))
    history = fit(model, (x, y), 2, optimizer=optim.SGD(model.parameters(), lr=0.1),
                  val=(x, y), progress=False)
    for given in (history, history.rows):
        assert _is_png(P.plot_curves(given, tmp_path / "curves.png"))
        loss_ax, acc_ax = figures[-1].axes
        assert [ln.get_label() for ln in loss_ax.lines] == ["train", "validation"]
        assert [ln.get_label() for ln in acc_ax.lines] == ["train", "validation"]
        np.testing.assert_allclose(acc_ax.lines[1].get_ydata(),
                                   100 * np.array(history.history["val_accuracy"]))
    with pytest.raises(ValueError, match=r"no curve to draw \(keys \['epoch', 'lr'\]"):
        P.plot_curves([{"epoch": 1, "lr": 0.1}], tmp_path / "x.png")
    assert _is_png(P.plot_filters(model[0].weight, tmp_path / "filters.png"))   # a Parameter
    np.testing.assert_array_equal(P.filter_grid(model[0].weight),
                                  P.filter_grid(model[0].weight.data))


def test_plot_filters_and_confusion(tmp_path, mpl):
    rng = np.random.default_rng(0)
    assert _is_png(P.plot_filters(rng.standard_normal((32, 3, 5, 5)).astype(np.float32),
                                  tmp_path / "filters.png"))
    m = P.confusion_matrix(rng.integers(0, 10, 300), rng.integers(0, 10, 300), 10)
    assert _is_png(P.plot_confusion(m, NAMES, tmp_path / "confusion.png"))
    assert _is_png(P.plot_confusion(m, None, tmp_path / "confusion_counts.png", normalize=False))
