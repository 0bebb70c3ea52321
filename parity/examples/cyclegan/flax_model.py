"""The Flax Linen port of torch_model.py: one module per torch layer with weights, named
by the rename rule (model_1, model_4, ...; model_10/conv_block_1); padding by jnp.pad,
InstanceNorm by flax.linen.InstanceNorm, the transposed convs by explicit pads of the
dilated input (torch padding 1, output_padding 1 -> ((1, 2), (1, 2))). Planted defects:
`zero_pad` (zeros where torch reflects), `in_eps` (Flax's 1e-6 for torch's 1e-5)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from parity.examples.cyclegan.torch_model import SMALL


def _pad(x, p: int, mode: str):
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)


class ResnetBlock(nn.Module):
    dim: int
    affine: bool
    mode: str
    eps: float

    @nn.compact
    def __call__(self, x):
        def norm(name):
            return nn.InstanceNorm(self.eps, use_bias=self.affine, use_scale=self.affine,
                                   name=name)
        y = nn.Conv(self.dim, (3, 3), padding="VALID", name="conv_block_1")(_pad(x, 1, self.mode))
        y = nn.relu(norm("conv_block_2")(y))
        y = nn.Conv(self.dim, (3, 3), padding="VALID", name="conv_block_5")(_pad(y, 1, self.mode))
        return x + norm("conv_block_6")(y)


class ResnetGenerator(nn.Module):
    width: int = 64
    blocks: int = 9
    affine: bool = False
    zero_pad: bool = False
    in_eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        mode = "constant" if self.zero_pad else "reflect"
        at = iter(range(1000))

        def norm(index):
            return nn.InstanceNorm(self.in_eps, use_bias=self.affine, use_scale=self.affine,
                                   name=f"model_{index}")
        next(at)                                                        # model.0: pad
        x = nn.Conv(self.width, (7, 7), padding="VALID", name=f"model_{next(at)}")(
            _pad(x, 3, mode))
        x = nn.relu(norm(next(at))(x))
        next(at)                                                        # ReLU
        for i in range(2):
            c = self.width * 2 ** i
            x = nn.Conv(2 * c, (3, 3), (2, 2), padding=((1, 1), (1, 1)),
                        name=f"model_{next(at)}")(x)
            x = nn.relu(norm(next(at))(x))
            next(at)
        for _ in range(self.blocks):
            x = ResnetBlock(4 * self.width, self.affine, mode, self.in_eps,
                            name=f"model_{next(at)}")(x)
        for i in range(2):
            c = self.width * 2 ** (2 - i)
            x = nn.ConvTranspose(c // 2, (3, 3), (2, 2), padding=((1, 2), (1, 2)),
                                 name=f"model_{next(at)}")(x)
            x = nn.relu(norm(next(at))(x))
            next(at)
        next(at)                                                        # pad
        x = nn.Conv(3, (7, 7), padding="VALID", name=f"model_{next(at)}")(_pad(x, 3, mode))
        return jnp.tanh(x)


def build() -> ResnetGenerator:
    return ResnetGenerator(**SMALL)


def build_affine() -> ResnetGenerator:
    return ResnetGenerator(**SMALL, affine=True)


def build_zero_pad() -> ResnetGenerator:
    return ResnetGenerator(**SMALL, zero_pad=True)


def build_in_eps() -> ResnetGenerator:
    return ResnetGenerator(**SMALL, affine=True, in_eps=1e-6)
