"""The Flax Linen port of torch_model.py: the bias table, its index (a constant here, as
ports hold it) and gamma are variables of the same names; `swap_index` plants a defect
(the index's two axes swapped)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from parity.examples.timm_parts.torch_model import CLASSES, HEADS, WIDTH, WINDOW


def relative_position_index(window: int, swap: bool = False) -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + window - 1
    index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
    return index.T if swap else index


class WindowAttention(nn.Module):
    dim: int
    window: int
    heads: int
    swap_index: bool = False

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        table = self.param("relative_position_bias_table", nn.initializers.zeros,
                           ((2 * self.window - 1) ** 2, self.heads))
        qkv = nn.Dense(3 * self.dim, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        index = relative_position_index(self.window, self.swap_index).reshape(-1)
        bias = table[index].reshape(n, n, -1).transpose(2, 0, 1)
        attn = nn.softmax((q * (c // self.heads) ** -0.5) @ k.swapaxes(-2, -1) + bias, axis=-1)
        return nn.Dense(self.dim, name="proj")((attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c))


class Parts(nn.Module):
    swap_index: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(WIDTH, (3, 3), (2, 2), padding=((1, 1), (1, 1)), name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x))
        x = nn.LayerNorm(1e-5, name="norm")(x)
        tokens = x.reshape(x.shape[0], -1, WIDTH)
        gamma = self.param("gamma", nn.initializers.ones, (WIDTH,))
        tokens = tokens + gamma * WindowAttention(WIDTH, WINDOW, HEADS, self.swap_index,
                                                  name="attn")(tokens)
        return nn.Dense(CLASSES, name="head")(tokens.mean(1))


def build() -> Parts:
    return Parts()


def build_swapped_index() -> Parts:
    return Parts(swap_index=True)
