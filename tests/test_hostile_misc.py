"""Hostile inputs to fastconv.init and fastconv.gradcheck (an outside reviewer's audit against
torch.nn.init and torch.autograd.gradcheck): each test is a defect that was found and fixed,
or a behaviour the audit checked and pins. Statistical checks use 2 * 10^5 samples: the
tolerances are over ten standard errors wide."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fastconv import gradcheck as G
from fastconv import init, nn


# -- init: bad arguments raise where torch's raise ---------------------------------------------

def _w(*shape):
    return np.zeros(shape, np.float32)


# (name, call on fastconv, call on torch (t: torch, z: torch.zeros), fastconv's error, pattern)
_REFUSED = [
    ("mode fan_x", lambda: init.kaiming_uniform_(_w(4, 3, 3, 3), mode="fan_x"),
     lambda t, z: t.nn.init.kaiming_uniform_(z(4, 3, 3, 3), mode="fan_x"), ValueError,
     "mode must be 'fan_in' or 'fan_out'"),
    ("kaiming 1-D", lambda: init.kaiming_normal_(_w(5)),
     lambda t, z: t.nn.init.kaiming_normal_(z(5)), ValueError, "fewer than 2 dimensions"),
    ("xavier 1-D", lambda: init.xavier_uniform_(_w(5)),
     lambda t, z: t.nn.init.xavier_uniform_(z(5)), ValueError, "fewer than 2 dimensions"),
    ("xavier empty fans", lambda: init.xavier_normal_(_w(0, 0)),      # (torch: ZeroDivisionError)
     lambda t, z: t.nn.init.xavier_normal_(z(0, 0)), ValueError, "fan_in \\+ fan_out = 0"),
    ("xavier negative gain", lambda: init.xavier_uniform_(_w(3, 4), gain=-1.0),
     lambda t, z: t.nn.init.xavier_uniform_(z(3, 4), gain=-1.0), ValueError, "gain must be >= 0"),
    ("nonlinearity", lambda: init.kaiming_normal_(_w(3, 4), nonlinearity="swish"),
     lambda t, z: t.nn.init.kaiming_normal_(z(3, 4), nonlinearity="swish"), ValueError,
     "unsupported nonlinearity 'swish'"),
    ("leaky slope str", lambda: init.calculate_gain("leaky_relu", "0.2"),
     lambda t, z: t.nn.init.calculate_gain("leaky_relu", "0.2"), ValueError, "negative_slope"),
    ("uniform a > b", lambda: init.uniform_(_w(3), 1.0, 0.0),          # (NumPy: "high - low < 0")
     lambda t, z: t.nn.init.uniform_(z(3), 1.0, 0.0), ValueError, "a <= b, got a=1.0 > b=0.0"),
    ("uniform inf", lambda: init.uniform_(_w(3), 0.0, math.inf),       # (NumPy: OverflowError)
     lambda t, z: t.nn.init.uniform_(z(3), 0.0, math.inf), ValueError, "bounds must be finite"),
    ("normal std < 0", lambda: init.normal_(_w(3), 0.0, -1.0),         # (NumPy: "scale < 0")
     lambda t, z: t.nn.init.normal_(z(3), 0.0, -1.0), ValueError, "std must be >= 0, got -1.0"),
    ("normal std NaN", lambda: init.normal_(_w(3), 0.0, math.nan),     # (was: silently NaN)
     lambda t, z: t.nn.init.normal_(z(3), 0.0, math.nan), ValueError, "std must be >= 0, got nan"),
    ("constant str", lambda: init.constant_(_w(3), "a"),              # (NumPy: ValueError)
     lambda t, z: t.nn.init.constant_(z(3), "a"), TypeError, "constant_: val must be a number"),
    ("dirac 2-D", lambda: init.dirac_(_w(3, 3)), lambda t, z: t.nn.init.dirac_(z(3, 3)),
     ValueError, "only 3-, 4- and 5-D"),
    ("dirac groups", lambda: init.dirac_(_w(4, 2, 3, 3), 3),
     lambda t, z: t.nn.init.dirac_(z(4, 2, 3, 3), 3), ValueError, "positive divisor of dim 0"),
    ("eye 3-D", lambda: init.eye_(_w(2, 3, 3)), lambda t, z: t.nn.init.eye_(z(2, 3, 3)),
     ValueError, "only 2-D"),
    ("orthogonal 1-D", lambda: init.orthogonal_(_w(4)), lambda t, z: t.nn.init.orthogonal_(z(4)),
     ValueError, "2 or more dimensions"),
    ("sparse 3-D", lambda: init.sparse_(_w(2, 3, 3), 0.5),
     lambda t, z: t.nn.init.sparse_(z(2, 3, 3), 0.5), ValueError, "only 2-D"),
    ("trunc_normal a > b", lambda: init.trunc_normal_(_w(3), a=2.0, b=-2.0),
     lambda t, z: t.nn.init.trunc_normal_(z(3), a=2.0, b=-2.0), ValueError, "a <= b"),
]


@pytest.mark.parametrize("name, ours, theirs, exc, pattern", _REFUSED, ids=[c[0] for c in _REFUSED])
def test_init_refuses_what_torch_refuses(torch, name, ours, theirs, exc, pattern):
    with pytest.raises((ValueError, TypeError, RuntimeError, ZeroDivisionError)), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs(torch, torch.zeros)
    with pytest.raises(exc, match=pattern):
        ours()


def test_trunc_normal_refuses_a_negative_std(torch):
    # (torch's draws values in [a, b] with the density of |std|; a negative std is a mistake)
    assert torch.nn.init.trunc_normal_(torch.zeros(100), std=-1.0).abs().max() <= 2
    with pytest.raises(ValueError, match="trunc_normal_: std must be >= 0, got -1.0"):
        init.trunc_normal_(_w(3), std=-1.0)
    with pytest.raises(ValueError, match="needs std > 0"):
        init.trunc_normal_(_w(3), std=0.0)


def test_init_mode_in_either_case_as_torch(torch):
    # torch lower-cases the mode: "FAN_OUT" is fan_out (fastconv refused it)
    w = init.kaiming_normal_(np.zeros((400, 50)), mode="FAN_OUT", nonlinearity="relu", rng=0)
    tw = torch.nn.init.kaiming_normal_(torch.zeros(400, 50, dtype=torch.float64), mode="FAN_OUT",
                                       nonlinearity="relu")
    want = math.sqrt(2 / 400)  # fan_out = 400
    np.testing.assert_allclose([w.std(), float(tw.std())], [want, want], rtol=0.03)


def test_init_argument_names_are_torchs(torch):
    import inspect

    for name in ("uniform_", "normal_", "trunc_normal_", "constant_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "orthogonal_", "sparse_", "calculate_gain"):
        theirs = [p for p in inspect.signature(getattr(torch.nn.init, name)).parameters
                  if p != "generator"]
        ours = [p for p in inspect.signature(getattr(init, name)).parameters if p != "rng"]
        assert ours == theirs, name


# -- init: the functions torch has that fastconv lacked -------------------------------------------

@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4)])
def test_eye_is_torchs(torch, shape):
    np.testing.assert_array_equal(init.eye_(np.full(shape, 7.0)),
                                  torch.nn.init.eye_(torch.full(shape, 7.0)).numpy())


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (6, 2, 2, 2), (1, 4), (4, 1)])
def test_orthogonal_is_semi_orthogonal_as_torchs(torch, shape):
    gain = 1.7
    w = init.orthogonal_(np.zeros(shape, np.float64), gain=gain, rng=3).reshape(shape[0], -1)
    tw = torch.nn.init.orthogonal_(torch.zeros(shape, dtype=torch.float64),
                                   gain=gain).reshape(shape[0], -1).numpy()
    for m in (w, tw):  # the rows (or columns, of a tall matrix) orthonormal, times gain
        gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(m.shape)), atol=1e-12)
    assert init.orthogonal_(np.zeros((0, 3)), rng=0).shape == (0, 3)  # (empty: left alone)
    a, b = init.orthogonal_(np.zeros(shape), rng=3), init.orthogonal_(np.zeros(shape), rng=3)
    np.testing.assert_array_equal(a, b)


def _truncated_moments(mean, std, a, b):
    """Mean and standard deviation of N(mean, std^2) truncated to [a, b]."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda v: (1 + math.erf(v / math.sqrt(2))) / 2  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    m = (pdf(alpha) - pdf(beta)) / z
    var = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - m * m
    return mean + std * m, std * math.sqrt(var)


@pytest.mark.parametrize("mean, std, a, b", [
    (0.0, 1.0, -2.0, 2.0),       # most of the mass inside: normal draws, rejected outside
    (0.5, 0.02, 0.45, 0.6),      # the ViT-style narrow bounds (values, not multiples of std)
    (0.0, 1.0, 1.5, 4.0),        # a tail: uniform proposals
    (3.0, 0.5, -1.0, 0.5),       # mean outside [a, b] (torch warns; the density is still right)
])
def test_trunc_normal_has_the_truncated_moments(torch, mean, std, a, b):
    w = init.trunc_normal_(np.zeros(200_000, np.float64), mean, std, a, b, rng=1)
    assert w.min() >= a and w.max() <= b
    want_mean, want_std = _truncated_moments(mean, std, a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tw = torch.nn.init.trunc_normal_(torch.zeros(200_000, dtype=torch.float64), mean, std,
                                         a, b).numpy()
    for sample in (w, tw):
        assert abs(sample.mean() - want_mean) < 0.02 * want_std
        assert sample.std() == pytest.approx(want_std, rel=0.02)


def test_sparse_zeros_per_column_as_torch(torch):
    w = init.sparse_(np.zeros((40, 30)), sparsity=0.23, std=0.5, rng=0)
    tw = torch.nn.init.sparse_(torch.zeros(40, 30, dtype=torch.float64), sparsity=0.23,
                               std=0.5).numpy()
    for m in (w, tw):  # ceil(0.23 * 40) = 10 zeros in each column
        assert ((m == 0).sum(axis=0) == 10).all()
    assert w[w != 0].std() == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ValueError, match="sparsity must be in"):
        init.sparse_(np.zeros((4, 3)), 1.5)


# -- gradcheck ------------------------------------------------------------------------------------

def _square(v):
    return float((v ** 2).sum())


def test_numerical_gradient_refuses_bad_functions_and_arrays():
    x = np.ones(3)
    with pytest.raises(TypeError, match="f must be a function of x, got int"):
        G.eval_numerical_gradient(3, x)
    with pytest.raises(TypeError, match=r"f must return a scalar, got an array of shape \(3,\)"):
        G.eval_numerical_gradient(lambda v: v * 2, x)
    with pytest.raises(TypeError, match="f must return a scalar, got str"):
        G.eval_numerical_gradient(lambda v: "1.0", x)
    # an integer x truncated every step: the result was garbage (500000 for 2)
    with pytest.raises(TypeError, match="x must be a floating-point array.*int64"):
        G.eval_numerical_gradient(_square, np.ones(3, np.int64))


def test_numerical_gradient_warns_for_float32_as_torch():
    # torch.autograd.gradcheck warns that a non-double input "will likely fail"; the float32
    # central difference of sum(x^2) at 1 is 1.9 (not 2) with the default step
    with pytest.warns(UserWarning, match="x is float32, not float64"):
        g = G.eval_numerical_gradient(_square, np.ones(3, np.float32))
    assert abs(g[0] - 2) > 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(G.eval_numerical_gradient(_square, np.ones(3)), 2, rtol=1e-8)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(eps=0), ValueError, "eps must be a finite number > 0, got 0"),   # (ZeroDivisionError)
    (dict(eps=-1e-6), ValueError, "eps must be a finite number > 0"),
    (dict(eps=math.nan), ValueError, "eps must be"),                        # (silently NaN)
    (dict(indices=[5]), ValueError, "index 5 is out of range for x of 3 entries"),
    (dict(indices=[-1]), ValueError, "index -1 is out of range"),           # (wrapped around)
    (dict(indices=[1.7]), TypeError, "indices must be ints"),               # (truncated to 1)
])
def test_numerical_gradient_step_and_indices(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        G.eval_numerical_gradient(_square, np.ones(3), **kwargs)


@pytest.mark.parametrize("fn", [G.gradcheck_layer, G.gradcheck_model])
@pytest.mark.parametrize("kwargs, exc, pattern", [
    # max_checks=0 checked nothing and reported every error as 0.0: any backward passed
    (dict(max_checks=0), ValueError, "max_checks must be None .* or an int >= 1, got 0"),
    (dict(max_checks=1.5), ValueError, "max_checks must be"),
    (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
    (dict(params="weight"), TypeError, "params must be a list of parameter names"),
    (dict(x_or_shape=(2, 3.5)), TypeError, r"x_or_shape must be .* positive ints, got \(2, 3\.5\)"),
    (dict(x_or_shape="2, 3"), TypeError, "x_or_shape must be"),
    (dict(x_or_shape=(0, 3)), ValueError, r"input shape must be positive ints, got \(0, 3\)"),
    (dict(x_or_shape=np.array([["a", "b", "c"]])), TypeError, "input must hold real numbers"),
])
def test_gradcheck_arguments(fn, kwargs, exc, pattern):
    kwargs = {"x_or_shape": (2, 3), **kwargs}
    with pytest.raises(exc, match=f"{fn.__name__}: (the )?{pattern}"):
        fn(nn.Linear(3, 2), **kwargs)


def test_gradcheck_needs_a_module_and_num_classes():
    with pytest.raises(TypeError, match="gradcheck_layer: expected a fastconv.nn.Module, got "
                                        "function"):
        G.gradcheck_layer(lambda x: x, (2, 3))
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        G.gradcheck_model(nn.Linear(3, 2), (2, 3), num_classes=0)


def test_gradcheck_still_catches_a_wrong_backward_with_one_check():
    class Doubled(nn.Linear):
        def backward(self, grad_y, input_grad=True):
            gx = super().backward(grad_y, input_grad)
            self.weight.grad *= 2
            return gx

    errors = G.gradcheck_layer(Doubled(3, 2), (2, 3), max_checks=1)
    assert errors["weight"] > 0.1 and errors["input"] < 1e-7


# -- MaxUnpool2d keeps its own copy of the indices ----------------------------------------------

def test_max_unpool_backward_ignores_changes_to_the_callers_indices(torch):
    # forward copies the indices even when they are int64 already: backward reads them, and
    # NumPy has no version counter to catch a caller changing them in between (torch's
    # autograd raises for an in-place change of a saved tensor)
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    pool = nn.MaxPool2d(2, return_indices=True)
    _, idx = pool(np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32))
    unpool = nn.MaxUnpool2d(2)
    unpool(x, idx)
    g = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    want = np.take_along_axis(g.reshape(1, 2, 16), idx.reshape(1, 2, 4), 2).reshape(x.shape)
    idx[:] = 0
    np.testing.assert_array_equal(unpool.backward(g), want)
