"""Tests of fastconv.models.autoencoder: the tree against a PyTorch twin written here (keys,
outputs, input and parameter gradients, float32 and float64), finite differences, options
and errors, denoising_pairs, and a denoising fit with MSELoss that learns."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from fastconv import losses, models, optim
from fastconv.gradcheck import gradcheck_layer
from fastconv.training import fit, predict

RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def torch_autoencoder(torch, sigmoid=True):
    tnn = torch.nn
    decoder = [tnn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), tnn.ReLU(),
               tnn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1)]
    if sigmoid:
        decoder.append(tnn.Sigmoid())
    return tnn.Sequential(OrderedDict(
        encoder=tnn.Sequential(tnn.Conv2d(3, 32, 3, stride=2, padding=1), tnn.ReLU(),
                               tnn.Conv2d(32, 64, 3, stride=2, padding=1), tnn.ReLU()),
        decoder=tnn.Sequential(*decoder)))


def assert_rel(actual, expected, rtol, what):
    scale = float(np.max(np.abs(expected)))
    err = float(np.max(np.abs(np.asarray(actual, np.float64) - expected)))
    assert np.shape(actual) == np.shape(expected), what
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


@pytest.mark.parametrize("sigmoid", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_matches_the_torch_twin(torch, dtype, sigmoid):
    torch.manual_seed(0)
    tmodel = torch_autoencoder(torch, sigmoid).to(torch.float64 if dtype == np.float64
                                                  else torch.float32)
    model = models.autoencoder(rng=1, dtype=dtype, sigmoid=sigmoid)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    model.load_state_dict(tmodel.state_dict())
    gen = np.random.default_rng(2)
    noisy = gen.uniform(size=(3, 3, 32, 32)).astype(dtype)
    clean = gen.uniform(size=(3, 3, 32, 32)).astype(dtype)
    crit = losses.MSELoss()
    model.zero_grad()
    y = model(noisy)
    loss = crit(y, clean)
    gx = model.backward(crit.backward())
    xt = torch.tensor(noisy, requires_grad=True)
    yt = tmodel(xt)
    tloss = torch.nn.functional.mse_loss(yt, torch.tensor(clean))
    tloss.backward()
    rtol = RTOL[dtype]
    assert y.dtype == dtype and y.shape == noisy.shape
    if sigmoid:
        assert 0 < y.min() and y.max() < 1
    else:
        assert y.min() < 0  # (no squashing: the last transposed conv's output as it is)
    assert loss == pytest.approx(tloss.item(), rel=rtol)
    assert_rel(y, yt.detach().numpy(), rtol, "output")
    assert_rel(gx, xt.grad.numpy(), rtol, "grad_x")
    tgrads = dict(tmodel.named_parameters())
    for key, p in model.named_parameters():
        assert_rel(p.grad, tgrads[key].grad.numpy(), rtol, f"grad {key}")


def test_gradcheck():
    model = models.autoencoder(rng=3, channels=(2, 3))
    errors = gradcheck_layer(model, (2, 3, 8, 8), seed=4)
    assert set(errors) == {"input"} | {k for k, _ in model.named_parameters()}
    for key, err in errors.items():
        assert err < 1e-6, (key, err)


def test_channels_and_sizes():
    one = models.autoencoder(rng=0, channels=(8,), sigmoid=False)
    assert [type(m).__name__ for m in one.modules()][1:] == [
        "Sequential", "Conv2d", "ReLU", "Sequential", "ConvTranspose2d"]
    three = models.autoencoder(rng=0, channels=(8, 16, 32), in_channels=1)
    assert three.encoder[4].out_channels == 32 and three.decoder[4].out_channels == 1
    assert three.output_shape((2, 1, 24, 40)) == (2, 1, 24, 40)  # sides multiples of 2 ** 3
    with pytest.raises(ValueError, match="at least one"):
        models.autoencoder(channels=())


def test_denoising_pairs():
    images = np.random.default_rng(0).integers(0, 256, size=(50, 3, 32, 32), dtype=np.uint8)
    noisy, clean = models.denoising_pairs(images, noise_std=0.1, rng=1)
    assert noisy.dtype == clean.dtype == np.float32 and noisy.shape == clean.shape == images.shape
    np.testing.assert_allclose(clean, images / 255.0, rtol=1e-6)
    assert noisy.min() >= 0 and noisy.max() <= 1
    inside = (clean > 0.3) & (clean < 0.7)  # (no clipping within 4 standard deviations)
    assert np.std(noisy[inside] - clean[inside]) == pytest.approx(0.1, rel=0.02)
    again, _ = models.denoising_pairs(images, noise_std=0.1, rng=1)
    np.testing.assert_array_equal(again, noisy)
    plain, _ = models.denoising_pairs(images.astype(np.float64) / 255, noise_std=0.0)
    np.testing.assert_allclose(plain, clean, rtol=1e-6)
    with pytest.raises(ValueError, match="noise_std"):
        models.denoising_pairs(images, noise_std=-0.1)


def test_denoising_fit_learns():
    # images with structure to learn: smooth random fields (a coarse grid, upsampled)
    gen = np.random.default_rng(5)
    coarse = gen.uniform(size=(256, 3, 4, 4))
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    noisy, clean = models.denoising_pairs(images, noise_std=0.2, rng=6)
    model = models.autoencoder(seed=0)
    start = losses.MSELoss()(predict(model, noisy), clean)
    history = fit(model, (noisy, clean), 6, optimizer=optim.Adam(model.parameters(), lr=3e-3),
                  loss=losses.MSELoss(), batch_size=32, progress=False)
    assert "accuracy" not in history.rows[-1]
    end = losses.MSELoss()(predict(model, noisy), clean)
    noise = float(np.mean((noisy - clean) ** 2))
    assert end < 0.5 * start and end < noise, (start, end, noise)  # denoised, not only copied
