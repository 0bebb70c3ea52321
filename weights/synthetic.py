"""Seeded random weights in the authors' layout, for parity runs and tests.

Unlike the authors' initialisation (zero biases, every slope 0.25, a residual of
magnitude ~50), these weights exercise every tensor: biases are non-zero, every
PReLU has its own slope in [0.05, 0.5], and conv weights are scaled so that
activations stay O(1) through the whole network, where float32 comparisons mean
something.
"""

from __future__ import annotations

import numpy as np

from core.config import DLNConfig
from core.errors import InputError
from weights.spec import tensor_specs


SEED_LIMIT = 2**32  # seeds are 32-bit everywhere in dln (dln/arguments.py)


def random_torch_state(config: DLNConfig, seed: int = 0) -> dict[str, np.ndarray]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
            not 0 <= seed < SEED_LIMIT:
        raise InputError(f"a seed is a whole number from 0 to {SEED_LIMIT - 1:,}, got {seed!r}")
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for spec in tensor_specs(config):
        shape = spec.torch_shape
        if spec.kind == "conv":
            fan_in = shape[1] * shape[2] * shape[3]
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
        elif spec.kind == "dense":
            bound = 1.0 / np.sqrt(shape[1])
            value = rng.uniform(-bound, bound, size=shape)
        elif spec.kind == "bias":
            value = rng.uniform(-0.1, 0.1, size=shape)
        else:  # prelu
            value = rng.uniform(0.05, 0.5, size=shape)
        state[spec.torch_name] = value.astype(np.float32)
    return state
