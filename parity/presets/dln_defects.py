"""DLN's own zoo entries: known porting defects of DLN, as catalogue entries.

Each entry is a parity.zoo.catalogue.Defect like the catalogue's for any model: it
declares its site, the torch module where the defect must show first, and builds a
mutation of the JAX side only through the port's frontend (changed variables, modules
run with changed attributes, a changed input, or another config), never touching
port/model.py. The sites, worked out from the network (blocks finish children first, so
the first failing block is the innermost one that reads the defect first):

    conv1d-kernel        feat1                       (every 3x3 conv is 1x3; feat1 is the first)
    feature-width        feature                     (shape mismatch: 4*dim channels)
    brightness-scaled    feat1                       (reads the brightness channel)
    fa-no-bias           feat_out_1.fusion.outlayer  (equivalent when those biases are 0)
    dense-untransposed   the first FA dense layer whose weight is not a vector (a reshape
                         of a vector IS its transpose): feat_out_1.fusion.fc.0 from dim 32,
                         feat_out_2.fusion.fc.0 at dim 16
    kernel-flip          feat1                       (the first conv larger than 1x1)
    prelu-default-slope  feat1                       (the first PReLU)
    residual-sign        feat_out_1.conv3.conv_Encoder (the first reader of the residual;
                                                      local_weight2_1 runs before it)
    concat-order         feature
"""

from __future__ import annotations

import numpy as np

from parity.zoo.catalogue import Defect, Mutation, Site, flax_default, replaced

FEATURE_WIDTH_SEED = 1234  # the extra weights of a 4*dim `feature` block are seeded noise
DLN = ("DLN",)


def _site(port, torch_module: str, label: str) -> Site:
    return Site(torch_module, port.flax_path_of(torch_module) or "", label)


def _changed(port, change, keep=lambda key, value: True) -> dict:
    """{key: change(value)} for every variable keep() selects that change() alters."""
    flat = port.frontend.flat(port.variables)
    out = {}
    for key, value in flat.items():
        if keep(key, value):
            new = change(key, np.asarray(value))
            if new is None or np.shape(new) != np.shape(value) or not np.array_equal(new, value):
                out[key] = new
    return out


def _variables_only(port, changes: dict, what: str) -> Mutation:
    return Mutation(replaced(port, changes), None,
                    None if changes else f"{what} changes no tensor of these weights")


def _path(port, torch_module: str) -> str:
    """The port's path of a torch module by the mapping or the frontend's rename rule
    (no census needed: Linen 'feature/conv', NNX 'feature.conv')."""
    return port.mapping.get(torch_module) or port.frontend.path_candidates(torch_module)[0]


def _key(port, torch_module: str, leaf: str) -> str:
    """The flat variable key of a torch module's `leaf` in the port (Linen
    'params/feature/conv/kernel', NNX 'params/feature.conv/kernel')."""
    return "/".join(["params", *filter(None, _path(port, torch_module).split("/")), leaf])


def _dotted(key_or_path: str) -> str:
    """A flat key or path in dots whatever the frontend ('feat1/conv' -> 'feat1.conv')."""
    return key_or_path.replace("/", ".")


def _is_kernel(key: str, value) -> bool:
    return key.endswith("/kernel") and np.ndim(value) == 4


def _shape(port, torch_module: str, leaf: str) -> tuple | None:
    path = port.flax_path_of(torch_module)
    key = "/".join(["params", *filter(None, (path or "").split("/")), leaf])
    return None if path is None else port.census.shapes.get(key)


def _first_block(port, kind: str, need=lambda name: True) -> list[Site]:
    """The first compared module of `kind` (in the model's order) that need() accepts."""
    first = next((name for name, k in port.reference.kinds.items() if k == kind and need(name)),
                 None)
    return [] if first is None else [_site(port, first, f"every {kind}")]


# ---- conv1d-kernel: flax.linen.Conv(kernel_size=3) with an int is a 1-D conv -----------
def _conv1d(port, site) -> Mutation:
    nnx = port.frontend.kind == "nnx"

    def one_d(path, module):
        if type(module).__name__ != "Conv":
            return None
        pad = module.padding[-1][0] if isinstance(module.padding, (tuple, list)) else \
            module.padding
        # exactly the earlier port's layer: int kernel_size and int padding (an NNX Conv
        # keeps an int kernel_size as a 1-tuple)
        size = module.kernel_size[-1]
        return {"kernel_size": (size,) if nnx else size, "padding": pad, "strides": 1}
    # a 1-D port has one kernel row per conv: give it the centre row of each 3x3
    changes = _changed(port, lambda key, v: v[v.shape[0] // 2], _is_kernel)
    return Mutation(replaced(port, changes), port.frontend.modules_changed(one_d), compile=True)


# ---- feature-width: `feature` has 4*dim outputs and `out` reads 4*dim channels -----------
def _feature_width(port, site) -> Mutation:
    flat = port.frontend.flat(port.variables)
    rng = np.random.default_rng(FEATURE_WIDTH_SEED)
    keys = (_key(port, "feature.conv", "kernel"), _key(port, "feature.conv", "bias"),
            _key(port, "out", "kernel"))
    k, b, ko = (np.asarray(flat[key]) for key in keys)
    dim, wide = k.shape[-1], 4 * k.shape[-1]
    extra = rng.normal(0, 1 / np.sqrt(np.prod(k.shape[:3])), k.shape[:3] + (wide - dim,))
    extra_b = rng.uniform(-0.1, 0.1, wide - dim)
    extra_in = rng.normal(0, 1 / np.sqrt(9 * wide), (3, 3, wide - dim, 3))
    changes = dict(zip(keys, (np.concatenate([k, extra], axis=3), np.concatenate([b, extra_b]),
                              np.concatenate([ko, extra_in], axis=2))))
    # `out` infers its input width from what it is given (NNX: from its kernel)
    conv = _path(port, "feature.conv")
    width = {"out_features" if port.frontend.kind == "nnx" else "features": wide}
    return Mutation(replaced(port, changes), port.frontend.modules_changed(
        lambda path, module: width if path == conv else None))


# ---- brightness-scaled: the max channel of the scaled input ------------------------------
def _brightness_scaled(port, site) -> Mutation:
    def scaled_max(x_in):  # x_in = concat([(x - 0.5) * 2, max_c(x)])
        import jax.numpy as jnp

        scaled = x_in[..., :3]
        return jnp.concatenate([scaled, jnp.max(scaled, axis=-1, keepdims=True)], axis=-1)
    return Mutation(None, port.frontend.inputs_changed(site.flax_path, scaled_max))


# ---- fa-no-bias: the FA outlayer conv has no bias ------------------------------------------
def _fa_no_bias(port, site) -> Mutation:
    def outlayer_bias(key, value):
        return _dotted(key).endswith("fusion.outlayer.conv.bias")
    changes = {k: None for k in port.frontend.flat(port.variables) if outlayer_bias(k, None)}
    biases = [v for k, v in port.frontend.flat(port.variables).items() if k in changes]
    equivalent = None if any(np.any(np.asarray(b)) for b in biases) else (
        "the FA outlayer biases are all zero in these weights: dropping them changes nothing "
        "(authors' initialisation); use trained weights")
    return Mutation(replaced(port, changes), port.frontend.modules_changed(
        lambda path, module: {"use_bias": False} if _dotted(path).endswith("fusion.outlayer.conv")
        else None), equivalent)


# ---- weight-side defects ---------------------------------------------------------------------
def _dense_sites(port) -> list[Site]:
    return _first_block(port, "Linear", lambda name: min(_shape(port, name, "kernel") or (1,)) > 1)


def _dense_untransposed(port, site) -> Mutation:
    """torch's (out, in) weight reshaped, not transposed, to Flax's (in, out)."""
    return _variables_only(port, _changed(
        port, lambda key, v: v.T.reshape(v.shape),
        lambda key, v: _dotted(key).endswith(("fc_0.kernel", "fc_2.kernel"))),
        "dense-untransposed")


def _first_conv_sites(port) -> list[Site]:
    return _first_block(port, "ConvBlock",
                        lambda name: max((_shape(port, f"{name}.conv", "kernel") or (1,))[:2]) > 1)


def _kernel_flip(port, site) -> Mutation:
    """Every conv kernel rotated by 180 degrees: convolution vs cross-correlation."""
    return _variables_only(port, _changed(port, lambda key, v: v[::-1, ::-1].copy(),
                                          _is_kernel), "kernel-flip")


def _prelu_default(port, site) -> Mutation:
    slope = np.float32(flax_default("PReLU", "negative_slope_init"))
    return _variables_only(port, _changed(port, lambda key, v: np.full_like(v, slope),
                                          lambda key, v: key.endswith("/negative_slope")),
                           "prelu-default-slope")


# ---- residual-sign: another config; concat-order: the feature input reordered ---------------
def _residual_sign(port, site) -> Mutation:
    from parity.presets.dln import port_model

    config = port.flax_model.config
    flipped = config.replace(residual_sign="paper" if config.residual_sign == "code" else "code")
    return Mutation(None, None, None, port_model(flipped, port.frontend.kind == "nnx" and "nnx"
                                                  or "jax"))


def _concat_order(port, site) -> Mutation:
    def reverse(x):
        import jax.numpy as jnp

        f1, o1, o2, o3 = jnp.split(x, 4, axis=-1)
        return jnp.concatenate([o3, o2, o1, f1], axis=-1)
    return Mutation(None, port.frontend.inputs_changed(site.flax_path, reverse))


def _fixed(torch_module: str, label: str = "", need=lambda port: True):
    return lambda port: [_site(port, torch_module, label or torch_module)] if need(port) else []


DEFECTS: dict[str, Defect] = {d.name: d for d in [
    Defect("conv1d-kernel", "every 3x3 conv is a 1-D 1x3 conv along the width "
           "(flax.linen.Conv(kernel_size=3)); it gets the centre row of each kernel", DLN,
           _fixed("feat1", "every conv"), _conv1d),
    Defect("feature-width", "the feature block has 4*dim outputs and `out` reads 4*dim "
           "channels (extra weights are seeded noise)", DLN, _fixed("feature"),
           _feature_width),
    Defect("brightness-scaled", "the brightness channel is the max of the scaled input "
           "(x - 0.5) * 2 instead of x", ("DLN with brightness=on",),
           _fixed("feat1", need=lambda port: port.flax_model.config.brightness),
           _brightness_scaled),
    Defect("fa-no-bias", "the FA outlayer conv has no bias", DLN,
           _fixed("feat_out_1.fusion.outlayer", "every FA outlayer"), _fa_no_bias),
    Defect("dense-untransposed", "FA dense weights reshaped from torch's (out, in) to "
           "Flax's (in, out) instead of transposed", DLN, _dense_sites, _dense_untransposed),
    Defect("kernel-flip", "conv kernels spatially flipped (convolution / correlation mix-up)",
           DLN, _first_conv_sites, _kernel_flip),
    Defect("prelu-default-slope", "PReLU slopes left at Flax's default (0.01) instead of "
           "converted", DLN, lambda port: _first_block(port, "ConvBlock"), _prelu_default),
    Defect("residual-sign", "the LBP residual sign flipped "
           "(lambda1 X - D(L1 X) <-> D(L1 X) - lambda1 X)", DLN,
           _fixed("feat_out_1.conv3.conv_Encoder"), _residual_sign),
    Defect("concat-order", "the feature concatenation order reversed "
           "([o3, o2, o1, f1] instead of [f1, o1, o2, o3])", DLN, _fixed("feature"),
           _concat_order),
]}
