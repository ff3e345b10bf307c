"""Tests of fastconv.nn: every layer against PyTorch (same weights), against the reference
backend, by gradient checking, in train and eval mode, and through state dicts.

Tolerances: float64 comparisons use rtol 1e-10 (every op is a short sum of products; the
two implementations only differ in summation order, ~1e-15 relative). float32 comparisons
use rtol 1e-5 with an absolute floor of 1e-5 * max|reference| (eps32 = 6e-8 times sums of up
to a few hundred terms, and cancellation in BatchNorm's centred sums).
"""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict

import numpy as np
import pytest

from fastconv import nn
from fastconv.backend import use_backend
from fastconv.gradcheck import gradcheck_layer
from numerics import randomize_norms as _randomize


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def assert_close(actual, expected, dtype, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, what
    if np.dtype(dtype) == np.float64:
        rtol, atol = 1e-10, 1e-12 * max(1.0, float(np.abs(expected).max(initial=0.0)))
    else:
        rtol, atol = 1e-5, 1e-5 * max(1e-3, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# (id, our layer, torch layer, input shape). Both are built fresh for each use.
CASES = [
    ("conv", lambda: nn.Conv2d(3, 4, 3, rng=1), lambda t: t.nn.Conv2d(3, 4, 3), (2, 3, 7, 6)),
    ("conv_pad_stride", lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1, rng=2),
     lambda t: t.nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 9, 8)),
    ("conv_groups_dilation", lambda: nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(2, 1),
                                               dilation=2, groups=2, rng=3),
     lambda t: t.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=2, groups=2), (2, 4, 8, 7)),
    ("conv_same_nobias", lambda: nn.Conv2d(2, 3, 4, padding="same", bias=False, rng=4),
     lambda t: t.nn.Conv2d(2, 3, 4, padding="same", bias=False), (2, 2, 6, 5)),
    ("conv_1x1", lambda: nn.Conv2d(3, 2, 1, rng=5), lambda t: t.nn.Conv2d(3, 2, 1), (3, 3, 4, 4)),
    ("maxpool", lambda: nn.MaxPool2d(2), lambda t: t.nn.MaxPool2d(2), (2, 3, 6, 7)),
    ("maxpool_ceil_pad", lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
     lambda t: t.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 2, 8, 7)),
    ("maxpool_dilation", lambda: nn.MaxPool2d(2, 1, dilation=2),
     lambda t: t.nn.MaxPool2d(2, 1, dilation=2), (1, 2, 6, 6)),
    ("avgpool", lambda: nn.AvgPool2d(2), lambda t: t.nn.AvgPool2d(2), (2, 3, 6, 6)),
    ("avgpool_pad_exclude", lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
     lambda t: t.nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), (2, 2, 7, 8)),
    ("avgpool_pad_include", lambda: nn.AvgPool2d(3, 1, padding=1),
     lambda t: t.nn.AvgPool2d(3, 1, padding=1), (1, 2, 5, 5)),
    ("avgpool_divisor", lambda: nn.AvgPool2d(3, 2, 1, True, False, 5),
     lambda t: t.nn.AvgPool2d(3, 2, 1, True, False, 5), (2, 2, 7, 8)),
    ("avgpool_divisor_2x2", lambda: nn.AvgPool2d(2, divisor_override=-3),
     lambda t: t.nn.AvgPool2d(2, divisor_override=-3), (2, 3, 6, 6)),
    ("linear", lambda: nn.Linear(5, 3, rng=6), lambda t: t.nn.Linear(5, 3), (4, 5)),
    ("linear_3d_nobias", lambda: nn.Linear(5, 3, bias=False, rng=7),
     lambda t: t.nn.Linear(5, 3, bias=False), (2, 4, 5)),
    ("flatten", lambda: nn.Flatten(), lambda t: t.nn.Flatten(), (2, 3, 2, 2)),
    ("flatten_mid", lambda: nn.Flatten(1, 2), lambda t: t.nn.Flatten(1, 2), (2, 3, 2, 4)),
    ("relu", lambda: nn.ReLU(), lambda t: t.nn.ReLU(), (3, 7)),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), lambda t: t.nn.LeakyReLU(0.2), (3, 7)),
    ("leaky_relu_default", lambda: nn.LeakyReLU(), lambda t: t.nn.LeakyReLU(), (2, 3, 2, 2)),
    ("tanh", lambda: nn.Tanh(), lambda t: t.nn.Tanh(), (3, 7)),
    ("sigmoid", lambda: nn.Sigmoid(), lambda t: t.nn.Sigmoid(), (3, 7)),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 1.5), lambda t: t.nn.Hardtanh(-0.5, 1.5), (3, 7)),
    ("softplus", lambda: nn.Softplus(2.0, 1.0), lambda t: t.nn.Softplus(2.0, 1.0), (2, 3, 5)),
    ("mish", lambda: nn.Mish(), lambda t: t.nn.Mish(), (3, 7)),
    ("log_sigmoid", lambda: nn.LogSigmoid(), lambda t: t.nn.LogSigmoid(), (3, 7)),
    ("unflatten", lambda: nn.Unflatten(1, (2, -1)), lambda t: t.nn.Unflatten(1, (2, -1)), (3, 6, 2)),
    ("dropout_p0", lambda: nn.Dropout(0.0), lambda t: t.nn.Dropout(0.0), (3, 7)),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), lambda t: t.nn.BatchNorm2d(3), (4, 3, 3, 2)),
    ("batchnorm2d_noaffine_momentum_none",
     lambda: nn.BatchNorm2d(3, eps=1e-3, momentum=None, affine=False),
     lambda t: t.nn.BatchNorm2d(3, eps=1e-3, momentum=None, affine=False), (3, 3, 2, 2)),
    ("batchnorm2d_no_running", lambda: nn.BatchNorm2d(2, track_running_stats=False),
     lambda t: t.nn.BatchNorm2d(2, track_running_stats=False), (3, 2, 2, 3)),
    ("batchnorm2d_no_bias", lambda: nn.BatchNorm2d(3, momentum=0.2, bias=False),
     lambda t: t.nn.BatchNorm2d(3, momentum=0.2, bias=False), (4, 3, 3, 2)),
    ("batchnorm2d_no_bias_no_running",
     lambda: nn.BatchNorm2d(2, track_running_stats=False, bias=False),
     lambda t: t.nn.BatchNorm2d(2, track_running_stats=False, bias=False), (3, 2, 2, 3)),
    ("batchnorm1d", lambda: nn.BatchNorm1d(5, momentum=0.3), lambda t: t.nn.BatchNorm1d(5, momentum=0.3), (6, 5)),
    ("batchnorm1d_no_bias", lambda: nn.BatchNorm1d(5, bias=False),
     lambda t: t.nn.BatchNorm1d(5, bias=False), (6, 5)),
    ("batchnorm1d_3d", lambda: nn.BatchNorm1d(3), lambda t: t.nn.BatchNorm1d(3), (2, 3, 4)),
    ("layernorm", lambda: nn.LayerNorm((3, 4)), lambda t: t.nn.LayerNorm((3, 4)), (2, 5, 3, 4)),
    ("layernorm_plain", lambda: nn.LayerNorm(6, eps=1e-3, elementwise_affine=False),
     lambda t: t.nn.LayerNorm(6, eps=1e-3, elementwise_affine=False), (4, 6)),
    ("instancenorm", lambda: nn.InstanceNorm2d(3), lambda t: t.nn.InstanceNorm2d(3), (2, 3, 4, 5)),
    ("instancenorm_affine_running",
     lambda: nn.InstanceNorm2d(3, eps=1e-3, momentum=0.2, affine=True, track_running_stats=True),
     lambda t: t.nn.InstanceNorm2d(3, eps=1e-3, momentum=0.2, affine=True, track_running_stats=True),
     (3, 3, 3, 4)),
    ("instancenorm_no_bias_momentum_none",
     lambda: nn.InstanceNorm2d(2, momentum=None, affine=True, track_running_stats=True, bias=False),
     lambda t: t.nn.InstanceNorm2d(2, momentum=None, affine=True, track_running_stats=True,
                                   bias=False), (2, 2, 3, 3)),
    ("instancenorm_one_sample", lambda: nn.InstanceNorm2d(3, affine=True),
     lambda t: t.nn.InstanceNorm2d(3, affine=True), (3, 4, 4)),
    ("sequential", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False, rng=8), nn.BatchNorm2d(3),
                                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4, rng=9),
                                         nn.Tanh()),
     lambda t: t.nn.Sequential(t.nn.Conv2d(2, 3, 3, padding=1, bias=False), t.nn.BatchNorm2d(3), t.nn.ReLU(),
                               t.nn.MaxPool2d(2), t.nn.Flatten(), t.nn.Linear(12, 4), t.nn.Tanh()),
     (3, 2, 4, 4)),
]
CASE_IDS = [c[0] for c in CASES]
CONV_POOL = {c[0] for c in CASES if c[0].startswith(("conv", "maxpool", "avgpool", "sequential"))}


def _run_ours(layer, x, g):
    y = layer(x)
    gx = layer.backward(g)
    return y, gx, {n: p.grad.copy() for n, p in layer.named_parameters()}


def _run_torch(torch, tlayer, x, g):
    xt = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():  # torch warns that 'same' with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        y = tlayer(xt)
    y.backward(torch.tensor(g))
    grads = {n: p.grad.numpy().copy() for n, p in tlayer.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads


def _torch_state(tlayer):
    return {k: v.detach().numpy().copy() for k, v in tlayer.state_dict().items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_layer_matches_torch(torch, case, mode, dtype):
    name, make, make_torch, shape = case
    torch.manual_seed(0)
    tlayer = make_torch(torch).to(torch.float64 if dtype == np.float64 else torch.float32)
    layer = make().astype(dtype)
    layer.load_state_dict(_torch_state(tlayer))          # torch's conv/linear weights -> ours
    _randomize(layer, 1)                                 # non-trivial norm parameters and stats
    tlayer.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    getattr(layer, mode)()
    getattr(tlayer, mode)()
    gen = np.random.default_rng(2)
    x = gen.normal(size=shape).astype(dtype)
    g = gen.normal(size=layer.output_shape(shape)).astype(dtype)
    y, gx, grads = _run_ours(layer, x, g)
    ty, tgx, tgrads = _run_torch(torch, tlayer, x, g)
    assert y.dtype == dtype and gx.dtype == dtype
    assert_close(y, ty, dtype, f"{name} output")
    assert_close(gx, tgx, dtype, f"{name} grad_x")
    assert set(grads) == set(tgrads)
    for k in grads:
        assert grads[k].dtype == dtype
        assert_close(grads[k], tgrads[k], dtype, f"{name} grad {k}")
    # running statistics (updated in training mode only) and every other entry agree
    ours_after, theirs_after = layer.state_dict(), _torch_state(tlayer)
    assert list(ours_after) == list(theirs_after)
    for k in ours_after:
        assert_close(ours_after[k], theirs_after[k], dtype, k)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_running_stats_match_torch(torch, case):
    name, make, make_torch, shape = case
    layer = make()
    tlayer = make_torch(torch)
    layer.load_state_dict(_torch_state(tlayer))
    gen = np.random.default_rng(3)
    for _ in range(3):
        x = (gen.normal(size=shape) * 2 + 1).astype(np.float32)
        layer(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tlayer(torch.tensor(x))
    ours, theirs = layer.state_dict(), _torch_state(tlayer)
    assert list(ours) == list(theirs)
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype, k
        assert_close(ours[k], theirs[k], np.float32, k)
    layer.eval()
    tlayer.eval()
    x = gen.normal(size=shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ty = tlayer(torch.tensor(x)).detach().numpy()
    assert_close(layer(x), ty, np.float32, "eval output")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck(case, mode):
    name, make, _, shape = case
    layer = _randomize(make(), 4)
    getattr(layer, mode)()
    # up to 60 sampled entries per tensor (every entry of most of them); the comparisons with
    # torch and with the reference backend above cover every entry
    errors = gradcheck_layer(layer, shape, seed=5, max_checks=60)
    assert "input" in errors
    assert set(errors) == {"input"} | {n for n, _ in layer.named_parameters()}
    for k, err in errors.items():
        assert err < 1e-6, (name, k, err)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in CONV_POOL], ids=sorted(CONV_POOL, key=CASE_IDS.index))
def test_fast_and_reference_backends_agree(case, dtype):
    name, make, _, shape = case
    gen = np.random.default_rng(6)
    x = gen.normal(size=shape).astype(dtype)
    results = {}
    for backend in ("fast", "reference"):
        layer = _randomize(make(), 7).astype(dtype).set_backend(backend)
        y = layer(x)
        g = np.random.default_rng(8).normal(size=y.shape).astype(dtype)
        gx = layer.backward(g)
        results[backend] = (y, gx, {n: p.grad for n, p in layer.named_parameters()})
    (y1, gx1, p1), (y2, gx2, p2) = results["fast"], results["reference"]
    assert_close(y1, y2, dtype, "output")
    assert_close(gx1, gx2, dtype, "grad_x")
    for k in p1:
        assert_close(p1[k], p2[k], dtype, k)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_round_trip(case):
    name, make, _, shape = case
    a = _randomize(make(), 9)
    x = np.random.default_rng(10).normal(size=shape).astype(np.float32)
    a(x)  # BatchNorm: non-trivial running stats and num_batches_tracked
    sd = a.state_dict()
    b = make()
    for p in b.parameters():
        p.data[...] = 0
    b.load_state_dict(sd)
    for (k1, v1), (k2, v2) in zip(sd.items(), b.state_dict().items()):
        assert k1 == k2
        np.testing.assert_array_equal(v1, v2)
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    # state_dict returns copies
    for v in sd.values():
        v[...] = 7
    assert not any(np.all(v == 7) for v in a.state_dict().values() if v.size > 1)


def test_state_dict_keys_are_torchs(torch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2), nn.BatchNorm1d(2, affine=False))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4, 2),
                                 torch.nn.LayerNorm(2), torch.nn.BatchNorm1d(2, affine=False))
    ours, theirs = model.state_dict(), tmodel.state_dict()
    assert list(ours) == list(theirs)
    assert "1.running_mean" in ours and "1.num_batches_tracked" in ours and "0.weight" in ours
    for k in ours:
        assert ours[k].shape == tuple(theirs[k].shape), k
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    # torch tensors load directly, too
    model.load_state_dict(tmodel.state_dict())
    np.testing.assert_array_equal(model[0].weight.data, tmodel[0].weight.detach().numpy())


def test_load_state_dict_errors_are_clear_and_atomic():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.BatchNorm2d(4))
    before = model.state_dict()
    sd = model.state_dict()
    sd["0.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"'0\.weight'.*\(4, 3, 5, 5\).*\(4, 3, 3, 3\)"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["0.bias"] = sd["0.bias"] + 1
    del sd["1.running_var"]
    sd["2.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing keys: \['1\.running_var'\].*unexpected keys: \['2\.weight'\]"):
        model.load_state_dict(sd)
    for k, v in model.state_dict().items():  # nothing was changed by the failed loads
        np.testing.assert_array_equal(v, before[k])
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == ["2.weight"]
    np.testing.assert_array_equal(model[0].bias.data, before["0.bias"] + 1)
    with pytest.raises(ValueError, match="real numbers"):
        model.load_state_dict({**model.state_dict(), "0.bias": np.array(["a"] * 4)})
    with pytest.raises(TypeError):
        model.load_state_dict([1, 2])


def test_load_state_dict_keeps_arrays_and_casts():
    layer = nn.Linear(3, 2)
    w = layer.weight.data
    layer.load_state_dict({"weight": np.ones((2, 3)), "bias": np.arange(2)})
    assert layer.weight.data is w and w.dtype == np.float32
    np.testing.assert_array_equal(w, 1)
    np.testing.assert_array_equal(layer.bias.data, [0, 1])


# ---------------------------------------------------------------------------------------------
# Module mechanics
# ---------------------------------------------------------------------------------------------

def test_parameter_basics():
    p = nn.Parameter(np.arange(6).reshape(2, 3))
    assert p.data.dtype == np.float32 and p.grad.shape == (2, 3) and not p.grad.any()
    assert p.shape == (2, 3) and p.size == 6 and p.ndim == 2 and p.dtype == np.float32
    p.grad += 1
    p.zero_grad()
    assert not p.grad.any()
    p.data = np.zeros(4)
    p.zero_grad()
    assert p.grad.shape == (4,) and p.grad.dtype == np.float64
    assert "shape=(4,)" in repr(p)


def test_parameter_converts_to_numpy_as_its_data():
    # np.asarray(layer.weight) raised "float() argument must be ... not 'Parameter'" from
    # NumPy functions (np.mean, np.asarray(..., float)): the NumPy 2 __array__ protocol
    import copy
    import pickle

    layer = nn.Conv2d(3, 2, 3, rng=0)
    w = layer.weight
    a = np.asarray(w)
    assert a is w.data                                  # no copy, as np.asarray of an array
    assert np.mean(w) == np.mean(w.data) and np.abs(w).max() == np.abs(w.data).max()
    assert np.array_equal(np.asarray(w, dtype=np.float64), w.data)
    c = np.array(w, copy=True)
    assert not np.shares_memory(c, w.data) and np.array_equal(c, w.data)
    assert np.asarray(w, copy=False) is w.data
    with pytest.raises(ValueError, match="without a copy"):
        np.asarray(w, dtype=np.float64, copy=False)
    assert np.stack([layer.weight, layer.weight]).shape == (2, 2, 3, 3, 3)
    # still a Parameter everywhere else: not an ndarray, pickled, copied and saved as before
    assert not isinstance(w, np.ndarray)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert isinstance(clone.weight, nn.Parameter)
        np.testing.assert_array_equal(clone.weight.data, w.data)
    state = layer.state_dict()
    assert type(state["weight"]) is np.ndarray and np.array_equal(state["weight"], w.data)
    other = nn.Conv2d(3, 2, 3, rng=1)
    other.load_state_dict({"weight": layer.weight, "bias": layer.bias})  # Parameters as values
    np.testing.assert_array_equal(other.weight.data, w.data)
    assert not np.shares_memory(other.weight.data, w.data)


def test_registration_and_traversal():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.scale = nn.Parameter(np.ones(2))
            self.register_buffer("count", np.zeros(1))
            self.plain = 3  # not registered

        def forward(self, x):
            return self.conv(x)

    b = Block()
    assert [n for n, _ in b.named_parameters()] == ["scale", "conv.weight", "conv.bias"]
    assert b.scale.name == "scale" and b.conv.weight.name == "weight"
    assert list(b.state_dict()) == ["scale", "count", "conv.weight", "conv.bias"]
    assert [n for n, _ in b.named_modules()] == ["", "conv"]
    assert list(b.children()) == [b.conv]
    assert [n for n, _ in b.named_buffers()] == ["count"]
    b.count = np.ones(1)
    np.testing.assert_array_equal(b.state_dict()["count"], [1])
    with pytest.raises(TypeError):
        b.scale = np.ones(2)
    del b.conv
    assert [n for n, _ in b.named_parameters()] == ["scale"]
    with pytest.raises(AttributeError, match="super"):
        class Bad(nn.Module):
            def __init__(self):
                self.x = 1
        Bad()
    # shared parameters are listed once
    lin, lin2 = nn.Linear(2, 2), nn.Linear(2, 2)
    lin2.weight = lin.weight
    seq = nn.Sequential(lin, lin2)
    assert len(list(seq.parameters())) == 3
    assert seq.num_parameters() == 8


def test_train_eval_propagate_and_return_self():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    assert model.eval() is model
    assert all(not m.training for m in model.modules())
    assert model.train() is model
    assert all(m.training for m in model.modules())


def test_zero_grad_and_accumulation():
    layer = nn.Conv2d(2, 3, 3, rng=0)
    x = np.random.default_rng(0).normal(size=(2, 2, 5, 5)).astype(np.float32)
    y = layer(x)
    g = np.ones_like(y)
    layer.backward(g)
    once = layer.weight.grad.copy()
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_input_grad_false_skips_first_layer_input_gradient():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.ReLU(), nn.Flatten(), nn.Linear(27, 2, rng=1))
    x = np.random.default_rng(1).normal(size=(2, 2, 5, 5)).astype(np.float32)
    g = np.ones((2, 2), np.float32)
    model(x)
    gx = model.backward(g)
    full = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model(x)
    assert model.backward(g, input_grad=False) is None
    for a, b in zip(full, model.parameters()):
        np.testing.assert_array_equal(a, b.grad)
    assert gx.shape == x.shape


def test_backward_errors():
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1, 2)))
    layer(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"Linear.*grad_y has shape \(4, 3\).*\(4, 2\)"):
        layer.backward(np.ones((4, 3)))


@pytest.mark.parametrize("layer, x, pattern", [
    (nn.Conv2d(3, 4, 3), np.zeros((2, 5, 8, 8)), r"Conv2d\(3, 4.*\(N, 3, H, W\).*\(2, 5, 8, 8\)"),
    (nn.Conv2d(3, 4, 3), np.zeros((8, 8)), r"\(N, 3, H, W\) or \(3, H, W\), got \(8, 8\)"),
    (nn.Conv2d(3, 4, 5), np.zeros((1, 3, 3, 3)), r"larger than the padded input"),
    (nn.MaxPool2d(2), np.zeros((2, 8)), r"MaxPool2d.*\(N, C, H, W\).*\(2, 8\)"),
    (nn.AvgPool2d(4), np.zeros((1, 1, 2, 2)), r"too small"),
    (nn.Linear(5, 3), np.zeros((2, 4)), r"Linear\(in_features=5.*\(2, 4\)"),
    (nn.BatchNorm2d(3), np.zeros((2, 4, 2, 2)), r"BatchNorm2d\(3.*\(N, 3, H, W\).*\(2, 4, 2, 2\)"),
    (nn.BatchNorm1d(3), np.zeros((2, 3, 2, 2)), r"BatchNorm1d\(3.*\(2, 3, 2, 2\)"),
    (nn.BatchNorm1d(3), np.zeros((1, 3)), r"more than 1 value per channel"),
    (nn.LayerNorm((2, 3)), np.zeros((4, 3, 2)), r"LayerNorm.*\(\*, 2, 3\).*\(4, 3, 2\)"),
    (nn.Flatten(2), np.zeros((3, 4)), r"Flatten.*\(3, 4\)"),
    (nn.ReLU(), np.array(["a"]), r"real numbers"),
])
def test_shape_errors_name_layer_and_shapes(layer, x, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        layer(x)


def test_sequential_error_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"layer 2 of Sequential: Linear.*\(1, 144\)"):
        model(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), "divisible by groups"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), "in_channels"),
    (dict(in_channels=3, out_channels=4, kernel_size=0), "kernel_size"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding="same"), "same"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="full"), "padding"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, dtype=np.int32), "float32 or float64"),
])
def test_conv2d_constructor_validation(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        nn.Conv2d(**kwargs)


def test_other_constructor_validation():
    with pytest.raises(ValueError, match="at most half"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError):
        nn.Linear(0, 2)
    with pytest.raises(ValueError):
        nn.BatchNorm2d(0)
    with pytest.raises(TypeError):
        nn.Sequential(nn.ReLU(), "relu")


def test_default_init_matches_torch_distribution():
    # PyTorch: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    conv = nn.Conv2d(16, 32, 3, rng=0)
    bound = 1 / np.sqrt(16 * 9)
    w = conv.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.05)
    assert np.abs(conv.bias.data).max() <= bound
    lin = nn.Linear(100, 50, rng=0)
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.bias.data).max() <= 0.1
    # reproducible from a seed, different for another seed
    np.testing.assert_array_equal(nn.Conv2d(16, 32, 3, rng=0).weight.data, w)
    assert not np.array_equal(nn.Conv2d(16, 32, 3, rng=1).weight.data, w)
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    np.testing.assert_array_equal(bn.running_var, 1)


# ---------------------------------------------------------------------------------------------
# dtype handling
# ---------------------------------------------------------------------------------------------

def test_float32_model_stays_float32():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(), nn.AvgPool2d(2),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 8), nn.LayerNorm(8),
                          nn.Sigmoid(), nn.Tanh(), nn.Linear(8, 3))
    for x in (np.zeros((2, 3, 8, 8), np.float64), np.zeros((2, 3, 8, 8), np.int16)):
        y = model(x)
        assert y.dtype == np.float32
        gx = model.backward(np.ones_like(y))
        assert gx.dtype == np.float32
    for p in model.parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert model.dtype == np.float32


def test_empty_batch_through_every_layer(torch):
    # N = 0 gives empty outputs and gradients; batch norm keeps its statistics (as PyTorch).
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 6), nn.BatchNorm1d(6),
                          nn.LayerNorm(6), nn.Tanh())
    for train in (True, False):
        model.train(train)
        y = model(np.zeros((0, 3, 4, 4), np.float32))
        assert y.shape == (0, 6)
        assert model.backward(np.zeros((0, 6), np.float32)).shape == (0, 3, 4, 4)
    bn, tbn = model[1], torch.nn.BatchNorm2d(4)
    tbn(torch.zeros(0, 4, 2, 2))
    np.testing.assert_array_equal(bn.running_mean, tbn.running_mean.numpy())
    np.testing.assert_array_equal(bn.running_var, tbn.running_var.numpy())
    assert int(bn.num_batches_tracked) == int(tbn.num_batches_tracked) == 1
    assert not any(p.grad.any() for p in model.parameters())


def test_layers_without_parameters_keep_the_input_precision():
    model = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Tanh())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    want = model(x)
    assert want.dtype == np.float64
    for xb in (x.astype(">f8"), x.astype(np.longdouble)):  # big-endian from a file; longdouble
        got = model(xb)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    assert model(x.astype(">f4")).dtype == model(x.astype(np.int16)).dtype == np.float32


def test_astype_converts_parameters_grads_and_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm((4, 2, 2), elementwise_affine=False))
    w32 = model[0].weight.data.copy()
    assert model.astype(np.float64) is model
    for p in model.parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
    assert model[1].running_mean.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    np.testing.assert_array_equal(model[0].weight.data, w32.astype(np.float64))
    y = model(np.ones((2, 3, 4, 4), np.float32))
    assert y.dtype == np.float64
    model.to(np.float32)
    assert model.dtype == np.float32 and model(np.ones((2, 3, 4, 4))).dtype == np.float32
    with pytest.raises(TypeError):
        model.astype(np.int64)
    assert nn.ReLU().dtype is None
    # model.to("cuda") / to("cpu") as in PyTorch code gave NumPy's "data type 'cuda' not
    # understood", naming neither the method nor the argument
    for device in ("cuda", "cpu", "cuda:0"):
        with pytest.raises(TypeError, match=rf"Sequential\.to: dtype must be float32 or float64, "
                                            rf"got '{device}' \(a PyTorch device\? fastconv runs "
                                            rf"on the CPU"):
            model.to(device)
    with pytest.raises(TypeError, match=r"Conv2d: dtype must be float32 or float64, got 'banana'$"):
        nn.Conv2d(3, 4, 3, dtype="banana")
    assert model.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Dropout and BatchNorm behaviour
# ---------------------------------------------------------------------------------------------

def test_dropout_train_and_eval():
    drop = nn.Dropout(0.25, rng=0)
    x = np.ones((200, 100), np.float32)
    y = drop(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert 0.72 < kept.mean() < 0.78  # 20,000 Bernoulli(0.75) draws: std 0.003
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    g = np.full_like(x, 2.0)
    np.testing.assert_allclose(drop.backward(g), 2.0 * kept / 0.75)
    y2 = drop(x)
    assert not np.array_equal(y, y2)  # a new mask each call
    drop.eval()
    assert drop(x) is x
    assert drop.backward(g) is g
    # reproducible from the seed
    np.testing.assert_array_equal(nn.Dropout(0.25, rng=0)(x), y)
    assert not nn.Dropout(1.0)(x).any()


def test_dropout_freeze_mask():
    drop = nn.Dropout(0.5, rng=1)
    x = np.random.default_rng(0).normal(size=(4, 6))
    y1 = drop(x)
    drop.freeze_mask()
    np.testing.assert_array_equal(drop(x), y1)
    np.testing.assert_array_equal(drop(2 * x), 2 * y1)
    keep = np.zeros((4, 6), bool)
    keep[0] = True
    drop.freeze_mask(keep)
    y = drop(x)
    np.testing.assert_array_equal(y[0], 2 * x[0])
    assert not y[1:].any()
    with pytest.raises(ValueError, match="frozen mask"):
        drop(np.ones((2, 2)))
    drop.unfreeze_mask()
    assert drop(np.ones((2, 2))).shape == (2, 2)


def test_batchnorm_train_uses_batch_stats_eval_uses_running():
    bn = nn.BatchNorm2d(2, momentum=0.5)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 2, 4, 4)).astype(np.float32)
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    m = x.mean(axis=(0, 2, 3))
    v = x.var(axis=(0, 2, 3), ddof=1)  # unbiased, as torch
    np.testing.assert_allclose(bn.running_mean, 0.5 * m, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * v, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y_eval = bn(x)
    expected = (x - bn.running_mean[:, None, None]) / np.sqrt(bn.running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1  # eval does not update
    bn.reset_running_stats()
    assert not bn.running_mean.any() and int(bn.num_batches_tracked) == 0


# ---------------------------------------------------------------------------------------------
# Sequential
# ---------------------------------------------------------------------------------------------

def test_sequential_container():
    layers = [nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)]
    model = nn.Sequential(*layers)
    assert len(model) == 3 and list(model) == layers and model[0] is layers[0] and model[-1] is layers[2]
    head = model[:2]
    assert isinstance(head, nn.Sequential) and list(head) == layers[:2]
    assert list(head.state_dict()) == ["0.weight", "0.bias"]
    with pytest.raises(IndexError):
        model[3]
    model.append(nn.Tanh())
    assert len(model) == 4 and list(model.state_dict())[-1] == "2.bias"
    named = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1), act=nn.ReLU()))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
    text = repr(model)
    assert "(0): Linear(in_features=4, out_features=3, bias=True)" in text and "(3): Tanh()" in text
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(model(x), np.tanh(layers[2](layers[1](layers[0](x)))))


def test_sequential_layer_given_twice(torch):
    # A layer saves its last forward for backward: reused objects must not share that.
    gen = np.random.default_rng(3)
    act, lin = nn.Tanh(), nn.Linear(5, 5)
    model = nn.Sequential(lin, act, nn.Linear(5, 5), act)
    assert model[3] is not act and type(model[3]) is nn.Tanh and model[1] is act
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5),
                                 torch.nn.Tanh()).double()
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.astype(np.float64).state_dict().items()})
    x, g = gen.standard_normal((4, 5)), gen.standard_normal((4, 5))
    y = model(x)
    gx = model.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(lin.weight.grad, tmodel[0].weight.grad.numpy(), rtol=1e-10)
    model.append(act)
    assert len(model) == 5 and model[4] is not act
    # Layers with weights are refused (with the way to share weights), also inside blocks.
    with pytest.raises(ValueError, match=r"layer 2 \(Linear.*already in this model.*b.weight = a.weight"):
        nn.Sequential(lin, nn.ReLU(), lin)
    block = nn.Sequential(nn.Linear(5, 5), nn.ReLU())
    with pytest.raises(ValueError, match="already in this model"):
        nn.Sequential(block, block)
    with pytest.raises(ValueError, match="already in this model"):
        nn.Sequential(block, nn.Sequential(block[0]))
    with pytest.raises(ValueError, match="already in this model"):
        model.append(lin)
    # Shared weights through a shared Parameter: both uses' gradients add up, as in PyTorch.
    tied = nn.Linear(5, 5).astype(np.float64)
    tied.weight = lin.weight
    shared = nn.Sequential(lin, nn.Tanh(), tied)
    assert len(list(shared.parameters())) == 3
    shared.zero_grad()
    shared(x)
    shared.backward(np.ones((4, 5)))
    tl = torch.nn.Linear(5, 5).double()
    tl2 = torch.nn.Linear(5, 5).double()
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(lin.weight.data))
        tl.bias.copy_(torch.tensor(lin.bias.data))
        tl2.bias.copy_(torch.tensor(tied.bias.data))
    tl2.weight = tl.weight
    out = tl2(torch.tanh(tl(torch.tensor(x))))
    out.backward(torch.ones(4, 5, dtype=torch.float64))
    np.testing.assert_allclose(lin.weight.grad, tl.weight.grad.numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------

def test_layers_resolve_backend_at_call_time(monkeypatch):
    import fastconv.backend as backend

    calls = []
    real = backend.get_backend

    def spy(name=None):
        module = real(name)
        calls.append(module.__name__)
        return module

    monkeypatch.setattr(nn.module, "get_backend", spy)
    conv = nn.Conv2d(1, 1, 3)
    x = np.ones((1, 1, 4, 4), np.float32)
    conv(x)
    with use_backend("reference"):
        y = conv(x)
    conv.backward(np.ones_like(y))
    conv(x)
    assert calls == ["fastconv.functional", "fastconv.reference", "fastconv.functional"]
    model = nn.Sequential(conv, nn.AvgPool2d(2)).set_backend("reference")
    assert conv.backend == "reference"
    calls.clear()
    model(x)
    assert calls == ["fastconv.reference", "fastconv.reference"]
    model.set_backend(None)
    calls.clear()
    with use_backend("reference"):
        model(x)
    model(x)
    assert calls == ["fastconv.reference"] * 2 + ["fastconv.functional"] * 2
    with pytest.raises(ValueError, match="unknown backend"):
        model.set_backend("cuda")


def test_backward_uses_the_ops_of_forward():
    conv = nn.Conv2d(1, 2, 3, rng=0)
    x = np.random.default_rng(0).normal(size=(1, 1, 5, 5)).astype(np.float32)
    with use_backend("reference"):
        y = conv(x)
    assert conv._cache[0].__name__ == "fastconv.reference"
    gx = conv.backward(np.ones_like(y))
    assert gx.shape == x.shape


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def test_summary_table_and_receptive_field():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, dilation=2), nn.AvgPool2d(3, 2, padding=1),
                          nn.Conv2d(16, 4, 1, bias=False), nn.Flatten(), nn.Linear(16, 5))
    out = io.StringIO()
    assert model.summary((3, 16, 16), print_fn=lambda t: out.write(t)) is None    # as Keras
    s = model.summary((3, 16, 16), print_fn=None)
    assert out.getvalue() == str(s) == s.text == repr(s)
    rows = s.rows
    assert [r["output_shape"] for r in rows] == [
        (None, 8, 16, 16), (None, 8, 16, 16), (None, 8, 8, 8), (None, 16, 4, 4), (None, 16, 2, 2),
        (None, 4, 2, 2), (None, 16), (None, 5)]
    assert [r["params"] for r in rows] == [3 * 8 * 9 + 8, 0, 0, 8 * 16 * 9 + 16, 0, 16 * 4, 0, 16 * 5 + 5]
    assert s.total_params == 224 + 1168 + 64 + 85 == model.num_parameters()
    # r_out = r_in + d (k - 1) j_in ; j_out = j_in * s
    # conv3: r=3, j=1; pool2: r=4, j=2; conv3 d2: r=4+2*2*2=12, j=2; avg3 s2: r=12+2*2=16, j=4;
    # conv1: r=16, j=4
    assert [r["rf_size"] for r in rows] == [(3, 3), None, (4, 4), (12, 12), (16, 16), (16, 16), None, None]
    assert [r["rf_jump"] for r in rows] == [(1, 1), None, (2, 2), (2, 2), (4, 4), (4, 4), None, None]
    for text in ("Conv2d", "(None, 16, 4, 4)", "1,168", "12x12 (2)", "Total params: 1,541",
                 "Receptive field"):
        assert text in s.text, text
    assert s.text.endswith("where branches join, the larger field per axis")  # a whole sentence
    # batch given explicitly, and no printing
    s2 = model.summary((7, 3, 16, 16), print_fn=None)
    assert s2.rows[-1]["output_shape"] == (7, 5) and "(7, 5)" in s2.text
    with pytest.raises(ValueError, match="layer 0"):
        model.summary((4, 16, 16), print_fn=None)


def test_summary_counts_buffers_and_nested_sequential():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, (3, 1), stride=(1, 2), bias=False), nn.BatchNorm2d(2)),
                          nn.Flatten())
    s = model.summary((1, 5, 5), print_fn=None)
    assert [r["name"] for r in s.rows] == ["0", "0.0", "0.1", "1"]
    assert [r["depth"] for r in s.rows] == [0, 1, 1, 0]
    assert s.rows[1]["rf_size"] == (3, 1) and s.rows[1]["rf_jump"] == (1, 2)
    assert s.rows[0]["rf_size"] == (3, 1) and s.rows[0]["params"] == 10  # the block's output
    assert s.total_params == 6 + 4 and s.buffer_elements == 4
    assert "3x1 (1x2)" in s.text


def test_pickle_and_deepcopy_after_forward():
    import copy
    import pickle

    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.5, rng=1), nn.Linear(3, 2, rng=2))
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4)).astype(np.float32)
    model(x)  # caches hold arrays and the ops module
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert all(m._cache is None for m in clone.modules())
        assert list(clone.state_dict()) == list(model.state_dict())
        for k, v in clone.state_dict().items():
            np.testing.assert_array_equal(v, model.state_dict()[k])
        clone.eval()
        model.eval()
        np.testing.assert_array_equal(clone(x), model(x))
        model.train()
    assert model[0]._cache is not None  # the original keeps its caches


# ---------------------------------------------------------------------------------------------
# Dropout2d and the padding layers
# ---------------------------------------------------------------------------------------------

def test_dropout2d_zeroes_whole_channels():
    drop = nn.Dropout2d(0.25, rng=0)
    x = np.random.default_rng(1).normal(size=(64, 50, 3, 4)).astype(np.float32)
    y = drop(x)
    assert drop.mask.shape == (64, 50, 1, 1) and y.dtype == np.float32
    kept = drop.mask[:, :, 0, 0] != 0
    assert 0.72 < kept.mean() < 0.78            # 3,200 Bernoulli(0.75) channels: std 0.008
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert not y[~kept].any()                   # a dropped channel is zero everywhere
    g = np.ones_like(x)
    np.testing.assert_allclose(drop.backward(g), np.broadcast_to(drop.mask, x.shape))
    # 3-D input is (N, C, L) to PyTorch 2.13's Dropout2d, with a warning: rows dropped whole
    with pytest.warns(UserWarning, match=r"Received a 3D input to dropout2d .* interpreted as "
                                         r"shape \(N, C, L\)"):
        drop3 = nn.Dropout2d(0.5, rng=2)
        y3 = drop3(np.ones((30, 40, 2)))
    assert y3.shape == (30, 40, 2) and drop3.mask.shape == (30, 40, 1)
    assert (y3[:, :, 0] == y3[:, :, 1]).all() and 0.4 < (y3[:, :, 0] == 0).mean() < 0.6
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), or \(N, C, L\) as PyTorch takes 3-D "
                                         r"input, got shape \(3, 4\)"):
        nn.Dropout2d(0.5)(np.ones((3, 4)))
    frozen = nn.Dropout2d(0.5, rng=3)
    frozen.freeze_mask(np.ones((2, 3, 1, 1), bool))
    np.testing.assert_array_equal(frozen(np.ones((2, 3, 4, 4))), 2.0)
    with pytest.raises(ValueError, match=r"needs \(5, 3, 1, 1\)"):
        frozen(np.ones((5, 3, 4, 4)))
    with pytest.raises(ValueError, match="Dropout2d: probability has to be between 0 and 1"):
        nn.Dropout2d(1.5)


def test_dropout2d_matches_torch_statistics_and_scaling(torch):
    """Same semantics as torch.nn.Dropout2d (the masks come from different generators): each
    channel kept or zeroed whole, kept ones scaled by 1 / (1 - p)."""
    x = np.ones((400, 8, 2, 2), np.float32)
    ours = nn.Dropout2d(0.4, rng=0)(x)
    theirs = torch.nn.Dropout2d(0.4)(torch.tensor(x)).numpy()
    for y in (ours, theirs):
        per_channel = y.reshape(400, 8, 4)
        assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))
        assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.6)}
        assert abs((y != 0).mean() - 0.6) < 0.04


PAD_LAYERS = [
    (lambda: nn.ZeroPad2d((1, 2, 0, 3)), "ZeroPad2d", ((1, 2, 0, 3),)),
    (lambda: nn.ConstantPad2d(2, -1.5), "ConstantPad2d", (2, -1.5)),
    (lambda: nn.ReflectionPad2d((3, 1, 2, 0)), "ReflectionPad2d", ((3, 1, 2, 0),)),
    (lambda: nn.ReplicationPad2d(2), "ReplicationPad2d", (2,)),
    (lambda: nn.CircularPad2d((0, 4, 4, 1)), "CircularPad2d", ((0, 4, 4, 1),)),
]


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 5)], ids=["NCHW", "CHW"])
@pytest.mark.parametrize("case", PAD_LAYERS, ids=[c[1] for c in PAD_LAYERS])
def test_padding_layers_match_torch(torch, case, shape, backend):
    build, name, args = case
    layer = build().set_backend(backend)
    twin = getattr(torch.nn, name)(*args)
    assert repr(layer) == repr(twin)
    x = np.random.default_rng(0).normal(size=shape)
    y = layer(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    assert layer.output_shape(shape) == y.shape
    g = np.random.default_rng(1).normal(size=y.shape)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-13, atol=1e-14)


def test_padding_layer_arguments():
    for bad in (-1, (1, 2), (1, 2, 3, -4), 1.5, "a"):
        with pytest.raises(ValueError, match="padding must be a non-negative int or 4 of them"):
            nn.ReflectionPad2d(bad)
    with pytest.raises(ValueError, match="reflect padding must be smaller"):
        nn.ReflectionPad2d(3)(np.zeros((1, 1, 3, 8)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\), got shape \(4, 4\)"):
        nn.ZeroPad2d(1)(np.zeros((4, 4)))
    model = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3), nn.ReLU())
    assert model.output_shape((2, 3, 8, 8)) == (2, 4, 8, 8)
    rows = model.summary((2, 3, 8, 8), print_fn=None).rows
    assert rows[1]["rf_size"] == (3, 3)          # padding keeps the field


def test_max_pool_return_indices_as_torch(torch):
    """PyTorch's argument order (return_indices before ceil_mode) and its indices: the
    arg-max's flat position in its input plane."""
    x = np.random.default_rng(5).normal(size=(2, 3, 7, 6))
    for backend in ("fast", "reference"):
        pool = nn.MaxPool2d(3, 2, 1, 1, True, True).set_backend(backend)   # positional, as torch
        assert pool.return_indices and pool.ceil_mode
        twin = torch.nn.MaxPool2d(3, 2, 1, 1, True, True)
        assert repr(pool).endswith("return_indices=True, ceil_mode=True)")
        y, idx = pool(x)
        xt = torch.tensor(x, requires_grad=True)
        yt, it = twin(xt)
        np.testing.assert_array_equal(y, yt.detach().numpy())
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(idx, it.numpy())
        g = np.random.default_rng(6).normal(size=y.shape)
        yt.backward(torch.tensor(g))
        idx[...] = 0                                    # the caller's copy: backward keeps its own
        np.testing.assert_allclose(pool.backward(g), xt.grad.numpy(), rtol=1e-14)
    # never fused: the pair is what the next layer (or the caller) gets
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.ReLU(), nn.MaxPool2d(2, return_indices=True))
    out = model(x.astype(np.float32))
    assert isinstance(out, tuple) and out[1].shape == out[0].shape
    with pytest.raises(TypeError, match="return_indices must be True or False"):
        nn.MaxPool2d(2, return_indices="yes")


@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax"])
def test_softmax_layers_match_torch(torch, name):
    gen = np.random.default_rng(7)
    for shape, dim in (((3, 4, 5), 0), ((3, 4, 5), 1), ((3, 4, 5), -1), ((6,), 0),
                       ((2, 3, 4, 5), 1)):
        for dtype, tol in ((np.float64, 1e-14), (np.float32, 1e-6)):
            layer, twin = getattr(nn, name)(dim), getattr(torch.nn, name)(dim)
            assert repr(layer) == repr(twin)
            x = (gen.normal(size=shape) * 5).astype(dtype)
            y = layer(x)
            assert y.dtype == dtype
            xt = torch.tensor(x, requires_grad=True)
            yt = twin(xt)
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
            g = gen.normal(size=shape).astype(dtype)
            yt.backward(torch.tensor(g))
            np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=10 * tol,
                                       atol=10 * tol)
    big = getattr(nn, name)(1)(np.array([[1e30, 0.0, -1e30]]))
    assert np.isfinite(big[0, :2]).all()                       # no overflow
    with pytest.warns(UserWarning, match="implicit dimension choice"):
        assert getattr(nn, name)()(np.zeros((2, 3))).shape == (2, 3)   # dim 1, as torch
    with pytest.raises(ValueError, match="dim 2 is out of range for input of 2 axes"):
        getattr(nn, name)(2)(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="dim must be an int or None"):
        getattr(nn, name)(1.0)


def test_fit_log_softmax_and_nll_as_cross_entropy():
    """A LogSoftmax head trained with NLLLoss gives the weights of CrossEntropyLoss on the
    logits, to rounding (the two compute the same gradient by different sums)."""
    from fastconv import losses
    from fastconv.training import fit
    gen = np.random.default_rng(0)
    x = gen.normal(size=(48, 3, 6, 6))
    y = gen.integers(0, 4, 48)
    runs = []
    for head, loss in ((nn.LogSoftmax(1), losses.NLLLoss()), (nn.Identity(), losses.CrossEntropyLoss())):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0, dtype=np.float64), nn.ReLU(), nn.Flatten(),
                              nn.Linear(64, 4, rng=1, dtype=np.float64), head)
        fit(model, (x, y), 2, optimizer=__import__("fastconv").optim.SGD(model.parameters(), lr=0.1),
            loss=loss, batch_size=16, seed=0, progress=False)
        runs.append(model.state_dict())
    for k in runs[0]:
        np.testing.assert_allclose(runs[0][k], runs[1][k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("build", [nn.ReLU6, lambda: nn.ELU(0.7), nn.Hardsigmoid, nn.Hardswish,
                                   lambda: nn.PReLU(3, init=0.2)],
                         ids=["ReLU6", "ELU", "Hardsigmoid", "Hardswish", "PReLU"])
def test_more_activations_gradients_numerically(build):
    from fastconv.gradcheck import eval_numerical_gradient, rel_error
    layer = build().astype(np.float64) if isinstance(build(), nn.PReLU) else build()
    x = np.random.default_rng(8).uniform(-8, 8, size=(2, 3, 4))
    x[np.abs(np.abs(x) - 3) < 0.05] += 0.2          # away from the kinks at 0, +-3 and 6
    x[np.abs(x) < 0.05] += 0.2
    x[np.abs(x - 6) < 0.05] += 0.2
    g = np.random.default_rng(9).normal(size=x.shape)
    layer(x)
    if isinstance(layer, nn.PReLU):
        layer.zero_grad()
    gx = layer.backward(g)
    num = eval_numerical_gradient(lambda v: float((layer(v) * g).sum()), x.copy())
    assert rel_error(gx, num) < 1e-8
    if isinstance(layer, nn.PReLU):
        w = layer.weight.data
        analytic = layer.weight.grad.copy()

        def loss(v):
            old = w.copy()
            w[...] = v
            out = float((layer(x) * g).sum())
            w[...] = old
            return out

        assert rel_error(analytic, eval_numerical_gradient(loss, w.copy())) < 1e-8
        with pytest.raises(ValueError, match="has not 3 channels on axis 1"):
            layer(np.zeros((2, 4, 3)))


@pytest.mark.parametrize("layer, shape", [
    (lambda: nn.GroupNorm(2, 6), (3, 6, 4, 3)), (lambda: nn.GroupNorm(3, 3, bias=False), (2, 3, 5)),
    (lambda: nn.GroupNorm(1, 4, affine=False), (2, 4, 2, 2))], ids=["2-of-6", "3-of-3", "1-of-4"])
def test_group_norm_gradients_numerically(layer, shape):
    m = layer()
    if m.weight is not None:
        m.weight.data[...] = np.random.default_rng(1).uniform(0.5, 1.5, m.weight.data.shape)
    errors = gradcheck_layer(m, shape, seed=4, max_checks=60)
    assert max(errors.values()) < 1e-7, errors


def test_group_norm_checks_and_batch_independence():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 6, \*\), got \(2, 5, 3\)"):
        nn.GroupNorm(2, 6)(np.zeros((2, 5, 3)))
    m = nn.GroupNorm(2, 4)
    x = np.random.default_rng(2).normal(size=(5, 4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(m(x)[2:3], m(x[2:3]))          # each sample on its own
    m.eval()
    np.testing.assert_array_equal(m(x)[2:3], m.train()(x[2:3]))  # and the same in eval mode


def test_instance_norm_checks_warnings_and_statistics(torch):
    with pytest.raises(ValueError, match=r"InstanceNorm2d\(4, .*expected input's size at dim=1 to "
                                         r"match num_features \(4\), got input of shape \(2, 3, 4, 4\)"):
        nn.InstanceNorm2d(4, affine=True)(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="expected input's size at dim=0"):
        nn.InstanceNorm2d(4, track_running_stats=True)(np.zeros((3, 4, 4)))
    with pytest.warns(UserWarning, match="input's size at dim=1 does not match num_features"):
        y = nn.InstanceNorm2d(4)(np.arange(96.0).reshape(2, 3, 4, 4))      # as torch: computed
    np.testing.assert_allclose(y, torch.nn.InstanceNorm2d(3)(
        torch.arange(96.0, dtype=torch.float64).reshape(2, 3, 4, 4)).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\) or \(3, H, W\), "
                                         r"got \(2, 3\)"):
        nn.InstanceNorm2d(3)(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"more than 1 spatial element when training, got input of "
                                         r"shape \(2, 3, 1, 1\)"):
        nn.InstanceNorm2d(3)(np.zeros((2, 3, 1, 1)))
    running = nn.InstanceNorm2d(3, track_running_stats=True).eval()
    assert running(np.ones((2, 3, 1, 1))).shape == (2, 3, 1, 1)       # (running stats: allowed)
    # an empty batch: an empty output, the statistics kept (PyTorch fails with an IndexError)
    layer = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    assert layer(np.zeros((0, 3, 4, 4))).shape == (0, 3, 4, 4)
    assert layer.backward(np.zeros((0, 3, 4, 4))).shape == (0, 3, 4, 4)
    np.testing.assert_array_equal(layer.running_mean, 0)
    np.testing.assert_array_equal(layer.running_var, 1)
    # num_batches_tracked stays 0, as PyTorch's
    layer(np.random.default_rng(0).normal(size=(2, 3, 4, 4)))
    assert int(layer.num_batches_tracked) == 0 and layer.running_mean.any()
    assert list(layer.state_dict()) == list(torch.nn.InstanceNorm2d(
        3, affine=True, track_running_stats=True).state_dict())
    # each sample on its own, in training and in eval without running statistics
    m = nn.InstanceNorm2d(2, affine=True)
    x = np.random.default_rng(2).normal(size=(5, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(m(x)[2:3], m(x[2:3]))
    np.testing.assert_array_equal(m.eval()(x)[2:3], m.train()(x[2:3]))
    np.testing.assert_array_equal(m(x)[2], m(x[2]))                 # one sample (C, H, W)


def test_instance_norm_one_sample_export(torch, tmp_path):
    from fastconv.export import to_torch

    layer = _randomize(nn.InstanceNorm2d(3, affine=True).astype(np.float64), 1)
    x = np.random.default_rng(3).normal(size=(3, 4, 5))
    np.testing.assert_allclose(to_torch(layer)(torch.tensor(x)).detach().numpy(), layer(x),
                               rtol=1e-12, atol=1e-12)
    pytest.importorskip("onnx")
    from fastconv.export import to_onnx
    # (one sample: the file's dynamic first axis would be the channels)
    with pytest.raises(ValueError, match=r"to_onnx: input_shape \(3, 4, 5\) does not fit the "
                                         r"model with a batch of 4 \(axis 0 is the batch\): "
                                         r"InstanceNorm2d.*\(input_shape starts with the batch "
                                         r"axis: \(1, 3, 4, 5\)\?\)"):
        to_onnx(layer.astype(np.float32), tmp_path / "m.onnx", input_shape=(3, 4, 5))


@pytest.mark.parametrize("name,args", [("Hardtanh", ()), ("Hardtanh", (-2.0, 0.5)),
                                       ("Softplus", ()), ("Softplus", (0.5, 3.0)),
                                       ("Softplus", (-1.0, 2.0)), ("Mish", ()), ("LogSigmoid", ())],
                         ids=str)
def test_smooth_and_clipping_activations_over_a_wide_range(torch, name, args):
    """Forward and backward against torch over [-60, 60] (both tails: no overflow, the
    softplus threshold, the clipping), repr as torch's, and central differences in float64
    away from the kinks."""
    from fastconv.gradcheck import eval_numerical_gradient, rel_error
    layer, twin = getattr(nn, name)(*args), getattr(torch.nn, name)(*args)
    assert repr(layer) == repr(twin)
    gen = np.random.default_rng(4)
    x = np.concatenate([gen.uniform(-60, 60, 200), gen.normal(size=200) * 3, [0.0, -0.0]])
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        xd = x.astype(dtype).reshape(2, -1)
        g = gen.normal(size=xd.shape).astype(dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # (no warning)
            y = layer(xd)
            gx = layer.backward(g)
        xt = torch.tensor(xd, requires_grad=True)
        yt = twin(xt)
        yt.backward(torch.tensor(g))
        assert y.dtype == gx.dtype == dtype
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=tol, atol=tol)
    kinks = {"Hardtanh": list(args or (-1.0, 1.0)),
             "Softplus": [args[1] / args[0]] if args else [20.0]}.get(name, [])
    xs = gen.uniform(-8, 8, size=(3, 10))
    for kink in kinks:
        xs[np.abs(xs - kink) < 1e-3] += 0.01
    g = gen.normal(size=xs.shape)
    layer(xs)
    num = eval_numerical_gradient(lambda v: float((layer(v) * g).sum()), xs.copy())
    layer(xs)
    assert rel_error(layer.backward(g), num) < 1e-8


def test_new_activation_and_unflatten_arguments(torch):
    with pytest.raises(ValueError, match=r"Hardtanh: max_val \(-1\) must be greater than min_val \(1\)"):
        nn.Hardtanh(1, -1)
    with pytest.raises(TypeError, match="Softplus: beta must be a real number, got '2'"):
        nn.Softplus("2")
    for sizes in ((2, 3), [2, -1], (-1, 6)):
        layer, twin = nn.Unflatten(-1, sizes), torch.nn.Unflatten(-1, sizes)
        assert repr(layer) == repr(twin)
        assert layer.output_shape((4, 6)) == tuple(twin(torch.zeros(4, 6)).shape)
    with pytest.raises(ValueError, match=r"unflattened_size \(4, -1\) does not split dim 1 of "
                                         r"size 6 \(input of shape \(2, 6\)\)"):
        nn.Unflatten(1, (4, -1))(np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"dim 2 is out of range for an input of shape \(2, 6\)"):
        nn.Unflatten(2, (2, 3))(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="at most one -1"):
        nn.Unflatten(1, (-1, -1))
    with pytest.raises(TypeError, match="unflattened_size must be a tuple"):
        nn.Unflatten(1, 6)
    with pytest.raises(TypeError, match="dim must be an int"):
        nn.Unflatten(1.0, (2, 3))
    model = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (3, 2, 2)))   # a round trip
    x = np.random.default_rng(0).normal(size=(2, 3, 2, 2))
    np.testing.assert_array_equal(model(x), x)
    np.testing.assert_array_equal(model.backward(x), x)
    for layer in (nn.Hardtanh(), nn.Softplus(), nn.Mish(), nn.LogSigmoid()):   # empty batch
        assert layer(np.zeros((0, 3))).shape == (0, 3) and layer.backward(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"affine": False},
                                    {"affine": False, "bias": False},
                                    {"track_running_stats": False, "bias": False}])
def test_batch_norm_bias_keyword_as_torch(torch, kwargs):
    # torch's keyword-only bias (2.x): no bias parameter, none in the state dict, repr says so
    for ours, theirs in ((nn.BatchNorm2d(3, **kwargs), torch.nn.BatchNorm2d(3, **kwargs)),
                         (nn.BatchNorm1d(4, **kwargs), torch.nn.BatchNorm1d(4, **kwargs))):
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert (ours.bias is None) == (theirs.bias is None)
    with pytest.raises(TypeError, match="bias must be True or False"):
        nn.BatchNorm2d(3, bias="no")


def test_flatten_of_a_scalar_is_torchs(torch):
    """A 0-d input has the dims of a 1-d one (0 and -1), as in torch: flattening them gives
    shape (1,); nn.Flatten's default start_dim=1 does not exist there and raises."""
    x = np.float32(3.0)
    for start, end in ((0, -1), (-1, 0), (0, 0)):
        got = nn.Flatten(start, end)(np.asarray(x))
        want = torch.nn.Flatten(start, end)(torch.tensor(3.0)).numpy()
        assert got.shape == want.shape == (1,) and got[0] == 3.0
    with pytest.raises(IndexError):
        torch.nn.Flatten()(torch.tensor(3.0))
    with pytest.raises(ValueError, match="0-d input"):
        nn.Flatten()(np.asarray(x))


class _TwoConvs(nn.Module):
    """A custom module calling its children as functions (``self.a(x)``)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, rng=0)
        self.b = nn.Linear(4 * 5 * 5, 2, rng=1)

    def forward(self, x):
        y = self.a(x)
        self._shape = y.shape
        return self.b(y.reshape(len(y), -1))

    def backward(self, g, input_grad=True):
        g = self.b.backward(g).reshape((-1,) + self._shape[1:])
        return self.a.backward(g, input_grad)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(3, 4, 3, rng=0),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.BatchNorm2d(4), nn.ReLU()),
    lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, rng=0),
    lambda: nn.Linear(5, 3, rng=0),
    _TwoConvs,
], ids=["conv", "sequential", "conv_transpose", "linear", "custom"])
def test_changing_the_input_after_the_call_does_not_change_the_gradients(make):
    """``model(x)`` works on a copy of the caller's array: refilling it before backward (one
    batch buffer reused by a loader) leaves the gradients those of the x the call saw."""
    rng = np.random.default_rng(0)
    shape = (2, 5) if isinstance(make(), nn.Linear) else (2, 3, 5, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    grads = []
    for mutate in (False, True):
        model = make()
        buf = x.copy()
        y = model(buf)
        if mutate:
            buf[...] = rng.standard_normal(shape)
        gx = model.backward(np.ones_like(y))
        grads.append([gx] + [p.grad.copy() for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


class _ConvBN(nn.Module):
    """A custom module with no shape formula of its own (output_shape runs its forward)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, rng=0)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn.forward(self.conv.forward(x))

    def backward(self, g, input_grad=True):
        return self.conv.backward(self.bn.backward(g), input_grad)


@pytest.mark.parametrize("between", [
    lambda m, x: m.output_shape(x.shape),
    lambda m, x: m.summary(x.shape, print_fn=lambda *_: None),
    lambda m, x: m.summary(x.shape[1:], print_fn=lambda *_: None),
], ids=["output_shape", "summary", "summary_unbatched"])
def test_output_shape_and_summary_leave_the_saved_forward_and_the_modes(between):
    """Between a forward and its backward, output_shape/summary (which run a custom module's
    forward on zeros) change neither the gradients nor any layer's train/eval flag (a frozen
    BatchNorm stays frozen)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    grads, modes = [], []
    for call in (None, between):
        m = nn.Sequential(_ConvBN(), nn.ReLU())
        m[0].bn.eval()
        y = m(x)
        if call is not None:
            call(m, x)
        m.backward(np.ones_like(y))
        grads.append([p.grad.copy() for p in m.parameters()])
        modes.append([mod.training for mod in m.modules()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    assert modes[0] == modes[1] and modes[0][3] is False  # (m, _ConvBN, conv, bn, relu)
