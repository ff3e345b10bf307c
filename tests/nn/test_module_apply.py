"""Module.apply against torch.nn.Module.apply: the same visit order on the same nested tree."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import init, nn


def _pair(lib):
    """A module of its own holding one layer under two names, and a Sequential."""

    class Pair(lib.Module):
        def __init__(self):
            super().__init__()
            self.first = lib.Linear(4, 4)
            self.again = self.first          # the same child under two names: visited once
            self.tail = lib.Sequential(lib.Tanh(), lib.Sigmoid())

    return Pair()


def _tree(lib):
    """A nested model built from ``lib`` (fastconv.nn or torch.nn): Sequentials in
    Sequentials, leaves of several kinds."""
    block = lib.Sequential(lib.Linear(8, 4), lib.ReLU(), lib.Sequential(lib.Tanh()))
    return lib.Sequential(lib.Sequential(lib.Flatten(), lib.Linear(12, 8), lib.Tanh()),
                          block, lib.Sequential(lib.Linear(4, 2), lib.Sequential(lib.Sigmoid())))


def _visits(model):
    order = []
    out = model.apply(lambda m: order.append((type(m).__name__, id(m))))
    assert out is model
    ids = {}
    return [(name, ids.setdefault(i, len(ids))) for name, i in order]


def test_apply_visits_as_torch(torch):
    ours, theirs = _visits(_tree(nn)), _visits(_tree(torch.nn))
    assert ours == theirs and len(ours) == 14
    ours_pair, theirs_pair = _visits(_pair(nn)), _visits(_pair(torch.nn))
    assert ours_pair == theirs_pair and len(ours_pair) == 5
    # children before their parent, the root last
    assert ours[-1][0] == "Sequential" and ours[0] == ("Flatten", 0)


def test_apply_initialises_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))

    def init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init.constant_(m.weight, 0.5)
            init.zeros_(m.bias)

    assert model.apply(init_weights) is model
    for m in (model[0], model[3]):
        assert np.all(m.weight.data == 0.5) and not m.bias.data.any()
    with pytest.raises(TypeError, match="callable"):
        model.apply("init")


def test_pytorch_module_api_used_by_ported_loops(torch):
    """What ported PyTorch code calls: zero_grad(set_to_none=...), get_submodule, float() /
    double(), state_dict(prefix=, keep_vars=), named_parameters(remove_duplicate=False),
    register_buffer(persistent=False); each as torch.nn.Module's."""
    from fastconv import models, optim
    from fastconv.export import to_torch

    model = models.get_model("resnet9", seed=0)
    twin = to_torch(model)
    for p in model.parameters():
        p.grad[...] = 1.0
    model.zero_grad(set_to_none=True)
    assert not any(p.grad.any() for p in model.parameters())
    opt = optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.zero_grad(set_to_none=False)
    assert not any(p.grad.any() for p in model.parameters())
    name = [n for n, _ in twin.named_modules()][5]
    assert type(model.get_submodule(name)).__name__ == type(twin.get_submodule(name)).__name__
    assert model.get_submodule("") is model
    with pytest.raises(AttributeError, match="has no sub-module 'nope'"):
        model.get_submodule(name + ".nope")
    sd = model.state_dict(prefix="net.")
    assert list(sd) == ["net." + k for k in twin.state_dict()]
    live = model.state_dict(keep_vars=True)
    first = next(iter(live))
    assert live[first] is next(model.parameters())
    assert model.double().dtype == np.float64 and model.float().dtype == np.float32

    lin = nn.Linear(3, 3, rng=0)
    tied = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 3, rng=1))
    tied[2].weight = lin.weight
    tt = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3))
    tt[2].weight = tt[0].weight
    for remove in (True, False):
        assert [n for n, _ in tied.named_parameters(remove_duplicate=remove)] == \
            [n for n, _ in tt.named_parameters(remove_duplicate=remove)]


def test_non_persistent_buffers_stay_out_of_state_dicts(torch):
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", np.ones(3, np.float32))
            self.register_buffer("table", np.arange(4.0, dtype=np.float32), persistent=False)

        def forward(self, x):
            return x * self.scale

    m = WithTable()
    assert list(m.state_dict()) == ["scale"]
    assert [n for n, _ in m.named_buffers()] == ["scale", "table"]
    m.load_state_dict({"scale": np.full(3, 2.0, np.float32)})  # strict: table not expected
    assert m.astype(np.float64).table.dtype == np.float64
    m.register_buffer("table", m.table, persistent=True)
    assert list(m.state_dict()) == ["scale", "table"]
    with pytest.raises(TypeError, match="persistent must be True or False"):
        m.register_buffer("other", np.ones(1), persistent="no")
