"""ConvTranspose2d: the fast op (the conv input-gradient kernels; its backward the conv forward
and weight-gradient kernels), the reference and PyTorch through check_op; threads, layouts,
NaN, bad arguments; the layer (default initialisation, output_size, receptive field)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import nn
from fastconv import functional as F
from fastconv import reference as R

from checks import (assert_same_nonfinite, assert_same_with_threads, check_integer_input,
                    check_layer, check_layouts, check_op)

# (x shape, C_out, kernel, stride, padding, output_padding, groups, dilation)
CASES = [
    ((2, 4, 5, 5), 3, 3, 1, 0, 0, 1, 1),
    ((2, 4, 5, 5), 3, 3, 2, 1, 1, 1, 1),             # the decoder's 2x upsampling
    ((2, 8, 4, 4), 4, 2, 2, 0, 0, 1, 1),             # 2x2 stride 2: no overlap
    ((1, 6, 7, 5), 4, (3, 2), (2, 1), (1, 0), (1, 0), 2, (1, 2)),
    ((2, 4, 5, 5), 6, 3, 1, 0, 2, 1, 3),             # output_padding >= stride, < dilation
    ((2, 4, 5, 5), 6, 3, 2, 0, 2, 2, 3),             # output_padding = stride, < dilation
    ((2, 4, 3, 3), 4, 3, 1, 2, 0, 4, 1),             # depthwise; padding 2 leaves a 1x1 output
    ((3, 2, 1, 1), 5, 4, 3, 0, 2, 1, 1),             # 1x1 input
    ((2, 16, 6, 6), 32, 3, 2, 1, 1, 1, 1),           # 16+ channels (other conv kernels)
    ((2, 3, 6, 5), 2, 1, 1, 0, 0, 1, 1),             # 1x1 kernel
    ((2, 3, 6, 5), 2, 5, 3, 2, 2, 1, 1),
    ((0, 4, 5, 5), 3, 3, 2, 1, 1, 1, 1),             # empty batch
    ((1, 2, 1, 1), 2, 1, 1, 1, 2, 1, 3),             # no output reached by the kernel: bias only
]


def args(case):
    xs, c_out, k, s, p, op, g, d = case
    kh, kw = (k, k) if isinstance(k, int) else k
    return ([xs, (xs[1], c_out // g, kh, kw), (c_out,)],
            dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d))


def pairs(kw):
    def make(module):
        return (lambda x, w, b: module.conv_transpose2d(x, w, b, **kw),
                lambda gy, x, w, b: module.conv_transpose2d_backward(gy, x, w, **kw))

    def torch_fn(x, w, b):
        import torch
        return torch.nn.functional.conv_transpose2d(x, w, b, **kw)

    return make(F), make(R), torch_fn


@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_transpose2d_matches_torch(torch, rng, case):
    shapes, kw = args(case)
    fast, ref, torch_fn = pairs(kw)
    check_op(fast, ref, torch_fn, shapes, rng=rng, torch=torch)


@st.composite
def configs(draw):
    g = draw(st.integers(1, 2))
    c_in, c_out = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    k, s, d = (draw(st.tuples(st.integers(lo, hi), st.integers(lo, hi)))
               for lo, hi in ((1, 4), (1, 3), (1, 3)))
    op = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
    size = draw(st.tuples(st.integers(1, 6), st.integers(1, 6)))
    p = tuple(draw(st.integers(0, ((n - 1) * si + di * (ki - 1) + oi) // 2))
              for n, si, di, ki, oi in zip(size, s, d, k, op))
    return ((draw(st.integers(1, 2)), c_in) + size, c_out, k, s, p, op, g, d)


@settings(max_examples=60, deadline=None)
@given(case=configs(), seed=st.integers(0, 2**32 - 1))
def test_conv_transpose2d_property(case, seed):
    torch = pytest.importorskip("torch")
    shapes, kw = args(case)
    fast, ref, torch_fn = pairs(kw)
    check_op(fast, ref, torch_fn, shapes, rng=np.random.default_rng(seed), torch=torch,
             max_numerical=12)


def test_conv_transpose2d_threads_layouts_integers(rng, threads):
    x = rng.standard_normal((6, 16, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1)
    gy = rng.standard_normal(F.conv_transpose2d(x, w, b, **kw).shape).astype(np.float32)
    assert_same_with_threads(threads, lambda: (F.conv_transpose2d(x, w, b, **kw),
                                               *F.conv_transpose2d_backward(gy, x, w, **kw)))
    for module in (F, R):
        check_layouts(lambda a: module.conv_transpose2d(a, w, b, **kw), x)
        check_layouts(lambda a: module.conv_transpose2d(x, a, b, **kw), w)
        check_layouts(lambda a: module.conv_transpose2d_backward(a, x, w, **kw), gy)
        check_integer_input(lambda a: module.conv_transpose2d(a, a[:1], **kw),
                            rng.integers(-3, 3, (2, 1, 4, 4)))
    # mixed precision computes in float64
    assert F.conv_transpose2d(x, w.astype(float), **kw).dtype == np.float64
    assert F.conv_transpose2d_backward(gy, x.astype(float), w, **kw)[1].dtype == np.float64


def test_conv_transpose2d_output_mask(rng):
    x, w = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    gy = rng.standard_normal((2, 3, 12, 12))
    full = F.conv_transpose2d_backward(gy, x, w, stride=2, output_padding=1)
    for mask in [(True, False, False), (False, True, False), (False, False, True)]:
        got = F.conv_transpose2d_backward(gy, x, w, stride=2, output_padding=1, output_mask=mask)
        for flag, a, b in zip(mask, got, full):
            assert (a is None) != flag
            if flag:
                np.testing.assert_array_equal(a, b)


def test_conv_transpose2d_nan_as_torch(torch):
    x = np.ones((1, 2, 4, 4))
    x[0, 1, 2, 1] = np.nan
    x[0, 0, 0, 3] = np.inf
    w = np.arange(2 * 3 * 3 * 3, dtype=float).reshape(2, 3, 3, 3) / 10 + 0.1
    for kw in (dict(), dict(stride=2, padding=1, output_padding=1)):
        want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kw).numpy()
        for module in (F, R):
            assert_same_nonfinite(module.conv_transpose2d(x, w, **kw), want, f"{module.__name__} {kw}")


X, W = np.ones((1, 4, 5, 5)), np.ones((4, 3, 3, 3))
BAD_CALLS = [
    (lambda m: m.conv_transpose2d(X, W, output_padding=1), ValueError,
     r"output_padding \(1, 1\) must be smaller than either stride \(1, 1\) or dilation \(1, 1\)"),
    (lambda m: m.conv_transpose2d(X, W, stride=2, output_padding=(0, 2)), ValueError,
     "output_padding .* must be smaller"),
    (lambda m: m.conv_transpose2d(X, W, output_padding=-1), ValueError, "output_padding must be non-negative"),
    (lambda m: m.conv_transpose2d(X, W, padding=-1), ValueError, "padding must be non-negative"),
    (lambda m: m.conv_transpose2d(X, W, padding="same"), TypeError, "padding must be an int or a pair"),
    (lambda m: m.conv_transpose2d(X, W, stride=0), ValueError, "stride must be positive"),
    (lambda m: m.conv_transpose2d(X, W, padding=4), ValueError,
     r"gives an output size of \(-1, -1\): the padding is too large"),
    (lambda m: m.conv_transpose2d(X, np.ones((3, 3, 3, 3))), ValueError,
     r"weight of shape \(3, 3, 3, 3\) expects x to have 3 channels .* x of shape \(1, 4, 5, 5\) has 4"),
    (lambda m: m.conv_transpose2d(X, W, groups=3), ValueError,
     r"in_channels \(4, weight shape \(4, 3, 3, 3\)\) must be divisible by groups=3"),
    (lambda m: m.conv_transpose2d(X, W, groups=0), ValueError, "groups must be positive"),
    (lambda m: m.conv_transpose2d(X, W, groups=1.0), TypeError, "groups must be an int"),
    (lambda m: m.conv_transpose2d(X, W, np.ones(4)), ValueError,
     r"bias must have shape \(3,\) to match weight \(4, 3, 3, 3\), got \(4,\)"),
    (lambda m: m.conv_transpose2d(X, W, groups=2, bias=np.ones(3)), ValueError, r"bias must have shape \(6,\)"),
    (lambda m: m.conv_transpose2d(X[0, 0], W), ValueError, r"x must be 4-D.*\(5, 5\)"),
    (lambda m: m.conv_transpose2d(X, W[0]), ValueError, r"weight must be 4-D \(C_in, C_out/groups, kH, kW\)"),
    (lambda m: m.conv_transpose2d(X, np.ones((4, 0, 3, 3))), ValueError, "weight has an empty dimension"),
    (lambda m: m.conv_transpose2d_backward(np.ones((1, 3, 6, 6)), X, W), ValueError,
     r"grad_y must have the conv_transpose2d output shape \(1, 3, 7, 7\)"),
    (lambda m: m.conv_transpose2d_backward(np.ones((1, 3, 7, 7)), X, W, output_mask=(True,)), ValueError,
     "output_mask must be three booleans"),
    (lambda m: m.conv_transpose2d(X.astype(complex), W), TypeError, "x must hold real numbers"),
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_conv_transpose2d_bad_arguments(module, call, exc, match):
    with pytest.raises(exc, match=match):
        call(module)


# ---- the layer ----------------------------------------------------------------------------

LAYERS = [
    ("basic", lambda: nn.ConvTranspose2d(4, 3, 3), lambda t: t.nn.ConvTranspose2d(4, 3, 3), (2, 4, 5, 5)),
    ("stride2", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
     lambda t: t.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 4, 3)),
    ("groups_dilation_nobias",
     lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0),
                                groups=2, bias=False, dilation=2),
     lambda t: t.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0),
                                    groups=2, bias=False, dilation=2), (2, 4, 5, 4)),
]


@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_matches_torch(torch, case):
    _, make, make_torch, shape = case
    check_layer(torch, make, make_torch, shape)


def test_layer_repr_matches_torch(torch):
    for _, make, make_torch, _ in LAYERS:
        assert repr(make()) == repr(make_torch(torch))


def test_layer_output_size_as_torch(torch, rng):
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, rng=0)
    tlayer = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2).double()
    tlayer.load_state_dict({k: torch.tensor(v) for k, v in layer.astype(np.float64).state_dict().items()})
    x = rng.standard_normal((2, 4, 5, 5))
    for size in [(11, 11), (12, 12), (11, 12), [2, 6, 12, 11]]:
        y = layer(x, output_size=size)
        np.testing.assert_allclose(y, tlayer(torch.tensor(x), output_size=size).detach().numpy(),
                                   rtol=1e-12, atol=1e-12)
        gx = layer.backward(np.ones_like(y))
        assert gx.shape == x.shape
    with pytest.raises(ValueError, match=r"requested an output size of \(13, 13\), but valid sizes "
                                         r"range from \(11, 11\) to \(12, 12\)"):
        layer(x, output_size=(13, 13))
    with pytest.raises(TypeError, match="output_size must be"):
        layer(x, output_size=12)
    assert layer.output_shape((2, 4, 5, 5)) == (2, 6, 11, 11)


def test_layer_default_init_is_torchs(torch):
    # fan_in = weight.shape[1] * kH * kW (out_channels / groups * kH * kW), as torch computes it
    layer = nn.ConvTranspose2d(64, 16, 3, groups=2, rng=0)
    tlayer = torch.nn.ConvTranspose2d(64, 16, 3, groups=2)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(tlayer.weight)
    assert fan_in == 8 * 9
    bound = 1 / np.sqrt(fan_in)
    for ours, theirs in ((layer.weight.data, tlayer.weight), (layer.bias.data, tlayer.bias)):
        assert ours.shape == tuple(theirs.shape)
        assert np.abs(ours).max() <= bound and np.abs(theirs.detach().numpy()).max() <= bound
        assert np.abs(ours).max() > 0.9 * bound  # uniform over the whole range
        assert abs(ours.std() - bound / np.sqrt(3)) < 0.1 * bound


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match=r"output_padding \(2, 2\) must be smaller than either stride"):
        nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="out_channels .* must be divisible by groups"):
        nn.ConvTranspose2d(4, 6, 3, groups=4)
    with pytest.raises(TypeError, match="padding must be an int or a pair"):
        nn.ConvTranspose2d(4, 6, 3, padding="same")
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\)"):
        nn.ConvTranspose2d(4, 6, 3)(np.ones((1, 3, 5, 5)))


def test_summary_receptive_field_through_transposed_conv():
    # conv k3 s2: r 3, jump 2; transposed k2 s2 (one input per output): r 3, jump 1;
    # transposed k3 s2 (up to 2 inputs per output): r 3 + 1, jump 1/2; conv k3: r 4 + 2 * 1/2
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ConvTranspose2d(2, 2, 2, stride=2),
                          nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1),
                          nn.Conv2d(2, 1, 3, padding=1))
    rows = model.summary((1, 8, 8), print_fn=None).rows
    assert [r["output_shape"] for r in rows] == [(None, 2, 4, 4), (None, 2, 8, 8), (None, 2, 16, 16),
                                                 (None, 1, 16, 16)]
    assert [r["rf_size"] for r in rows] == [(3, 3), (3, 3), (4, 4), (5, 5)]
    assert [r["rf_jump"] for r in rows] == [(2, 2), (1, 1), (Fraction(1, 2),) * 2, (Fraction(1, 2),) * 2]
