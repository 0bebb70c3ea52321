"""DLN's bug zoo: known porting defects of DLN, applied to the JAX side only.

These are DLN's own entries (they know its structure); the catalogue for any model,
by layer kind, is parity/zoo/catalogue.py. Both run through the same engine.

Each defect is what a port that got one thing wrong would compute, so that users can
see what it looks like in a parity report and the harness proves it catches it.
A defect has up to three parts, none of which touches port/model.py:

- a parameter transform (what a wrong converter would have produced, or the
  parameters a wrongly shaped layer needs);
- a Flax method interceptor (`flax.linen.intercept_methods`) that overrides the
  `__call__` of the affected modules while the defective side runs; it is entered
  only inside the zoo's own apply, never around the model users run;
- a change of the JAX side's config (for a defect the config can already express).

Expected first divergence (the innermost block that fails first, torch names):

    conv1d-kernel        feat1                       (its 3x3 conv is the first one)
    feature-width        feature                     (shape mismatch: 4*dim channels)
    brightness-scaled    feat1                       (reads the brightness channel)
    fa-no-bias           feat_out_1.fusion.outlayer  (unless those biases are all 0)
    dense-untransposed   feat_out_1.fusion.fc.0      (dim >= 32; at dim 16 fc.0 of
                                                      feat_out_1 is 1 x 16, where a
                                                      reshape IS the transpose, so
                                                      feat_out_2.fusion.fc.0)
    kernel-flip          feat1                       (1x1 kernels are flip-invariant)
    prelu-default-slope  feat1
    residual-sign        feat_out_1.conv3.conv_Encoder (first reader of the residual;
                                                      local_weight2_1 runs before it)
    concat-order         feature
"""

from __future__ import annotations

from core.errors import UserError
import dataclasses
from typing import Callable

import numpy as np

from core.config import DLNConfig

FEATURE_WIDTH_SEED = 1234  # the extra weights of a 4*dim `feature` block are seeded noise


class DefectNotApplicable(UserError, ValueError):
    """The defect cannot be expressed for this network config (a user error)."""


@dataclasses.dataclass(frozen=True)
class Defect:
    name: str
    summary: str
    transform: Callable[[dict, DLNConfig], dict] | None = None
    interceptor: Callable | None = None
    jax_config: Callable[[DLNConfig], DLNConfig] | None = None
    requires_brightness: bool = False


@dataclasses.dataclass
class InjectedSide:
    """The defective JAX side: its config, parameters (dotted Flax names) and interceptor."""

    defect: Defect
    config: DLNConfig
    params: dict[str, np.ndarray]
    interceptor: Callable | None
    notes: list[str]


# ---- helpers --------------------------------------------------------------------------
def _path(context) -> tuple[str, ...]:
    return tuple(context.module.path)


def _is_call(context) -> bool:
    """A call of a module of the model (not of the stand-in convs the zoo applies itself,
    which are roots with an empty path: interceptors see every module while active)."""
    return context.method_name == "__call__" and bool(context.module.path)


def _conv_with(module, x, **changes):
    """Run a copy of a bound nn.Conv with some attributes changed, on the parameters the
    bound module was given (the defect's transform made them fit the change)."""
    import flax.linen as nn

    attrs = {name: getattr(module, name) for name in
             ("features", "kernel_size", "strides", "padding", "use_bias")}
    attrs.update(changes)
    return nn.Conv(**attrs).apply({"params": module.variables["params"]}, x)


def _is_conv_kernel(name: str, value: np.ndarray) -> bool:
    return name.endswith(".kernel") and np.ndim(value) == 4


# ---- conv1d-kernel: flax.linen.Conv(kernel_size=3) with an int is a 1-D conv -----------
def _centre_rows(params: dict, cfg: DLNConfig) -> dict:
    """A 1-D port has one kernel row per conv; give it the centre row of each 3x3."""
    return {k: (v[v.shape[0] // 2] if _is_conv_kernel(k, v) else v) for k, v in params.items()}


def _conv1d_interceptor(next_fun, args, kwargs, context):
    import flax.linen as nn

    module = context.module
    if not (_is_call(context) and isinstance(module, nn.Conv)):
        return next_fun(*args, **kwargs)
    width = module.kernel_size[-1]
    pad = module.padding[-1][0] if isinstance(module.padding, (tuple, list)) else module.padding
    # exactly the earlier port's layer: int kernel_size and int padding
    return _conv_with(module, args[0], kernel_size=width, padding=pad, strides=1)


# ---- feature-width: `feature` has 4*dim outputs and `out` reads 4*dim channels -----------
def _widen_feature(params: dict, cfg: DLNConfig) -> dict:
    rng = np.random.default_rng(FEATURE_WIDTH_SEED)
    dim, wide = cfg.dim, 4 * cfg.dim
    out = dict(params)
    k = params["feature.conv.kernel"]                      # (3, 3, 4 dim, dim)
    extra = rng.normal(0, 1 / np.sqrt(np.prod(k.shape[:3])), k.shape[:3] + (wide - dim,))
    out["feature.conv.kernel"] = np.concatenate([k, extra.astype(np.float32)], axis=3)
    b = params["feature.conv.bias"]
    out["feature.conv.bias"] = np.concatenate(
        [b, rng.uniform(-0.1, 0.1, wide - dim).astype(np.float32)])
    ko = params["out.kernel"]                              # (3, 3, dim, 3)
    extra_in = rng.normal(0, 1 / np.sqrt(9 * wide), (3, 3, wide - dim, 3))
    out["out.kernel"] = np.concatenate([ko, extra_in.astype(np.float32)], axis=2)
    return out


def _feature_width_interceptor(next_fun, args, kwargs, context):
    if _is_call(context) and _path(context) == ("feature", "conv"):
        wide = context.module.variables["params"]["kernel"].shape[-1]
        return _conv_with(context.module, args[0], features=wide)
    return next_fun(*args, **kwargs)  # `out` infers its input width from what it is given


# ---- brightness-scaled: the max channel of the scaled input ------------------------------
def _brightness_scaled_interceptor(next_fun, args, kwargs, context):
    if _is_call(context) and _path(context) == ("feat1",):
        x_in = args[0]  # concat([(x - 0.5) * 2, max_c(x)])
        import jax.numpy as jnp

        scaled = x_in[..., :3]
        x_in = jnp.concatenate([scaled, jnp.max(scaled, axis=-1, keepdims=True)], axis=-1)
        return next_fun(x_in, *args[1:], **kwargs)
    return next_fun(*args, **kwargs)


# ---- fa-no-bias: the FA outlayer conv has no bias ------------------------------------------
def _drop_fa_bias(params: dict, cfg: DLNConfig) -> dict:
    return {k: v for k, v in params.items() if not k.endswith("fusion.outlayer.conv.bias")}


def _fa_no_bias_interceptor(next_fun, args, kwargs, context):
    if _is_call(context) and _path(context)[-3:] == ("fusion", "outlayer", "conv"):
        return _conv_with(context.module, args[0], use_bias=False)
    return next_fun(*args, **kwargs)


# ---- weight-side defects ---------------------------------------------------------------------
def _dense_untransposed(params: dict, cfg: DLNConfig) -> dict:
    """torch's (out, in) weight reshaped, not transposed, to Flax's (in, out)."""
    return {k: (v.T.reshape(v.shape) if k.endswith(("fc_0.kernel", "fc_2.kernel")) else v)
            for k, v in params.items()}


def _kernel_flip(params: dict, cfg: DLNConfig) -> dict:
    """Every conv kernel rotated by 180 degrees: convolution vs cross-correlation."""
    return {k: (np.ascontiguousarray(v[::-1, ::-1]) if _is_conv_kernel(k, v) else v)
            for k, v in params.items()}


def flax_prelu_default() -> float:
    import flax.linen as nn

    return float(next(f.default for f in dataclasses.fields(nn.PReLU)
                      if f.name == "negative_slope_init"))


def _prelu_default(params: dict, cfg: DLNConfig) -> dict:
    slope = np.float32(flax_prelu_default())
    return {k: (np.full_like(v, slope) if k.endswith(".negative_slope") else v)
            for k, v in params.items()}


# ---- concat-order: the four feature maps concatenated in reverse ----------------------------
def _concat_order_interceptor(next_fun, args, kwargs, context):
    if _is_call(context) and _path(context) == ("feature",):
        import jax.numpy as jnp

        f1, o1, o2, o3 = jnp.split(args[0], 4, axis=-1)
        return next_fun(jnp.concatenate([o3, o2, o1, f1], axis=-1), *args[1:], **kwargs)
    return next_fun(*args, **kwargs)


def _flip_sign(cfg: DLNConfig) -> DLNConfig:
    return cfg.replace(residual_sign="paper" if cfg.residual_sign == "code" else "code")


DEFECTS: dict[str, Defect] = {d.name: d for d in [
    Defect("conv1d-kernel", "every 3x3 conv is a 1-D 1x3 conv along the width "
           "(flax.linen.Conv(kernel_size=3)); it gets the centre row of each kernel",
           transform=_centre_rows, interceptor=_conv1d_interceptor),
    Defect("feature-width", "the feature block has 4*dim outputs and `out` reads 4*dim "
           "channels (extra weights are seeded noise)",
           transform=_widen_feature, interceptor=_feature_width_interceptor),
    Defect("brightness-scaled", "the brightness channel is the max of the scaled input "
           "(x - 0.5) * 2 instead of x", interceptor=_brightness_scaled_interceptor,
           requires_brightness=True),
    Defect("fa-no-bias", "the FA outlayer conv has no bias",
           transform=_drop_fa_bias, interceptor=_fa_no_bias_interceptor),
    Defect("dense-untransposed", "FA dense weights reshaped from torch's (out, in) to "
           "Flax's (in, out) instead of transposed", transform=_dense_untransposed),
    Defect("kernel-flip", "conv kernels spatially flipped (convolution / correlation mix-up)",
           transform=_kernel_flip),
    Defect("prelu-default-slope", "PReLU slopes left at Flax's default (0.01) instead of "
           "converted", transform=_prelu_default),
    Defect("residual-sign", "the LBP residual sign flipped "
           "(lambda1 X - D(L1 X) <-> D(L1 X) - lambda1 X)", jax_config=_flip_sign),
    Defect("concat-order", "the feature concatenation order reversed "
           "([o3, o2, o1, f1] instead of [f1, o1, o2, o3])",
           interceptor=_concat_order_interceptor),
]}


def defect_names() -> list[str]:
    return list(DEFECTS)


def inject(name: str, config: DLNConfig, flax_params: dict[str, np.ndarray]) -> InjectedSide:
    """The JAX side with defect `name` applied; flax_params are dotted Flax names."""
    if name not in DEFECTS:
        raise DefectNotApplicable(
            f"unknown defect {name!r} (known: {', '.join(DEFECTS)})")
    defect = DEFECTS[name]
    if defect.requires_brightness and not config.brightness:
        raise DefectNotApplicable(
            f"defect {name} needs the brightness channel, but the config has brightness=off")
    params = defect.transform(flax_params, config) if defect.transform else dict(flax_params)
    jax_config = defect.jax_config(config) if defect.jax_config else config
    notes = _no_effect_notes(name, flax_params, params)
    return InjectedSide(defect, jax_config, params, defect.interceptor, notes)


def _no_effect_notes(name: str, before: dict, after: dict) -> list[str]:
    """Warn when a parameter defect leaves these particular weights unchanged."""
    if name == "fa-no-bias":
        biases = [v for k, v in before.items() if k.endswith("fusion.outlayer.conv.bias")]
        if all(not np.any(b) for b in biases):
            return ["the FA outlayer biases are all zero in these weights: dropping them "
                    "changes nothing (authors' initialisation); use trained weights"]
    if name in ("dense-untransposed", "kernel-flip", "prelu-default-slope"):
        changed = [k for k in before if k in after and np.shape(before[k]) == np.shape(after[k])
                   and not np.array_equal(before[k], after[k])]
        if not changed:
            return [f"{name} changes no tensor of these weights"]
    return []
