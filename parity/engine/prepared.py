"""A port prepared for repeated comparison: both models, converted variables, the torch
capture, the Flax side's frontend, census and function calls, so that each rerun (a
mutant of the zoo, a preset's injected defect) runs only the Flax side.

    port = prepare_port(torch_model, flax_model, x)    # converts the torch model's weights
    report = port.compare()                            # the port as it is
    zoo = run_zoo(port)                                # parity.zoo.mutation

A port prepared from a fixture (parity.engine.fixture) has no torch model: its capture
and variables are the stored ones.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from parity.engine.api import compare_captured, infer_pairing, input_layouts_of
from parity.engine.frontend import Census, FunctionCall, as_input_tuple, frontend_for, with_layouts
from parity.engine.rows import Report
from parity.engine.tolerance import FORWARD_ATOL
from parity.engine.torch_side import TorchCapture, record_torch


@dataclasses.dataclass
class PreparedPort:
    torch_model: object | None              # None: prepared from a fixture
    frontend: object                        # parity.engine.frontend's interface
    variables: dict
    inputs: tuple[np.ndarray, ...]          # torch layout
    known_census: Census | None             # None: taken on first use (`census`)
    plan: object | None                     # weights.rules.ConversionPlan (None: fixture)
    reference: TorchCapture
    mapping: dict[str, str] = dataclasses.field(default_factory=dict)
    tol: float = FORWARD_ATOL
    chosen: bool = False                    # the capture holds chosen torch modules only
    guessed: list = dataclasses.field(default_factory=list)  # pairs found by shape and order
    extra_rules: dict | None = None
    training: bool = False                  # both sides run in training mode (--train)

    @property
    def census(self) -> Census:
        """The Flax side's modules and variable shapes (an abstract run, taken once)."""
        if self.known_census is None:
            self.known_census = self.frontend.census(self.inputs)
        return self.known_census

    @functools.cached_property
    def calls(self) -> list[FunctionCall]:
        """The Flax side's patchable function calls (found on first use)."""
        return self.frontend.function_calls(self.variables, self.inputs)

    @property
    def flax_model(self):
        return self.frontend.module

    def compare(self, variables: dict | None = None, context=None, flax_model=None,
                jit: bool = True, attributes: dict | None = None,
                call_changes: dict | None = None) -> Report:
        """This port, or a mutant of it (other variables, a context around the Flax
        apply, or another Flax model), against the torch capture; with the rows of the
        hyperparameter diff (parity.engine.hyperparameters; attributes: {Flax path:
        {attribute: value}} a mutant's clones run with; call_changes: {(function, scope,
        index): {keyword: value}} a mutant's function calls are made with)."""
        from parity.engine.hyperparameters import changed_calls, hyperparameter_rows, merged

        frontend = self.frontend
        if flax_model is not None:
            frontend = frontend_for(flax_model, self.frontend.apply_kwargs)
            frontend.training = self.training
        report = compare_captured(frontend, self.reference,
                                  self.variables if variables is None else variables,
                                  self.inputs, tol=self.tol, mapping=self.mapping,
                                  chosen=self.chosen, context=context, jit=jit)
        if flax_model is None:
            mismatches = self.mismatches if not (attributes or call_changes) else \
                hyperparameter_rows(self, attributes,
                                    changed_calls(self.calls, call_changes or {}))
            report.rows = merged(report.rows, mismatches)
        return report

    @functools.cached_property
    def mismatches(self) -> list:
        """The hyperparameter diff of the port as it is."""
        from parity.engine.hyperparameters import hyperparameter_rows

        return hyperparameter_rows(self)

    def flax_path_of(self, torch_name: str) -> str | None:
        """The Flax module path aligned with a torch module (None: not in the port)."""
        if torch_name in self.mapping:
            return self.mapping[torch_name]
        return next((c for c in self.frontend.path_candidates(torch_name)
                     if c in self.census.modules), None)

    def torch_name_of(self, flax_path: str) -> str | None:
        return next((name for name in [""] + list(self.reference.kinds)
                     if self.flax_path_of(name) == flax_path), None)

    def torch_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.torch_model.state_dict().items()}


def prepare_port(torch_model, flax_model, inputs, *, variables: dict | None = None,
                 mapping: dict[str, str] | None = None, apply_kwargs: dict | None = None,
                 tol: float = FORWARD_ATOL, torch_modules: list[str] | None = None,
                 extra_rules: dict | None = None,
                 input_layout: str | list[str] | None = None,
                 training: bool = False) -> PreparedPort:
    """Everything the zoo needs; variables default to the torch model's own weights
    converted by the rules (weights.rules, and extra_rules: {class or class name: rule}).
    torch_modules: compare only these; input_layout: parity.engine.api.compare's;
    training: both sides in training mode (parity.engine.training): outputs and the
    updated BatchNorm statistics are compared."""
    from weights.rules import convert_model

    if training:
        from parity.engine.training import record_training

        reference = record_training(torch_model, inputs, torch_modules,
                                    input_layouts_of(inputs, input_layout), extra_rules)
    else:
        reference = record_torch(torch_model, inputs, torch_modules,
                                 input_layouts_of(inputs, input_layout))
    inputs = with_layouts(inputs, reference.input_layouts)
    frontend = frontend_for(flax_model, apply_kwargs)
    frontend.training = training
    census = frontend.census(inputs)
    order = reference.order if torch_modules is None else \
        record_torch(torch_model, inputs).order
    pairing = infer_pairing(torch_model, census, mapping, frontend.path_candidates, order,
                            extra_rules)
    converted, plan = convert_model(torch_model, census.shapes, pairing.mapping,
                                    census.modules, extra_rules,
                                    paths_of=frontend.path_candidates)
    variables = converted if variables is None else variables
    return PreparedPort(torch_model, frontend, variables, inputs, census, plan, reference,
                        pairing.mapping, tol, torch_modules is not None, pairing.guessed,
                        extra_rules, training)
