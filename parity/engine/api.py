"""The engine's entry points: any PyTorch model against its Flax port, module by module.

    variables = convert_weights(torch_model, flax_model, x)     # rules per module kind
    report = compare(torch_model, flax_model, variables, x)     # x: NCHW numpy
    report.passed, report.first_divergence, report.rows

What happens:
- torch (parity/engine/torch_side.py): a forward hook on every module records its
  output as modules finish; the Flax side (a frontend, parity/engine/frontend.py)
  records every submodule's output; the final output of each is the row `prediction`;
  any output pytree is compared leaf by leaf; a module called twice gives a row per
  call (`name#2`).
- layouts, never guessed from shapes: inputs are given as torch takes them; 4-D and 5-D
  inputs are moved channels-last for Flax (NCHW -> NHWC), 3-D inputs as declared
  (input_layout "channels-last" for NCL, "as-is" for tokens (N, L, C)) or as the first
  module reading them says; each torch output is moved or kept by what produced it
  (parity.engine.torch_side.record_torch) and each row names its layout.
- alignment: a user `mapping` {torch name: Flax path}, torch `a.b.0` <-> Linen `a/b_0`,
  NNX `a.b.0` or `a.layers.0` inside an nnx.Sequential (the frontend's rename rule,
  weights/trees.py), then Flax's automatic names paired by shape and execution order
  (parity.engine.pairing: guesses listed, ambiguity refused). A module seen on one side
  only is a row of its own, never dropped; the final output is always judged.
- pass rule (parity/engine/tolerance.py): max|flax - torch| <= tol * max(1, max|torch|)
  per row; the first failing row in torch's finish order is the first divergence.
- a run that compared nothing raises NothingCompared (a FAIL verdict, exit 1), never
  passes.
The torch model runs as given (call `.eval()` first for inference behaviour).
"""

from __future__ import annotations

import functools

from core.errors import PortDiverges, UserError
from parity.engine.frontend import (AS_IS, CHANNELS_LAST, Census, as_input_tuple, flax_inputs,
                                    frontend_for, with_layouts)
from parity.engine.pairing import Pairing, pair_modules
from parity.engine.rows import Report, align_rows
from parity.engine.tolerance import FORWARD_ATOL
from parity.engine.torch_side import TorchCapture, record_torch


class NothingCompared(PortDiverges, ValueError):
    """A comparison in which no output had a counterpart: it cannot prove anything, so
    it fails (exit 1)."""


# the pairing and input layouts each recent convert_weights result was made with (keyed by
# the identity of the variables it returned, which it keeps alive), so that `compare`
# of those variables aligns its rows as the conversion paired the modules
_CONVERSIONS: dict[int, tuple[dict, Pairing, tuple[str, ...]]] = {}
CONVERSIONS_KEPT = 8


def conversion_of(variables) -> tuple[Pairing, tuple[str, ...]] | tuple[None, None]:
    """(pairing, input layouts) of variables convert_weights returned, else (None, None)."""
    entry = _CONVERSIONS.get(id(variables))
    return (entry[1], entry[2]) if entry is not None and entry[0] is variables else (None, None)


def input_layouts_of(inputs, input_layout) -> list[str | None]:
    """Per input: the declared layout (one for all, or one each), or None (decided by
    record_torch)."""
    count = len(as_input_tuple(inputs))
    if input_layout is None:
        return [None] * count
    layouts = [input_layout] * count if isinstance(input_layout, str) else list(input_layout)
    bad = [x for x in layouts if x not in (CHANNELS_LAST, AS_IS)]
    if bad or len(layouts) != count:
        raise UserError(f"input layout {input_layout!r}: expected {CHANNELS_LAST} or {AS_IS} "
                        f"(one for all {count} inputs, or one each)")
    return layouts


def compare(torch_model, flax_model, variables, inputs, *, tol: float = FORWARD_ATOL,
            mapping: dict[str, str] | None = None, torch_modules: list[str] | None = None,
            apply_kwargs: dict | None = None, extra_rules: dict | None = None,
            input_layout: str | list[str] | None = None) -> Report:
    """Compare every module of `torch_model` with `flax_model` applied to `variables`.

    inputs: one array or a tuple, in torch layout (NCHW); tol: the per-row tolerance;
    mapping: torch module name -> Flax path where the rename rule does not hold (default:
    the pairing convert_weights found, or the same pairing found again);
    torch_modules: compare only these torch modules (then one missing in Flax fails);
    apply_kwargs: extra arguments of the Flax apply (e.g. {"train": False});
    extra_rules: converter rules of your own ({class or class name: rule});
    input_layout: "channels-last" or "as-is" (one for all inputs, or one each; default:
    4-D/5-D channels-last, 3-D from the first module that reads it).
    """
    layouts = input_layouts_of(inputs, input_layout)
    pairing, converted_layouts = conversion_of(variables)
    if all(x is None for x in layouts) and converted_layouts:
        layouts = list(converted_layouts)
    reference = record_torch(torch_model, inputs, torch_modules, layouts)
    frontend = frontend_for(flax_model, apply_kwargs)
    inputs = with_layouts(inputs, reference.input_layouts)
    census = frontend.census(inputs)
    if mapping is None and pairing is not None:
        mapping = pairing.mapping
    else:
        order = reference.order if torch_modules is None else \
            record_torch(torch_model, inputs, None, reference.input_layouts).order
        mapping = infer_mapping(torch_model, census, mapping, frontend.path_candidates,
                                order, extra_rules)
    from parity.engine.prepared import PreparedPort

    port = PreparedPort(torch_model, frontend, variables, inputs, census, None, reference,
                        mapping, tol, torch_modules is not None, extra_rules=extra_rules)
    return port.compare()


def compare_captured(frontend, reference: TorchCapture, variables, inputs, *,
                     tol: float = FORWARD_ATOL, mapping: dict[str, str] | None = None,
                     chosen: bool = False, context=None, jit: bool = True) -> Report:
    """The Flax side (a frontend) against a torch capture already made (the zoo reuses
    one, a fixture stores one). chosen: the capture holds chosen modules only (then only
    their Flax counterparts are captured, and one missing there fails); context: a
    context factory entered around the Flax apply while it is traced (the zoo's)."""
    mapping = dict(mapping or {})
    wanted = None
    if chosen:
        wanted = frozenset(c for name in reference.kinds for c in
                           ([mapping[name]] if name in mapping
                            else frontend.path_candidates(name)))
    if reference.input_layouts:
        inputs = with_layouts(inputs, reference.input_layouts)
    outputs = frontend.make_apply(wanted, context, jit)(variables, *flax_inputs(inputs))
    # each row's layout, and the rows not judged (torch_side.TorchCapture)
    rows_of = functools.partial(align_rows, layouts=reference.layouts,
                                not_judged=getattr(reference, "composite", frozenset()))
    report = rows_of(reference.outputs, outputs, tol, mapping, chosen,
                     frontend.path_candidates, reference.kinds if chosen else ())
    if not report.compared:
        raise NothingCompared(
            "nothing was compared: no torch module output has a Flax counterpart (names "
            "follow torch `a.b.0` <-> Flax `a/b_0`; pass a mapping where they differ)")
    return report


def convert_weights(torch_model, flax_model, inputs, *, mapping: dict[str, str] | None = None,
                    apply_kwargs: dict | None = None, extra_rules: dict | None = None,
                    input_layout: str | list[str] | None = None) -> dict:
    """Flax variables from the torch model's own tensors, strictly checked against the
    variables the Flax model creates (weights.rules; user errors name what is wrong).
    `compare` of the result reuses the pairing found here (guessed pairs: conversion_of)."""
    from weights.rules import convert_model

    reference = record_torch(torch_model, inputs, None, input_layouts_of(inputs, input_layout))
    frontend = frontend_for(flax_model, apply_kwargs)
    census = frontend.census(with_layouts(inputs, reference.input_layouts))
    pairing = infer_pairing(torch_model, census, mapping, frontend.path_candidates,
                            reference.order, extra_rules)
    converted = convert_model(torch_model, census.shapes, pairing.mapping, census.modules,
                              extra_rules, paths_of=frontend.path_candidates)[0]
    if len(_CONVERSIONS) >= CONVERSIONS_KEPT:
        _CONVERSIONS.pop(next(iter(_CONVERSIONS)))
    _CONVERSIONS[id(converted)] = (converted, pairing, reference.input_layouts)
    return converted


def infer_pairing(torch_model, census: Census, mapping: dict[str, str] | None = None,
                  paths_of=None, torch_order: list[str] | None = None,
                  extra_rules: dict | None = None) -> Pairing:
    """The user's mapping completed by parity.engine.pairing (by name, then shape and
    execution order; guesses listed; ambiguity refused)."""
    from weights.rules import plan_conversion

    plan = plan_conversion(torch_model, mapping, census.modules, extra_rules, paths_of)
    return pair_modules(plan, census, mapping, paths_of, torch_order, torch_model)


def infer_mapping(torch_model, census: Census, mapping: dict[str, str] | None = None,
                  paths_of=None, torch_order: list[str] | None = None,
                  extra_rules: dict | None = None) -> dict[str, str]:
    """infer_pairing's mapping."""
    return infer_pairing(torch_model, census, mapping, paths_of, torch_order,
                         extra_rules).mapping
