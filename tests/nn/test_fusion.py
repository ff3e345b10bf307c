"""Tests of the fusion planner (fastconv.nn.fusion): which runs of layers execute fused, and
that the fused runs give the layer-by-layer results bit for bit (outputs, input and parameter
gradients, BatchNorm running statistics) in every model, container, mode, dtype and backend."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import functional as F
from fastconv import models, nn
from fastconv import reference as R
from fastconv.nn import fusion
from fastconv.nn.fusion import ConvMaxPoolStep, LayerStep
from numerics import randomize_norms


# ---------------------------------------------------------------------------------------------
# A Sequential's fused steps against its layers run one at a time
# ---------------------------------------------------------------------------------------------


def _run_layer_by_layer(model, x, g, input_grad=True):
    """Forward and backward through model's layers one at a time (no fusion)."""
    layers = list(model)
    for layer in layers:
        x = layer.forward(x)
    y = x
    for i in range(len(layers) - 1, -1, -1):
        g = layers[i].backward(g, input_grad=input_grad or i > 0)
    return y, g, [p.grad.copy() for p in model.parameters()]


def _run_fused(model, x, g, input_grad=True):
    y = model.forward(x)
    gx = model.backward(g, input_grad=input_grad)
    return y, gx, [p.grad.copy() for p in model.parameters()]


def _assert_same_runs(model, x, input_grad=True, seed=0):
    """model's fused Sequential run gives the layer-by-layer results, bit for bit."""
    y = model.forward(x)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    model.zero_grad()
    want = _run_layer_by_layer(model, x, g, input_grad)
    model.zero_grad()
    got = _run_fused(model, x, g, input_grad)
    np.testing.assert_array_equal(got[0], want[0])
    if input_grad:  # (with input_grad=False, layers without a saving may still return it)
        np.testing.assert_array_equal(got[1], want[1])
    for a, e in zip(got[2], want[2]):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_sequential_fusion_vgg_block_matches_layer_by_layer(dtype, backend):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=0, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False, rng=1, dtype=dtype), nn.BatchNorm2d(16, dtype=dtype),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 5, rng=2, dtype=dtype),
    ).set_backend(backend)
    x = np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(dtype)
    _assert_same_runs(model, x)
    _assert_same_runs(model, x, input_grad=False)
    model.forward(x)
    assert model.backward(np.ones((6, 5), dtype), input_grad=False) is None
    model.eval()  # running statistics: BatchNorm -> ReLU runs unfused
    _assert_same_runs(model, x)


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, ceil_mode=True),
    nn.MaxPool2d(3, 1, 1, dilation=2), nn.MaxPool2d((2, 3), (1, 2), (1, 0), ceil_mode=True),
], ids=repr)
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_sequential_relu_maxpool_reordered_matches(pool, backend):
    # Small integers: many ties within windows, zeros, and windows wholly <= 0, where the two
    # orders could differ if the reordering were wrong.
    rng = np.random.default_rng(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 1, rng=0), nn.ReLU(), pool).set_backend(backend)
    model[0].weight.data[...] = np.eye(3, 2)[:, :, None, None]
    model[0].bias.data[...] = 0
    x = rng.integers(-3, 3, (4, 2, 9, 11)).astype(np.float32)
    _assert_same_runs(model, x)
    # The pair first in the model, with the first layer's input gradient skipped.
    first = nn.Sequential(nn.ReLU(), pool).set_backend(backend)
    _assert_same_runs(first, x)
    _assert_same_runs(first, x, input_grad=False)


@given(k=st.integers(1, 4), s=st.integers(1, 3), d=st.integers(1, 2), ceil=st.booleans(),
       h=st.integers(4, 12), w=st.integers(4, 12), data=st.data())
@settings(max_examples=60, deadline=None)
def test_sequential_relu_maxpool_reordered_property(k, s, d, ceil, h, w, data):
    pad = data.draw(st.integers(0, k // 2))
    if d * (k - 1) + 1 > h + 2 * pad or d * (k - 1) + 1 > w + 2 * pad:
        return
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(k, s, pad, dilation=d, ceil_mode=ceil))
    seed = data.draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).integers(-2, 3, (2, 3, h, w)).astype(np.float32)
    _assert_same_runs(model, x, seed=seed)


@pytest.mark.parametrize("head", [
    lambda: [nn.Conv2d(3, 32, 3, rng=0), nn.ReLU(), nn.MaxPool2d(2)],
    lambda: [nn.Conv2d(3, 16, 5, padding=2, bias=False, rng=0), nn.MaxPool2d(3, 2, 1)],
    lambda: [nn.Conv2d(3, 6, 5, rng=0), nn.ReLU(), nn.MaxPool2d(2)],  # the stored-gradient path
], ids=["relu_pool", "pool_no_bias", "lenet"])
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_sequential_first_conv_backward_through_pool(head, backend, monkeypatch):
    # A first Conv2d -> (ReLU ->) MaxPool2d: one fused forward and, with input_grad=False, one
    # fused backward; the layer-by-layer outputs and gradients bit for bit.
    from fastconv import functional as F, reference as R

    model = nn.Sequential(*head(), nn.Flatten()).set_backend(backend)
    x = np.random.default_rng(1).standard_normal((3, 3, 14, 14)).astype(np.float32)
    _assert_same_runs(model, x, input_grad=False)
    calls = []
    ops = F if backend == "fast" else R
    for name in ("conv2d_max_pool2d", "conv2d_backward_through_max_pool"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **k:
                            calls.append(_name) or _real(*a, **k))
    model.zero_grad()
    y = model.forward(x)
    assert model.backward(np.ones_like(y), input_grad=False) is None
    assert calls == ["conv2d_max_pool2d", "conv2d_backward_through_max_pool"]
    model.backward(np.ones_like(y), input_grad=True)  # then the plain layers' backward
    assert len(calls) == 2


def test_sequential_fusion_nan_and_layers_keep_no_stale_values():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2))
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)
    x[0, 1, 2, 2] = np.nan
    _assert_same_runs(model, x)
    # A fused step keeps its layers' forward values itself: after a fused forward, a layer's
    # own backward fails instead of using the values of an older forward.
    model.forward(x)
    g = np.ones((3, 2, 4, 4), np.float32)
    for layer in model[:3]:
        with pytest.raises(RuntimeError, match="backward called before forward"):
            layer.backward(g)



# ---------------------------------------------------------------------------------------------
# Whole models and container trees: fused (the default) against fusion.enabled(False)
# ---------------------------------------------------------------------------------------------

def residual_net(dtype=np.float32, rng=0, num_classes=5) -> nn.Sequential:
    """A tree with a fusable chain in every container: a ResNet block body (BatchNorm -> ReLU),
    a Residual whose body and shortcut end in max pooling (Conv -> ReLU -> MaxPool, Conv ->
    MaxPool), a Concat of Sequentials (Conv -> ReLU -> MaxPool, ReLU -> MaxPool, BatchNorm ->
    ReLU). Input (N, 3, 16, 16)."""
    g = np.random.default_rng(rng)

    def conv(ci, co, k, p=0, bias=True):
        return nn.Conv2d(ci, co, k, padding=p, bias=bias, dtype=dtype, rng=g)

    def bn(c):
        return nn.BatchNorm2d(c, dtype=dtype)

    return nn.Sequential(
        conv(3, 8, 3, p=1, bias=False), bn(8), nn.ReLU(),
        nn.Residual(nn.Sequential(conv(8, 8, 3, p=1, bias=False), bn(8), nn.ReLU(),
                                  conv(8, 8, 3, p=1, bias=False), bn(8))),
        nn.ReLU(),
        nn.Residual(nn.Sequential(conv(8, 16, 3, p=1), nn.ReLU(), nn.MaxPool2d(2)),
                    shortcut=nn.Sequential(conv(8, 16, 1), nn.MaxPool2d(2))),
        nn.Concat(nn.Sequential(conv(16, 4, 1), nn.ReLU(), nn.MaxPool2d(2)),
                  nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)),
                  nn.Sequential(bn(16), nn.ReLU(), nn.AvgPool2d(2))),
        nn.Flatten(), nn.Linear(36 * 4 * 4, num_classes, dtype=dtype, rng=g),
    )


def residual_first(dtype=np.float32, rng=0) -> nn.Sequential:
    """A network whose first layer is a Residual with Conv -> ReLU -> MaxPool body and Conv ->
    MaxPool shortcut: without an input gradient both backpropagate through their pooling."""
    g = np.random.default_rng(rng)
    return nn.Sequential(
        nn.Residual(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, dtype=dtype, rng=g), nn.ReLU(),
                                  nn.MaxPool2d(2)),
                    shortcut=nn.Sequential(nn.Conv2d(3, 8, 1, dtype=dtype, rng=g), nn.MaxPool2d(2))),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 3, dtype=dtype, rng=g))


MODELS = {
    "simple_cnn": (lambda dtype: models.simple_cnn(rng=0, dtype=dtype), (2, 3, 32, 32)),
    "vgg_small": (lambda dtype: models.vgg_small(rng=0, dtype=dtype), (2, 3, 32, 32)),
    "lenet5": (lambda dtype: models.lenet5(rng=0, dtype=dtype), (2, 3, 32, 32)),
    "alexnet_small": (lambda dtype: models.alexnet_small(rng=0, dtype=dtype), (2, 3, 32, 32)),
    "residual_net": (lambda dtype: residual_net(dtype), (3, 3, 16, 16)),
    "residual_first": (lambda dtype: residual_first(dtype), (2, 3, 16, 16)),
}


def _steps_run(model) -> list:
    """The steps every Sequential of `model` ran in its last forward."""
    return [step for m in model.modules() if isinstance(m, nn.Sequential) and m._cache
            for step in m._cache]


def _train_step(model, x, input_grad, seed=1):
    """(output, input gradient, parameter gradients, buffers, steps run) of one forward and
    backward of a copy of `model` (a copy: the same dropout draws and running statistics for
    every run)."""
    m = copy.deepcopy(model)
    y = m.forward(x)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    m.zero_grad()
    gx = m.backward(g, input_grad=input_grad)
    return (y, gx, {n: p.grad.copy() for n, p in m.named_parameters()},
            {n: b.copy() for n, b in m.named_buffers()}, _steps_run(m))


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_model_runs_are_bit_identical_to_unfused(name, mode, dtype, backend):
    build, shape = MODELS[name]
    model = randomize_norms(build(dtype), 5).set_backend(backend)
    model.train(mode == "train")
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    for input_grad in (True, False):
        fused = _train_step(model, x, input_grad)
        with fusion.enabled(False):
            plain = _train_step(model, x, input_grad)
        assert any(not isinstance(s, LayerStep) for s in fused[4])  # (something did fuse)
        assert all(isinstance(s, LayerStep) for s in plain[4])
        np.testing.assert_array_equal(fused[0], plain[0])
        if input_grad:
            np.testing.assert_array_equal(fused[1], plain[1])
        else:
            assert fused[1] is None and plain[1] is None
        assert list(fused[2]) == list(plain[2]) and list(fused[3]) == list(plain[3])
        for key in fused[2]:
            np.testing.assert_array_equal(fused[2][key], plain[2][key], err_msg=key)
        for key in fused[3]:
            np.testing.assert_array_equal(fused[3][key], plain[3][key], err_msg=key)


def _kinds(model) -> list[tuple[str, tuple[str, ...]]]:
    return [(type(s).__name__, s.names) for s in model._steps()]


def test_plans_of_the_models():
    simple = models.simple_cnn(rng=0)
    assert _kinds(simple) == [
        ("ConvMaxPoolStep", ("0", "1", "2")), ("ConvMaxPoolStep", ("3", "4", "5")),
        ("LayerStep", ("6",)), ("LayerStep", ("7",)), ("LayerStep", ("8",)), ("LayerStep", ("9",))]
    vgg = models.vgg_small(rng=0)
    kinds = _kinds(vgg)
    assert kinds[:5] == [("LayerStep", ("0",)), ("BatchNormReLUStep", ("1", "2")),
                         ("LayerStep", ("3",)), ("BatchNormReLUStep", ("4", "5")),
                         ("LayerStep", ("6",))]
    assert sum(k == "BatchNormReLUStep" for k, _ in kinds) == 6
    vgg.eval()  # running statistics: BatchNorm -> ReLU not fused, so ReLU -> MaxPool is
    kinds = _kinds(vgg)
    assert kinds[3:6] == [("LayerStep", ("3",)), ("LayerStep", ("4",)), ("ReLUMaxPoolStep", ("5", "6"))]
    assert "BatchNormReLUStep" not in {k for k, _ in kinds}
    with fusion.enabled(False):
        assert not fusion.is_enabled()
        assert {k for k, _ in _kinds(vgg)} == {"LayerStep"}
    assert fusion.is_enabled()


def test_fusion_applies_inside_residual_bodies_and_concat_branches():
    model = residual_net()
    model(np.zeros((2, 3, 16, 16), np.float32))
    assert _kinds(model[3].body)[:2] == [("LayerStep", ("0",)), ("BatchNormReLUStep", ("1", "2"))]
    assert _kinds(model[5].body) == [("ConvMaxPoolStep", ("0", "1", "2"))]
    assert _kinds(model[5].shortcut) == [("ConvMaxPoolStep", ("0", "1"))]
    assert [_kinds(b) for b in model[6]] == [
        [("ConvMaxPoolStep", ("0", "1", "2"))], [("ReLUMaxPoolStep", ("0", "1"))],
        [("BatchNormReLUStep", ("0", "1")), ("LayerStep", ("2",))]]


def test_plan_is_cached_and_made_again_after_changes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    inner = model[4]
    steps = model._steps()
    assert model._steps() is steps and inner._steps() is inner._steps()

    def changed(action):
        before, before_inner = model._steps(), inner._steps()
        action()
        return model._steps() is not before and inner._steps() is not before_inner

    assert changed(model.eval) and _kinds(inner) == [("LayerStep", ("0",)), ("LayerStep", ("1",))]
    assert changed(model.train) and _kinds(inner) == [("BatchNormReLUStep", ("0", "1"))]
    assert changed(lambda: inner[0].eval()) and _kinds(inner)[0] == ("LayerStep", ("0",))
    assert changed(lambda: model.set_backend("reference"))
    assert changed(lambda: model[3].set_backend(None))  # pool and conv on two backends now
    assert _kinds(model)[0] == ("LayerStep", ("0",))
    assert changed(lambda: model.append(nn.Flatten()))
    assert changed(lambda: setattr(model, "3", nn.AvgPool2d(2)))
    assert changed(lambda: fusion.enabled(False).__enter__())
    fusion._enabled = True  # (what leaving the block does)
    fusion._invalidate_plans()
    model.train()
    assert model._steps() is model._steps()


def test_mixed_backends_run_unfused_with_each_layers_backend(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.ReLU(), nn.MaxPool2d(2))
    model[2].set_backend("reference")
    calls = []
    for ops in (F, R):
        for name in ("conv2d", "conv2d_max_pool2d", "max_pool2d"):
            real = getattr(ops, name)
            monkeypatch.setattr(ops, name, lambda *a, _r=real, _n=f"{ops.__name__}.{name}", **k:
                                calls.append(_n) or _r(*a, **k))
    model(np.ones((1, 3, 6, 6), np.float32))
    assert calls == ["fastconv.functional.conv2d", "fastconv.reference.max_pool2d"]


def test_fusion_switch_restores_the_previous_state():
    with fusion.enabled(False):
        with fusion.enabled(True):
            assert fusion.is_enabled()
        assert not fusion.is_enabled()
        with pytest.raises(KeyError):
            with fusion.enabled(True):
                raise KeyError("inside")
        assert not fusion.is_enabled()
    assert fusion.is_enabled()


def test_fused_steps_keep_their_layers_values_themselves():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    h = x
    for layer in model:  # values of a layer-by-layer forward: an older forward after this
        h = layer.forward(h)
    y = model.forward(x)
    step = model._cache[0]
    assert isinstance(step, ConvMaxPoolStep) and step._ctx is not None
    assert all(layer._cache is None for layer in model[:3])
    assert model[3]._cache is not None  # a layer run on its own keeps its own
    model.backward(np.ones_like(y))
    # pickling and copying drop the plan and the steps' values, as they drop the layers'
    clone = copy.deepcopy(model)
    assert clone._plan is None and clone._cache is None
    np.testing.assert_array_equal(clone(x), y)


def test_batchnorm_switched_to_running_stats_after_planning_runs_unfused():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()).eval()
    model[0].track_running_stats = False  # eval with batch statistics: planned fused
    assert _kinds(model) == [("BatchNormReLUStep", ("0", "1"))]
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    model(x)
    model[0].track_running_stats = True  # the plan stays (no mode change); the step checks
    y = model(x)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    model.zero_grad()
    gx = model.backward(g)
    want_y = np.maximum(model[0].forward(x), 0)
    np.testing.assert_array_equal(y, want_y)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    want_gx = model[0].backward(np.where(want_y > 0, g, 0))
    np.testing.assert_array_equal(gx, want_gx)
    for a, p in zip(grads, model.parameters()):
        np.testing.assert_array_equal(a, p.grad)


def test_errors_in_fused_steps_name_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"layer 0 of Sequential: Conv2d\(3, 4.*\(2, 2, 9, 9\)"):
        model(np.zeros((2, 2, 9, 9), np.float32))
    with pytest.raises(ValueError, match=r"layer 4 of Sequential: MaxPool2d.*\(N, C, H, W\)"):
        model[3:](np.zeros((2, 3), np.float32))
    y = model(np.zeros((2, 3, 10, 10), np.float32))
    with pytest.raises(ValueError, match=r"layer 4 of Sequential \(backward\): MaxPool2d.*grad_y"):
        model.backward(np.zeros((2, 4, 3, 3), np.float32))
    assert y.shape == (2, 4, 2, 2)
    head = model[:3]
    head(np.zeros((2, 3, 10, 10), np.float32))
    for input_grad in (True, False):  # (the two backwards of Conv2d -> ReLU -> MaxPool2d)
        with pytest.raises(ValueError, match=r"layer 2 of Sequential \(backward\): MaxPool2d.*grad_y"):
            head.backward(np.zeros((1,), np.float32), input_grad=input_grad)


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_first_conv_through_pool_inside_containers(backend, monkeypatch):
    # input_grad=False reaches the first layers inside nested containers: each of a first
    # Residual's body and shortcut backpropagates through its pooling in one op.
    ops = F if backend == "fast" else R
    calls = []
    for name in ("conv2d_backward", "conv2d_backward_through_max_pool"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _r=real, _n=name, **k:
                            calls.append(_n) or _r(*a, **k))
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.ReLU(), nn.MaxPool2d(2)),
                           nn.Flatten(), nn.Linear(4 * 3 * 3, 2, rng=1))
    for model in (nested, residual_first()):
        model.set_backend(backend)
        calls.clear()
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8) if model is nested else (2, 3, 16, 16))
        y = model(x.astype(np.float32))
        assert model.backward(np.ones_like(y), input_grad=False) is None
        through = ["conv2d_backward_through_max_pool"] * (1 if model is nested else 2)
        if backend == "fast":
            assert calls == through
        else:  # (the reference's through-pool op calls its conv2d_backward)
            assert [c for c in calls if c != "conv2d_backward"] == through


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("change", ["padding", "stride", "weight"])
def test_a_conv_changed_between_forward_and_backward_is_refused(fused, change):
    """A first conv (its backward runs through the max pooling when fused, as training's
    input_grad=False does) whose geometry changed after the forward: a ValueError both ways
    (the fused step used the new geometry with the old pooling indices, silently)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with fusion.enabled(fused):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2))
        y = model(x)
        conv = model[0]
        if change == "padding":
            conv.padding = (2, 2)
        elif change == "stride":
            conv.stride = (2, 2)
        else:
            conv.weight.data = np.ones((8, 3, 1, 1), np.float32)
        with pytest.raises(ValueError, match="changed since its forward"):
            model.backward(np.ones_like(y), input_grad=False)
