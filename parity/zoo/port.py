"""What the mutation zoo knows about a port: both models, converted variables, the torch
capture, the Flax modules by path and the Flax function calls a defect can alter.

Function calls (gelu, leaky_relu, jax.image.resize) are found by tracing the Flax
side once with recording stand-ins installed in the namespaces ports call them
from (`jax.nn`, `flax.linen`, `jax.image`); each call is attributed to the innermost
Flax module running it (its scope) and numbered within that scope. The same
stand-ins, given a mutation, alter exactly one such call while a mutant is traced.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

import numpy as np

from parity.engine.api import (FlaxCensus, flax_census, flax_inputs, torch_capture)
from weights.trees import flax_path_candidates
from parity.engine.hooks import TorchCapture, make_flax_apply
from parity.engine.tolerance import FORWARD_ATOL

# (function name, namespaces ports call it from)
PATCHABLE = {
    "gelu": ("jax.nn", "flax.linen", "flax.linen.activation"),
    "leaky_relu": ("jax.nn", "flax.linen", "flax.linen.activation"),
    "resize": ("jax.image",),
}


@dataclasses.dataclass(frozen=True)
class FunctionCall:
    function: str
    scope: str            # Flax path of the innermost module making the call ('' root)
    index: int            # 1 for the first call of `function` in that scope per apply
    kwargs: dict          # keyword arguments of the call (method, approximate, ...)
    args: tuple           # positional arguments after the first (shapes, slopes)


@dataclasses.dataclass
class Port:
    torch_model: object
    flax_module: object
    variables: dict
    inputs: tuple[np.ndarray, ...]          # torch layout
    census: FlaxCensus
    plan: object                            # weights.rules.ConversionPlan
    reference: TorchCapture
    calls: list[FunctionCall]
    mapping: dict[str, str] | None = None
    apply_kwargs: dict | None = None
    tol: float = FORWARD_ATOL
    base_apply: Callable | None = None      # jitted apply without any mutation

    def flax_path_of(self, torch_name: str) -> str | None:
        """The Flax module path aligned with a torch module (None: not in the port)."""
        if self.mapping and torch_name in self.mapping:
            return self.mapping[torch_name].replace(".", "/")
        return next((c for c in flax_path_candidates(torch_name) if c in self.census.modules),
                    None)

    def torch_name_of(self, flax_path: str) -> str | None:
        for name in [""] + list(self.reference.kinds):
            if self.flax_path_of(name) == flax_path:
                return name
        return None

    def torch_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.torch_model.state_dict().items()}


class ScopeTracker:
    """A method interceptor keeping the stack of Flax modules now running."""

    def __init__(self):
        self.stack: list[str] = [""]
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, next_fun, args, kwargs, context):
        self.stack.append("/".join(context.module.path))
        try:
            return next_fun(*args, **kwargs)
        finally:
            self.stack.pop()

    def next_index(self, function: str) -> tuple[str, int]:
        scope = self.stack[-1]
        key = (function, scope)
        self.counts[key] = self.counts.get(key, 0) + 1
        return scope, self.counts[key]


@contextlib.contextmanager
def patched_functions(on_call: Callable) -> Iterator[ScopeTracker]:
    """Install stand-ins for PATCHABLE functions: on_call(function, original, scope,
    index, args, kwargs) computes each call. Restored on exit."""
    import importlib

    import flax.linen as nn

    tracker = ScopeTracker()
    saved = []
    for function, namespaces in PATCHABLE.items():
        modules = [importlib.import_module(n) for n in namespaces]
        original = getattr(modules[0], function)

        def stand_in(*args, _function=function, _original=original, **kwargs):
            scope, index = tracker.next_index(_function)
            return on_call(_function, _original, scope, index, args, kwargs)

        for module in modules:
            if getattr(module, function, None) is original:
                saved.append((module, function, original))
                setattr(module, function, stand_in)
    try:
        with nn.intercept_methods(tracker):
            yield tracker
    finally:
        for module, function, original in saved:
            setattr(module, function, original)


def find_function_calls(flax_module, variables: dict, inputs, apply_kwargs=None
                        ) -> list[FunctionCall]:
    """Every patchable function call of one Flax apply, from an abstract trace."""
    import jax

    calls: list[FunctionCall] = []

    def record(function, original, scope, index, args, kwargs):
        calls.append(FunctionCall(function, scope, index, dict(kwargs), tuple(args[1:])))
        return original(*args, **kwargs)

    def run(variables, *xs):
        with patched_functions(record):
            return flax_module.apply(variables, *xs, mutable=True, **(apply_kwargs or {}))

    shapes = [jax.ShapeDtypeStruct(x.shape, np.float32) for x in flax_inputs(inputs)]
    jax.eval_shape(run, variables, *shapes)
    return calls


def prepare_port(torch_model, flax_module, inputs, variables: dict | None = None,
                 mapping: dict[str, str] | None = None, apply_kwargs: dict | None = None,
                 tol: float = FORWARD_ATOL) -> Port:
    """Everything the zoo needs; variables default to the torch model's own weights
    converted by the rules (weights.rules)."""
    from parity.engine.api import as_input_tuple, conversion_plan, infer_mapping

    inputs = as_input_tuple(inputs)
    census = flax_census(flax_module, inputs, apply_kwargs)
    mapping = infer_mapping(torch_model, census, mapping)
    converted, plan = conversion_plan(torch_model, census, mapping)
    variables = converted if variables is None else variables
    reference = torch_capture(torch_model, inputs)
    calls = find_function_calls(flax_module, variables, inputs, apply_kwargs)
    return Port(torch_model, flax_module, variables, inputs, census, plan, reference, calls,
                mapping, apply_kwargs, tol, make_flax_apply(flax_module, None, None,
                                                            apply_kwargs))
