"""Hostile inputs against PyTorch: each test here pins a discrepancy an adversarial audit found
(fixed), or a hostile case whose handling must not regress (options that Python's bool() or
float() would silently accept, NaN at the kinks of activations, arrays of the wrong size
handed straight to the compiled kernels)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fastconv import _core, nn
from fastconv import functional as F
from fastconv import reference as R


def _grad_through(layer, x):
    """(y, dL/dx) of `layer` for L = sum(y)."""
    y = layer(x)
    return y, layer.backward(np.ones_like(y))


# -- options that must be what they say -------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: nn.MaxPool2d(2, ceil_mode="yes"),
    lambda: nn.AvgPool2d(2, ceil_mode="no"),
    lambda: nn.AvgPool2d(2, count_include_pad="no"),  # bool("no") is True: silently inverted
    lambda: nn.AvgPool2d(2, count_include_pad=None),
])
def test_pooling_layer_flags_refuse_what_is_not_a_bool(make, torch):
    with pytest.raises(TypeError, match="ceil_mode|count_include_pad"):
        make()
    # torch refuses them as well (at the call)
    with pytest.raises(TypeError):
        torch.nn.AvgPool2d(2, count_include_pad="no")(torch.ones(1, 1, 4, 4))


def test_pooling_layer_flags_take_numpy_bools_and_0_1():
    assert nn.MaxPool2d(2, ceil_mode=np.True_).ceil_mode is True
    assert nn.AvgPool2d(2, count_include_pad=0).count_include_pad is False


@pytest.mark.parametrize("p", ["0.5", None, [0.5]])
def test_dropout_probability_must_be_a_number(p, torch):
    for cls in (nn.Dropout, nn.Dropout2d):
        with pytest.raises(TypeError, match="p must be a number"):
            cls(p)
    with pytest.raises(TypeError):
        torch.nn.Dropout(p)


def test_dropout_probability_takes_numpy_numbers():
    assert nn.Dropout(np.float32(0.25)).p == 0.25
    assert nn.Dropout(np.int64(1)).p == 1.0


@pytest.mark.parametrize("args", [(1.0,), (1, -1.0), ("1",)])
def test_flatten_dims_must_be_ints(args, torch):
    with pytest.raises(TypeError, match="Flatten: (start|end)_dim must be an int"):
        nn.Flatten(*args)
    with pytest.raises(TypeError):
        torch.nn.Flatten(*args)(torch.ones(2, 3, 4))


# -- NaN at the kinks of the piecewise activations ---------------------------------------------

_KINKS = np.array([np.nan, -np.inf, -3.0, -1.0, -0.0, 0.0, 1e-40, 3.0, 6.0, 6.5, np.inf], np.float32)


@pytest.mark.parametrize("name, kwargs", [("ReLU6", {}), ("ELU", {}), ("ELU", {"alpha": 0.5}),
                                          ("Hardsigmoid", {}), ("Hardswish", {}),
                                          ("LeakyReLU", {"negative_slope": 0.2}), ("ReLU", {}),
                                          ("Hardtanh", {}),
                                          ("Hardtanh", {"min_val": -0.5, "max_val": 2.0}),
                                          ("Softplus", {"beta": 2.0, "threshold": 3.0}),
                                          ("Mish", {}), ("LogSigmoid", {}), ("SiLU", {})])
def test_piecewise_activations_match_torch_at_nan_and_the_kinks(name, kwargs, torch):
    # Compared on 64 copies of each value: torch's gradient at NaN differs between its
    # vectorised kernels (ReLU6: 0, ELU and Hardswish: NaN) and its scalar tail for short tensors (1 for
    # both); fastconv gives the vectorised kernels' values, those of any tensor of real size.
    # (Hardtanh let the gradient through at NaN, where ReLU6 and torch's Hardtanh give 0.)
    for dtype in (np.float32, np.float64):
        x = np.repeat(_KINKS, 64).astype(dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # (NumPy's warnings for inf * 0)
            y, gx = _grad_through(getattr(nn, name)(**kwargs), x)
        xt = torch.from_numpy(x).requires_grad_()
        yt = getattr(torch.nn, name)(**kwargs)(xt)
        yt.backward(torch.ones_like(yt))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, equal_nan=True)


# -- the compiled kernels called directly with arrays of the wrong size -------------------------

def _a(*shape):
    return np.ones(shape, np.float32)


def _i(*shape):
    return np.zeros(shape, np.int64)


# (name, valid arguments): every array argument is then replaced by a wrong one in turn
_KERNEL_CALLS = [
    ("conv2d_forward", [_a(1, 2, 4, 4), _a(3, 2, 3, 3), _a(3), _a(1, 3, 2, 2),
                        1, 1, 0, 0, 1, 1, 1]),
    ("conv2d_backward_input", [_a(1, 3, 2, 2), _a(3, 2, 3, 3), _a(1, 2, 4, 4),
                               1, 1, 0, 0, 1, 1, 1]),
    ("conv2d_backward_weight", [_a(1, 3, 2, 2), _a(1, 2, 4, 4), _a(3, 2, 3, 3),
                                1, 1, 0, 0, 1, 1, 1]),
    ("conv2d_backward_bias", [_a(1, 3, 2, 2), _a(3)]),
    ("conv2d_forward_max_pool", [_a(1, 2, 6, 6), _a(3, 2, 3, 3), _a(3), _a(1, 3, 2, 2),
                                 _i(1, 3, 2, 2), 4, 4, 1, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 0,
                                 1, 1, False]),
    ("conv2d_backward_weight_through_max_pool", [_a(1, 3, 2, 2), _i(1, 3, 2, 2), None,
                                                 _a(1, 2, 6, 6), _a(3, 2, 3, 3), _a(3),
                                                 4, 4, 1, 1, 0, 0, 1, 1, 1]),
    ("im2col", [_a(1, 2, 4, 4), _a(1, 18, 4), 3, 3, 1, 1, 0, 0, 1, 1, 2, 2]),
    ("col2im", [_a(1, 18, 4), _a(1, 2, 4, 4), 3, 3, 1, 1, 0, 0, 1, 1, 2, 2]),
    ("max_pool2d_forward", [_a(1, 2, 4, 4), _a(1, 2, 2, 2), _i(1, 2, 2, 2),
                            2, 2, 2, 2, 0, 0, 1, 1, False]),
    ("max_pool2d_backward", [_a(1, 2, 2, 2), _i(1, 2, 2, 2), _a(1, 2, 4, 4), None]),
    ("avg_pool2d_forward", [_a(1, 2, 4, 4), _a(1, 2, 2, 2), 2, 2, 2, 2, 0, 0, True]),
    ("avg_pool2d_backward", [_a(1, 2, 2, 2), _a(1, 2, 4, 4), 2, 2, 2, 2, 0, 0, True]),
    ("adaptive_avg_pool2d_forward", [_a(1, 2, 5, 5), _a(1, 2, 3, 3)]),
    ("adaptive_avg_pool2d_backward", [_a(1, 2, 3, 3), _a(1, 2, 5, 5)]),
    ("upsample_nearest2d_forward", [_a(1, 2, 2, 2), _a(1, 2, 4, 4), _i(4), _i(4)]),
    ("upsample_nearest2d_backward", [_a(1, 2, 4, 4), _a(1, 2, 2, 2), _i(4), _i(4)]),
    ("gemm", [_a(2, 3), _a(3, 4), _a(2, 4), False, False, False]),
    ("batch_norm_forward", [_a(2, 3, 4), _a(3), _a(3), 1e-5, False, _a(2, 3, 4), _a(3), _a(3),
                            _a(3)]),
    ("batch_norm_backward", [_a(2, 3, 4), None, _a(2, 3, 4), _a(3), _a(3), _a(3), _a(2, 3, 4),
                             _a(3), _a(3)]),
]


def _wrong_arrays(a):
    """Arrays that must not pass for `a`: one element more or fewer on every axis, empty, not
    C-contiguous, of another dtype."""
    yield "bigger", np.ones(tuple(s + 1 for s in a.shape), a.dtype)
    yield "smaller", np.ones(tuple(s - 1 for s in a.shape), a.dtype)
    yield "empty", np.ones((0,) * a.ndim, a.dtype)
    yield "strided", np.ones(a.shape + (2,), a.dtype)[..., 0]
    yield "other dtype", a.astype(np.int32 if a.dtype == np.int64 else np.float16)


@pytest.mark.parametrize("name, args", _KERNEL_CALLS, ids=[c[0] for c in _KERNEL_CALLS])
def test_kernels_refuse_arrays_of_the_wrong_size_layout_or_dtype(name, args):
    fn = getattr(_core, name)
    fn(*args)  # the valid call runs
    for i, a in enumerate(args):
        if not isinstance(a, np.ndarray):
            continue
        for what, wrong in _wrong_arrays(a):
            if a.ndim == 1 and what in ("bigger", "smaller") and name.startswith("upsample"):
                continue  # (the row/column maps' length is the output's, checked through it)
            with pytest.raises((ValueError, TypeError)):
                fn(*args[:i], wrong, *args[i + 1:])


def test_kernels_refuse_out_of_range_window_arguments():
    x, y = _a(1, 2, 4, 4), _a(1, 2, 2, 2)
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError):
            _core.avg_pool2d_forward(x, y, bad, 2, 2, 2, 0, 0, True)
        with pytest.raises(ValueError):
            _core.conv2d_forward(x, _a(2, 2, 3, 3), None, y, bad, 1, 0, 0, 1, 1, 1)
    with pytest.raises(ValueError):  # a read-only output
        ro = _a(1, 2, 2, 2)
        ro.setflags(write=False)
        _core.avg_pool2d_forward(x, ro, 2, 2, 2, 2, 0, 0, True)


# -- torch's argument lists: code written for PyTorch builds the same layers --------------------

@pytest.mark.parametrize("name, args", [("ReLU", ()), ("ReLU6", ()), ("LeakyReLU", (0.2,)),
                                        ("ELU", (0.5,)), ("Hardsigmoid", ()), ("Hardswish", ()),
                                        ("SiLU", ()), ("Dropout", (0.0,)), ("Dropout2d", (0.0,)),
                                        ("Hardtanh", (-2.0, 3.0)), ("Mish", ())])
def test_inplace_is_accepted_and_the_input_left_alone(name, args, torch):
    # nn.ReLU(inplace=True) is how torchvision and most PyTorch code write it; fastconv gives
    # torch's values and gradients and never writes into the input (positionally too:
    # nn.Dropout(0.5, True) is inplace, as torch's, not a seed).
    x = np.linspace(-4, 8, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    before = x.copy()
    layer = getattr(nn, name)(*args, True)
    assert layer.inplace is True
    y, gx = _grad_through(layer, x)
    np.testing.assert_array_equal(x, before)
    xt = torch.from_numpy(before.copy()).requires_grad_()
    yt = getattr(torch.nn, name)(*args, inplace=False)(xt)
    yt.backward(torch.ones_like(yt))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        getattr(nn, name)(*args, inplace="yes")


@pytest.mark.parametrize("name", ["LogSigmoid", "Softplus"])
def test_inplace_is_refused_where_torch_has_none(name, torch):
    with pytest.raises(TypeError):
        getattr(torch.nn, name)(inplace=True)
    with pytest.raises(TypeError):
        getattr(nn, name)(inplace=True)


@pytest.mark.parametrize("make", [lambda m: m.BatchNorm2d(3), lambda m: m.BatchNorm1d(3),
                                  lambda m: m.InstanceNorm2d(3, track_running_stats=True)])
def test_state_dicts_without_num_batches_tracked_load_as_in_torch(make, torch):
    # checkpoints from before PyTorch 0.4.1 have no num_batches_tracked: torch loads a plain
    # dict of them strictly and keeps the counter's value; so does fastconv
    ours, theirs = make(nn), make(torch.nn)
    ours.num_batches_tracked.fill(5)
    theirs.num_batches_tracked.fill_(5)
    sd = {k: v.numpy() * 2 + 1 for k, v in theirs.state_dict().items()
          if k != "num_batches_tracked"}
    result = ours.load_state_dict(sd)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 5
    for k, v in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[k], v.numpy())
    # any other missing key is still an error
    del sd["running_mean"]
    with pytest.raises(ValueError, match="missing keys: \\['running_mean'\\]"):
        ours.load_state_dict(sd)


def test_dropout_rng_is_keyword_only():
    with pytest.raises(TypeError):
        nn.Dropout(0.5, False, 0)
    a, b = nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=7)
    x = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(a(x), b(x))


# -- convolutions of images with empty planes ---------------------------------------------------

class _TorchOps:
    """torch.nn.functional's convolutions under fastconv.functional's names, on NumPy arrays."""

    def __init__(self, torch):
        self.torch = torch

    def conv2d(self, x, w, b=None, **kw):
        t = self.torch
        return t.nn.functional.conv2d(t.from_numpy(x), t.from_numpy(w),
                                      None if b is None else t.from_numpy(b), **kw)

    def conv_transpose2d(self, x, w, **kw):
        t = self.torch
        return t.nn.functional.conv_transpose2d(t.from_numpy(x), t.from_numpy(w), **kw)


@pytest.mark.parametrize("call", [
    lambda M: M.conv2d(np.zeros((2, 3, 0, 5), np.float32), np.ones((4, 3, 1, 1), np.float32),
                       np.ones(4, np.float32), padding=1),
    lambda M: M.conv2d(np.zeros((2, 3, 5, 0), np.float32), np.ones((4, 3, 3, 3), np.float32),
                       padding=2),
    lambda M: M.conv_transpose2d(np.zeros((2, 3, 0, 4), np.float32),
                                 np.ones((3, 2, 3, 3), np.float32)),
])
def test_convolutions_refuse_empty_planes_as_torch(call, torch):
    # padding once made an output of the bias alone out of no input, where torch raises
    # ("Only zero batch or zero channel inputs are supported"); the error names the caller's x
    # (conv_transpose2d's named the shape of the convolution it runs on)
    for ops in (F, R):
        with pytest.raises(ValueError, match=r"x of shape \(2, 3, \d, \d\) has empty planes"):
            call(ops)
    with pytest.raises(RuntimeError):
        call(_TorchOps(torch))


def test_convolutions_of_an_empty_batch_of_empty_planes_give_torch_shapes(torch):
    x, w = np.zeros((0, 3, 0, 5), np.float32), np.ones((4, 3, 1, 1), np.float32)
    want = _TorchOps(torch).conv2d(x, w, padding=1).shape
    assert F.conv2d(x, w, padding=1).shape == R.conv2d(x, w, padding=1).shape == tuple(want)


# -- registration names and mode flags, as torch.nn.Module checks them ---------------------------

@pytest.mark.parametrize("register", ["add_module", "register_buffer", "register_parameter"])
def test_registration_refuses_names_that_break_state_dicts_or_shadow_attributes(register, torch):
    # add_module("a.b", ...) gave state-dict keys "a.b.weight" that no other model (nor torch)
    # reads back as this one; add_module("training", ...) replaced the training flag with a
    # module and add_module("forward", ...) hid the method. torch raises KeyError / TypeError.
    value = {"add_module": lambda m: m.ReLU(), "register_parameter": lambda m: None,
             "register_buffer": lambda m: np.zeros(2) if m is nn else torch.zeros(2)}[register]
    for name, error in [("a.b", KeyError), ("", KeyError), ("training", KeyError),
                        ("forward", KeyError), ("_parameters", KeyError), (1, TypeError),
                        (None, TypeError)]:
        with pytest.raises(error):
            getattr(torch.nn.Module(), register)(name, value(torch.nn))     # torch's verdict
        m = nn.Module()
        with pytest.raises(error, match=re.escape(name) if error is KeyError and name else None):
            getattr(m, register)(name, value(nn))
        assert m.training is True and callable(m.forward)
        assert not (m._parameters or m._buffers or m._modules)
    # re-registering a name of the same kind replaces it, as in torch
    m = nn.Module()
    getattr(m, register)("x", value(nn))
    getattr(m, register)("x", value(nn))
    # another kind's name is taken, as in torch
    m.y = nn.Parameter(np.zeros(1)) if register != "register_parameter" else nn.ReLU()
    with pytest.raises(KeyError, match="attribute 'y' already exists"):
        getattr(m, register)("y", value(nn))


@pytest.mark.parametrize("bad", ["no", "False", None, 2, 0.5])
def test_mode_and_requires_grad_flags_refuse_what_is_not_a_bool(bad):
    # train("no") put a model in training mode and requires_grad_("False") / p.requires_grad
    # = "False" left parameters trainable (bool("False") is True); torch refuses all three
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with pytest.raises(ValueError, match="train: mode must be True or False"):
        model.eval().train(bad)
    assert not model.training and not model[1].training
    with pytest.raises(TypeError, match="requires_grad_: requires_grad must be True or False"):
        model.requires_grad_(bad)
    p = model[0].weight
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        p.requires_grad = bad
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        nn.Parameter(np.zeros(2), requires_grad=bad)
    assert all(q.requires_grad is True for q in model.parameters())
    for good in (False, np.False_, 0):                     # NumPy's bools and 0/1 are fine
        assert model.train(good).training is False
        model.requires_grad_(good)
        assert all(q.requires_grad is False for q in model.parameters())
        p.requires_grad = not good
        assert p.requires_grad is True


# -- the audit of stop 35: where fastconv took what PyTorch refuses -----------------------------

def test_batch_norm_with_batch_statistics_refuses_one_value_per_channel_and_eps_0(torch):
    """Batch statistics (training, or eval without running statistics) of one value per
    channel, and eps=0 with batch statistics: ValueErrors, as PyTorch's (it returned zeros,
    and nan on a constant channel); eval with running statistics takes both."""
    one = np.ones((1, 2, 1, 1), np.float32)
    for bn, tbn in ((nn.BatchNorm2d(2, track_running_stats=False).eval(),
                     torch.nn.BatchNorm2d(2, track_running_stats=False).eval()),
                    (nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2))):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            bn(one)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            tbn(torch.tensor(one))
    x = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="eps must be positive"):
        nn.BatchNorm2d(2, eps=0.0)(x)
    with pytest.raises(ValueError, match="eps must be positive"):
        torch.nn.BatchNorm2d(2, eps=0.0)(torch.tensor(x))
    assert np.isfinite(nn.BatchNorm2d(2, eps=0.0).eval()(x)).all()
    assert np.isfinite(nn.BatchNorm2d(2).eval()(one)).all()


def test_cross_entropy_refuses_ignore_index_with_probabilities_and_past_int64(torch):
    from fastconv.losses import CrossEntropyLoss, NLLLoss

    z, probs = np.zeros((2, 3)), np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="ignore_index=0 is for class-index targets"):
        CrossEntropyLoss(ignore_index=0)(z, probs)
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(probs), ignore_index=0)
    assert np.isfinite(CrossEntropyLoss()(z, probs))
    for loss in (CrossEntropyLoss, NLLLoss):
        with pytest.raises(ValueError, match="out of int64's range"):
            loss(ignore_index=2 ** 70)


def test_prelu_on_a_0d_array_as_torch(torch):
    with pytest.raises(ValueError, match=r"PReLU\(num_parameters=3\): input of shape \(\)"):
        nn.PReLU(3)(np.float32(-2.0))
    y = nn.PReLU(1)(np.array(-2.0, np.float32))
    assert y.shape == () and y == torch.nn.PReLU(1)(torch.tensor(-2.0)).item()


def test_identity_takes_and_ignores_any_arguments(torch):
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    layer = nn.Identity(54, unused_argument1=0.1)
    assert np.array_equal(layer(x), torch.nn.Identity(54, unused_argument1=0.1)(
        torch.tensor(x)).numpy())


def test_linear_warmup_takes_a_linear_lr_state_dict(torch):
    """LinearWarmup is torch's LinearLR (total_iters = warmup_steps): a LinearLR's state
    dict, mid-run, loads and the rates go on as torch's."""
    from fastconv import optim

    tm = torch.nn.Linear(2, 2)
    topt = torch.optim.SGD(tm.parameters(), lr=0.1)
    tsched = torch.optim.lr_scheduler.LinearLR(topt, start_factor=0.2, total_iters=7)
    for _ in range(3):
        topt.step()
        tsched.step()
    opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    sched = optim.LinearWarmup(opt, 5, start_factor=0.5)
    opt.load_state_dict(topt.state_dict())
    sched.load_state_dict(tsched.state_dict())
    assert sched.warmup_steps == 7 and sched.start_factor == 0.2
    for _ in range(6):
        topt.step()
        tsched.step()
        opt.step()
        sched.step()
        np.testing.assert_allclose(opt.lr, tsched.get_last_lr()[0], rtol=1e-12)


def test_infinities_give_torchs_nans_without_numpy_warnings(torch):
    """(pyproject turns warnings into errors: a NumPy RuntimeWarning fails the test.)"""
    from fastconv.losses import CrossEntropyLoss

    inf = np.array([[np.inf, -np.inf, 0.0]], np.float32)
    row = np.full((1, 3), -np.inf, np.float32)
    for layer, tlayer, x in ((nn.Hardswish(), torch.nn.Hardswish(), inf),
                             (nn.Softmax(1), torch.nn.Softmax(1), row),
                             (nn.LogSoftmax(1), torch.nn.LogSoftmax(1), row)):
        np.testing.assert_array_equal(layer(x), tlayer(torch.tensor(x)).numpy())
    for x in (row, np.full((1, 3), np.inf, np.float32)):
        got = CrossEntropyLoss()(x, np.array([1]))
        want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor([1])).item()
        assert np.isnan(got) and np.isnan(want)


@pytest.mark.parametrize("ops", [F, R], ids=["fast", "reference"])
def test_pad_value_and_shapes_are_checked(ops, torch):
    """A value with a mode other than constant is refused (as PyTorch's, which raises), not
    ignored; a value, an input_shape or statistics that are not numbers name the argument."""
    x = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="pad: reflect padding takes no value"):
        ops.pad(x, (1, 1, 1, 1), "reflect", 3.0)
    with pytest.raises(RuntimeError, match="doesn't take in value"):
        torch.nn.functional.pad(torch.tensor(x), (1, 1, 1, 1), "reflect", 3.0)
    for value in (0.0, None):  # (what PyTorch also takes)
        np.testing.assert_array_equal(ops.pad(x, (1, 1, 1, 1), "reflect", value),
                                      ops.pad(x, (1, 1, 1, 1), "reflect"))
    assert ops.pad(x, (1, 1), "constant", None)[0, 0, 0, 0] == 0
    with pytest.raises(TypeError, match="pad: value must be a real number, got 'a'"):
        ops.pad(x, (1, 1), "constant", "a")
    with pytest.raises(TypeError, match="pad_backward: input_shape must be a sequence of ints"):
        ops.pad_backward(np.ones((1, 1, 3, 5)), "abcd", (1, 1))
    with pytest.raises(TypeError, match="batch_norm_train_backward: mean must hold real"):
        ops.batch_norm_train_backward(x, x, "abc", np.ones(1))
