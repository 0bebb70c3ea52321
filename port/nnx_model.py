"""DLN in Flax NNX, the same network as port/model.py (Linen) and reference_torch.model.

NHWC throughout. Attribute names are the Linen port's submodule names, so the NNX
state's paths joined by dots are exactly the converter's Flax names
(`feat_out_2.conv1_1.conv_Encoder.conv.kernel`, `feat_out_1.fusion.fc_0.kernel`,
`feat1.act.negative_slope`): one safetensors file written by `dln convert` serves the
Linen and the NNX port, with no rename (weights/nnx_state.py moves flat names into an
NNX state and back, strictly).

Traps of a line-by-line port that this file avoids (each differs from NNX's defaults):
every convolution spells its kernel as a (k, k) tuple (an int is a 1-D kernel) and its
padding explicitly (nnx.Conv pads 'SAME' by default); PReLU starts at torch's 0.25,
not NNX's 0.01; convolutions start Kaiming-normal (fan in, gain sqrt 2) with zero
biases, as the Linen port. The model holds parameters only (no RNG state, no batch
statistics): the Rngs given to the constructor are used to draw the initial weights
and are not kept.

Running it: `port.nnx_inference.make_nnx_apply` gives the jitted pure function of
(params, x) the Linen port's `make_apply` gives, on the same params tree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from core.config import FA_REDUCTION, DLNConfig

PRELU_INIT = 0.25  # torch.nn.PReLU's default; NNX's own default (0.01) would differ
KAIMING_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(cin: int, cout: int, kernel: int, padding: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, kernel_size=(kernel, kernel), strides=(1, 1),
                    padding=((padding, padding), (padding, padding)), use_bias=True,
                    kernel_init=KAIMING_NORMAL, bias_init=nnx.initializers.zeros, rngs=rngs)


class ConvBlock(nnx.Module):
    """Conv k x k (stride 1, zero padding `padding`, bias) then PReLU with one slope."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int, *, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, kernel, padding, rngs)
        self.act = nnx.PReLU(negative_slope_init=PRELU_INIT)

    def __call__(self, x):
        return self.act(self.conv(x))


class FeatureAggregation(nnx.Module):
    """FA: channel weights from the mean over H, W (two dense layers), then a 1x1 ConvBlock."""

    def __init__(self, cin: int, features: int, *, rngs: nnx.Rngs):
        squeezed = cin // FA_REDUCTION
        self.fc_0 = nnx.Linear(cin, squeezed, use_bias=False, rngs=rngs)
        self.fc_2 = nnx.Linear(squeezed, cin, use_bias=False, rngs=rngs)
        self.outlayer = ConvBlock(cin, features, 1, 0, rngs=rngs)

    def __call__(self, z):
        s = jnp.mean(z, axis=(1, 2))
        w = nnx.sigmoid(self.fc_2(nnx.relu(self.fc_0(s))))
        return self.outlayer(z * w[:, None, None, :] + z)


class LighteningOp(nnx.Module):
    """Lightening (Decoder(e + o)) or darkening (Decoder(e - o)) operation."""

    def __init__(self, features: int, darken: bool, *, rngs: nnx.Rngs):
        half = features // 2
        self.darken = darken
        self.conv_Encoder = ConvBlock(features, half, 3, 1, rngs=rngs)
        self.conv_Offset = ConvBlock(half, half, 3, 1, rngs=rngs)
        self.conv_Decoder = ConvBlock(half, features, 3, 1, rngs=rngs)

    def __call__(self, v):
        e = self.conv_Encoder(v)
        o = self.conv_Offset(e)
        return self.conv_Decoder(e - o if self.darken else e + o)


class LBP(nnx.Module):
    """Lightening back-projection block: cin channels in, `features` out."""

    def __init__(self, cin: int, features: int, residual_sign: str, *, rngs: nnx.Rngs):
        self.residual_sign = residual_sign
        self.fusion = FeatureAggregation(cin, features, rngs=rngs)
        self.conv1_1 = LighteningOp(features, darken=False, rngs=rngs)
        self.conv2 = LighteningOp(features, darken=True, rngs=rngs)
        self.conv3 = LighteningOp(features, darken=False, rngs=rngs)
        self.local_weight1_1 = ConvBlock(features, features, 1, 0, rngs=rngs)
        self.local_weight2_1 = ConvBlock(features, features, 1, 0, rngs=rngs)

    def __call__(self, z):
        f = self.fusion(z)
        hr = self.conv1_1(f)
        lr = self.conv2(hr)
        if self.residual_sign == "code":
            r = self.local_weight1_1(f) - lr
        else:
            r = lr - self.local_weight1_1(f)
        return self.local_weight2_1(hr) + self.conv3(r)


class DLN(nnx.Module):
    """The Deep Lightening Network; input and output NHWC RGB in [0, 1]."""

    def __init__(self, config: DLNConfig = DLNConfig(), *, rngs: nnx.Rngs):
        self.config = config
        dim, sign = config.dim, config.residual_sign
        self.feat1 = ConvBlock(config.input_channels, 2 * dim, 3, 1, rngs=rngs)
        self.feat2 = ConvBlock(2 * dim, dim, 3, 1, rngs=rngs)
        self.feat_out_1 = LBP(dim, dim, sign, rngs=rngs)
        self.feat_out_2 = LBP(2 * dim, dim, sign, rngs=rngs)
        self.feat_out_3 = LBP(3 * dim, dim, sign, rngs=rngs)
        self.feature = ConvBlock(4 * dim, dim, 3, 1, rngs=rngs)
        self.out = _conv(dim, 3, 3, 1, rngs)

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


def init_model(config: DLNConfig, seed: int = 0) -> DLN:
    """A DLN with fresh NNX-initialised weights (Kaiming-normal convs, zero biases).

    The key is JAX's "rbg" generator, as port.model.init_params. Training starts from
    weights.initial (the authors' initialisation, drawn in numpy), not from here."""
    return DLN(config, rngs=nnx.Rngs(params=jax.random.key(seed, impl="rbg")))


def abstract_model(config: DLNConfig) -> DLN:
    """The DLN's structure with shapes and dtypes only (nnx.eval_shape): nothing is drawn
    or allocated; weights.nnx_state fills it from a checkpoint."""
    return nnx.eval_shape(lambda: DLN(config, rngs=nnx.Rngs(0)))


def model_from_params(config: DLNConfig, flax_params: dict) -> DLN:
    """An NNX DLN holding these weights (flat Flax names, e.g. `Checkpoint.flax_params`),
    filled strictly (weights.nnx_state: sorted lists of missing, unexpected and misshapen
    tensors) into the abstract model: nothing is drawn at random."""
    from weights.nnx_state import module_from_weights

    return module_from_weights(abstract_model(config), flax_params,
                               f"weights for DLN({config.variant_string()}, dim={config.dim})")
