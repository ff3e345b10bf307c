"""Tests of fastconv.models' registry and of what every builder shares: get_model, seeds,
dtypes, output shapes and the documented parameter counts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fastconv import models, nn

#: Parameter counts with 10 classes (and the default widths), as the package docstring says.
PARAMETERS = {"simple_cnn": 2_389_962, "lenet5": 62_006, "vgg_small": 307_946,
              "alexnet_small": 7_506_762, "resnet9": 6_573_120, "resnet18": 11_173_962,
              "airbench94": 1_972_792, "autoencoder": 38_723}


def test_registry():
    assert models.MODELS == ["simple_cnn", "lenet5", "vgg_small", "alexnet_small", "resnet9",
                             "resnet18", "airbench94", "autoencoder"]
    assert models.CLASSIFIERS == [n for n in models.MODELS if n != "autoencoder"]
    assert models.get_model("resnet9", rng=0).num_parameters() == PARAMETERS["resnet9"]
    with pytest.raises(ValueError, match="unknown model 'resnet'.*simple_cnn.*resnet18"):
        models.get_model("resnet")
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model(["resnet9"])
    with pytest.raises(TypeError, match="num_classes"):  # (images to images: no classes)
        models.get_model("autoencoder", num_classes=10)


@pytest.mark.parametrize("name", models.CLASSIFIERS)
@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True, "10", None])
def test_num_classes_errors_name_the_builder_and_num_classes(name, num_classes):
    # get_model("resnet18", num_classes=0) said "Linear: out_features must be a positive int,
    # got 0", naming no argument of the call
    message = rf"^{name}: num_classes must be a positive int, got {re.escape(repr(num_classes))}$"
    with pytest.raises(ValueError, match=message):
        models.get_model(name, num_classes=num_classes)
    with pytest.raises(ValueError, match=message):
        getattr(models, name)(num_classes=num_classes)
    assert models.get_model(name, num_classes=np.int64(1), rng=0).num_parameters() > 0


@pytest.mark.parametrize("name", models.MODELS)
def test_documented_parameter_count(name):
    model = models.get_model(name, rng=0)
    assert isinstance(model, nn.Sequential)
    assert model.num_parameters() == PARAMETERS[name]
    line = next(line for line in models.__doc__.splitlines() if line.startswith(name + " "))
    assert re.search(rf"\s{PARAMETERS[name]:,}$", line), line


@pytest.mark.parametrize("name", models.MODELS)
def test_seeds_dtypes_and_output_shapes(name):
    x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32)).astype(np.float32)
    kwargs = {} if name == "autoencoder" else {"num_classes": 7}
    m = models.get_model(name, seed=1, **kwargs).eval()
    y = m(x)
    assert y.dtype == np.float32
    assert y.shape == (x.shape if name == "autoencoder" else (2, 7))
    same = models.get_model(name, rng=np.random.default_rng(1), **kwargs).eval()
    np.testing.assert_array_equal(same(x), y)
    other = models.get_model(name, rng=2, **kwargs)
    assert not np.array_equal(next(other.parameters()).data, next(m.parameters()).data)
    m64 = models.get_model(name, rng=1, dtype=np.float64, **kwargs)
    assert m64.dtype == np.float64 and m64.eval()(x).dtype == np.float64
    for (k, p32), (k64, p64) in zip(m.named_parameters(), m64.named_parameters()):
        assert k == k64
        np.testing.assert_allclose(p64.data, p32.data, rtol=1e-7, err_msg=k)
    with pytest.raises(ValueError, match="either rng or seed"):
        models.get_model(name, rng=1, seed=1)
