"""Tests of fastconv.nn.utils (gradient clipping, parameter vectors) against torch.nn.utils.

The same random gradients go into fastconv Parameters and torch tensors; the total norm and
the clipped gradients must agree to rounding (float64: 1e-12 relative; float32: 1e-6, since
fastconv sums in float64 and torch in float32).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastconv import nn

SHAPES = [(3, 4), (5,), (2, 3, 2, 2), (1,), (7, 1)]
NORM_TYPES = [2.0, 1.0, 3.5, 0.5, math.inf, -math.inf, 0.0, "inf"]


def _pair(torch, dtype, seed, scale=1.0, missing=()):
    """Parameters with random gradients and torch twins; indices in ``missing`` get no
    gradient (grad None in both)."""
    gen = np.random.default_rng(seed)
    ours, theirs = [], []
    for i, shape in enumerate(SHAPES):
        p = nn.Parameter(gen.normal(size=shape).astype(dtype))
        t = torch.tensor(p.data.copy(), requires_grad=True)
        if i in missing:
            p.grad = None
        else:
            g = (scale * gen.normal(size=shape)).astype(dtype)
            g[gen.random(size=shape) < 0.2] = 0.0          # zeros matter for norm 0 and -inf
            p.grad = g.copy()
            t.grad = torch.tensor(g.copy())
        ours.append(p)
        theirs.append(t)
    return ours, theirs


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=[str(n) for n in NORM_TYPES])
def test_clip_grad_norm_matches_torch(torch, dtype, norm_type):
    for seed in range(3):
        probe, _ = _pair(torch, dtype, seed, missing=(1,))
        norm = float(nn.utils.get_total_norm([p.grad for p in probe if p.grad is not None],
                                             norm_type))
        # max_norm above the norm (nothing changes) and below it (every gradient scaled)
        for max_norm in (norm * 2.0 + 1.0, norm * 0.3, 0.0):
            ours, theirs = _pair(torch, dtype, seed, missing=(1,))
            before = [None if p.grad is None else p.grad.copy() for p in ours]
            total = nn.utils.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
            ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
            assert isinstance(total, np.ndarray) and total.shape == () and total.dtype == dtype
            np.testing.assert_allclose(float(total), ttotal.item(), **_tol(dtype))
            assert ours[1].grad is None and theirs[1].grad is None
            for p, t, b in zip(ours, theirs, before):
                if p.grad is None:
                    continue
                assert p.grad.dtype == dtype
                np.testing.assert_allclose(p.grad, t.grad.numpy(), **_tol(dtype))
                if max_norm > norm:
                    np.testing.assert_array_equal(p.grad, b)


def test_clip_grad_norm_brings_the_norm_to_max_norm(torch):
    ours, _ = _pair(torch, np.float64, 7, scale=10.0)
    total = nn.utils.clip_grad_norm_(ours, 1.5)
    assert float(total) > 1.5
    after = nn.utils.get_total_norm([p.grad for p in ours])
    assert float(after) == pytest.approx(1.5, rel=1e-6)
    # a generator (model.parameters()) and a single Parameter are accepted, as in torch
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    for p in model.parameters():
        p.grad = np.full_like(p.data, 2.0)
    n = sum(p.data.size for p in model.parameters())
    total = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    assert float(total) == pytest.approx(2.0 * math.sqrt(n), rel=1e-6)
    single = nn.Parameter(np.array([3.0, 4.0]))
    single.grad = np.array([3.0, 4.0])
    assert float(nn.utils.clip_grad_norm_(single, 1.0)) == 5.0
    np.testing.assert_allclose(single.grad, [0.6, 0.8], rtol=1e-6)


def test_clip_grad_norm_skips_frozen_and_gradientless_parameters(torch):
    ours, theirs = _pair(torch, np.float64, 3)
    ours[2].requires_grad = False          # frozen: like a torch parameter without grad
    frozen_grad = ours[2].grad.copy()
    theirs[2].grad = None
    total = nn.utils.clip_grad_norm_(ours, 0.5)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert float(total) == pytest.approx(ttotal.item(), rel=1e-12)
    np.testing.assert_array_equal(ours[2].grad, frozen_grad)
    # no gradients at all: total norm 0, as torch
    none = [nn.Parameter(np.zeros(3))]
    none[0].grad = None
    assert float(nn.utils.clip_grad_norm_(none, 1.0)) == 0.0
    assert float(nn.utils.clip_grad_norm_([], 1.0)) == 0.0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_grad_norm_nonfinite(torch, bad):
    ours, theirs = _pair(torch, np.float64, 4)
    ours[0].grad[1, 2] = bad
    theirs[0].grad[1, 2] = bad
    for norm_type in (2.0, math.inf):
        with pytest.raises(RuntimeError, match="non-finite"):
            nn.utils.clip_grad_norm_(ours, 1.0, norm_type=norm_type, error_if_nonfinite=True)
        with pytest.raises(RuntimeError, match="non-finite"):
            torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type=norm_type,
                                           error_if_nonfinite=True)
    np.testing.assert_array_equal(ours[0].grad, theirs[0].grad.numpy())   # left untouched
    # without the flag both scale by the non-finite norm anyway (NaN/zero gradients)
    total = nn.utils.clip_grad_norm_(ours, 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    np.testing.assert_array_equal(float(total), ttotal.item())
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, t.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_value_matches_torch(torch, dtype):
    for clip in (0.0, 0.3, 1.0, 10.0):
        ours, theirs = _pair(torch, dtype, 5, missing=(3,))
        ours[0].grad[0, 0] = np.nan
        theirs[0].grad[0, 0] = math.nan
        assert nn.utils.clip_grad_value_(ours, clip) is None
        torch.nn.utils.clip_grad_value_(theirs, clip)
        for p, t in zip(ours, theirs):
            if p.grad is None:
                assert t.grad is None
                continue
            assert p.grad.dtype == dtype
            np.testing.assert_array_equal(p.grad, t.grad.numpy())


def test_parameters_to_vector_and_back_match_torch(torch):
    ours, theirs = _pair(torch, np.float64, 6)
    vec = nn.utils.parameters_to_vector(ours)
    tvec = torch.nn.utils.parameters_to_vector(theirs)
    np.testing.assert_array_equal(vec, tvec.detach().numpy())
    new = np.arange(vec.size, dtype=np.float64)
    arrays = [p.data for p in ours]
    nn.utils.vector_to_parameters(new, ours)
    torch.nn.utils.vector_to_parameters(torch.tensor(new), theirs)
    for p, t, a in zip(ours, theirs, arrays):
        assert p.data is a                      # written in place
        np.testing.assert_array_equal(p.data, t.detach().numpy())
    np.testing.assert_array_equal(nn.utils.parameters_to_vector(iter(ours)), new)
    # float32 parameters keep their dtype
    p32 = nn.Parameter(np.zeros((2, 2), np.float32))
    nn.utils.vector_to_parameters(np.array([1.0, 2.0, 3.0, 4.0]), [p32])
    assert p32.data.dtype == np.float32 and p32.data[1, 1] == 4.0


def test_bad_arguments_are_refused():
    p = nn.Parameter(np.zeros(3))
    u = nn.utils
    cases = [
        (lambda: u.clip_grad_norm_(p, -1.0), ValueError, "max_norm"),
        (lambda: u.clip_grad_norm_(p, math.nan), ValueError, "max_norm"),
        (lambda: u.clip_grad_norm_(p, "1"), ValueError, "max_norm"),
        (lambda: u.clip_grad_norm_(p, 1.0, norm_type="two"), TypeError, "norm_type"),
        (lambda: u.clip_grad_norm_(p, 1.0, norm_type=math.nan), ValueError, "norm_type"),
        (lambda: u.clip_grad_norm_(p, 1.0, foreach="yes"), TypeError, "foreach"),
        (lambda: u.clip_grad_norm_(np.zeros(3), 1.0), TypeError, "parameters"),
        (lambda: u.clip_grad_norm_([np.zeros(3)], 1.0), TypeError, r"parameters\[0\]"),
        (lambda: u.clip_grad_norm_(3, 1.0), TypeError, "parameters"),
        (lambda: u.clip_grad_value_(p, -0.1), ValueError, "clip_value"),
        (lambda: u.clip_grad_value_(p, None), ValueError, "clip_value"),
        (lambda: u.parameters_to_vector([]), ValueError, "no parameters"),
        (lambda: u.vector_to_parameters([0.0, 1.0, 2.0], [p]), TypeError, "NumPy array"),
        (lambda: u.vector_to_parameters(np.zeros(4), [p]), ValueError, "4 elements"),
        (lambda: u.vector_to_parameters(np.zeros((3, 1)), [p]), ValueError, "1-d"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()
