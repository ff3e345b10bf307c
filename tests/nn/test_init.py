"""Tests of fastconv.init. Statistical checks use 10^5..10^6 samples, so the sample standard
deviation is within ~0.5% of the target; the tolerances (2-3%) cannot fail by chance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastconv import init, nn


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_as_generator():
    g = np.random.default_rng(0)
    assert init.as_generator(g) is g
    assert init.as_generator(5).random() == np.random.default_rng(5).random()
    assert init.as_generator(np.int64(5)).random() == np.random.default_rng(5).random()
    assert isinstance(init.as_generator(None), np.random.Generator)
    assert isinstance(init.as_generator(np.random.SeedSequence(1)), np.random.Generator)
    with pytest.raises(TypeError):
        init.as_generator("seed")
    with pytest.raises(TypeError):
        init.as_generator(True)
    with pytest.raises(ValueError):
        init.as_generator(-1)


def test_fans_and_gains(torch):
    assert init.calculate_fan_in_and_fan_out((64, 32, 3, 3)) == (288, 576)
    assert init.calculate_fan_in_and_fan_out(np.zeros((10, 20))) == (20, 10)
    with pytest.raises(ValueError):
        init.calculate_fan_in_and_fan_out((5,))
    for nl, param in [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                      ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)]:
        assert init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


@pytest.mark.parametrize("fn, kwargs, kind, scale", [
    (init.kaiming_normal_, dict(nonlinearity="relu"), "normal", math.sqrt(2 / 400)),
    (init.kaiming_normal_, dict(a=0.1), "normal", math.sqrt(2 / (1 + 0.01)) / math.sqrt(400)),
    (init.kaiming_normal_, dict(mode="fan_out", nonlinearity="relu"), "normal", math.sqrt(2 / 1600)),
    (init.kaiming_uniform_, dict(nonlinearity="relu"), "uniform", math.sqrt(6 / 400)),
    (init.kaiming_uniform_, dict(a=math.sqrt(5)), "uniform", 1 / math.sqrt(400)),
    (init.xavier_normal_, dict(), "normal", math.sqrt(2 / (400 + 1600))),
    (init.xavier_uniform_, dict(gain=2.0), "uniform", 2.0 * math.sqrt(6 / (400 + 1600))),
])
def test_random_initialisers_have_the_right_distribution(fn, kwargs, kind, scale):
    w = np.empty((64, 16, 5, 5), np.float32)  # fan_in 400, fan_out 1600
    assert fn(w, rng=0, **kwargs) is w
    if kind == "normal":  # scale = std
        np.testing.assert_allclose(w.std(), scale, rtol=0.03)
        assert abs(w.mean()) < 0.05 * scale
    else:  # scale = bound
        assert np.abs(w).max() <= scale * (1 + 1e-6)
        assert np.abs(w).max() > 0.99 * scale
        np.testing.assert_allclose(w.std(), scale / math.sqrt(3), rtol=0.03)


def test_initialisers_reproducible_and_dtype_independent():
    a = init.kaiming_normal_(np.empty((30, 20)), rng=3)
    b = init.kaiming_normal_(np.empty((30, 20)), rng=np.random.default_rng(3))
    c = init.kaiming_normal_(np.empty((30, 20), np.float32), rng=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c, a, rtol=1e-6)
    assert not np.array_equal(init.kaiming_normal_(np.empty((30, 20)), rng=4), a)


def test_deterministic_fills_and_parameters():
    p = nn.Parameter(np.empty((2, 3), np.float32))
    assert init.ones_(p) is p
    np.testing.assert_array_equal(p.data, 1)
    init.zeros_(p)
    np.testing.assert_array_equal(p.data, 0)
    init.constant_(p.data, 0.5)
    np.testing.assert_array_equal(p.data, 0.5)
    init.uniform_(p, -2, -1, rng=0)
    assert (p.data >= -2).all() and (p.data < -1).all()
    init.normal_(p, 5.0, 0.0, rng=0)
    np.testing.assert_array_equal(p.data, 5.0)
    with pytest.raises(TypeError, match="floating"):
        init.ones_(np.zeros(3, np.int32))
    with pytest.raises(TypeError):
        init.ones_([1.0, 2.0])
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal_(np.empty((3, 3)), mode="fan_avg")


def test_default_init_is_pytorchs():
    w = np.empty((128, 64, 3, 3))
    b = np.empty(128)
    init.default_init_(w, b, rng=0)
    bound = 1 / math.sqrt(64 * 9)
    for a in (w, b):
        assert np.abs(a).max() <= bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.02)
    assert np.abs(b).max() > 0.9 * bound
