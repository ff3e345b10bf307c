"""The one random generator a model builder draws every layer's initial weights from."""

from __future__ import annotations

import numpy as np

from ..init import as_generator


def model_generator(rng, seed) -> np.random.Generator:
    """The generator of a builder called with ``rng=`` (a Generator or an int seed) or its
    alias ``seed=``; neither gives fresh OS entropy. Both given: ValueError."""
    if rng is not None and seed is not None:
        raise ValueError("give either rng or seed, not both")
    return as_generator(seed if rng is None else rng)
