"""The Flax side behind one small interface: everything above it works for any kind of port.

A frontend wraps one Flax model and the arguments of its apply (Linen: linen.py, NNX:
nnx.py; `frontend_for` picks it) and offers: `path_candidates(torch_name)` (the rename rule);
`census(inputs)` (every submodule by path, every variable's shape under flat keys
'collection/path/leaf', from an abstract run); `make_apply(wanted, context, jit)` (a
function of (variables, *inputs) giving {(path, suffix): output} for every submodule in
finish order, the root '' being what the outermost call returns); `flat`/`nested` and
`split`/`merge` of variables; `apply`; and, for the zoo, contexts entered while the
apply is traced: `modules_changed(select)` (modules run as clones with changed
attributes), `inputs_changed(path, fn)`, `function_calls` / `calls_patched` (gelu,
leaky_relu, jax.image.resize). The model's code is never changed. The torch side sits
behind its own capture (torch_side.py). An output pytree gives one entry per array leaf
(`[0]`, `['key']`), a module called several times one per call (`#2`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from core.errors import UserError
from weights.trees import flatten_tree, nest_tree


class UnsupportedPort(UserError, TypeError):
    """A Flax model of a kind no frontend reads."""


@dataclasses.dataclass(frozen=True)
class FunctionCall:
    function: str
    scope: str            # path of the innermost module making the call ('' root)
    index: int            # 1 for the first call of `function` in that scope per apply
    kwargs: dict          # keyword arguments of the call (method, approximate, ...)
    args: tuple           # positional arguments after the first (shapes, slopes)


@dataclasses.dataclass
class Census:
    modules: dict[str, Any]                  # path -> module ('' the root)
    shapes: dict[str, tuple[int, ...]]       # 'params/a/kernel' -> shape
    ran: frozenset[str] | None = None        # paths whose __call__ ran (None: every module;
                                             # an nnx.List holds modules but never runs)


class VariableTree:
    """What both frontends share of their variables: a dict of collections ('params',
    'batch_stats', ...) of nested dicts, flattened to 'collection/path/leaf' keys."""

    flat = staticmethod(flatten_tree)
    nested = staticmethod(nest_tree)

    @staticmethod
    def split(variables) -> tuple[dict, dict]:
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    @staticmethod
    def merge(params, rest: dict) -> dict:
        return {"params": params, **rest}


def traced_function_calls(run: Callable, variables, inputs) -> list[FunctionCall]:
    """Every patchable function call of one apply, from an abstract trace (nothing is
    computed): `run(record, variables, *xs)` applies the model with `record` patched in
    as the stand-in of each patchable function (a frontend's calls_patched)."""
    import jax

    calls: list[FunctionCall] = []

    def record(function, original, scope, index, args, kwargs):
        calls.append(FunctionCall(function, scope, index, dict(kwargs), tuple(args[1:])))
        return original(*args, **kwargs)

    shapes = [jax.ShapeDtypeStruct(x.shape, np.float32) for x in flax_inputs(inputs)]
    jax.eval_shape(lambda v, *xs: run(record, v, *xs), variables, *shapes)
    return calls


def flatten_output(value: Any, to_numpy: Callable[[Any], np.ndarray | None],
                   suffix: str = "") -> list[tuple[str, np.ndarray]]:
    """(suffix, array) for every array leaf of an output pytree (tuple, list, dict)."""
    if isinstance(value, dict):
        return [leaf for key in value
                for leaf in flatten_output(value[key], to_numpy, f"{suffix}[{key!r}]")]
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value)
                for leaf in flatten_output(item, to_numpy, f"{suffix}[{i}]")]
    array = to_numpy(value)
    return [] if array is None else [(suffix, array)]


def call_suffix(call: int) -> str:
    return "" if call == 1 else f"#{call}"


def channels_last(array: np.ndarray) -> np.ndarray:
    """NCL / NCHW / NCDHW -> NLC / NHWC / NDHWC; anything else unchanged."""
    if array.ndim in (3, 4, 5):
        return np.ascontiguousarray(np.moveaxis(array, 1, -1))
    return array


CHANNELS_LAST, AS_IS = "channels-last", "as-is"   # what is done to a torch array


class TorchInputs(tuple):
    """Inputs in the torch layout with, per input, what the Flax side takes: its
    channels moved last (CHANNELS_LAST) or the array as it is (AS_IS)."""

    layouts: tuple[str, ...]

    def __new__(cls, arrays, layouts):
        self = super().__new__(cls, arrays)
        self.layouts = tuple(layouts)
        return self

    def __reduce__(self):     # pickled to workers with its layouts
        return TorchInputs, (tuple(self), self.layouts)


def default_layout(array: np.ndarray) -> str | None:
    """4-D and 5-D inputs are images/volumes (NCHW, NCDHW): channels-last; 2-D and
    smaller as they are; None for 3-D, which may be NCL or tokens (N, L, C): declared by
    the user or found from the first module that reads it, never guessed by shape."""
    return CHANNELS_LAST if np.ndim(array) in (4, 5) else AS_IS if np.ndim(array) < 3 \
        else None


def as_input_tuple(inputs) -> tuple[np.ndarray, ...]:
    if isinstance(inputs, TorchInputs):
        return inputs
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(np.asarray(x, np.float32) for x in items)


def with_layouts(inputs, layouts) -> TorchInputs:
    return TorchInputs(as_input_tuple(inputs), layouts)


def move(array: np.ndarray, layout: str | None) -> np.ndarray:
    return channels_last(array) if layout == CHANNELS_LAST else array


def flax_inputs(inputs) -> tuple[np.ndarray, ...]:
    """The torch-layout inputs as the Flax side takes them: each as its layout says
    (TorchInputs), else channels-last for 3- to 5-D arrays (the older default)."""
    items = as_input_tuple(inputs)
    layouts = getattr(items, "layouts", None) or [CHANNELS_LAST] * len(items)
    return tuple(move(x, layout) for x, layout in zip(items, layouts))


def frontend_for(flax_model, apply_kwargs: dict | None = None):
    """The frontend that reads `flax_model`: a flax.linen.Module (linen.py) or a
    flax.nnx.Module (nnx.py)."""
    import flax.linen as nn
    from flax import nnx

    if isinstance(flax_model, nn.Module):
        from parity.engine.linen import LinenFrontend

        return LinenFrontend(flax_model, apply_kwargs)
    if isinstance(flax_model, nnx.Module):
        from parity.engine.nnx import NNXFrontend

        return NNXFrontend(flax_model, apply_kwargs)
    raise UnsupportedPort(f"the Flax model is a {type(flax_model).__name__}, not a "
                          "flax.linen.Module or a flax.nnx.Module")
