"""Running the Flax DLN on images: one jit-compiled apply per network config.

Precision is an argument, not a process-wide setting: every apply built here is traced
under `jax.default_matmul_precision(precision)`, by default PARITY_PRECISION ("highest":
true float32 convolutions and matmuls). Parity with PyTorch is measured at that
precision; on GPUs XLA's default would use TF32 / bf16 passes and no float32 tolerance
would hold. Importing this module changes no JAX setting. The other places that trace
the port scope the same way: port/trainer.py (the train step), parity/engine/linen.py
(per-block capture) and parity/grads/model_gradients.py (gradient parity).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from core.config import DLNConfig
from port.model import DLN
from port.pointwise import pointwise_conv_as_dot

PARITY_PRECISION = "highest"  # true float32: the precision parity is measured at


def params_to_device(params: dict) -> dict:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def make_apply(config: DLNConfig, pointwise_as_dot: bool = True,
               precision: str = PARITY_PRECISION) -> Callable:
    """jit(params, x_nhwc) -> prediction, for one config (shapes compile on first use).

    pointwise_as_dot: compute the 1 x 1 convolutions as matrix products
    (port/pointwise.py), ~20% faster on XLA CPU and equal to float32 rounding;
    False runs every convolution as written in port/model.py.
    precision: JAX's matmul / convolution precision for the whole forward
    ("highest", "high", "default", ...).
    """
    model = DLN(config)

    def forward(params, x):
        with contextlib.ExitStack() as stack:
            stack.enter_context(jax.default_matmul_precision(precision))
            if pointwise_as_dot:
                stack.enter_context(nn.intercept_methods(pointwise_conv_as_dot))
            return model.apply({"params": params}, x)

    return jax.jit(forward)


def make_enhancer(params_tree: dict, config: DLNConfig) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one RGB float32 HWC image to the network's float32 HWC output."""
    apply = make_apply(config)
    params = params_to_device(params_tree)

    def enhance(image: np.ndarray) -> np.ndarray:
        out = apply(params, jnp.asarray(image, jnp.float32)[None])
        return np.asarray(jax.block_until_ready(out))[0]

    return enhance
