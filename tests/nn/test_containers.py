"""Tests of the containers (Sequential, Residual, Concat) as trees: each against a PyTorch twin
built as the same tree with the same child names (state-dict keys, forward, input and parameter
gradients, running statistics; float32 and float64, train and eval), numerical gradient checks,
errors naming the path of the failing layer or branch, one layer object per model, and the
summary of a tree.

Tolerances: numerics.assert_close (float32 1e-5, float64 1e-12, times max(1, max|expected|)).
"""

from __future__ import annotations

import copy
import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from fastconv import nn
from fastconv.gradcheck import gradcheck_layer, gradcheck_model
from numerics import assert_close
from numerics import randomize_norms as _randomize


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


class TorchLayers:
    """torch.nn under fastconv.nn's names, with the PyTorch twins of Residual and Concat (the
    classes their docstrings show), so that one builder makes both trees."""

    def __init__(self, torch):
        self._torch = torch

        class Residual(torch.nn.Module):
            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body, self.shortcut = body, shortcut

            def forward(self, x):
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

        class Concat(torch.nn.ModuleList):
            def __init__(self, *branches, dim=1):
                super().__init__(branches)
                self.dim = dim

            def forward(self, x):
                return torch.cat([branch(x) for branch in self], self.dim)

        self.Residual, self.Concat = Residual, Concat

    def __getattr__(self, name):
        return getattr(self._torch.nn, name)


def basic_block(L, c_in, c_out, stride):
    """ResNet's BasicBlock: 3x3 conv-BN-ReLU-3x3 conv-BN plus the input (a 1x1 conv + BN
    projection where the shape changes), then ReLU."""
    body = L.Sequential(L.Conv2d(c_in, c_out, 3, stride, 1, bias=False), L.BatchNorm2d(c_out), L.ReLU(),
                        L.Conv2d(c_out, c_out, 3, 1, 1, bias=False), L.BatchNorm2d(c_out))
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = L.Sequential(L.Conv2d(c_in, c_out, 1, stride, bias=False), L.BatchNorm2d(c_out))
    return L.Sequential(L.Residual(body, shortcut), L.ReLU())


# (id, builder taking the layer namespace, input shape)
TREES = [
    ("identity_residual", lambda L: L.Residual(L.Sequential(
        L.Conv2d(4, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(),
        L.Conv2d(4, 4, 3, padding=1, bias=False), L.BatchNorm2d(4))), (3, 4, 6, 6)),
    ("basic_block_stride2", lambda L: basic_block(L, 4, 8, 2), (3, 4, 8, 7)),
    ("residual_in_sequential_in_residual", lambda L: L.Residual(L.Sequential(
        L.Conv2d(3, 3, 3, padding=1), L.Residual(L.Sequential(L.Conv2d(3, 3, 1), L.Tanh())),
        L.BatchNorm2d(3), L.ReLU()), shortcut=L.Conv2d(3, 3, 1, bias=False)), (2, 3, 5, 5)),
    ("concat_of_sequentials_with_pools", lambda L: L.Concat(
        L.Sequential(L.Conv2d(3, 2, 1), L.ReLU(), L.MaxPool2d(3, 1, 1)),
        L.Sequential(L.MaxPool2d(3, 1, 1), L.Conv2d(3, 4, 1)),
        L.Sequential(L.Conv2d(3, 3, 3, padding=1, bias=False), L.BatchNorm2d(3), L.ReLU()),
        L.AvgPool2d(3, 1, 1)), (2, 3, 6, 5)),
    ("concat_last_dim", lambda L: L.Sequential(
        L.Concat(L.Linear(5, 3), L.Sequential(L.Linear(5, 2), L.Tanh()), dim=-1), L.Linear(5, 2)), (4, 5)),
    ("mini_resnet", lambda L: L.Sequential(
        L.Conv2d(3, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(),
        L.Sequential(basic_block(L, 4, 4, 1), basic_block(L, 4, 8, 2)),
        L.Concat(L.MaxPool2d(2), L.AvgPool2d(2)), L.Flatten(), L.Linear(16 * 2 * 2, 3)), (2, 3, 8, 8)),
]
TREE_IDS = [t[0] for t in TREES]


def _twins(torch, build, dtype, seed=0):
    """Our tree and its torch twin with the same weights (ours drawn from `seed`)."""
    torch.manual_seed(seed)
    tmodel = build(TorchLayers(torch)).to(torch.float64 if dtype == np.float64 else torch.float32)
    model = build(nn).astype(dtype)
    model.load_state_dict(tmodel.state_dict())
    _randomize(model, seed + 1)
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return model, tmodel


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", TREES, ids=TREE_IDS)
def test_tree_matches_torch_twin(torch, case, mode, dtype):
    name, build, shape = case
    model, tmodel = _twins(torch, build, dtype)
    assert list(model.state_dict()) == list(tmodel.state_dict().keys())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    model.train(mode == "train")
    tmodel.train(mode == "train")
    gen = np.random.default_rng(2)
    x = gen.normal(size=shape).astype(dtype)
    model.zero_grad()
    y = model(x)
    g = gen.normal(size=y.shape).astype(dtype)
    gx = model.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    yt.backward(torch.tensor(g))
    assert y.dtype == dtype and gx.dtype == dtype
    assert tuple(model.output_shape(shape)) == y.shape
    assert_close(y, yt.detach().numpy(), dtype, what=f"{name} output")
    assert_close(gx, xt.grad.numpy(), dtype, what=f"{name} grad_x")
    tgrads = dict(tmodel.named_parameters())
    for key, p in model.named_parameters():
        assert_close(p.grad, tgrads[key].grad.numpy(), dtype, what=f"{name} grad {key}")
    theirs = tmodel.state_dict()
    for key, value in model.state_dict().items():  # running statistics after the step
        assert_close(value, theirs[key].numpy(), dtype, what=key)


def test_state_dict_keys_follow_the_tree(torch):
    build = TREES[-1][1]
    model = build(nn)
    keys = list(model.state_dict())
    assert keys == list(build(TorchLayers(torch)).state_dict().keys())
    for key in ("3.0.0.body.0.weight", "3.1.0.shortcut.0.weight", "3.1.0.shortcut.1.running_var",
                "3.1.0.body.4.num_batches_tracked", "6.bias"):
        assert key in keys, key
    assert not any(k.startswith("3.0.0.shortcut") for k in keys)  # (no shortcut, no keys)
    # named branches: the OrderedDict's keys, as torchvision's Inception blocks name theirs
    block = nn.Concat(OrderedDict(branch1x1=nn.Conv2d(3, 2, 1), branch3x3=nn.Conv2d(3, 2, 3, padding=1)))
    assert list(block.state_dict()) == ["branch1x1.weight", "branch1x1.bias",
                                        "branch3x3.weight", "branch3x3.bias"]
    assert block[1] is block.branch3x3 and len(block) == 2 and list(block) == [block[0], block[1]]
    text = repr(nn.Residual(nn.Conv2d(1, 1, 1), shortcut=nn.Identity()))
    assert "(body): Conv2d" in text and "(shortcut): Identity()" in text


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", TREES, ids=TREE_IDS)
def test_gradcheck_trees(case, mode):
    name, build, shape = case
    model = _randomize(build(nn), 3)
    model.train(mode == "train")
    errors = gradcheck_layer(model, shape, seed=5, max_checks=10, robust=True)
    assert set(errors) == {"input"} | {n for n, _ in model.named_parameters()}
    for key, err in errors.items():
        assert err < 1e-6, (name, key, err)


def test_gradcheck_model_through_a_residual_classifier():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=0), nn.ReLU(),
                          nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, rng=1), nn.Tanh())),
                          nn.Concat(nn.MaxPool2d(2), nn.AvgPool2d(2)), nn.Flatten(),
                          nn.Linear(8 * 3 * 3, 4, rng=2))
    errors = gradcheck_model(model, (3, 3, 6, 6), seed=1)
    assert len(errors) == 1 + 6
    assert max(errors.values()) < 1e-6, errors


def test_residual_and_concat_by_hand():
    conv = nn.Conv2d(2, 2, 1, bias=False)
    conv.weight.data[...] = np.eye(2)[:, :, None, None] * 3
    x = np.arange(16, dtype=np.float64).reshape(2, 2, 2, 2)
    res = nn.Residual(conv.astype(np.float64))
    np.testing.assert_array_equal(res(x), 4 * x)
    g = np.ones_like(x)
    np.testing.assert_array_equal(res.backward(g), 4 * g)  # 3 through the body, 1 around it
    assert res.backward(g, input_grad=False) is None
    cat = nn.Concat(nn.Identity(), nn.Tanh(), nn.Identity())
    y = cat(x)
    assert y.shape == (2, 6, 2, 2)
    np.testing.assert_array_equal(y[:, 2:4], np.tanh(x))
    gy = np.random.default_rng(0).normal(size=y.shape)
    want = gy[:, :2] + gy[:, 2:4] * (1 - np.tanh(x) ** 2) + gy[:, 4:]
    np.testing.assert_allclose(cat.backward(gy), want, rtol=1e-14)
    assert cat.output_shape((5, 2, 3, 3)) == (5, 6, 3, 3)
    # The sum is a new array: the body's last layer keeps its output for its backward.
    relu_res = nn.Residual(nn.ReLU())
    y = relu_res(x - 7)
    np.testing.assert_array_equal(relu_res.backward(np.ones_like(x)), np.where(x - 7 > 0, 2.0, 1.0))
    assert y is not relu_res.body._cache[1]


def test_residual_sum_in_the_body_dtype():
    res = nn.Residual(nn.Conv2d(2, 2, 1))  # float32
    x = np.ones((1, 2, 3, 3))  # float64 input: converted, as by every layer with weights
    y = res(x)
    assert y.dtype == np.float32 and res.backward(np.ones_like(y)).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_branch_shape_mismatch_names_branch_paths_and_shapes():
    with pytest.raises(ValueError, match=r"^Residual: the output of body has shape \(2, 4, 4, 4\) but "
                                         r"the input \(identity shortcut\) has shape \(2, 3, 6, 6\)"):
        nn.Residual(nn.Conv2d(3, 4, 3))(np.zeros((2, 3, 6, 6), np.float32))
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(
        nn.ReLU(), nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3)), shortcut=nn.Conv2d(4, 4, 1, stride=2))))
    pattern = (r"^layer 1\.1 of Sequential: Residual: the output of 1\.1\.body has shape \(2, 4, 4, 4\) "
               r"but 1\.1\.shortcut has shape \(2, 4, 3, 3\)")
    with pytest.raises(ValueError, match=pattern):
        model(np.zeros((2, 3, 6, 6), np.float32))
    with pytest.raises(ValueError, match=pattern.replace("layer", "")[1:]):
        model.output_shape((2, 3, 6, 6))
    cat = nn.Sequential(nn.Concat(nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 3)))
    with pytest.raises(ValueError, match=r"^layer 0 of Sequential: Concat: the output of 0\.1 has shape "
                                         r"\(1, 2, 3, 3\), which does not match the output of 0\.0 "
                                         r"\(1, 2, 5, 5\) outside dimension 1"):
        cat(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"the output of 1 has shape \(4, 6\), with a different number "
                                         r"of axes from the output of 0 \(4, 2, 3\)"):
        nn.Concat(nn.Identity(), nn.Flatten())(np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match=r"dim 3 is out of range.*\(4, 2, 3\)"):
        nn.Concat(nn.Identity(), dim=3)(np.zeros((4, 2, 3)))


def test_errors_inside_nested_containers_name_the_layer_path():
    model = nn.Sequential(nn.Residual(nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))),
                          nn.Concat(nn.Identity(), nn.Sequential(nn.Flatten(), nn.Linear(3, 2))))
    with pytest.raises(ValueError, match=r"^layer 0\.body\.1 of Sequential: Conv2d\(4, 4.*\(N, 4, H, W\) or \(4, H, W\), "
                                         r"got \(2, 3, 5, 5\)"):
        model(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"^layer 1\.1\.1 of Sequential: Linear.*\(2, 100\)"):
        model(np.zeros((2, 4, 5, 5), np.float32))
    inner = nn.Sequential(nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())))
    y = inner(np.ones((2, 2, 3, 3), np.float32))
    with pytest.raises(ValueError,
                       match=r"^layer 0 of Sequential \(backward\): Residual\(\.\.\.\)\.backward: grad_y"):
        inner.backward(np.ones((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.Residual(nn.ReLU()).backward(y)
    # the original error stays reachable
    try:
        model(np.zeros((2, 3, 5, 5), np.float32))
    except ValueError as exc:
        assert isinstance(exc.__cause__, ValueError) and "layer" not in str(exc.__cause__)


def test_non_module_children_are_type_errors():
    for make in (lambda: nn.Residual(3), lambda: nn.Residual(nn.ReLU(), shortcut="conv"),
                 lambda: nn.Concat(nn.ReLU(), np.zeros(3)), lambda: nn.Sequential(nn.ReLU(), "relu"),
                 lambda: nn.Concat(nn.ReLU(), dim=1.0), lambda: nn.Sequential().append(max)):
        with pytest.raises(TypeError):
            make()
    with pytest.raises(TypeError, match="Residual: child 'shortcut' is not a Module: 'conv'"):
        nn.Residual(nn.ReLU(), shortcut="conv")
    with pytest.raises(ValueError, match="at least one branch"):
        nn.Concat()
    # the two usual slips are named: a layer class without the call, a list not unpacked
    with pytest.raises(TypeError, match=r"child '1' is not a Module: .*ReLU'> \(the class "
                                        r"itself: write ReLU\(\.\.\.\)\)"):
        nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU)
    with pytest.raises(TypeError, match=r"\(a list of layers: unpack it, Sequential\(\*layers\)\)"):
        nn.Sequential([nn.Conv2d(3, 2, 3), nn.ReLU()])


def test_one_layer_object_per_model_in_every_container(torch):
    act = nn.ReLU()
    res = nn.Residual(act, shortcut=act)
    assert res.body is act and res.shortcut is not act and type(res.shortcut) is nn.ReLU
    conv = nn.Conv2d(2, 2, 1)
    for make in (lambda: nn.Residual(conv, shortcut=conv), lambda: nn.Concat(conv, nn.ReLU(), conv),
                 lambda: nn.Sequential(conv, nn.Residual(nn.Sequential(nn.ReLU(), conv)))):
        with pytest.raises(ValueError, match=r"already in this model.*b\.weight = a\.weight"):
            make()
    with pytest.raises(ValueError, match=r"Sequential: layer 1\.body\.1 \(Conv2d"):
        nn.Sequential(conv, nn.Residual(nn.Sequential(nn.ReLU(), conv)))
    # A parameterless layer shared at any depth gets a copy in each later place, as a torch
    # user would share it: the model computes what the torch model with one shared ReLU does.
    shared = nn.ReLU()
    block1 = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=0), shared)
    block2 = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=1), shared)
    model = nn.Sequential(block1, nn.Residual(block2)).astype(np.float64)
    assert model[0][1] is shared and model[1].body[1] is not shared
    trelu = torch.nn.ReLU()
    tmodel = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), trelu),
                                 TorchLayers(torch).Residual(torch.nn.Sequential(
                                     torch.nn.Conv2d(2, 2, 3, padding=1), trelu))).double()
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4))
    xt = torch.tensor(x, requires_grad=True)
    tmodel(xt).sum().backward()
    y = model(x)
    gx = model.backward(np.ones_like(y))
    assert_close(y, tmodel(torch.tensor(x)).detach().numpy(), np.float64)
    assert_close(gx, xt.grad.numpy(), np.float64)


def test_containers_pickle_and_copy_after_forward():
    model = TREES[-1][1](nn)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    model(x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert all(m._cache is None for m in clone.modules())
        clone.eval()
        model.eval()
        np.testing.assert_array_equal(clone(x), model(x))
        model.train()


# ---------------------------------------------------------------------------------------------
# summary of a tree
# ---------------------------------------------------------------------------------------------

def test_summary_of_a_tree_with_branches():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),                                            # r 3
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),        # r 5, 7
                                  nn.Conv2d(4, 4, 3, padding=1, bias=False))),
        nn.Concat(nn.Sequential(nn.Conv2d(4, 2, 1), nn.MaxPool2d(2)),              # r 7+1 -> 8, j 2
                  nn.Sequential(nn.Conv2d(4, 2, 5, padding=2), nn.MaxPool2d(2))),  # r 11+1 -> 12
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model[0].requires_grad_(False)
    model[1].body[2].weight.requires_grad = False
    out = io.StringIO()
    assert model.summary((3, 8, 8), print_fn=out.write) is None
    s = model.summary((3, 8, 8), print_fn=None)
    assert out.getvalue() == s.text
    names = [r["name"] for r in s.rows]
    assert names == ["0", "1", "1.body", "1.body.0", "1.body.1", "1.body.2", "2", "2.0", "2.0.0",
                     "2.0.1", "2.1", "2.1.0", "2.1.1", "3", "4"]
    assert [r["depth"] for r in s.rows] == [0, 0, 1, 2, 2, 2, 0, 1, 2, 2, 1, 2, 2, 0, 0]
    rows = {r["name"]: r for r in s.rows}
    assert rows["1"]["params"] == 2 * 148 - 4 and rows["1"]["trainable"] == 148
    assert rows["1.body.2"]["trainable"] == 0 and rows["0"]["trainable"] == 0
    assert rows["2"]["output_shape"] == (None, 4, 4, 4) and rows["2"]["params"] == 10 + 202
    # receptive fields: the body's 7x7 beats the identity's 3x3; the branches' 12x12 beats 8x8
    assert rows["1.body"]["rf_size"] == rows["1"]["rf_size"] == (7, 7)
    assert rows["2.0"]["rf_size"] == (8, 8) and rows["2.1"]["rf_size"] == (12, 12)
    assert rows["2"]["rf_size"] == (12, 12) and rows["2"]["rf_jump"] == (2, 2)
    assert rows["1.body.1"]["rf_size"] is None and rows["3"]["rf_size"] is None
    total = model.num_parameters()
    frozen = 112 + 144
    assert (s.total_params, s.trainable_params, s.frozen_params) == (total, total - frozen, frozen)
    assert model.num_parameters(trainable_only=True) == total - frozen
    lines = s.text.splitlines()
    assert any(line.startswith("  1.body Sequential") for line in lines)
    assert any(line.startswith("    1.body.2 Conv2d") and "144 (frozen)" in line for line in lines)
    assert any(line.startswith("1 Residual") and "292 (144 frozen)" in line for line in lines)
    for text in (f"Total params: {total:,}", f"Trainable params: {total - frozen:,}",
                 f"Frozen params (requires_grad=False): {frozen:,}", "12x12 (2)"):
        assert text in s.text, text


def test_summary_of_a_single_layer_and_errors():
    s = nn.Conv2d(3, 4, 3).summary((3, 8, 8), print_fn=None)
    assert [(r["name"], r["type"], r["output_shape"], r["rf_size"]) for r in s.rows] == [
        ("", "Conv2d", (None, 4, 6, 6), (3, 3))]
    model = nn.Sequential(nn.Residual(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match=r"summary: Residual: the output of 0\.body has shape "
                                         r"\(1, 4, 6, 6\) but the input"):
        model.summary((3, 8, 8), print_fn=None)
    with pytest.raises(ValueError, match=r"summary: layer 0\.body \(Conv2d"):
        model.summary((2, 8, 8), print_fn=None)
    cat = nn.Concat(nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match=r"summary: Concat: the output of 1 has shape"):
        cat.summary((3, 8, 8), print_fn=None)


def test_concat_repr_shows_its_dim_before_its_branches_as_torch():
    cat = nn.Concat(nn.Conv2d(3, 4, 1), nn.Conv2d(3, 2, 1), dim=1)
    lines = repr(cat).splitlines()
    assert lines[:2] == ["Concat(", "  dim=1"] and lines[2].startswith("  (0): Conv2d(3, 4")
    with pytest.raises(ValueError, match=r"^Concat\(\.\.\.\): dim 5 is out of range") as err:
        nn.Concat(nn.ReLU(), nn.ReLU(), dim=5)(np.ones((2, 3, 4, 4), np.float32))
    assert "\n" not in str(err.value)
