"""What every model builder shares: the one random generator it draws every layer's initial
weights from, and the check of its ``num_classes``."""

from __future__ import annotations

import numpy as np

from ..init import as_generator
from ..nn.module import _positive_int


def model_generator(rng, seed) -> np.random.Generator:
    """The generator of a builder called with ``rng=`` (a Generator or an int seed) or its
    alias ``seed=``; neither gives fresh OS entropy. Both given: ValueError."""
    if rng is not None and seed is not None:
        raise ValueError("give either rng or seed, not both")
    return as_generator(seed if rng is None else rng)


def check_num_classes(num_classes, builder: str) -> int:
    """A classifier builder's ``num_classes``: a positive int (ValueError naming the builder and
    ``num_classes``; the classifier layer's own error would name only ``out_features``)."""
    return _positive_int(num_classes, "num_classes", builder)
