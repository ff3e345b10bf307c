"""Tests of fastconv.gradcheck: the checker itself must pass correct gradients, flag wrong ones,
and leave the checked layer untouched."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import nn
from fastconv.gradcheck import eval_numerical_gradient, gradcheck_layer, gradcheck_model, rel_error


def test_rel_error():
    a = np.array([1.0, 2.0, 3.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, -a) == pytest.approx(1.0)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(a, a * (1 + 1e-8)) == pytest.approx(0.5e-8, rel=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        rel_error(a, a[:2])


def test_eval_numerical_gradient():
    x = np.random.default_rng(0).normal(size=(3, 4))
    x0 = x.copy()
    num = eval_numerical_gradient(lambda v: float((v ** 3).sum()), x)
    assert num.shape == x.shape
    assert rel_error(num, 3 * x0 ** 2) < 1e-9
    np.testing.assert_array_equal(x, x0)  # restored
    some = eval_numerical_gradient(lambda v: float((v ** 3).sum()), x, indices=[0, 5, 11])
    np.testing.assert_allclose(some, 3 * x0.reshape(-1)[[0, 5, 11]] ** 2, rtol=1e-8)
    with pytest.raises(ValueError, match="contiguous"):
        eval_numerical_gradient(lambda v: 0.0, x[:, :3])
    with pytest.raises(TypeError):
        eval_numerical_gradient(lambda v: 0.0, [1.0, 2.0])


class _BuggyLinear(nn.Linear):
    """Linear whose backward doubles the bias gradient."""

    def backward(self, grad_y, input_grad=True):
        gx = super().backward(grad_y, input_grad)
        self.bias.grad *= 2
        return gx


class _BuggyReLU(nn.ReLU):
    """ReLU whose backward lets the gradient through everywhere."""

    def backward(self, grad_y, input_grad=True):
        self._get_cache()
        return grad_y


def test_gradcheck_layer_passes_correct_and_flags_wrong_gradients():
    good = gradcheck_layer(nn.Linear(4, 3, rng=0), (5, 4), seed=1)
    assert set(good) == {"input", "weight", "bias"} and max(good.values()) < 1e-8
    bad = gradcheck_layer(_BuggyLinear(4, 3, rng=0), (5, 4), seed=1)
    assert bad["bias"] > 0.1 and bad["weight"] < 1e-8 and bad["input"] < 1e-8
    assert gradcheck_layer(_BuggyReLU(), (4, 6), seed=0)["input"] > 0.1
    only = gradcheck_layer(nn.Linear(4, 3, rng=0), (5, 4), params=["bias"], check_input=False)
    assert set(only) == {"bias"}
    with pytest.raises(ValueError, match="unknown parameter"):
        gradcheck_layer(nn.Linear(4, 3), (5, 4), params=["gamma"])


def test_gradcheck_layer_given_input_and_sparse_checks():
    conv = nn.Conv2d(3, 8, 3, rng=2)
    x = np.random.default_rng(3).normal(size=(2, 3, 6, 6)).astype(np.float32)
    errors = gradcheck_layer(conv, x, max_checks=10)
    assert max(errors.values()) < 1e-7


def test_gradcheck_leaves_the_layer_untouched():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False, rng=0), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.5, rng=1), nn.Linear(12, 2, rng=2))
    before = model.state_dict()
    errors = gradcheck_model(model, (4, 2, 4, 4), seed=3, max_checks=20)
    assert max(errors.values()) < 1e-6
    assert model.dtype == np.float32 and model.training
    after = model.state_dict()
    for k in before:
        assert after[k].dtype == before[k].dtype
        np.testing.assert_array_equal(after[k], before[k])  # incl. running stats, num_batches_tracked
    assert not model[4].frozen
    assert not any(p.grad.any() for p in model.parameters())


def test_gradcheck_of_a_model_in_bf16_mode_checks_its_float64_computation():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 2, rng=2)).to(precision="bf16")
    assert max(gradcheck_model(model, (3, 2, 4, 4), seed=1, max_checks=20).values()) < 1e-6
    assert max(gradcheck_layer(model[0], (2, 2, 5, 5), seed=2).values()) < 1e-6
    assert all(m.precision == "bf16" for m in model.modules())
    assert model.dtype == np.float32


def test_gradcheck_batchnorm_and_dropout_in_training_mode():
    layer = nn.Sequential(nn.Linear(6, 5, bias=False, rng=0), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.3, rng=1))
    errors = gradcheck_layer(layer, (8, 6), seed=4)
    assert max(errors.values()) < 1e-7


def test_gradcheck_model_flags_wrong_gradients():
    good = nn.Sequential(nn.Linear(5, 6, rng=0), nn.ReLU(), nn.Linear(6, 3, rng=1))
    errors = gradcheck_model(good, (4, 5), seed=0, max_checks=None)
    assert max(errors.values()) < 1e-7
    bad = nn.Sequential(nn.Linear(5, 6, rng=0), _BuggyReLU(), nn.Linear(6, 3, rng=1))
    errors = gradcheck_model(bad, (4, 5), seed=0, max_checks=None)
    assert errors["input"] > 1e-2 and errors["0.weight"] > 1e-2 and errors["2.weight"] < 1e-7
    x = np.random.default_rng(1).normal(size=(3, 5))
    with_targets = gradcheck_model(good, x, targets=np.array([0, 2, 1]), label_smoothing=0.1)
    assert max(with_targets.values()) < 1e-7


def test_robust_mode_steps_over_a_kink():
    # |v - 3e-7| has a kink inside [-1e-6, 1e-6]: the plain central difference at 0 is -0.3,
    # the true derivative -1.
    f = lambda v: float(abs(v[0] - 3e-7) + v[1] ** 2)
    x = np.array([0.0, 1.0])
    plain = eval_numerical_gradient(f, x, eps=1e-6)
    assert plain[0] == pytest.approx(-0.3, rel=1e-6)
    robust = eval_numerical_gradient(f, x, eps=1e-6, robust=True)
    np.testing.assert_allclose(robust, [-1.0, 2.0], rtol=1e-6)
    smooth = lambda v: float(np.sin(v).sum())
    y = np.array([0.3, -1.2])
    np.testing.assert_allclose(eval_numerical_gradient(smooth, y, robust=True),
                               eval_numerical_gradient(smooth, y), rtol=1e-8)


def test_atol_rtol_turn_the_errors_into_a_pass_or_a_gradcheck_error():
    # torch.autograd.gradcheck's criterion, |analytical - numerical| <= atol + rtol |numerical|
    # on every checked entry: a pass returns the errors as without tolerances, a failure
    # raises GradcheckError naming the tensor and its worst entry
    from fastconv.gradcheck import GradcheckError

    good = gradcheck_layer(nn.Linear(4, 3, rng=0), (5, 4), seed=1)
    assert gradcheck_layer(nn.Linear(4, 3, rng=0), (5, 4), seed=1, atol=1e-5, rtol=1e-3) == good
    assert gradcheck_layer(nn.Linear(4, 3, rng=0), (5, 4), seed=1, atol=1e-8) == good
    with pytest.raises(GradcheckError, match=r"gradcheck_layer: 'bias': 3 of 3 checked entries "
                                             r"differ by more than atol \+ rtol \|numerical\| "
                                             r"\(atol=1e-05, rtol=0.001\); worst: entry \d+"):
        gradcheck_layer(_BuggyLinear(4, 3, rng=0), (5, 4), seed=1, atol=1e-5, rtol=1e-3)
    assert issubclass(GradcheckError, RuntimeError)        # as torch's
    # loose enough, the doubled bias gradient passes: the tolerances are what is asked
    loose = gradcheck_layer(_BuggyLinear(4, 3, rng=0), (5, 4), seed=1, atol=0.0, rtol=1.01)
    assert loose["bias"] > 0.1
    with pytest.raises(GradcheckError,
                       match=r"gradcheck_model: 'input': .*\(atol=0\.0, rtol=0\.01\)"):
        gradcheck_model(nn.Sequential(nn.Linear(5, 6, rng=0), _BuggyReLU(),
                                      nn.Linear(6, 3, rng=1)), (4, 5), seed=0, rtol=0.01,
                        atol=0.0, max_checks=None)
    model = nn.Sequential(nn.Linear(5, 6, rng=0), nn.ReLU(), nn.Linear(6, 3, rng=1))
    assert max(gradcheck_model(model, (4, 5), seed=0, atol=1e-6, rtol=1e-4).values()) < 1e-7
    for bad in (-1e-3, float("nan"), float("inf"), "1e-3", True):
        with pytest.raises(ValueError, match=r"gradcheck_layer: atol must be a finite number "
                                             r">= 0"):
            gradcheck_layer(nn.Linear(4, 3), (5, 4), atol=bad)
        with pytest.raises(ValueError, match=r"gradcheck_model: rtol must be a finite number "
                                             r">= 0"):
            gradcheck_model(model, (4, 5), rtol=bad)


def test_atol_rtol_criterion_is_torchs():
    torch = pytest.importorskip("torch")
    # a layer whose weight gradient is off by a relative 1e-4: torch.autograd.gradcheck passes
    # it at rtol=1e-3 and fails it at rtol=1e-5 (atol=0); so does gradcheck_layer
    from fastconv.gradcheck import GradcheckError

    class Off(nn.Linear):
        def backward(self, grad_y, input_grad=True):
            gx = super().backward(grad_y, input_grad)
            self.weight.grad *= 1 + 1e-4
            return gx

    w = torch.tensor(np.random.default_rng(0).normal(size=(3, 4)))

    class OffFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight):
            ctx.save_for_backward(x, weight)
            return x @ weight.T

        @staticmethod
        def backward(ctx, gy):
            x, weight = ctx.saved_tensors
            return gy @ weight, (gy.T @ x) * (1 + 1e-4)

    x = torch.tensor(np.random.default_rng(1).normal(size=(5, 4)), requires_grad=True)
    wt = w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(OffFn.apply, (x, wt), atol=0, rtol=1e-3)
    assert not torch.autograd.gradcheck(OffFn.apply, (x, wt), atol=0, rtol=1e-5,
                                        raise_exception=False)
    layer = Off(4, 3, bias=False)
    layer.weight.data[...] = w.numpy()
    gradcheck_layer(layer, x.detach().numpy(), atol=0.0, rtol=1e-3)
    with pytest.raises(GradcheckError, match="'weight'"):
        gradcheck_layer(layer, x.detach().numpy(), atol=0.0, rtol=1e-5)
