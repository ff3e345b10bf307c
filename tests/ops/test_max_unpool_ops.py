"""max_unpool2d and MaxUnpool2d: the fast op, the reference and PyTorch through check_op (indices
from max_pool2d and arbitrary distinct ones; hypothesis), repeated indices, output_size rules,
hostile indices and arguments; the layer against torch.nn.MaxUnpool2d, in a SegNet-style
encoder-decoder against its torch twin, numerically, through to_torch, refused by to_onnx."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import functional as F
from fastconv import nn
from fastconv import reference as R
from fastconv.gradcheck import eval_numerical_gradient, rel_error

from checks import check_layouts, check_op
from numerics import assert_close


def distinct_indices(rng, shape, plane):
    """int64 indices of `shape` (N, C, H, W), distinct within each plane, in [0, plane)."""
    n, c, h, w = shape
    rows = [rng.permutation(plane)[:h * w] for _ in range(n * c)]
    return np.array(rows, np.int64).reshape(shape)


def unpool(module, indices, **kwargs):
    return (lambda x: module.max_unpool2d(x, indices, **kwargs),
            lambda gy, x: module.max_unpool2d_backward(gy, indices))


def torch_unpool(indices, **kwargs):
    def fn(x):
        import torch
        return torch.nn.functional.max_unpool2d(x, torch.tensor(indices), **kwargs)
    return fn


def check_unpool(torch, rng, shape, indices, **kwargs):
    check_op(unpool(F, indices, **kwargs), unpool(R, indices, **kwargs),
             torch_unpool(indices, **kwargs), [shape], rng=rng, torch=torch, tol=0.0, grad_tol=0.0)


# (pooled input shape, max_pool2d's arguments, max_unpool2d's extra arguments)
POOL_CASES = [
    ((2, 3, 8, 8), dict(kernel_size=2), {}),
    ((2, 3, 7, 9), dict(kernel_size=2), dict(output_size=(7, 9))),          # floor dropped a row
    ((1, 2, 9, 8), dict(kernel_size=3, stride=3, padding=1), dict(output_size=(1, 2, 9, 8))),
    ((2, 2, 6, 9), dict(kernel_size=(2, 3)), {}),
    ((0, 3, 4, 4), dict(kernel_size=2), {}),                                # empty batch
]


@pytest.mark.parametrize("shape,pool,extra", POOL_CASES, ids=str)
def test_inverts_max_pool2d_as_torch(torch, rng, shape, pool, extra):
    x = rng.standard_normal(shape)
    pooled, indices = F.max_pool2d(x, **pool, return_indices=True)
    kwargs = dict(kernel_size=pool["kernel_size"], stride=pool.get("stride"),
                  padding=pool.get("padding", 0), **extra)
    check_unpool(torch, rng, pooled.shape, indices, **kwargs)
    y = F.max_unpool2d(pooled, indices, **kwargs)
    if "output_size" in extra:
        assert y.shape == x.shape
    # each maximum back in its place, zeros elsewhere
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])
    assert kept.sum() == pooled.size


@pytest.mark.parametrize("shape,kwargs", [
    ((2, 3, 3, 4), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 1, 2, 2), dict(kernel_size=(4, 2), stride=(3, 1), output_size=(6, 3))),
    ((3, 2, 4, 1), dict(kernel_size=2, stride=1)),
], ids=str)
def test_distinct_indices_anywhere_in_the_plane(torch, rng, shape, kwargs):
    out = F.max_unpool2d(np.zeros(shape), np.zeros(shape, np.int64), **kwargs).shape
    indices = distinct_indices(rng, shape, out[2] * out[3])
    check_unpool(torch, rng, shape, indices, **kwargs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5),
       k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 1), dh=st.integers(-1, 1),
       seed=st.integers(0, 2**32 - 1))
def test_property(n, c, h, w, k, s, p, dh, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    oh, ow = (h - 1) * s + k - 2 * p, (w - 1) * s + k - 2 * p
    output_size = (oh + dh * (s > 1), ow)
    if min(output_size) < 1 or output_size[0] * output_size[1] < h * w:
        return
    indices = distinct_indices(rng, (n, c, h, w), output_size[0] * output_size[1])
    check_unpool(torch, rng, (n, c, h, w), indices, kernel_size=k, stride=s, padding=p,
                 output_size=output_size)


def test_repeated_indices_keep_the_last_value_and_read_the_gradient(torch):
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    indices = np.array([[[[0, 0], [5, 0]]]])
    g = np.arange(16.0).reshape(1, 1, 4, 4)
    for module in (F, R):
        y = module.max_unpool2d(x, indices, 2)
        want = np.zeros((1, 1, 4, 4))
        want[0, 0, 0, 0], want[0, 0, 1, 1] = 4.0, 3.0
        np.testing.assert_array_equal(y, want)
        # (torch's gradient: each input reads its position's, overwritten or not)
        xt = torch.tensor(x, requires_grad=True)
        torch.nn.functional.max_unpool2d(xt, torch.tensor(indices), 2).backward(torch.tensor(g))
        np.testing.assert_array_equal(module.max_unpool2d_backward(g, indices), xt.grad.numpy())


def test_layouts_and_integer_indices(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    indices = distinct_indices(rng, x.shape, 8 * 10)
    gy = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    for module in (F, R):
        check_layouts(lambda a: module.max_unpool2d(a, indices, 2), x)
        check_layouts(lambda a: module.max_unpool2d(x, a, 2), indices)
        check_layouts(lambda a: module.max_unpool2d_backward(a, indices), gy)
        np.testing.assert_array_equal(module.max_unpool2d(x, indices.astype(np.int32), 2),
                                      module.max_unpool2d(x, indices, 2))


X = np.ones((1, 2, 2, 2))
I = np.zeros((1, 2, 2, 2), np.int64)
BAD_CALLS = [
    (lambda m: m.max_unpool2d(X, I + 16, 2), ValueError,
     r"max_unpool2d: indices must lie in \[0, H\*W\) = \[0, 16\) for the output \(1, 2, 4, 4\)"),
    (lambda m: m.max_unpool2d(X, I - 1, 2), ValueError, r"indices must lie in \[0, H\*W\)"),
    (lambda m: m.max_unpool2d(X, I.astype(float), 2), TypeError,
     "indices must be an integer array, got dtype float64"),
    (lambda m: m.max_unpool2d(X, I[..., :1], 2), ValueError,
     r"indices shape \(1, 2, 2, 1\) must equal x shape \(1, 2, 2, 2\)"),
    (lambda m: m.max_unpool2d(X[0, 0], I[0, 0], 2), ValueError, r"x must be 4-D \(N, C, H, W\)"),
    (lambda m: m.max_unpool2d(X, I, 2, output_size=(6, 6)), ValueError,
     r"invalid output_size \(6, 6\) \(dim 0 must be between 2 and 6, exclusive"),
    (lambda m: m.max_unpool2d(X, I, 2, output_size=(1, 1, 1, 4, 4)), ValueError,
     "output_size should be a sequence containing 2 or 4 elements, but it has a length of 5"),
    (lambda m: m.max_unpool2d(X, I, 2, output_size=(4.0, 4)), TypeError,
     "output_size must be a sequence of ints"),
    (lambda m: m.max_unpool2d(X, I, 2, output_size=4), TypeError, "output_size"),
    (lambda m: m.max_unpool2d(X, I, 0), ValueError, "kernel_size must be positive"),
    (lambda m: m.max_unpool2d(X, I, 2, stride=0), ValueError, "stride must be positive"),
    (lambda m: m.max_unpool2d(X, I, 1, padding=2), ValueError,
     r"the output size \(-2, -2\) .* must be non-negative"),
    (lambda m: m.max_unpool2d(X, I, 1, padding=1), ValueError,       # (an empty output)
     r"indices must lie in \[0, H\*W\) = \[0, 0\) for the output \(1, 2, 0, 0\)"),
    (lambda m: m.max_unpool2d(np.array([["a"]]), I, 2), TypeError, "real numbers"),
    (lambda m: m.max_unpool2d_backward(np.ones((1, 2, 4, 4)), I + 16), ValueError,
     r"max_unpool2d_backward: indices must lie in \[0, H\*W\) = \[0, 16\) for grad_y"),
    (lambda m: m.max_unpool2d_backward(np.ones((1, 3, 4, 4)), I), ValueError,
     r"indices \(1, 2, 2, 2\) must be 4-D and agree with grad_y \(1, 3, 4, 4\) on \(N, C\)"),
    (lambda m: m.max_unpool2d_backward(np.ones((1, 2, 4, 4)), I.astype(bool)), TypeError,
     "integer array"),
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_bad_arguments(module, call, exc, match):
    with pytest.raises(exc, match=match):
        call(module)


# ---- the layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_matches_torch(torch, dtype):
    for args, shape, output_size in (((2,), (2, 3, 8, 8), None),
                                     (((3, 2), (2, 1), (1, 0)), (2, 3, 7, 5), [7, 5]),
                                     ((2, 2), (0, 3, 5, 5), torch.Size([0, 3, 5, 5]))):
        pool, unpool_layer = nn.MaxPool2d(*args, return_indices=True), nn.MaxUnpool2d(*args)
        twin = torch.nn.MaxUnpool2d(*args)
        assert repr(unpool_layer) == repr(twin)
        x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        pooled, indices = pool(x)
        y = unpool_layer(pooled, indices, output_size)
        xt = torch.tensor(pooled, requires_grad=True)
        yt = twin(xt, torch.tensor(indices), output_size)
        np.testing.assert_array_equal(y, yt.detach().numpy())
        assert y.dtype == dtype
        assert y.shape == (x.shape if output_size else unpool_layer.output_shape(pooled.shape))
        g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        yt.backward(torch.tensor(g))
        np.testing.assert_array_equal(unpool_layer.backward(g), xt.grad.numpy())


def test_layer_checks_shape_and_place_in_containers():
    layer = nn.MaxUnpool2d(3, 2, 1)
    assert layer.output_shape((4, 3, 5, 6)) == (4, 3, 9, 11)
    assert layer.state_dict() == {} and layer.dtype is None
    with pytest.raises(ValueError, match=r"MaxUnpool2d.*expected input of shape \(N, C, H, W\) or "
                                         r"\(C, H, W\), got \(5, 6\)"):
        layer(np.zeros((5, 6)), np.zeros((5, 6), np.int64))
    with pytest.raises(ValueError, match=r"MaxUnpool2d: padding must be non-negative"):
        nn.MaxUnpool2d(2, padding=-1)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 1, 3, 3)))
    layer(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64))
    with pytest.raises(ValueError, match=r"grad_y has shape \(1, 1, 2, 2\), expected the output "
                                         r"shape \(1, 1, 3, 3\)"):
        layer.backward(np.zeros((1, 1, 2, 2)))
    # two inputs: no layer of a Sequential (nor in PyTorch), with an error that says so
    with pytest.raises(TypeError, match=r"layer 1 of Sequential: MaxUnpool2d.*takes \(input, "
                                        r"indices\[, output_size\]\).*cannot be a layer of a "
                                        r"Sequential"):
        nn.Sequential(nn.MaxPool2d(2), nn.MaxUnpool2d(2))(np.zeros((1, 1, 4, 4)))


class SegNetBlock(nn.Module):
    """conv -> max pool (indices) -> conv -> max unpool (same indices) -> conv: how MaxUnpool2d
    is used, in a module of one's own whose backward runs the layers' in reverse."""

    def __init__(self, dtype):
        super().__init__()
        self.encode = nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=dtype)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.middle = nn.Conv2d(3, 3, 3, padding=1, rng=1, dtype=dtype)
        self.unpool = nn.MaxUnpool2d(2)
        self.decode = nn.Conv2d(3, 2, 3, padding=1, rng=2, dtype=dtype)

    def forward(self, x):
        features = self.encode(x)
        pooled, indices = self.pool(features)
        return self.decode(self.unpool(self.middle(pooled), indices, features.shape))

    def backward(self, grad_y, input_grad=True):
        g = self.unpool.backward(self.decode.backward(grad_y))
        return self.encode.backward(self.pool.backward(self.middle.backward(g)), input_grad)


def test_in_an_encoder_decoder_against_torch_and_numerically(torch):
    tnn = torch.nn

    class TorchSegNetBlock(tnn.Module):
        def __init__(self):
            super().__init__()
            self.encode, self.middle = tnn.Conv2d(2, 3, 3, padding=1), tnn.Conv2d(3, 3, 3, padding=1)
            self.pool, self.unpool = tnn.MaxPool2d(2, return_indices=True), tnn.MaxUnpool2d(2)
            self.decode = tnn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            features = self.encode(x)
            pooled, indices = self.pool(features)
            return self.decode(self.unpool(self.middle(pooled), indices, features.shape))

    for dtype in (np.float32, np.float64):
        model, twin = SegNetBlock(dtype), TorchSegNetBlock().to(
            torch.float64 if dtype == np.float64 else torch.float32)
        twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
        x = np.random.default_rng(3).standard_normal((2, 2, 7, 6)).astype(dtype)
        g = np.random.default_rng(4).standard_normal((2, 2, 7, 6)).astype(dtype)
        model.zero_grad()
        y = model(x)
        gx = model.backward(g)
        xt = torch.tensor(x, requires_grad=True)
        yt = twin(xt)
        yt.backward(torch.tensor(g))
        assert_close(y, yt.detach().numpy(), dtype, what="output")
        assert_close(gx, xt.grad.numpy(), dtype, what="grad_x")
        tparams = dict(twin.named_parameters())
        for name, p in model.named_parameters():
            assert_close(p.grad, tparams[name].grad.numpy(), dtype, what=name)
    # central differences (float64; the maxima stay where they are for small steps)
    num = eval_numerical_gradient(lambda v: float((model(v) * g).sum()), x.copy())
    model(x)
    assert rel_error(model.backward(g), num) < 1e-7


def test_to_torch_and_to_onnx(torch, tmp_path):
    pytest.importorskip("onnx")
    from fastconv.export import to_onnx, to_torch

    layer = nn.MaxUnpool2d((3, 2), stride=2, padding=(1, 0))
    twin = to_torch(layer)
    assert type(twin) is torch.nn.MaxUnpool2d and repr(twin) == repr(layer)
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4))
    pooled, indices = nn.MaxPool2d((3, 2), 2, (1, 0), return_indices=True)(x)
    np.testing.assert_array_equal(
        twin(torch.tensor(pooled), torch.tensor(indices), x.shape).numpy(),
        layer(pooled, indices, x.shape))
    with pytest.raises(TypeError, match=r"to_onnx: module '1' is a MaxUnpool2d, which takes two "
                                        r"inputs .* no ONNX exporter here"):
        to_onnx(nn.Sequential(nn.ReLU(), nn.MaxUnpool2d(2)), tmp_path / "m.onnx", (1, 3, 4, 4))
    assert not (tmp_path / "m.onnx").exists()
