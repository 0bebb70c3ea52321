"""Fresh DLN weights with the authors' initialisation, in numpy, for either framework.

Both trainers start from the same numbers this way (the training-parity check needs
that, and `dln train --framework jax` and `--framework torch` with one seed start
identically). The authors' rules: Kaiming-normal conv weights
(fan_in, gain sqrt 2: std = sqrt(2 / fan_in)), zero conv biases, torch-default Linear
weights (Kaiming-uniform with a = sqrt 5: U(-1/sqrt(fan_in), 1/sqrt(fan_in))), PReLU
slopes 0.25. With `zero_last_conv` the final plain conv (`out`) starts at zero, so the
untrained network is the identity (pred = x + 0) and training starts from the input
instead of from a residual of magnitude ~50.
"""

from __future__ import annotations

import numpy as np

from core.config import DLNConfig
from weights.spec import tensor_specs

PRELU_INIT = 0.25
LAST_CONV = ("out.weight", "out.bias")


def authors_initial_state(config: DLNConfig, seed: int, zero_last_conv: bool = False
                          ) -> dict[str, np.ndarray]:
    """A torch-named float32 state dict at the authors' initialisation."""
    rng = np.random.default_rng([int(seed), 0xD1])
    state: dict[str, np.ndarray] = {}
    for spec in tensor_specs(config):
        shape = spec.torch_shape
        if spec.kind == "conv":
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        elif spec.kind == "dense":
            bound = 1.0 / np.sqrt(shape[1])
            value = rng.uniform(-bound, bound, size=shape)
        elif spec.kind == "bias":
            value = np.zeros(shape)
        else:
            value = np.full(shape, PRELU_INIT)
        state[spec.torch_name] = value.astype(np.float32)
    if zero_last_conv:
        zero_last(state)
    return state


def zero_last(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Set the final conv (`out`) of a torch-named state dict to zero, in place."""
    for name in LAST_CONV:
        state[name] = np.zeros_like(state[name])
    return state
