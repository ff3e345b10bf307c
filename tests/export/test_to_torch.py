"""Tests of fastconv.export: to_torch on every layer and container of fastconv.nn (outputs,
input and parameter gradients, running statistics; float32 and float64, train and eval) and
on every model of fastconv.models (keys, outputs), what it carries over (frozen flags, each
module's mode, dtype, shared parameters), its errors, save_torch_state_dict, and the
ImportError without PyTorch.

Tolerances: numerics.assert_close (float32 1e-5, float64 1e-12, times max(1, max|expected|)).
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from fastconv import models, nn
from fastconv.export import save_torch_state_dict, to_torch
from layer_cases import LAYERS
from numerics import assert_close, randomize_norms


def _run(module, x, g):
    """(output, input gradient, parameter gradients, state dict) of fastconv's module."""
    module.zero_grad()
    y = module(x)
    gx = module.backward(g)
    return y, gx, {k: p.grad for k, p in module.named_parameters()}, module.state_dict()


def _run_torch(torch, tmodule, x, g):
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodule(xt)
    yt.backward(torch.tensor(g))
    return (yt.detach().numpy(), xt.grad.numpy(),
            {k: p.grad.numpy() for k, p in tmodule.named_parameters()},
            {k: v.numpy() for k, v in tmodule.state_dict().items()})


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_every_layer_and_container(torch, case, mode, dtype):
    name, build, shape = case
    module = randomize_norms(build().astype(dtype), 1).train(mode == "train")
    tmodule = to_torch(module)
    assert list(tmodule.state_dict()) == list(module.state_dict())
    assert all(t.training == (mode == "train") for t in tmodule.modules())
    if name in ("dropout", "dropout2d"):
        want = torch.nn.Dropout if name == "dropout" else torch.nn.Dropout2d
        assert type(tmodule) is want and tmodule.p == 0.3
        if mode == "train":
            return  # (masks drawn by each library)
    gen = np.random.default_rng(2)
    x = gen.standard_normal(shape).astype(dtype)
    g = gen.standard_normal(module.output_shape(shape)).astype(dtype)
    y, gx, grads, state = _run(module, x, g)
    ty, tgx, tgrads, tstate = _run_torch(torch, tmodule, x, g)
    assert ty.dtype == dtype
    assert_close(y, ty, dtype, what=f"{name} output")
    # PyTorch's Hardsigmoid backward multiplies by 1/6 rounded to float32 even in float64
    # (3e-8 relative); fastconv's by 1/6 in the input's precision
    gx_tol = 1e-7 if name == "hardsigmoid" and dtype == np.float64 else None
    assert_close(gx, tgx, dtype, what=f"{name} grad_x", tol=gx_tol)
    assert list(grads) == list(tgrads)
    for key, value in grads.items():
        assert_close(value, tgrads[key], dtype, what=f"{name} grad {key}")
    for key, value in state.items():  # running statistics after the step
        assert_close(value, tstate[key], dtype, what=f"{name} {key}")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", models.MODELS)
def test_every_model(torch, name, mode):
    model = randomize_norms(models.get_model(name, rng=0), 1).train(mode == "train")
    tmodel = to_torch(model)
    assert list(tmodel.state_dict()) == list(model.state_dict())
    if name == "alexnet_small" and mode == "train":
        return  # (dropout masks drawn by each library)
    x = np.random.default_rng(2).uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    y = model(x)
    with torch.no_grad():
        ty = tmodel(torch.tensor(x)).numpy()
    # float32 through up to 20 layers: relative to the largest output
    np.testing.assert_allclose(y, ty, rtol=0, atol=1e-4 * np.abs(ty).max())
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, tmodel.state_dict()[key].numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=key)


def test_carries_frozen_flags_modes_dtype_and_shared_parameters(torch):
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # tied weights
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), a, nn.Tanh(), b).astype(np.float64)
    model[1].requires_grad_(False)
    model[0].bias.requires_grad = False
    model.train()
    model[1].eval()
    tmodel = to_torch(model)
    assert {k: p.requires_grad for k, p in tmodel.named_parameters(remove_duplicate=False)} == {
        "0.weight": True, "0.bias": False, "1.weight": False, "1.bias": False,
        "5.weight": True, "5.bias": True, "7.weight": True, "7.bias": True}
    assert [m.training for m in tmodel.children()] == [m.training for m in model.children()]
    assert tmodel[1].training is False and tmodel.training is True
    assert all(p.dtype == torch.float64 for p in tmodel.parameters())
    assert tmodel[7].weight is tmodel[5].weight
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    g = np.random.default_rng(1).standard_normal((2, 4))
    model.zero_grad()
    y = model(x)
    model.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    yt.backward(torch.tensor(g))
    assert_close(y, yt.detach().numpy(), np.float64, what="output")
    # the tied weight's gradient sums both uses, in both libraries
    assert_close(a.weight.grad, tmodel[5].weight.grad.numpy(), np.float64, what="tied grad")
    assert tmodel[1].weight.grad is None


def test_errors(torch):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    class MyReLU(nn.ReLU):
        pass

    with pytest.raises(TypeError, match=r"module '1\.body\.0' is a .*Custom, which has no "
                                        r"PyTorch twin.*Conv2d"):
        to_torch(nn.Sequential(nn.ReLU(), nn.Residual(nn.Sequential(Custom()))))
    with pytest.raises(TypeError, match="the model is a .*MyReLU"):
        to_torch(MyReLU())
    with pytest.raises(TypeError, match="expected a fastconv.nn.Module, got Linear"):
        to_torch(torch.nn.Linear(2, 2))


def test_converted_models_pickle(torch):
    tmodel = to_torch(models.resnet9(rng=0, width=4))
    buf = io.BytesIO()
    torch.save(tmodel, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = torch.zeros(1, 3, 32, 32)
    assert type(again.scale).__name__ == "Mul" and again.scale.scale == 0.125
    assert torch.equal(again.eval()(x), tmodel.eval()(x))


def test_save_torch_state_dict(torch, tmp_path):
    class Custom(nn.Module):  # (saving needs no twin)
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.full(3, 2.0, np.float32))

    model = nn.Sequential(randomize_norms(models.vgg_small(rng=0), 1), Custom())
    path = tmp_path / "vgg.pt"
    save_torch_state_dict(model, path)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert loaded[key].dtype == torch.from_numpy(value).dtype, key
        np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)
    assert [p.name for p in tmp_path.iterdir()] == ["vgg.pt"]  # (no temporary file left)
    twin = to_torch(models.vgg_small(rng=1))
    twin.load_state_dict({k[2:]: v for k, v in loaded.items() if k.startswith("0.")})
    back = models.vgg_small(rng=2)
    back.load_state_dict(twin.state_dict())
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value, model[0].state_dict()[key], err_msg=key)


def test_without_torch_an_import_error_with_the_pip_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.delitem(sys.modules, "fastconv.export.torch_modules", raising=False)
    with pytest.raises(ImportError, match="needs PyTorch.*pip install torch"):
        to_torch(nn.ReLU())
    with pytest.raises(ImportError, match="pip install torch"):
        save_torch_state_dict(nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_the_cases_cover_every_layer_of_fastconv_nn():
    layers = {getattr(nn, name) for name in nn.__all__}
    layers = {cls for cls in layers if isinstance(cls, type) and issubclass(cls, nn.Module)}
    # (MaxUnpool2d takes two inputs: tested on its own, tests/ops/test_max_unpool_ops.py)
    assert {type(build()) for _, build, _ in LAYERS} == layers - {nn.Module, nn.MaxUnpool2d}
