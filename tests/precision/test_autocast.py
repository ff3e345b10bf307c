"""fastconv.autocast, Module.to(precision=...) and the layers in bf16 mode: what runs in which
precision (nesting, exceptions, threads, float64), that backward uses the forward's precision,
the layers against the bf16 ops, the one-time warning, fastconv-train --precision."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import functional as F
from fastconv import nn
from fastconv import precision as P
from fastconv import reference as R
from fastconv.precision import current_precision, round_to_bf16

from bf16_paths import bf16_path


def conv_data(seed=0):
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((2, 4, 7, 7)).astype(np.float32)
    w = gen.standard_normal((5, 4, 3, 3)).astype(np.float32)
    return x, w


# --------------------------------------------------------------------------------------------
# autocast
# --------------------------------------------------------------------------------------------

def test_autocast_sets_and_restores_the_precision():
    assert current_precision() == "f32"
    with fastconv.autocast("bf16") as ac:
        assert current_precision() == "bf16" and ac.precision == "bf16"
        with fastconv.autocast("f32"):
            assert current_precision() == "f32"
            with fastconv.autocast("bf16", enabled=False):
                assert current_precision() == "f32"
            with fastconv.autocast("bfloat16"):
                assert current_precision() == "bf16"
            assert current_precision() == "f32"
        assert current_precision() == "bf16"
    assert current_precision() == "f32"


def test_autocast_restores_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with fastconv.autocast("bf16"):
            with fastconv.autocast("f32"):
                raise RuntimeError("boom")
    assert current_precision() == "f32"
    with pytest.raises(KeyError):
        with fastconv.autocast("bf16"):
            raise KeyError
    assert current_precision() == "f32"


def test_autocast_object_reentered_and_as_a_decorator():
    ac = fastconv.autocast("bf16")
    with ac:
        with ac:
            assert current_precision() == "bf16"
        assert current_precision() == "bf16"
    assert current_precision() == "f32"

    @fastconv.autocast("bf16")
    def inside():
        return current_precision()

    assert inside() == "bf16" and current_precision() == "f32"
    assert repr(ac) == "autocast('bf16', enabled=True)"


def test_autocast_is_thread_local():
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        seen["before"] = current_precision()
        with fastconv.autocast("bf16"):
            entered.set()
            release.wait(5)
            seen["inside"] = current_precision()

    t = threading.Thread(target=other)
    with fastconv.autocast("f32"):
        t.start()
        entered.wait(5)
        assert current_precision() == "f32"
        release.set()
        t.join()
    assert seen == {"before": "f32", "inside": "bf16"}


def test_one_autocast_object_entered_by_two_threads_restores_each_ones_state():
    """A shared autocast (module-level, or a decorated function's) restores what each thread
    had: thread A (float32 before) leaves its block first, while thread B (inside a bf16
    block) is still in its own; the states to restore are per thread, not per object."""
    shared = fastconv.autocast("f32")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with shared:
            a_in.set()
            b_in.wait(5)
        seen["a"] = current_precision()
        a_out.set()

    def b():
        a_in.wait(5)
        with fastconv.autocast("bf16"):
            with shared:
                b_in.set()
                a_out.wait(5)
                seen["b inside"] = current_precision()
            seen["b"] = current_precision()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "f32", "b inside": "f32", "b": "bf16"}


def test_autocast_checks_its_arguments():
    with pytest.raises(ValueError, match="precision must be one of"):
        fastconv.autocast("fp16")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastconv.autocast("bf16", enabled="yes")


def test_ops_follow_autocast_and_an_explicit_precision_wins():
    x, w = conv_data()
    y32 = F.conv2d(x, w)
    y16 = F.conv2d(x, w, precision="bf16")
    assert not np.array_equal(y32, y16)
    with fastconv.autocast("bf16"):
        assert np.array_equal(F.conv2d(x, w), y16)
        assert np.array_equal(F.conv2d(x, w, precision="f32"), y32)
        assert np.array_equal(R.conv2d(x, w), R.conv2d(x, w, precision="bf16"))
        lin = F.linear(x.reshape(2, -1)[:, :36], w.reshape(5, -1))
    assert np.array_equal(lin, F.linear(x.reshape(2, -1)[:, :36], w.reshape(5, -1), precision="bf16"))
    assert np.array_equal(F.conv2d(x, w), y32)


def test_autocast_leaves_float64_alone():
    x, w = conv_data()
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    with fastconv.autocast("bf16"):
        y = F.conv2d(x64, w64)
        assert y.dtype == np.float64
        assert np.array_equal(y, F.conv2d(x64, w64, precision="f32"))
    with pytest.raises(TypeError, match="needs float32"):
        F.linear(x64.reshape(2, -1)[:, :36], w64.reshape(5, -1), precision="bf16")


def test_outputs_are_float32_arrays():
    x, w = conv_data()
    with fastconv.autocast("bf16"):
        y = F.conv2d(x, w)
        assert y.dtype == np.float32 and y.flags.c_contiguous
        # The float32 sums, not rounded to bf16: values a bf16 array could not hold.
        assert not np.array_equal(y, round_to_bf16(y))


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

def small_model(seed=0):
    return nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, rng=seed), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 3 * 3, 3, rng=seed + 1))


def test_module_to_precision_sets_every_layer():
    model = small_model()
    assert model.precision is None
    assert model.to(precision="bf16") is model
    assert all(m.precision == "bf16" for m in model.modules())
    model.to(precision="auto")
    assert all(m.precision is None for m in model.modules())
    model.to(precision="float32")
    assert all(m.precision == "f32" for m in model.modules())
    with pytest.raises(ValueError, match="precision must be one of"):
        model.to(precision="fp8")
    with pytest.raises(TypeError, match="needs float32 parameters"):
        small_model().to(np.float64, precision="bf16")
    with pytest.raises(TypeError, match="needs float32 parameters"):
        small_model().astype(np.float64).to(precision="bf16")
    m = small_model().to(np.float64)                   # dtype alone: astype, as before
    assert m.dtype == np.float64 and m.precision is None


def test_layers_in_bf16_are_the_bf16_ops():
    x, _ = conv_data(1)
    model = small_model().to(precision="bf16")
    y = model(x)
    conv, bn, lin = model[0], model[1], model[5]
    c = F.conv2d(x, conv.weight.data, conv.bias.data, padding=1, precision="bf16")
    h = F.max_pool2d(F.relu(F.batch_norm_train(c, bn.weight.data, bn.bias.data)[0]), 2)
    want = F.linear(h.reshape(2, -1), lin.weight.data, lin.bias.data, precision="bf16")
    assert np.array_equal(y, want)
    # Parameters, gradients and batch-norm statistics stay float32.
    gy = np.ones_like(y)
    model.backward(gy)
    for p in model.parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert bn.running_mean.dtype == np.float32


def test_module_precision_wins_over_autocast():
    x, _ = conv_data(2)
    m32 = small_model().to(precision="f32")
    m16 = small_model().to(precision="bf16")
    auto = small_model()
    with fastconv.autocast("bf16"):
        y32, y16a, ya = m32(x), m16(x), auto(x)
    assert np.array_equal(y32, small_model()(x))
    assert np.array_equal(y16a, m16(x))
    assert np.array_equal(ya, y16a)


def test_backward_uses_the_forward_precision():
    """A forward under autocast, its backward outside (as with torch.autocast, where backward
    runs outside the block): the bf16 gradients."""
    x, _ = conv_data(3)
    a, b = small_model(), small_model()
    with fastconv.autocast("bf16"):
        ya = a(x)
        yb = b(x)
        b.backward(np.ones_like(yb))
    a.backward(np.ones_like(ya))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert np.array_equal(pa.grad, pb.grad)
    c = small_model()
    c(x)
    c.backward(np.ones_like(ya))
    assert not np.array_equal(c[0].weight.grad, a[0].weight.grad)


def test_conv_transpose_layer_in_bf16():
    gen = np.random.default_rng(4)
    x = gen.standard_normal((2, 4, 5, 5)).astype(np.float32)
    layer = nn.ConvTranspose2d(4, 3, 3, stride=2, rng=0).to(precision="bf16")
    y = layer(x)
    assert np.array_equal(y, F.conv_transpose2d(x, layer.weight.data, layer.bias.data, stride=2,
                                                precision="bf16"))
    gx = layer.backward(np.ones_like(y))
    want = F.conv_transpose2d_backward(np.ones_like(y), x, layer.weight.data, stride=2,
                                       precision="bf16")
    assert np.array_equal(gx, want[0]) and np.array_equal(layer.weight.grad, want[1])


def test_reference_backend_runs_bf16_too():
    x, _ = conv_data(5)
    fast = small_model().to(precision="bf16")
    ref = small_model().to(precision="bf16").set_backend("reference")
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-4, atol=1e-4)


def test_precision_survives_pickling():
    import pickle

    m = pickle.loads(pickle.dumps(small_model().to(precision="bf16")))
    assert m.precision == "bf16" and m[0].precision == "bf16"


# --------------------------------------------------------------------------------------------
# The one-time warning and the path report
# --------------------------------------------------------------------------------------------

def test_emulated_bf16_warns_once(monkeypatch):
    x, w = conv_data()
    monkeypatch.setattr(P, "_warned", False)
    with bf16_path("emulated"):
        with pytest.warns(P.Bf16EmulationWarning, match="no speed-up"):
            F.conv2d(x, w, precision="bf16")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            F.conv2d(x, w, precision="bf16")   # once only
            F.linear(x.reshape(2, -1)[:, :36], w.reshape(5, -1), precision="bf16")


def test_no_warning_on_a_bf16_kernel(monkeypatch):
    import warnings

    x, w = conv_data()
    monkeypatch.setattr(P, "_warned", False)
    with bf16_path("avx512_bf16_twin"), warnings.catch_warnings():
        warnings.simplefilter("error")
        F.conv2d(x, w, precision="bf16")
        assert fastconv.simd_level("bf16") == "avx512_bf16_twin"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.conv2d(x, w)                         # float32: nothing to say


def test_simd_level_reports_both():
    assert fastconv.simd_level() == fastconv.build_info()["simd_level"]
    assert fastconv.simd_level("bf16") == fastconv.build_info()["bf16"]["path"]
    with pytest.raises(ValueError, match="precision must be one of"):
        fastconv.simd_level("int8")
