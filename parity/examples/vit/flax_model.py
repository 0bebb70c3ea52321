"""The Flax Linen port of torch_model.py (names by the rename rule: patch_embed/proj,
blocks_0/attn/qkv, ...; cls_token and pos_embed are parameters of the root). Planted
defects for the tests: `ln_eps` (1e-5 for timm's 1e-6), `tokens_transposed` (a feature
extractor returning (N, C, L)), `scale_power` (1/head_dim instead of head_dim^-0.5),
`qkv_order` (k, q, v taken from the fused projection), `gelu_tanh`."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from parity.examples.vit.torch_model import SMALL, SQUARE


class Attention(nn.Module):
    dim: int
    heads: int
    scale_power: float = -0.5
    qkv_order: tuple = (0, 1, 2)

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        qkv = nn.Dense(3 * self.dim, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).transpose(2, 0, 3, 1, 4)
        q, k, v = (qkv[i] for i in self.qkv_order)
        scale = (c // self.heads) ** self.scale_power
        attn = nn.softmax((q * scale) @ k.swapaxes(-2, -1), axis=-1)
        return nn.Dense(self.dim, name="proj")((attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c))


class Mlp(nn.Module):
    dim: int
    gelu_tanh: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(4 * self.dim, name="fc1")(x), approximate=self.gelu_tanh)
        return nn.Dense(self.dim, name="fc2")(x)


class Block(nn.Module):
    dim: int
    heads: int
    ln_eps: float = 1e-6
    scale_power: float = -0.5
    qkv_order: tuple = (0, 1, 2)
    gelu_tanh: bool = False

    @nn.compact
    def __call__(self, x):
        attn = Attention(self.dim, self.heads, self.scale_power, self.qkv_order, name="attn")
        x = x + attn(nn.LayerNorm(self.ln_eps, name="norm1")(x))
        mlp = Mlp(self.dim, self.gelu_tanh, name="mlp")
        return x + mlp(nn.LayerNorm(self.ln_eps, name="norm2")(x))


class PatchEmbed(nn.Module):
    patch: int
    dim: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.dim, (self.patch, self.patch), (self.patch, self.patch),
                    padding="VALID", name="proj")(x)
        return x.reshape(x.shape[0], -1, self.dim)


class VisionTransformer(nn.Module):
    image: int = 224
    patch: int = 16
    dim: int = 192
    depth: int = 12
    heads: int = 3
    classes: int = 1000
    class_token: bool = True
    ln_eps: float = 1e-6
    tokens_transposed: bool = False
    scale_power: float = -0.5
    qkv_order: tuple = (0, 1, 2)
    gelu_tanh: bool = False

    @nn.compact
    def __call__(self, x):
        tokens = (self.image // self.patch) ** 2 + int(self.class_token)
        x = PatchEmbed(self.patch, self.dim, name="patch_embed")(x)
        if self.class_token:
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
        x = x + self.param("pos_embed", nn.initializers.zeros, (1, tokens, self.dim))
        for i in range(self.depth):
            x = Block(self.dim, self.heads, self.ln_eps, self.scale_power, self.qkv_order,
                      self.gelu_tanh, name=f"blocks_{i}")(x)
        x = nn.LayerNorm(self.ln_eps, name="norm")(x)
        if not self.classes:
            return x.transpose(0, 2, 1) if self.tokens_transposed else x
        return nn.Dense(self.classes, name="head")(x[:, 0])


def build() -> VisionTransformer:
    return VisionTransformer(**SMALL)


def build_ln_eps() -> VisionTransformer:
    return VisionTransformer(**SMALL, ln_eps=1e-5)


def build_scale() -> VisionTransformer:
    return VisionTransformer(**SMALL, scale_power=-1.0)


def build_qkv_order() -> VisionTransformer:
    return VisionTransformer(**SMALL, qkv_order=(1, 0, 2))


def build_gelu_tanh() -> VisionTransformer:
    return VisionTransformer(**SMALL, gelu_tanh=True)


def build_features_square() -> VisionTransformer:
    return VisionTransformer(**SQUARE)


def build_features_transposed() -> VisionTransformer:
    return VisionTransformer(**SQUARE, tokens_transposed=True)


def build_block() -> Block:
    return Block(SMALL["dim"], SMALL["heads"])


def build_block_ln_eps() -> Block:
    return Block(SMALL["dim"], SMALL["heads"], ln_eps=1e-5)
