"""Nearest upsampling: the fast op (its own row kernel, a gather-free 2x path), the reference
and PyTorch through check_op; exact forward equality with torch for sizes and scale factors;
threads, layouts, NaN, bad arguments; the layer and its receptive field."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import _core, nn
from fastconv import functional as F
from fastconv import reference as R

from checks import (assert_same_nonfinite, assert_same_with_threads, check_integer_input,
                    check_layer, check_layouts, check_op)


def resample(module, **kw):
    return (lambda x: module.upsample_nearest2d(x, **kw),
            lambda gy, x: module.upsample_nearest2d_backward(gy, x.shape, **kw))


def torch_resample(**kw):
    def fn(x):
        import torch
        return torch.nn.functional.interpolate(x, mode="nearest", **kw)
    return fn


CASES = [
    ((2, 3, 5, 7), dict(scale_factor=2)),          # the 2x kernel
    ((2, 3, 5, 7), dict(scale_factor=2.0)),
    ((2, 3, 5, 7), dict(scale_factor=3)),
    ((2, 3, 5, 7), dict(scale_factor=1.5)),
    ((2, 3, 5, 7), dict(scale_factor=(1.7, 0.6))),  # up along H, down along W
    ((2, 3, 8, 8), dict(scale_factor=0.5)),
    ((2, 3, 5, 7), dict(size=(9, 4))),
    ((2, 3, 5, 7), dict(size=3)),
    ((2, 3, 5, 7), dict(size=(10, 14))),            # size = 2x: PyTorch's 2x special case
    ((2, 3, 5, 7), dict(size=(5, 7))),              # the identity
    ((2, 3, 5, 7), dict(scale_factor=2.5, recompute_scale_factor=True)),
    ((1, 1, 1, 1), dict(scale_factor=(4, 3))),
    ((0, 3, 4, 4), dict(scale_factor=2)),           # empty batch
    ((2, 0, 4, 4), dict(size=3)),                   # no channels (torch refuses; fine here)
]


@pytest.mark.parametrize("shape,kw", CASES, ids=str)
def test_upsample_nearest2d_matches_torch(torch, rng, shape, kw):
    check_op(resample(F, **kw), resample(R, **kw), torch_resample(**kw), [shape], rng=rng,
             torch=torch if shape[1] else None, tol=0.0)  # a copy: exactly torch's values


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_upsample_nearest2d_property(h, w, data, seed):
    torch = pytest.importorskip("torch")
    if data.draw(st.booleans(), label="by size"):
        kw = dict(size=data.draw(st.tuples(st.integers(1, 90), st.integers(1, 90)), label="size"))
    else:
        f = st.floats(0.05, 5.0).filter(lambda v: h * v >= 1 and w * v >= 1)
        kw = dict(scale_factor=data.draw(st.one_of(f, st.integers(1, 4)), label="scale"))
        if min(h, w) * kw["scale_factor"] < 1:
            return
    # float32 against torch bit for bit; float64 fast against the reference only. fastconv
    # picks the source pixel in float32 arithmetic for both dtypes, as torch's nearest_idx;
    # torch 2.13 computes it in double for float64 outputs of some shapes only (2 -> 82
    # columns: from 47 output rows up, not below), which differs where dst * in / out is a
    # whole number that float32 rounds down (column 41 of 2 -> 82 copies pixel 0, not 1).
    rng = np.random.default_rng(seed)
    check_op(resample(F, **kw), resample(R, **kw), torch_resample(**kw), [(1, 2, h, w)],
             rng=rng, torch=torch, tol=0.0, dtypes=(np.float32,), max_numerical=10)
    check_op(resample(F, **kw), resample(R, **kw), None, [(1, 2, h, w)],
             rng=rng, torch=None, tol=0.0, dtypes=(np.float64,), max_numerical=10)


@pytest.mark.parametrize("kw", [dict(scale_factor=2), dict(scale_factor=(1.5, 3)), dict(size=(7, 30))],
                         ids=str)
def test_upsample_threads_layouts_integers(rng, threads, kw):
    x = rng.standard_normal((3, 7, 20, 12)).astype(np.float32)
    gy = rng.standard_normal(F.upsample_nearest2d(x, **kw).shape).astype(np.float32)
    assert_same_with_threads(threads, lambda: (F.upsample_nearest2d(x, **kw),
                                               F.upsample_nearest2d_backward(gy, x.shape, **kw)))
    for module in (F, R):
        check_layouts(lambda a: module.upsample_nearest2d(a, **kw), x)
        check_layouts(lambda a: module.upsample_nearest2d_backward(a, x.shape, **kw), gy)
        check_integer_input(lambda a: module.upsample_nearest2d(a, **kw), rng.integers(-3, 3, (2, 3, 4, 5)))


def test_upsample_nan_and_inf_are_copied(torch):
    x = np.arange(2 * 3 * 4, dtype=float).reshape(1, 2, 3, 4)
    x[0, 0, 1, 2], x[0, 1, 0, 0], x[0, 1, 2, 3] = np.nan, np.inf, -np.inf
    for kw in (dict(scale_factor=2), dict(size=(5, 9)), dict(scale_factor=0.7)):
        want = torch.nn.functional.interpolate(torch.tensor(x), mode="nearest", **kw).numpy()
        for module in (F, R):
            assert_same_nonfinite(module.upsample_nearest2d(x, **kw), want, f"{module.__name__} {kw}")


BAD_CALLS = [
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4))), ValueError, "give exactly one of size and scale_factor"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), size=3, scale_factor=2), ValueError, "exactly one"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), size=0), ValueError, "size must be positive"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), size=2.5), TypeError, "size must be an int or a pair"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), size=(1, 2, 3)), TypeError, "size"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor=0.1), ValueError,
     r"scale_factor 0.1 gives x of shape \(1, 1, 4, 4\) an output size of \(0, 0\): it must be at least 1"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor=-2), ValueError, "finite and positive"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor=float("inf")), ValueError, "finite"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor=float("nan")), ValueError, "finite"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor="2"), TypeError,
     "scale_factor must be a number or a pair"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor=(2, 2, 2)), TypeError, "scale_factor"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 4, 4)), scale_factor=2, recompute_scale_factor="yes"),
     TypeError, "recompute_scale_factor must be True or False"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 4, 4)), scale_factor=2), ValueError,
     r"x of shape \(1, 4, 4\) is 3-D, which PyTorch's Upsample/interpolate takes as 1-D data"),
    (lambda m: m.upsample_nearest2d(np.ones((4, 4)), scale_factor=2), ValueError, r"x must be 4-D"),
    (lambda m: m.upsample_nearest2d(np.ones((1, 1, 0, 4)), scale_factor=2), ValueError, "has empty planes"),
    (lambda m: m.upsample_nearest2d_backward(np.ones((1, 1, 8, 7)), (1, 1, 4, 4), scale_factor=2), ValueError,
     r"grad_y must have the upsampled shape \(1, 1, 8, 8\) for input_shape \(1, 1, 4, 4\), got \(1, 1, 8, 7\)"),
    (lambda m: m.upsample_nearest2d_backward(np.ones((1, 8, 8)), (1, 1, 4, 4), scale_factor=2), ValueError,
     "grad_y must be 4-D"),
    (lambda m: m.upsample_nearest2d_backward(np.ones((1, 1, 8, 8)), (1, 1, 4), scale_factor=2), ValueError,
     "input_shape must be a sequence of 4"),
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_upsample_bad_arguments(module, call, exc, match):
    with pytest.raises(exc, match=match):
        call(module)


def test_upsample_binding_checks_index_maps():
    x, y = np.ones((1, 1, 2, 2)), np.empty((1, 1, 3, 3))
    ok = np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"rows must be non-decreasing and lie in \[0, 2\)"):
        _core.upsample_nearest2d_forward(x, y, np.array([0, 2, 1]), ok)
    with pytest.raises(ValueError, match="cols must be non-decreasing"):
        _core.upsample_nearest2d_forward(x, y, ok, np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="cols has 2 elements, expected 3"):
        _core.upsample_nearest2d_backward(y, x.copy(), ok, np.array([0, 1]))
    with pytest.raises(TypeError, match="rows must be a int64 array"):
        _core.upsample_nearest2d_forward(x, y, ok.astype(np.int32), ok)


# ---- the layer ----------------------------------------------------------------------------

LAYERS = [({"scale_factor": 2}, (2, 3, 4, 5)), ({"scale_factor": (1.5, 0.5)}, (2, 2, 6, 8)),
          ({"size": (7, 3)}, (1, 2, 4, 5)), ({"size": 6}, (2, 1, 3, 3))]


@pytest.mark.parametrize("kw,shape", LAYERS, ids=str)
def test_layer_matches_torch(torch, kw, shape):
    check_layer(torch, lambda: nn.Upsample(**kw), lambda t: t.nn.Upsample(**kw), shape)


def test_layer_arguments_repr_and_errors(torch):
    for kw, _ in LAYERS:
        assert repr(nn.Upsample(**kw)) == repr(torch.nn.Upsample(**kw))
    assert nn.Upsample(scale_factor=2).scale_factor == 2.0
    assert nn.Upsample(scale_factor=(2, 3)).scale_factor == (2.0, 3.0)
    with pytest.raises(ValueError, match="only mode='nearest' is implemented, got mode='bilinear'"):
        nn.Upsample(scale_factor=2, mode="bilinear")
    with pytest.raises(ValueError, match="align_corners can only be set with the interpolating modes"):
        nn.Upsample(scale_factor=2, align_corners=True)
    with pytest.raises(ValueError, match="give exactly one of size and scale_factor"):
        nn.Upsample()
    with pytest.raises(ValueError, match="scale_factor must be finite and positive"):
        nn.Upsample(scale_factor=0)
    layer = nn.Upsample(scale_factor=2.5, recompute_scale_factor=True)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 3))
    want = torch.nn.Upsample(scale_factor=2.5, recompute_scale_factor=True)(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(layer(x), want)
    assert layer.output_shape((4, 2, 5, 3)) == (4, 2, 12, 7)


def test_summary_receptive_field_through_upsampling():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Upsample(scale_factor=2),
                          nn.Conv2d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2),
                          nn.Conv2d(2, 1, 3, padding=1))
    rows = model.summary((1, 8, 8), print_fn=None).rows
    # jumps 2 -> 1 -> 1/2; conv3 after each adds 2 jumps
    assert [r["rf_jump"] for r in rows] == [(2, 2), (1, 1), (1, 1), (Fraction(1, 2),) * 2,
                                            (Fraction(1, 2),) * 2]
    assert [r["rf_size"] for r in rows] == [(3, 3), (3, 3), (5, 5), (5, 5), (6, 6)]
