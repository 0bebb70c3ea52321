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
- layouts: inputs are given as torch takes them (NCHW); 3-, 4- and 5-D arrays are moved
  channels-last for Flax (NCL -> NLC, NCHW -> NHWC, NCDHW -> NDHWC) and torch outputs
  likewise before comparing; 2-D arrays stay as they are.
- alignment: torch `a.b.0` <-> Linen `a/b_0`, NNX `a.b.0` or `a.layers.0` inside an
  nnx.Sequential (the frontend's rename rule, weights/trees.py), a user `mapping`
  {torch name: Flax path}, or, for modules with weights, Flax's automatic names paired
  in order by the shapes of their converted variables. A module seen on one side only
  is a row of its own, never dropped; the final output is always judged.
- pass rule (parity/engine/tolerance.py): max|flax - torch| <= tol * max(1, max|torch|)
  per row; the first failing row in torch's finish order is the first divergence.
- a run that compared nothing raises NothingCompared (a FAIL verdict, exit 1), never
  passes.
The torch model runs as given (call `.eval()` first for inference behaviour).
"""

from __future__ import annotations

from core.errors import PortDiverges
from parity.engine.frontend import Census, flax_inputs, frontend_for
from parity.engine.rows import Report, align_rows
from parity.engine.tolerance import FORWARD_ATOL
from parity.engine.torch_side import TorchCapture, record_torch


class NothingCompared(PortDiverges, ValueError):
    """A comparison in which no output had a counterpart: it cannot prove anything, so
    it fails (exit 1)."""


def compare(torch_model, flax_model, variables, inputs, *, tol: float = FORWARD_ATOL,
            mapping: dict[str, str] | None = None, torch_modules: list[str] | None = None,
            apply_kwargs: dict | None = None) -> Report:
    """Compare every module of `torch_model` with `flax_model` applied to `variables`.

    inputs: one array or a tuple, in torch layout (NCHW); tol: the per-row tolerance;
    mapping: torch module name -> Flax path where the rename rule does not hold;
    torch_modules: compare only these torch modules (then one missing in Flax fails);
    apply_kwargs: extra arguments of the Flax apply (e.g. {"train": False}).
    """
    reference = record_torch(torch_model, inputs, torch_modules)
    return compare_captured(frontend_for(flax_model, apply_kwargs), reference, variables,
                            inputs, tol=tol, mapping=mapping, chosen=torch_modules is not None)


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
    outputs = frontend.make_apply(wanted, context, jit)(variables, *flax_inputs(inputs))
    report = align_rows(reference.outputs, outputs, tol, mapping, chosen,
                        frontend.path_candidates, reference.kinds if chosen else ())
    if not report.compared:
        raise NothingCompared(
            "nothing was compared: no torch module output has a Flax counterpart (names "
            "follow torch `a.b.0` <-> Flax `a/b_0`; pass a mapping where they differ)")
    return report


def convert_weights(torch_model, flax_model, inputs, *, mapping: dict[str, str] | None = None,
                    apply_kwargs: dict | None = None):
    """Flax variables from the torch model's own tensors, strictly checked against the
    variables the Flax model creates (weights.rules; user errors name what is wrong)."""
    from weights.rules import convert_model

    frontend = frontend_for(flax_model, apply_kwargs)
    census = frontend.census(inputs)
    mapping = infer_mapping(torch_model, census, mapping, frontend.path_candidates)
    return convert_model(torch_model, census.shapes, mapping, census.modules,
                         paths_of=frontend.path_candidates)[0]


def infer_mapping(torch_model, census: Census, mapping: dict[str, str] | None = None,
                  paths_of=None) -> dict[str, str]:
    """The user's mapping, completed for torch modules with tensors whose renamed path
    holds no Flax variables (e.g. Flax's automatic names `Conv_0` for layers built in a
    compact method): such modules are paired, in order, with the first unclaimed Flax
    module whose variables have exactly the converted shapes. Torch-only modules stay
    unpaired (and are refused by the strict conversion)."""
    from weights.rules import plan_conversion
    from weights.trees import flax_path_candidates

    paths_of = paths_of or flax_path_candidates
    mapping = dict(mapping or {})
    plan = plan_conversion(torch_model, mapping, census.modules, paths_of=paths_of)
    owners: dict[str, dict[str, tuple]] = {}
    for key, shape in census.shapes.items():
        collection, *path, leaf = key.split("/")
        owners.setdefault("/".join(path), {})[f"{collection}/{leaf}"] = tuple(shape)
    claimed = set(mapping.values())
    pending = []
    for module, rules in plan.by_module().items():
        found = next((c for c in paths_of(module) if c in owners), None)
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
