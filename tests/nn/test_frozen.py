"""Tests of frozen parameters (Parameter.requires_grad, Module.requires_grad_): the kernels are
not asked for their gradients (output_mask spied), backward stops before layers that need no
gradient, every optimiser leaves them (and keeps no state for them, as torch.optim), and a
model with PyTorch's frozen parameters trains to PyTorch's weights."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from fastconv import functional as F
from fastconv import nn, optim
from fastconv import reference as R
from fastconv.gradcheck import gradcheck_layer


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _spy(monkeypatch, module, names):
    """Record (name, output_mask) of each call of module.<name> for `names`."""
    calls = []
    for name in names:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, kwargs.get("output_mask")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


def test_requires_grad_flag_basics():
    p = nn.Parameter(np.zeros(3))
    assert p.requires_grad and "requires_grad" not in repr(p)
    assert not nn.Parameter(np.zeros(3), requires_grad=False).requires_grad
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2), nn.Linear(2, 2)))
    assert model[1].requires_grad_(False) is model[1]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        "1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias"]
    assert "requires_grad=False" in repr(model[1][0].weight)
    assert model.num_parameters() == 20 + 4 + 6 and model.num_parameters(trainable_only=True) == 20
    model.requires_grad_()
    assert all(p.requires_grad for p in model.parameters())
    # Not part of a state dict (as torch); kept by copies and pickles.
    model[0].weight.requires_grad = False
    sd = model.state_dict()
    assert list(sd) == list(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(
        nn.BatchNorm2d(2), nn.Linear(2, 2))).state_dict())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not clone[0].weight.requires_grad and clone[0].bias.requires_grad
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2), nn.Linear(2, 2)))
    fresh.load_state_dict(sd)
    assert fresh[0].weight.requires_grad


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_kernels_are_not_asked_for_frozen_gradients(backend, monkeypatch):
    ops = F if backend == "fast" else R
    calls = _spy(monkeypatch, ops, ["conv2d_backward", "linear_backward"])
    conv = nn.Conv2d(2, 3, 3, rng=0).set_backend(backend)
    conv.weight.requires_grad = False
    conv.bias.grad[...] = 5  # (accumulated, so 5 + the gradient)
    conv.weight.grad[...] = 7  # untouched: no gradient is added
    x = np.random.default_rng(0).normal(size=(2, 2, 5, 5)).astype(np.float32)
    y = conv(x)
    gx = conv.backward(np.ones_like(y))
    assert calls == [("conv2d_backward", (True, False, True))] and gx.shape == x.shape
    np.testing.assert_array_equal(conv.weight.grad, 7)
    np.testing.assert_allclose(conv.bias.grad, 5 + 2 * 9, rtol=1e-6)
    calls.clear()
    assert conv.backward(np.ones_like(y), input_grad=False) is None
    assert calls == [("conv2d_backward", (False, False, True))]
    conv.requires_grad_(False)
    calls.clear()
    assert conv.backward(np.ones_like(y), input_grad=False) is None and calls == []
    lin = nn.Linear(4, 3, rng=1).set_backend(backend)
    lin.bias.requires_grad = False
    lin.zero_grad()
    lin.backward(np.ones_like(lin(np.ones((2, 4), np.float32))))
    assert calls == [("linear_backward", (True, True, False))]
    np.testing.assert_array_equal(lin.bias.grad, 0)
    np.testing.assert_allclose(lin.weight.grad, 2.0)


def test_frozen_first_layers_cost_nothing_without_input_gradient(monkeypatch):
    calls = _spy(monkeypatch, F, ["conv2d_backward", "conv2d_backward_through_max_pool",
                                  "batch_norm_train_backward", "max_pool2d_backward"])
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.ReLU(), nn.MaxPool2d(2),  # frozen below
                          nn.Dropout(0.1, rng=0), nn.Conv2d(4, 4, 3, padding=1, rng=1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2, rng=2))
    model[0].requires_grad_(False)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    model.zero_grad()
    y = model(x)
    assert model.backward(np.ones_like(y), input_grad=False) is None
    # the trainable conv is the first to backpropagate, without its input gradient; nothing
    # runs for the frozen conv and its pooling
    assert calls == [("batch_norm_train_backward", None), ("conv2d_backward", (False, True, True))]
    np.testing.assert_array_equal(model[0].weight.grad, 0)
    # with the input gradient, everything runs, the frozen conv for dL/dx only
    calls.clear()
    assert model.backward(np.ones_like(y)).shape == x.shape
    assert calls[-2:] == [("max_pool2d_backward", None), ("conv2d_backward", (True, False, False))]
    # all frozen: nothing at all
    model.requires_grad_(False)
    calls.clear()
    assert model.backward(np.ones_like(y), input_grad=False) is None and calls == []
    # a frozen weight with a trainable bias: the bias gradient through the pooling, in one op
    model.requires_grad_(True)
    model[0].weight.requires_grad = False
    model(x)
    calls.clear()
    model.backward(np.ones_like(y), input_grad=False)
    assert calls[-1] == ("conv2d_backward_through_max_pool", (False, True))
    # inside a Residual too: its body's frozen first conv is skipped
    res = nn.Sequential(nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, rng=3), nn.ReLU(),
                                                  nn.Conv2d(3, 3, 1, rng=4))))
    res[0].body[0].requires_grad_(False)
    y = res(x)
    calls.clear()
    assert res.backward(np.ones_like(y), input_grad=False) is None
    assert calls == [("conv2d_backward", (False, True, True))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_frozen_batchnorm_scale_with_trainable_bias_matches_torch(torch, dtype):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    for mode in ("train", "eval"):
        bn = nn.BatchNorm2d(3).astype(dtype)
        bn.weight.data[...] = [0.5, 1.5, 2.0]
        bn.weight.requires_grad = False
        tbn = torch.nn.BatchNorm2d(3).to(tdtype)
        tbn.load_state_dict({k: torch.tensor(v) for k, v in bn.state_dict().items()})
        tbn.weight.requires_grad = False
        bn.train(mode == "train")
        tbn.train(mode == "train")
        gen = np.random.default_rng(1)
        x = gen.normal(size=(4, 3, 3, 3)).astype(dtype)
        g = gen.normal(size=x.shape).astype(dtype)
        bn(x)
        gx = bn.backward(g)
        xt = torch.tensor(x, requires_grad=True)
        tbn(xt).backward(torch.tensor(g))
        rtol = 1e-10 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(bn.bias.grad, tbn.bias.grad.numpy(), rtol=rtol, atol=rtol)
        assert tbn.weight.grad is None and not bn.weight.grad.any()
        assert bn.backward(g, input_grad=False) is None


def airbench_like(L):
    """airbench94's frozen pieces: a whitening first conv (2x2, weight frozen, bias trainable)
    and BatchNorms with frozen scales and trainable biases; a residual-free tail."""
    return L.Sequential(
        L.Conv2d(3, 6, 2, bias=True), L.ReLU(),
        L.Sequential(L.Conv2d(6, 8, 3, padding=1, bias=False), L.MaxPool2d(2), L.BatchNorm2d(8),
                     L.ReLU()),
        L.Sequential(L.Conv2d(8, 8, 3, padding=1, bias=False), L.BatchNorm2d(8), L.ReLU(),
                     L.MaxPool2d(3)),
        L.Flatten(), L.Linear(8, 4, bias=False))


@pytest.mark.parametrize("make_opt", [
    lambda lib, p: lib.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    lambda lib, p: lib.Adam(p, lr=0.01, weight_decay=1e-3),
    lambda lib, p: lib.AdamW(p, lr=0.01),
    lambda lib, p: lib.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
], ids=["sgd_nesterov", "adam", "adamw", "rmsprop"])
def test_frozen_model_trains_to_torch_weights(torch, make_opt):
    model = airbench_like(nn).astype(np.float64)
    tmodel = airbench_like(torch.nn).double()
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    for m in (model, tmodel):
        m[0].weight.requires_grad = False
        for layer in m.modules():
            if type(layer).__name__ == "BatchNorm2d":
                layer.weight.requires_grad = False
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in tmodel.named_parameters() if not p.requires_grad}
    assert frozen == {"0.weight", "2.2.weight", "3.1.weight"}
    start = model.state_dict()
    opt = make_opt(optim, model.parameters())
    topt = make_opt(torch.optim, tmodel.parameters())
    crit = torch.nn.CrossEntropyLoss()
    gen = np.random.default_rng(0)
    for _ in range(3):
        x = gen.normal(size=(4, 3, 9, 9))
        t = gen.integers(0, 4, size=4)
        opt.zero_grad()
        topt.zero_grad()
        y = model(x)
        yt = tmodel(torch.tensor(x))
        loss = crit(yt, torch.tensor(t))
        loss.backward()
        # the same loss gradient for ours: softmax(y) - onehot, / N
        p = np.exp(y - y.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(4), t] -= 1
        model.backward(p / 4, input_grad=False)
        opt.step()
        topt.step()
    theirs = tmodel.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, theirs[key].numpy(), rtol=1e-9, atol=1e-12, err_msg=key)
    for key in frozen:
        np.testing.assert_array_equal(model.state_dict()[key], start[key])
    # no state for the frozen ones, as torch keeps none for parameters without a gradient
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    assert sorted(opt.state_dict()["state"]) == sorted(topt.state_dict()["state"]) == sorted(
        i for n, i in index.items() if n not in frozen)
    assert all(p not in opt.state for p in model.parameters() if not p.requires_grad)
    # torch's optimiser state loads into ours and continues identically
    opt2 = make_opt(optim, model.parameters())
    opt2.load_state_dict(topt.state_dict())
    assert sorted(opt2.state_dict()["state"]) == sorted(opt.state_dict()["state"])


def test_l2_penalty_and_frozen_parameters():
    lin = nn.Linear(3, 2, rng=0)
    lin.weight.requires_grad = False
    lin.zero_grad()
    total = optim.l2_penalty(lin, 0.1)
    w, b = lin.weight.data, lin.bias.data
    squares = np.sum(w.astype(np.float64) ** 2) + np.sum(b.astype(np.float64) ** 2)
    assert total == pytest.approx(0.05 * squares, rel=1e-6)
    np.testing.assert_array_equal(lin.weight.grad, 0)
    np.testing.assert_allclose(lin.bias.grad, 0.1 * b)


def test_gradcheck_skips_frozen_parameters():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.Tanh(), nn.Conv2d(3, 2, 1, rng=1))
    model[0].weight.requires_grad = False
    errors = gradcheck_layer(model, (2, 2, 5, 5), seed=0)
    assert set(errors) == {"input", "0.bias", "2.weight", "2.bias"}
    assert max(errors.values()) < 1e-7
    with pytest.raises(ValueError, match=r"\['0.weight'\] are frozen"):
        gradcheck_layer(model, (2, 2, 5, 5), params=["0.weight"])


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_conv_transpose_skips_frozen_gradients(backend, monkeypatch):
    ops = F if backend == "fast" else R
    calls = _spy(monkeypatch, ops, ["conv_transpose2d_backward"])
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, rng=0).set_backend(backend)
    layer.weight.requires_grad = False
    layer.weight.grad[...] = 7
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4)).astype(np.float32)
    y = layer(x)
    gx = layer.backward(np.ones_like(y))
    assert calls == [("conv_transpose2d_backward", (True, False, True))] and gx.shape == x.shape
    np.testing.assert_array_equal(layer.weight.grad, 7)
    calls.clear()
    layer.requires_grad_(False)
    assert layer.backward(np.ones_like(y), input_grad=False) is None and calls == []
