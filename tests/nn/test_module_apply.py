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
