"""The engine as a Python API: compare any PyTorch model with its Flax port, module by module.

    from parity.engine.api import compare, convert_weights

    variables = convert_weights(torch_model, flax_module, x)      # rules per module kind
    report = compare(torch_model, flax_module, variables, x)      # x: NCHW numpy
    report.passed, report.first_divergence, report.rows

What happens:
- torch: a forward hook on every module records its output (children finish first);
  Flax: `capture_intermediates` records every submodule's `__call__`. The root's
  output is the row `prediction`; any output pytree (tuple, list, dict) is compared
  leaf by leaf; a module called twice gives a row per call (`name#2`).
- layouts: inputs are given as torch takes them (NCHW); 3-, 4- and 5-D arrays are
  moved channels-last for Flax (NCL -> NLC, NCHW -> NHWC, NCDHW -> NDHWC) and torch
  outputs likewise before comparing; 2-D arrays stay as they are.
- alignment: torch `a.b.0` <-> Flax `a/b_0` (or `a/b/layers_0` in an nn.Sequential),
  or a user `mapping` {torch name: Flax path}. A module seen on one side only is a
  row "only in torch" / "only in flax", never dropped.
- pass rule (parity/engine/tolerance.py): max|flax - torch| <= tol * max(1, max|torch|)
  per row; the first failing row in torch's finish order is the first divergence.
- a run that compared nothing, or did not compare the final output, raises
  `NothingCompared` / `OutputNotCompared` (user errors), never passes.
- Flax variables may hold any collections (params, batch_stats, ...).
The torch model runs as given (call `.eval()` first for inference behaviour).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from core.errors import UserError
from parity.engine.block_compare import PREDICTION, LayerReport, align_rows
from parity.engine.hooks import (TorchCapture, capture_flax_modules, capture_torch_modules,
                                 channels_last, make_flax_apply)
from parity.engine.tolerance import FORWARD_ATOL

Report = LayerReport


class CompareError(UserError, ValueError):
    """A comparison that cannot prove anything (nothing compared, output not compared)."""


class NothingCompared(CompareError):
    pass


class OutputNotCompared(CompareError):
    pass


def as_input_tuple(inputs) -> tuple[np.ndarray, ...]:
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(np.asarray(x, np.float32) for x in items)


def torch_capture(torch_model, inputs, torch_modules: list[str] | None = None) -> TorchCapture:
    """Every module's output of one torch run (inputs in torch layout)."""
    import torch

    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in as_input_tuple(inputs))
    return capture_torch_modules(torch_model, tensors, torch_modules)


def flax_inputs(inputs) -> tuple[np.ndarray, ...]:
    return tuple(channels_last(x) for x in as_input_tuple(inputs))


def compare(torch_model, flax_module, variables: dict, inputs, *, tol: float = FORWARD_ATOL,
            mapping: dict[str, str] | None = None, torch_modules: list[str] | None = None,
            context: Callable | None = None, apply_kwargs: dict | None = None,
            reference: TorchCapture | None = None, apply_fn: Callable | None = None,
            jit: bool = True) -> Report:
    """Compare every module of `torch_model` with `flax_module` applied to `variables`.

    inputs: one array or a tuple, in torch layout (NCHW); tol: the per-row tolerance;
    mapping: torch module name -> Flax path where the rename rule does not hold;
    torch_modules: compare only these torch modules (then one missing in Flax fails);
    context: a context-manager factory entered around the Flax apply while it is
    traced (the mutation zoo's interceptors); apply_kwargs: extra `apply` arguments
    (e.g. {"train": False}); reference: a torch capture to reuse; jit: compile the
    Flax apply (False: run it eagerly, cheaper for one run of a small model).
    """
    reference = reference or torch_capture(torch_model, inputs, torch_modules)
    wanted = None
    if torch_modules is not None:
        from parity.engine.block_compare import flax_path_candidates

        wanted = frozenset(c for name in torch_modules for c in
                           ([mapping[name].replace(".", "/")] if mapping and name in mapping
                            else flax_path_candidates(name)))
    if apply_fn is None:
        apply_fn = make_flax_apply(flax_module, wanted, context, apply_kwargs, jit=jit)
    flax_outputs = capture_flax_modules(flax_module, variables, flax_inputs(inputs), wanted,
                                        context, apply_kwargs, apply_fn)
    report = align_rows(reference.outputs, flax_outputs, tol, mapping,
                        chosen=torch_modules is not None)
    check_meaningful(report)
    return report


def check_meaningful(report: Report) -> None:
    """NothingCompared / OutputNotCompared unless the final output was compared."""
    if not report.compared:
        raise NothingCompared(
            "nothing was compared: no torch module output has a Flax counterpart (names "
            "follow torch `a.b.0` <-> Flax `a/b_0`; pass a mapping where they differ)")
    root_rows = [r for r in report.rows if r.module == ""]
    if not root_rows or any(not r.compared for r in root_rows):
        raise OutputNotCompared(
            f"the final output ({PREDICTION}) was not compared: the two models' outputs "
            "have different structures (tuple/dict leaves on one side only)")


# ---- the Flax side's modules and variables, without running it ---------------------------
@dataclasses.dataclass
class FlaxCensus:
    modules: dict[str, object]               # Flax path -> bound module ('' root)
    shapes: dict[str, tuple[int, ...]]       # 'params/a/kernel' -> shape (from init)


def flax_census(flax_module, inputs, apply_kwargs: dict | None = None) -> FlaxCensus:
    """Shapes of the variables `init` would create and every submodule by path, from an
    abstract trace (no compute)."""
    import flax.linen as nn
    import jax

    from weights.trees import flatten_tree

    modules: dict[str, object] = {}

    def record(next_fun, args, kwargs, context):
        modules.setdefault("/".join(context.module.path), context.module)
        return next_fun(*args, **kwargs)

    def init(*xs):
        with nn.intercept_methods(record):
            return flax_module.init(jax.random.PRNGKey(0), *xs, **(apply_kwargs or {}))

    shapes = jax.eval_shape(init, *[jax.ShapeDtypeStruct(x.shape, np.float32)
                                    for x in flax_inputs(inputs)])
    flat = {k: tuple(v.shape) for k, v in flatten_tree(dict(shapes)).items()
            if not k.startswith("intermediates/")}
    return FlaxCensus(modules, flat)


def convert_weights(torch_model, flax_module, inputs, mapping: dict[str, str] | None = None,
                    apply_kwargs: dict | None = None, census: FlaxCensus | None = None):
    """Flax variables from the torch model's own tensors, strictly checked against the
    variables the Flax module creates (weights.rules; user errors name what is wrong)."""
    from weights.rules import convert_model

    census = census or flax_census(flax_module, inputs, apply_kwargs)
    mapping = infer_mapping(torch_model, census, mapping)
    variables, _ = convert_model(torch_model, census.shapes, mapping, census.modules)
    return variables


def conversion_plan(torch_model, census: FlaxCensus, mapping: dict[str, str] | None = None):
    from weights.rules import convert_model

    return convert_model(torch_model, census.shapes, mapping, census.modules)


def infer_mapping(torch_model, census: FlaxCensus, mapping: dict[str, str] | None = None
                  ) -> dict[str, str]:
    """The user's mapping, completed for torch modules with tensors whose renamed path
    holds no Flax variables (e.g. Flax's automatic names `Conv_0` for layers built in a
    compact method): such modules are paired, in order, with the first unclaimed Flax
    module whose variables have exactly the converted shapes. Torch-only modules stay
    unpaired (and are refused by the strict conversion)."""
    from weights.rules import plan_conversion
    from weights.trees import flax_path_candidates

    mapping = dict(mapping or {})
    plan = plan_conversion(torch_model, mapping, census.modules)
    owners: dict[str, dict[str, tuple]] = {}
    for key, shape in census.shapes.items():
        collection, *path, leaf = key.split("/")
        owners.setdefault("/".join(path), {})[f"{collection}/{leaf}"] = tuple(shape)
    claimed = {p for name in mapping for p in [mapping[name].replace(".", "/")]}
    pending = []
    for module, rules in plan.by_module().items():
        found = next((c for c in flax_path_candidates(module) if c in owners), None)
        if module in mapping or found is not None:
            claimed.add(mapping.get(module, found))
        else:
            pending.append((module, {f"{r.collection}/{r.leaf}": r.flax_shape for r in rules}))
    order = [p for p in census.modules if p in owners] + [p for p in owners
                                                          if p not in census.modules]
    for module, wanted in pending:
        match = next((p for p in order if p not in claimed and owners[p] == wanted), None)
        if match is not None:
            mapping[module] = match
            claimed.add(match)
    return mapping
