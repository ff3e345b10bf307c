"""Mixed precision: bfloat16 operands for convolutions and linear layers, float32 everywhere else.

In bf16 mode the convolutions (every algorithm and pass: forward, input and weight gradients,
transposed convolutions) and the linear layers take their operands rounded to bfloat16 (round
to nearest even; NaN stays NaN, values beyond bf16's largest become inf) and accumulate the
products in float32. Everything else stays float32: weights (the float32 "master" copies the
optimiser updates), optimiser state, batch-norm statistics, bias gradients, losses, softmax.
The ops return float32 arrays: a layer's output is the float32 sum, which the next layer's op
rounds again if it is a convolution or a linear layer (no bf16 arrays between layers: NumPy
has no bfloat16 dtype, and the rounding, done while packing operands for the GEMM, costs
little). float64 arrays are never rounded: bf16 applies to float32 computations only.

Three ways to turn it on, as in PyTorch:

    with fastconv.autocast("bf16"):        # every op and layer inside the block (this thread)
        loss = criterion(model(x), y)
    model.to(precision="bf16")               # this model's layers, whatever the autocast state
    F.conv2d(x, w, precision="bf16")         # one op

A layer's backward pass uses the precision its forward pass ran with. Which kernels do the work
is :func:`bf16_path`: "amx" (AMX tiles, tdpbf16ps) or "avx512_bf16" (vdpbf16ps) where the CPU
has them, else "emulated" -- the float32 kernels on rounded operands: the same numbers as
bf16 hardware would give up to the order of the sums, and no speed-up (a one-time
Bf16EmulationWarning says so).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

__all__ = [
    "PRECISIONS",
    "Bf16EmulationWarning",
    "autocast",
    "current_precision",
    "bf16_path",
    "round_to_bf16",
    "resolve_precision",
]

#: The precisions accepted by :class:`autocast`, ``Module.to(precision=...)`` and the ops.
PRECISIONS = ("f32", "bf16")

# Other spellings users of PyTorch and NumPy type.
_ALIASES = {"f32": "f32", "float32": "f32", "fp32": "f32", "bf16": "bf16", "bfloat16": "bf16"}


class Bf16EmulationWarning(UserWarning):
    """bf16 mode on a CPU without AVX512_BF16 or AMX: the emulated path, no faster than float32."""


def _normalize(precision, where: str) -> str:
    """The canonical name ("f32" / "bf16") of a precision; ValueError naming `where` otherwise."""
    name = _ALIASES.get(precision) if isinstance(precision, str) else None
    if name is None:
        raise ValueError(f"{where}: precision must be one of {list(PRECISIONS)} "
                         f"(or 'float32' / 'bfloat16'), got {precision!r}")
    return name


_state = threading.local()


def current_precision() -> str:
    """The precision the innermost active :class:`autocast` of this thread sets: "bf16" or
    "f32" ("f32" outside any autocast block)."""
    return getattr(_state, "precision", "f32")


def _saved() -> list[str]:
    """This thread's precisions to restore, one per active autocast block, innermost last."""
    if not hasattr(_state, "saved"):
        _state.saved = []
    return _state.saved


class autocast:
    """Context manager running the convolutions and linear layers inside it in `precision`
    ("bf16" or "f32"), as ``torch.autocast("cpu", torch.bfloat16)``.

    Thread-local (each thread has its own state, as PyTorch's). Blocks nest: the innermost
    decides, and leaving a block (normally or by an exception) restores the state it found.
    ``enabled=False`` makes the block run in float32. Layers whose precision was set with
    ``Module.to(precision=...)`` keep it inside any block; float64 computations stay float64.
    Also usable as a decorator.

        >>> import fastconv
        >>> with fastconv.autocast("bf16"):
        ...     fastconv.precision.current_precision()
        'bf16'
    """

    def __init__(self, precision: str = "bf16", enabled: bool = True) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"autocast: enabled must be a bool, got {enabled!r}")
        self.precision = _normalize(precision, "autocast")
        self.enabled = enabled

    # The states to restore are kept per thread, not on the instance: one autocast object
    # entered by several threads at once (a module-level one, a decorated function) restores
    # each thread's own.
    def __enter__(self) -> "autocast":
        _saved().append(current_precision())
        _state.precision = self.precision if self.enabled else "f32"
        return self

    def __exit__(self, *exc) -> None:
        _state.precision = _saved().pop()

    def __call__(self, func):
        import functools

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with autocast(self.precision, self.enabled):
                return func(*args, **kwargs)
        return wrapper

    def __repr__(self) -> str:
        return f"autocast({self.precision!r}, enabled={self.enabled})"


def resolve_precision(precision, dtype, op: str) -> str:
    """The precision an op computes in: `precision` ("f32" / "bf16"; None: the active
    autocast's) for a computation in `dtype`. float64 computations stay "f32" under autocast;
    asking for "bf16" explicitly on float64 arrays is a TypeError."""
    if precision is None:
        name = current_precision()
        if name == "bf16" and np.dtype(dtype) != np.float32:
            return "f32"
        return name
    name = _normalize(precision, op)
    if name == "bf16" and np.dtype(dtype) != np.float32:
        raise TypeError(f"{op}: precision='bf16' needs float32 arrays, got {np.dtype(dtype)}")
    return name


def round_to_bf16(x) -> np.ndarray:
    """float32 array of x's values rounded to the nearest bfloat16 (ties to even; NaN stays
    NaN, inf stays inf, finite values past bf16's largest, 3.3895e38, round to inf): the
    operands bf16 mode multiplies. Pure NumPy (the reference's rounding)."""
    x = np.asarray(x, dtype=np.float32)
    bits = np.ascontiguousarray(x).view(np.uint32)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)
    # NaN: truncated with the quiet bit set (a payload only in the dropped bits stays NaN).
    rounded = np.where(nan, (bits & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), rounded)
    return rounded.astype(np.uint32).view(np.float32).reshape(x.shape)


def bf16_path() -> str:
    """The kernels bf16 mode runs on here: "amx", "avx512_bf16" or "emulated" (or a twin
    forced by the tests: "amx_twin", "avx512_bf16_twin")."""
    from . import _core

    return _core.bf16_path()


_warned = False


def warn_if_emulated() -> None:
    """Warn once per process (Bf16EmulationWarning) when bf16 mode runs on the emulated path."""
    global _warned
    if _warned:
        return
    path = bf16_path()
    if path == "emulated":
        _warned = True
        warnings.warn(
            "bf16 mode runs emulated on this CPU (no AVX512_BF16 or AMX): operands are rounded "
            "to bfloat16 and multiplied by the float32 kernels -- bf16 numerics, no speed-up "
            "over float32", Bf16EmulationWarning, stacklevel=3)
