"""functional.pad / pad_backward (and the reference's) against torch.nn.functional.pad, and
Conv2d's padding_mode ("reflect", "replicate", "circular") against torch.nn.Conv2d twins:
outputs, input and weight gradients, both backends, the fused conv -> ReLU -> max-pool step."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import functional as F
from fastconv import nn
from fastconv import reference as R
from fastconv.nn import fusion

MODES = ["constant", "reflect", "replicate", "circular"]
CASES = [  # (input shape, pad)
    ((2, 3, 5, 6), (1, 2)), ((2, 3, 5, 6), (2, 1, 0, 3)), ((2, 3, 5, 6), (0, 0, 1, 1)),
    ((2, 3, 5, 6), (3, 0, 4, 1)), ((3, 4, 5), (1, 1, 2, 2)), ((1, 2, 1, 4), (3, 3)),
    ((2, 1, 3, 3), (0, 0, 0, 0)), ((4, 7), (2, 6)), ((1, 2, 0, 3), (1, 1, 2, 1)),
    ((0, 2, 3, 3), (1, 1, 1, 1)),
]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_pad(torch, x, pad, mode, value):
    kw = {"value": value} if mode == "constant" else {}
    return torch.nn.functional.pad(x, pad, mode=mode, **kw)


@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_pad_and_its_gradient_match_torch(torch, ops, mode, case):
    shape, pad = case
    gen = np.random.default_rng(len(shape) * 100 + sum(pad))
    x = gen.normal(size=shape)
    try:
        xt = torch.tensor(x, requires_grad=True)
        yt = _torch_pad(torch, xt, pad, mode, 0.5)
    except (RuntimeError, NotImplementedError, ValueError):
        with pytest.raises(ValueError):  # where PyTorch refuses, so does fastconv
            ops.pad(x, pad, mode, 0.5 if mode == "constant" else None)
        return
    y = ops.pad(x, pad, mode, 0.5 if mode == "constant" else None)  # (as PyTorch, a value
    # with another mode is refused: test_hostile.py)
    assert y.flags.c_contiguous and y.dtype == np.float64
    np.testing.assert_array_equal(y, yt.detach().numpy())
    grad_y = gen.normal(size=y.shape)
    yt.backward(torch.tensor(grad_y))
    g = ops.pad_backward(grad_y, shape, pad, mode)
    assert g.shape == shape and g.flags.c_contiguous
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_pad_of_any_layout_is_a_new_c_contiguous_array(ops, mode):
    # np.pad keeps a Fortran-ordered input's layout: reflect/replicate/circular gave F-order
    # outputs, where the module docstring promises new C-contiguous arrays
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 6))
    want = ops.pad(x, (2, 1, 0, 3), mode)
    wide = np.zeros((2, 3, 5, 12))
    wide[..., ::2] = x
    for name, view in [("fortran", np.asfortranarray(x)), ("strided", wide[..., ::2]),
                       ("negative strides", np.ascontiguousarray(x[..., ::-1])[..., ::-1])]:
        for pad in [(2, 1, 0, 3), (0, 0, 0, 0)]:
            y = ops.pad(view, pad, mode)
            assert y.flags.c_contiguous and not np.shares_memory(y, view), (name, pad)
        np.testing.assert_array_equal(ops.pad(view, (2, 1, 0, 3), mode), want, err_msg=name)


def test_pad_functional_and_reference_agree_property():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=150, deadline=None, derandomize=True)
    @hyp.given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
               pad=st.lists(st.integers(0, 6), min_size=4, max_size=4),
               mode=st.sampled_from(MODES), dtype=st.sampled_from([np.float32, np.float64]))
    def check(n, c, h, w, pad, mode, dtype):
        x = np.random.default_rng(h * 7 + w).normal(size=(n, c, h, w)).astype(dtype)
        try:
            want = R.pad(x, pad, mode, -2.0)
        except ValueError:
            with pytest.raises(ValueError):
                F.pad(x, pad, mode, -2.0)
            return
        got = F.pad(x, pad, mode, -2.0)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)
        gy = np.random.default_rng(n + c).normal(size=got.shape).astype(dtype)
        np.testing.assert_allclose(F.pad_backward(gy, x.shape, pad, mode),
                                   R.pad_backward(gy, x.shape, pad, mode), rtol=1e-6, atol=1e-6)

    check()


@pytest.mark.parametrize("ops", [F, R], ids=["functional", "reference"])
def test_pad_argument_errors(ops):
    x = np.zeros((2, 3, 4, 5))
    with pytest.raises(ValueError, match="mode must be one of 'constant', 'reflect'"):
        ops.pad(x, (1, 1), "mirror")
    with pytest.raises(TypeError, match=r"pad must be 2 or 4 ints"):
        ops.pad(x, (1, 1, 1))
    with pytest.raises(TypeError, match=r"pad must be 2 or 4 ints"):
        ops.pad(x, (1.5, 1))
    with pytest.raises(ValueError, match="cropping is not supported"):
        ops.pad(x, (-1, 1))
    with pytest.raises(ValueError, match=r"pad must be below 2\*\*31"):
        ops.pad(x, (2**31, 0))
    with pytest.raises(ValueError, match=r"reflect padding must be smaller.*axis 2 of size 4"):
        ops.pad(x, (0, 0, 4, 0), "reflect")
    with pytest.raises(ValueError, match=r"wrap around once at most.*axis 3 of size 5"):
        ops.pad(x, (6, 0, 0, 0), "circular")
    with pytest.raises(ValueError, match=r"needs a 3-D or 4-D input, got shape \(5,\)"):
        ops.pad(np.zeros(5), (1, 1, 1, 1), "replicate")
    with pytest.raises(ValueError, match=r"grad_y must have the padded shape \(2, 3, 6, 7\)"):
        ops.pad_backward(np.zeros((2, 3, 6, 6)), x.shape, (1, 1, 1, 1), "reflect")
    with pytest.raises(TypeError, match="x must"):
        ops.pad(np.array(["a"]), (1, 1))


# -- Conv2d(padding_mode=...) --------------------------------------------------------------------

LAYER_CASES = [  # (kernel_size, stride, padding, dilation, groups)
    (3, 1, 1, 1, 1), (3, 2, 1, 1, 1), ((3, 4), 1, "same", 1, 1), (3, 1, "same", 2, 1),
    (5, 1, 2, 1, 3), (3, 1, (2, 1), 1, 1), (1, 1, 0, 1, 1), (3, 1, "valid", 1, 1),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")  # torch's
@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv2d_padding_mode_matches_torch(torch, backend, mode, case):
    k, s, p, d, g = case
    channels = 3 if g == 1 else 6
    conv = nn.Conv2d(channels, 4 if g == 1 else 6, k, stride=s, padding=p, dilation=d,
                     groups=g, padding_mode=mode, dtype=np.float64, rng=1).set_backend(backend)
    twin = torch.nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=s, padding=p,
                           dilation=d, groups=g, padding_mode=mode, dtype=torch.float64)
    twin.load_state_dict({n: torch.from_numpy(v) for n, v in conv.state_dict().items()})
    gen = np.random.default_rng(3)
    x = gen.normal(size=(2, channels, 7, 6))
    y = conv(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    grad_y = gen.normal(size=y.shape)
    gx = conv.backward(grad_y)
    yt.backward(torch.tensor(grad_y))
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, twin.weight.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(conv.bias.grad, twin.bias.grad.numpy(), rtol=1e-11, atol=1e-12)
    assert conv.output_shape(x.shape) == y.shape


@pytest.mark.parametrize("mode", ["reflect", "circular"])
@pytest.mark.parametrize("first", [True, False], ids=["first-layer", "inner-layer"])
def test_fused_conv_pool_with_padding_mode_is_the_unfused_run_bit_for_bit(mode, first):
    gen = np.random.default_rng(4)
    x = gen.normal(size=(5, 3, 8, 8)).astype(np.float32)
    runs = []
    for fuse in (True, False):
        layers = [nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, rng=0), nn.ReLU(),
                  nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, rng=1)]
        model = nn.Sequential(*([] if first else [nn.Identity()]) + layers)
        with fusion.enabled(fuse):
            y = model(x)
            gx = model.backward(np.ones_like(y), input_grad=not first)
        runs.append((y, gx, *(p.grad.copy() for p in model.parameters())))
    for a, b in zip(*runs):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_padding_mode_arguments():
    with pytest.raises(ValueError, match="padding_mode must be one of 'zeros', 'reflect', "
                                         "'replicate', 'circular', got 'mirror'"):
        nn.Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="ConvTranspose2d: only padding_mode='zeros'"):
        nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect")
    conv = nn.Conv2d(3, 4, 3, padding=2, padding_mode="reflect")
    assert "padding_mode='reflect'" in repr(conv)
    with pytest.raises(ValueError, match="reflect padding must be smaller"):
        conv(np.zeros((1, 3, 2, 5), np.float32))   # as PyTorch: pad 2 of a 2-pixel axis
    assert nn.Conv2d(3, 4, 3, padding="same", dilation=2).explicit_padding() == ((2, 2), (2, 2))
    assert nn.Conv2d(3, 4, (2, 4), padding="same").explicit_padding() == ((0, 1), (1, 2))
