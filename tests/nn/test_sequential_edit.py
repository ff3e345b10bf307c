"""Editing a Sequential as a PyTorch user does (model[i] = layer, del, insert, extend, pop, +):
the same layers, keys and state-dict keys as torch.nn.Sequential after the same edits, and a
forward pass that runs the edited chain (the fusion plan made again)."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import nn
from fastconv.export import to_torch


def _linear(i, o):
    return nn.Linear(i, o, rng=i * 10 + o)


def _pair(t, sizes):
    """A fastconv chain of Linear layers and its torch twin (same weights)."""
    ours = nn.Sequential(*[_linear(a, b) for a, b in zip(sizes, sizes[1:])]).astype(np.float64)
    return ours, to_torch(ours)


def _same(ours, theirs, t):
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]
    x = np.random.default_rng(0).normal(size=(3, ours[0].in_features))
    with t.no_grad():
        want = theirs(t.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("edit", [
    lambda m, L: m.__setitem__(-1, L(3, 5)),
    lambda m, L: m.__setitem__(1, L(3, 4)),
    lambda m, L: m.__delitem__(1) or m.append(L(3, 6)),
    lambda m, L: m.__delitem__(slice(1, None)) or m.extend([L(3, 6), L(6, 4)]),
    lambda m, L: m.insert(1, L(3, 3)),
    lambda m, L: m.insert(-1, L(3, 3)),
    lambda m, L: m.insert(2, L(4, 2)),
    lambda m, L: m.pop(0) and m.insert(0, L(2, 3)),
    lambda m, L: m.pop(-1) and m.append(L(3, 7)),
], ids=["set_last", "set_mid", "del_then_append", "del_slice_extend", "insert_1", "insert_neg",
        "insert_end", "pop_first", "pop_last"])
def test_edits_match_torch(torch, edit):
    ours, theirs = _pair(torch, [2, 3, 4])
    ours(np.zeros((1, 2)))  # (a plan made before the edit must not survive it)

    def our_layer(i, o):
        return _linear(i, o).astype(np.float64)

    def twin_layer(i, o):
        return to_torch(our_layer(i, o))

    edit(ours, our_layer)
    edit(theirs, twin_layer)
    _same(ours, theirs, torch)


def test_add_and_iadd_match_torch(torch):
    a, ta = _pair(torch, [2, 3])
    b, tb = _pair(torch, [3, 4, 5])
    _same(a + b, ta + tb, torch)
    a += b
    ta += tb
    _same(a, ta, torch)
    with pytest.raises(ValueError, match="only a Sequential"):
        a + [nn.ReLU()]


def test_replacing_a_layer_refits_the_fused_plan():
    # Conv -> ReLU -> MaxPool runs fused; replacing the pool must run the new layer
    gen = np.random.default_rng(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2))
    x = gen.normal(size=(2, 2, 6, 6)).astype(np.float32)
    model(x)
    model[2] = nn.AvgPool2d(2)
    y = model(x)
    want = nn.AvgPool2d(2)(np.maximum(model[0](x), 0))
    np.testing.assert_array_equal(y, want)
    g = model.backward(np.ones_like(y))
    assert g.shape == x.shape


def test_new_layers_take_the_models_mode_and_backend():
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5)).eval().set_backend("reference")
    model[1] = nn.Dropout(0.3)
    model.insert(0, nn.Identity())
    model.extend([nn.ReLU()])
    assert all(not m.training for m in model.modules())
    assert all(m.backend == "reference" for m in model)


def test_new_layers_take_the_models_precision():
    """A layer appended, inserted or assigned into a model in bf16 mode runs in bf16 too (as
    it takes the model's backend and mode); a model in no precision leaves the layer's own."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.Flatten()).to(precision="bf16")
    model.append(nn.Linear(4 * 4 * 4, 8, rng=1))
    model.insert(0, nn.Identity())
    model[1] = nn.Conv2d(3, 4, 3, rng=2)
    model.extend([nn.Sequential(nn.ReLU(), nn.Linear(8, 2, rng=3))])
    assert all(m.precision == "bf16" for m in model.modules())
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    head = model[3]
    rounded = model[:3](x)
    want = nn.Linear(4 * 4 * 4, 8).to(precision="bf16")
    want.load_state_dict(head.state_dict())
    np.testing.assert_array_equal(head(rounded), want(rounded))
    own = nn.Sequential(nn.Linear(2, 2))
    own.append(nn.Linear(2, 2).to(precision="bf16"))
    assert own[1].precision == "bf16" and own[0].precision is None


def test_a_model_in_bf16_mode_stays_float32_until_it_leaves_bf16():
    """astype(float64) on a model in bf16 mode (which computes on float32) is a TypeError
    naming the way out, and leaves the model as it was; to(float64, precision='auto')
    leaves bf16 mode and converts."""
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    model[2].to(precision="bf16")
    with pytest.raises(TypeError, match=r"runs in bf16 mode \(its 2\).*precision='auto'"):
        model.astype(np.float64)
    with pytest.raises(TypeError, match="bf16 mode"):
        model.to(np.float64)
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert model[2].precision == "bf16"
    model.to(np.float64, precision="auto")
    assert all(p.data.dtype == np.float64 for p in model.parameters())
    assert all(m.precision is None for m in model.modules())
    x = np.ones((2, 3))
    assert model(x).dtype == np.float64


def test_bad_edits_raise_and_leave_the_model_alone():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    keys = list(model.state_dict())
    with pytest.raises(IndexError, match="out of range for 3 layers"):
        model[3] = nn.ReLU()
    with pytest.raises(IndexError, match="out of range"):
        del model[-4]
    with pytest.raises(IndexError, match="out of range for 3 layers"):
        model.insert(5, nn.ReLU())
    with pytest.raises(TypeError, match="expects a Module"):
        model[0] = np.zeros(3)
    with pytest.raises(TypeError, match="must be an int"):
        model["0"] = nn.ReLU()
    # a layer with weights already in the model cannot run twice: refused, model unchanged
    with pytest.raises(ValueError, match="already in this model"):
        model[1] = model[2]
    assert isinstance(model[1], nn.ReLU) and list(model.state_dict()) == keys
    model[0] = model[0]  # (itself: nothing changes)
    assert list(model.state_dict()) == keys


def test_delete_numbers_named_layers_again_as_torch(torch):
    from collections import OrderedDict
    ours = nn.Sequential(OrderedDict(a=nn.Linear(2, 3), b=nn.ReLU(), c=nn.Linear(3, 4)))
    theirs = torch.nn.Sequential(OrderedDict(a=torch.nn.Linear(2, 3), b=torch.nn.ReLU(),
                                             c=torch.nn.Linear(3, 4)))
    del ours[1]
    del theirs[1]
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias"]
