"""Tests of fastconv.losses' element-wise losses (L1Loss, SmoothL1Loss, HuberLoss, BCELoss,
KLDivLoss, and MSELoss / BCEWithLogitsLoss on the same base) against torch.nn.functional's,
values and gradients, and of their use in fit().

float64 comparisons with PyTorch use rtol 1e-12 (a subtraction, a log and a sum, ~1e-15);
float32 ones rtol 1e-5 (sums of up to ~100 elements in single precision: ~1e-6 each way).
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

from fastconv import nn, optim
from fastconv.gradcheck import eval_numerical_gradient, rel_error
from fastconv.losses import (BCELoss, BCEWithLogitsLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss,
                             SmoothL1Loss)
from fastconv.training import evaluate, fit, predict


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# name -> (fastconv loss from a reduction, torch.nn.functional call (F, x, y, reduction),
#          kind of operands: "real" (any input and target), "prob" (both in [0, 1]),
#          "kl" / "kl_log" (any input, target probabilities / log-probabilities))
LOSSES = {
    "l1": (lambda r: L1Loss(reduction=r), lambda F, x, y, r: F.l1_loss(x, y, reduction=r), "real"),
    "mse": (lambda r: MSELoss(reduction=r), lambda F, x, y, r: F.mse_loss(x, y, reduction=r),
            "real"),
    "smooth_l1": (lambda r: SmoothL1Loss(reduction=r),
                  lambda F, x, y, r: F.smooth_l1_loss(x, y, reduction=r), "real"),
    "smooth_l1_beta0.3": (lambda r: SmoothL1Loss(reduction=r, beta=0.3),
                          lambda F, x, y, r: F.smooth_l1_loss(x, y, reduction=r, beta=0.3), "real"),
    "smooth_l1_beta0": (lambda r: SmoothL1Loss(reduction=r, beta=0.0),
                        lambda F, x, y, r: F.smooth_l1_loss(x, y, reduction=r, beta=0.0), "real"),
    "huber": (lambda r: HuberLoss(r), lambda F, x, y, r: F.huber_loss(x, y, reduction=r), "real"),
    "huber_delta2.5": (lambda r: HuberLoss(reduction=r, delta=2.5),
                       lambda F, x, y, r: F.huber_loss(x, y, reduction=r, delta=2.5), "real"),
    "bce": (lambda r: BCELoss(reduction=r),
            lambda F, x, y, r: F.binary_cross_entropy(x, y, reduction=r), "prob"),
    "bce_with_logits": (lambda r: BCEWithLogitsLoss(reduction=r),
                        lambda F, x, y, r: F.binary_cross_entropy_with_logits(x, y, reduction=r),
                        "prob_target"),
    "kl": (lambda r: KLDivLoss(reduction=r), lambda F, x, y, r: F.kl_div(x, y, reduction=r), "kl"),
    "kl_log_target": (lambda r: KLDivLoss(reduction=r, log_target=True),
                      lambda F, x, y, r: F.kl_div(x, y, reduction=r, log_target=True), "kl_log"),
}
SHAPES = [(7,), (5, 3), (2, 3, 4, 4), (0, 3), ()]


def _reductions(name):
    return ["mean", "sum", "none"] + (["batchmean"] if name.startswith("kl") else [])


def _operands(kind: str, shape: tuple, gen: np.random.Generator, dtype=np.float64):
    """Input and target for a loss of this kind, with the edge values it must handle: exact
    ties x = y (L1's kink), 0 and 1 in BCELoss's input and target, 0 in KLDivLoss' target."""
    x = gen.normal(size=shape) * 2
    y = gen.normal(size=shape) * 2
    if kind == "prob":
        x, y = gen.random(shape), gen.random(shape)
        if x.size >= 4:
            x.flat[:4] = [0.0, 1.0, 0.0, 1.0]
            y.flat[:4] = [0.0, 1.0, 1.0, 0.5]
    elif kind == "prob_target":
        y = gen.random(shape)
    elif kind == "kl":
        y = gen.random(shape)
        if y.size >= 2:
            y.flat[:2] = 0.0
    elif kind == "real" and x.size >= 2:
        y.flat[:2] = x.flat[:2]
    return np.asarray(x, dtype), np.asarray(y, dtype)


def _torch_loss(torch, name, x, y, reduction, go):
    """PyTorch's value and input gradient (torch warns about KLDivLoss' "mean": ignored)."""
    xt = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lt = LOSSES[name][1](torch.nn.functional, xt, torch.tensor(y), reduction)
    lt.backward(None if go is None else torch.tensor(go))
    return lt.detach().numpy(), xt.grad.numpy()


def _compare(torch, name, x, y, reduction, go=None, rtol=1e-12, atol=0.0):
    crit = LOSSES[name][0](reduction)
    value = crit(x, y)
    grad = crit.backward(go)
    want, want_grad = _torch_loss(torch, name, x, y, reduction, go)
    if reduction == "none":
        assert isinstance(value, np.ndarray) and value.dtype == x.dtype and value.shape == x.shape
    else:
        assert isinstance(value, float)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    np.testing.assert_allclose(value, want, rtol=rtol, atol=atol, err_msg=f"{name} value")
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol, err_msg=f"{name} grad")
    return value, grad


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "0d")
def test_matches_torch_float64(torch, name, shape):
    for reduction in _reductions(name):
        gen = np.random.default_rng(zlib.crc32(repr((name, shape, reduction)).encode()))
        x, y = _operands(LOSSES[name][2], shape, gen)
        go = gen.normal(size=shape) if reduction == "none" else None
        value, _ = _compare(torch, name, x, y, reduction, go)
        if reduction == "mean" and not x.size:
            assert np.isnan(value)  # as PyTorch: the mean of nothing


@pytest.mark.parametrize("name, reduction", [(n, r) for n in LOSSES for r in _reductions(n)])
def test_matches_torch_float32(torch, name, reduction):
    gen = np.random.default_rng(zlib.crc32(repr((name, reduction)).encode()))
    x, y = _operands(LOSSES[name][2], (6, 4, 3), gen, np.float32)
    go = gen.normal(size=x.shape).astype(np.float32) if reduction == "none" else None
    _compare(torch, name, x, y, reduction, go, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_scalar_grad_output_scales_like_torch(torch, name):
    gen = np.random.default_rng(zlib.crc32(name.encode()))
    x, y = _operands(LOSSES[name][2], (4, 5), gen)
    for reduction in ("mean", "sum"):
        _compare(torch, name, x, y, reduction, go=np.array(-2.5))
        _compare(torch, name, x, y, reduction, go=3)  # a Python number is a 0-d grad_output


def test_bce_weight_broadcasts_like_torch(torch):
    gen = np.random.default_rng(5)
    x, y = _operands("prob", (4, 3, 5), gen)
    for wshape in [(5,), (3, 1), (1, 3, 5), (4, 3, 5), ()]:
        w = gen.random(wshape) + 0.2
        for reduction in ("mean", "sum", "none"):
            crit = BCELoss(w, reduction=reduction)
            value = crit(x, y)
            go = gen.normal(size=x.shape) if reduction == "none" else None
            grad = crit.backward(go)
            xt = torch.tensor(x, requires_grad=True)
            lt = torch.nn.functional.binary_cross_entropy(xt, torch.tensor(y),
                                                          weight=torch.tensor(w),
                                                          reduction=reduction)
            lt.backward(None if go is None else torch.tensor(go))
            np.testing.assert_allclose(value, lt.detach().numpy(), rtol=1e-12)
            np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"BCELoss: weight of shape \(2,\) does not broadcast to "
                                         r"the input's shape \(4, 3, 5\)"):
        BCELoss(np.ones(2))(x, y)
    with pytest.raises(ValueError, match=r"weight of shape \(2, 4, 3, 5\) does not broadcast"):
        BCELoss(np.ones((2, 4, 3, 5)))(x, y)


def test_bce_clamps_logs_at_minus_100_as_torch(torch):
    # x in {0, 1} with every target: the loss is 100 (clamped log), 0, or 50 for y = 1/2, and
    # the gradient (x - y) / max(x (1 - x), 1e-12): 0 or +-1e12 (times y's weight)
    x = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1e-50, 1 - 1e-16])
    y = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0, 0.0])
    value, grad = _compare(torch, "bce", x, y, "none", go=np.ones(8))
    np.testing.assert_array_equal(value[:6], [0.0, 100.0, 50.0, 100.0, 0.0, 50.0])
    big = 1 / float(np.float32(1e-12))  # PyTorch's EPSILON is a float: 1 / 9.99999996e-13
    np.testing.assert_array_equal(grad[:6], [0.0, -big, -0.5 * big, big, 0.0, 0.5 * big])
    assert np.isfinite(BCELoss()(x, y))
    _compare(torch, "bce", x.astype(np.float32), y.astype(np.float32), "sum", rtol=1e-6)


def test_bce_refuses_values_outside_0_1():
    x = np.array([[0.2, 0.5], [0.7, 0.1]])
    for bad, where in [(1.5, (0, 1)), (-1e-9, (1, 0)), (np.nan, (1, 1)), (np.inf, (0, 0))]:
        xb = x.copy()
        xb[where] = bad
        with pytest.raises(ValueError, match=rf"BCELoss: every element of input must be in "
                                             rf"\[0, 1\].*got {bad} at index \({where[0]}, "
                                             rf"{where[1]}\)"):
            BCELoss()(xb, x)
        with pytest.raises(ValueError, match="every element of target must be in"):
            BCELoss()(x, xb)
    with pytest.raises(ValueError, match=r"input must be in \[0, 1\].*got 2.0 at index \(\)"):
        BCELoss()(np.array(2.0), np.array(1.0))


@pytest.mark.parametrize("name", [n for n in LOSSES if LOSSES[n][2] in ("real", "kl", "kl_log",
                                                                       "prob_target")])
def test_inf_and_nan_behave_as_torch(torch, name):
    x = np.array([np.inf, -np.inf, np.nan, 1.0, np.inf, -np.inf, 0.5, 2.0])
    y = np.array([1.0, 1.0, 1.0, np.nan, np.inf, np.inf, 0.0, -np.inf])
    if LOSSES[name][2] in ("kl", "prob_target"):
        y = np.array([0.5, 0.0, 0.5, np.nan, 0.0, 1.0, -0.5, np.inf])  # -0.5: nan, as torch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no NumPy warning
        for reduction in _reductions(name):
            _compare(torch, name, x, y, reduction, go=np.ones(8) if reduction == "none" else None)


def test_kl_div_treats_target_zero_as_torch_xlogy(torch):
    x = np.log(np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]))
    y = np.array([[0.0, 0.4, 0.6], [0.0, 0.0, 1.0]])
    value, grad = _compare(torch, "kl", x, y, "none", go=np.ones(x.shape))
    assert value[0, 0] == 0.0 and value[1, 1] == 0.0 and value[1, 2] == pytest.approx(-np.log(0.8))
    # batchmean is the mean over samples of KL(y || exp(x))
    kl = np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / np.exp(x)), 0), axis=1)
    assert KLDivLoss(reduction="batchmean")(x, y) == pytest.approx(kl.mean(), rel=1e-12)
    # with log_target, a target log-probability of -inf gives nan (0 * inf), as torch
    with np.errstate(divide="ignore"):
        log_y = np.log(y)
    assert np.isnan(KLDivLoss(reduction="batchmean", log_target=True)(x, log_y))
    _compare(torch, "kl_log_target", x, log_y, "batchmean")
    y = np.array([[0.1, 0.3, 0.6], [0.2, 0.2, 0.6]])
    kl = np.sum(y * np.log(y / np.exp(x)), axis=1)
    assert KLDivLoss(reduction="batchmean", log_target=True)(x, np.log(y)) == \
        pytest.approx(kl.mean(), rel=1e-12)


def test_empty_and_0d_reductions(torch):
    for shape, batchmean in [((0, 3), np.nan), ((3, 0), 0.0), ((0,), np.nan)]:
        x = np.zeros(shape)
        crit = KLDivLoss(reduction="batchmean")
        np.testing.assert_equal(crit(x, x), batchmean)
        assert crit.backward().shape == shape
        _compare(torch, "kl", x, x, "batchmean")
        assert np.isnan(L1Loss()(x, x)) and L1Loss(reduction="sum")(x, x) == 0.0
        assert L1Loss(reduction="none")(x, x).shape == shape
    # a 0-d input: batchmean is the sum (no batch axis), as torch
    _compare(torch, "kl", np.array(-0.3), np.array(0.5), "batchmean")
    for name in LOSSES:
        gen = np.random.default_rng(1)
        _compare(torch, name, *_operands(LOSSES[name][2], (), gen), "none", go=np.array(2.0))


def test_smooth_l1_and_huber_pieces():
    """The pieces of the formulas, by hand: quadratic inside beta / delta, linear outside."""
    d = np.array([-3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 3.0])
    zero = np.zeros_like(d)
    sl1 = SmoothL1Loss(reduction="none", beta=0.5)
    np.testing.assert_allclose(sl1(d, zero), [2.75, 0.75, 0.0625, 0, 0.0625, 0.75, 2.75])
    np.testing.assert_allclose(sl1.backward(np.ones(7)), [-1, -1, -0.5, 0, 0.5, 1, 1])
    hub = HuberLoss("none", 2.0)
    np.testing.assert_allclose(hub(d, zero), [4.0, 0.5, 0.03125, 0, 0.03125, 0.5, 4.0])
    np.testing.assert_allclose(hub.backward(np.ones(7)), [-2, -1, -0.25, 0, 0.25, 1, 2])
    # Huber(delta) = delta * SmoothL1(beta=delta); beta = 0 is L1
    gen = np.random.default_rng(3)
    x, y = gen.normal(size=(2, 50)) * 3
    np.testing.assert_allclose(HuberLoss(delta=1.7)(x, y),
                               1.7 * SmoothL1Loss(beta=1.7)(x, y), rtol=1e-14)
    assert SmoothL1Loss(beta=0)(x, y) == L1Loss()(x, y)
    assert L1Loss()(x, x) == 0.0
    crit = L1Loss(reduction="sum")
    crit(x, x)
    np.testing.assert_array_equal(crit.backward(), np.zeros_like(x))  # sign(0) = 0, as torch


def _away_from_kinks(name, gen, shape):
    """float64 operands whose |x - y| stays 1e-3 away from L1's, SmoothL1's and Huber's kinks
    (0, beta, delta), so that central differences with step 1e-6 are exact."""
    x, y = _operands(LOSSES[name][2], shape, gen)
    kind = LOSSES[name][2]
    if kind == "prob":
        x = 0.05 + 0.9 * gen.random(shape)  # log is smooth inside (0, 1)
    if kind == "real":
        d = x - y
        for kink in (0.0, 0.3, 1.0, 2.5):
            near = np.abs(np.abs(d) - kink) < 1e-2
            x[near] += 0.05
    return np.ascontiguousarray(x), y


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_numerically(name):
    gen = np.random.default_rng(zlib.crc32(name.encode()))
    x, y = _away_from_kinks(name, gen, (3, 4))
    for reduction in _reductions(name):
        go = gen.normal(size=x.shape) if reduction == "none" else np.array(1.3)
        crit = LOSSES[name][0](reduction)
        crit(x, y)
        analytic = crit.backward(go)

        def f(v):
            return float(np.sum(LOSSES[name][0](reduction)(v, y) * go))

        num = eval_numerical_gradient(f, x.copy())
        assert rel_error(analytic, num) < 1e-7, (name, reduction)
    w = gen.random(4) + 0.5
    crit = BCELoss(w)
    xp = 0.05 + 0.9 * gen.random((3, 4))
    crit(xp, y.clip(0, 1))
    num = eval_numerical_gradient(lambda v: BCELoss(w)(v, y.clip(0, 1)), xp.copy())
    assert rel_error(crit.backward(), num) < 1e-7


def test_property_against_torch(torch):
    """Random shapes, values, losses and reductions (hypothesis) against PyTorch, float64."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=80, deadline=None, derandomize=True)
    @hyp.given(name=st.sampled_from(list(LOSSES)),
               shape=st.lists(st.integers(0, 4), max_size=4).map(tuple),
               reduction=st.sampled_from(["mean", "sum", "none", "batchmean"]),
               scale=st.sampled_from([1e-3, 1.0, 50.0]), seed=st.integers(0, 2**16))
    def check(name, shape, reduction, scale, seed):
        if reduction not in _reductions(name):
            reduction = "mean"
        gen = np.random.default_rng(seed)
        x, y = _operands(LOSSES[name][2], shape, gen)
        if LOSSES[name][2] in ("real", "kl_log"):
            x, y = x * scale, y * scale
        go = gen.normal(size=shape) if reduction == "none" else None
        _compare(torch, name, x, y, reduction, go, rtol=1e-11, atol=1e-300)

    check()


def test_dtypes():
    x = np.array([[0.25, 0.5], [0.75, 1.0]])
    for dtype, want in [(np.float16, np.float32), (np.float32, np.float32), (">f8", np.float64),
                        (np.longdouble, np.float64)]:
        crit = L1Loss(reduction="none")
        assert crit(x.astype(dtype), np.zeros((2, 2), np.int64)).dtype == want
        assert crit.backward(np.ones((2, 2))).dtype == want
    # integer and bool targets are cast to the input's dtype; so is a float64 target
    assert MSELoss()(x.astype(np.float32), np.ones((2, 2), bool)) == pytest.approx(0.21875)
    assert BCELoss()(x, np.array([[0, 1], [1, 1]])) == pytest.approx(
        BCELoss()(x, np.array([[0.0, 1.0], [1.0, 1.0]])), rel=1e-15)
    for crit in (L1Loss(), SmoothL1Loss(), HuberLoss(), MSELoss(), BCELoss(), KLDivLoss(),
                 BCEWithLogitsLoss()):
        name = type(crit).__name__
        with pytest.raises(TypeError, match=rf"{name}: input must hold floats \(float32 or "
                                            rf"float64\), got dtype int64"):
            crit(np.zeros((2, 2), np.int64), x)
        with pytest.raises(TypeError, match=rf"{name}: input must hold floats.*got dtype bool"):
            crit(np.zeros(2, bool), x[0])
        with pytest.raises(TypeError, match=rf"{name}: target must hold .*, got dtype <U1"):
            crit(x, np.full((2, 2), "a"))
    with pytest.raises(TypeError, match=r"KLDivLoss: target must hold floats, got dtype int64"):
        KLDivLoss()(x, np.zeros((2, 2), np.int64))


@pytest.mark.parametrize("make", [L1Loss, SmoothL1Loss, HuberLoss, MSELoss, BCELoss, KLDivLoss,
                                  BCEWithLogitsLoss], ids=lambda m: m.__name__)
def test_argument_errors(make):
    name = make.__name__
    with pytest.raises(ValueError, match=rf"{name}: reduction must be 'mean', .*got 'mena'"):
        make(reduction="mena")
    if make is not KLDivLoss:
        with pytest.raises(ValueError, match=r"reduction must be 'mean', 'sum' or 'none', got "
                                             r"'batchmean'"):
            make(reduction="batchmean")
    crit = make()
    x = np.full((4, 3), 0.5)
    with pytest.raises(ValueError, match=rf"{name}: input of shape \(4, 3\) and target of shape "
                                         rf"\(4,\) differ; fastconv does not broadcast"):
        crit(x, x[:, 0])
    with pytest.raises(ValueError, match=r"input of shape \(4, 1\) and target of shape \(4,\)"):
        crit(x[:, :1], x[:, 0])
    with pytest.raises(RuntimeError, match=rf"{name}.backward called before forward"):
        make().backward()
    crit = make(reduction="none")
    crit(x, x)
    with pytest.raises(ValueError, match=r"needs grad_output of that shape"):
        crit.backward()
    with pytest.raises(ValueError, match=r"grad_output must be the loss's shape \(4, 3\).*\(3,\)"):
        crit.backward(np.ones(3))
    crit = make(reduction="sum")
    crit(x, x)
    with pytest.raises(ValueError, match=r"grad_output must be a real number.*shape \(4, 3\)"):
        crit.backward(np.ones((4, 3)))


def test_option_errors():
    for bad in (-0.1, float("nan"), "a", None, True):
        with pytest.raises(ValueError, match=rf"SmoothL1Loss: beta must be a number >= 0, got "
                                             rf"{bad!r}"):
            SmoothL1Loss(beta=bad)
    for bad in (0.0, -1.0, float("nan"), "a", False):
        with pytest.raises(ValueError, match=rf"HuberLoss: delta must be a number > 0, got "
                                             rf"{bad!r}"):
            HuberLoss(delta=bad)
    assert SmoothL1Loss(beta=np.float32(0.5)).beta == 0.5 and HuberLoss("sum", 3).delta == 3.0
    with pytest.raises(ValueError, match="KLDivLoss: reduction must be 'mean', 'batchmean', "
                                         "'sum' or 'none'"):
        KLDivLoss(reduction=None)
    assert KLDivLoss(log_target=1).log_target is True


def test_backward_twice_gives_the_same_gradient():
    gen = np.random.default_rng(0)
    for name, (make, _, kind) in LOSSES.items():
        x, y = _operands(kind, (3, 4), gen)
        crit = make("mean")
        crit(x, y)
        g = crit.backward()
        np.testing.assert_array_equal(crit.backward(), g, err_msg=name)
        np.testing.assert_array_equal(crit.backward(np.array(2.0)), 2 * g, err_msg=name)


# -- fit() with element-wise losses ---------------------------------------------------------------

def _linear_map_data(n=96, seed=0):
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(n, 4)).astype(np.float32)
    a = gen.normal(size=(4, 2)).astype(np.float32)
    return x, x @ a + np.float32(0.5)


@pytest.mark.parametrize("loss", [L1Loss(), HuberLoss(delta=0.5), SmoothL1Loss(beta=0.5)],
                         ids=lambda c: type(c).__name__)
def test_fit_learns_a_linear_map(loss):
    x, y = _linear_map_data()
    model = nn.Sequential(nn.Linear(4, 2, rng=0))
    h = fit(model, (x, y), 15, optimizer=optim.Adam(model.parameters(), lr=0.05), loss=loss,
            val=(x[:32], y[:32]), batch_size=16, seed=0, progress=False)
    losses = h.history["loss"]
    assert losses[-1] < 0.2 * losses[0], losses
    assert "accuracy" not in h.rows[-1] and "val_accuracy" not in h.rows[-1]
    # evaluate's loss is the loss over all the data (a "mean" per batch, weighted by its size)
    type_ = type(loss)
    kwargs = {"delta": 0.5} if type_ is HuberLoss else {"beta": 0.5} if type_ is SmoothL1Loss else {}
    whole = type_(**kwargs)(predict(model, x), y)
    assert evaluate(model, (x, y), loss=loss, batch_size=20)["loss"] == pytest.approx(whole,
                                                                                      rel=1e-5)


def test_fit_bce_after_sigmoid_and_kl_div_after_log_softmax():
    gen = np.random.default_rng(1)
    x = gen.normal(size=(128, 4)).astype(np.float32)
    labels = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < 0.5], 1).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.Sigmoid())
    h = fit(model, (x, labels), 8, optimizer=optim.Adam(model.parameters(), lr=0.05),
            loss=BCELoss(), batch_size=16, seed=0, progress=False)
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    assert ((predict(model, x) > 0.5) == (labels > 0.5)).mean() > 0.9
    # soft targets: a softmax of a linear map, learnt through LogSoftmax and KL (batchmean)
    logits = x @ gen.normal(size=(4, 3)).astype(np.float32)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.LogSoftmax(dim=1))
    crit = KLDivLoss(reduction="batchmean")
    h = fit(model, (x, soft), 10, optimizer=optim.Adam(model.parameters(), lr=0.05), loss=crit,
            batch_size=16, seed=0, progress=False)
    assert h.history["loss"][-1] < 0.3 * h.history["loss"][0]
    assert evaluate(model, (x, soft), loss=crit, batch_size=48)["loss"] == pytest.approx(
        KLDivLoss(reduction="batchmean")(predict(model, x), soft), rel=1e-5)


def test_fit_refuses_targets_up_front():
    x, y = _linear_map_data(32)
    model = nn.Sequential(nn.Linear(4, 2, rng=0), nn.Sigmoid())
    before = model.state_dict()["0.weight"].copy()
    with pytest.raises(ValueError, match=r"fit: train: BCELoss: every element of target must "
                                         r"be in \[0, 1\]"):
        fit(model, (x, y), 1, loss=BCELoss(), progress=False)
    with pytest.raises(TypeError, match=r"fit: train: KLDivLoss: target must hold floats, got "
                                        r"dtype int64"):
        fit(model, (x, np.zeros((32, 2), np.int64)), 1, loss=KLDivLoss(), progress=False)
    with pytest.raises(ValueError, match=r"fit: val: BCELoss: every element of target"):
        fit(model, (x, y.clip(0, 1)), 1, loss=BCELoss(), val=(x, y), progress=False)
    with pytest.raises(TypeError, match=r"evaluate: data: KLDivLoss: target must hold floats"):
        evaluate(model, (x, np.zeros(32, np.int64)), loss=KLDivLoss())
    # the shapes are the first batch's: (N,) targets for an (N, 1) output, named
    with pytest.raises(ValueError, match=r"L1Loss: input of shape \(8, 1\) and target of shape "
                                         r"\(8,\) differ"):
        fit(nn.Sequential(nn.Linear(4, 1, rng=0)), (x, y[:, 0]), 1, loss=L1Loss(),
            batch_size=8, progress=False)
    np.testing.assert_array_equal(model.state_dict()["0.weight"], before)


def test_exported_with_the_other_losses():
    import fastconv
    from fastconv import losses
    for name in ("L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "KLDivLoss", "MSELoss",
                 "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss"):
        assert name in losses.__all__ and getattr(fastconv.losses, name) is getattr(losses, name)
