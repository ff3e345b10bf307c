"""airbench94's network: the whitening init against a NumPy eigendecomposition and airbench's
own code, the tree against the PyTorch port (benchmarks/airbench_torch.py, airbench's source
ported to the CPU), and training steps of the whole recipe (optimiser groups, schedule, summed
smoothed loss, BatchNorm momentum) against it from the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import init, models, nn
from fastconv.losses import CrossEntropyLoss
from fastconv.models.airbench import patch_covariance, whitening_weights
from fastconv.training.recipes import Airbench94, airbench94_optimizer, airbench94_schedule

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def port(torch):
    """benchmarks/airbench_torch.py (airbench94 in PyTorch), imported once torch is there."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import airbench_torch
    finally:
        sys.path.remove(str(BENCHMARKS))
    return airbench_torch


def _explicit_patches(x: np.ndarray, k: int) -> np.ndarray:
    """Every k x k patch of x as a row (channel, row, column), by plain loops."""
    n, c, h, w = x.shape
    rows = [x[i, :, y:y + k, z:z + k].reshape(-1) for i in range(n)
            for y in range(h - k + 1) for z in range(w - k + 1)]
    return np.array(rows, np.float64)


def test_patch_covariance_is_the_uncentred_covariance_of_all_patches(rng):
    x = rng.standard_normal((7, 3, 6, 5)) + 0.5
    p = _explicit_patches(x, 2)
    np.testing.assert_allclose(patch_covariance(x, (2, 2), chunk=3), p.T @ p / len(p),
                               rtol=1e-12, atol=1e-12)


def test_whitening_weights_against_numpy_eigendecomposition(rng):
    # correlated channels, as in images
    x = rng.standard_normal((20, 3, 9, 9))
    x[:, 1] += 0.8 * x[:, 0]
    x[:, :, 1:] += 0.5 * x[:, :, :-1]
    p = _explicit_patches(x, 2)
    lam, vec = np.linalg.eigh(p.T @ p / len(p))
    order = np.argsort(lam)[::-1]
    eps = 5e-4
    want = (vec[:, order] / np.sqrt(lam[order] + eps)).T          # (12 filters, 12)
    got = whitening_weights(x, (2, 2), eps)
    assert got.shape == (24, 3, 2, 2)
    flat = got.reshape(24, 12)
    np.testing.assert_array_equal(flat[12:], -flat[:12])          # the +/- pairs
    for k in range(12):                                           # equal up to each sign
        sign = np.sign(flat[k] @ want[k])
        np.testing.assert_allclose(flat[k], sign * want[k], rtol=1e-9, atol=1e-9)
    # the first 12 filters whiten the patches: their outputs' covariance is
    # diag(lambda / (lambda + eps)), the identity up to eps
    out = p @ flat[:12].T
    cov = out.T @ out / len(out)
    np.testing.assert_allclose(cov, np.diag(lam[order] / (lam[order] + eps)), atol=1e-9)


def test_whitening_init_matches_airbench_code(port, torch, rng):
    x = rng.standard_normal((30, 3, 12, 12))
    x[:, 2] -= 0.6 * x[:, 1]
    model = models.airbench94(seed=0, dtype=np.float64)
    models.init_whitening_conv(model[0], x)
    tconv = port.Conv(3, 24, 2, padding=0, bias=True).double()
    port.init_whitening_conv(tconv, torch.from_numpy(x))
    ours = model[0].weight.data.reshape(24, 12)
    theirs = tconv.weight.data.numpy().reshape(24, 12)
    for k in range(12):
        sign = np.sign(ours[k] @ theirs[k])
        np.testing.assert_allclose(ours[k], sign * theirs[k], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(ours[k + 12], sign * theirs[k + 12], rtol=1e-8, atol=1e-8)


def test_init_whitening_conv_refuses_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="output channels"):
        models.init_whitening_conv(nn.Conv2d(3, 12, 2), rng.standard_normal((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"expected images \(N, 3, H, W\)"):
        models.init_whitening_conv(nn.Conv2d(3, 24, 2), rng.standard_normal((2, 4, 8, 8)))


def test_dirac_matches_torch(torch):
    for shape, groups in (((6, 4, 3, 3), 1), ((4, 6, 3, 3), 1), ((8, 2, 3, 3), 2),
                          ((5, 3, 3), 1), ((4, 4, 1, 3, 3), 2)):
        w = np.full(shape, 7.0, np.float32)
        t = torch.full(shape, 7.0)
        init.dirac_(w, groups)
        torch.nn.init.dirac_(t, groups)
        np.testing.assert_array_equal(w, t.numpy())
    with pytest.raises(ValueError, match="groups"):
        init.dirac_(np.zeros((6, 4, 3, 3), np.float32), groups=4)


def test_tree_parameters_and_frozen_flags_match_the_port(port):
    model = models.airbench94(seed=3)
    tnet = port.make_net()
    assert list(model.state_dict()) == list(tnet.state_dict())
    assert model.num_parameters() == sum(p.numel() for p in tnet.parameters()) == 1_972_792
    ours = {k for k, p in model.named_parameters() if p.requires_grad}
    theirs = {k for k, p in tnet.named_parameters() if p.requires_grad}
    assert ours == theirs
    assert "0.weight" not in ours and "2.norm1.weight" not in ours and "2.norm1.bias" in ours
    bn = model[3].norm2
    assert (bn.eps, bn.momentum) == (1e-12, 0.4)
    # dirac init: the first c_in filters of every 3x3 conv pass their input through
    for conv in (model[2].conv1, model[3].conv1):
        eye = np.zeros((conv.in_channels,) + conv.weight.data.shape[1:], np.float32)
        init.dirac_(eye)
        np.testing.assert_array_equal(conv.weight.data[:conv.in_channels], eye)
        assert np.abs(conv.weight.data[conv.in_channels:]).max() > 0


def _step_fastconv(model, opt, sched, crit, x, y) -> float:
    model.train()
    model.zero_grad()
    value = crit.forward(model.forward(x), y)
    model.backward(crit.backward(), input_grad=False)
    opt.step()
    sched.step()
    return value


@pytest.mark.parametrize("dtype, loss_rtol, update_rtol", [
    (np.float64, 1e-12, 1e-8),
    # float32: the two implementations round differently (GEMM orders, Winograd); BatchNorm
    # with eps 1e-12 amplifies that in low-variance channels
    (np.float32, 1e-5, 2e-2),
])
def test_training_steps_match_the_pytorch_port(port, torch, rng, dtype, loss_rtol, update_rtol):
    """Three steps of the whole recipe (two optimiser groups, warm-up schedule, summed loss
    with label smoothing, BatchNorm running statistics) from the same weights: the losses and
    the change of every state entry agree."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    n, total = 12, 20
    x = rng.standard_normal((n, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, n)
    model = models.airbench94(seed=1, dtype=dtype)
    models.init_whitening_conv(model[0], x)
    tnet = port.make_net(tdtype)
    tnet.load_state_dict(port.torch_state(model, tdtype))
    tnet.train()
    before = {k: np.array(v, np.float64) for k, v in model.state_dict().items()}

    hyp = Airbench94(batch_size=n)
    opt = airbench94_optimizer(model, hyp)
    sched = airbench94_schedule(opt, total, hyp)
    crit = CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
    topt = port.make_optimizer(tnet, batch_size=n)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: port.lr_factor(s, total))
    tcrit = port.loss_fn()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(3):
        ours = _step_fastconv(model, opt, sched, crit, x, y)
        theirs = port.train_step(tnet, topt, tsched, xt, yt, tcrit)
        assert ours == pytest.approx(theirs, rel=loss_rtol)
    tstate = tnet.state_dict()
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == int(tstate[k]) == 3
            continue
        change = np.asarray(v, np.float64) - before[k]
        tchange = tstate[k].double().numpy() - before[k]
        scale = np.abs(tchange).max()
        if scale == 0:                           # frozen: the whitening and BN weights
            assert np.abs(change).max() == 0, k
            continue
        assert np.abs(change - tchange).max() <= update_rtol * scale, k
