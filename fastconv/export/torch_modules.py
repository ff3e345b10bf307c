"""The PyTorch twins of fastconv's modules that torch.nn lacks: Residual, Concat and Mul, with
fastconv's child and attribute names, so that their state-dict keys are fastconv's.

Importing this module imports torch (fastconv itself does not need it): use it through
:func:`fastconv.export.to_torch`, or directly to write a PyTorch model that loads a fastconv
state dict. The classes live at module level so that converted models pickle
(``torch.save(model)``).
"""

from __future__ import annotations

from collections import OrderedDict

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised by the tests with torch hidden
    raise ImportError("fastconv.export needs PyTorch, which fastconv does not depend on: "
                      "pip install torch") from exc

__all__ = ["Residual", "Concat", "Mul"]


class Residual(torch.nn.Module):
    """body(x) + shortcut(x), or body(x) + x without a shortcut (fastconv.nn.Residual)."""

    def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class Concat(torch.nn.Module):
    """Branches on the same input, outputs concatenated along `dim` (fastconv.nn.Concat).
    Branches are named "0", "1", ..., or by the keys of an OrderedDict given alone."""

    def __init__(self, *branches, dim: int = 1) -> None:
        super().__init__()
        if len(branches) == 1 and isinstance(branches[0], OrderedDict):
            items = list(branches[0].items())
        else:
            items = list(enumerate(branches))
        for name, branch in items:
            self.add_module(str(name), branch)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], self.dim)


class Mul(torch.nn.Module):
    """x * scale, a constant with no state-dict entry (fastconv.nn.Mul)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
