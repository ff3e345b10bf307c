"""Tests of fastconv.losses: softmax / log_softmax, CrossEntropyLoss (class weights,
ignore_index, label smoothing, every reduction, per-position and probability targets), NLLLoss,
BCEWithLogitsLoss, MSELoss.

float64 comparisons with PyTorch use rtol 1e-12 (a handful of exp/log/sums, error ~1e-15);
float32 ones rtol 1e-6 (the same ops in single precision on inputs of magnitude ~3).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fastconv.gradcheck import eval_numerical_gradient, rel_error
from fastconv.losses import (BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss, log_softmax,
                             softmax)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _logits(n=6, c=5, dtype=np.float64, seed=0, scale=3.0):
    gen = np.random.default_rng(seed)
    return (gen.normal(size=(n, c)) * scale).astype(dtype), gen.integers(0, c, size=n)


def test_softmax_properties():
    z, _ = _logits()
    p = softmax(z)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)
    assert (p > 0).all()
    np.testing.assert_allclose(np.log(p), log_softmax(z), rtol=1e-12)
    # shift invariance and axis argument
    np.testing.assert_allclose(softmax(z + 100.0), p, rtol=1e-12)
    np.testing.assert_allclose(softmax(z.T, axis=0), p.T, rtol=1e-12)
    np.testing.assert_allclose(log_softmax(z.T, axis=0), log_softmax(z).T, rtol=1e-12)
    assert softmax(z.astype(np.float32)).dtype == np.float32
    assert log_softmax(np.array([[1, 2]])).dtype == np.float32
    # byte-swapped float64 (e.g. read from a big-endian file) keeps its precision
    assert softmax(z.astype(">f8")).dtype == np.float64
    np.testing.assert_array_equal(log_softmax(z.astype(">f8")), log_softmax(z.astype(np.float64)))
    with pytest.raises(TypeError):
        softmax(np.array([["a"]]))


def test_softmax_huge_logits_finite():
    for dtype in (np.float32, np.float64):
        big = np.finfo(dtype).max / 4
        z = np.array([[big, 0.0, -big], [1e30, 1e30, -1e30], [-1e4, -1e4 - 1, -1e4 - 2]], dtype)
        p = softmax(z)
        lp = log_softmax(z)
        assert np.isfinite(p).all() and np.isfinite(lp[:, :2]).all()
        np.testing.assert_allclose(p[0], [1, 0, 0])
        np.testing.assert_allclose(p[1], [0.5, 0.5, 0])
        np.testing.assert_allclose(p[2], softmax(np.array([[0.0, -1.0, -2.0]]))[0], rtol=1e-6)
        crit = CrossEntropyLoss()
        loss = crit(z, np.array([2, 0, 1]))
        assert np.isfinite(loss) and loss > 1e29
        assert np.isfinite(crit.backward()).all()


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_matches_torch(torch, dtype, rtol, smoothing):
    z, t = _logits(n=7, c=4, dtype=dtype, seed=1)
    crit = CrossEntropyLoss(label_smoothing=smoothing)
    loss = crit(z, t)
    grad = crit.backward()
    zt = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(zt, torch.tensor(t), label_smoothing=smoothing)
    tl.backward()
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, tl.item(), rtol=rtol)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(log_softmax(z), torch.log_softmax(torch.tensor(z), 1).numpy(), rtol=rtol)
    np.testing.assert_allclose(softmax(z), torch.softmax(torch.tensor(z), 1).numpy(), rtol=rtol)


def test_cross_entropy_gradient_numerically():
    z, t = _logits(n=5, c=3, seed=2)
    for smoothing in (0.0, 0.2):
        crit = CrossEntropyLoss(label_smoothing=smoothing)
        crit(z, t)
        ana = crit.backward()
        num = eval_numerical_gradient(
            lambda v: CrossEntropyLoss(label_smoothing=smoothing)(v, t), z.copy())
        assert rel_error(ana, num) < 1e-8


def test_cross_entropy_fused_gradient_formula():
    z, t = _logits(n=4, c=6, seed=3)
    crit = CrossEntropyLoss()
    crit(z, t)
    onehot = np.eye(6)[t]
    np.testing.assert_allclose(crit.backward(), (softmax(z) - onehot) / 4, rtol=1e-12)
    # known value: uniform logits give log(C)
    assert crit(np.zeros((3, 6)), np.array([0, 1, 5])) == pytest.approx(np.log(6))


def test_cross_entropy_validation():
    crit = CrossEntropyLoss()
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"shape \(\) \(the logits' \(4,\) without"):
        crit(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        crit(z, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\) or equal ignore_index \(-100\), got 4"):
        crit(z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\[0, 4\).*got -1"):
        crit(z, np.array([0, -1, 2]))
    with pytest.raises(TypeError, match="integer"):
        crit(z, np.array([0.5, 1, 2]))
    # float labels are refused as PyTorch does, whole numbers too, with the conversion to make
    with pytest.raises(TypeError, match=r"float labels \(dtype float64, shape \(3,\)\); "
                                        r"convert indices with targets.astype\(np.int64\)"):
        crit(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"must be floats, got dtype int64.*argmax"):
        crit(z, np.eye(3, 4, dtype=np.int64))                         # one-hot rows
    assert crit(z, np.array([0, 1, 2], np.uint8)) == pytest.approx(np.log(4))
    for bad in (1.5, "a", None):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            CrossEntropyLoss(label_smoothing=bad)
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()


def test_mse_matches_torch(torch):
    gen = np.random.default_rng(4)
    p = gen.normal(size=(3, 4))
    y = gen.normal(size=(3, 4))
    crit = MSELoss()
    loss = crit(p, y)
    pt = torch.tensor(p, requires_grad=True)
    tl = torch.nn.functional.mse_loss(pt, torch.tensor(y))
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(crit.backward(), pt.grad.numpy(), rtol=1e-12)


def test_mse_values_and_validation():
    crit = MSELoss()
    assert crit(np.array([1.0, 3.0]), np.array([0.0, 0.0])) == pytest.approx(5.0)
    np.testing.assert_allclose(crit.backward(), [1.0, 3.0])
    g = crit.backward()
    num = eval_numerical_gradient(lambda v: MSELoss()(v, np.zeros(2)), np.array([1.0, 3.0]))
    assert rel_error(g, num) < 1e-8
    assert MSELoss()(np.ones(3, np.float32), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="differ"):
        crit(np.zeros(3), np.zeros(4))
    with pytest.raises(RuntimeError):
        MSELoss().backward()


# -- CrossEntropyLoss: PyTorch's whole interface ------------------------------------------------

def _targets(kind, logits_shape, gen, dtype):
    """Targets of `kind` for logits of `logits_shape`: class indices (some or all ignored, or
    an ignore_index inside [0, C)) or class probabilities."""
    C = logits_shape[0] if len(logits_shape) == 1 else logits_shape[1]
    index_shape = () if len(logits_shape) == 1 else logits_shape[:1] + logits_shape[2:]
    if kind == "probs":
        return gen.random(logits_shape).astype(dtype), -100
    t = gen.integers(0, C, index_shape)
    if kind == "some_ignored" and t.size:
        t.flat[::3] = -100
    elif kind == "all_ignored":
        t = np.full(index_shape, -100)
    elif kind == "ignore_a_class":
        return t, 1
    return t, -100


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 2, 3), (4, 3, 5), (5,), (0, 4), (2, 3, 0)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["index", "some_ignored", "all_ignored", "ignore_a_class",
                                  "probs"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_matches_torch_everywhere(torch, shape, kind, weighted, reduction,
                                               smoothing):
    """Value and logits gradient against torch.nn.functional.cross_entropy in float64: every
    target kind, class weights, ignore_index, reduction and smoothing, on (N, C), per-position
    (N, C, d...), unbatched (C,) and empty logits; "none" backward with a random grad_output."""
    gen = np.random.default_rng(zlib.crc32(repr((shape, kind, weighted, reduction)).encode()))
    C = shape[0] if len(shape) == 1 else shape[1]
    _compare_with_torch(torch, gen, shape, kind, gen.random(C) + 0.2 if weighted else None,
                        reduction, smoothing, scale=3.0, rtol=1e-10)


def _compare_with_torch(torch, gen, shape, kind, weight, reduction, smoothing, scale, rtol):
    """CrossEntropyLoss's value and logits gradient against torch's cross_entropy on random
    logits of `shape` and targets of `kind` ("none": backward of a random grad_output)."""
    z = gen.normal(size=shape) * scale
    t, ignore = _targets(kind, shape, gen, np.float64)
    crit = CrossEntropyLoss(weight, ignore_index=ignore, reduction=reduction,
                            label_smoothing=smoothing)
    value = crit(z, t)
    go = gen.normal(size=np.shape(value)) if reduction == "none" else None
    grad = crit.backward(go)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(
        zt, torch.tensor(t), weight=None if weight is None else torch.tensor(weight),
        ignore_index=ignore, reduction=reduction, label_smoothing=smoothing)
    lt.backward(None if go is None else torch.tensor(go))
    if reduction == "none":
        assert isinstance(value, np.ndarray) and value.shape == tuple(lt.shape)
    else:
        assert isinstance(value, float)
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=rtol, atol=1e-12)
    assert grad.shape == z.shape and grad.dtype == np.float64
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("kind", ["some_ignored", "probs"])
def test_cross_entropy_float32_matches_torch(torch, kind):
    gen = np.random.default_rng(5)
    z = (gen.normal(size=(16, 7, 3, 3)) * 3).astype(np.float32)
    t, ignore = _targets(kind, z.shape, gen, np.float32)
    w = (gen.random(7) + 0.5).astype(np.float32)
    crit = CrossEntropyLoss(w, ignore_index=ignore, label_smoothing=0.1)
    value = crit(z, t)
    grad = crit.backward()
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(t), weight=torch.tensor(w),
                                           ignore_index=ignore, label_smoothing=0.1)
    lt.backward()
    assert grad.dtype == np.float32
    assert value == pytest.approx(lt.item(), rel=1e-5)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["some_ignored", "probs"])
def test_cross_entropy_general_gradient_numerically(kind):
    gen = np.random.default_rng(6)
    z = gen.normal(size=(3, 4, 2, 2)) * 2
    t, ignore = _targets(kind, z.shape, gen, np.float64)
    w = gen.random(4) + 0.3
    for reduction in ("mean", "sum"):
        make = lambda: CrossEntropyLoss(w, ignore_index=ignore, reduction=reduction,
                                        label_smoothing=0.2)
        crit = make()
        crit(z, t)
        ana = crit.backward()
        num = eval_numerical_gradient(lambda v: make()(v, t), z.copy())
        assert rel_error(ana, num) < 1e-8


def test_cross_entropy_common_case_agrees_with_the_general_one():
    """The unweighted path with nothing ignored takes fewer passes; unit weights and an
    ignore_index no target uses go through the general one: the same numbers to rounding."""
    gen = np.random.default_rng(7)
    z = gen.normal(size=(9, 6)) * 3
    t = gen.integers(0, 6, 9)
    for reduction in ("mean", "sum", "none"):
        fast = CrossEntropyLoss(reduction=reduction, label_smoothing=0.2)
        general = CrossEntropyLoss(np.ones(6), reduction=reduction, label_smoothing=0.2)
        np.testing.assert_allclose(fast(z, t), general(z, t), rtol=1e-13)
        go = np.ones(9) if reduction == "none" else None
        np.testing.assert_allclose(fast.backward(go), general.backward(go), rtol=1e-12,
                                   atol=1e-15)


def test_cross_entropy_one_hot_probabilities_give_the_index_gradient_bit_for_bit():
    gen = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        z = (gen.normal(size=(13, 10)) * 3).astype(dtype)
        t = gen.integers(0, 10, 13)
        for reduction in ("mean", "sum"):
            index, soft = CrossEntropyLoss(reduction=reduction), CrossEntropyLoss(reduction=reduction)
            index(z, t)
            soft(z, np.eye(10, dtype=dtype)[t])
            assert np.array_equal(index.backward(), soft.backward())


def test_cross_entropy_ignored_positions_count_for_nothing():
    gen = np.random.default_rng(9)
    z = gen.normal(size=(6, 4))
    t = np.array([0, 3, -100, 2, -100, 1])
    crit = CrossEntropyLoss()
    value = crit(z, t)
    grad = crit.backward()
    keep = t != -100
    sub = CrossEntropyLoss()
    assert value == pytest.approx(sub(z[keep], t[keep]), rel=1e-14)
    np.testing.assert_allclose(grad[keep], sub.backward(), rtol=1e-14)
    assert not grad[~keep].any()
    # every position ignored: the mean is nan (0 / 0) and its gradient zero, as PyTorch
    crit = CrossEntropyLoss(ignore_index=5)
    assert np.isnan(crit(z, np.full(6, 5)))
    assert not crit.backward().any()


def test_cross_entropy_grad_output_scales():
    gen = np.random.default_rng(10)
    z = gen.normal(size=(5, 3))
    t = gen.integers(0, 3, 5)
    for reduction in ("mean", "sum"):
        crit = CrossEntropyLoss(reduction=reduction)
        crit(z, t)
        np.testing.assert_allclose(crit.backward(2.5), 2.5 * crit.backward(), rtol=1e-15)
    crit = CrossEntropyLoss(reduction="none")
    per = crit(z, t)
    go = gen.normal(size=5)
    full = CrossEntropyLoss(reduction="sum")
    full(z, t)
    np.testing.assert_allclose(per.sum(), full(z, t), rtol=1e-14)
    np.testing.assert_allclose(crit.backward(np.ones(5)), full.backward(), rtol=1e-15)
    np.testing.assert_allclose(crit.backward(go), full.backward() * go[:, None], rtol=1e-14)


def test_cross_entropy_new_argument_checks():
    z = np.zeros((3, 4))
    with pytest.raises(TypeError, match=r"weight must be a 1-D array.*label_smoothing is a keyword"):
        CrossEntropyLoss(0.1)
    with pytest.raises(ValueError, match=r"one value per class, shape \(4,\).*got \(3,\)"):
        CrossEntropyLoss(np.ones(3))(z, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="weight must be a 1-D array of real"):
        CrossEntropyLoss(np.array(["a", "b"]))
    for bad in (1.5, True, "x", None):
        with pytest.raises(TypeError, match="ignore_index must be an int"):
            CrossEntropyLoss(ignore_index=bad)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"shape \(3, 0\): no classes \(C = 0\)"):
        CrossEntropyLoss()(np.zeros((3, 0)), np.zeros(3, int))
    with pytest.raises(ValueError, match="0-d"):
        CrossEntropyLoss()(np.float64(1.0), np.array(0))
    with pytest.raises(ValueError, match=r"index targets must have shape \(3, 5\)"):
        CrossEntropyLoss()(np.zeros((3, 4, 5)), np.zeros((3, 4), int))
    crit = CrossEntropyLoss(reduction="none")
    crit(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"backward needs grad_output of that shape.*\(3,\)"):
        crit.backward()
    with pytest.raises(ValueError, match=r"grad_output must be the loss's shape \(3,\).*\(4,\)"):
        crit.backward(np.ones(4))
    crit = CrossEntropyLoss()
    crit(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"grad_output must be a real number.*shape \(3,\)"):
        crit.backward(np.ones(3))


def test_cross_entropy_property_against_torch(torch):
    """Random shapes, targets, weights and options (hypothesis) against PyTorch, float64."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=60, deadline=None, derandomize=True)
    @hyp.given(n=st.integers(0, 5), c=st.integers(1, 6), extra=st.lists(st.integers(1, 3), max_size=2),
               kind=st.sampled_from(["index", "some_ignored", "probs"]), weighted=st.booleans(),
               reduction=st.sampled_from(["mean", "sum", "none"]),
               smoothing=st.sampled_from([0.0, 0.05, 1.0]), seed=st.integers(0, 2**16))
    def check(n, c, extra, kind, weighted, reduction, smoothing, seed):
        gen = np.random.default_rng(seed)
        _compare_with_torch(torch, gen, (n, c, *extra), kind,
                            gen.random(c) * 2 if weighted else None, reduction, smoothing,
                            scale=4.0, rtol=1e-9)

    check()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_reductions_match_torch(torch, reduction):
    gen = np.random.default_rng(11)
    p = gen.normal(size=(3, 4, 2))
    y = gen.normal(size=(3, 4, 2))
    crit = MSELoss(reduction=reduction)
    value = crit(p, y)
    go = gen.normal(size=p.shape) if reduction == "none" else None
    grad = crit.backward(go)
    pt = torch.tensor(p, requires_grad=True)
    lt = torch.nn.functional.mse_loss(pt, torch.tensor(y), reduction=reduction)
    lt.backward(None if go is None else torch.tensor(go))
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="reduction must be"):
        MSELoss(reduction="mena")
    assert MSELoss(reduction="sum")(np.zeros(0), np.zeros(0)) == 0.0
    with pytest.raises(TypeError, match="target must hold real numbers"):
        MSELoss()(np.zeros(2), np.array(["a", "b"]))


# -- BCEWithLogitsLoss --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 4), (7,), (0, 3)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weights", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "weight", "pos_weight", "both"])
def test_bce_with_logits_matches_torch(torch, shape, reduction, weights):
    gen = np.random.default_rng(zlib.crc32(repr((shape, reduction, weights)).encode()))
    x = gen.normal(size=shape) * 5
    if x.size:
        x.flat[0], x.flat[-1] = 80.0, -90.0          # sigmoid saturates: still finite
    y = gen.random(shape)
    w = gen.random(shape[-1:]) + 0.1 if weights[0] else None
    pw = gen.random(shape[-1:]) * 3 if weights[1] else None
    crit = BCEWithLogitsLoss(w, reduction=reduction, pos_weight=pw)
    value = crit(x, y)
    go = gen.normal(size=shape) if reduction == "none" else None
    grad = crit.backward(go)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.binary_cross_entropy_with_logits(
        xt, torch.tensor(y), weight=None if w is None else torch.tensor(w),
        pos_weight=None if pw is None else torch.tensor(pw), reduction=reduction)
    lt.backward(None if go is None else torch.tensor(go))
    assert np.all(np.isfinite(value)) or (reduction == "mean" and not x.size)
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_bce_with_logits_float32_and_gradient_numerically(torch):
    gen = np.random.default_rng(12)
    x = (gen.normal(size=(16, 5)) * 4).astype(np.float32)
    y = (gen.random((16, 5)) > 0.5).astype(np.float32)
    pw = np.array([1.0, 2.0, 0.5, 3.0, 1.0], np.float32)
    crit = BCEWithLogitsLoss(pos_weight=pw)
    value = crit(x, y)
    grad = crit.backward()
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.binary_cross_entropy_with_logits(xt, torch.tensor(y),
                                                              pos_weight=torch.tensor(pw))
    lt.backward()
    assert grad.dtype == np.float32
    assert value == pytest.approx(lt.item(), rel=1e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-8)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    w = gen.random(5) + 0.5
    for reduction in ("mean", "sum"):
        make = lambda: BCEWithLogitsLoss(w, reduction=reduction, pos_weight=pw.astype(np.float64))
        crit = make()
        crit(x64, y64)
        num = eval_numerical_gradient(lambda v: make()(v, y64), x64.copy())
        assert rel_error(crit.backward(), num) < 1e-8


def test_bce_with_logits_argument_checks():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"input of shape \(4, 3\) and target of shape \(4,\) differ"):
        BCEWithLogitsLoss()(x, np.zeros(4))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(2,\) does not broadcast to the "
                                         r"input's shape \(4, 3\)"):
        BCEWithLogitsLoss(pos_weight=np.ones(2))(x, x)
    with pytest.raises(ValueError, match=r"weight of shape \(2, 4, 3\) does not broadcast"):
        BCEWithLogitsLoss(np.ones((2, 4, 3)))(x, x)
    with pytest.raises(TypeError, match="target must hold real numbers"):
        BCEWithLogitsLoss()(x, np.full((4, 3), "a"))
    with pytest.raises(ValueError, match="reduction must be"):
        BCEWithLogitsLoss(reduction="batchmean")
    crit = BCEWithLogitsLoss(reduction="none")
    crit(x, x)
    with pytest.raises(ValueError, match=r"needs grad_output of that shape"):
        crit.backward()
    with pytest.raises(RuntimeError, match="before forward"):
        BCEWithLogitsLoss().backward()
    # an infinite logit: nan, as PyTorch, and no warning (the suite turns warnings into errors)
    assert np.isnan(BCEWithLogitsLoss()(np.array([np.inf, -np.inf]), np.array([1.0, 0.0])))


# -- NLLLoss --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 2, 3), (5,), (0, 4)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["index", "some_ignored", "all_ignored", "ignore_a_class"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_matches_torch(torch, shape, kind, weighted, reduction):
    gen = np.random.default_rng(zlib.crc32(repr((shape, kind, weighted, reduction)).encode()))
    z = log_softmax(gen.normal(size=shape) * 2, axis=0 if len(shape) == 1 else 1)
    t, ignore = _targets(kind, shape, gen, np.float64)
    C = shape[0] if len(shape) == 1 else shape[1]
    w = gen.random(C) + 0.2 if weighted else None
    crit = NLLLoss(w, ignore_index=ignore, reduction=reduction)
    value = crit(z, t)
    go = gen.normal(size=np.shape(value)) if reduction == "none" else None
    grad = crit.backward(go)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.nll_loss(zt, torch.tensor(t),
                                      weight=None if w is None else torch.tensor(w),
                                      ignore_index=ignore, reduction=reduction)
    lt.backward(None if go is None else torch.tensor(go))
    np.testing.assert_allclose(value, lt.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert grad.shape == z.shape
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_log_softmax_layer_then_nll_is_cross_entropy():
    from fastconv import nn
    gen = np.random.default_rng(13)
    z = gen.normal(size=(7, 5, 3)) * 3
    t = gen.integers(0, 5, (7, 3))
    w = gen.random(5) + 0.5
    layer, nll = nn.LogSoftmax(1), NLLLoss(w, reduction="sum")
    ce = CrossEntropyLoss(w, reduction="sum")
    assert nll(layer(z), t) == pytest.approx(ce(z, t), rel=1e-13)
    np.testing.assert_allclose(layer.backward(nll.backward()), ce.backward(), rtol=1e-12,
                               atol=1e-15)


def test_nll_loss_checks():
    with pytest.raises(ValueError, match=r"NLLLoss: targets must be in \[0, 3\)"):
        NLLLoss()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match=r"NLLLoss: targets must be integer class indices, got "
                                        r"float labels"):
        NLLLoss()(np.zeros((2, 3)), np.zeros((2, 3)))      # no probability targets in NLLLoss
    with pytest.raises(ValueError, match=r"index targets must have shape \(2,\) \(the input's "):
        NLLLoss()(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        NLLLoss(ignore_index=None)
    with pytest.raises(RuntimeError, match="before forward"):
        NLLLoss().backward()


@pytest.mark.parametrize("loss", ["NLLLoss", "CrossEntropyLoss"])
def test_mean_over_zero_weights_leaves_ignored_rows_zero_as_torch(torch, loss):
    """The kept targets all of weight 0 and some ignored: the mean is nan (0 / 0), the kept
    rows' gradient nan, the ignored rows' 0, as PyTorch's (they had nan too)."""
    import fastconv.losses as FL

    z = np.random.default_rng(0).normal(size=(4, 3))
    t = np.array([1, 0, 0, 2])  # class 1 ignored, class 0 weighs 0
    w = np.array([0.0, 1.0, 0.0])
    crit = getattr(FL, loss)(w, ignore_index=1)
    value, grad = crit(z, t), crit.backward()
    zt = torch.tensor(z, requires_grad=True)
    lt = getattr(torch.nn, loss)(weight=torch.tensor(w), ignore_index=1)(zt, torch.tensor(t))
    lt.backward()
    assert np.isnan(value) and np.isnan(lt.item())
    np.testing.assert_array_equal(grad, zt.grad.numpy())  # (nan where torch has nan)
    assert np.all(grad[0] == 0) and np.isnan(grad[1:]).any()
