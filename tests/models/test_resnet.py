"""Tests of fastconv.models.resnet against PyTorch twins written here as a PyTorch user would
write them (Page's ResNet-9, kuangliu's CIFAR ResNet-18, with the same child names): the
same state-dict keys; the twin's state dict loads into fastconv's model (torch tensors as
they are); outputs, input gradients, every parameter gradient and the BatchNorm running
statistics after the step agree in float32 and float64, in training and eval mode; and
finite differences agree with the gradients of small-width instances.

Tolerances: max |fastconv - torch| <= rtol * max |torch| per tensor, rtol 1e-4 in float32
(sums of up to 4608 products through ~20 layers) and 1e-10 in float64.

In float32 the gradients are compared with the twin run in float64 *taking fastconv's
decisions* (which inputs each ReLU passes, which input each max-pool window picks), see
:func:`decided_oracle`. A ReLU input within rounding of 0, or two inputs of a pooling window
within rounding of each other, is decided one way in float32 and may be the other in float64
(or in PyTorch's float32, whose sums round differently): the gradient then takes another path,
a difference of the size of the gradient itself. It happens about once per few runs of these
networks (measured: once in ResNet-9's 8x8 pooling at batch 4, PyTorch's float32 run and
fastconv's alike; once in PyTorch's float32 run alone in eval mode). With the decisions
shared, what remains is rounding. Outputs and running statistics do not depend on decisions
that close (they move by the rounding), so they are also compared with the float32 twin.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest

from fastconv import losses, models, nn
from fastconv.nn import fusion
from fastconv.gradcheck import gradcheck_model
from numerics import randomize_norms

RTOL = {np.float32: 1e-4, np.float64: 1e-10}


def torch_twins(torch):
    """(resnet9, resnet18) builders of the PyTorch twins: (width, num_classes) -> module."""
    tnn = torch.nn

    class Residual(tnn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class Mul(tnn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    def conv_bn(c_in, c_out, stride=1):
        return [tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), tnn.BatchNorm2d(c_out),
                tnn.ReLU()]

    def resnet9(width=64, num_classes=10):
        w = [width, 2 * width, 4 * width, 8 * width]

        def residual(c):
            return Residual(tnn.Sequential(*conv_bn(c, c), *conv_bn(c, c)))

        return tnn.Sequential(OrderedDict(
            prep=tnn.Sequential(*conv_bn(3, w[0])),
            layer1=tnn.Sequential(*conv_bn(w[0], w[1]), tnn.MaxPool2d(2), residual(w[1])),
            layer2=tnn.Sequential(*conv_bn(w[1], w[2]), tnn.MaxPool2d(2)),
            layer3=tnn.Sequential(*conv_bn(w[2], w[3]), tnn.MaxPool2d(2), residual(w[3])),
            pool=tnn.MaxPool2d(4), flatten=tnn.Flatten(),
            linear=tnn.Linear(w[3], num_classes, bias=False), scale=Mul(0.125)))

    def block(c_in, c_out, stride):
        body = tnn.Sequential(*conv_bn(c_in, c_out, stride),
                              tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), tnn.BatchNorm2d(c_out))
        shortcut = None
        if stride != 1 or c_in != c_out:
            shortcut = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      tnn.BatchNorm2d(c_out))
        return tnn.Sequential(Residual(body, shortcut), tnn.ReLU())

    def resnet18(width=64, num_classes=10):
        stages = OrderedDict(conv1=tnn.Conv2d(3, width, 3, 1, 1, bias=False),
                             bn1=tnn.BatchNorm2d(width), relu=tnn.ReLU())
        c_in = width
        for i, (c, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2),
                                         (8 * width, 2)], start=1):
            stages[f"layer{i}"] = tnn.Sequential(block(c_in, c, stride), block(c, c, 1))
            c_in = c
        stages.update(avgpool=tnn.AdaptiveAvgPool2d(1), flatten=tnn.Flatten(),
                      linear=tnn.Linear(c_in, num_classes))
        return tnn.Sequential(stages)

    return {"resnet9": resnet9, "resnet18": resnet18}


def assert_rel(actual, expected, rtol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected)))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


def twins(torch, name, dtype, width=64, seed=0):
    """fastconv's model `name` and its torch twin, both holding the twin's (fresh torch)
    weights and non-trivial BatchNorm affine parameters and running statistics."""
    torch.manual_seed(seed)
    tmodel = torch_twins(torch)[name](width, 10)
    tmodel.to(torch.float64 if dtype == np.float64 else torch.float32)
    model = models.get_model(name, rng=seed + 1, dtype=dtype, width=width)
    with torch.no_grad():  # BN parameters and statistics off their defaults, in torch
        for m in tmodel.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    result = model.load_state_dict(tmodel.state_dict())  # torch tensors, as they are
    assert result.missing_keys == [] and result.unexpected_keys == []
    return model, tmodel


@pytest.mark.parametrize("name", ["resnet9", "resnet18"])
def test_state_dict_keys_and_sizes_match_the_torch_twin(torch, name):
    tmodel = torch_twins(torch)[name]()
    model = models.get_model(name, rng=0)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in tmodel.named_parameters()]
    for key, value in model.state_dict().items():
        assert value.shape == tuple(tmodel.state_dict()[key].shape), key
    assert model.num_parameters() == sum(p.numel() for p in tmodel.parameters())


def test_resnet_trees():
    r9 = models.resnet9(rng=0)
    assert [n for n, _ in r9.named_children()] == ["prep", "layer1", "layer2", "layer3", "pool",
                                                    "flatten", "linear", "scale"]
    assert r9.linear.bias is None and r9.scale.scale == 0.125
    assert isinstance(r9.layer1[4], nn.Residual) and r9.layer1[4].shortcut is None
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1)
               for c in r9.modules() if isinstance(c, nn.Conv2d))
    r18 = models.resnet18(rng=0)
    shortcuts = {k: v.shape for k, v in r18.state_dict().items() if "shortcut.0.weight" in k}
    assert shortcuts == {"layer2.0.0.shortcut.0.weight": (128, 64, 1, 1),
                         "layer3.0.0.shortcut.0.weight": (256, 128, 1, 1),
                         "layer4.0.0.shortcut.0.weight": (512, 256, 1, 1)}
    strides = [(k, m.stride) for k, m in r18.named_modules()
               if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert strides == [(f"layer{i}.0.0.{part}.0", (2, 2)) for i in (2, 3, 4)
                       for part in ("body", "shortcut")]
    assert r18.output_shape((2, 3, 32, 32)) == (2, 10)
    assert r18.output_shape((2, 3, 64, 48)) == (2, 10)  # (global average pooling)


def torch_step(torch, tmodel, x, t):
    """(output, input gradient, {name: parameter gradient}, state dict) of one forward and
    backward of `tmodel` on x through cross-entropy with labels t, as NumPy arrays."""
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    torch.nn.functional.cross_entropy(yt, torch.tensor(t)).backward()
    return (yt.detach().numpy(), xt.grad.numpy(),
            {k: p.grad.numpy() for k, p in tmodel.named_parameters()},
            {k: v.numpy() for k, v in tmodel.state_dict().items()})


def decided_oracle(torch, model, tmodel, x):
    """A float64 copy of `tmodel` whose ReLUs pass exactly the entries fastconv's ReLUs passed
    on input x (by mask), and whose max pools pick the entries fastconv's picked (by index:
    fastconv's indices are PyTorch's, flat positions in H x W), each found by module path
    (the same in both trees). fastconv's decisions come from a copy of `model` run layer by
    layer (fused runs are bit-identical, tests/nn/test_fusion.py)."""

    class DecidedReLU(torch.nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.mask = torch.tensor(mask, dtype=torch.float64)

        def forward(self, v):
            return v * self.mask

    class DecidedMaxPool(torch.nn.Module):
        def __init__(self, indices):
            super().__init__()
            self.indices = torch.tensor(indices)

        def forward(self, v):
            idx = self.indices
            picked = v.flatten(2).gather(2, idx.flatten(2))
            return picked.view(idx.shape)

    probe = copy.deepcopy(model)
    with fusion.enabled(False):
        probe.forward(x)
    oracle = copy.deepcopy(tmodel).double()
    for path, layer in probe.named_modules():
        if isinstance(layer, nn.ReLU):
            decided = DecidedReLU(layer._cache[1] > 0)
        elif isinstance(layer, nn.MaxPool2d):
            decided = DecidedMaxPool(layer._cache.indices)
        else:
            continue
        parent, _, child = path.rpartition(".")
        setattr(oracle.get_submodule(parent), child, decided)
    return oracle


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["resnet9", "resnet18"])
def test_matches_the_torch_twin(torch, name, mode, dtype):
    model, tmodel = twins(torch, name, dtype)
    model.train(mode == "train")
    tmodel.train(mode == "train")
    gen = np.random.default_rng(3)
    x = gen.standard_normal((4, 3, 32, 32)).astype(dtype)
    t = np.array([1, 5, 9, 0])
    oracle = decided_oracle(torch, model, tmodel, x) if dtype == np.float32 else tmodel
    crit = losses.CrossEntropyLoss()
    model.zero_grad()
    y = model(x)
    crit(y, t)
    gx = model.backward(crit.backward())
    assert y.dtype == dtype and gx.dtype == dtype
    rtol = RTOL[dtype]
    ty, tgx, tgrads, tstate = torch_step(torch, oracle, x.astype(np.float64), t)
    assert_rel(y, ty, rtol, "output")
    assert_rel(gx, tgx, rtol, "grad_x")
    assert [k for k, _ in model.named_parameters()] == list(tgrads)
    for key, p in model.named_parameters():
        assert_rel(p.grad, tgrads[key], rtol, f"grad {key}")
    states = [tstate]
    if dtype == np.float32:  # (the float32 twin, as it is)
        y32, _, _, state32 = torch_step(torch, tmodel, x, t)
        assert_rel(y, y32, rtol, "output vs torch float32")
        states.append(state32)
    for theirs in states:
        for key, value in model.state_dict().items():  # running statistics after the forward
            if value.dtype.kind == "f":
                assert_rel(value, theirs[key], rtol, key)
            else:
                assert value == theirs[key] == (1 if mode == "train" else 0), key


@pytest.mark.parametrize("name, width, shape", [("resnet9", 2, (2, 3, 32, 32)),
                                                ("resnet18", 2, (2, 3, 16, 16))])
def test_gradcheck_small_width(name, width, shape):
    model = randomize_norms(models.get_model(name, rng=4, width=width), 5)
    errors = gradcheck_model(model, shape, seed=6, max_checks=6)
    assert set(errors) == {"input"} | {k for k, _ in model.named_parameters()}
    for key, err in errors.items():
        assert err < 1e-6, (name, key, err)


def test_fastconv_train_recipes():
    from fastconv.cli import train as T

    assert T.build_parser().parse_args(["--model", "resnet18"]).model == "resnet18"
    for name, recipe in [("resnet9", (12, 0.2)), ("resnet18", (15, 0.1))]:
        cfg = T.TrainConfig(model=name).resolved()
        assert (cfg.epochs, cfg.lr) == recipe


def test_fastconv_train_and_predict(tmp_path, monkeypatch, capsys):
    """fastconv-train --model resnet9 on a synthetic CIFAR-10 (two steps of 4 images per
    epoch), stopped after three steps and resumed to the same weights, bit for bit, as a run
    straight through (BatchNorm statistics inside residual bodies included); fastconv-predict
    loads the result."""
    from fake_cifar import fake_batches, write_folder
    from fastconv import checkpoint, plotting
    from fastconv.cli import predict as P, train as T

    monkeypatch.setattr(plotting, "have_matplotlib", lambda: False)
    write_folder(tmp_path / "data", fake_batches(learnable=True))
    name = "resnet9"
    common = ["--model", name, "--data-dir", str(tmp_path / "data"), "--no-download", "--quiet",
              "--epochs", "2", "--limit-train", "8", "--batch-size", "4", "--limit-test", "4"]
    assert T.main([*common, "--out", str(tmp_path / "straight")]) == 0
    resumed = ["--out", str(tmp_path / "resumed")]
    assert T.main([*common, *resumed, "--stop-after", "3"]) == 130
    assert T.main([*common, *resumed, "--resume"]) == 0
    capsys.readouterr()
    a = checkpoint.load_weights(tmp_path / "straight" / T.WEIGHTS_NAME)
    b = checkpoint.load_weights(tmp_path / "resumed" / T.WEIGHTS_NAME)
    assert list(a) == list(models.get_model(name, rng=0).state_dict()) == list(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    model, info = P.load_model(tmp_path / "straight")
    assert info["model"] == name and not model.training
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    reference = models.get_model(name, rng=1).eval()
    reference.load_state_dict(a)
    np.testing.assert_array_equal(model(x), reference(x))
