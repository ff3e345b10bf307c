"""Tests of the classic models (fastconv.models.classic): architectures (checked against hand-computed shapes, parameter
counts and receptive fields), equivalence with the same network in PyTorch, gradient checks,
and a short training run on both backends."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import init, losses, models, nn, optim
from fastconv.gradcheck import gradcheck_model


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def conv_params(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear_params(n_in, n_out):
    return n_in * n_out + n_out


# (type, output shape without the batch axis, parameter count), computed by hand
EXPECTED = {
    "simple_cnn": [
        ("Conv2d", (32, 30, 30), conv_params(3, 32, 3)),          # 32 - 3 + 1 = 30
        ("ReLU", (32, 30, 30), 0),
        ("MaxPool2d", (32, 15, 15), 0),
        ("Conv2d", (64, 13, 13), conv_params(32, 64, 3)),         # 15 - 3 + 1 = 13
        ("ReLU", (64, 13, 13), 0),
        ("MaxPool2d", (64, 6, 6), 0),                             # floor(13 / 2)
        ("Flatten", (2304,), 0),                                  # 64 * 6 * 6
        ("Linear", (1024,), linear_params(2304, 1024)),
        ("ReLU", (1024,), 0),
        ("Linear", (10,), linear_params(1024, 10)),
    ],
    "lenet5": [
        ("Conv2d", (6, 28, 28), conv_params(3, 6, 5)),
        ("ReLU", (6, 28, 28), 0),
        ("MaxPool2d", (6, 14, 14), 0),
        ("Conv2d", (16, 10, 10), conv_params(6, 16, 5)),
        ("ReLU", (16, 10, 10), 0),
        ("MaxPool2d", (16, 5, 5), 0),
        ("Flatten", (400,), 0),
        ("Linear", (120,), linear_params(400, 120)),
        ("ReLU", (120,), 0),
        ("Linear", (84,), linear_params(120, 84)),
        ("ReLU", (84,), 0),
        ("Linear", (10,), linear_params(84, 10)),
    ],
    "vgg_small": [
        ("Conv2d", (32, 32, 32), conv_params(3, 32, 3, bias=False)),
        ("BatchNorm2d", (32, 32, 32), 2 * 32),
        ("ReLU", (32, 32, 32), 0),
        ("Conv2d", (32, 32, 32), conv_params(32, 32, 3, bias=False)),
        ("BatchNorm2d", (32, 32, 32), 2 * 32),
        ("ReLU", (32, 32, 32), 0),
        ("MaxPool2d", (32, 16, 16), 0),
        ("Conv2d", (64, 16, 16), conv_params(32, 64, 3, bias=False)),
        ("BatchNorm2d", (64, 16, 16), 2 * 64),
        ("ReLU", (64, 16, 16), 0),
        ("Conv2d", (64, 16, 16), conv_params(64, 64, 3, bias=False)),
        ("BatchNorm2d", (64, 16, 16), 2 * 64),
        ("ReLU", (64, 16, 16), 0),
        ("MaxPool2d", (64, 8, 8), 0),
        ("Conv2d", (128, 8, 8), conv_params(64, 128, 3, bias=False)),
        ("BatchNorm2d", (128, 8, 8), 2 * 128),
        ("ReLU", (128, 8, 8), 0),
        ("Conv2d", (128, 8, 8), conv_params(128, 128, 3, bias=False)),
        ("BatchNorm2d", (128, 8, 8), 2 * 128),
        ("ReLU", (128, 8, 8), 0),
        ("MaxPool2d", (128, 4, 4), 0),
        ("Flatten", (2048,), 0),
        ("Linear", (10,), linear_params(2048, 10)),
    ],
    "alexnet_small": [
        ("Conv2d", (64, 32, 32), conv_params(3, 64, 3)),
        ("ReLU", (64, 32, 32), 0),
        ("MaxPool2d", (64, 16, 16), 0),
        ("Conv2d", (192, 16, 16), conv_params(64, 192, 3)),
        ("ReLU", (192, 16, 16), 0),
        ("MaxPool2d", (192, 8, 8), 0),
        ("Conv2d", (384, 8, 8), conv_params(192, 384, 3)),
        ("ReLU", (384, 8, 8), 0),
        ("Conv2d", (256, 8, 8), conv_params(384, 256, 3)),
        ("ReLU", (256, 8, 8), 0),
        ("Conv2d", (256, 8, 8), conv_params(256, 256, 3)),
        ("ReLU", (256, 8, 8), 0),
        ("MaxPool2d", (256, 4, 4), 0),
        ("Flatten", (4096,), 0),
        ("Dropout", (4096,), 0),
        ("Linear", (1024,), linear_params(4096, 1024)),
        ("ReLU", (1024,), 0),
        ("Dropout", (1024,), 0),
        ("Linear", (1024,), linear_params(1024, 1024)),
        ("ReLU", (1024,), 0),
        ("Linear", (10,), linear_params(1024, 10)),
    ],
}
CLASSIC = list(EXPECTED)
TOTALS = {"simple_cnn": 2_389_962, "lenet5": 62_006, "vgg_small": 307_946, "alexnet_small": 7_506_762}
# receptive field sizes of the conv/pool outputs, in order: r += d (k - 1) j, j *= s
RECEPTIVE = {
    "simple_cnn": [(3, 1), (4, 2), (8, 2), (10, 4)],
    "lenet5": [(5, 1), (6, 2), (14, 2), (16, 4)],
    "vgg_small": [(3, 1), (5, 1), (6, 2), (10, 2), (14, 2), (16, 4), (24, 4), (32, 4), (36, 8)],
    "alexnet_small": [(3, 1), (4, 2), (8, 2), (10, 4), (18, 4), (26, 4), (34, 4), (38, 8)],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_summary_matches_hand_counts(name):
    model = models.get_model(name, rng=0)
    s = model.summary((3, 32, 32), print_fn=None)
    rows = [(r["type"], r["output_shape"][1:], r["params"]) for r in s.rows]
    assert rows == EXPECTED[name]
    assert all(r["output_shape"][0] is None for r in s.rows)
    total = sum(p for _, _, p in EXPECTED[name])
    assert total == TOTALS[name]
    assert s.total_params == s.trainable_params == model.num_parameters() == total
    assert f"Total params: {total:,}" in s.text
    rf = [(r["rf_size"][0], r["rf_jump"][0]) for r in s.rows if r["rf_size"] is not None]
    assert rf == RECEPTIVE[name]
    if name == "vgg_small":
        assert s.buffer_elements == 2 * (32 + 32 + 64 + 64 + 128 + 128)


@pytest.mark.parametrize("name", CLASSIC)
def test_forward_shapes_dtypes_and_seeds(name):
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    m = models.get_model(name, seed=1)
    y = m.eval()(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    m2 = models.get_model(name, rng=np.random.default_rng(1)).eval()
    np.testing.assert_array_equal(m2(x), y)  # same seed, same model
    m3 = models.get_model(name, rng=2)
    assert not np.array_equal(m3[0].weight.data, m[0].weight.data)
    m64 = models.get_model(name, num_classes=7, rng=1, dtype=np.float64)
    assert m64.dtype == np.float64 and m64.eval()(x).shape == (2, 7)
    np.testing.assert_allclose(m64[0].weight.data, m[0].weight.data, rtol=1e-7)
    with pytest.raises(ValueError, match="either rng or seed"):
        models.get_model(name, rng=1, seed=1)


def _to_torch(torch, model):
    """The same network in PyTorch, built from our layers' attributes, with our weights."""
    tl = []
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            tl.append(torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                      layer.padding, layer.dilation, layer.groups, bias=layer.bias is not None))
        elif isinstance(layer, nn.MaxPool2d):
            tl.append(torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                         ceil_mode=layer.ceil_mode))
        elif isinstance(layer, nn.BatchNorm2d):
            tl.append(torch.nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum))
        elif isinstance(layer, nn.Linear):
            tl.append(torch.nn.Linear(layer.in_features, layer.out_features))
        elif isinstance(layer, nn.ReLU):
            tl.append(torch.nn.ReLU())
        elif isinstance(layer, nn.Flatten):
            tl.append(torch.nn.Flatten())
        elif isinstance(layer, nn.Dropout):
            tl.append(torch.nn.Dropout(layer.p))
        else:
            raise AssertionError(type(layer))
    tmodel = torch.nn.Sequential(*tl).to(torch.float64 if model.dtype == np.float64 else torch.float32)
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return tmodel


@pytest.mark.parametrize("name", CLASSIC)
def test_model_matches_torch(torch, name):
    """float64: outputs, loss and every gradient agree to ~1e-10 (training mode, except
    alexnet_small in eval mode, whose dropout masks cannot match torch's)."""
    model = models.get_model(name, rng=3, dtype=np.float64)
    tmodel = _to_torch(torch, model)
    if name == "alexnet_small":
        model.eval()
        tmodel.eval()
    gen = np.random.default_rng(4)
    x = gen.normal(size=(2, 3, 32, 32))
    t = np.array([3, 7])
    crit = losses.CrossEntropyLoss()
    loss = crit(model(x), t)
    gx = model.backward(crit.backward())
    xt = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tmodel(xt), torch.tensor(t))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-10)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-8, atol=1e-12 * np.abs(gx).max())
    tgrads = dict(tmodel.named_parameters())
    for k, p in model.named_parameters():
        ref = tgrads[k].grad.numpy()
        np.testing.assert_allclose(p.grad, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max(), err_msg=k)
    for k, v in model.state_dict().items():  # BatchNorm running statistics
        np.testing.assert_allclose(v, tmodel.state_dict()[k].numpy(), rtol=1e-10, err_msg=k)


@pytest.mark.parametrize("name", CLASSIC)
def test_model_loads_torch_state_dict_float32(torch, name):
    torch.manual_seed(0)
    tmodel = _to_torch(torch, models.get_model(name, rng=0))
    for m in tmodel.modules():  # fresh torch init, non-trivial running stats
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.reset_parameters()
    tmodel.eval()
    model = models.get_model(name, rng=1).eval()
    model.load_state_dict({k: v.numpy() for k, v in tmodel.state_dict().items()})
    x = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)
    y = model(x)
    ty = tmodel(torch.tensor(x)).detach().numpy()
    # float32 through up to 8 layers of sums of <= 4096 products: ~1e-6 relative
    np.testing.assert_allclose(y, ty, rtol=1e-4, atol=1e-4 * np.abs(ty).max())


@pytest.mark.parametrize("name", CLASSIC)
def test_gradcheck_model(name):
    model = models.get_model(name, rng=6)
    if name == "alexnet_small":
        # PyTorch's default init shrinks the signal through 8 layers (gradients ~1e-6, at the
        # central-difference noise floor); He init of the hidden layers keeps them O(1e-2)
        # (the output layer keeps its small default init, so the softmax is not saturated).
        gen = np.random.default_rng(7)
        for m in list(model)[:-1]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init.kaiming_normal_(m.weight, nonlinearity="relu", rng=gen)
    errors = gradcheck_model(model, (1, 3, 32, 32), seed=8, max_checks=2 if name == "alexnet_small" else 4)
    assert set(errors) == {"input"} | {k for k, _ in model.named_parameters()}
    for k, err in errors.items():
        assert err < 1e-6, (name, k, err)
    assert model.dtype == np.float32  # the check ran on a float64 copy


def _synthetic(n=32, classes=4, seed=0):
    """Each class is a fixed random 3x32x32 template (amplitude 0.5) plus N(0, 1) noise."""
    gen = np.random.default_rng(seed)
    y = gen.integers(0, classes, size=n)
    templates = gen.normal(size=(classes, 3, 32, 32))
    x = (0.5 * templates[y] + gen.normal(size=(n, 3, 32, 32))).astype(np.float32)
    return x, y


def test_simple_cnn_trains_on_both_backends_with_the_same_numbers():
    # In float64: the backends sum in different orders, and a max-pool window whose two largest
    # values lie within that rounding picks either; the rest of the run then follows another
    # gradient. In float32 (~1e-7 per op) such a near-tie flipped an argmax at step 4 with the
    # direct or Winograd algorithm forced, or at the generic SIMD level; in float64 (~1e-16) a
    # flip needs two activations of these random images within 1e-15 of each other.
    x, y = _synthetic()
    x = x.astype(np.float64)
    runs = {}
    for backend in ("fast", "reference"):
        model = models.simple_cnn(num_classes=4, rng=0, dtype=np.float64).set_backend(backend)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        crit = losses.CrossEntropyLoss()
        history = []
        for _ in range(10):
            opt.zero_grad()
            history.append(crit(model(x), y))
            model.backward(crit.backward(), input_grad=False)
            opt.step()
        model.eval()
        accuracy = float((model(x).argmax(axis=1) == y).mean())
        runs[backend] = (np.array(history), model, accuracy)
    fast, ref = runs["fast"][0], runs["reference"][0]
    assert fast[0] == pytest.approx(np.log(4), rel=0.1)
    assert fast[-1] < 0.6 * fast[0], fast  # a clear decrease
    assert runs["fast"][2] >= 0.9
    # ~1e-16 relative per op; ten SGD steps amplify that to ~1e-13, far below what is allowed.
    np.testing.assert_allclose(fast, ref, rtol=1e-9)
    for (k, a), (_, b) in zip(runs["fast"][1].named_parameters(), runs["reference"][1].named_parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-8, atol=1e-9 * np.abs(b.data).max(), err_msg=k)
