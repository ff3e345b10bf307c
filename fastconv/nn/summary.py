"""``module.summary(...)``: a table of the module tree with output shapes, parameter counts
(trainable and frozen) and receptive fields.

Receptive field recurrence (per axis, starting at r = j = 1 on the input):

    r_out = r_in + d (k - 1) j_in,   j_out = j_in s

for a layer with kernel k, stride s and dilation d (convolutions and pooling, which say so
with a ``_receptive(input_shape) -> (kernel, stride, dilation, padding)`` method). Element-wise
layers keep the field; Flatten, Linear and anything changing the number of axes end it. Where
branches join (Residual, Concat), the output's field is the larger one, per axis.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .linear import Flatten, Linear
from .module import Module, _one_line

# A receptive field `rf` below: per spatial axis (size, jump) in input pixels, or None where
# it has ended.


@dataclass
class ModelSummary:
    """Result of :meth:`Module.summary`: ``rows`` (one dict per module of the tree below the
    summarised one, in pre-order: name (dotted path), layer, type, depth, output_shape,
    params, trainable (the trainable part of params), rf_size, rf_jump; a container's row
    counts the parameters of its whole subtree), parameter totals and the formatted ``text``
    (``str(summary)``)."""

    rows: list[dict] = field(default_factory=list)
    input_shape: tuple = ()
    total_params: int = 0
    trainable_params: int = 0
    buffer_elements: int = 0
    text: str = ""

    @property
    def frozen_params(self) -> int:
        """Parameters with ``requires_grad=False``."""
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        # the table, so that a REPL or notebook echoing the object shows it (as torchinfo's)
        return self.text


def _fmt_shape(shape, batch) -> str:
    shape = tuple(shape)
    return "(" + ", ".join(["None" if batch is None else str(shape[0])] + [str(s) for s in shape[1:]]) + \
           ("," if len(shape) == 1 else "") + ")"


def _counts(module: Module) -> tuple[int, int]:
    """(parameters, trainable parameters) of `module` and its descendants."""
    total = trainable = 0
    for p in module.parameters():
        total += p.data.size
        trainable += p.data.size if p.requires_grad else 0
    return total, trainable


def add_row(rows: list, module: Module, name: str, depth: int) -> dict:
    """Append the row of `module` (output shape and field filled in by the caller) and return it."""
    params, trainable = _counts(module)
    row = dict(name=name, layer=module, type=type(module).__name__, depth=depth,
               output_shape=None, params=params, trainable=trainable, rf_size=None, rf_jump=None)
    rows.append(row)
    return row


def set_field(row: dict, rf) -> None:
    """Show receptive field `rf` in `row`."""
    if rf is not None:
        row["rf_size"] = tuple(r for r, _ in rf)
        row["rf_jump"] = tuple(j for _, j in rf)


def output_shape_of(module: Module, shape, name: str) -> tuple:
    """``module.output_shape(shape)``; a ValueError naming the module's path if it cannot
    take that input (its ValueError or TypeError), a RuntimeError naming it if it fails
    otherwise (a custom layer's forward raising, say, IndexError), chained to the original."""
    where = f"summary: layer {name or type(module).__name__} ({_one_line(module)})"
    try:
        return tuple(module.output_shape(shape))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} cannot take input of shape {tuple(shape)}: {exc}") from exc
    except Exception as exc:
        raise RuntimeError(f"{where} failed on input of shape {tuple(shape)}: "
                           f"{type(exc).__name__}: {exc}") from exc


def layer_row(layer: Module, shape, rf, name: str, depth: int, rows: list):
    """The summary of one layer (see Module._summarize): its row; (output shape, field)."""
    row = add_row(rows, layer, name, depth)
    out = output_shape_of(layer, shape, name)
    receptive = getattr(layer, "_receptive", None)
    if receptive is not None and rf is not None:
        kernel, stride, dilation, _ = receptive(shape)
        rf = tuple((r + (d * (k - 1)) * j, j * s)
                   for (r, j), k, s, d in zip(rf, kernel, stride, dilation))
        set_field(row, rf)
    elif len(out) != len(shape) or isinstance(layer, (Flatten, Linear)):
        rf = None
    row["output_shape"] = out
    return out, rf


def join_fields(fields):
    """The field after branches join: per axis the larger size and jump (None if any branch's
    field has ended)."""
    fields = list(fields)
    if not fields or any(f is None for f in fields) or len({len(f) for f in fields}) != 1:
        return None
    return tuple((max(f[a][0] for f in fields), max(f[a][1] for f in fields))
                 for a in range(len(fields[0])))


def summarize(module: Module, input_shape, print_fn: Callable[[str], None] | None) -> ModelSummary:
    """See :meth:`Module.summary`."""
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) >= 1 and all(
        isinstance(n, (numbers.Integral, np.integer)) and not isinstance(n, (bool, np.bool_))
        and n >= 1 for n in input_shape)
    if not ok:
        raise ValueError(f"summary: input_shape must be a tuple of positive ints, one sample's "
                         f"(C, H, W) or a batch's (N, C, H, W), got {input_shape!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 4:
        batch, shape = input_shape[0], input_shape
    else:
        batch, shape = None, (1,) + input_shape
    rf = ((1, 1), (1, 1)) if len(shape) == 4 else None
    rows: list[dict] = []
    if type(module)._summarize is not Module._summarize:  # a container: rows for its tree
        module._summarize(shape, rf, "", -1, rows)
        rows = [r for r in rows if r["depth"] >= 0]  # (the container itself is the header)
    else:
        module._summarize(shape, rf, "", 0, rows)
    total, trainable = _counts(module)
    buffers = sum(b.size for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    head = ("Layer (type)", "Output Shape", "Param #", "Receptive field (jump)")
    table = []
    for r in rows:
        rf_text = ""
        if r["rf_size"] is not None:
            (rh, rw), (jh, jw) = r["rf_size"], r["rf_jump"]
            rf_text = f"{rh}x{rw} ({jh})" if jh == jw else f"{rh}x{rw} ({jh}x{jw})"
        frozen = r["params"] - r["trainable"]
        params = f"{r['params']:,}"
        if frozen:
            params += " (frozen)" if not r["trainable"] else f" ({frozen:,} frozen)"
        label = f"{r['name']} {r['type']}" if r["name"] else r["type"]
        table.append(("  " * r["depth"] + label, _fmt_shape(r["output_shape"], batch), params, rf_text))
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]),
                          cells[2].rjust(widths[2]), cells[3].ljust(widths[3])]).rstrip()

    width = sum(widths) + 6
    lines = [f"Model: {type(module).__name__}, input {_fmt_shape(shape, batch)}", "=" * width,
             line(head), "=" * width]
    lines += [line(t) for t in table]
    lines += ["=" * width,
              f"Total params: {total:,}",
              f"Trainable params: {trainable:,}",
              f"Frozen params (requires_grad=False): {total - trainable:,}",
              f"Non-trainable buffers (running statistics): {buffers:,}",
              "Receptive field: size in input pixels (jump = distance in input pixels between "
              "neighbouring outputs); where branches join, the larger field per axis"]
    text = "\n".join(lines)
    for r in rows:
        r["output_shape"] = (batch,) + tuple(r["output_shape"][1:])
    summary = ModelSummary(rows=rows, input_shape=(batch,) + tuple(shape[1:]),
                           total_params=total, trainable_params=trainable,
                           buffer_elements=buffers, text=text)
    if print_fn is not None:
        print_fn(text)
    return summary
