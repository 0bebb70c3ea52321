"""The Flax port of the tiny encoder-decoder (NHWC): module names follow the torch names
by the rename rule (torch `stem.0` <-> Flax `stem_0`), so the engine aligns them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

WIDTH = 8
CLASSES = 5
GROUPS = 4
TORCH_NORM_EPS = 1e-5   # torch's BatchNorm/GroupNorm default (Flax's GroupNorm: 1e-6)
TORCH_PRELU_INIT = 0.25


class ChannelPReLU(nn.Module):
    """torch.nn.PReLU(C): one slope per channel (flax's nn.PReLU has one scalar)."""

    channels: int

    @nn.compact
    def __call__(self, x):
        slope = self.param("negative_slope", nn.initializers.constant(TORCH_PRELU_INIT),
                           (self.channels,))
        return jnp.where(x >= 0, x, slope * x)


class Upsample(nn.Module):
    """torch.nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False): half-pixel
    bilinear; for upsampling jax.image.resize's antialiasing changes nothing."""

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


def _conv(features: int, stride: int = 1, groups: int = 1) -> nn.Conv:
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   feature_group_count=groups)


class Bottleneck(nn.Module):
    channels: int

    def setup(self):
        wide = 2 * self.channels
        self.down = _conv(wide, stride=2)
        self.norm = nn.GroupNorm(num_groups=GROUPS, epsilon=TORCH_NORM_EPS)
        self.depthwise = _conv(wide, groups=wide)
        self.prelu = nn.PReLU(negative_slope_init=TORCH_PRELU_INIT)

    def __call__(self, x):
        x = nn.gelu(self.norm(self.down(x)), approximate=False)  # torch GELU: exact erf
        return self.prelu(self.depthwise(x))


class TinyUNet(nn.Module):
    width: int = WIDTH
    classes: int = CLASSES

    def setup(self):
        w = self.width
        self.stem = [_conv(w), nn.BatchNorm(use_running_average=True, momentum=0.9,
                                            epsilon=TORCH_NORM_EPS), ChannelPReLU(w)]
        self.bottleneck = Bottleneck(w)
        # torch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): Flax pads the
        # dilated input by (k - 1 - padding, k - 1 - padding + output_padding) = (1, 2);
        # transpose_kernel=False, so the converter flips the kernel
        self.up = nn.ConvTranspose(w, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)))
        self.upsample = Upsample()
        self.fuse = _conv(w)
        self.head_1 = nn.Dense(self.classes)

    def __call__(self, x):
        skip = x
        for layer in self.stem:
            skip = layer(skip)
        low = self.bottleneck(skip)
        merged = jnp.concatenate([skip, self.up(low), self.upsample(low)], axis=-1)
        flat = jnp.transpose(low, (0, 3, 1, 2)).reshape(low.shape[0], -1)  # torch's C, H, W order
        return self.fuse(merged), self.head_1(flat)


def build(width: int = WIDTH) -> TinyUNet:
    return TinyUNet(width)
