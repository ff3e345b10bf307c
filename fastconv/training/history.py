"""The per-epoch record of a fit (:class:`History`), and CSV text of such rows."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

__all__ = ["History", "csv_text"]


class History:
    """Metrics of every epoch of a :func:`fastconv.training.fit`, oldest first.

    ``rows`` is a list of dicts, one per completed epoch (``pandas.DataFrame(h.rows)`` makes a
    table of it); ``history`` is the same as a dict of lists, one per metric, as in Keras
    (``h.history["val_accuracy"][-1]``). The keys fit writes are ``epoch`` (1 for the first),
    ``step`` (optimiser steps so far), ``loss``, ``accuracy`` (classification only),
    ``val_loss`` and ``val_accuracy`` (with ``val=``), ``lr`` (the first parameter group's
    learning rate at the end of the epoch), ``seconds`` (training and validation) and
    ``images_per_s`` (training throughput); callbacks may add their own in ``on_epoch_end``.
    A resumed fit's History holds the epochs before the interruption too.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]

    def append(self, row: dict[str, Any]) -> None:
        """Add the row of an epoch (kept by reference: later additions to it show)."""
        self.rows.append(row)

    @property
    def history(self) -> dict[str, list]:
        """``{metric: [value per epoch]}``, metrics in order of first appearance; None where an
        epoch lacks a metric."""
        keys: dict[str, None] = {}
        for row in self.rows:
            keys.update(dict.fromkeys(row))
        return {k: [row.get(k) for row in self.rows] for k in keys}

    @property
    def epoch(self) -> list[int]:
        """The epoch numbers (1-based) of the rows."""
        return [row["epoch"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __repr__(self) -> str:
        if not self.rows:
            return "History(no epochs)"
        last = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.rows[-1].items())
        return f"History({len(self.rows)} epochs; last: {last})"


def csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None, *,
             separator: str = ",", float_format: Callable[[float], str] = repr) -> str:
    """CSV of ``rows`` with a header: the columns are ``fields`` (default: every key, in order of
    first appearance), a missing value is an empty cell, floats are written with
    ``float_format`` (default ``repr``: the shortest text that reads back exactly)."""
    if fields is None:
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        fields = list(keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, delimiter=separator, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (float_format(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()
