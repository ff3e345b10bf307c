"""avg_pool2d's divisor_override: the fast op (the kernel's general loop divides every window's
sum by it), the reference and PyTorch through check_op, over padding, ceil_mode and negative
divisors; hypothesis; threads and layouts; bad divisors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import functional as F
from fastconv import reference as R

from checks import assert_same_with_threads, check_layouts, check_op


def avg(module, **kwargs):
    return (lambda x: module.avg_pool2d(x, **kwargs),
            lambda gy, x: module.avg_pool2d_backward(gy, x.shape, **kwargs))


def torch_avg(**kwargs):
    def fn(x):
        import torch
        return torch.nn.functional.avg_pool2d(x, **kwargs)
    return fn


# (input shape, avg_pool2d's arguments)
CASES = [
    ((2, 3, 8, 8), dict(kernel_size=2, divisor_override=3)),            # the 2x2 shape
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1, divisor_override=4)),
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                        count_include_pad=False, divisor_override=5)),
    ((1, 2, 10, 11), dict(kernel_size=(2, 3), stride=(1, 2), padding=1, ceil_mode=True,
                          divisor_override=-7)),                        # negative, as torch
    ((1, 1, 3, 4), dict(kernel_size=4, stride=2, ceil_mode=True, divisor_override=1)),
    ((2, 2, 6, 6), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True,
                        divisor_override=2)),
    ((0, 3, 5, 5), dict(kernel_size=2, divisor_override=3)),            # empty batch
    ((2, 3, 5, 5), dict(kernel_size=3, padding=1, divisor_override=None)),
]


@pytest.mark.parametrize("shape,kwargs", CASES, ids=str)
def test_matches_torch(torch, rng, shape, kwargs):
    check_op(avg(F, **kwargs), avg(R, **kwargs), torch_avg(**kwargs), [shape], rng=rng,
             torch=torch)


@settings(max_examples=50, deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 10), k=st.integers(1, 4), s=st.integers(1, 3),
       p=st.integers(0, 2), ceil=st.booleans(), include=st.booleans(),
       divisor=st.integers(-9, 9).filter(bool), seed=st.integers(0, 2**32 - 1))
def test_property(h, w, k, s, p, ceil, include, divisor, seed):
    torch = pytest.importorskip("torch")
    p = min(p, k // 2)
    kwargs = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil,
                  count_include_pad=include, divisor_override=divisor)
    try:
        F.pool2d_output_shape((1, 1, h, w), k, s, p, 1, ceil)
    except ValueError:  # (a kernel larger than the padded input)
        return
    check_op(avg(F, **kwargs), avg(R, **kwargs), torch_avg(**kwargs), [(2, 2, h, w)],
             rng=np.random.default_rng(seed), torch=torch, max_numerical=12)


def test_divides_each_sum_exactly(torch):
    """The kernel divides the window's sum (not its mean times a factor): torch's bits."""
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    for kwargs in (dict(kernel_size=2, divisor_override=3),
                   dict(kernel_size=3, stride=2, padding=1, divisor_override=7)):
        want = torch.nn.functional.avg_pool2d(torch.tensor(x), **kwargs).numpy()
        np.testing.assert_array_equal(F.avg_pool2d(x, **kwargs), want)
    ones = np.ones((1, 1, 4, 4))
    np.testing.assert_array_equal(F.avg_pool2d(ones, 2, divisor_override=3), np.full((1, 1, 2, 2), 4 / 3))


def test_threads_and_layouts(rng, threads):
    x = rng.standard_normal((2, 5, 11, 10)).astype(np.float32)
    kwargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=6)
    forward, backward = avg(F, **kwargs)
    gy = rng.standard_normal(forward(x).shape).astype(np.float32)
    assert_same_with_threads(threads, lambda: (forward(x), backward(gy, x)))
    for forward, backward in (avg(F, **kwargs), avg(R, **kwargs)):
        check_layouts(forward, x)
        check_layouts(lambda a: backward(a, x), gy)


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_bad_divisors(module):
    x = np.ones((1, 1, 4, 4))
    with pytest.raises(ValueError, match="avg_pool2d: divisor_override must be non-zero"):
        module.avg_pool2d(x, 2, divisor_override=0)
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="avg_pool2d: divisor_override must be an int or None"):
            module.avg_pool2d(x, 2, divisor_override=bad)
    with pytest.raises(ValueError, match="avg_pool2d_backward: divisor_override must be non-zero"):
        module.avg_pool2d_backward(np.ones((1, 1, 2, 2)), x.shape, 2, divisor_override=0)
    with pytest.raises(ValueError, match="magnitude below 2"):
        module.avg_pool2d(x, 2, divisor_override=2**40)


# ---- the layer ----------------------------------------------------------------------------

def test_layer_arguments_repr_and_errors(torch):
    from fastconv import nn

    layer = nn.AvgPool2d(3, 2, 1, False, True, 4)        # positional, in torch's order
    assert layer.divisor_override == 4
    assert repr(layer) == "AvgPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), divisor_override=4)"
    assert nn.AvgPool2d(2).divisor_override is None
    assert "divisor_override" not in repr(nn.AvgPool2d(2))
    with pytest.raises(ValueError, match="AvgPool2d: divisor_override must be non-zero"):
        nn.AvgPool2d(2, divisor_override=0)
    with pytest.raises(TypeError, match="AvgPool2d: divisor_override must be an int or None, got 2.0"):
        nn.AvgPool2d(2, divisor_override=2.0)
    x = np.random.default_rng(0).standard_normal((0, 2, 6, 6))           # empty batch
    assert layer(x).shape == (0, 2, 3, 3) and layer.backward(np.zeros((0, 2, 3, 3))).shape == x.shape
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\) or \(C, H, W\), "
                                         r"got \(6, 6\)"):
        layer(np.zeros((6, 6)))
