"""fastconv.training.fit / evaluate / predict on small models and synthetic data: what they
compute (against a hand-written loop bit for bit, and against PyTorch), what they record, and
the errors bad arguments give. Callbacks, resume and progress: test_callbacks.py."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import data as D
from fastconv import losses, nn, optim
from fastconv.training import History, evaluate, fit, predict

N_CLASSES = 4


def make_data(n: int = 64, seed: int = 0, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 8, 8) images whose class (0..3) shifts the mean of one channel: learnable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = rng.normal(0, 1, (n, 3, 8, 8))
    x[np.arange(n), y % 3] += 1.5 * (1 + y // 3)[:, None, None]
    return x.astype(dtype), y.astype(np.int64)


def make_model(seed: int = 0, dtype=np.float32) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, rng=seed, dtype=dtype), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, N_CLASSES, rng=seed + 1, dtype=dtype))


def weights_bytes(model) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# What fit computes
# --------------------------------------------------------------------------------------------

def test_fit_learns_and_records_history():
    x, y = make_data(96)
    xv, yv = make_data(40, seed=1)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    h = fit(model, (x, y), 4, optimizer=opt, val=(xv, yv), batch_size=16, progress=False)
    assert isinstance(h, History) and len(h) == 4
    keys = ["epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
            "images_per_s"]
    assert all(list(row) == keys for row in h.rows)
    assert h.epoch == [1, 2, 3, 4] and [r["step"] for r in h] == [6, 12, 18, 24]
    assert list(h.history) == keys and h.history["loss"] == [r["loss"] for r in h.rows]
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.5                # chance: 0.25
    assert all(0 <= r["accuracy"] <= 1 and r["lr"] == 0.05 for r in h)
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 for r in h)
    # the last row's validation metrics are evaluate's
    assert evaluate(model, (xv, yv)) == pytest.approx(
        {"loss": h.rows[-1]["val_loss"], "accuracy": h.rows[-1]["val_accuracy"]}, rel=1e-12)
    assert "4 epochs" in repr(h)


def _hand_written_epoch(model, loader, opt, sched, crit):
    for xb, yb in loader:
        model.zero_grad()
        value = crit.forward(model.forward(xb), yb)
        model.backward(crit.backward(), input_grad=False)
        opt.step()
        sched.step()
    return value


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_fit_epoch_equals_a_hand_written_loop_bit_for_bit(dtype):
    x, y = make_data(100)
    images = np.clip(x * 40 + 128, 0, 255).astype(np.uint8)
    runs = []
    for use_fit in (True, False):
        model = make_model(seed=3, dtype=dtype)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
        loader = D.DataLoader(images, y, 16, shuffle=True, augment=True, pad=1, seed=7,
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        sched = optim.OneCycleLR(opt, max_lr=0.05, total_steps=len(loader))
        crit = losses.CrossEntropyLoss()
        if use_fit:
            fit(model, loader, 1, optimizer=opt, scheduler=sched, loss=crit, progress=False)
        else:
            model.train()
            _hand_written_epoch(model, loader, opt, sched, crit)
        runs.append(model)
    assert runs[0].dtype == dtype
    assert weights_bytes(runs[0]) == weights_bytes(runs[1])


def test_fit_on_arrays_batches_like_a_dataloader():
    x, y = make_data(50, dtype=np.float64)
    a, b = make_model(dtype=np.float64), make_model(dtype=np.float64)
    opt_a = optim.SGD(a.parameters(), lr=0.1)
    fit(a, (x, y), 2, optimizer=opt_a, batch_size=16, seed=4, progress=False)
    opt_b = optim.SGD(b.parameters(), lr=0.1)
    loader = D.DataLoader(x, y, 16, shuffle=True, seed=4, mean=None, std=None)
    b.train()
    crit = losses.CrossEntropyLoss()
    for _ in range(2):
        for xb, yb in loader:
            assert xb.dtype == np.float64                      # float64 data stays float64
            b.zero_grad()
            crit.forward(b.forward(xb), yb)
            b.backward(crit.backward(), input_grad=False)
            opt_b.step()
    assert weights_bytes(a) == weights_bytes(b)


def test_fit_matches_pytorch_sgd(torch):
    x, y = make_data(32)
    model = make_model(seed=5)
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(6 * 4 * 4, N_CLASSES))
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=1e-3)
    fit(model, (x, y), 2, optimizer=opt, batch_size=8, shuffle=False, progress=False)
    crit = torch.nn.CrossEntropyLoss()
    for _ in range(2):
        for i in range(0, 32, 8):
            topt.zero_grad()
            crit(tmodel(torch.from_numpy(x[i:i + 8])), torch.from_numpy(y[i:i + 8])).backward()
            topt.step()
    for k, v in tmodel.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=k)


def test_fit_default_optimizer_and_loss_train():
    x, y = make_data(64)
    model = make_model()
    before = weights_bytes(model)
    h = fit(model, (x, y), 3, progress=False)                  # Adam(lr=1e-3), cross-entropy
    assert weights_bytes(model) != before
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_fit_regression_targets_without_accuracy():
    # a denoising autoencoder's shape of problem: targets are images, MSE loss
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, (48, 2, 6, 6)).astype(np.float32)
    noisy = clean + rng.normal(0, 0.3, clean.shape).astype(np.float32)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=0))
    h = fit(model, (noisy, clean), 5, optimizer=optim.Adam(model.parameters(), lr=0.01),
            loss=losses.MSELoss(), val=(noisy[:16], clean[:16]), batch_size=8, progress=False)
    assert "accuracy" not in h.rows[0] and "val_accuracy" not in h.rows[0]
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert set(evaluate(model, (noisy, clean), loss=losses.MSELoss())) == {"loss"}


def test_a_summed_loss_is_logged_per_sample():
    x, y = make_data(50)
    model = make_model()
    mean = evaluate(model, (x, y), batch_size=16)
    summed = evaluate(model, (x, y), loss=losses.CrossEntropyLoss(reduction="sum"), batch_size=16)
    assert summed["loss"] == pytest.approx(mean["loss"], rel=1e-6)
    h = fit(model, (x, y), 1, optimizer=optim.SGD(model.parameters(), lr=1e-4),
            loss=losses.CrossEntropyLoss(reduction="sum"), batch_size=16, progress=False)
    assert 0.5 < h.rows[0]["loss"] < 5                       # per sample, not per batch


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_scheduler_interval(interval):
    x, y = make_data(40)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.08)
    per = 1 if interval == "epoch" else 3                     # 40 / 16 -> 3 batches per epoch
    sched = optim.StepLR(opt, step_size=per, gamma=0.5)
    h = fit(model, (x, y), 3, optimizer=opt, scheduler=sched, scheduler_interval=interval,
            batch_size=16, progress=False)
    assert h.history["lr"] == [0.04, 0.02, 0.01]              # after each epoch's steps
    assert sched.last_epoch == 3 * per


def test_diverging_loss_raises():
    class NaNLoss(losses.CrossEntropyLoss):
        def forward(self, logits, targets):
            super().forward(logits, targets)
            return float("nan")

    x, y = make_data(32)
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1 .*lower the learning rate"):
        fit(make_model(), (x, y), 2, loss=NaNLoss(), progress=False)


# --------------------------------------------------------------------------------------------
# evaluate and predict
# --------------------------------------------------------------------------------------------

def test_evaluate_matches_the_outputs():
    x, y = make_data(70)
    model = make_model()
    logits = model.eval().forward(x)
    model.train()
    crit = losses.CrossEntropyLoss()
    result = evaluate(model, (x, y), batch_size=32)           # batches of 32, 32, 6
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(crit.forward(logits, y), rel=1e-6)
    assert result["accuracy"] == np.mean(logits.argmax(1) == y)
    assert model.training                                      # mode restored


def test_predict_arrays_and_loaders():
    x, y = make_data(70)
    model = make_model()
    expected = model.eval().forward(x)
    model.train()
    out = predict(model, x, batch_size=32)
    assert out.shape == (70, N_CLASSES) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)               # eval mode, same kernels
    assert model.training
    images = np.clip(x * 40 + 128, 0, 255).astype(np.uint8)
    loader = D.DataLoader(images, y, 16)
    np.testing.assert_array_equal(predict(model, loader),
                                  predict(model, D.to_float32(images)))
    assert loader.state_dict() == {"seed": 0, "epoch": 0, "batch": 0}   # position kept


def test_predict_on_one_unbatched_image_says_to_add_the_batch_axis():
    # predict(model, x[0]) failed deep inside: "layer 4 of Sequential: Linear(...): expected
    # input of shape (N, 96), got (6, 16)" (Flatten keeps the unbatched channels apart)
    x, _ = make_data(2)
    model = make_model()
    with pytest.raises(ValueError, match=r"predict: .*shape \(3, 8, 8\); if x is one image, "
                                         r"give a batch of one, x\[None\]"):
        predict(model, x[0])
    assert predict(model, x[:1]).shape == (1, N_CLASSES)
    conv = nn.Conv2d(3, 4, 3, rng=0)                           # a model that takes it unbatched
    np.testing.assert_array_equal(predict(conv, x[0]), predict(conv, x[:1])[0])


def test_a_loss_or_scheduler_class_instead_of_an_object_is_refused_up_front():
    # loss=CrossEntropyLoss (no parentheses) failed in the label check with "got dtype <U14
    # and shape ()"; scheduler=optim.StepLR in the first step with "LRScheduler.step()
    # missing 1 required positional argument: 'self'"
    x, y = make_data(8)
    model = make_model()
    before = weights_bytes(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"fit: loss must be a loss object, got the class "
                                        r"CrossEntropyLoss: write loss=CrossEntropyLoss\(\)"):
        fit(model, (x, y), 1, optimizer=opt, loss=losses.CrossEntropyLoss, progress=False)
    with pytest.raises(TypeError, match=r"evaluate: loss must be a loss object.*MSELoss\(\)"):
        evaluate(model, (x, y), loss=losses.MSELoss)
    with pytest.raises(TypeError, match=r"fit: scheduler must be .*got the class StepLR: "
                                        r"build it, e.g. scheduler=StepLR\(optimizer, \.\.\.\)"):
        fit(model, (x, y), 1, optimizer=opt, scheduler=optim.StepLR, progress=False)
    assert weights_bytes(model) == before                      # refused before any step


def test_modes_are_restored_module_by_module():
    x, y = make_data(32)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.5, rng=1), nn.Linear(144, N_CLASSES, rng=2))
    model[1].eval()                                            # a frozen-statistics BatchNorm

    class Modes(__import__("fastconv.training", fromlist=["Callback"]).Callback):
        seen = []

        def on_batch_begin(self, batch, logs):
            self.seen.append(model[4].training)

    fit(model, (x, y), 1, optimizer=optim.SGD(model.parameters(), lr=0.01),
        callbacks=[Modes()], val=(x, y), progress=False)
    assert Modes.seen and all(Modes.seen)                      # training mode for the steps
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True, True]
    model.eval()
    evaluate(model, (x, y))
    predict(model, x)
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------------------------
# Bad arguments: one clear error before any training
# --------------------------------------------------------------------------------------------

def _bad_fit_cases():
    x, y = make_data(20)
    other = make_model(seed=9)
    return [
        (lambda m: fit("model", (x, y), 1), TypeError, "must be a fastconv.nn.Module"),
        (lambda m: fit(m, (x, y), 0), ValueError, "epochs must be an int >= 1, got 0"),
        (lambda m: fit(m, (x, y), 2.5), ValueError, "epochs"),
        (lambda m: fit(m, (x, y), True), ValueError, "epochs"),
        (lambda m: fit(m, ((x * 50).astype(np.uint8), y), 1), TypeError, "to_float32"),
        (lambda m: fit(m, (x.astype(np.int64), y), 1), TypeError,
         "x must hold float32 or float64 values, got dtype int64"),
        (lambda m: fit(m, (x[0, 0, 0], y[:8]), 1), ValueError, "batch axis"),
        (lambda m: fit(m, (x[:0], y[:0]), 1), ValueError, "no samples"),
        (lambda m: fit(m, (x, y[:19]), 1), ValueError,
         r"x holds 20 samples but y holds 19 \(shapes \(20, 3, 8, 8\) and \(19,\)\)"),
        (lambda m: fit(m, (x, y.astype(np.float64)), 1), TypeError,
         "CrossEntropyLoss needs integer class labels.*float64"),
        (lambda m: fit(m, (x, np.stack([y, y], 1)), 1), ValueError,
         r"index targets must have shape \(20,\) \(the logits' \(20, 4\) without the class axis\), "
         r"got \(20, 2\)"),
        (lambda m: fit(m, (x, y), 1, loss=losses.CrossEntropyLoss(reduction="none")), ValueError,
         r"CrossEntropyLoss\(reduction='none'\) gives a loss per sample; training needs one "
         r"number per batch"),
        (lambda m: fit(m, (x, y.astype(str)), 1), TypeError, "y must hold"),
        (lambda m: fit(m, x, 1), TypeError, r"pair \(x, y\) of arrays.*give the labels too"),
        (lambda m: fit(m, (x, y, y), 1), TypeError, "a tuple of 3 items"),
        (lambda m: fit(m, D.DataLoader(x, y, 4, mean=None, std=None), 1, batch_size=8),
         ValueError, "batch_size apply to .x, y. arrays"),
        (lambda m: fit(m, (x, y), 1, batch_size=0), ValueError, "batch_size must be an int"),
        (lambda m: fit(m, (x, y), 1, seed=-1), ValueError, "seed"),
        (lambda m: fit(m, (x, y), 1, optimizer=optim.SGD(other.parameters(), lr=0.1)),
         ValueError, "not the model's"),
        (lambda m: fit(m, (x, y), 1, optimizer="sgd"), TypeError, "fastconv.optim optimiser"),
        (lambda m: fit(m, (x, y), 1, optimizer=optim.SGD(m.parameters(), lr=0.1),
                       scheduler=optim.StepLR(optim.SGD(m.parameters(), lr=0.1), 1)),
         ValueError, "another optimizer"),
        (lambda m: fit(m, (x, y), 1, scheduler_interval="batch"), ValueError,
         "scheduler_interval"),
        (lambda m: fit(m, (x, y), 1, loss=lambda a, b: 0.0), TypeError, "fastconv loss"),
        (lambda m: fit(m, (x, y), 1, callbacks=[print]), TypeError, r"callbacks\[0\]"),
        (lambda m: fit(m, (x, y), 1, progress="yes"), TypeError, "progress"),
        (lambda m: fit(m, (x, y), 1, val_batch_size=8), ValueError, "without val"),
        (lambda m: fit(m, (x, y), 1, val=(x, y[:3])), ValueError, "fit: val: x holds 20"),
        (lambda m: fit(m, (x, y), 1, resume=[1, 2]), TypeError, "resume"),
        (lambda m: evaluate(m, (x.astype(np.uint8), y)), TypeError, "to_float32"),
        (lambda m: evaluate(object(), (x, y)), TypeError, "evaluate: model"),
        (lambda m: evaluate(m, (x, y), batch_size=-2), ValueError, "batch_size"),
        (lambda m: predict(m, x.astype(np.uint8)), TypeError, "predict: x holds uint8"),
        (lambda m: predict(m, x, batch_size=0), ValueError, "batch_size"),
        (lambda m: predict(m, D.DataLoader(x, y, 4), batch_size=4), ValueError, "its own"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_fit_cases())))
def test_bad_arguments_give_clear_errors(case):
    call, error, pattern = _bad_fit_cases()[case]
    model = make_model()
    before = weights_bytes(model)
    with pytest.raises(error, match=pattern):
        call(model)
    assert weights_bytes(model) == before and model.training


# --------------------------------------------------------------------------------------------
# Other targets: class probabilities, class weights, a label per pixel
# --------------------------------------------------------------------------------------------

def test_fit_on_one_hot_probabilities_equals_fit_on_labels_bit_for_bit():
    """Soft targets (N, C) train through the same gradient: one-hot rows give the weights of
    integer labels, bit for bit; smoothed rows train too."""
    x, y = make_data(48)
    runs = []
    for targets in (y, np.eye(N_CLASSES, dtype=np.float32)[y]):
        model = make_model(seed=2)
        fit(model, (x, targets), 2, optimizer=optim.SGD(model.parameters(), lr=0.05),
            batch_size=16, seed=1, progress=False)
        runs.append(model)
    assert weights_bytes(runs[0]) == weights_bytes(runs[1])
    soft = np.full((48, N_CLASSES), 0.1 / N_CLASSES, np.float32)
    soft[np.arange(48), y] += 0.9
    model = make_model(seed=2)
    h = fit(model, (x, soft), 3, optimizer=optim.SGD(model.parameters(), lr=0.05),
            batch_size=16, seed=1, progress=False)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert "accuracy" not in h.rows[-1]          # no class labels to compare with


def test_fit_with_class_weights_and_ignored_labels_equals_a_hand_written_loop():
    x, y = make_data(40)
    y = y.copy()
    y[::5] = -1                                  # unlabelled samples
    runs = []
    for use_fit in (True, False):
        model = make_model(seed=4)
        opt = optim.SGD(model.parameters(), lr=0.05)
        crit = losses.CrossEntropyLoss(np.array([1.0, 2.0, 0.5, 1.0]), ignore_index=-1)
        loader = D.DataLoader(x, y, 8, shuffle=True, seed=3, mean=None, std=None)
        if use_fit:
            fit(model, loader, 1, optimizer=opt, loss=crit, progress=False)
        else:
            model.train()
            for xb, yb in loader:
                model.zero_grad()
                crit.forward(model.forward(xb), yb)
                model.backward(crit.backward(), input_grad=False)
                opt.step()
        runs.append(model)
    assert weights_bytes(runs[0]) == weights_bytes(runs[1])


def test_fit_a_label_per_pixel():
    """Segmentation: logits (N, C, H, W) against labels (N, H, W), some pixels ignored."""
    gen = np.random.default_rng(0)
    x = gen.normal(size=(24, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)           # the class of a pixel is its sign
    y[:, 0, 0] = -100
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, rng=0), nn.ReLU(),
                          nn.Conv2d(8, 2, 1, rng=1))
    h = fit(model, (x, y), 8, optimizer=optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
            batch_size=8, seed=0, progress=False)
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    pred = predict(model, x).argmax(axis=1)
    assert (pred == y)[y != -100].mean() > 0.9


def test_fit_multi_label_with_bce_with_logits():
    """Multi-label targets (N, C) of 0/1 floats with BCEWithLogitsLoss: fit learns them."""
    x, y = make_data(64)
    labels = np.stack([y % 2 == 0, y >= 2, y == 3, y < 3], axis=1).astype(np.float32)
    model = make_model(seed=5)
    h = fit(model, (x, labels), 6, optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            loss=losses.BCEWithLogitsLoss(), batch_size=16, seed=0, progress=False)
    assert h.history["loss"][-1] < 0.6 * h.history["loss"][0]
    assert "accuracy" not in h.rows[-1]
    pred = predict(model, x) > 0
    assert (pred == (labels > 0.5)).mean() > 0.8


# --------------------------------------------------------------------------------------------
# ReduceLROnPlateau and gradient clipping in fit
# --------------------------------------------------------------------------------------------

def _at_optimum():
    """A model already at the optimum of its data (zero weights, zero targets, MSE): every
    gradient is exactly 0, so the training loss is the same every epoch: a plateau."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2, dtype=np.float64))
    for p in model.parameters():
        p.data[...] = 0.0
    x = np.random.default_rng(0).normal(size=(12, 2, 3))
    return model, (x, np.zeros((12, 2)))


def test_fit_reduces_the_lr_on_a_plateau_of_the_training_loss():
    model, data = _at_optimum()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    h = fit(model, data, 6, optimizer=opt, scheduler=sched, loss=losses.MSELoss(),
            batch_size=4, progress=False)
    assert h.history["loss"] == [0.0] * 6
    # epoch 1 sets the best; epochs 2, 3 are bad (2 > patience 1): halve after epoch 3; the
    # count restarts, so again after epoch 5
    assert h.history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert sched.last_epoch == 6 and sched.num_bad_epochs == 1   # once per epoch, not per step


def test_fit_steps_reduce_lr_on_plateau_on_the_validation_loss_as_torch_would(torch):
    x, y = make_data(48)
    xv, yv = make_data(24, seed=5)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kwargs = dict(factor=0.5, patience=0, threshold=0.05, cooldown=1)
    sched = optim.ReduceLROnPlateau(opt, **kwargs)
    h = fit(model, (x, y), 8, optimizer=opt, scheduler=sched, val=(xv, yv), batch_size=16,
            progress=False)
    # replay the recorded validation losses through torch's scheduler
    tparam = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tparam], lr=0.05)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    expected = []
    for v in h.history["val_loss"]:
        tsched.step(v)
        expected.append(topt.param_groups[0]["lr"])
    assert h.history["lr"] == expected
    assert min(expected) < 0.05           # (the run did reduce)


def test_fit_reduce_lr_on_plateau_monitor_accuracy():
    x, y = make_data(48)
    model = make_model()
    # a rate so small that no float32 weight moves: the accuracy is flat
    opt = optim.SGD(model.parameters(), lr=1e-30)
    sched = optim.ReduceLROnPlateau(opt, mode="max", patience=0, eps=0.0)
    h = fit(model, (x, y), 3, optimizer=opt, scheduler=sched, scheduler_monitor="accuracy",
            batch_size=16, progress=False)
    assert h.history["accuracy"][0] == h.history["accuracy"][2]
    assert h.history["lr"] == [1e-30, 1e-30 * 0.1, 1e-30 * 0.1 * 0.1]


def test_fit_resumes_reduce_lr_on_plateau_bit_exactly(tmp_path):
    from fastconv.training import Callback, ModelCheckpoint

    class StopAfter(Callback):
        def __init__(self, epochs):
            self.epochs = epochs

        def on_epoch_end(self, epoch, logs):
            if epoch + 1 >= self.epochs:
                self.trainer.stop_training = True

    def run(path, stop=None, resume=None):
        x, y = make_data(48)
        model = make_model()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = optim.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.05)
        callbacks = [ModelCheckpoint(path)] + ([stop] if stop else [])
        h = fit(model, (x, y), 6, optimizer=opt, scheduler=sched, val=make_data(24, seed=5),
                batch_size=16, callbacks=callbacks, progress=False, resume=resume)
        return model, h, sched

    straight = run(tmp_path / "a.npz")
    run(tmp_path / "b.npz", stop=StopAfter(3))
    resumed = run(tmp_path / "b.npz", resume=tmp_path / "b.npz")
    assert weights_bytes(straight[0]) == weights_bytes(resumed[0])
    assert straight[1].history["lr"] == resumed[1].history["lr"]
    assert straight[1].history["val_loss"] == resumed[1].history["val_loss"]
    assert (straight[2].best, straight[2].num_bad_epochs, straight[2].last_epoch) == \
        (resumed[2].best, resumed[2].num_bad_epochs, resumed[2].last_epoch)


def test_fit_clip_grad_norm_is_the_hand_written_loop_with_clipping():
    from fastconv.nn.utils import clip_grad_norm_
    from fastconv.training import Callback

    class Norms(Callback):
        def __init__(self):
            self.norms = []

        def on_batch_end(self, batch, logs):
            self.norms.append(logs["grad_norm"])

    x, y = make_data(40)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    norms = Norms()
    fit(model, (x, y), 2, optimizer=opt, clip_grad_norm=0.5, batch_size=16, shuffle=False,
        callbacks=[norms], progress=False)

    hand = make_model()
    hopt = optim.SGD(hand.parameters(), lr=0.2, momentum=0.9)
    crit = losses.CrossEntropyLoss()
    expected = []
    for _ in range(2):
        for i in range(0, 40, 16):
            hand.zero_grad()
            crit.forward(hand.forward(x[i:i + 16]), y[i:i + 16])
            hand.backward(crit.backward(), input_grad=False)
            expected.append(float(clip_grad_norm_(hand.parameters(), 0.5)))
            hopt.step()
    assert weights_bytes(model) == weights_bytes(hand)
    assert norms.norms == expected and max(expected) > 0.5    # (clipping did act)


def test_fit_scheduler_and_clipping_arguments_are_checked():
    x, y = make_data(20)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    plateau = optim.ReduceLROnPlateau(opt)
    cases = [
        (dict(scheduler=plateau, scheduler_interval="step"), ValueError, "once per epoch"),
        (dict(scheduler=plateau, scheduler_monitor="val_loss"), ValueError,
         "needs validation data"),
        (dict(scheduler=plateau, scheduler_monitor="acc"), ValueError, "scheduler_monitor must"),
        (dict(scheduler=plateau, scheduler_monitor="accuracy"), ValueError, "mode='max'"),
        (dict(scheduler=optim.ReduceLROnPlateau(opt, mode="max")), ValueError, "mode='min'"),
        (dict(scheduler=optim.StepLR(opt, 2), scheduler_monitor="loss"), ValueError,
         "ReduceLROnPlateau"),
        (dict(scheduler_monitor="loss"), ValueError, "ReduceLROnPlateau"),
        (dict(clip_grad_norm=0.0), ValueError, "clip_grad_norm"),
        (dict(clip_grad_norm=-1.0), ValueError, "clip_grad_norm"),
        (dict(clip_grad_norm="1"), ValueError, "clip_grad_norm"),
        (dict(clip_grad_norm=float("inf")), ValueError, "clip_grad_norm"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            fit(model, (x, y), 1, optimizer=opt, progress=False, **kwargs)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("shard_update", [True, False])
def test_fit_clip_grad_norm_on_ranks_is_clipping_the_whole_batch(ranks, shard_update):
    """Data-parallel (thread ranks): the norm clipped is that of the whole batch's gradient,
    summed over the ranks' shares when they share the update."""
    from fastconv.training import Callback
    from fastconv.training.distributed import Distributed
    from thread_comm import run_ranks

    class Norms(Callback):
        def on_train_begin(self, logs):
            self.norms = []
            par = self.trainer.parallel
            self.shared = par is not None and par.net.optimizer is not None

        def on_batch_end(self, batch, logs):
            self.norms.append(logs["grad_norm"])

    def run(comm=None):
        x, y = make_data(48, dtype=np.float64)
        model = make_model(dtype=np.float64)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        norms = Norms()
        options = False if comm is None else Distributed(comm=comm, bucket_mb=1e-3,
                                                         shard_update=shard_update)
        fit(model, (x, y), 2, optimizer=opt, clip_grad_norm=0.4, batch_size=12,
            callbacks=[norms], progress=False, distributed=options)
        return model.state_dict(), norms

    single, single_norms = run()
    assert max(single_norms.norms) > 0.4                   # (clipping did act)
    for state, norms in run_ranks(ranks, run):
        assert norms.shared is shard_update
        np.testing.assert_allclose(norms.norms, single_norms.norms, rtol=1e-12)
        for k in single:
            np.testing.assert_allclose(state[k], single[k], rtol=1e-11, atol=1e-14, err_msg=k)
