"""airbench94's training pieces: the schedule against airbench's formula, the optimiser groups,
lookahead and test-time augmentation against small hand-computed cases, the summed smoothed
loss against PyTorch, the derandomised flip and reflect translation, fit's max_steps and
TrainForEpochs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fastconv import models, nn
from fastconv.data import DataLoader, augment_batch
from fastconv.losses import CrossEntropyLoss
from fastconv.optim import SGD
from fastconv.training import Callback, Lookahead, TrainForEpochs, fit, tta_logits
from fastconv.training.recipes import (Airbench94, airbench94_optimizer, airbench94_recipe,
                                       airbench94_schedule)


def airbench_get_lr(step, total_train_steps):
    """legacy/airbench94.py's get_lr, verbatim."""
    warmup_steps = int(total_train_steps * 0.23)
    warmdown_steps = total_train_steps - warmup_steps
    if step < warmup_steps:
        frac = step / warmup_steps
        return 0.2 * (1 - frac) + 1.0 * frac
    else:
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac


@pytest.mark.parametrize("total", [476, 37, 5, 2])
def test_schedule_is_airbench_formula(total):
    model = models.airbench94(seed=0, widths=(8, 8, 8))
    opt = airbench94_optimizer(model)
    base = [g["lr"] for g in opt.param_groups]
    sched = airbench94_schedule(opt, total)
    for step in range(total):
        factor = airbench_get_lr(step, total)
        for g, b in zip(opt.param_groups, base):
            assert g["lr"] == pytest.approx(b * factor, rel=1e-12, abs=0)
        sched.step()


def test_optimizer_groups_are_airbench_decoupled_hyperparameters():
    model = models.airbench94(seed=0, widths=(8, 16, 16))
    hyp = Airbench94(batch_size=512)
    opt = airbench94_optimizer(model, hyp)
    scale = 1024 * (1 + 1 / (1 - 0.85))
    lr, wd = 11.5 / scale, 0.0153 * 512 / scale
    norm, other = opt.param_groups
    assert norm["lr"] == pytest.approx(64 * lr) and other["lr"] == pytest.approx(lr)
    assert norm["weight_decay"] == pytest.approx(wd / (64 * lr))
    assert other["weight_decay"] == pytest.approx(wd / lr)
    assert norm["momentum"] == other["momentum"] == 0.85 and norm["nesterov"]
    names = {id(p): k for k, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in norm["params"]) == sorted(
        f"{g}.norm{i}.bias" for g in (2, 3, 4) for i in (1, 2))
    assert sorted(names[id(p)] for p in other["params"]) == sorted(
        ["0.bias", "7.weight"] + [f"{g}.conv{i}.weight" for g in (2, 3, 4) for i in (1, 2)])


def test_summed_label_smoothed_loss_matches_torch(torch, rng):
    z = rng.standard_normal((9, 10)) * 3
    t = rng.integers(0, 10, 9)
    for dtype in (np.float64, np.float32):
        crit = CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
        value = crit.forward(z.astype(dtype), t)
        grad = crit.backward()
        zt = torch.tensor(z.astype(dtype), requires_grad=True)
        tcrit = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
        lt = tcrit(zt, torch.from_numpy(t))
        lt.backward()
        tol = 1e-12 if dtype == np.float64 else 1e-5
        assert value == pytest.approx(lt.item(), rel=tol)
        assert grad.dtype == dtype
        np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=tol, atol=tol)
    assert CrossEntropyLoss(reduction="sum").forward(np.zeros((0, 3)), np.zeros(0, int)) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")


# -- lookahead ----------------------------------------------------------------------------------

def test_lookahead_hand_computed():
    bn = nn.BatchNorm1d(1)                          # weight, bias, running stats, int counter
    model = nn.Sequential(nn.Linear(1, 1, bias=False), bn)
    w = model[0].weight.data
    w[...] = 1.0
    bn.running_mean[...] = 0.0
    bn.num_batches_tracked[...] = 7
    la = Lookahead(total_steps=10, every=5)
    la.set_trainer(SimpleNamespace(model=model, step=0))
    la.on_train_begin({})
    for step in range(1, 11):
        la.trainer.step = step
        w[...] = 1.0 + step                          # what the optimiser would have made
        bn.running_mean[...] = 2.0 * step
        la.on_batch_end(step - 1, {})
        if step == 5:
            d = 0.95 ** 5 * 0.5 ** 3
            slow5 = 1.0 + (1 - d) * (6.0 - 1.0)          # lerp(1, 6, 1 - d)
            assert w[0, 0] == pytest.approx(slow5, rel=1e-6)
            assert bn.running_mean[0] == pytest.approx((1 - d) * 10.0, rel=1e-6)
        elif step < 10:
            assert w[0, 0] == 1.0 + step                 # untouched between updates
    d = 0.95 ** 5                                        # step 10: decay(T), then the sync
    assert w[0, 0] == pytest.approx(slow5 + (1 - d) * (11.0 - slow5), rel=1e-6)
    assert la.slow["0.weight"][0, 0] == w[0, 0]
    assert int(bn.num_batches_tracked) == 7              # integer buffers do not follow
    assert bn.weight.data[0] == 1.0                      # nor does what did not move


def test_lookahead_decay_is_airbench_schedule():
    la = Lookahead(total_steps=476)
    for t in (5, 100, 475, 476):
        assert la.decay(t) == pytest.approx(0.95 ** 5 * (t / 476) ** 3, rel=1e-12)
    with pytest.raises(ValueError, match="every"):
        Lookahead(10, every=0)


# -- test-time augmentation ------------------------------------------------------------------

def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """img (C, H, W) moved so that pixel (i, j) shows img[i + dy, j + dx], reflecting at the
    border (1-pixel reflect padding, as airbench's translated views), by plain loops."""
    c, h, w = img.shape
    out = np.empty_like(img)

    def reflect(k, n):
        return -k if k < 0 else (2 * (n - 1) - k if k >= n else k)

    for i in range(h):
        for j in range(w):
            out[:, i, j] = img[:, reflect(i + dy, h), reflect(j + dx, w)]
    return out


def test_tta_hand_computed_on_a_linear_model(rng):
    """With a linear model, TTA level 2 is the model of the weighted mean of the six views:
    1/4 each for the image and its mirror, 1/8 each for the up-left and down-right shifts
    and their mirrors."""
    x = rng.standard_normal((3, 2, 4, 5))
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 3, bias=False, dtype=np.float64, rng=0))
    W = model[1].weight.data
    for level in (0, 1, 2):
        got = tta_logits(model, x, level, batch_size=2)
        for n in range(3):
            img = x[n]
            if level == 0:
                views = [(img, 1.0)]
            elif level == 1:
                views = [(img, 0.5), (img[..., ::-1], 0.5)]
            else:
                a, b = _shift(img, -1, -1), _shift(img, 1, 1)
                views = [(img, 0.25), (img[..., ::-1], 0.25), (a, 0.125), (a[..., ::-1], 0.125),
                         (b, 0.125), (b[..., ::-1], 0.125)]
            want = sum(wt * (W @ v.reshape(-1)) for v, wt in views)
            np.testing.assert_allclose(got[n], want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="level"):
        tta_logits(model, x, 3)


def test_tta_matches_airbench_infer(torch, rng):
    """Against airbench's ``infer`` (benchmarks/airbench_torch.py) on the torch twin of a
    narrow airbench94 (fastconv.export.to_torch), float64."""
    import sys
    from pathlib import Path

    from fastconv.export import to_torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import airbench_torch as port
    finally:
        sys.path.pop(0)
    x = rng.standard_normal((5, 3, 32, 32))
    model = models.airbench94(seed=2, dtype=np.float64, widths=(8, 8, 8))
    tnet = to_torch(model)
    for level in (0, 1, 2):
        want = port.infer(tnet, torch.from_numpy(x), level, batch_size=2).numpy()
        np.testing.assert_allclose(tta_logits(model, x, level, batch_size=3), want,
                                   rtol=1e-10, atol=1e-10)


# -- augmentation -------------------------------------------------------------------------------

def test_alternate_flip_flips_each_image_every_other_epoch(rng):
    x = rng.integers(0, 256, (10, 1, 3, 4)).astype(np.uint8)
    y = np.arange(10)
    loader = DataLoader(x, y, 5, shuffle=True, augment=True, pad=0, flip="alternate",
                        mean=None, std=None, seed=3)
    base = loader.base_flips()
    assert base.dtype == np.bool_ and 0 < base.sum() < 10
    for epoch in range(3):
        for i in range(2):
            xb, yb = loader.make_batch(epoch, i)
            for img, k in zip(xb, yb):
                flipped = base[k] ^ bool(epoch % 2)
                want = x[k][..., ::-1] if flipped else x[k]
                np.testing.assert_allclose(img, want / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="flip"):
        DataLoader(x, y, 5, flip="sometimes")


def test_reflect_translation_crops_the_reflect_padded_image(rng):
    x = rng.standard_normal((6, 2, 5, 5))
    out = augment_batch(x, np.random.default_rng(0), pad=2, flip=False, padding_mode="reflect")
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    oy_ox = np.random.default_rng(0).integers(0, 5, size=(2, 6))
    for n in range(6):
        oy, ox = oy_ox[0, n], oy_ox[1, n]
        np.testing.assert_array_equal(out[n], padded[n, :, oy:oy + 5, ox:ox + 5])
    flips = np.array([True, False, True, False, False, True])
    out2 = augment_batch(x, np.random.default_rng(0), pad=2, padding_mode="reflect", flips=flips)
    np.testing.assert_array_equal(out2[flips], out[flips][..., ::-1])
    np.testing.assert_array_equal(out2[~flips], out[~flips])
    with pytest.raises(ValueError, match="reflect padding needs pad < H"):
        augment_batch(x, np.random.default_rng(0), pad=5, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        augment_batch(x, np.random.default_rng(0), padding_mode="edge")


# -- fit(max_steps) and TrainForEpochs ----------------------------------------------------------

class _Record(Callback):
    def __init__(self, param):
        self.param = param
        self.flags = []

    def on_epoch_begin(self, epoch, logs):
        self.flags.append(self.param.requires_grad)


def test_max_steps_ends_the_last_epoch_early_and_train_for_epochs_freezes(rng):
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    model = nn.Sequential(nn.Linear(3, 2, rng=0))
    bias = model[0].bias
    opt = SGD(model.parameters(), lr=0.1)
    frozen_at = {}

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs):
            frozen_at[epoch] = bias.data.copy()

    rec = _Record(bias)
    loader = DataLoader(x, y, 8, shuffle=True, mean=None, std=None)
    hist = fit(model, loader, math.ceil(2.5), optimizer=opt, progress=False,
               max_steps=math.ceil(2.5 * 5),
               callbacks=[TrainForEpochs([bias], 1), rec, Snapshot()])
    assert [r["step"] for r in hist.rows] == [5, 10, 13]
    assert rec.flags == [True, False, False]
    np.testing.assert_array_equal(bias.data, frozen_at[0])   # not updated after epoch 1
    with pytest.raises(ValueError, match="max_steps"):
        fit(model, loader, 1, optimizer=opt, progress=False, max_steps=0)


def test_recipe_builds_airbench94_pieces(rng):
    x = rng.integers(0, 256, (300, 3, 32, 32)).astype(np.uint8)
    y = rng.integers(0, 10, 300)
    run = airbench94_recipe(x, y, Airbench94(batch_size=64, whitening_images=50), seed=0)
    assert (len(run.train), run.epochs, run.max_steps) == (4, 10, math.ceil(4 * 9.9))
    assert run.train.drop_last and run.train.flip == "alternate"
    assert run.train.padding_mode == "reflect" and run.train.pad == 2
    assert run.loss.reduction == "sum" and run.loss.label_smoothing == 0.2
    assert not run.model[0].weight.requires_grad
    w = run.model[0].weight.data.reshape(24, -1)
    np.testing.assert_array_equal(w[12:], -w[:12])
    with pytest.raises(ValueError, match="no full batch"):
        airbench94_recipe(x[:10], y[:10], Airbench94(whitening_images=5))
