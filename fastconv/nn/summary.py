"""The result of ``model.summary(...)``: a table of layers, output shapes, parameters and
receptive fields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelSummary:
    """Result of :meth:`Sequential.summary`: ``rows`` (one dict per layer: name, layer,
    output_shape, params, rf_size, rf_jump), parameter totals and the formatted ``text``
    (``str(summary)``)."""

    rows: list[dict] = field(default_factory=list)
    input_shape: tuple = ()
    total_params: int = 0
    trainable_params: int = 0
    buffer_elements: int = 0
    text: str = ""

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return (f"ModelSummary(layers={len(self.rows)}, total_params={self.total_params:,}, "
                f"output_shape={self.rows[-1]['output_shape'] if self.rows else None})")


def _fmt_shape(shape, batch) -> str:
    shape = tuple(shape)
    return "(" + ", ".join(["None" if batch is None else str(shape[0])] + [str(s) for s in shape[1:]]) + \
           ("," if len(shape) == 1 else "") + ")"
