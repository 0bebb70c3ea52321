"""Flat, dotted tensor names <-> the state of a Flax NNX module, strictly.

An NNX module's weights are its `nnx.Param` and `nnx.BatchStat` variables; their paths
joined by dots are the names a safetensors file stores (`feat1.conv.kernel`,
`blocks.0.norm.mean`; an `nnx.List` index is a path element like any other). For
DLN these are exactly the converter's Flax names, so one file serves the Linen and the
NNX port.

NNX's own loaders check little: `nnx.update` and `nnx.replace_by_pure_dict` accept a
transposed kernel or a (C,) slope for a scalar slot (the error comes at call time or
never) and leave missing variables at their random values. Here the names and every
shape and dtype are compared first, and missing, unexpected and misshapen tensors are
refused together, each list sorted (weights.state_dict.check_names_and_shapes, the
check every checkpoint goes through).

`torch_module_to_nnx` converts a PyTorch model's tensors into an NNX module by the
converter's rules per torch module kind (weights/rules.py), strictly: an NNX path is the
torch module name itself (`stem.0`), or the same inside an nnx.Sequential
(`stem.layers.0`).

Only weights travel: RNG state (`nnx.RngKey`, whose dtype key<fry> no file format here
holds, and `nnx.RngCount`), intermediates and caches are never written, and a module
that holds them is filled from its weights only.
"""

from __future__ import annotations

import numpy as np

from weights.errors import CheckpointError
from weights.state_dict import check_names_and_shapes


def _nnx():
    from flax import nnx  # imported here: reading a .pth needs no Flax

    return nnx


def weight_filter():
    """The NNX variable types that are weights: parameters and batch statistics."""
    nnx = _nnx()
    return (nnx.Param, nnx.BatchStat)


def dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def weight_variables(module) -> dict[tuple, object]:
    """Path tuple -> variable, for every Param and BatchStat of an NNX module (concrete or
    from nnx.eval_shape), in NNX's path order."""
    nnx = _nnx()
    state = nnx.state(module, weight_filter())
    return dict(nnx.to_flat_state(state))


def flat_weights(module) -> dict[str, np.ndarray]:
    """The module's weights as dotted name -> float32 numpy array (copies). A weight of
    another dtype is refused: the files written from here hold float32."""
    out = {}
    for path, var in weight_variables(module).items():
        value = np.asarray(var[...])
        if value.dtype != np.float32:
            raise CheckpointError(f"NNX variable {dotted(path)} has dtype {value.dtype}; "
                                  "weights are written as float32")
        out[dotted(path)] = np.array(value, np.float32, copy=True)
    return out


def weights_state(module, flat: dict[str, np.ndarray], what: str = "weights"):
    """An nnx.State of the module's weight variables holding `flat`'s arrays, after the
    strict check: the same names, every shape equal, every value float32."""
    nnx = _nnx()
    variables = weight_variables(module)
    check_names_and_shapes(flat, {dotted(p): tuple(v.shape) for p, v in variables.items()},
                           f"{what} do not fit the NNX model")
    wrong = sorted(f"{dotted(p)} {np.asarray(flat[dotted(p)]).dtype}" for p, v in variables.items()
                   if np.asarray(flat[dotted(p)]).dtype != np.dtype(v.dtype))
    if wrong:
        raise CheckpointError(f"{what}: {len(wrong)} tensor(s) of another dtype than the NNX "
                              f"model's: {', '.join(wrong[:8])}")
    return nnx.from_flat_state([(p, v.replace(np.asarray(flat[dotted(p)])))
                                for p, v in variables.items()])


def load_weights(module, flat: dict[str, np.ndarray], what: str = "weights") -> None:
    """Set a concrete module's weights from `flat` in place, strictly (nnx.update after
    the check); its other variables (RNG state, ...) are left as they are."""
    _nnx().update(module, weights_state(module, flat, what))


def module_from_weights(abstract, flat: dict[str, np.ndarray], what: str = "weights"):
    """A concrete module from an nnx.eval_shape one and its weights, strictly. A module
    that holds more than weights (RNG state, ...) cannot be completed from a weights file:
    build it concretely and use load_weights."""
    nnx = _nnx()
    graphdef, _, rest = nnx.split(abstract, weight_filter(), ...)
    others = sorted(dotted(p) for p, _ in nnx.to_flat_state(rest))
    if others:
        raise CheckpointError(f"the NNX model holds variables that are not weights "
                              f"({', '.join(others[:8])}): build it and use load_weights")
    return nnx.merge(graphdef, weights_state(abstract, flat, what), rest)


def state_of_params(flat: dict[str, np.ndarray]):
    """An nnx.State of nnx.Param variables from dotted names (what nnx.state(module,
    nnx.Param) of a module with those names holds), e.g. to save with Orbax when no
    module is at hand. Names are split at dots; numeric parts stay text. The values are
    JAX arrays, as in a module's state (exact copies)."""
    import jax.numpy as jnp

    nnx = _nnx()
    return nnx.from_flat_state([(tuple(name.split(".")), nnx.Param(jnp.asarray(value)))
                                for name, value in sorted(flat.items())])


def _nnx_module_path(torch_module: str, nnx_paths: set[str]) -> str:
    """The NNX module path of a torch module: its own name, else the same module inside an
    nnx.Sequential (`a.0` -> `a.layers.0`); the name itself when neither exists (then the
    strict fill names it as unexpected)."""
    from weights.trees import nnx_path_candidates

    return next((p for p in nnx_path_candidates(torch_module) if p in nnx_paths), torch_module)


def torch_module_to_nnx(torch_model, module, what: str = "converted torch weights") -> None:
    """Set an NNX module's weights from a torch model's parameters and buffers, by the
    converter's rules per module kind (weights.rules: layouts, BatchNorm statistics,
    ConvTranspose flips read from the NNX module's transpose_kernel), strictly: missing,
    unexpected and misshapen tensors are refused together, sorted."""
    from weights.rules import _own_tensors, plan_conversion, to_flax

    nnx = _nnx()
    modules = {dotted(path): m for path, m in nnx.iter_modules(module)}
    mapping = {name: _nnx_module_path(name, set(modules)) for name, _ in torch_model.named_modules()
               if name}
    plan = plan_conversion(torch_model, mapping, {k.replace(".", "/"): v
                                                  for k, v in modules.items()})
    tensors = {}
    for name, torch_module in torch_model.named_modules():
        for tensor, value in _own_tensors(torch_module).items():
            tensors[f"{name}.{tensor}" if name else tensor] = value
    flat = {".".join([*filter(None, r.flax_path.split("/")), r.leaf]):
            np.asarray(to_flax(r.kind, tensors[r.torch_name]), np.float32) for r in plan.rules}
    load_weights(module, flat, what)
