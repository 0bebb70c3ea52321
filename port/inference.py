"""Running the Flax DLN on images: one jit-compiled apply per network config."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from core.config import DLNConfig
from port.model import DLN
from port.pointwise import pointwise_conv_as_dot

# Parity with PyTorch needs true float32 convolutions; on GPUs XLA would otherwise
# use TF32 / bf16 passes and no float32 tolerance would hold.
jax.config.update("jax_default_matmul_precision", "highest")


def params_to_device(params: dict) -> dict:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def make_apply(config: DLNConfig, pointwise_as_dot: bool = True) -> Callable:
    """jit(params, x_nhwc) -> prediction, for one config (shapes compile on first use).

    pointwise_as_dot: compute the 1 x 1 convolutions as matrix products
    (port/pointwise.py), ~20% faster on XLA CPU and equal to float32 rounding;
    False runs every convolution as written in port/model.py.
    """
    model = DLN(config)
    if not pointwise_as_dot:
        return jax.jit(lambda params, x: model.apply({"params": params}, x))

    def forward(params, x):
        with nn.intercept_methods(pointwise_conv_as_dot):
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
