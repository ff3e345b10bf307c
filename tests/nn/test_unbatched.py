"""Unbatched (C, H, W) inputs, as PyTorch 2.13 takes them: every layer and op that accepts one
against its torch twin (float32 and float64, forward and backward, input and parameter
gradients) and bit for bit against the batched call on x[None]; the refusals where torch
refuses too (or means something else: Upsample's 1-D data, Dropout2d's (N, C, L)); fused
Sequentials, Residual and Concat, to_torch twins, bf16 autocast and gradcheck on 3-D input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import functional as F
from fastconv import nn
from fastconv import reference as R
from fastconv.gradcheck import gradcheck_layer
from fastconv.nn import fusion

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}
DTYPES = [np.float32, np.float64]
BACKENDS = ["fast", "reference"]


def _tensor(a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


def _twin(layer, twin, dtype):
    """`twin` (a torch layer) with `layer`'s state dict, both in `dtype`."""
    twin = twin.double() if dtype == np.float64 else twin.float()
    if layer.state_dict():
        twin.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return twin


# (id, fastconv layer, its torch twin, unbatched input shape); each twin loads the layer's
# state dict, so the weights are the same.
LAYERS = [
    ("conv", lambda: nn.Conv2d(3, 4, 3, padding=1, rng=0),
     lambda: torch.nn.Conv2d(3, 4, 3, padding=1), (3, 7, 6)),
    ("conv-reflect", lambda: nn.Conv2d(3, 5, 3, padding=(1, 2), padding_mode="reflect", rng=1),
     lambda: torch.nn.Conv2d(3, 5, 3, padding=(1, 2), padding_mode="reflect"), (3, 6, 7)),
    ("conv-replicate", lambda: nn.Conv2d(2, 4, (3, 2), padding=2, padding_mode="replicate",
                                         bias=False, rng=2),
     lambda: torch.nn.Conv2d(2, 4, (3, 2), padding=2, padding_mode="replicate", bias=False),
     (2, 5, 5)),
    ("conv-circular", lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=2,
                                        rng=3),
     lambda: torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=2), (4, 5, 6)),
    ("conv-strided", lambda: nn.Conv2d(3, 6, 3, stride=2, dilation=2, padding="valid", rng=4),
     lambda: torch.nn.Conv2d(3, 6, 3, stride=2, dilation=2, padding="valid"), (3, 11, 9)),
    ("conv-same", lambda: nn.Conv2d(1, 3, (3, 5), padding="same", dilation=(2, 1), rng=5),
     lambda: torch.nn.Conv2d(1, 3, (3, 5), padding="same", dilation=(2, 1)), (1, 6, 5)),
    ("conv-transpose", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1,
                                                  rng=6),
     lambda: torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (3, 4, 5)),
    ("conv-transpose-groups", lambda: nn.ConvTranspose2d(4, 6, 2, stride=3, groups=2, dilation=2,
                                                         rng=7),
     lambda: torch.nn.ConvTranspose2d(4, 6, 2, stride=3, groups=2, dilation=2), (4, 3, 4)),
    ("max-pool", lambda: nn.MaxPool2d(2), lambda: torch.nn.MaxPool2d(2), (3, 6, 7)),
    ("max-pool-ceil", lambda: nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True),
     lambda: torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 8, 7)),
    ("max-pool-dilated", lambda: nn.MaxPool2d(2, 1, dilation=2),
     lambda: torch.nn.MaxPool2d(2, 1, dilation=2), (2, 6, 6)),
    ("avg-pool", lambda: nn.AvgPool2d(2), lambda: torch.nn.AvgPool2d(2), (3, 6, 7)),
    ("avg-pool-pad", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     lambda: torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 7, 8)),
    ("avg-pool-divisor", lambda: nn.AvgPool2d(2, 1, divisor_override=3),
     lambda: torch.nn.AvgPool2d(2, 1, divisor_override=3), (2, 4, 5)),
    ("adaptive-avg", lambda: nn.AdaptiveAvgPool2d((3, None)),
     lambda: torch.nn.AdaptiveAvgPool2d((3, None)), (3, 7, 5)),
    ("adaptive-avg-global", lambda: nn.AdaptiveAvgPool2d(1),
     lambda: torch.nn.AdaptiveAvgPool2d(1), (4, 5, 6)),
    ("zero-pad", lambda: nn.ZeroPad2d((1, 2, 0, 3)), lambda: torch.nn.ZeroPad2d((1, 2, 0, 3)),
     (2, 4, 5)),
    ("constant-pad", lambda: nn.ConstantPad2d(2, 1.5), lambda: torch.nn.ConstantPad2d(2, 1.5),
     (2, 3, 3)),
    ("reflection-pad", lambda: nn.ReflectionPad2d((2, 1, 1, 3)),
     lambda: torch.nn.ReflectionPad2d((2, 1, 1, 3)), (3, 5, 4)),
    ("replication-pad", lambda: nn.ReplicationPad2d(2), lambda: torch.nn.ReplicationPad2d(2),
     (2, 3, 4)),
    ("circular-pad", lambda: nn.CircularPad2d((1, 3, 2, 0)),
     lambda: torch.nn.CircularPad2d((1, 3, 2, 0)), (2, 4, 5)),
    ("instance-norm", lambda: nn.InstanceNorm2d(3, affine=True),
     lambda: torch.nn.InstanceNorm2d(3, affine=True), (3, 5, 6)),
    ("instance-norm-stats", lambda: nn.InstanceNorm2d(2, track_running_stats=True),
     lambda: torch.nn.InstanceNorm2d(2, track_running_stats=True), (2, 4, 4)),
]


def _run(layer, x, g):
    """(y, dL/dx, {name: grad}) of one forward and backward of `layer` (gradients zeroed
    first)."""
    layer.zero_grad()
    y = layer(x)
    gx = layer.backward(g)
    return y, gx, {k: p.grad.copy() for k, p in layer.named_parameters()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_takes_an_unbatched_image_as_torch_and_as_a_batch_of_one(case, dtype, backend):
    _, make, make_twin, shape = case
    gen = np.random.default_rng(sum(shape))
    layer = make().astype(dtype).set_backend(backend)
    batched = copy.deepcopy(layer)
    twin = _twin(layer, make_twin(), dtype)
    x = gen.normal(size=shape).astype(dtype)

    g = gen.normal(size=layer.output_shape(shape)).astype(dtype)
    y, gx, grads = _run(layer, x, g)
    assert y.shape == g.shape and gx.shape == x.shape and y.dtype == dtype

    xt = _tensor(x, grad=True)
    yt = twin(xt)
    yt.backward(_tensor(g))
    assert tuple(yt.shape) == y.shape
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gx, xt.grad.numpy(), **TOL[dtype])
    for name, p in twin.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), **TOL[dtype], err_msg=name)

    # the batch of one x[None]: the same values, bit for bit, and the same state afterwards
    y1, gx1, grads1 = _run(batched, x[None], g[None])
    np.testing.assert_array_equal(y, y1[0])
    np.testing.assert_array_equal(gx, gx1[0])
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads1[name])
    for key, value in layer.state_dict().items():   # (running statistics)
        np.testing.assert_array_equal(value, batched.state_dict()[key])
    assert layer.output_shape(shape) == y.shape


@pytest.mark.parametrize("case", LAYERS[:8], ids=[c[0] for c in LAYERS[:8]])
def test_parameter_gradients_accumulate_as_for_the_batch_of_one(case):
    _, make, _, shape = case
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    a, b = make(), make()
    for _ in range(2):                                   # two steps, no zero_grad between
        g = np.full(a(x).shape, 0.5, np.float32)
        a.backward(g, input_grad=False)
        b(x[None])
        b.backward(g[None], input_grad=False)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.grad, pb.grad, err_msg=name)


def test_conv_transpose_output_size_as_torch():
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, rng=0)
    twin = _twin(layer, torch.nn.ConvTranspose2d(3, 4, 3, stride=2), np.float32)
    x = np.random.default_rng(1).normal(size=(3, 5, 6)).astype(np.float32)
    for size in [(12, 13), (4, 12, 14)]:                  # (H, W) or (C, H, W), as torch's
        y = layer(x, output_size=size)
        np.testing.assert_allclose(y, twin(_tensor(x), output_size=size).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
        assert y.shape == (4,) + tuple(size[-2:])
        assert layer.backward(np.ones_like(y)).shape == x.shape
        np.testing.assert_array_equal(y, layer(x[None], output_size=(1, 4) + size[-2:])[0])
    for bad, batch in [((1, 4, 12, 13), x), ((4, 12, 13), x[None])]:
        with pytest.raises(ValueError, match=r"output_size must have 2 or [34] elements"):
            twin(_tensor(batch), output_size=bad)
        with pytest.raises(ValueError, match=r"ConvTranspose2d.*output_size must have 2 or [34] "
                                             r"elements"):
            layer(batch, output_size=bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_indices_and_max_unpool_unbatched_as_torch(backend):
    gen = np.random.default_rng(2)
    x = gen.normal(size=(3, 9, 7))
    pool = nn.MaxPool2d(2, return_indices=True).set_backend(backend)
    unpool = nn.MaxUnpool2d(2).set_backend(backend)
    y, idx = pool(x)
    yt, it = torch.nn.MaxPool2d(2, return_indices=True)(_tensor(x))
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    assert idx.shape == y.shape == (3, 4, 3) and idx.dtype == np.int64
    for size in [(9, 7), (5, 6, 9, 7)]:   # torch: (H, W) or 4 entries (the first two unused)
        u = unpool(y, idx, output_size=size)
        ut = torch.nn.MaxUnpool2d(2)(_tensor(y), it, output_size=size)
        np.testing.assert_array_equal(u, ut.numpy())
        g = gen.normal(size=u.shape)
        gy = unpool.backward(g)
        yt_ = _tensor(y, grad=True)
        torch.nn.MaxUnpool2d(2)(yt_, it, output_size=size).backward(_tensor(g))
        np.testing.assert_array_equal(gy, yt_.grad.numpy())
        np.testing.assert_array_equal(u, unpool(y[None], idx[None], output_size=size)[0])
    with pytest.raises(ValueError, match="2 or 4 elements"):            # torch refuses (C, H, W)
        torch.nn.MaxUnpool2d(2)(_tensor(y), it, output_size=(3, 9, 7))
    with pytest.raises(ValueError, match="output_size should be a sequence containing 2 or 4 "
                                         "elements, but it has a length of 3"):
        unpool(y, idx, output_size=(3, 9, 7))
    with pytest.raises(ValueError, match=r"MaxUnpool2d.*the input \(3, 4, 3\) is unbatched, so "
                                         r"indices must be 3-D too, got shape \(1, 3, 4, 3\)"):
        unpool(y, idx[None])
    g = np.ones((3, 4, 3))
    assert pool.backward(g).shape == x.shape


# -- ops ------------------------------------------------------------------------------------

def _gen(seed=0):
    return np.random.default_rng(seed)


X = _gen(0).normal(size=(4, 7, 6))
W = _gen(1).normal(size=(6, 2, 3, 3))
B = _gen(2).normal(size=6)
WT = _gen(3).normal(size=(4, 3, 2, 3))


def _like(a, x):
    """`a` in the dtype of `x` (an array or a tensor)."""
    if isinstance(x, np.ndarray):
        return a.astype(x.dtype)
    return _tensor(a).to(x.dtype)


# (id, our call on the module of ops m and an input x, torch's call on a tensor t)
OPS = [
    ("conv2d", lambda m, x: m.conv2d(x, _like(W, x), _like(B, x), 2, 1, 1, 2),
     lambda t: TF.conv2d(t, _like(W, t), _like(B, t), 2, 1, 1, 2)),
    ("conv2d-same", lambda m, x: m.conv2d(x, _like(W[:, :, :1], x), None, 1, "same", (2, 1), 2),
     lambda t: TF.conv2d(t, _like(W[:, :, :1], t), None, 1, "same", (2, 1), 2)),
    ("conv_transpose2d", lambda m, x: m.conv_transpose2d(x, _like(WT, x), _like(B[:3], x), 2, 1, 1),
     lambda t: TF.conv_transpose2d(t, _like(WT, t), _like(B[:3], t), 2, 1, 1)),
    ("max_pool2d", lambda m, x: m.max_pool2d(x, 3, 2, 1, ceil_mode=True),
     lambda t: TF.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
    ("avg_pool2d", lambda m, x: m.avg_pool2d(x, 2, 1, 1, False, False),
     lambda t: TF.avg_pool2d(t, 2, 1, 1, False, False)),
    ("adaptive_avg_pool2d", lambda m, x: m.adaptive_avg_pool2d(x, (4, 5)),
     lambda t: TF.adaptive_avg_pool2d(t, (4, 5))),
    ("im2col", lambda m, x: m.im2col(x, (2, 3), 1, 1, 2), lambda t: TF.unfold(t, (2, 3), 1, 1, 2)),
    ("pad-reflect", lambda m, x: m.pad(x, (2, 1, 3, 0), "reflect"),
     lambda t: TF.pad(t, (2, 1, 3, 0), "reflect")),
    ("pad-circular", lambda m, x: m.pad(x, (1, 3, 2, 0), "circular"),
     lambda t: TF.pad(t, (1, 3, 2, 0), "circular")),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
@pytest.mark.parametrize("case", OPS, ids=[c[0] for c in OPS])
def test_op_takes_an_unbatched_image_as_torch(case, ops, dtype):
    _, ours, theirs = case
    x = X.astype(dtype)
    y = ours(ops, x)
    yt = theirs(_tensor(x)).detach().numpy()
    assert y.shape == yt.shape == ours(ops, x[None]).shape[1:]
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, yt, **tol)
    np.testing.assert_array_equal(y, ours(ops, x[None])[0])   # bit for bit the batch of one


@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
def test_col2im_and_max_unpool_unbatched_as_torch(ops):
    cols = ops.im2col(X, 3, 1, 1, 1)
    assert cols.shape == (36, 42)
    x = ops.col2im(cols, (7, 6), 3, 1, 1, 1)
    np.testing.assert_allclose(x, TF.fold(_tensor(cols), (7, 6), 3, 1, 1, 1).numpy(),
                               rtol=1e-12)
    np.testing.assert_array_equal(x, ops.col2im(cols[None], (7, 6), 3, 1, 1, 1)[0])
    y, idx = ops.max_pool2d(X, 2, return_indices=True)
    u = ops.max_unpool2d(y, idx, 2, output_size=(7, 6))
    np.testing.assert_array_equal(u, TF.max_unpool2d(_tensor(y), _tensor(idx), 2,
                                                     output_size=(7, 6)).numpy())
    g = _gen(4).normal(size=u.shape)
    np.testing.assert_array_equal(ops.max_unpool2d_backward(g, idx),
                                  ops.max_unpool2d_backward(g[None], idx[None])[0])


@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
def test_explicit_backward_ops_take_unbatched_shapes(ops):
    """An unbatched x (or a 3-entry input_shape) takes unbatched gradients and indices and
    gives grad_x unbatched; the weight and bias gradients are those of the batch of one."""
    x = X
    y = ops.conv2d(x, W, B, 1, 1, 1, 2)
    g = _gen(5).normal(size=y.shape)
    got = ops.conv2d_backward(g, x, W, 1, 1, 1, 2)
    want = ops.conv2d_backward(g[None], x[None], W, 1, 1, 1, 2)
    assert got[0].shape == x.shape
    np.testing.assert_array_equal(got[0], want[0][0])
    for a, b in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(a, b)
    xt, wt, bt = _tensor(x, True), _tensor(W, True), _tensor(B, True)
    TF.conv2d(xt, wt, bt, 1, 1, 1, 2).backward(_tensor(g))
    for a, t in zip(got, (xt, wt, bt)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    none_x = ops.conv2d_backward(g, x, W, 1, 1, 1, 2, output_mask=(False, True, False))
    assert none_x[0] is None and none_x[2] is None
    np.testing.assert_array_equal(none_x[1], want[1])

    yt_ = ops.conv_transpose2d(x, WT, None, 2, 1, 1)
    gt = _gen(6).normal(size=yt_.shape)
    got = ops.conv_transpose2d_backward(gt, x, WT, 2, 1, 1)
    want = ops.conv_transpose2d_backward(gt[None], x[None], WT, 2, 1, 1)
    np.testing.assert_array_equal(got[0], want[0][0])
    np.testing.assert_array_equal(got[1], want[1])

    pooled, idx = ops.max_pool2d(x, 2, return_indices=True)
    gp = _gen(7).normal(size=pooled.shape)
    np.testing.assert_array_equal(ops.max_pool2d_backward(gp, idx, x.shape),
                                  ops.max_pool2d_backward(gp[None], idx[None], (1,) + x.shape)[0])
    relu_out = np.maximum(pooled, 0)
    np.testing.assert_array_equal(
        ops.max_pool2d_backward(gp, idx, x.shape, relu_output=relu_out),
        ops.max_pool2d_backward(gp[None], idx[None], (1,) + x.shape, relu_output=relu_out[None])[0])
    ga = _gen(8).normal(size=(4, 3, 3))
    np.testing.assert_array_equal(ops.avg_pool2d_backward(ga, x.shape, 2),
                                  ops.avg_pool2d_backward(ga[None], (1,) + x.shape, 2)[0])
    np.testing.assert_array_equal(ops.adaptive_avg_pool2d_backward(ga, x.shape),
                                  ops.adaptive_avg_pool2d_backward(ga[None], (1,) + x.shape)[0])

    fused, fidx = ops.conv2d_max_pool2d(x, W, B, 1, 1, 1, 2, kernel_size=2)
    np.testing.assert_array_equal(fused, ops.conv2d_max_pool2d(x[None], W, B, 1, 1, 1, 2,
                                                               kernel_size=2)[0][0])
    gf = _gen(9).normal(size=fused.shape)
    got = ops.conv2d_backward_through_max_pool(gf, fidx, x, W, 1, 1, 1, 2)
    want = ops.conv2d_backward_through_max_pool(gf[None], fidx[None], x[None], W, 1, 1, 1, 2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)

    assert F.conv2d_output_shape((4, 7, 6), (6, 2, 3, 3), padding=1, groups=2) == (6, 7, 6)
    assert F.pool2d_output_shape((4, 7, 6), 2, ceil_mode=True) == (4, 4, 3)

    with pytest.raises(ValueError, match=r"conv2d_backward: x is unbatched \(shape \(4, 7, 6\)\), "
                                         r"so grad_y must be 3-D too, got shape \(1, 6, 7, 6\)"):
        ops.conv2d_backward(g[None], x, W, 1, 1, 1, 2)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: input_shape is unbatched .* so "
                                         r"indices must be 3-D too"):
        ops.max_pool2d_backward(gp, idx[None], x.shape)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: .*grad_y.*\(for the unbatched "
                                         r"input_shape of shape \(4, 7, 6\), run as a batch of "
                                         r"one\)"):
        ops.max_pool2d_backward(gp[:2], idx[:2], x.shape)


# -- refusals, where torch refuses too --------------------------------------------------------

def _torch_raises(call):
    with pytest.raises((RuntimeError, ValueError, NotImplementedError, IndexError)):
        call()


@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
def test_ops_refuse_2d_5d_and_mismatched_channels_as_torch(ops):
    w = _tensor(W)
    for bad in (X[0], X[None, None]):
        _torch_raises(lambda: TF.conv2d(_tensor(bad), w, groups=2))
        with pytest.raises(ValueError, match=r"conv2d: x must be 4-D \(N, C, H, W\), or 3-D "
                                             r"\(C, H, W\) for one unbatched image, got shape"):
            ops.conv2d(bad, W, groups=2)
        _torch_raises(lambda: TF.max_pool2d(_tensor(bad), 2))
        with pytest.raises(ValueError, match=r"max_pool2d: x must be 4-D"):
            ops.max_pool2d(bad, 2)
    _torch_raises(lambda: TF.conv2d(_tensor(X[:3]), w, groups=2))
    with pytest.raises(ValueError, match=r"expects 4 input channels, but x of shape \(1, 3, 7, 6\) "
                                         r"has 3 \(for the unbatched x of shape \(3, 7, 6\), run "
                                         r"as a batch of one\)"):
        ops.conv2d(X[:3], W, groups=2)
    # 3-D is 1-D data (N, C, L) to torch's interpolate: not an image, which fastconv refuses
    assert tuple(TF.interpolate(_tensor(X), scale_factor=2).shape) == (4, 7, 12)
    with pytest.raises(ValueError, match=r"upsample_nearest2d: x of shape \(4, 7, 6\) is 3-D, "
                                         r"which PyTorch's Upsample/interpolate takes as 1-D data "
                                         r"\(N, C, L\).*use x\[None\]"):
        ops.upsample_nearest2d(X, scale_factor=2)


@pytest.mark.parametrize("layer, twin, x, pattern", [
    (nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3), np.zeros((3, 4, 4)),
     r"BatchNorm2d\(3.*expected input of shape \(N, 3, H, W\), got \(3, 4, 4\) \(BatchNorm2d "
     r"takes no unbatched \(C, H, W\) image, as PyTorch's: x\[None\] makes a batch of one\)"),
    (nn.Upsample(scale_factor=2), None, np.zeros((3, 4, 4)),
     r"Upsample\(.*got input of shape \(3, 4, 4\): PyTorch's Upsample takes 3-D input as 1-D "
     r"data \(N, C, L\), which fastconv does not implement .*use x\[None\]"),
    (nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3), np.zeros((8, 8, 3)),
     r"Conv2d\(3, 4.*expected input of shape \(N, 3, H, W\) or \(3, H, W\), got \(8, 8, 3\) "
     r"\(one channels-last image\? fastconv takes \(C, H, W\) like PyTorch: use "
     r"x.transpose\(2, 0, 1\)\)"),
    (nn.ConvTranspose2d(3, 4, 3), torch.nn.ConvTranspose2d(3, 4, 3), np.zeros((8, 8, 3)),
     r"ConvTranspose2d\(3, 4.*got \(8, 8, 3\) \(one channels-last image\?"),
    (nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3), np.zeros((4, 8, 8)),
     r"Conv2d\(3, 4.*expected input of shape \(N, 3, H, W\) or \(3, H, W\), got \(4, 8, 8\)$"),
    (nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3), np.zeros((8, 8)),
     r"expected input of shape \(N, 3, H, W\) or \(3, H, W\), got \(8, 8\)$"),
    (nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3), np.zeros((1, 1, 3, 8, 8)),
     r"got \(1, 1, 3, 8, 8\)$"),
    (nn.MaxPool2d(2), torch.nn.MaxPool2d(2), np.zeros((8, 8)),
     r"MaxPool2d\(.*expected input of shape \(N, C, H, W\) or \(C, H, W\), got \(8, 8\)"),
    (nn.AvgPool2d(2), torch.nn.AvgPool2d(2), np.zeros((8, 8)), r"AvgPool2d\(.*got \(8, 8\)"),
    (nn.AdaptiveAvgPool2d(2), torch.nn.AdaptiveAvgPool2d(2), np.zeros((2, 2, 2, 8, 8)),
     r"AdaptiveAvgPool2d\(.*got \(2, 2, 2, 8, 8\)"),
], ids=["batchnorm2d", "upsample", "conv-hwc", "conv-transpose-hwc", "conv-channels", "conv-2d",
        "conv-5d", "max-pool-2d", "avg-pool-2d", "adaptive-5d"])
def test_layers_refuse_what_torch_refuses(layer, twin, x, pattern):
    if twin is None:   # (torch resamples it as 1-D data: a different operation)
        assert tuple(torch.nn.Upsample(scale_factor=2)(_tensor(x)).shape) == (3, 4, 8)
    else:
        _torch_raises(lambda: twin(_tensor(x.astype(np.float32))))
    with pytest.raises(ValueError, match=pattern):
        layer(x)


def test_dropout2d_takes_3d_as_torch_2_13():
    x = np.ones((20, 30, 4), np.float32)
    with pytest.warns(UserWarning) as ours:
        drop = nn.Dropout2d(0.5, rng=0)
        y = drop(x)
    with pytest.warns(UserWarning) as theirs:
        torch.nn.Dropout2d(0.5)(_tensor(x))
    assert str(ours[0].message) == str(theirs[0].message)
    assert drop.mask.shape == (20, 30, 1) and (y == y[:, :, :1]).all()
    np.testing.assert_array_equal(drop.backward(np.ones_like(y)), y)
    with pytest.warns(UserWarning, match="Received a 3D input to dropout2d"):
        assert nn.Dropout2d(0.5).eval()(x) is not None      # (torch warns in eval too)


def test_backward_after_an_unbatched_forward_wants_the_unbatched_gradient():
    layer = nn.Conv2d(3, 4, 3)
    y = layer(np.zeros((3, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d\(3, 4.*\.backward: grad_y has shape "
                                         r"\(1, 4, 4, 4\), expected the output shape \(4, 4, 4\) "
                                         r"\(the last forward's input was unbatched\)"):
        layer.backward(np.zeros((1,) + y.shape))
    assert layer.backward(np.zeros(y.shape)).shape == (3, 6, 6)
    layer(np.zeros((2, 3, 6, 6), np.float32))                    # a batch again
    assert layer.backward(np.zeros((2, 4, 4, 4))).shape == (2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"grad_y has shape \(4, 4, 4\), expected the output "
                                         r"shape \(2, 4, 4, 4\)"):
        layer.backward(np.zeros((4, 4, 4)))


# -- containers, fusion, twins -----------------------------------------------------------------

def _pair(seed=0):
    """A Sequential of conv/pool/pad/activation layers that fuses (Conv -> ReLU -> MaxPool,
    ReLU -> MaxPool) and its torch twin."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=seed), nn.ReLU(), nn.MaxPool2d(2),
        nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3, padding_mode="circular", padding=1, rng=seed + 1),
        nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.ConvTranspose2d(8, 4, 2, stride=2, rng=2),
        nn.GELU(), nn.AvgPool2d(2), nn.Conv2d(4, 5, 1, rng=3), nn.AdaptiveAvgPool2d(2))
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(8, 8, 3, padding_mode="circular", padding=1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.ConvTranspose2d(8, 4, 2, stride=2), torch.nn.GELU(), torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(4, 5, 1), torch.nn.AdaptiveAvgPool2d(2))
    return model, _twin(model, twin, np.float32)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "one-by-one"])
def test_sequential_runs_an_unbatched_image_as_its_torch_twin(fuse):
    model, twin = _pair()
    batched = copy.deepcopy(model)
    x = np.random.default_rng(3).normal(size=(3, 18, 17)).astype(np.float32)
    with fusion.enabled(fuse):
        y = model(x)
        assert ("ConvMaxPoolStep" in {type(s).__name__ for s in model._steps()}) == fuse
        g = np.random.default_rng(4).normal(size=y.shape).astype(np.float32)
        gx = model.backward(g)
        yb = batched(x[None])
        gxb = batched.backward(g[None])
    xt = _tensor(x, True)
    yt = twin(xt)
    yt.backward(_tensor(g))
    assert y.shape == tuple(yt.shape) == (5, 2, 2) and gx.shape == x.shape
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    for (name, p), pt in zip(model.named_parameters(), twin.parameters()):
        np.testing.assert_allclose(p.grad, pt.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(y, yb[0])
    np.testing.assert_array_equal(gx, gxb[0])
    for p, pb in zip(model.parameters(), batched.parameters()):
        np.testing.assert_array_equal(p.grad, pb.grad)
    # input_grad=False: the first conv's fused backward through the pooling, unbatched
    model.zero_grad()
    model(x)
    assert model.backward(g, input_grad=False) is None
    for p, pb in zip(model.parameters(), batched.parameters()):
        np.testing.assert_array_equal(p.grad, pb.grad)


def test_fused_steps_take_an_unbatched_image_and_check_its_channels():
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 1, rng=0), nn.MaxPool2d(2))
    one_by_one = copy.deepcopy(model)
    x = np.random.default_rng(5).normal(size=(3, 8, 8)).astype(np.float32)
    y = model(x)
    assert [type(s).__name__ for s in model._steps()] == ["ReLUMaxPoolStep", "ConvMaxPoolStep"]
    g = np.random.default_rng(6).normal(size=y.shape).astype(np.float32)
    with fusion.enabled(False):
        np.testing.assert_array_equal(y, one_by_one(x))
        np.testing.assert_array_equal(model.backward(g), one_by_one.backward(g))
    for p, q in zip(model.parameters(), one_by_one.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    with pytest.raises(ValueError, match=r"^layer 3 of Sequential \(backward\): MaxPool2d\(.*"
                                         r"\.backward: grad_y has shape \(1, 2, 2, 2\), "
                                         r"expected the output shape \(2, 2, 2\)"):
        model(x)
        model.backward(g[None])
    fused = nn.Sequential(nn.Conv2d(3, 2, 1), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"^layer 0 of Sequential: Conv2d\(3, 2.*got \(8, 8, 3\) "
                                         r"\(one channels-last image\?"):
        fused(np.zeros((8, 8, 3), np.float32))
    assert isinstance(fused._steps()[0], fusion.ConvMaxPoolStep)


def test_sequential_with_batchnorm2d_refuses_an_unbatched_image_as_torch():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    x = np.zeros((3, 6, 6), np.float32)
    _torch_raises(lambda: twin(_tensor(x)))
    with pytest.raises(ValueError, match=r"^layer 1 of Sequential: BatchNorm2d\(4.*got \(4, 4, 4\) "
                                         r"\(BatchNorm2d takes no unbatched"):
        model(x)


def test_residual_and_concat_as_their_torch_twins():
    from fastconv.export import to_torch
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, rng=0), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, rng=1))
    # dim=-3 is the channels of (N, C, H, W) and of (C, H, W) alike; dim=1 of an unbatched
    # output is H, as torch.cat in the twin takes it
    for dim, shape in [(-3, (10, 6, 5)), (1, (4, 12, 5))]:
        model = nn.Sequential(
            nn.Residual(body if dim == -3 else copy.deepcopy(body)),
            nn.Concat(nn.Conv2d(4, 6 if dim == -3 else 4, 1, rng=2), nn.Identity(), dim=dim),
            nn.MaxPool2d((1, 1)))
        model.zero_grad()
        twin = to_torch(model)
        x = np.random.default_rng(6).normal(size=(4, 6, 5)).astype(np.float32)
        y = model(x)
        xt = _tensor(x, True)
        yt = twin(xt)
        assert y.shape == tuple(yt.shape) == shape
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        g = np.random.default_rng(7).normal(size=y.shape).astype(np.float32)
        yt.backward(_tensor(g))
        np.testing.assert_allclose(model.backward(g), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        for (name, p), pt in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(p.grad, pt.grad.numpy(), rtol=1e-4, atol=1e-4,
                                       err_msg=name)
    with pytest.raises(ValueError, match=r"Concat.*dimension 1"):   # channels differ: not on H
        nn.Concat(nn.Conv2d(4, 6, 1), nn.Identity(), dim=1)(np.zeros((4, 6, 5), np.float32))


def test_local_response_norm_takes_3d_as_torch_does():
    """3-D is (N, C, L) to torch's LocalResponseNorm (its channels on axis 1), as to fastconv's."""
    layer = nn.LocalResponseNorm(3, 0.3, 0.6, 2.0)
    x = np.random.default_rng(10).normal(size=(4, 5, 6))
    g = np.random.default_rng(11).normal(size=x.shape)
    xt = _tensor(x, True)
    yt = torch.nn.LocalResponseNorm(3, 0.3, 0.6, 2.0)(xt)
    yt.backward(_tensor(g))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_to_torch_twin_agrees_on_an_unbatched_image():
    from fastconv.export import to_torch
    model, _ = _pair(seed=4)
    twin = to_torch(model)
    x = np.random.default_rng(8).normal(size=(3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(model(x), twin(_tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_runs_unbatched_convolutions_as_the_batch_of_one():
    x = np.random.default_rng(9).normal(size=(3, 10, 9)).astype(np.float32)
    for layer in (nn.Conv2d(3, 8, 3, padding=1, rng=0), nn.ConvTranspose2d(3, 4, 2, stride=2,
                                                                          rng=1)):
        y32 = layer(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # (bf16 may run emulated here)
            with fastconv.autocast("bf16"):
                y = layer(x)
                gx = layer.backward(np.ones_like(y))
                y1 = layer(x[None])
                gx1 = layer.backward(np.ones_like(y1))
        np.testing.assert_array_equal(y, y1[0])
        np.testing.assert_array_equal(gx, gx1[0])
        assert not np.array_equal(y, y32)             # bf16 operands: rounded, not more
        np.testing.assert_allclose(y, y32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("layer", [nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect",
                                             rng=0),
                                   nn.ConvTranspose2d(2, 3, 3, stride=2, rng=1),
                                   nn.Sequential(nn.Conv2d(2, 3, 3, rng=2), nn.ReLU(),
                                                 nn.MaxPool2d(2), nn.AvgPool2d(1))],
                         ids=["conv-reflect", "conv-transpose", "fused-sequential"])
def test_gradcheck_unbatched(layer):
    errors = gradcheck_layer(layer, (2, 7, 6), seed=3)
    assert set(errors) >= {"input"} and max(errors.values()) < 1e-6, errors


def test_output_shape_and_summary_take_an_unbatched_shape():
    model, _ = _pair()
    assert model.output_shape((3, 18, 17)) == (5, 2, 2)
    for layer, shape, out in [(nn.Conv2d(3, 4, 3), (3, 8, 8), (4, 6, 6)),
                              (nn.ConvTranspose2d(3, 4, 2, stride=2), (3, 4, 5), (4, 8, 10)),
                              (nn.MaxPool2d(2), (5, 8, 8), (5, 4, 4)),
                              (nn.AdaptiveAvgPool2d(3), (2, 8, 7), (2, 3, 3)),
                              (nn.MaxUnpool2d(2), (2, 3, 4), (2, 6, 8))]:
        assert layer.output_shape(shape) == out
    with pytest.raises(ValueError, match=r"got \(8, 8, 3\) \(one channels-last image\?"):
        nn.Conv2d(3, 4, 3).output_shape((8, 8, 3))
    with pytest.raises(ValueError, match=r"PyTorch's Upsample takes 3-D input as 1-D data"):
        nn.Upsample(scale_factor=2).output_shape((3, 4, 4))
