"""Catalogue entries for what ports of real models get wrong (ResNets, MobileNets, ViTs,
CycleGAN generators), in the forms of parity/zoo/catalogue.py:

    attention-scale       the fused qkv projection's query scaled by head_dim^-1 instead of
                          head_dim^-0.5 (expressed on the qkv Linear's query columns)
    qkv-split-order       query and key taken in the wrong order from the fused qkv output
    pool-padding          max_pool/avg_pool with 'SAME' where torch pads explicitly
                          (torchvision's max-pool pads (1, 1); SAME pads (0, 1) there)
    reflect-as-zero-pad   jnp.pad with zeros where torch reflects (CycleGAN's ReflectionPad2d)
    instancenorm-eps      InstanceNorm epsilon at Flax's default (1e-6; torch 1e-5)
    hard-activation-smooth  hard_swish/hard_sigmoid replaced by swish/sigmoid (MobileNetV3)
    pixelshuffle-order    depth-to-space reading channels as (r, r, C) instead of
                          torch's (C, r, r)
    token-transpose       tokens returned (N, C, L) instead of (N, L, C)
    batchnorm-momentum    BatchNorm momentum at Flax's 0.99 (torch's 0.1 is Flax's 0.9);
                          applies in training mode (`dln check --train`) only
A site is the torch module where the defect must show first; the parameter-free ones
(pooling, padding, activations) are paired with the port's function calls by
parity.engine.hyperparameters.paired_calls, whose diff reads the mutated call.
"""

from __future__ import annotations

import numpy as np

from parity.zoo.catalogue import (BATCHNORM, Defect, Mutation, Site, _call_mutation,
                                  _eps_clone, _flax_attr, _module_sites, _param_mutation,
                                  clone_mutation)

INSTANCENORM = ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
FLAX_BATCHNORM_MOMENTUM = 0.99


def _fused_qkv(port, name, module, path) -> bool:
    """A Linear whose output is a fused (query, key, value) projection."""
    linear = any(c.__name__ == "Linear" for c in type(module).__mro__)
    return linear and name.split(".")[-1] == "qkv" and \
        module.out_features == 3 * module.in_features and \
        any(r.leaf == "kernel" for r in port.plan.by_module().get(name, []))


def _qkv_blocks(value: np.ndarray, axis: int) -> list[np.ndarray]:
    return np.split(value, 3, axis=axis)


def _on_qkv(port, site, change) -> Mutation:
    """change(kernel or bias) applied to the site's kernel and bias alike."""
    def apply(value, torch_value, rule):
        return change(value, value.ndim - 1)
    mutated = _param_mutation(port, site, "kernel", apply)
    if any(r.leaf == "bias" for r in port.plan.by_module().get(site.torch_module, [])):
        mutated = _param_mutation(_Shadow(port, mutated.variables), site, "bias", apply)
    return mutated


def _qkv_swapped(port, site) -> Mutation:
    def swap(value, axis):
        q, k, v = _qkv_blocks(value, axis)
        return np.concatenate([k, q, v], axis=axis)
    return _on_qkv(port, site, swap)


class _Shadow:
    """A port whose variables are another mutant's (to change two tensors of one site)."""

    def __init__(self, port, variables):
        self.__dict__.update(port=port, variables=variables)

    def __getattr__(self, name):
        return getattr(self.port, name)


def _heads(port, site) -> int | None:
    parent = port.torch_model.get_submodule(site.torch_module.rpartition(".")[0]) \
        if "." in site.torch_module else port.torch_model
    for attr in ("num_heads", "heads", "n_heads"):
        if isinstance(getattr(parent, attr, None), int):
            return getattr(parent, attr)
    return None


def _attention_scale(port, site) -> Mutation:
    module = port.torch_model.get_submodule(site.torch_module)
    head_dim = module.in_features // (_heads(port, site) or 1)
    factor = np.float32(head_dim ** -0.5)   # head_dim^-1 = head_dim^-0.5 * head_dim^-0.5

    def scale(value, axis):
        q, k, v = _qkv_blocks(value, axis)
        return np.concatenate([q * factor, k, v], axis=axis)
    return _on_qkv(port, site, scale)


def _paired_call_sites(function_names: tuple[str, ...], need=None):
    def find(port) -> list[Site]:
        from parity.engine.hyperparameters import paired_calls

        return [Site(name, call.scope, f"{name} ({call.scope or '(root)'}: {call.function} "
                     f"call {call.index})", call)
                for name, call in paired_calls(port)
                if call.function in function_names and (need is None or need(call))]
    return find


def _pool_same(port, site) -> Mutation:
    padding = site.call.kwargs.get("padding", site.call.args[2] if len(site.call.args) > 2
                                   else "VALID")
    other = "VALID" if isinstance(padding, str) and padding.upper() == "SAME" else "SAME"

    def replace(original, args, kwargs):
        kwargs.pop("padding", None)
        return original(*args[:3], padding=other, **kwargs)
    return _call_mutation(port, site, replace, _same_pool_pads(port, site, padding, other),
                          seen_as={"padding": other})


def _same_pool_pads(port, site, padding, other) -> str | None:
    """Why 'SAME' and the port's padding read the same windows here (a 2 x 2 pool of
    stride 2 on an even size pads nothing either way), else None."""
    from parity.engine.hyperparameters import _tuple, effective_pads, flax_pads

    shape = port.reference.input_shapes.get(site.torch_module)
    window = site.call.kwargs.get("window_shape", site.call.args[0] if site.call.args else None)
    if shape is None or window is None:
        return None
    sizes = tuple(shape[2:])
    n = len(sizes)
    window = tuple(window)
    strides = _tuple(site.call.kwargs.get("strides", site.call.args[1] if
                                          len(site.call.args) > 1 else None), n)
    if len(window) != n or len(strides) != n:
        return None
    ones = (1,) * n
    pads = [flax_pads(p, sizes, window, strides, ones) for p in (padding, other)]
    if any(p is None for p in pads) or \
            effective_pads(pads[0], sizes, window, strides, ones) != \
            effective_pads(pads[1], sizes, window, strides, ones):
        return None
    return f"'SAME' pads nothing a {'x'.join(map(str, window))} window of stride " \
        f"{'x'.join(map(str, strides))} reads on {'x'.join(map(str, sizes))}"


def _reflect_call(call) -> bool:
    mode = call.kwargs.get("mode", call.args[1] if len(call.args) > 1 else "constant")
    return str(mode) in ("reflect", "symmetric", "edge", "wrap")


def _zero_pad(port, site) -> Mutation:
    def replace(original, args, kwargs):
        kwargs.pop("mode", None)
        return original(args[0], args[1] if len(args) > 1 else kwargs.pop("pad_width"),
                        mode="constant", **kwargs)
    return _call_mutation(port, site, replace, seen_as={"mode": "constant"})


def _smooth(port, site) -> Mutation:
    import jax.nn

    smooth = {"hard_swish": jax.nn.swish, "hard_sigmoid": jax.nn.sigmoid}[site.call.function]
    return _call_mutation(port, site, lambda original, args, kwargs: smooth(args[0]))


def _token_sites(port) -> list[Site]:
    """The final output when it is tokens (N, L, C) compared as they are."""
    out = [key for key, layout in port.reference.layouts.items()
           if key[0] == "" and layout == "as-is" and port.reference.outputs[key].ndim == 3]
    return [Site("", "", "prediction (tokens)")] if out else []


def _outputs_changed(port, change):
    """A context: the root's return value changed (a Flax method interceptor)."""
    def factory():
        import flax.linen as nn

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and not context.module.path:
                return change(out)
            return out
        return nn.intercept_methods(interceptor)
    return factory


def _pixel_shuffle_order(port, site) -> Mutation:
    """The port's depth-to-space fed its channels as if ordered (r, r, C): the same as a
    shuffle that splits channels in the wrong order (torch: channel c * r^2 + i * r + j
    goes to output channel c at offset (i, j))."""
    r = int(getattr(port.torch_model.get_submodule(site.torch_module), "upscale_factor"))

    def reorder(x):
        channels = x.shape[-1]
        c = channels // (r * r)
        # what a (r, r, C) reading finds at torch's position c * r^2 + k is x[k * C + c]
        order = np.arange(channels).reshape(r * r, c).T.reshape(-1)
        return x[..., order]
    return Mutation(None, port.frontend.inputs_changed(site.flax_path, reorder))


def _momentum(port, site) -> Mutation:
    current = float(port.census.modules[site.flax_path].momentum)
    wrong = FLAX_BATCHNORM_MOMENTUM if current != FLAX_BATCHNORM_MOMENTUM else 0.9
    return clone_mutation(port, site, momentum=wrong)


def _training(port, name, module, path) -> bool:
    return bool(getattr(port, "training", False))


DEFECTS: dict[str, Defect] = {d.name: d for d in [
    Defect("attention-scale", "attention scores scaled by 1/head_dim instead of "
           "head_dim^-0.5 (on the fused qkv projection's query)", ("Linear",),
           _module_sites(("Linear",), _fused_qkv), _attention_scale),
    Defect("qkv-split-order", "query and key taken in the wrong order from a fused qkv "
           "projection", ("Linear",), _module_sites(("Linear",), _fused_qkv), _qkv_swapped),
    Defect("pool-padding", "max_pool/avg_pool padded 'SAME' where torch pads explicitly "
           "(or the reverse)", ("call:max_pool", "call:avg_pool"),
           _paired_call_sites(("max_pool", "avg_pool")), _pool_same),
    Defect("reflect-as-zero-pad", "zero padding where torch reflects (ReflectionPad2d)",
           ("call:pad",), _paired_call_sites(("pad",), _reflect_call), _zero_pad),
    Defect("instancenorm-eps", "InstanceNorm epsilon left at Flax's default (1e-6; torch "
           "1e-5)", INSTANCENORM, _module_sites(INSTANCENORM, _flax_attr("epsilon")),
           _eps_clone("InstanceNorm")),
    Defect("hard-activation-smooth", "hard_swish/hard_sigmoid replaced by swish/sigmoid",
           ("call:hard_swish", "call:hard_sigmoid"),
           _paired_call_sites(("hard_swish", "hard_sigmoid")), _smooth),
    Defect("pixelshuffle-order", "depth-to-space splitting channels as (r, r, C) instead "
           "of torch's (C, r, r)", ("PixelShuffle",), _module_sites(("PixelShuffle",)),
           _pixel_shuffle_order),
    Defect("token-transpose", "tokens returned (N, C, L) instead of (N, L, C)",
           ("tokens",), _token_sites, lambda port, site: Mutation(
               None, _outputs_changed(port, lambda out: out.swapaxes(-1, -2)
                                      if getattr(out, "ndim", 0) == 3 else out))),
    Defect("batchnorm-momentum", "BatchNorm momentum at Flax's default 0.99 (torch 0.1 is "
           "Flax 0.9); training mode only", BATCHNORM,
           _module_sites(BATCHNORM, lambda *a: _training(*a) and _flax_attr("momentum")(*a)),
           _momentum),
]}
