"""DLN in Flax (Linen), the same network as reference_torch.model to float32 rounding.

NHWC throughout. Submodule names are the authors' torch names (with `fc.0` spelled
`fc_0`), so parameter paths read `feat_out_2/conv1_1/conv_Encoder/conv/kernel` and
`flax.linen`'s capture_intermediates reports every block under the torch name.

Every convolution spells its kernel as a (k, k) tuple and its padding explicitly:
an int kernel_size is what made the earlier port's convolutions 1-D.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from core.config import FA_REDUCTION, DLNConfig

PRELU_INIT = 0.25  # torch.nn.PReLU's default; Flax's own default (0.01) would differ


def _conv(features: int, kernel: int, padding: int, name: str) -> nn.Conv:
    return nn.Conv(features, kernel_size=(kernel, kernel), strides=(1, 1),
                   padding=((padding, padding), (padding, padding)), use_bias=True,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                   bias_init=nn.initializers.zeros, name=name)


class ConvBlock(nn.Module):
    features: int
    kernel: int
    padding: int

    def setup(self):
        self.conv = _conv(self.features, self.kernel, self.padding, "conv")
        self.act = nn.PReLU(negative_slope_init=PRELU_INIT)

    def __call__(self, x):
        return self.act(self.conv(x))


class FeatureAggregation(nn.Module):
    features: int

    @nn.compact
    def __call__(self, z):
        cin = z.shape[-1]
        s = jnp.mean(z, axis=(1, 2))
        s = nn.relu(nn.Dense(cin // FA_REDUCTION, use_bias=False, name="fc_0")(s))
        w = nn.sigmoid(nn.Dense(cin, use_bias=False, name="fc_2")(s))
        y = z * w[:, None, None, :] + z
        return ConvBlock(self.features, 1, 0, name="outlayer")(y)


class LighteningOp(nn.Module):
    features: int
    darken: bool

    def setup(self):
        self.conv_Encoder = ConvBlock(self.features // 2, 3, 1)
        self.conv_Offset = ConvBlock(self.features // 2, 3, 1)
        self.conv_Decoder = ConvBlock(self.features, 3, 1)

    def __call__(self, v):
        e = self.conv_Encoder(v)
        o = self.conv_Offset(e)
        return self.conv_Decoder(e - o if self.darken else e + o)


class LBP(nn.Module):
    features: int
    residual_sign: str

    def setup(self):
        self.fusion = FeatureAggregation(self.features)
        self.conv1_1 = LighteningOp(self.features, darken=False)
        self.conv2 = LighteningOp(self.features, darken=True)
        self.conv3 = LighteningOp(self.features, darken=False)
        self.local_weight1_1 = ConvBlock(self.features, 1, 0)
        self.local_weight2_1 = ConvBlock(self.features, 1, 0)

    def __call__(self, z):
        f = self.fusion(z)
        hr = self.conv1_1(f)
        lr = self.conv2(hr)
        if self.residual_sign == "code":
            r = self.local_weight1_1(f) - lr
        else:
            r = lr - self.local_weight1_1(f)
        return self.local_weight2_1(hr) + self.conv3(r)


class DLN(nn.Module):
    """The Deep Lightening Network; input and output NHWC RGB in [0, 1]."""

    config: DLNConfig = DLNConfig()

    def setup(self):
        cfg = self.config
        dim = cfg.dim
        self.feat1 = ConvBlock(2 * dim, 3, 1)
        self.feat2 = ConvBlock(dim, 3, 1)
        self.feat_out_1 = LBP(dim, cfg.residual_sign)
        self.feat_out_2 = LBP(dim, cfg.residual_sign)
        self.feat_out_3 = LBP(dim, cfg.residual_sign)
        self.feature = ConvBlock(dim, 3, 1)
        self.out = _conv(3, 3, 1, "out")

    def residual(self, x):
        """P(x): the residual output before the gamma-weighted skip."""
        xs = (x - 0.5) * 2
        if self.config.brightness:
            xs = jnp.concatenate([xs, jnp.max(x, axis=-1, keepdims=True)], axis=-1)
        f1 = self.feat2(self.feat1(xs))
        o1 = self.feat_out_1(f1)
        o2 = self.feat_out_2(jnp.concatenate([f1, o1], axis=-1))
        o3 = self.feat_out_3(jnp.concatenate([f1, o1, o2], axis=-1))
        return self.out(self.feature(jnp.concatenate([f1, o1, o2, o3], axis=-1)))

    def __call__(self, x):
        return x + self.config.gamma * self.residual(x)


def init_params(config: DLNConfig, seed: int = 0):
    """Fresh parameters at Flax initialisation (Kaiming-normal convs, zero biases).

    The key is JAX's "rbg" generator: compiling the 125 initialisers with the default
    threefry generator takes ~3x longer on a CPU (about 30 s against 10 s on 2 cores).
    Training starts from weights.initial (the authors' initialisation, drawn in numpy),
    not from here."""
    model = DLN(config)
    dummy = jnp.zeros((1, 8, 8, 3), jnp.float32)
    return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), dummy)["params"]
