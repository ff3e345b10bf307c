"""Tests of fastconv.losses: softmax / log_softmax, CrossEntropyLoss, MSELoss.

float64 comparisons with PyTorch use rtol 1e-12 (a handful of exp/log/sums, error ~1e-15);
float32 ones rtol 1e-6 (the same ops in single precision on inputs of magnitude ~3).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv.gradcheck import eval_numerical_gradient, rel_error
from fastconv.losses import CrossEntropyLoss, MSELoss, log_softmax, softmax


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
        num = eval_numerical_gradient(lambda v: CrossEntropyLoss(smoothing)(v, t), z.copy())
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
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        crit(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        crit(z, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        crit(z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        crit(z, np.array([0, -1, 2]))
    with pytest.raises(TypeError, match="integer"):
        crit(z, np.array([0.5, 1, 2]))
    # float labels are refused as PyTorch does, whole numbers too, with the conversion to make
    with pytest.raises(TypeError, match=r"float labels \(dtype float64, shape \(3,\)\); "
                                        r"convert them with targets.astype\(np.int64\)"):
        crit(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"float labels.*float32.*targets.argmax\(axis=1\)"):
        crit(z, np.eye(3, 4, dtype=np.float32))                       # one-hot rows
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
