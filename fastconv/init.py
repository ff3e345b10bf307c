"""Weight initialisation, PyTorch's ``torch.nn.init`` for NumPy arrays.

Every function fills its first argument *in place* and returns it. The argument may be a
NumPy array or anything with a ``.data`` array (a :class:`fastconv.nn.Parameter`). Every random
function takes ``rng``: a ``numpy.random.Generator``, an int seed, or None (fresh entropy), so a
run is reproducible. Random numbers are drawn in float64 and then rounded to the array's dtype,
so the same seed gives the same weights (up to rounding) in a float32 and a float64 model.

Fans of a weight of shape (out, in, *kernel) (torch's ``_calculate_fan_in_and_fan_out``):

    fan_in  = in  * prod(kernel)
    fan_out = out * prod(kernel)

Kaiming / He:  std = gain / sqrt(fan),  gain = sqrt(2 / (1 + a**2)) (a = 0 for ReLU)
Xavier/Glorot: std = gain * sqrt(2 / (fan_in + fan_out))
Uniform variants draw from U(-bound, bound) with bound = sqrt(3) * std.

Bad arguments raise as PyTorch's do (ValueError; TypeError for a value that is no number),
with the argument's name: a fan-based init of a 1-D array, a `mode` other than fan_in/fan_out
(either case, as PyTorch), an unknown nonlinearity, U(a, b) with a > b or an infinite bound,
N(mean, std) with std < 0 or NaN.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "as_generator", "calculate_fan_in_and_fan_out", "calculate_gain",
    "uniform_", "normal_", "constant_", "zeros_", "ones_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
    "default_init_", "dirac_", "eye_", "orthogonal_", "trunc_normal_", "sparse_",
]


def as_generator(rng=None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator (returned as is), an int seed,
    a ``SeedSequence``, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"seed must be non-negative, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


def _array(tensor) -> np.ndarray:
    arr = tensor if isinstance(tensor, np.ndarray) else getattr(tensor, "data", None)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a NumPy array or a Parameter, got {type(tensor).__name__}")
    if arr.dtype.kind != "f":
        raise TypeError(f"can only initialise floating-point arrays, got dtype {arr.dtype}")
    return arr


def calculate_fan_in_and_fan_out(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel); at least 2-D."""
    shape = tuple(int(s) for s in getattr(shape, "shape", shape))
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out can not be computed for a shape {shape} with fewer "
                         "than 2 dimensions")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """Recommended gain for a nonlinearity (torch.nn.init.calculate_gain).

    linear/conv*/sigmoid: 1, tanh: 5/3, relu: sqrt(2), leaky_relu: sqrt(2 / (1 + a**2)) with
    a = param (default 0.01), selu: 3/4.
    """
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                        "conv_transpose2d", "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fan(shape, mode: str) -> int:
    """The fan `mode` names; as PyTorch, the mode in either case ("FAN_IN")."""
    low = mode.lower() if isinstance(mode, str) else mode
    if low not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    return fan_in if low == "fan_in" else fan_out


def _number(value, name: str, op: str) -> float:
    """`value` as a float; TypeError naming it when it is no real number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating,
                                                                      np.integer)):
        raise TypeError(f"{op}: {name} must be a number, got {value!r}")
    return float(value)


def _check_range(a, b, op: str) -> tuple[float, float]:
    """(a, b) of U(a, b): finite numbers with a <= b (PyTorch's uniform_ refuses the rest)."""
    a, b = _number(a, "a", op), _number(b, "b", op)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{op}: the bounds must be finite, got a={a}, b={b}")
    if a > b:
        raise ValueError(f"{op}: expects a <= b, got a={a} > b={b}")
    return a, b


def _check_std(std, op: str) -> float:
    """A standard deviation >= 0 (PyTorch's normal_ refuses a negative or NaN one)."""
    std = _number(std, "std", op)
    if not std >= 0:
        raise ValueError(f"{op}: std must be >= 0, got {std}")
    return std


def uniform_(tensor, a: float = 0.0, b: float = 1.0, rng=None):
    """Fill with samples of U(a, b) (finite a <= b, else ValueError)."""
    arr = _array(tensor)
    a, b = _check_range(a, b, "uniform_")
    arr[...] = as_generator(rng).uniform(a, b, size=arr.shape)
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0, rng=None):
    """Fill with samples of N(mean, std**2) (std >= 0, else ValueError)."""
    arr = _array(tensor)
    std = _check_std(std, "normal_")
    arr[...] = as_generator(rng).normal(_number(mean, "mean", "normal_"), std, size=arr.shape)
    return tensor


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  rng=None):
    """Fill with samples of N(mean, std**2) truncated to [a, b] (``torch.nn.init.trunc_normal_``;
    a and b are values, not multiples of std), by rejection as PyTorch: normal draws outside
    [a, b] drawn again when the interval holds more than 30% of the mass, else uniform
    proposals on [a, b] accepted with probability pdf(x) / pdf(mode). std > 0, finite a < b."""
    arr = _array(tensor)
    op = "trunc_normal_"
    mean, std = _number(mean, "mean", op), _check_std(std, op)
    a, b = _check_range(a, b, op)
    if not (std > 0 and a < b and math.isfinite(mean)):
        raise ValueError(f"{op}: needs std > 0, a < b and a finite mean, got mean={mean}, "
                         f"std={std}, a={a}, b={b}")
    gen = as_generator(rng)

    def cdf(v: float) -> float:
        return (1.0 + math.erf((v - mean) / (std * math.sqrt(2.0)))) / 2.0

    out = np.empty(arr.size)
    pending = np.arange(arr.size)
    normal_proposals = cdf(b) - cdf(a) > 0.3
    peak = max(a, min(mean, b))          # where the truncated density is largest
    while pending.size:
        if normal_proposals:
            x = gen.normal(mean, std, size=pending.size)
            ok = (x >= a) & (x <= b)
        else:
            x = gen.uniform(a, b, size=pending.size)
            log_ratio = -0.5 * ((x - mean) / std) ** 2 + 0.5 * ((peak - mean) / std) ** 2
            ok = np.log(gen.random(size=pending.size)) <= log_ratio
        out[pending[ok]] = x[ok]
        pending = pending[~ok]
    arr[...] = out.reshape(arr.shape)
    return tensor


def constant_(tensor, val: float):
    """Fill with `val` (a number: TypeError otherwise, as PyTorch)."""
    _array(tensor).fill(_number(val, "val", "constant_"))
    return tensor


def zeros_(tensor):
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1.0)


def _xavier_std(tensor, gain, op: str) -> float:
    """gain * sqrt(2 / (fan_in + fan_out)) (gain >= 0); an empty (0, 0, ...) weight has no fans
    to divide by (PyTorch's ZeroDivisionError): ValueError."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(_array(tensor).shape)
    if fan_in + fan_out == 0:
        raise ValueError(f"{op}: the weight of shape {_array(tensor).shape} has fan_in + fan_out "
                         f"= 0")
    gain = _number(gain, "gain", op)
    if not gain >= 0:  # (PyTorch's U(-b, b) or N(0, std) refuses a negative one)
        raise ValueError(f"{op}: gain must be >= 0, got {gain}")
    return gain * math.sqrt(2.0 / float(fan_in + fan_out))


def xavier_uniform_(tensor, gain: float = 1.0, rng=None):
    """Glorot uniform: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))."""
    bound = math.sqrt(3.0) * _xavier_std(tensor, gain, "xavier_uniform_")
    return uniform_(tensor, -bound, bound, rng)


def xavier_normal_(tensor, gain: float = 1.0, rng=None):
    """Glorot normal: N(0, std**2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    return normal_(tensor, 0.0, _xavier_std(tensor, gain, "xavier_normal_"), rng)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", rng=None):
    """He uniform: U(-b, b), b = sqrt(3) * gain / sqrt(fan), gain = calculate_gain(nonlinearity, a).

    With the defaults (a=0, leaky_relu) the gain is sqrt(2), i.e. b = sqrt(6 / fan_in).
    """
    arr = _array(tensor)
    fan = _fan(arr.shape, mode)
    if fan == 0:
        return tensor  # torch warns and leaves an empty tensor alone
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, rng)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", rng=None):
    """He normal: N(0, std**2), std = gain / sqrt(fan) (= sqrt(2 / fan_in) for ReLU)."""
    arr = _array(tensor)
    fan = _fan(arr.shape, mode)
    if fan == 0:
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std, rng)


def default_init_(weight, bias=None, rng=None):
    """PyTorch's default ``reset_parameters`` of Conv2d and Linear.

    weight: kaiming_uniform_ with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in));
    bias:   U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Both are drawn from the same generator, weight first.
    """
    gen = as_generator(rng)
    kaiming_uniform_(weight, a=math.sqrt(5), rng=gen)
    if bias is not None:
        fan_in, _ = calculate_fan_in_and_fan_out(_array(weight).shape)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound, gen)
    return weight


def dirac_(tensor, groups: int = 1):
    """``torch.nn.init.dirac_``: a convolution weight (out, in, *kernel) that passes input
    channels through unchanged. All zero except weight[g * out_g + d, d, centre] = 1 for each
    group g and d < min(out_g, in), out_g = out / groups (the centre index is size // 2 on
    each kernel axis)."""
    arr = _array(tensor)
    if arr.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_: only 3-, 4- and 5-D weights are supported, got shape {arr.shape}")
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1 \
            or arr.shape[0] % groups:
        raise ValueError(f"dirac_: groups must be a positive divisor of dim 0 "
                         f"({arr.shape[0]}), got {groups!r}")
    out_g = arr.shape[0] // groups
    arr.fill(0)
    centre = tuple(k // 2 for k in arr.shape[2:])
    for g in range(groups):
        for d in range(min(out_g, arr.shape[1])):
            arr[(g * out_g + d, d) + centre] = 1
    return tensor


def eye_(tensor):
    """``torch.nn.init.eye_``: the identity matrix in a 2-D weight (ones on the main diagonal of
    a rectangular one), so that a Linear layer passes as many inputs through as it can."""
    arr = _array(tensor)
    if arr.ndim != 2:
        raise ValueError(f"eye_: only 2-D weights are supported, got shape {arr.shape}")
    arr[...] = np.eye(*arr.shape)
    return tensor


def orthogonal_(tensor, gain: float = 1.0, rng=None):
    """``torch.nn.init.orthogonal_`` (Saxe et al., arXiv 1312.6120): a (semi-)orthogonal matrix
    times `gain`, the weight seen as (shape[0], rest) (at least 2-D). The Q of the QR
    decomposition of a N(0, 1) matrix (of its transpose when it is wide), its columns' signs
    those of R's diagonal so that Q is uniform over the orthogonal matrices (Mezzadri,
    arXiv math-ph/0609050). An empty weight is left alone."""
    arr = _array(tensor)
    if arr.ndim < 2:
        raise ValueError(f"orthogonal_: only weights of 2 or more dimensions are supported, got "
                         f"shape {arr.shape}")
    gain = _number(gain, "gain", "orthogonal_")
    if arr.size == 0:
        return tensor
    rows = arr.shape[0]
    cols = arr.size // rows
    flat = as_generator(rng).standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    arr[...] = (gain * q).reshape(arr.shape)
    return tensor


def sparse_(tensor, sparsity: float, std: float = 0.01, rng=None):
    """``torch.nn.init.sparse_`` (Martens 2010): a 2-D weight of N(0, std**2) values with
    ceil(sparsity * rows) zeros at random rows of each column. sparsity in [0, 1]."""
    arr = _array(tensor)
    if arr.ndim != 2:
        raise ValueError(f"sparse_: only 2-D weights are supported, got shape {arr.shape}")
    sparsity = _number(sparsity, "sparsity", "sparse_")
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparse_: sparsity must be in [0, 1], got {sparsity}")
    gen = as_generator(rng)
    normal_(arr, 0.0, std, gen)
    rows, cols = arr.shape
    zeros = math.ceil(sparsity * rows)
    for col in range(cols):
        arr[gen.permutation(rows)[:zeros], col] = 0
    return tensor
