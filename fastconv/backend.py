"""Choice of the kernels that the layers run on: the compiled ops or the pure-NumPy reference.

Two backends implement the same op API (``conv2d``, ``conv2d_backward``, ``max_pool2d``, ...):

* ``"fast"``      -> :mod:`fastconv.functional` (C++/OpenMP kernels, the default)
* ``"reference"`` -> :mod:`fastconv.reference` (pure NumPy, for comparison and checking)

The layers in :mod:`fastconv.nn` look the ops up *at call time*: a per-model override set with
``model.set_backend("reference")`` wins, otherwise the global backend is used. The global
backend is set with :func:`use_backend`, either for good or for a ``with`` block::

    fastconv.backend.use_backend("reference")          # from now on
    with fastconv.backend.use_backend("reference"):     # only inside the block
        y = model(x)

The op modules are imported lazily (on first use), so importing this module never fails
because the compiled extension is missing.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

__all__ = ["BACKENDS", "use_backend", "get_backend", "current_backend"]

#: Names accepted by :func:`use_backend` / :func:`get_backend`, with the module each one loads.
BACKENDS: dict[str, str] = {
    "fast": "fastconv.functional",
    "reference": "fastconv.reference",
}

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_current = "fast"


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {sorted(BACKENDS)}")
    return name


class use_backend:
    """Set the global backend (``"fast"`` or ``"reference"``).

    Takes effect immediately; used as a context manager it restores the previous backend on
    exit, so ``with use_backend("reference"): ...`` runs only that block on the reference ops.
    """

    def __init__(self, name: str) -> None:
        global _current
        name = _check_name(name)
        self.name = name
        self.previous = _current
        _current = name

    def __enter__(self) -> "use_backend":
        return self

    def __exit__(self, *exc) -> None:
        global _current
        _current = self.previous

    def __repr__(self) -> str:
        return f"use_backend({self.name!r})"


def current_backend() -> str:
    """Name of the global backend: ``"fast"`` or ``"reference"``."""
    return _current


def get_backend(name: str | None = None) -> ModuleType:
    """The ops module of backend `name` (default: the global backend), imported on first use.

    Raises ValueError for an unknown name and ImportError (with a hint) if the module cannot be
    imported, e.g. the compiled extension of the ``"fast"`` backend was not built.
    """
    if name is None:
        name = _current
    module = _modules.get(name)
    if module is not None:
        return module
    module_name = BACKENDS[_check_name(name)]
    with _lock:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = (" (the compiled extension may not be built: `pip install -e .`, or use "
                    "use_backend('reference'))") if name == "fast" else ""
            raise ImportError(f"backend {name!r}: cannot import {module_name}: {exc}{hint}") from exc
        _modules[name] = module
    return module
