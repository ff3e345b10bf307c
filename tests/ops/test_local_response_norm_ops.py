"""local_response_norm and LocalResponseNorm: the fast op (shifted channel slices), the reference
(a band matrix over the channels) and PyTorch through check_op (central differences of the
reference included), hypothesis, layouts, bad arguments; the layer against
torch.nn.LocalResponseNorm; ONNX's LRN, which is PyTorch's for an odd size only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import functional as F
from fastconv import nn
from fastconv import reference as R

from checks import check_layer, check_layouts, check_op, pair


def lrn(module, **kwargs):
    return pair(module, "local_response_norm", **kwargs)


def torch_lrn(**kwargs):
    def fn(x):
        import torch
        return torch.nn.functional.local_response_norm(x, **kwargs)
    return fn


def spread(rng, shape, dtype):
    """N(0, 3^2): the denominator's x^2 term matters."""
    return rng.standard_normal(shape) * 3


CASES = [
    ((2, 7, 3, 4), dict(size=5)),                                   # AlexNet's size, defaults
    ((2, 7, 3, 4), dict(size=5, alpha=1e-2, beta=0.75, k=2.0)),     # AlexNet's paper values
    ((2, 6, 5), dict(size=4, alpha=0.3, beta=0.5, k=1.0)),          # even size, (N, C, L)
    ((1, 3, 2, 2, 2), dict(size=1, alpha=0.5, beta=1.5, k=0.5)),    # one channel, 5-D
    ((2, 2, 3, 3), dict(size=7, alpha=0.2)),                        # window wider than C
    ((3, 1, 4, 4), dict(size=3, alpha=1.0, beta=0.25, k=3.0)),
    ((0, 4, 3, 3), dict(size=3)),                                   # empty batch
]


@pytest.mark.parametrize("shape,kwargs", CASES, ids=str)
def test_matches_torch(torch, rng, shape, kwargs):
    check_op(lrn(F, **kwargs), lrn(R, **kwargs), torch_lrn(**kwargs), [shape], make=spread,
             rng=rng, torch=torch)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 9), rest=st.lists(st.integers(1, 4), min_size=1,
                                                             max_size=2),
       size=st.integers(1, 10), alpha=st.floats(1e-4, 2.0), beta=st.floats(0.1, 2.0),
       k=st.floats(0.5, 3.0), seed=st.integers(0, 2**32 - 1))
def test_property(n, c, rest, size, alpha, beta, k, seed):
    torch = pytest.importorskip("torch")
    kwargs = dict(size=size, alpha=alpha, beta=beta, k=k)
    check_op(lrn(F, **kwargs), lrn(R, **kwargs), torch_lrn(**kwargs), [(n, c, *rest)],
             make=spread, rng=np.random.default_rng(seed), torch=torch, max_numerical=12)


def test_layouts_and_integer_input(rng):
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    for forward, backward in (lrn(F, size=3, alpha=0.1), lrn(R, size=3, alpha=0.1)):
        check_layouts(forward, x)
        check_layouts(lambda a: backward(a, x), g)
        check_layouts(lambda a: backward(g, a), x)
        assert forward(np.ones((1, 2, 2), np.int16)).dtype == np.float32


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_bad_arguments(module):
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"local_response_norm: x must be 3-D or more \(N, C, \*\), "
                                         r"got shape \(2, 3\)"):
        module.local_response_norm(np.ones((2, 3)), 2)
    for size in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="local_response_norm: size must be a positive int"):
            module.local_response_norm(x, size)
    for name in ("alpha", "beta", "k"):
        with pytest.raises(TypeError, match=f"local_response_norm: {name} must be a real number"):
            module.local_response_norm(x, 2, **{name: "1"})
    with pytest.raises(ValueError, match=r"local_response_norm_backward: grad_y shape \(2, 3, 5\) "
                                         r"must equal x shape \(2, 3, 4\)"):
        module.local_response_norm_backward(np.ones((2, 3, 5)), x, 2)
    with pytest.raises(TypeError, match="real numbers"):
        module.local_response_norm(np.array([[["a"]]]), 2)


# ---- the layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,shape", [((5,), (2, 6, 4, 4)), ((4, 0.3, 0.6, 2.0), (3, 5, 6)),
                                        ((3, 1e-2, 0.75, 2.0), (2, 4, 3, 2, 2))], ids=str)
def test_layer_matches_torch(torch, args, shape):
    check_layer(torch, lambda: nn.LocalResponseNorm(*args),
                lambda t: t.nn.LocalResponseNorm(*args), shape)


def test_layer_repr_shape_and_errors(torch):
    layer = nn.LocalResponseNorm(4, alpha=1e-3, beta=0.5, k=2.0)
    assert repr(layer) == repr(torch.nn.LocalResponseNorm(4, alpha=1e-3, beta=0.5, k=2.0))
    assert repr(nn.LocalResponseNorm(5)) == repr(torch.nn.LocalResponseNorm(5))
    assert layer.state_dict() == {} and layer.output_shape((2, 3, 4, 4)) == (2, 3, 4, 4)
    x = np.random.default_rng(0).standard_normal((0, 3, 4))
    assert layer(x).shape == x.shape and layer.backward(x).shape == x.shape   # empty batch
    with pytest.raises(ValueError, match=r"LocalResponseNorm\(4, .*expected input of shape "
                                         r"\(N, C, \*\) \(3-D or more\), got \(2, 3\)"):
        layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="LocalResponseNorm: size must be a positive int"):
        nn.LocalResponseNorm(0)
    y = layer(np.ones((1, 2, 3), np.float64))
    assert y.dtype == np.float64
    with pytest.raises(ValueError, match="grad_y has shape"):
        layer.backward(np.ones((1, 2, 4)))


def test_onnx_lrn_is_torchs_window_for_odd_sizes_only(torch, tmp_path):
    """The exporter's choice, checked in onnxruntime: an LRN node for an odd size; for an even
    size ONNX's window is one channel later than PyTorch's (and onnxruntime refuses an even
    LRN), so the formula is built instead."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from fastconv.export import to_onnx

    x = np.random.default_rng(1).standard_normal((2, 6, 3, 3)).astype(np.float32) * 3
    for size in (3, 4):
        layer = nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=1.0)
        proto = to_onnx(layer, tmp_path / "lrn.onnx", input_shape=x.shape)
        assert ("LRN" in {n.op_type for n in proto.graph.node}) == (size % 2 == 1)
        want = torch.nn.functional.local_response_norm(torch.tensor(x), size, 0.5, 0.75,
                                                       1.0).numpy()
        got = ort.InferenceSession(str(tmp_path / "lrn.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # ONNX's LRN as its specification writes it (onnxruntime refuses an even size, and
        # onnx's reference evaluator loops over the batch axis instead of the channels)
        c1, c2 = (size - 1) // 2, -(-(size - 1) // 2)
        square_sum = np.stack([(x[:, max(0, c - c1):c + c2 + 1] ** 2).sum(axis=1)
                               for c in range(x.shape[1])], axis=1)
        spec = x / (1.0 + 0.5 / size * square_sum) ** 0.75
        assert np.allclose(spec, want, rtol=1e-5, atol=1e-6) == (size % 2 == 1)
