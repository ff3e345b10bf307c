"""GELU and SiLU, forward and backward, fastconv and PyTorch interleaved call by call on an
activation of the size airbench94 applies GELU to (256 images x 64 x 32 x 32 float32, 64 MiB:
beyond the caches). Records both medians, the median and quartiles of the per-round ratios
(PyTorch / fastconv) and both GB/s (bytes read and written by one pass: x and y forward;
grad_y, x and grad_x backward). Each call's result is compared with PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import functional as F

from interleaved import paired_stats, rounds_for, run_interleaved

SHAPE = (256, 64, 32, 32)
OPS = [("gelu", {}), ("gelu", {"approximate": "tanh"}), ("silu", {})]


def _data():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) * 2).astype(np.float32)
    return x, rng.standard_normal(SHAPE).astype(np.float32)


@pytest.mark.parametrize("pass_", ["forward", "backward"])
@pytest.mark.parametrize("op", OPS, ids=lambda op: " ".join([op[0], *op[1].values()]))
def test_activation_interleaved_with_torch(benchmark, request, op, pass_):
    torch = request.getfixturevalue("torch_or_skip")
    name, kwargs = op
    x, gy = _data()
    xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
    if pass_ == "forward":
        calls = {"fastconv": lambda: getattr(F, name)(x, **kwargs),
                 "torch": lambda: getattr(torch.nn.functional, name)(xt, **kwargs).numpy()}
    else:
        torch_backward = getattr(torch.ops.aten, name + "_backward")
        calls = {"fastconv": lambda: getattr(F, name + "_backward")(gy, x, **kwargs),
                 "torch": lambda: torch_backward(gyt, xt, **kwargs).numpy()}
    want = calls["torch"]()

    def check(_, result):
        err = float(np.max(np.abs(result - want)))
        assert err <= 1e-5 * max(1.0, float(np.max(np.abs(want)))), err

    label = " ".join([name, *kwargs.values()])
    benchmark.group = f"{label} {pass_} {SHAPE}, fastconv and PyTorch interleaved"
    times = run_interleaved(benchmark, calls, rounds_for(calls, 2.0, 5, 200), check)
    stats = paired_stats(times)
    nbytes = x.nbytes * (2 if pass_ == "forward" else 3)
    benchmark.extra_info.update(kind="paired_activation", layer=label, pass_=pass_,
                                bytes=nbytes, **stats,
                                fastconv_gb_per_s=nbytes / stats["fastconv_median_s"] / 1e9,
                                torch_gb_per_s=nbytes / stats["torch_median_s"] / 1e9)
