"""Tests of fastconv.optim: optimisers and schedules against torch.optim on the same gradients.

All comparisons run in float64: the update rules are a few element-wise operations per step, so
the two implementations agree to ~1e-15 relative; rtol 1e-12 leaves room for the different
(but algebraically equal) operation order over 8 steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastconv import nn, optim
from fastconv.backend import use_backend


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


SHAPES = [(3, 4), (4,), (2, 1, 2, 2)]


def _problem(steps, seed=0):
    gen = np.random.default_rng(seed)
    init = [gen.normal(size=s) for s in SHAPES]
    grads = [[gen.normal(size=s) for s in SHAPES] for _ in range(steps)]
    return init, grads


OPTIMIZERS = [
    ("sgd", lambda p: optim.SGD(p, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    ("sgd_momentum", lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
     lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("sgd_dampening_wd", lambda p: optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
     lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("sgd_nesterov", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
     lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("rmsprop", lambda p: optim.RMSprop(p), lambda t, p: t.optim.RMSprop(p)),
    ("rmsprop_all", lambda p: optim.RMSprop(p, lr=0.003, alpha=0.9, eps=1e-6, weight_decay=0.02,
                                            momentum=0.5, centered=True),
     lambda t, p: t.optim.RMSprop(p, lr=0.003, alpha=0.9, eps=1e-6, weight_decay=0.02, momentum=0.5,
                                  centered=True)),
    ("adam", lambda p: optim.Adam(p), lambda t, p: t.optim.Adam(p)),
    ("adam_l2_amsgrad", lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                                             amsgrad=True),
     lambda t, p: t.optim.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("adamw", lambda p: optim.AdamW(p), lambda t, p: t.optim.AdamW(p)),
    ("adamw_amsgrad", lambda p: optim.AdamW(p, lr=0.02, weight_decay=0.3, amsgrad=True),
     lambda t, p: t.optim.AdamW(p, lr=0.02, weight_decay=0.3, amsgrad=True)),
    ("adam_decoupled", lambda p: optim.Adam(p, lr=0.02, weight_decay=0.3, decoupled_weight_decay=True),
     lambda t, p: t.optim.Adam(p, lr=0.02, weight_decay=0.3, decoupled_weight_decay=True)),
    ("adam_decoupled_amsgrad",
     lambda p: optim.Adam(p, weight_decay=0.1, amsgrad=True, decoupled_weight_decay=True),
     lambda t, p: t.optim.Adam(p, weight_decay=0.1, amsgrad=True, decoupled_weight_decay=True)),
]


@pytest.mark.parametrize("case", OPTIMIZERS, ids=[c[0] for c in OPTIMIZERS])
def test_optimizer_matches_torch(torch, case):
    _, make, make_torch = case
    init, grads = _problem(8)
    ours = [nn.Parameter(w.copy()) for w in init]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in init]
    opt, topt = make(ours), make_torch(torch, theirs)
    for step_grads in grads:
        opt.zero_grad()
        for p, tp, g in zip(ours, theirs, step_grads):
            p.grad += g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=[c[0] for c in OPTIMIZERS])
def test_optimizer_keeps_float32(case):
    _, make, _ = case
    p = nn.Parameter(np.ones((2, 3), np.float32))
    opt = make([p])
    for _ in range(2):
        p.grad[...] = 0.5
        opt.step()
    assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
    assert (p.data < 1).all()
    for v in opt.state.get(p, {}).values():
        if isinstance(v, np.ndarray):
            assert v.dtype == np.float32


@pytest.mark.parametrize("case", OPTIMIZERS, ids=[c[0] for c in OPTIMIZERS])
def test_optimizer_state_dict_round_trip(case):
    _, make, _ = case
    init, grads = _problem(6, seed=1)
    a_params = [nn.Parameter(w.copy()) for w in init]
    a = make(a_params)
    for g in grads[:3]:
        for p, gi in zip(a_params, g):
            p.grad[...] = gi
        a.step()
    sd = a.state_dict()
    b_params = [nn.Parameter(p.data.copy()) for p in a_params]
    b = make(b_params)
    b.load_state_dict(sd)
    assert b.state_dict()["param_groups"] == sd["param_groups"]
    for g in grads[3:]:
        for pa, pb, gi in zip(a_params, b_params, g):
            pa.grad[...] = gi
            pb.grad[...] = gi
        a.step()
        b.step()
    for pa, pb in zip(a_params, b_params):
        np.testing.assert_array_equal(pa.data, pb.data)
    # the state dict holds copies
    for s in sd["state"].values():
        for v in s.values():
            if isinstance(v, np.ndarray):
                v[...] = 1e9
    assert all(np.abs(p.data).max() < 1e8 for p in a_params)


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=[c[0] for c in OPTIMIZERS])
def test_step_slices_of_ranks_are_step_bit_for_bit(case, dtype, backend):
    """Ranks each updating their slice of every parameter (cut anywhere, also inside a SIMD
    vector), then exchanging the updated slices, end with the bits of one step() over the
    whole parameters, and their states' slices are the whole state's."""
    _, make, _ = case
    gen = np.random.default_rng(3)
    shapes = [(7, 5), (40,), (1,)]
    init = [gen.normal(size=s).astype(dtype) for s in shapes]
    whole = [nn.Parameter(w.copy()) for w in init]
    ranks = [[nn.Parameter(w.copy()) for w in init] for _ in range(3)]
    cuts = [[0, 13, 21, 35], [0, 0, 17, 40], [0, 1, 1, 1]]  # (per parameter: rank r's slice)
    with use_backend(backend):
        opt = make(whole)
        opts = [make(params) for params in ranks]
        for _ in range(3):
            grads = [gen.normal(size=s).astype(dtype) for s in shapes]
            for p, g in zip(whole, grads):
                p.grad[...] = g
            opt.step()
            for r, (o, params) in enumerate(zip(opts, ranks)):
                o.step_slices([(p, c[r], c[r + 1], g.reshape(-1)[c[r]:c[r + 1]].copy())
                               for p, g, c in zip(params, grads, cuts)])
            for i, c in enumerate(cuts):  # (the gather)
                for r in range(3):
                    for params in ranks:
                        params[i].data.reshape(-1)[c[r]:c[r + 1]] = \
                            ranks[r][i].data.reshape(-1)[c[r]:c[r + 1]]
    for i, (p, c) in enumerate(zip(whole, cuts)):
        for r in range(3):
            np.testing.assert_array_equal(ranks[r][i].data, p.data)
            if c[r] == c[r + 1]:
                continue
            for k, v in opt.state[p].items():
                mine = opts[r].state[ranks[r][i]][k]
                if isinstance(v, np.ndarray):
                    assert mine.shape == v.shape and mine.dtype == v.dtype
                    np.testing.assert_array_equal(mine.reshape(-1)[c[r]:c[r + 1]],
                                                  v.reshape(-1)[c[r]:c[r + 1]])
                else:
                    assert mine == v, k


def test_step_slices_needs_an_elementwise_update():
    class Normed(optim.SGD):
        elementwise = False

    p = nn.Parameter(np.ones(4))
    with pytest.raises(TypeError, match="not elementwise"):
        Normed([p], lr=0.1).step_slices([(p, 0, 2, np.ones(2))])
    assert all(cls.elementwise for cls in (optim.SGD, optim.RMSprop, optim.Adam, optim.AdamW))


def test_optimizer_load_state_dict_validation():
    p = [nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros((2, 2)))]
    opt = optim.SGD(p, lr=0.1, momentum=0.9)
    for q in p:
        q.grad[...] = 1
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameters in the state dict, 1 in the optimiser"):
        optim.SGD(p[:1], lr=0.1, momentum=0.9).load_state_dict(sd)
    other = optim.SGD([nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros(5))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*\(5,\)"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.SGD([{"params": p[:1]}, {"params": p[1:]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError):
        opt.load_state_dict({"foo": 1})


def test_optimizer_argument_validation():
    p = [nn.Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(TypeError, match="Parameters"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": p}, {"params": p}], lr=0.1)


def test_param_groups_lr_property_and_module_argument(torch):
    model = nn.Sequential(nn.Linear(2, 3, rng=0), nn.Linear(3, 1, rng=1))
    opt = optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}],
                    lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5] and opt.lr == 0.1
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]
    opt.lr = 0.01
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert len(optim.Adam(model).param_groups[0]["params"]) == 4  # a Module is accepted
    assert "SGD" in repr(opt) and "momentum: 0.9" in repr(opt)
    model.zero_grad()
    for p in model.parameters():
        p.grad += 1
    opt.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_l2_penalty_equals_weight_decay():
    init, grads = _problem(4, seed=2)
    lam = 0.05
    a = [nn.Parameter(w.copy()) for w in init]
    b = [nn.Parameter(w.copy()) for w in init]
    oa = optim.SGD(a, lr=0.1, momentum=0.9, weight_decay=lam)
    ob = optim.SGD(b, lr=0.1, momentum=0.9)
    for g in grads:
        oa.zero_grad()
        ob.zero_grad()
        for pa, pb, gi in zip(a, b, g):
            pa.grad += gi
            pb.grad += gi
        expected = 0.5 * lam * sum(float((p.data ** 2).sum()) for p in b)
        assert optim.l2_penalty(b, lam) == pytest.approx(expected, rel=1e-12)
        oa.step()
        ob.step()
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-12, atol=1e-14)
    model = nn.Sequential(nn.Linear(2, 2, rng=0))
    model.zero_grad()
    term = optim.l2_penalty(model, 1.0, skip_1d=True)
    w = model[0].weight.data
    assert term == pytest.approx(0.5 * float((w.astype(np.float64) ** 2).sum()), rel=1e-6)
    np.testing.assert_array_equal(model[0].weight.grad, w)
    assert not model[0].bias.grad.any()


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------

def _lr_sequences(torch, make, make_torch, steps, make_opt=None, make_topt=None):
    make_opt = make_opt or (lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    make_topt = make_topt or (lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9))
    opt = make_opt([nn.Parameter(np.zeros(2))])
    topt = make_topt(torch, [torch.zeros(2, requires_grad=True)])
    sched, tsched = make(opt), make_torch(torch, topt)
    ours, theirs = [], []
    for _ in range(steps):
        ours.append((opt.lr, dict(opt.param_groups[0])))
        theirs.append((topt.param_groups[0]["lr"], dict(topt.param_groups[0])))
        topt.step()
        tsched.step()
        sched.step()
    return ours, theirs, sched, tsched


SCHEDULES = [
    ("step", lambda o: optim.StepLR(o, step_size=3, gamma=0.5),
     lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 12),
    ("exponential", lambda o: optim.ExponentialLR(o, gamma=0.95),
     lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.95), 12),
    ("inverse_time", lambda o: optim.InverseTimeDecay(o, decay=0.5),
     lambda t, o: t.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + 0.5 * e)), 12),
    ("inverse_time_staircase", lambda o: optim.InverseTimeDecay(o, decay=0.5, decay_steps=3, staircase=True),
     lambda t, o: t.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + 0.5 * (e // 3))), 12),
    ("cosine", lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
     lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.001), 11),
    ("linear_warmup", lambda o: optim.LinearWarmup(o, warmup_steps=5, start_factor=0.2),
     lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=5), 9),
    ("onecycle", lambda o: optim.OneCycleLR(o, max_lr=0.4, total_steps=20),
     lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.4, total_steps=20), 20),
    ("onecycle_linear_3phase", lambda o: optim.OneCycleLR(o, max_lr=0.4, epochs=3, steps_per_epoch=5,
                                                          pct_start=0.25, anneal_strategy="linear",
                                                          three_phase=True, div_factor=10),
     lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.4, epochs=3, steps_per_epoch=5, pct_start=0.25,
                                                  anneal_strategy="linear", three_phase=True,
                                                  div_factor=10), 15),
    ("onecycle_no_momentum", lambda o: optim.OneCycleLR(o, max_lr=0.4, total_steps=10, cycle_momentum=False),
     lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.4, total_steps=10, cycle_momentum=False), 10),
]


@pytest.mark.parametrize("case", SCHEDULES, ids=[c[0] for c in SCHEDULES])
def test_schedule_matches_torch(torch, case):
    _, make, make_torch, steps = case
    ours, theirs, sched, tsched = _lr_sequences(torch, make, make_torch, steps)
    np.testing.assert_allclose([o[0] for o in ours], [t[0] for t in theirs], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([o[1]["momentum"] for o in ours], [t[1]["momentum"] for t in theirs],
                               rtol=1e-12)
    np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=1e-15)


def test_onecycle_cycles_adam_beta1_like_torch(torch):
    make = lambda o: optim.OneCycleLR(o, max_lr=0.01, total_steps=12, base_momentum=0.8, max_momentum=0.9)
    make_t = lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=12, base_momentum=0.8,
                                                          max_momentum=0.9)
    ours, theirs, _, _ = _lr_sequences(torch, make, make_t, 12, lambda p: optim.Adam(p),
                                       lambda t, p: t.optim.Adam(p))
    np.testing.assert_allclose([o[0] for o in ours], [t[0] for t in theirs], rtol=1e-12)
    np.testing.assert_allclose([o[1]["betas"] for o in ours], [t[1]["betas"] for t in theirs], rtol=1e-12)


def test_onecycle_limits():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0, momentum=0.9)
    sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    assert opt.lr == pytest.approx(1.0 / 25)
    lrs = [opt.lr]
    for _ in range(9):
        sched.step()
        lrs.append(opt.lr)
    assert max(lrs) == pytest.approx(1.0, rel=0.05) and lrs[-1] == pytest.approx(1.0 / 25 / 1e4)
    sched.step()  # step == total_steps is still allowed, as in torch
    with pytest.raises(ValueError, match="total"):
        sched.step()
    with pytest.raises(ValueError, match="total_steps"):
        optim.OneCycleLR(opt, max_lr=1.0)


def test_schedule_formulas():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    sched = optim.ExponentialLR(opt, gamma=0.95)
    for epoch in range(1, 6):
        sched.step()
        assert opt.lr == pytest.approx(0.1 * 0.95 ** epoch, rel=1e-14)
        assert sched.get_lr() == sched.get_last_lr() == [opt.lr]
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    sched = optim.InverseTimeDecay(opt, decay=0.1)
    for epoch in range(1, 6):
        sched.step()
        assert opt.lr == pytest.approx(0.2 / (1 + 0.1 * epoch), rel=1e-14)
    assert sched.lrs_at(100) == [pytest.approx(0.2 / 11)]


def test_warmup_then_cosine():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    cosine = optim.CosineAnnealingLR(opt, T_max=10)
    sched = optim.LinearWarmup(opt, warmup_steps=4, start_factor=0.0, after=cosine)
    lrs = [opt.lr]
    for _ in range(14):
        sched.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs[:5], [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(lrs[4:], [(1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)], atol=1e-15)
    sd = sched.state_dict()
    assert sd["after"]["T_max"] == 10
    with pytest.raises(ValueError, match="same optimizer"):
        optim.LinearWarmup(optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0), 2, after=cosine)


@pytest.mark.parametrize("case", SCHEDULES, ids=[c[0] for c in SCHEDULES])
def test_schedule_state_dict_round_trip(case):
    _, make, _, steps = case
    k = steps // 2

    def fresh():
        opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
        return opt, make(opt)

    opt_a, a = fresh()
    for _ in range(k):
        a.step()
    sd = a.state_dict()
    assert "optimizer" not in sd and sd["last_epoch"] == k
    opt_b, b = fresh()
    b.load_state_dict(sd)
    assert opt_b.lr == opt_a.lr and b.last_epoch == k
    for _ in range(steps - k - 1):
        a.step()
        b.step()
        assert opt_a.lr == opt_b.lr
        assert opt_a.param_groups[0]["momentum"] == opt_b.param_groups[0]["momentum"]


def test_schedule_validation():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(TypeError):
        optim.StepLR("not an optimizer", 3)
    with pytest.raises(ValueError):
        optim.StepLR(opt, 0)
    with pytest.raises(ValueError):
        optim.CosineAnnealingLR(opt, 0)
    with pytest.raises(ValueError):
        optim.LinearWarmup(opt, 0)
    with pytest.raises(KeyError, match="initial_lr"):
        optim.StepLR(optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1), 3, last_epoch=5)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-3),
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
], ids=["sgd-nesterov", "sgd-dampening", "sgd-plain", "adam", "adamw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_update_matches_numpy_update(make, dtype):
    # The fast backend updates each parameter in one compiled pass; the reference backend
    # keeps NumPy's arithmetic. Both must follow the same rule.
    results = {}
    for name in ("fast", "reference"):
        rng = np.random.default_rng(3)
        params = [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in [(7, 5), (300_000,)]]
        opt = make(params)
        with use_backend(name):
            for _ in range(5):
                for p in params:
                    p.grad[...] = rng.standard_normal(p.data.shape)
                opt.step()
        results[name] = [p.data.copy() for p in params]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(results["fast"], results["reference"]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# degenerate and foreign inputs
# ---------------------------------------------------------------------------------------------

def _onecycle_pcts(T):
    # every boundary on a whole step (incl. pct_start * T == 1 and pct_start == 1, where a phase
    # has zero length), the three-phase cases with an empty or inverted last phase, and others
    pcts = {k / T for k in range(T + 1)} | {(T + 1) / (2 * T), (T + 2) / (2 * T),
                                           0.05, 0.3, 0.55, 0.999}
    return sorted(p for p in pcts if p <= 1.0)


@pytest.mark.parametrize("three_phase", [False, True], ids=["2phase", "3phase"])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_any_phase_lengths_never_crash_and_match_torch(torch, three_phase, anneal):
    # Torch divides by zero in a zero-length phase; up to that point both must agree, and
    # fastconv must complete every step with the phase's end values there.
    kw = dict(max_lr=0.4, anneal_strategy=anneal, three_phase=three_phase, div_factor=10.0,
              final_div_factor=100.0, base_momentum=0.8, max_momentum=0.95)
    levels_lr, levels_mom = [0.4, 0.04, 0.0004], [0.8, 0.95]
    torch_crashed = 0
    for T in range(1, 13):
        for pct in _onecycle_pcts(T):
            opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
            sched = optim.OneCycleLR(opt, total_steps=T, pct_start=pct, **kw)
            ours = [(opt.lr, opt.param_groups[0]["momentum"])]
            for _ in range(T):
                opt.step()
                sched.step()
                ours.append((opt.lr, opt.param_groups[0]["momentum"]))
            with pytest.raises(ValueError, match="total"):
                sched.step()
            assert all(math.isfinite(lr) and math.isfinite(m) for lr, m in ours), (T, pct)
            topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
            theirs = []
            try:
                tsched = torch.optim.lr_scheduler.OneCycleLR(topt, total_steps=T, pct_start=pct,
                                                             **kw)
                theirs.append((topt.param_groups[0]["lr"], topt.param_groups[0]["momentum"]))
                for _ in range(T):
                    topt.step()
                    tsched.step()
                    theirs.append((topt.param_groups[0]["lr"], topt.param_groups[0]["momentum"]))
            except ZeroDivisionError:
                torch_crashed += 1
                # where torch crashes, a phase is skipped: its end values
                lr, mom = ours[len(theirs)]
                assert any(lr == pytest.approx(v, rel=1e-12) for v in levels_lr), (T, pct, lr)
                assert any(mom == pytest.approx(v, rel=1e-12) for v in levels_mom), (T, pct, mom)
            np.testing.assert_allclose(ours[:len(theirs)], theirs, rtol=1e-12, atol=1e-15,
                                       err_msg=f"total_steps={T} pct_start={pct}")
    assert torch_crashed >= 12            # the zero-length phases were exercised


def test_onecycle_zero_length_phases_are_skipped():
    def lrs(T, pct, **kw):
        opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0, momentum=0.9)
        sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=T, pct_start=pct, **kw)
        out = [(opt.lr, opt.param_groups[0]["momentum"])]
        for _ in range(T):
            sched.step()
            out.append((opt.lr, opt.param_groups[0]["momentum"]))
        return out
    # a one-step warm-up starts at the peak (and the lowest momentum)
    seq = lrs(10, 0.1)
    assert seq[0] == (1.0, 0.85)
    assert seq[9][0] == pytest.approx(1.0 / 25 / 1e4) and seq[9][1] == pytest.approx(0.95)
    assert all(a[0] > b[0] for a, b in zip(seq[:10], seq[1:10]))
    # warm-up throughout: rises to the peak at the last batch, then the minimum at the end
    seq = lrs(10, 1.0)
    assert seq[0][0] == pytest.approx(1.0 / 25) and seq[9] == (1.0, 0.85)
    assert all(a[0] < b[0] for a, b in zip(seq[:10], seq[1:10]))
    assert seq[10] == (pytest.approx(1.0 / 25 / 1e4), 0.95)
    # three phases whose last one is empty (2 * pct_start * T - 2 == T - 1)
    seq = lrs(9, 5 / 9, three_phase=True)
    assert seq[-1][0] == pytest.approx(1.0 / 25 / 1e4)
    for T in (1, 2):
        for pct in (0.0, 0.5, 1.0):
            for three in (False, True):
                assert all(math.isfinite(lr) for lr, _ in lrs(T, pct, three_phase=three))
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0, momentum=0.9)
    for bad in ("div_factor", "final_div_factor"):
        with pytest.raises(ValueError, match=bad):
            optim.OneCycleLR(opt, max_lr=1.0, total_steps=10, **{bad: 0})


def test_duplicate_parameter_in_one_group_rejected():
    p, q = nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros(3))
    with pytest.raises(ValueError, match=r"same parameter twice \(positions 0 and 2\)"):
        optim.SGD([p, q, p], lr=0.1)
    with pytest.raises(ValueError, match="parameter group 1 lists the same parameter twice"):
        optim.Adam([{"params": [q]}, {"params": [p, p]}])
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        opt.add_param_group({"params": [q, q]})
    assert len(opt.param_groups) == 1


def _adam_state_dict(step, shape=(3,), lr=0.01):
    return {"state": {0: {"step": step, "exp_avg": np.full(shape, 0.1),
                          "exp_avg_sq": np.full(shape, 0.01)}},
            "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                              "amsgrad": False, "params": [0]}]}


@pytest.mark.parametrize("step", [3.0, np.float32(3.0), np.array(3.0)],
                         ids=["float", "float32", "0d"])
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_adam_load_state_dict_float_step(step, backend):
    # PyTorch stores 'step' as a float tensor; the fused update needs an int
    results = []
    for s in (step, 3):
        p = nn.Parameter(np.ones(3))
        opt = optim.Adam([p])
        opt.load_state_dict(_adam_state_dict(s))
        p.grad[...] = 0.5
        with use_backend(backend):
            opt.step()                      # the fast backend's compiled update takes an int
        assert type(opt.state[p]["step"]) is int and opt.state[p]["step"] == 4
        results.append(p.data.copy())
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("step", [2.5, -1, -1.0, math.nan, math.inf, "3", None, True,
                                  np.array([1.0, 2.0])])
def test_optimizer_load_state_dict_rejects_bad_step(step):
    p = nn.Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.5)
    with pytest.raises(ValueError, match="'step' of parameter 0 must be a whole number >= 0"):
        opt.load_state_dict(_adam_state_dict(step))
    assert opt.state == {} and opt.lr == 0.5          # nothing half-loaded


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_load_torch_optimizer_state_dict_then_step_like_torch(torch, name):
    init, grads = _problem(6, seed=4)
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in init]
    kw = {"lr": 0.01, "weight_decay": 0.05}
    topt = getattr(torch.optim, name)(theirs, **kw)
    for g in grads[:3]:
        for tp, gi in zip(theirs, g):
            tp.grad = torch.tensor(gi)
        topt.step()
    sd = topt.state_dict()
    assert torch.is_tensor(sd["state"][0]["step"]) and sd["state"][0]["step"].is_floating_point()
    ours = [nn.Parameter(tp.detach().numpy().copy()) for tp in theirs]
    opt = getattr(optim, name)(ours, **kw)
    opt.load_state_dict(sd)
    assert all(type(opt.state[p]["step"]) is int and opt.state[p]["step"] == 3 for p in ours)
    # torch's options of how it runs the update are dropped, not carried as dead keys
    assert not set(opt.param_groups[0]) & {"foreach", "fused", "differentiable", "capturable",
                                            "maximize"}
    for g in grads[3:]:
        for p, tp, gi in zip(ours, theirs, g):
            p.grad[...] = gi
            tp.grad = torch.tensor(gi)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adam_decoupled_weight_decay_is_adamw_and_survives_old_state_dicts():
    init, grads = _problem(5, seed=3)
    runs = []
    for make in (lambda ps: optim.AdamW(ps, lr=0.02, weight_decay=0.2),
                 lambda ps: optim.Adam(ps, lr=0.02, weight_decay=0.2, decoupled_weight_decay=True)):
        ps = [nn.Parameter(w.copy()) for w in init]
        opt = make(ps)
        for g in grads:
            for p, gi in zip(ps, g):
                p.grad[...] = gi
            opt.step()
        runs.append([p.data.tobytes() for p in ps])
    assert runs[0] == runs[1]
    assert optim.Adam([nn.Parameter(np.ones(2))]).param_groups[0]["decoupled_weight_decay"] is False
    # a state dict saved before the option existed keeps each class's behaviour
    p = nn.Parameter(np.ones(2))
    opt = optim.AdamW([p])
    sd = opt.state_dict()
    del sd["param_groups"][0]["decoupled_weight_decay"]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


# ---------------------------------------------------------------------------------------------
# MultiStepLR, LambdaLR, CosineAnnealingWarmRestarts, ReduceLROnPlateau against torch
# ---------------------------------------------------------------------------------------------

GROUP_LRS = (0.1, 0.03, 0.25)


def _groups_pair(torch, lrs=GROUP_LRS):
    """An SGD over len(lrs) parameter groups, and torch's twin."""
    ours = optim.SGD([{"params": [nn.Parameter(np.zeros(2))], "lr": lr} for lr in lrs],
                     lr=0.5, momentum=0.9)
    theirs = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "lr": lr}
                              for lr in lrs], lr=0.5, momentum=0.9)
    return ours, theirs


def _assert_same_lrs(opt, topt, where):
    ours = [g["lr"] for g in opt.param_groups]
    theirs = [g["lr"] for g in topt.param_groups]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-300, err_msg=where)


class _Warmup:
    """A callable object with state (its ``__dict__`` goes through LambdaLR.state_dict)."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, t):
        return min(1.0, (t + 1) / self.steps)


GROUP_SCHEDULES = [
    ("multistep", lambda o: optim.MultiStepLR(o, milestones=[3, 7, 8, 20], gamma=0.3),
     lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7, 8, 20], gamma=0.3)),
    ("multistep_default_gamma_from_0", lambda o: optim.MultiStepLR(o, [0, 5]),
     lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, [0, 5])),
    # any order, and a milestone given twice multiplies by gamma twice (torch's Counter)
    ("multistep_unsorted_repeated", lambda o: optim.MultiStepLR(o, [20, 3, 8, 3], gamma=0.5),
     lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, [20, 3, 8, 3], gamma=0.5)),
    ("lambda_one", lambda o: optim.LambdaLR(o, lambda e: 0.97 ** e + 0.01 * (e % 3)),
     lambda t, o: t.optim.lr_scheduler.LambdaLR(o, lambda e: 0.97 ** e + 0.01 * (e % 3))),
    ("lambda_per_group",
     lambda o: optim.LambdaLR(o, [lambda e: e // 4, lambda e: 0.9 ** e, _Warmup(6)]),
     lambda t, o: t.optim.lr_scheduler.LambdaLR(o, [lambda e: e // 4, lambda e: 0.9 ** e,
                                                    _Warmup(6)])),
    ("warm_restarts", lambda o: optim.CosineAnnealingWarmRestarts(o, T_0=5),
     lambda t, o: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5)),
    ("warm_restarts_mult",
     lambda o: optim.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001),
     lambda t, o: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2,
                                                                   eta_min=0.001)),
    ("warm_restarts_T0_1", lambda o: optim.CosineAnnealingWarmRestarts(o, T_0=1, T_mult=3),
     lambda t, o: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=1, T_mult=3)),
]


@pytest.mark.parametrize("case", GROUP_SCHEDULES, ids=[c[0] for c in GROUP_SCHEDULES])
def test_new_schedules_match_torch_over_groups(torch, case):
    _, make, make_torch = case
    opt, topt = _groups_pair(torch)
    sched, tsched = make(opt), make_torch(torch, topt)
    _assert_same_lrs(opt, topt, "at construction")
    for step in range(1, 61):
        topt.step()
        tsched.step()
        sched.step()
        _assert_same_lrs(opt, topt, f"after step {step}")
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12,
                                   atol=1e-300)
        assert sched.last_epoch == tsched.last_epoch == step
    # the closed form agrees with the stepped rates (what LinearWarmup(after=...) reads)
    np.testing.assert_allclose(sched.lrs_at(sched.last_epoch), sched.get_last_lr(),
                               rtol=1e-12, atol=1e-300)


def test_multistep_lr_values():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.05)
    sched = optim.MultiStepLR(opt, milestones=[30, 80])
    lrs = [opt.lr]
    for _ in range(99):
        sched.step()
        lrs.append(opt.lr)
    assert lrs[29] == 0.05 and lrs[30] == pytest.approx(0.005, rel=1e-15)
    assert lrs[79] == lrs[30] and lrs[80] == pytest.approx(0.0005, rel=1e-15) == lrs[99]


def test_warm_restarts_fractional_and_interleaved_epochs_match_torch(torch):
    opt, topt = _groups_pair(torch)
    for T_0, T_mult in [(4, 1), (2, 2), (1, 3), (3, 5)]:
        sched = optim.CosineAnnealingWarmRestarts(opt, T_0, T_mult=T_mult, eta_min=1e-4)
        tsched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(topt, T_0, T_mult=T_mult,
                                                                      eta_min=1e-4)
        iters = 7
        for epoch in range(12):
            for i in range(iters):          # torch's documented per-batch use
                e = epoch + i / iters
                sched.step(e)
                tsched.step(e)
                _assert_same_lrs(opt, topt, f"T_0={T_0} T_mult={T_mult} epoch {e}")
                assert (sched.T_i, sched.last_epoch) == (tsched.T_i, tsched.last_epoch)
                assert sched.T_cur == pytest.approx(tsched.T_cur, rel=1e-12, abs=1e-12)
        for e in [None, None, 26, None, None, 3.5, None, 0, None]:   # interleaved
            sched.step(e)
            tsched.step(e)
            _assert_same_lrs(opt, topt, f"T_0={T_0} T_mult={T_mult} interleaved {e}")
            assert sched.last_epoch == tsched.last_epoch


def test_warm_restarts_restart_exactly_where_torch_rounds_the_cycle_down(torch):
    # cycle n of T_0=1, T_mult=3 starts at (3**n - 1) / 2; torch's log(121 * 2 + 1, 3)
    # = 4.999... puts epoch 121 at the end of cycle 4 (lr = eta_min) instead of the start of
    # cycle 5 (lr = base lr)
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched = optim.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=3)
    for n in range(1, 12):
        start = (3 ** n - 1) // 2
        sched.step(start)
        assert (sched.T_i, sched.T_cur, opt.lr) == (3 ** n, 0, 1.0), n
        sched.step(start - 0.01)
        assert sched.T_i == 3 ** (n - 1) and opt.lr < 0.01
    assert sched.lrs_at(121) == [1.0]
    # stepping one by one gives the same restarts as jumping
    opt2 = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    one = optim.CosineAnnealingWarmRestarts(opt2, T_0=1, T_mult=3)
    for t in range(1, 130):
        one.step()
        assert one.get_last_lr() == one.lrs_at(t), t


def test_warm_restarts_resume_from_last_epoch():
    def run(make, steps):
        opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
        sched = make(opt)
        for _ in range(steps):
            sched.step()
        return opt, sched

    opt_a, a = run(lambda o: optim.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2), 7)
    opt_b = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    opt_b.param_groups[0]["initial_lr"] = 0.2
    b = optim.CosineAnnealingWarmRestarts(opt_b, T_0=2, T_mult=2, last_epoch=6)
    assert (b.last_epoch, b.T_i, b.T_cur, opt_b.lr) == (a.last_epoch, a.T_i, a.T_cur, opt_a.lr)
    for _ in range(20):
        a.step()
        b.step()
        assert opt_a.lr == opt_b.lr


PLATEAU_CASES = [
    dict(),
    dict(mode="min", factor=0.5, patience=2, threshold=0.01),
    dict(mode="min", factor=0.5, patience=0, threshold=0.1, threshold_mode="abs", cooldown=2),
    dict(mode="max", factor=0.3, patience=1, threshold=0.05),
    dict(mode="max", factor=0.7, patience=3, threshold=0.2, threshold_mode="abs", cooldown=1,
         min_lr=[0.02, 0.001, 0.05]),
    dict(mode="min", factor=0.2, patience=1, min_lr=0.004, eps=1e-3),
]


def _plateau_metrics(seed, n):
    """A metric that improves, stalls, jumps and repeats (plateaus of equal values)."""
    gen = np.random.default_rng(seed)
    base = np.repeat(gen.normal(size=n // 3 + 1), 3)[:n]
    trend = np.where(np.arange(n) < n // 2, -0.05 * np.arange(n), 0.0)
    return [float(v) for v in np.round(base + trend + 3.0, 1)]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES,
                         ids=[",".join(f"{k}={v}" for k, v in c.items()) or "defaults"
                              for c in PLATEAU_CASES])
def test_reduce_lr_on_plateau_matches_torch(torch, kwargs):
    for seed in range(4):
        opt, topt = _groups_pair(torch)
        sched = optim.ReduceLROnPlateau(opt, **kwargs)
        tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
        reductions = 0
        for i, m in enumerate(_plateau_metrics(seed, 90)):
            before = opt.lr
            sched.step(m)
            tsched.step(m)
            reductions += opt.lr < before
            _assert_same_lrs(opt, topt, f"seed {seed}, step {i + 1}, metric {m}")
            assert sched.get_last_lr() == tsched.get_last_lr()
            assert (sched.best, sched.num_bad_epochs, sched.cooldown_counter, sched.last_epoch) \
                == (tsched.best, tsched.num_bad_epochs, tsched.cooldown_counter,
                    tsched.last_epoch)
        assert reductions >= 1    # (the case exercises a reduction)


def test_reduce_lr_on_plateau_patience_and_cooldown_semantics():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched = optim.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1)
    lrs = []
    for m in [5, 4, 4, 4, 4, 4, 4, 4, 4, 3]:
        sched.step(np.array(m, dtype=np.float32))     # a 0-d array is a metric too
        lrs.append(opt.lr)
    # 3 bad steps (> patience 2) -> halve; the cooldown (1) ignores the next; 3 more bad
    # -> halve; then an improvement
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(TypeError, match="lrs_at"):
        sched.lrs_at(3)
    with pytest.raises(TypeError, match="metrics"):
        sched.step("low")


def test_reduce_lr_on_plateau_min_lr_and_eps():
    opt = optim.SGD([{"params": [nn.Parameter(np.zeros(1))], "lr": 1.0},
                     {"params": [nn.Parameter(np.zeros(1))], "lr": 1e-8}], lr=1.0)
    sched = optim.ReduceLROnPlateau(opt, factor=0.1, patience=0, min_lr=[0.05, 0.0])
    for _ in range(4):
        sched.step(1.0)
    # group 0 stops at min_lr; group 1's changes are below eps (1e-8) and are skipped
    assert [g["lr"] for g in opt.param_groups] == [0.05, 1e-8]


def test_lambda_lr_state_dict_keeps_callable_objects_state_and_no_functions():
    def make():
        opt = optim.SGD([{"params": [nn.Parameter(np.zeros(1))], "lr": 0.1},
                         {"params": [nn.Parameter(np.zeros(1))], "lr": 0.2}], lr=0.1)
        return opt, optim.LambdaLR(opt, [lambda t: 0.5 ** t, _Warmup(4)])

    opt_a, a = make()
    a.lr_lambdas[1].steps = 10
    for _ in range(3):
        a.step()
    sd = a.state_dict()
    assert sd["lr_lambdas"] == [None, {"steps": 10}]
    opt_b, b = make()
    b.load_state_dict(sd)
    assert b.lr_lambdas[1].steps == 10 and callable(b.lr_lambdas[0])
    assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]
    for _ in range(5):
        a.step()
        b.step()
        assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]


NEW_SCHEDULES = GROUP_SCHEDULES + [
    ("plateau", lambda o: optim.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=1), None)]


@pytest.mark.parametrize("case", NEW_SCHEDULES, ids=[c[0] for c in NEW_SCHEDULES])
def test_new_schedules_state_dict_resumes_the_same_sequence_through_a_checkpoint(case, tmp_path):
    from fastconv.checkpoint import load_checkpoint, save_checkpoint

    _, make, _ = case
    metrics = _plateau_metrics(1, 40)

    def fresh():
        opt = optim.SGD([{"params": [nn.Parameter(np.zeros(2))], "lr": lr} for lr in GROUP_LRS],
                        lr=0.1, momentum=0.9)
        return opt, make(opt)

    def advance(sched, i):
        sched.step(metrics[i]) if isinstance(sched, optim.ReduceLROnPlateau) else sched.step()

    def lrs(opt):
        return [g["lr"] for g in opt.param_groups]

    opt_a, a = fresh()
    for i in range(17):
        advance(a, i)
    # the optimiser's groups (their lr) and the schedule, saved and loaded as fit saves them
    save_checkpoint(tmp_path / "s.npz", {"optimizer": opt_a.state_dict(), "scheduler": a.state_dict()})
    state = load_checkpoint(tmp_path / "s.npz")
    opt_b, b = fresh()
    opt_b.load_state_dict(state["optimizer"])
    b.load_state_dict(state["scheduler"])
    assert lrs(opt_b) == lrs(opt_a) and b.last_epoch == a.last_epoch
    # the schedule's state alone also restores the rates (into a fresh optimiser)
    opt_c, c = fresh()
    c.load_state_dict(a.state_dict())
    assert lrs(opt_c) == lrs(opt_a)
    for i in range(17, 40):
        for s in (a, b, c):
            advance(s, i)
        assert lrs(opt_a) == lrs(opt_b) == lrs(opt_c), i


def test_new_schedules_validation():
    opt = optim.SGD([nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))], lr=0.1)
    two = optim.SGD([{"params": [nn.Parameter(np.zeros(1))]},
                     {"params": [nn.Parameter(np.zeros(1))]}], lr=0.1)
    cases = [
        (lambda: optim.MultiStepLR(opt, [-1, 3]), ValueError, "milestone"),
        (lambda: optim.MultiStepLR(opt, [1.5]), ValueError, "milestone"),
        (lambda: optim.MultiStepLR(opt, 5), TypeError, "milestones"),
        (lambda: optim.MultiStepLR(opt, [5], gamma="x"), ValueError, "gamma"),
        (lambda: optim.MultiStepLR("opt", [5]), TypeError, "Optimizer"),
        (lambda: optim.LambdaLR(opt, 0.5), TypeError, "lr_lambda"),
        (lambda: optim.LambdaLR(two, [lambda t: 1.0]), ValueError, "expected 2 lr_lambdas"),
        (lambda: optim.LambdaLR(two, [lambda t: 1.0, 3]), TypeError, "lr_lambda"),
        (lambda: optim.LambdaLR(None, lambda t: 1.0), TypeError, "Optimizer"),
        (lambda: optim.CosineAnnealingWarmRestarts(opt, 0), ValueError, "T_0"),
        (lambda: optim.CosineAnnealingWarmRestarts(opt, 2.5), ValueError, "T_0"),
        (lambda: optim.CosineAnnealingWarmRestarts(opt, 3, T_mult=0), ValueError, "T_mult"),
        (lambda: optim.CosineAnnealingWarmRestarts(opt, 3, T_mult=1.5), ValueError, "T_mult"),
        (lambda: optim.CosineAnnealingWarmRestarts(opt, 3, eta_min="0"), ValueError, "eta_min"),
        (lambda: optim.CosineAnnealingWarmRestarts(opt, 3).step(-1), ValueError, "epoch"),
        (lambda: optim.ReduceLROnPlateau(opt, factor=1.0), ValueError, "factor"),
        (lambda: optim.ReduceLROnPlateau(opt, factor=-0.1), ValueError, "factor"),
        (lambda: optim.ReduceLROnPlateau(opt, mode="avg"), ValueError, "mode"),
        (lambda: optim.ReduceLROnPlateau(opt, threshold_mode="pct"), ValueError,
         "threshold_mode"),
        (lambda: optim.ReduceLROnPlateau(opt, patience=-1), ValueError, "patience"),
        (lambda: optim.ReduceLROnPlateau(opt, patience=1.5), ValueError, "patience"),
        (lambda: optim.ReduceLROnPlateau(opt, cooldown=-2), ValueError, "cooldown"),
        (lambda: optim.ReduceLROnPlateau(opt, threshold=-1e-4), ValueError, "threshold"),
        (lambda: optim.ReduceLROnPlateau(opt, eps=-1.0), ValueError, "eps"),
        (lambda: optim.ReduceLROnPlateau(opt, min_lr=-0.1), ValueError, "min_lr"),
        (lambda: optim.ReduceLROnPlateau(two, min_lr=[0.1]), ValueError, "expected 2 min_lrs"),
        (lambda: optim.ReduceLROnPlateau("opt"), TypeError, "Optimizer"),
        (lambda: optim.LinearWarmup(opt, 3, after=optim.ReduceLROnPlateau(opt)), TypeError,
         "ReduceLROnPlateau"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()


def test_torch_raises_on_the_same_bad_arguments(torch):
    # the arguments refused above that torch refuses too, with the same exception type
    lr_scheduler = torch.optim.lr_scheduler
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    two = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)]}], lr=0.1)
    for make, error in [
        (lambda: lr_scheduler.LambdaLR(two, [lambda t: 1.0]), ValueError),
        (lambda: lr_scheduler.CosineAnnealingWarmRestarts(opt, 0), ValueError),
        (lambda: lr_scheduler.CosineAnnealingWarmRestarts(opt, 2.5), ValueError),
        (lambda: lr_scheduler.CosineAnnealingWarmRestarts(opt, 3, T_mult=0), ValueError),
        (lambda: lr_scheduler.CosineAnnealingWarmRestarts(opt, 3, eta_min="0"), ValueError),
        (lambda: lr_scheduler.ReduceLROnPlateau(opt, factor=1.0), ValueError),
        (lambda: lr_scheduler.ReduceLROnPlateau(opt, mode="avg"), ValueError),
        (lambda: lr_scheduler.ReduceLROnPlateau(opt, threshold_mode="pct"), ValueError),
        (lambda: lr_scheduler.ReduceLROnPlateau(two, min_lr=[0.1]), ValueError),
        (lambda: lr_scheduler.ReduceLROnPlateau("opt"), TypeError),
    ]:
        with pytest.raises(error):
            make()


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_load_torch_state_with_maximize_is_refused(torch, name):
    """torch's maximize=True ascends the gradient; fastconv's optimisers only minimise, so
    taking the state would silently turn the run around."""
    tp = torch.zeros(3, requires_grad=True)
    topt = getattr(torch.optim, name)([tp], lr=0.1, maximize=True)
    opt = getattr(optim, name)([nn.Parameter(np.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="maximize=True"):
        opt.load_state_dict(topt.state_dict())
    opt.load_state_dict(getattr(torch.optim, name)([tp], lr=0.2).state_dict())  # maximize=False
    assert opt.param_groups[0]["lr"] == 0.2 and "maximize" not in opt.param_groups[0]


TORCH_STATE_SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 9], gamma=0.3)),
    ("MultiStepLR", dict(milestones=[9, 2, 9, 12], gamma=0.3)),  # its Counter counts 9 twice
    ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2)),
    ("OneCycleLR", dict(max_lr=0.3, total_steps=20)),
    ("OneCycleLR", dict(max_lr=0.3, total_steps=20, three_phase=True, anneal_strategy="linear")),
    ("OneCycleLR", dict(max_lr=0.3, total_steps=20, cycle_momentum=False)),
]


@pytest.mark.parametrize("name,kwargs", TORCH_STATE_SCHEDULES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_STATE_SCHEDULES)])
def test_schedule_loads_torch_state_of_its_kind_and_continues_as_torch(torch, name, kwargs):
    tp = torch.zeros(2, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    for _ in range(7):
        topt.step()
        tsched.step()
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    sched = getattr(optim, name)(opt, **kwargs)
    opt.load_state_dict(topt.state_dict())
    sched.load_state_dict(tsched.state_dict())
    assert sched.last_epoch == tsched.last_epoch == 7
    for _ in range(8):
        tsched.step()
        sched.step()
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
        np.testing.assert_allclose(opt.param_groups[0]["momentum"],
                                   topt.param_groups[0]["momentum"], rtol=1e-12)


def test_schedule_refuses_another_kind_of_schedules_state(torch):
    """torch's load_state_dict adds a foreign schedule's attributes silently; fastconv says so."""
    tp = torch.zeros(2, requires_grad=True)
    tcos = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([tp], lr=0.1), T_max=5)
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    step = optim.StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match=r"StepLR.load_state_dict: the state has \['T_max', "
                                         r"'eta_min'\]"):
        step.load_state_dict(tcos.state_dict())
    cos = optim.CosineAnnealingLR(optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1), T_max=5)
    with pytest.raises(ValueError, match="another schedule's state"):
        optim.ExponentialLR(opt, gamma=0.5).load_state_dict(cos.state_dict())
    assert step.last_epoch == 0 and not hasattr(step, "T_max")  # nothing half-loaded


def test_schedules_are_also_where_torch_keeps_them():
    """``fastconv.optim.lr_scheduler.OneCycleLR`` as ``torch.optim.lr_scheduler.OneCycleLR``."""
    from fastconv.optim import lr_scheduler

    for name in lr_scheduler.__all__:
        assert getattr(lr_scheduler, name) is getattr(optim, name)
        assert name in optim.__all__
    assert issubclass(lr_scheduler.OneCycleLR, lr_scheduler.LRScheduler)


_KINDS = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.1),
    "SGD+momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "RMSprop": lambda ps: optim.RMSprop(ps, lr=0.01, centered=True, momentum=0.5),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-3, amsgrad=True),
    "AdamW": lambda ps: optim.AdamW(ps, lr=1e-3),
}


@pytest.mark.parametrize("stepped", [False, True], ids=["fresh", "stepped"])
@pytest.mark.parametrize("saved", sorted(_KINDS))
@pytest.mark.parametrize("loading", sorted(_KINDS))
def test_state_dict_of_another_optimiser_is_refused(saved, loading, stepped):
    """Another kind's state dict (its state entries or hyper-parameters) is a ValueError and
    changes nothing; the same kind, and Adam <-> AdamW (torch's Adam takes AdamW's state dict
    too: decoupled_weight_decay is one of its options), load."""
    model = nn.Linear(3, 2, rng=0)
    src = _KINDS[saved](model.parameters())
    if stepped:
        for p in model.parameters():
            p.grad[...] = 1.0
        src.step()
    dst = _KINDS[loading](nn.Linear(3, 2, rng=1).parameters())
    groups_before = [{k: v for k, v in g.items() if k != "params"} for g in dst.param_groups]
    same = saved.split("+")[0] == loading.split("+")[0] or {saved, loading} == {"Adam", "AdamW"}
    if same:
        dst.load_state_dict(src.state_dict())
        return
    with pytest.raises(ValueError, match=f"{type(dst).__name__}.load_state_dict: .*another optimiser"):
        dst.load_state_dict(src.state_dict())
    assert dst.state == {}
    assert [{k: v for k, v in g.items() if k != "params"} for g in dst.param_groups] == groups_before
