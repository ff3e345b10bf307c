"""The compiled bindings' own dtype switch: float32 and float64 reach the kernels, any other
dtype is a TypeError naming the argument (fastconv.functional converts before calling)."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import _core


def calls(dtype):
    """One call per kind of op, every array of `dtype`, each with the argument that picks the
    kernel's dtype."""
    a = lambda *shape: np.ones(shape, dtype)  # noqa: E731
    return {
        "conv2d_forward": ("x", lambda: _core.conv2d_forward(
            a(1, 2, 4, 4), a(3, 2, 3, 3), None, a(1, 3, 2, 2), 1, 1, 0, 0, 1, 1, 1)),
        "conv2d_backward_weight": ("grad_y", lambda: _core.conv2d_backward_weight(
            a(1, 3, 2, 2), a(1, 2, 4, 4), a(3, 2, 3, 3), 1, 1, 0, 0, 1, 1, 1)),
        "max_pool2d_backward": ("grad_y", lambda: _core.max_pool2d_backward(
            a(1, 1, 1, 1), np.zeros((1, 1, 1, 1), np.int64), a(1, 1, 2, 2))),
        "gemm": ("a", lambda: _core.gemm(a(2, 3), a(3, 4), a(2, 4))),
        "sgd_update": ("param", lambda: _core.sgd_update(
            a(5), a(5), None, 0.1, 0.0, 0.0, 0.0, False, True)),
        "relu_forward": ("x", lambda: _core.relu_forward(a(5), a(5))),
    }


@pytest.mark.parametrize("op", sorted(calls(np.float32)))
def test_other_dtypes_are_a_type_error_naming_the_argument(op):
    name, call = calls(np.int32)[op]
    with pytest.raises(TypeError, match=f"^{name} must be a float32 or float64 array, got int32"):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(calls(np.float32)))
def test_float32_and_float64_reach_the_kernels(op, dtype):
    _, call = calls(dtype)[op]
    call()
