"""Numerical comparison helpers shared by the tests."""

from __future__ import annotations

import numpy as np

from fastconv import nn

# Errors are measured relative to the largest magnitude of the expected array: sums of K
# products in float32 carry ~sqrt(K) * 6e-8 relative error (K <= a few thousand here), so
# 1e-5 leaves a wide margin yet catches any wrong term (an error of one term is ~1/K >= 1e-4).
# float64 sums carry ~sqrt(K) * 1e-16; 1e-12 is the "exact up to rounding" bar.
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(actual, expected, dtype=None, tol=None, what=""):
    """Assert max|actual - expected| <= tol * max(1, max|expected|) and equal shapes."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if tol is None:
        tol = TOLERANCE[np.dtype(dtype or actual.dtype)]
    if expected.size == 0:
        return
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:.1g} * {scale:.3g}"


def randomize_norms(model, seed):
    """Give the BatchNorm/LayerNorm/GroupNorm/InstanceNorm2d layers of `model` non-trivial affine parameters and running
    statistics (PyTorch's defaults, ones and zeros, would hide mistakes); returns `model`."""
    gen = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm,
                          nn.InstanceNorm2d)):
            if m.weight is not None:
                m.weight.data[...] = gen.uniform(0.5, 1.5, m.weight.data.shape)
            if m.bias is not None:
                m.bias.data[...] = gen.normal(size=m.bias.data.shape)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean[...] = gen.normal(size=m.running_mean.shape)
                m.running_var[...] = gen.uniform(0.5, 2.0, m.running_var.shape)
    return model
