"""airbench's CifarLoader and training loop ported to the CPU (airbench_torch.py), and the
epoch-timing script airbench94_epochs.py on a small synthetic set."""

from __future__ import annotations

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import airbench94_epochs  # noqa: E402
import airbench_torch as port  # noqa: E402
import fastconv  # noqa: E402


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


def _window(image: torch.Tensor, padded: torch.Tensor, r: int) -> tuple[int, int] | None:
    """The shift (dy, dx) at which ``image`` is a window of ``padded``, or None."""
    size = image.shape[-1]
    return next(((dy - r, dx - r) for dy in range(2 * r + 1) for dx in range(2 * r + 1)
                 if torch.equal(image, padded[:, dy:dy + size, dx:dx + size])), None)


def test_loader_draws_the_flip_once_then_alternates_it_and_translates_within_two_pixels():
    x, y = _images(12)
    torch.manual_seed(3)
    loader = port.CifarLoader(x, y, batch_size=12, aug={"flip": True, "translate": 2},
                              train=False)
    norm = loader.normalize(torch.from_numpy(x).float() / 255)
    shifts = set()
    for epoch in range(3):
        ((batch, labels),) = list(loader)
        assert batch.shape == (12, 3, 32, 32) and torch.equal(labels, torch.from_numpy(y))
        drawn = loader.proc_images["flip"]
        for i in range(12):
            assert torch.equal(drawn[i], norm[i]) or torch.equal(drawn[i], norm[i].flip(-1))
            base = drawn[i] if epoch % 2 == 0 else drawn[i].flip(-1)
            padded = torch.nn.functional.pad(base[None], (2,) * 4, "reflect")[0]
            shift = _window(batch[i], padded, 2)
            assert shift is not None, (epoch, i)
            shifts.add(shift)
    assert len(shifts) > 10                   # 36 draws of 25 shifts


def test_training_loader_shuffles_and_drops_the_last_partial_batch():
    x, y = _images(250)
    loader = port.CifarLoader(x, y, batch_size=100, aug={})
    batches = list(loader)
    assert len(loader) == 2 and len(batches) == 2
    labels = torch.cat([b[1] for b in batches])
    assert len(labels) == 200 and not torch.equal(labels, torch.from_numpy(y[:200]))


def test_train_reports_every_epoch_and_stops_when_told():
    x, y = _images(100)
    calls = []
    model, seconds = port.train(x, y, batch_size=50, epochs=1.5, whitening_images=100,
                                on_epoch_end=lambda e, s, loss: calls.append((e, s, loss)))
    assert [c[0] for c in calls] == [0, 1] and seconds > 0
    assert all(np.isfinite(c[2]) and c[1] > 0 for c in calls)
    calls.clear()
    port.train(x, y, batch_size=50, stop_after_epochs=1, whitening_images=100,
               on_epoch_end=lambda e, s, loss: calls.append(e))
    assert calls == [0]


def test_train_follows_airbench_main_step_for_step(monkeypatch):
    """train()'s loop against airbench's sequence written out: the same seed gives the same
    weights as whitening init + loader + train_step + lookahead every 5 steps + final sync."""
    x, y = _images(100, seed=1)
    model, _ = port.train(x, y, seed=5, batch_size=50, epochs=2.5, whitening_images=100)

    torch.manual_seed(5)
    loader = port.CifarLoader(x, y, 50, aug=port.HYP["aug"])
    steps = 5                                  # ceil(2 batches x 2.5 epochs)
    net = port.make_net()
    opt = port.make_optimizer(net, 50)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: port.lr_factor(s, steps))
    alpha = 0.95**5 * (torch.arange(steps + 1) / steps) ** 3
    ema = port.LookaheadState(net)
    port.init_whitening_conv(net[0], loader.normalize(loader.images[:100]))
    done = 0
    for epoch in range(3):
        net[0].bias.requires_grad = epoch < 3
        net.train()
        for inputs, labels in loader:
            port.train_step(net, opt, sched, inputs, labels, port.loss_fn())
            done += 1
            if done % 5 == 0:
                ema.update(net, decay=alpha[done].item())
            if done == steps:
                break
    ema.update(net, decay=1.0)
    for (k, a), b in zip(model.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k


def test_epochs_script_times_both_and_reports_the_ratio(monkeypatch, capsys):
    x, y = _images(200, seed=2)
    monkeypatch.setattr(airbench94_epochs.data, "load_cifar10",
                        lambda *a, **k: types.SimpleNamespace(x_train=x, y_train=y))
    threads = fastconv.get_num_threads(), torch.get_num_threads()
    try:
        result = airbench94_epochs.main(["--epochs", "2", "--batch-size", "100",
                                         "--threads", "1"])
    finally:
        fastconv.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    assert len(result["fastconv_epoch_s"]) == 2 and len(result["torch_epoch_s"]) == 2
    assert result["speedup"] == pytest.approx(result["torch_mean_s"] / result["fastconv_mean_s"])
    assert result["train_images"] == 200 and result["batch_size"] == 100
    out = capsys.readouterr().out
    assert out.count("fastconv  epoch") == 2 and out.count("PyTorch   epoch") == 2
    with pytest.raises(SystemExit):
        airbench94_epochs.main(["--epochs", "0"])
