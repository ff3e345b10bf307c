"""Likely user mistakes get a clear error or a one-time warning, as PyTorch/Keras users expect:
TensorFlow-layout weights, channels-last (NHWC) input, uint8 images fed to a model, float
labels for cross-entropy, and model.summary() in a REPL (no echoed line after the table)."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest

from fastconv import losses, models, nn
from fastconv.nn import module as module_mod


def test_tensorflow_conv_kernel_gets_the_transpose_suggested():
    conv = nn.Conv2d(3, 8, (5, 3))
    tf_kernel = np.zeros((5, 3, 3, 8), np.float32)           # (kh, kw, in, out)
    with pytest.raises(ValueError) as err:
        conv.load_state_dict({"weight": tf_kernel, "bias": np.zeros(8)})
    msg = str(err.value)
    assert "shape (5, 3, 3, 8) in the state dict does not match shape (8, 3, 5, 3)" in msg
    assert "TensorFlow/Keras kernel" in msg and "np.transpose(w, (3, 2, 0, 1))" in msg
    conv.load_state_dict({"weight": np.transpose(tf_kernel + 1, (3, 2, 0, 1)),
                          "bias": np.zeros(8)})                  # the suggestion works
    assert conv.weight.data.shape == (8, 3, 5, 3) and (conv.weight.data == 1).all()
    # ConvTranspose2d (in, out, kh, kw) from Keras' (kh, kw, out, in): the same transpose
    convt = nn.ConvTranspose2d(4, 6, 3, bias=False)
    with pytest.raises(ValueError, match=r"np.transpose\(w, \(3, 2, 0, 1\)\)"):
        convt.load_state_dict({"weight": np.zeros((3, 3, 6, 4))})


def test_keras_dense_kernel_gets_the_transpose_suggested_and_others_do_not():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    with pytest.raises(ValueError, match=r"'1.weight': shape \(12, 5\) .* shape \(5, 12\) "
                                         r"in the model \(it looks like a Keras Dense kernel "
                                         r"laid out \(in, out\): load w.T\)"):
        model.load_state_dict({"1.weight": np.zeros((12, 5)), "1.bias": np.zeros(5)})
    with pytest.raises(ValueError) as err:                   # just a wrong shape: no hint
        model.load_state_dict({"1.weight": np.zeros((5, 11)), "1.bias": np.zeros(5)})
    assert "looks like" not in str(err.value)


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(3)],
                         ids=["Conv2d", "BatchNorm2d"])
def test_channels_last_input_gets_the_transpose_suggested(layer):
    x = np.zeros((2, 8, 8, 3), np.float32)                   # NHWC
    with pytest.raises(ValueError, match=r"got \(2, 8, 8, 3\) \(channels last\? fastconv takes "
                                         r"NCHW like PyTorch: use x.transpose\(0, 3, 1, 2\)\)"):
        layer(x)
    assert layer(x.transpose(0, 3, 1, 2)).shape[:2] == (2, layer(
        x.transpose(0, 3, 1, 2)).shape[1])


def test_channels_last_through_a_model_and_one_image():
    model = models.lenet5(seed=0)
    with pytest.raises(ValueError, match=r"layer 0 of Sequential: .*x.transpose\(0, 3, 1, 2\)"):
        model(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"layer 0 of Sequential: .*got \(32, 32, 3\) \(one "
                                         r"channels-last image\? fastconv takes \(C, H, W\) like "
                                         r"PyTorch: use x.transpose\(2, 0, 1\)\)"):
        model(np.zeros((32, 32, 3), np.float32))
    # One (C, H, W) image runs unbatched through the convolutions and poolings, as in PyTorch,
    # up to Flatten, which then flattens (16, 5, 5) to (16, 25): Linear(400, ...) refuses it,
    # as torch's twin does (tests/nn/test_unbatched.py runs whole unbatched models).
    with pytest.raises(ValueError, match=r"layer 7 of Sequential: Linear.*got \(16, 25\)"):
        model(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"x.transpose\(0, 3, 1, 2\)"):
        model.summary((1, 32, 32, 3), print_fn=None)


def test_uint8_images_fed_to_a_model_warn_once(monkeypatch):
    monkeypatch.setattr(module_mod, "_warned_uint8", [False])
    model = models.lenet5(seed=0)
    images = np.full((2, 3, 32, 32), 200, np.uint8)
    with pytest.warns(UserWarning, match=r"uint8 input \(raw images\?\) is used as values "
                                         r"0..255.*fastconv.data.to_float32") as record:
        y = model(images)
    assert len(record) == 1
    np.testing.assert_array_equal(y, model(images.astype(np.float32)))   # values unscaled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(images)                                        # once per process
        nn.ReLU()(images)


def test_float_labels_for_cross_entropy_are_refused():
    with pytest.raises(TypeError, match="float labels.*astype\\(np.int64\\)"):
        losses.CrossEntropyLoss()(np.zeros((2, 3)), np.array([1.0, 2.0]))


def test_summary_prints_once_and_returns_none_as_keras():
    model = models.lenet5(seed=0)
    out = io.StringIO()
    with redirect_stdout(out):
        result = model.summary((3, 32, 32))
    assert result is None                                    # nothing for a REPL to echo
    assert "Total params: 62,006" in out.getvalue()
    table = model.summary((3, 32, 32), print_fn=None)
    assert repr(table) == str(table) == out.getvalue().rstrip("\n")
