"""Rounding float32 to bfloat16: the NumPy reference (fastconv.precision.round_to_bf16), the
kernels' (fastconv._core.round_to_bf16, used in every packing) and PyTorch's agree."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import _core
from fastconv.precision import round_to_bf16


def cases():
    """Every kind of float32: random bit patterns (NaNs with payloads, denormals, infs), the
    ties, the edges of the range."""
    gen = np.random.default_rng(7)
    bits = gen.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x00000000, 0x80000000, 0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F817FFF,
                        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F800000, 0xFF800000,
                        0x7FC00000, 0x7F800001, 0xFF800001, 0x7F808000, 0x00000001, 0x007FFFFF,
                        0x00008000, 0x00018000], np.uint32)
    return np.concatenate([special, bits]).view(np.float32)


def test_kernel_rounding_is_the_reference_bit_for_bit():
    x = cases()
    y = np.empty_like(x)
    _core.round_to_bf16(x, y)
    assert np.array_equal(y.view(np.uint32), round_to_bf16(x).view(np.uint32))
    z = x.copy()
    _core.round_to_bf16(z, z)  # in place
    assert np.array_equal(z.view(np.uint32), y.view(np.uint32))


def test_rounding_matches_torch(torch):
    x = cases()
    ours = round_to_bf16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(ours), nan) and np.array_equal(np.isnan(theirs), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


@pytest.mark.parametrize("value,expected", [
    (1.0 + 2 ** -8, 1.0),                 # a tie: to the even neighbour, down
    (1.0 + 3 * 2 ** -8, 1.0 + 2 ** -6),   # a tie: to the even neighbour, up
    (1.0 + 2 ** -8 + 2 ** -20, 1.0 + 2 ** -7),  # past the tie: up
    (-(1.0 + 2 ** -8), -1.0),
    (3.4e38, np.inf),                     # past bf16's largest (3.3895e38): inf
    (3.3895e38, 3.3895313892515355e38),
    (np.inf, np.inf), (-np.inf, -np.inf), (0.0, 0.0),
])
def test_round_to_nearest_even(value, expected):
    assert round_to_bf16(np.float32(value))[()] == np.float32(expected)


def test_nan_stays_nan_even_with_its_payload_in_the_dropped_bits():
    x = np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0x7F80FFFF], np.uint32).view(np.float32)
    assert np.isnan(round_to_bf16(x)).all()
    y = np.empty_like(x)
    _core.round_to_bf16(x, y)
    assert np.isnan(y).all()
    assert np.array_equal(np.signbit(y), np.signbit(x))


def test_round_to_bf16_checks_its_arrays():
    with pytest.raises(TypeError, match="float32"):
        _core.round_to_bf16(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="elements"):
        _core.round_to_bf16(np.zeros(3, np.float32), np.zeros(4, np.float32))
