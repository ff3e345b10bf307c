"""AdaptiveAvgPool2d: the fast op (its own kernel, global pooling, avg_pool2d where the output
divides the input), the reference and PyTorch through check_op; threads, layouts, non-finite
values, bad arguments; the layer and its receptive field in the summary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import _core, nn
from fastconv import functional as F
from fastconv import reference as R

from checks import (assert_same_nonfinite, assert_same_with_threads, check_integer_input,
                    check_layer, check_layouts, check_op)


def adaptive(module, output_size):
    return (lambda x: module.adaptive_avg_pool2d(x, output_size),
            lambda gy, x: module.adaptive_avg_pool2d_backward(gy, x.shape))


CASES = [
    ((2, 3, 7, 9), 1),              # global average pooling
    ((1, 130, 2, 3), 1),            # global, more planes than one block
    ((2, 3, 7, 9), (3, 4)),         # overlapping windows
    ((2, 3, 8, 8), (4, 4)),         # divides: avg_pool2d's 2x2 kernel
    ((2, 3, 12, 8), (3, 2)),        # divides: 4x4 windows
    ((2, 3, 6, 9), (6, 3)),         # divides, one axis kept
    ((1, 2, 5, 5), (7, 9)),         # output larger than the input: repeated rows
    ((2, 3, 7, 9), (None, 2)),      # None keeps the input size
    ((2, 3, 7, 9), (3, None)),
    ((3, 2, 1, 1), (4, 5)),         # a 1x1 input
    ((1, 1, 33, 31), (5, 7)),
    ((2, 4, 7, 9), [2, 5]),         # a list, as torch allows
    ((0, 3, 5, 5), 2),              # empty batch
    ((2, 0, 5, 5), 2),              # no channels
    ((2, 3, 5, 5), (0, 3)),         # empty output
]


def _torch_fn(output_size):
    def fn(x):
        import torch
        return torch.nn.functional.adaptive_avg_pool2d(x, output_size)
    return fn


@pytest.mark.parametrize("shape,output_size", CASES, ids=str)
def test_adaptive_avg_pool2d_matches_torch(torch, rng, shape, output_size):
    check_op(adaptive(F, output_size), adaptive(R, output_size), _torch_fn(output_size), [shape],
             rng=rng, torch=torch)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       oh=st.one_of(st.none(), st.integers(1, 14)), ow=st.one_of(st.none(), st.integers(1, 14)),
       seed=st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool2d_property(n, c, h, w, oh, ow, seed):
    torch = pytest.importorskip("torch")
    check_op(adaptive(F, (oh, ow)), adaptive(R, (oh, ow)), _torch_fn((oh, ow)), [(n, c, h, w)],
             rng=np.random.default_rng(seed), torch=torch, max_numerical=12)


@pytest.mark.parametrize("output_size", [1, (3, 5), (4, 4), (9, 11)], ids=str)
def test_adaptive_avg_pool2d_threads_layouts_integers(rng, threads, output_size):
    x = rng.standard_normal((5, 31, 12, 16)).astype(np.float32)  # more planes than threads
    gy = rng.standard_normal(F.adaptive_avg_pool2d(x, output_size).shape).astype(np.float32)
    assert_same_with_threads(threads, lambda: (F.adaptive_avg_pool2d(x, output_size),
                                               F.adaptive_avg_pool2d_backward(gy, x.shape)))
    for module in (F, R):
        check_layouts(lambda a: module.adaptive_avg_pool2d(a, output_size), x)
        check_layouts(lambda a: module.adaptive_avg_pool2d_backward(a, x.shape), gy)
        check_integer_input(lambda a: module.adaptive_avg_pool2d(a, output_size),
                            rng.integers(-5, 5, (2, 3, 12, 16)))


def test_adaptive_avg_pool2d_nan_and_inf_as_torch(torch):
    x = np.arange(2 * 36, dtype=np.float64).reshape(1, 2, 6, 6)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 0, 5] = np.inf
    x[0, 1, 5, 0] = -np.inf
    for output_size in (1, (3, 3), (4, 5), (2, 3)):
        want = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), output_size).numpy()
        for module in (F, R):
            assert_same_nonfinite(module.adaptive_avg_pool2d(x, output_size), want,
                                  f"{module.__name__} {output_size}")


def test_adaptive_avg_pool2d_paths_agree(rng):
    # global pooling and the dividing sizes run other kernels than the general one: the
    # windows are the same, the values agree to rounding
    x = rng.standard_normal((2, 3, 8, 12))
    for output_size in (1, (4, 6), (2, 3), (8, 1)):
        y = F.adaptive_avg_pool2d(x, output_size)
        general = np.empty_like(y)
        _core.adaptive_avg_pool2d_forward(x, general)
        np.testing.assert_allclose(y, general, rtol=1e-14, atol=1e-15)
        gx = np.empty_like(x)
        _core.adaptive_avg_pool2d_backward(y, gx)
        np.testing.assert_allclose(F.adaptive_avg_pool2d_backward(y, x.shape), gx,
                                   rtol=1e-14, atol=1e-15)


BAD_CALLS = [
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), -1), ValueError,
     "adaptive_avg_pool2d: output_size must be >= 0"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), (2.5, 3)), TypeError,
     "output_size must be an int or a pair of ints or None"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), (True, 3)), TypeError, "output_size"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), (1, 2, 3)), TypeError, "output_size"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), None), TypeError, "output_size"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((4, 4)), 2), ValueError, r"x must be 4-D.*\(4, 4\)"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 0, 4)), 2), ValueError,
     r"x of shape \(1, 1, 0, 4\) has empty planes"),
    (lambda m: m.adaptive_avg_pool2d(np.ones((1, 1, 4, 4), complex), 2), TypeError, "real numbers"),
    (lambda m: m.adaptive_avg_pool2d_backward(np.ones((1, 2, 2, 2)), (1, 1, 4, 4)), ValueError,
     r"grad_y \(1, 2, 2, 2\) and input_shape \(1, 1, 4, 4\) must agree on \(N, C\)"),
    (lambda m: m.adaptive_avg_pool2d_backward(np.ones((1, 1, 2, 2)), (1, 1, 0, 4)), ValueError,
     "input_shape of shape .* has empty planes"),
    (lambda m: m.adaptive_avg_pool2d_backward(np.ones((1, 1, 2)), (1, 1, 4, 4)), ValueError,
     "grad_y must be 4-D"),
    (lambda m: m.adaptive_avg_pool2d_backward(np.ones((1, 1, 2, 2)), (1, 4)), ValueError,
     "input_shape must be a sequence of 4"),
    (lambda m: m.adaptive_avg_pool2d_backward(np.ones((1, 1, 2, 2)), (1, 1, 4)), ValueError,
     r"input_shape is unbatched \(shape \(1, 1, 4\)\), so grad_y must be 3-D too, got shape "
     r"\(1, 1, 2, 2\)"),
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_adaptive_avg_pool2d_bad_arguments(module, call, exc, match):
    with pytest.raises(exc, match=match):
        call(module)


def test_adaptive_binding_checks_shapes():
    with pytest.raises(ValueError, match="must agree on"):
        _core.adaptive_avg_pool2d_forward(np.ones((1, 2, 4, 4)), np.empty((1, 3, 2, 2)))
    with pytest.raises(TypeError, match="grad_x must be a float32 array"):
        _core.adaptive_avg_pool2d_backward(np.ones((1, 2, 2, 2), np.float32), np.empty((1, 2, 4, 4)))


# ---- the layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("output_size,shape", [(1, (2, 3, 7, 5)), ((3, 4), (2, 3, 7, 9)),
                                               ((None, 2), (2, 2, 5, 6)), (4, (1, 2, 8, 8))],
                         ids=str)
def test_layer_matches_torch(torch, output_size, shape):
    check_layer(torch, lambda: nn.AdaptiveAvgPool2d(output_size),
                lambda t: t.nn.AdaptiveAvgPool2d(output_size), shape)


def test_layer_repr_shape_and_errors(torch):
    for output_size in (1, (2, 3), (None, 3)):
        assert repr(nn.AdaptiveAvgPool2d(output_size)) == repr(torch.nn.AdaptiveAvgPool2d(output_size))
    layer = nn.AdaptiveAvgPool2d((None, 3))
    assert layer.output_shape((4, 2, 7, 9)) == (4, 2, 7, 3)
    assert layer.output_shape((2, 7, 9)) == (2, 7, 3)                  # unbatched
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\) or \(C, H, W\)"):
        layer.output_shape((7, 9))
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size must be >= 0"):
        nn.AdaptiveAvgPool2d(-2)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\) or \(C, H, W\)"):
        layer(np.ones((7, 9)))
    y = layer(np.ones((1, 2, 4, 6), np.float64))
    assert y.dtype == np.float64
    with pytest.raises(ValueError, match="grad_y has shape"):
        layer.backward(np.ones((1, 2, 4, 6)))


def test_summary_receptive_field_through_adaptive_pooling():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d((4, 3)),
                          nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    rows = model.summary((3, 8, 7), print_fn=None).rows
    assert [r["output_shape"] for r in rows] == [(None, 4, 8, 7), (None, 4, 4, 3), (None, 4, 4, 3),
                                                 (None, 4, 1, 1), (None, 16 // 4)]
    # 8 -> 4 rows: 2-row windows (jump 2); 7 -> 3 columns: windows [0,3) [2,5) [4,7): width 3,
    # step 2. Then a 3x3 conv (r += 2 * jump) and global pooling over 4 x 3 (r += 3 * jump).
    assert rows[1]["rf_size"] == (3 + 1, 3 + 2) and rows[1]["rf_jump"] == (2, 2)
    assert rows[2]["rf_size"] == (4 + 4, 5 + 4)
    assert rows[3]["rf_size"] == (8 + 3 * 2, 9 + 2 * 2) and rows[3]["rf_jump"] == (8, 6)
