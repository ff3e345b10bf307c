"""Tests of fastconv.export.to_onnx: every layer and container of fastconv.nn and every model of
fastconv.models written as ONNX, checked by onnx.checker and run in onnxruntime against
fastconv's eval-mode output on other batch sizes than the export's (the batch axis is
dynamic); the graph's contents (initializers under the state-dict keys, names, dtypes); its
errors; the ImportError without onnx; and ``fastconv-train --export-onnx`` on a synthetic
CIFAR-10.

Tolerances: float32 rtol 1e-4, with an absolute floor of 1e-5 x max(1, the output's largest
magnitude) for outputs near zero (GELU's tail, logits that cancel), as numerics.assert_close's.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
import pytest

from fastconv import models, nn
from fastconv.export import to_onnx
from fastconv.export.onnx import EXPORTERS, OPSET
from layer_cases import LAYERS
from numerics import randomize_norms


@pytest.fixture
def onnx():
    """The onnx package, or the test is skipped."""
    return pytest.importorskip("onnx")


@pytest.fixture
def ort(onnx):
    """onnxruntime (with onnx), or the test is skipped."""
    return pytest.importorskip("onnxruntime")


def _session(ort, path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # (the machine is shared; the results do not depend on it)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _assert_close(actual, expected, what):
    scale = max(float(np.abs(expected).max(initial=0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def _eval_output(module, x):
    """fastconv's eval-mode output, the module's modes restored after."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        return module.eval()(x)
    finally:
        for m, mode in modes:
            m.training = mode


# ONNX-specific geometry on top of the cases shared with to_torch's tests: pads past the
# kernel (dilated ceil-mode pooling), a ceil-mode window past the padding, unequal adaptive
# windows, fractional and per-axis upsampling, a flattened batch axis, deep nesting.
EXTRA = [
    ("max_pool2d_dilated_ceil", lambda: nn.MaxPool2d(2, 3, 1, dilation=3, ceil_mode=True),
     (2, 3, 9, 10)),
    ("max_pool2d_ceil_no_padding", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (2, 3, 6, 8)),
    ("avg_pool2d_ceil_include_pad", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 3, 6, 8)),
    ("avg_pool2d_ceil_no_padding", lambda: nn.AvgPool2d(2, 3, ceil_mode=True,
                                                        count_include_pad=False), (2, 3, 7, 8)),
    ("avg_pool2d_ceil_include_pad_unpadded", lambda: nn.AvgPool2d(2, 3, ceil_mode=True),
     (2, 3, 7, 8)),
    ("avg_pool2d_ceil_padded_rows", lambda: nn.AvgPool2d(3, 2, (1, 0), ceil_mode=True),
     (2, 3, 6, 8)),
    ("avg_pool2d_padded", lambda: nn.AvgPool2d(3, 1, 1), (2, 3, 5, 5)),
    ("adaptive_avg_pool2d_unequal", lambda: nn.AdaptiveAvgPool2d((3, 4)), (2, 3, 7, 5)),
    ("adaptive_avg_pool2d_equal", lambda: nn.AdaptiveAvgPool2d(2), (2, 3, 6, 4)),
    ("upsample_fractional", lambda: nn.Upsample(scale_factor=(1.7, 0.6)), (2, 3, 5, 6)),
    ("upsample_recompute", lambda: nn.Upsample(scale_factor=1.5, recompute_scale_factor=True),
     (2, 3, 5, 3)),
    ("upsample_identity", lambda: nn.Upsample(scale_factor=1), (2, 3, 2, 2)),
    ("flatten_batch", lambda: nn.Sequential(nn.Flatten(0), nn.Tanh()), (2, 3, 4)),
    ("batch_norm1d_no_stats", lambda: nn.BatchNorm1d(5, track_running_stats=False), (6, 5, 3)),
    ("batch_norm1d_no_stats_no_affine", lambda: nn.BatchNorm1d(5, affine=False,
                                                               track_running_stats=False),
     (4, 5, 3)),
    ("conv2d_same_even_kernel", lambda: nn.Conv2d(3, 4, (4, 2), padding="same", dilation=(1, 3)),
     (2, 3, 7, 8)),
    ("linear_3d_no_bias", lambda: nn.Linear(5, 2, bias=False), (3, 2, 4, 5)),
    ("nested_containers", lambda: nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU()),
        mix=nn.Concat(nn.Residual(nn.Sequential(nn.Identity(), nn.Dropout(0.5))),
                      nn.Residual(nn.Conv2d(4, 4, 1), shortcut=nn.Mul(-1.0))),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
                           nn.LayerNorm(3), nn.SiLU()))), (2, 3, 6, 6)),
    ("empty_sequential", nn.Sequential, (2, 3)),
]


def _export_and_run(ort, module, shape, tmp_path, batches=(None,)):
    """Export `module` for `shape`, then (output of the file, fastconv's eval output) for
    each batch size in `batches` (None: the export's)."""
    path = tmp_path / "m.onnx"
    proto = to_onnx(module, path, input_shape=shape)
    session = _session(ort, path)
    results = []
    for i, n in enumerate(batches):
        x_shape = shape if n is None else (n,) + tuple(shape[1:])
        x = np.random.default_rng(i).standard_normal(x_shape).astype(np.float32)
        results.append((session.run(None, {"input": x})[0], _eval_output(module, x)))
    return proto, results


@pytest.mark.parametrize("case", LAYERS + EXTRA, ids=[c[0] for c in LAYERS + EXTRA])
def test_every_layer_and_container(ort, case, tmp_path):
    name, build, shape = case
    module = randomize_norms(build(), 1).train()  # exported in train mode: eval semantics
    modes = [m.training for m in module.modules()]
    before = module.state_dict()
    proto, results = _export_and_run(ort, module, shape, tmp_path,
                                     batches=(None, shape[0] + 3, 1))
    for got, expected in results:
        assert got.shape == expected.shape and got.dtype == np.float32
        _assert_close(got, expected, name)
    assert [m.training for m in module.modules()] == modes  # (the model is not changed)
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    # initializers: the state dict under its keys (not the unused num_batches_tracked), then
    # the exporters' constants, named <module path>/<what>
    init = {t.name: t for t in proto.graph.initializer}
    state = {k: v for k, v in before.items() if not k.endswith("num_batches_tracked")}
    assert list(init)[:len(state)] == list(state)
    from onnx import numpy_helper
    for key, value in state.items():
        np.testing.assert_array_equal(numpy_helper.to_array(init[key]), value, err_msg=key)


@pytest.mark.parametrize("name", models.MODELS)
def test_every_model(ort, name, tmp_path):
    model = randomize_norms(models.get_model(name, rng=0), 1)
    path = tmp_path / f"{name}.onnx"
    proto = to_onnx(model, path)  # default input_shape (1, 3, 32, 32)
    x = np.random.default_rng(2).uniform(-1, 1, size=(3, 3, 32, 32)).astype(np.float32)
    got = _session(ort, path).run(None, {"input": x})[0]
    _assert_close(got, _eval_output(model, x), name)
    assert model.training  # (not switched to eval by the export)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert [t.name for t in proto.graph.initializer][:len(keys)] == keys
    assert {n.name.rsplit("/", 1)[0] for n in proto.graph.node if n.op_type == "Conv"} == {
        p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_graph_interface(onnx, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 6, 7))
    path = tmp_path / "m.onnx"
    proto = to_onnx(model, path, input_shape=[2, 3, 5, 6])
    assert proto.opset_import[0].domain == "" and proto.opset_import[0].version == OPSET == 17
    assert proto.ir_version == 8 and proto.producer_name == "fastconv"
    onnx.checker.check_model(str(path), full_check=True)
    assert onnx.load(str(path)) == proto
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # (no temporary file)

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, dims(inp)) == ("input", ["batch", 3, 5, 6])
    assert (out.name, dims(out)) == ("output", ["batch", 7])
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [n.name for n in proto.graph.node] == ["0/Conv", "1/Relu", "2/Reshape", "3/Gemm"]
    flat = to_onnx(nn.Flatten(0), tmp_path / "f.onnx", input_shape=(2, 3))
    assert [d.dim_param or d.dim_value for d in flat.graph.output[0].type.tensor_type.shape.dim] \
        == [0]  # (batch x 3: unnamed)


def test_float64_models_give_a_float64_graph(onnx, tmp_path):
    from onnx.reference import ReferenceEvaluator

    model = randomize_norms(nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.GELU("tanh"), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(12, 2)), 3).astype(np.float64)
    proto = to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 2, 4, 4))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.DOUBLE,
                                                              onnx.TensorProto.INT64}
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4))
    # (onnx's reference Erf is float32: the tanh GELU keeps the check at float64 precision)
    got = ReferenceEvaluator(proto).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _eval_output(model, x), rtol=1e-12, atol=1e-12)


def test_a_bf16_model_exports_its_float32_computation_with_a_warning(ort, tmp_path):
    # model.to(precision="bf16") was exported without a word as the float32 computation,
    # ~1e-3 off predict in bf16 mode: the graph stays float32, and the export says so
    import warnings

    import fastconv

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=0), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 5, rng=1)).to(precision="bf16")
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    message = (r"^to_onnx: the model runs in bf16 mode \(2 of its 2 conv/linear layers\), but "
               r"the ONNX graph computes in float32: its outputs differ from predict's by the "
               r"bf16 rounding$")
    with pytest.warns(UserWarning, match=message) as record:
        to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 6, 6))
    assert len(record) == 1 and record[0].filename == __file__  # (the caller's line)
    got = _session(ort, tmp_path / "m.onnx").run(None, {"input": x})[0]
    bf16 = _eval_output(model, x)
    model.to(precision="f32")
    _assert_close(got, _eval_output(model, x), "the float32 computation")
    assert not np.array_equal(got, bf16)
    # the same under autocast, for one layer in bf16 mode, and no word for float32
    model.to(precision="auto")
    with fastconv.autocast("bf16"), pytest.warns(UserWarning, match=r"\(2 of its 2 conv"):
        to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 6, 6))
    model[0].to(precision="bf16")
    with pytest.warns(UserWarning, match=r"\(1 of its 2 conv"):
        to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 6, 6))
    model.to(precision="f32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fastconv.autocast("bf16"):
            to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 6, 6))


def test_shared_parameters_are_one_initializer(ort, tmp_path):
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # tied weights
    model = nn.Sequential(a, nn.Tanh(), b)
    proto, [(got, expected)] = _export_and_run(ort, model, (2, 4), tmp_path)
    assert [t.name for t in proto.graph.initializer] == ["0.weight", "0.bias", "2.bias"]
    assert [list(n.input) for n in proto.graph.node if n.op_type == "Gemm"] == [
        ["input", "0.weight", "0.bias"], ["1/Tanh", "0.weight", "2.bias"]]
    _assert_close(got, expected, "tied")


@pytest.mark.parametrize("build,shape", [
    (lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    (lambda: nn.LocalResponseNorm(2), (2, 5, 3, 3)),       # (an even size: its own formula)
    (lambda: nn.LocalResponseNorm(3), (2, 5, 3)),          # (LRN on a 3-D input, reshaped)
    (lambda: nn.Sequential(nn.Flatten(), nn.Unflatten(1, (4, 9))), (2, 4, 3, 3)),
], ids=["GroupNorm", "LocalResponseNorm-even", "LocalResponseNorm-3d", "Unflatten"])
def test_reshaping_layers_run_on_an_empty_batch(ort, build, shape, tmp_path):
    """Their Reshapes write every size out: onnxruntime cannot infer a -1 from an empty
    batch (it failed on these where fastconv gives an empty output)."""
    module = randomize_norms(build(), 1)
    _, results = _export_and_run(ort, module, shape, tmp_path, batches=(0, 1, shape[0] + 5))
    for got, expected in results:
        assert got.shape == expected.shape
        _assert_close(got, expected, repr(module))


def test_errors(onnx, tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    class MyReLU(nn.ReLU):
        pass

    path = tmp_path / "m.onnx"
    with pytest.raises(TypeError, match=r"module '1\.body\.0' is a .*Custom, which has no "
                                        r"ONNX exporter.*Conv2d"):
        to_onnx(nn.Sequential(nn.ReLU(), nn.Residual(nn.Sequential(Custom()))), path)
    with pytest.raises(TypeError, match="the model is a .*MyReLU"):
        to_onnx(MyReLU(), path, input_shape=(1, 3))
    with pytest.raises(TypeError, match="expected a fastconv.nn.Module, got str"):
        to_onnx("model", path)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    for bad in [(3, 32, 32, 0), (1,), "1, 3, 32, 32", (1, 3, 32.0, 32), (1, True, 8, 8), None]:
        with pytest.raises(ValueError, match=r"input_shape must be a tuple \(batch, \.\.\.\)"):
            to_onnx(conv, path, input_shape=bad)
    with pytest.raises(ValueError, match=r"input_shape \(1, 4, 8, 8\) does not fit the model: "
                                         r".*Conv2d.*"):
        to_onnx(conv, path, input_shape=(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"input_shape \(1, 3, 8\) does not fit"):
        to_onnx(conv, path, input_shape=(1, 3, 8))
    # an image shape without the batch axis passed as one unbatched image, then failed in
    # the output's dims with "... got (4, 32, 32)", a shape the user never gave
    with pytest.raises(ValueError, match=r"input_shape \(3, 8, 8\) does not fit the model with "
                                         r"a batch of 4 \(axis 0 is the batch\): .*\(input_shape "
                                         r"starts with the batch axis: \(1, 3, 8, 8\)\?\)"):
        to_onnx(nn.Conv2d(3, 4, 3), path, input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"input_shape \(3, 32, 32\) does not fit the model: .*"
                                         r"\(input_shape starts with the batch axis"):
        to_onnx(models.lenet5(), path, input_shape=(3, 32, 32))        # fails at once
    # the graph's first axis is the batch, of any size: unflattening it is refused (its sizes
    # were the export's batch: another batch failed or came out in another shape)
    with pytest.raises(ValueError, match=r"the model \(Unflatten.*\) unflattens the batch axis"):
        to_onnx(nn.Unflatten(0, (1, -1)), path, input_shape=(3, 4))
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).astype(np.float64))
    with pytest.raises(ValueError, match=r"mixes dtypes \['float32', 'float64'\].*astype"):
        to_onnx(mixed, path, input_shape=(1, 2))
    assert not path.exists()


def test_without_onnx_an_import_error_with_the_pip_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ImportError, match=r"needs the onnx package.*pip install onnx "
                                          r"onnxruntime.*\.\[onnx\]"):
        to_onnx(nn.ReLU(), tmp_path / "m.onnx", input_shape=(1, 3))
    assert not (tmp_path / "m.onnx").exists()


def test_the_cases_cover_every_layer_of_fastconv_nn():
    layers = {getattr(nn, name) for name in nn.__all__}
    layers = {cls for cls in layers if isinstance(cls, type) and issubclass(cls, nn.Module)}
    # (MaxUnpool2d takes two inputs: tested on its own, and refused by to_onnx)
    assert {type(build()) for _, build, _ in LAYERS} == layers - {nn.Module, nn.MaxUnpool2d}
    assert set(EXPORTERS) == layers - {nn.Module, nn.MaxUnpool2d}


def test_metadata(ort, tmp_path):
    path = tmp_path / "m.onnx"
    to_onnx(nn.ReLU(), path, input_shape=(1, 3), metadata={"classes": '["a", "b"]'})
    assert _session(ort, path).get_modelmeta().custom_metadata_map == {"classes": '["a", "b"]'}
    with pytest.raises(TypeError, match="metadata must map str to str"):
        to_onnx(nn.ReLU(), path, input_shape=(1, 3), metadata={"epochs": 3})


# --------------------------------------------------------------------------------------------
# fastconv-train --export-onnx
# --------------------------------------------------------------------------------------------

@pytest.fixture
def train_cli(tmp_path, monkeypatch):
    """fastconv-train's main on a synthetic CIFAR-10, from tmp_path, without plots; returns
    run(out, *options) -> exit status."""
    from fake_cifar import fake_batches, write_folder
    from fastconv import plotting
    from fastconv.cli import train

    data = tmp_path / "cifar"
    write_folder(data, fake_batches(learnable=True))
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plotting, "have_matplotlib", lambda: False)

    def run(out, *options):
        return train.main(["--data-dir", str(data), "--out", str(out), "--no-download", "--quiet",
                           "--model", "lenet5", "--epochs", "1", "--limit-train", "200",
                           "--limit-test", "50", "--batch-size", "50", *options])
    return run


def test_train_export_onnx(ort, train_cli, tmp_path, capsys):
    import json

    from fastconv import checkpoint, data
    from fastconv.cli import train

    out = tmp_path / "run"
    assert train_cli(out, "--export-onnx") == 0, capsys.readouterr().err
    session = _session(ort, out / train.ONNX_NAME)
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["model"] == "lenet5" and meta["class_names"] == list(data.CLASS_NAMES)
    assert meta == checkpoint.load_weights_metadata(out / train.WEIGHTS_NAME)
    model = models.lenet5()
    model.load_state_dict(checkpoint.load_weights(out / train.WEIGHTS_NAME))
    x = data.to_float32(data.load_cifar10(tmp_path / "cifar", download=False).x_test[:7])
    _assert_close(session.run(None, {"input": x})[0], model.eval()(x), "lenet5")
    # a finished run exported again, resumed, to a PATH of one's own (relative to the
    # current folder; its folder made)
    assert train_cli(out, "--resume", "--export-onnx", "exported/net.onnx") == 0
    again = _session(ort, tmp_path / "exported" / "net.onnx")
    np.testing.assert_array_equal(again.run(None, {"input": x})[0],
                                  session.run(None, {"input": x})[0])


def test_train_export_onnx_without_onnx_fails_before_training(train_cli, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert train_cli(tmp_path / "run", "--export-onnx") == 2
    assert capsys.readouterr().err.strip() == (
        "fastconv-train: error: --export-onnx needs the onnx package: pip install onnx")
    assert not (tmp_path / "run").exists()


def test_max_pool_with_indices_is_refused(onnx, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(ValueError, match="module '1' is a MaxPool2d with return_indices=True"):
        to_onnx(model, tmp_path / "m.onnx", (1, 3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
