"""The Flax NNX port of the tiny MLP-Mixer (NHWC in, logits out), written as NNX code is
written today and checked by the engine's NNX frontend (`dln check --flax
parity/examples/tiny_mixer/nnx_model.py:build`).

Names follow torch's, so no mapping is needed: `blocks` is an nnx.List (`blocks.0.norm1`),
each MLP an nnx.Sequential (`blocks.0.token_mlp.layers.0`, torch `blocks.0.token_mlp.0`).
The patch embedding subclasses nnx.Conv and inherits its `__call__`. Every NNX default
that differs from torch is spelled out: the patch conv's padding (nnx.Conv pads 'SAME'),
LayerNorm's and BatchNorm's epsilon 1e-5 (NNX's LayerNorm: 1e-6), BatchNorm's momentum
(1 - torch's 0.1), exact-erf GELU (nnx.gelu approximates with tanh by default) and the
LeakyReLU slope 0.2 (jax.nn.leaky_relu's default is 0.01). The two classic mistakes
are switches of `TinyMixer` (gelu_approximate=True, leaky_slope=None), for the tests
that show the engine names their module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

DIM = 12
PATCH = 4
TOKENS = 16
CLASSES = 3
LEAKY_SLOPE = 0.2
TORCH_NORM_EPS = 1e-5
TORCH_BATCHNORM_MOMENTUM = 0.9  # Flax's momentum is 1 - torch's (0.1)


class PatchEmbed(nnx.Conv):
    """Non-overlapping PATCH x PATCH patches: a strided conv without padding."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        super().__init__(3, dim, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID",
                         rngs=rngs)


class GELU(nnx.Module):
    def __init__(self, approximate: bool = False):
        self.approximate = approximate

    def __call__(self, x):
        return nnx.gelu(x, approximate=self.approximate)  # torch nn.GELU: exact erf


class LeakyReLU(nnx.Module):
    def __init__(self, negative_slope: float | None = LEAKY_SLOPE):
        self.negative_slope = negative_slope

    def __call__(self, x):
        if self.negative_slope is None:
            return jax.nn.leaky_relu(x)
        return jax.nn.leaky_relu(x, negative_slope=self.negative_slope)


def _mlp(features: int, hidden: int, approximate: bool, rngs: nnx.Rngs) -> nnx.Sequential:
    return nnx.Sequential(nnx.Linear(features, hidden, rngs=rngs), GELU(approximate),
                          nnx.Linear(hidden, features, rngs=rngs))


class MixerBlock(nnx.Module):
    def __init__(self, tokens: int, dim: int, approximate: bool, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=TORCH_NORM_EPS, rngs=rngs)
        self.token_mlp = _mlp(tokens, 2 * tokens, False, rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=TORCH_NORM_EPS, rngs=rngs)
        self.channel_mlp = _mlp(dim, 2 * dim, approximate, rngs)

    def __call__(self, x):                                   # (N, T, D)
        mixed = self.token_mlp(jnp.swapaxes(self.norm1(x), 1, 2))
        x = x + jnp.swapaxes(mixed, 1, 2)
        return x + self.channel_mlp(self.norm2(x))


class TinyMixer(nnx.Module):
    def __init__(self, dim: int = DIM, tokens: int = TOKENS, classes: int = CLASSES,
                 depth: int = 2, *, gelu_approximate: bool = False,
                 leaky_slope: float | None = LEAKY_SLOPE, rngs: nnx.Rngs):
        self.patch = PatchEmbed(dim, rngs=rngs)
        self.norm = nnx.BatchNorm(dim, momentum=TORCH_BATCHNORM_MOMENTUM,
                                  epsilon=TORCH_NORM_EPS, rngs=rngs)
        self.act = LeakyReLU(leaky_slope)
        self.blocks = nnx.List([MixerBlock(tokens, dim, gelu_approximate and i == depth - 1,
                                           rngs=rngs) for i in range(depth)])
        self.pool_norm = nnx.LayerNorm(dim, epsilon=TORCH_NORM_EPS, rngs=rngs)
        self.head = nnx.Linear(dim, classes, rngs=rngs)

    def __call__(self, x):                                   # (N, H, W, 3)
        x = self.act(self.norm(self.patch(x)))
        x = x.reshape(x.shape[0], -1, x.shape[-1])           # (N, T, D), tokens row-major
        for block in self.blocks:
            x = block(x)
        return self.head(self.pool_norm(x).mean(axis=1))


def build(seed: int = 0, **switches) -> TinyMixer:
    """The port with seeded (random) weights; `dln check` converts the torch model's into
    it and puts it in eval mode (BatchNorm on its running averages)."""
    return TinyMixer(rngs=nnx.Rngs(seed), **switches)
