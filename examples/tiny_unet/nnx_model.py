"""The Flax NNX port of the tiny encoder-decoder (NHWC), beside the Linen port (flax_model.py).

NNX paths read like torch names, so no rename rule is needed: `stem` and `head` are
nnx.List (paths `stem.0.kernel`, `head.1.kernel`, as torch's `stem.0.weight`,
`head.1.weight`), not nnx.Sequential (which would insert `layers.`). Every default that
differs from torch is spelled out, as in the Linen port: explicit paddings (nnx.Conv pads
'SAME'), GroupNorm's and BatchNorm's epsilon 1e-5 (NNX's GroupNorm: 1e-6), BatchNorm
in eval mode with torch's momentum (NNX's default 0.99 is 1 - torch's 0.1 only when
spelled), exact-erf GELU (jax.nn.gelu approximates by default), PReLU slopes starting
at torch's 0.25 with one slope per channel where torch has PReLU(C) (nnx.PReLU has one
scalar), and the head flattening in torch's C, H, W order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

WIDTH = 8
CLASSES = 5
SIZE = 16           # the head's Linear is sized for SIZE x SIZE inputs
GROUPS = 4
TORCH_NORM_EPS = 1e-5
TORCH_BATCHNORM_MOMENTUM = 0.9  # Flax's momentum is 1 - torch's (0.1)
TORCH_PRELU_INIT = 0.25


class ChannelPReLU(nnx.Module):
    """torch.nn.PReLU(C): one slope per channel (nnx.PReLU holds one scalar)."""

    def __init__(self, channels: int):
        self.negative_slope = nnx.Param(jnp.full((channels,), TORCH_PRELU_INIT, jnp.float32))

    def __call__(self, x):
        return jnp.where(x >= 0, x, self.negative_slope[...] * x)


class Upsample(nnx.Module):
    """torch.nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False): half-pixel
    bilinear; for upsampling jax.image.resize's antialiasing changes nothing."""

    def __call__(self, x):
        n, h, w, c = x.shape
        return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


class FlattenLikeTorch(nnx.Module):
    """torch.nn.Flatten on NCHW: flattens C, H, W in that order (NHWC would give H, W, C)."""

    def __call__(self, x):
        return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _conv(cin: int, cout: int, rngs: nnx.Rngs, stride: int = 1, groups: int = 1) -> nnx.Conv:
    return nnx.Conv(cin, cout, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                    feature_group_count=groups, rngs=rngs)


class Bottleneck(nnx.Module):
    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        wide = 2 * channels
        self.down = _conv(channels, wide, rngs, stride=2)
        self.norm = nnx.GroupNorm(wide, num_groups=GROUPS, epsilon=TORCH_NORM_EPS, rngs=rngs)
        self.depthwise = _conv(wide, wide, rngs, groups=wide)
        self.prelu = nnx.PReLU(negative_slope_init=TORCH_PRELU_INIT)

    def __call__(self, x):
        x = nnx.gelu(self.norm(self.down(x)), approximate=False)  # torch GELU: exact erf
        return self.prelu(self.depthwise(x))


class TinyUNet(nnx.Module):
    def __init__(self, width: int = WIDTH, in_channels: int = 3, classes: int = CLASSES,
                 size: int = SIZE, *, rngs: nnx.Rngs):
        self.stem = nnx.List([
            _conv(in_channels, width, rngs),
            nnx.BatchNorm(width, use_running_average=True, momentum=TORCH_BATCHNORM_MOMENTUM,
                          epsilon=TORCH_NORM_EPS, rngs=rngs),
            ChannelPReLU(width)])
        self.bottleneck = Bottleneck(width, rngs=rngs)
        # torch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): the dilated
        # input is padded by (k - 1 - padding, k - 1 - padding + output_padding) = (1, 2);
        # transpose_kernel=False, so the converter flips the kernel
        self.up = nnx.ConvTranspose(2 * width, width, (3, 3), strides=(2, 2),
                                    padding=((1, 2), (1, 2)), rngs=rngs)
        self.upsample = Upsample()
        self.fuse = _conv(4 * width, width, rngs)
        self.head = nnx.List([FlattenLikeTorch(),
                              nnx.Linear(2 * width * (size // 2) ** 2, classes, rngs=rngs)])

    def __call__(self, x):
        skip = x
        for layer in self.stem:
            skip = layer(skip)
        low = self.bottleneck(skip)
        merged = jnp.concatenate([skip, self.up(low), self.upsample(low)], axis=-1)
        logits = low
        for layer in self.head:
            logits = layer(logits)
        return self.fuse(merged), logits


def build(width: int = WIDTH, seed: int = 0) -> TinyUNet:
    return TinyUNet(width, rngs=nnx.Rngs(seed))
