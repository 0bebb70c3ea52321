"""The defect catalogue for any port: each defect names the layer kinds it applies to.

A defect finds its sites in a prepared port (parity.zoo.prepared: torch modules of its
kinds, or Flax function calls); a site names the torch module where the defect must show
first. Per site it builds a mutation of the JAX side only, through the port's frontend:
- a parameter transform (what a wrong converter produces), on the converted
  variables at the site's Flax path, or
- the site's module run with one attribute changed (a clone), or a stand-in for one
  function call (gelu, leaky_relu, jax.image.resize) in the site's scope, or
- another Flax model (a config a port got wrong).
The model code is never changed. A mutation may say it is provably *equivalent*
(the same function at these shapes: flipping a 1x1 kernel, SAME padding where it
equals the explicit padding, dropping a bias that is zero). Models bring their own
entries of the same kind (DLN's: parity/presets/dln_defects.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


CONV = ("Conv1d", "Conv2d", "Conv3d")
CONV_TRANSPOSE = ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
BATCHNORM = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
TF_BATCHNORM_EPS = 1e-3   # Keras/TensorFlow's BatchNormalization default (torch: 1e-5)
FLAX_LEAKY_SLOPE = 0.01   # jax.nn.leaky_relu's default negative_slope


@dataclasses.dataclass(frozen=True)
class Site:
    torch_module: str          # where the defect must show first (torch name, '' root)
    flax_path: str
    label: str                 # how the site is named in results
    call: object = None        # FunctionCall for function defects


@dataclasses.dataclass
class Mutation:
    variables: dict | None = None          # None: the port's own
    context: Callable | None = None        # context-manager factory for the Flax apply
    equivalent: str | None = None          # why it provably computes the same function
    flax_model: object | None = None       # None: the port's own
    # compile the mutant's apply even with a context: cheaper when the change reaches every
    # module (DLN's conv1d-kernel: 1.9 s compiled vs 5.0 s eager, dim 16, 2 x 13 x 17)
    compile: bool = False
    # {Flax path: {attribute: value}} the mutant's clones run with, so that the
    # hyperparameter diff reads them (parity.engine.hyperparameters)
    attributes: dict | None = None
    # {(function, scope, index): {keyword: value}}: the calls the mutant changes, likewise
    call_changes: dict | None = None


@dataclasses.dataclass(frozen=True)
class Defect:
    name: str
    summary: str
    kinds: tuple[str, ...]                 # torch module kinds, or "call:<function>"
    sites: Callable                        # (port) -> list[Site]
    mutate: Callable                       # (port, site) -> Mutation


# ---- helpers -------------------------------------------------------------------------------
def _module_sites(kinds, need: Callable | None = None):
    def find(port) -> list[Site]:
        out = []
        for name, module in port.torch_model.named_modules():
            if type(module).__name__ not in kinds:
                continue
            path = port.flax_path_of(name)
            if path is None or (need is not None and not need(port, name, module, path)):
                continue
            out.append(Site(name, path, name))
        return out
    return find


def _is(rule, leaf: str) -> bool:
    """The rule's variable is `leaf` (a PReLU slope under whatever name the port gives it)."""
    return rule.leaf == leaf or (leaf == "negative_slope" and rule.kind == "prelu")


def _rules(port, site, leaf: str):
    return [r for r in port.plan.by_module().get(site.torch_module, []) if _is(r, leaf)]


def replaced(port, changes: dict[str, np.ndarray]) -> dict:
    """The port's variables with some replaced (flat keys) or, for None, removed."""
    flat = {k: v for k, v in port.frontend.flat(port.variables).items()
            if k not in changes or changes[k] is not None}
    flat.update({k: np.asarray(v, np.float32) for k, v in changes.items() if v is not None})
    return port.frontend.nested(flat)


def _param_mutation(port, site, leaf: str, change: Callable) -> Mutation:
    """Replace the site's `leaf` variable by change(flax value, torch value, rule)."""
    flat = port.frontend.flat(port.variables)
    state = port.torch_state()
    changes = {}
    for rule in _rules(port, site, leaf):
        changes[rule.key] = change(np.asarray(flat[rule.key]), state.get(rule.torch_name), rule)
    same = all(np.array_equal(np.asarray(flat[k]), v) for k, v in changes.items())
    return Mutation(replaced(port, changes), None,
                    "the changed tensor equals the correct one at these shapes" if same else None)


def _has(leaf: str):
    return lambda port, name, module, path: any(_is(r, leaf) for r in
                                                port.plan.by_module().get(name, []))


def _flax_attr(*attrs):
    def need(port, name, module, path):
        flax_module = port.census.modules.get(path)
        return flax_module is not None and all(hasattr(flax_module, a) for a in attrs)
    return need


def _both(*needs):
    return lambda *a: all(n(*a) for n in needs)


def _clone_call(port, site: Site, **changes) -> Callable:
    """A context: the site's module runs as a clone with `changes`."""
    return port.frontend.modules_changed(
        lambda path, module: changes if path == site.flax_path else None)


def clone_mutation(port, site: Site, equivalent: str | None = None, **changes) -> Mutation:
    """The site's module run as a clone with `changes`, which the diff reads too."""
    return Mutation(None, _clone_call(port, site, **changes), equivalent,
                    attributes={site.flax_path: changes})


def flax_default(cls_name: str, field: str):
    """A flax.linen module kind's default for one field (e.g. PReLU's initial slope)."""
    import flax.linen as nn

    return next(f.default for f in dataclasses.fields(getattr(nn, cls_name)) if f.name == field)


# ---- parameter defects ------------------------------------------------------------------
def _flip_spatial(value, torch_value, rule):
    return np.ascontiguousarray(np.flip(value, axis=tuple(range(value.ndim - 2))))


def _reshaped(value, torch_value, rule):
    return np.ascontiguousarray(np.asarray(torch_value).reshape(value.shape))


def _zeros(value, torch_value, rule):
    return np.zeros_like(value)


def _prelu_flax_default(value, torch_value, rule):
    return np.full_like(value, np.float32(flax_default("PReLU", "negative_slope_init")))


def _bn_eps(port, site) -> Mutation:
    module = port.torch_model.get_submodule(site.torch_module)
    eps = float(module.eps)
    wrong = TF_BATCHNORM_EPS if eps != TF_BATCHNORM_EPS else 1e-5
    # (x - m) / sqrt(v + wrong) == (x - m) / sqrt((v + wrong - eps) + eps): exactly the
    # port that uses the other epsilon, expressed on the running variance
    return _param_mutation(port, site, "var", lambda v, t, r: v + np.float32(wrong - eps))


def _flatten_shape(port, site) -> tuple[int, int, int] | None:
    """(C, H, W) of the 4-D tensor flattened into this Linear, from the torch capture."""
    module = port.torch_model.get_submodule(site.torch_module)
    found = None
    for (name, _suffix), value in port.reference.outputs.items():
        if name == site.torch_module:
            break
        shape = port.reference.input_shapes.get(name)
        if port.reference.kinds.get(name) == "Flatten" and shape and len(shape) == 4:
            found = tuple(shape[1:])
        elif value.ndim == 4 and int(np.prod(value.shape[1:])) == module.in_features:
            found = (value.shape[3], value.shape[1], value.shape[2])  # stored NHWC
    if found is None or int(np.prod(found)) != module.in_features:
        return None
    return found


def _flatten_mutation(port, site) -> Mutation:
    c, h, w = _flatten_shape(port, site)

    def permute(value, torch_value, rule):
        return value.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(value.shape)
    return _param_mutation(port, site, "kernel", permute)


def _same_padding(port, site) -> Mutation:
    module = port.torch_model.get_submodule(site.torch_module)
    shape = port.reference.input_shapes.get(site.torch_module)
    equal = None
    if shape is not None and not isinstance(module.padding, str):
        same = True
        for n, k, s, d, p in zip(shape[2:], module.kernel_size, module.stride, module.dilation,
                                 module.padding):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            same &= (total // 2, total - total // 2) == (p, p)
        equal = "SAME pads equal the explicit padding at this input size" if same else None
    return clone_mutation(port, site, equal, padding="SAME")


def _strided(port, name, module, path):
    return any(s > 1 for s in module.stride) and not isinstance(module.padding, str)


def _eps_clone(cls_name: str):
    def mutate(port, site) -> Mutation:
        current = float(port.census.modules[site.flax_path].epsilon)
        default = float(flax_default(cls_name, "epsilon"))
        return clone_mutation(port, site, epsilon=default if current != default
                              else current * 10)
    return mutate


# ---- function-call defects ---------------------------------------------------------------
def _call_sites(function: str, need: Callable | None = None):
    def find(port) -> list[Site]:
        out = []
        for call in port.calls:
            if call.function != function or (need is not None and not need(call)):
                continue
            torch_name = port.torch_name_of(call.scope)
            label = f"{call.scope or '(root)'}: {function} call {call.index}"
            out.append(Site("" if torch_name is None else torch_name, call.scope, label, call))
        return out
    return find


def _call_mutation(port, site: Site, replace: Callable, equivalent: str | None = None,
                   seen_as: dict | None = None) -> Mutation:
    """The site's call computed by replace(original, args, kwargs); seen_as: the keyword
    arguments the diff reads the mutated call as making."""
    def on_call(function, original, scope, index, args, kwargs):
        if function == site.call.function and scope == site.flax_path and \
                index == site.call.index:
            return replace(original, args, dict(kwargs))
        return original(*args, **kwargs)
    key = (site.call.function, site.call.scope, site.call.index)
    return Mutation(None, port.frontend.calls_patched(on_call), equivalent,
                    call_changes={key: seen_as} if seen_as else None)


def _gelu_flip(port, site) -> Mutation:
    def replace(original, args, kwargs):
        approximate = kwargs.pop("approximate", args[1] if len(args) > 1 else True)
        return original(args[0], approximate=not approximate)
    call = site.call
    approximate = call.kwargs.get("approximate", call.args[0] if call.args else True)
    return _call_mutation(port, site, replace, seen_as={"approximate": not approximate})


def _leaky_default(port, site) -> Mutation:
    call = site.call
    slope = call.kwargs.get("negative_slope", call.args[0] if call.args else FLAX_LEAKY_SLOPE)
    equivalent = "the slope already is the default" if float(slope) == FLAX_LEAKY_SLOPE else None
    return _call_mutation(port, site, lambda original, args, kwargs: original(args[0]),
                          equivalent)


def _resize_method(call) -> str:
    return str(call.kwargs.get("method", call.args[1] if len(call.args) > 1 else "")).lower()


def _resize_other_method(port, site) -> Mutation:
    method = _resize_method(site.call)
    other = "nearest" if method in ("linear", "bilinear", "trilinear", "cubic", "bicubic") \
        else "linear"

    def replace(original, args, kwargs):
        kwargs["method"] = other
        return original(args[0], args[1] if len(args) > 1 else kwargs.pop("shape"),
                        **{k: v for k, v in kwargs.items() if k != "shape"})
    return _call_mutation(port, site, replace, seen_as={"method": other})


def _resize_align_corners(port, site) -> Mutation:
    def replace(original, args, kwargs):
        import jax
        import jax.numpy as jnp

        x, shape = args[0], (args[1] if len(args) > 1 else kwargs["shape"])
        dims = [i for i, (a, b) in enumerate(zip(x.shape, shape)) if a != b]
        scale = jnp.array([(shape[i] - 1) / max(x.shape[i] - 1, 1) for i in dims], jnp.float32)
        return jax.image.scale_and_translate(x, shape, dims, scale, 0.5 - 0.5 * scale,
                                             method="linear", antialias=False)
    return _call_mutation(port, site, replace)


def _linear_resize(call) -> bool:
    return _resize_method(call) in ("linear", "bilinear", "trilinear")


CATALOGUE: dict[str, Defect] = {d.name: d for d in [
    Defect("kernel-flip", "conv kernels spatially flipped (convolution vs correlation)",
                  CONV, _module_sites(CONV, _has("kernel")),
                  lambda port, site: _param_mutation(port, site, "kernel", _flip_spatial)),
    Defect("conv-kernel-reshaped", "conv kernel reshaped from torch's (O, I, kh, kw) "
                  "to (kh, kw, I, O) instead of transposed", CONV,
                  _module_sites(CONV, _has("kernel")),
                  lambda port, site: _param_mutation(port, site, "kernel", _reshaped)),
    Defect("dense-untransposed", "Linear weight reshaped from (out, in) to (in, out) "
                  "instead of transposed", ("Linear",), _module_sites(("Linear",), _has("kernel")),
                  lambda port, site: _param_mutation(port, site, "kernel", _reshaped)),
    Defect("bias-dropped", "the layer's bias dropped (use_bias=False)",
                  CONV + CONV_TRANSPOSE + ("Linear",),
                  _module_sites(CONV + CONV_TRANSPOSE + ("Linear",), _has("bias")),
                  lambda port, site: _param_mutation(port, site, "bias", _zeros)),
    Defect("prelu-default-slope", "PReLU slopes left at Flax's nn.PReLU default (0.01)",
                  ("PReLU",), _module_sites(("PReLU",), _has("negative_slope")),
                  lambda port, site: _param_mutation(port, site, "negative_slope",
                                                     _prelu_flax_default)),
    Defect("leaky-relu-default-slope", "leaky_relu called with Flax's default slope "
                  "(0.01)", ("call:leaky_relu",), _call_sites("leaky_relu"), _leaky_default),
    Defect("same-padding-strided", "a strided conv with padding='SAME' instead of "
                  "torch's explicit symmetric padding", CONV,
                  _module_sites(CONV, _both(_strided, _flax_attr("padding", "strides"))),
                  _same_padding),
    Defect("batchnorm-eps", "BatchNorm epsilon 1e-3 (Keras/TF) instead of torch's "
                  "(1e-5)", BATCHNORM, _module_sites(BATCHNORM, _has("var")), _bn_eps),
    Defect("batchnorm-batch-stats", "BatchNorm normalises with the batch's statistics "
                  "at inference (use_running_average=False)", BATCHNORM,
                  _module_sites(BATCHNORM, _both(_has("var"),
                                                 _flax_attr("use_running_average"))),
                  lambda port, site: clone_mutation(port, site, use_running_average=False)),
    Defect("conv-transpose-unflipped", "ConvTranspose kernel not flipped (torch's "
                  "transposed conv is the gradient of a conv)", CONV_TRANSPOSE,
                  _module_sites(CONV_TRANSPOSE, _has("kernel")),
                  lambda port, site: _param_mutation(port, site, "kernel", _flip_spatial)),
    Defect("upsample-method", "upsampling with the other method (nearest vs linear)",
                  ("call:resize",), _call_sites("resize"), _resize_other_method),
    Defect("upsample-align-corners", "linear upsampling with align_corners=True "
                  "instead of half-pixel centres", ("call:resize",),
                  _call_sites("resize", _linear_resize), _resize_align_corners),
    Defect("flatten-order", "features flattened in NHWC order (H, W, C) before a "
                  "Linear that expects torch's (C, H, W)", ("Linear",),
                  _module_sites(("Linear",), lambda port, name, module, path:
                                _flatten_shape(port, Site(name, path, name)) is not None),
                  lambda port, site: _flatten_mutation(port, site)),
    Defect("gelu-tanh", "GELU with the tanh approximation instead of erf (or the "
                  "reverse)", ("call:gelu",), _call_sites("gelu"), _gelu_flip),
    Defect("groupnorm-eps", "GroupNorm epsilon left at Flax's default (1e-6; torch "
                  "1e-5)", ("GroupNorm",),
                  _module_sites(("GroupNorm",), _flax_attr("epsilon")), _eps_clone("GroupNorm")),
    Defect("layernorm-eps", "LayerNorm epsilon left at Flax's default (1e-6; torch "
                  "1e-5)", ("LayerNorm",),
                  _module_sites(("LayerNorm",), _flax_attr("epsilon")), _eps_clone("LayerNorm")),
]}


from parity.zoo.real_model_defects import DEFECTS as _REAL_MODEL_DEFECTS  # noqa: E402

CATALOGUE.update(_REAL_MODEL_DEFECTS)
