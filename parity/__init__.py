"""Prove a Flax port of a PyTorch model right, module by module.

    from parity import compare, convert_weights, prepare_port, run_zoo

    variables = convert_weights(torch_model, flax_model, x)   # x: NCHW numpy
    report = compare(torch_model, flax_model, variables, x)   # a Report: rows, first divergence
    zoo = run_zoo(prepare_port(torch_model, flax_model, x))   # known porting bugs, injected

Also: `gradient_parity` (per-parameter gradients), `save_fixture` / `check_fixture` (a
stored torch run, so that a port is checked where PyTorch is not installed), and the
defect catalogue (`CATALOGUE`; `Defect`, `Site`, `Mutation` to write entries of your
own). Options are keyword-only. Importing this package starts neither framework.

Rooms by job: `engine/` (capture, align, compare, tolerances, reports, fixtures),
`zoo/` (injected defects), `grads/` (gradient and training parity), `presets/` (DLN as a
configuration of the engine), `examples/` (worked examples), `evaluation/` (metrics
against libraries, Table 1 and 2), `bench/` (timing).
"""

from parity.engine.api import compare, convert_weights
from parity.engine.fixture import check_fixture, save_fixture
from parity.engine.prepared import PreparedPort, prepare_port
from parity.engine.rows import Report
from parity.grads.model_gradients import GradientParity, gradient_parity
from parity.zoo.catalogue import CATALOGUE, Defect, Mutation, Site
from parity.zoo.mutation import MutationReport, run_zoo

__all__ = ["CATALOGUE", "Defect", "GradientParity", "Mutation", "MutationReport",
           "PreparedPort", "Report", "Site", "check_fixture", "compare", "convert_weights",
           "gradient_parity", "prepare_port", "run_zoo", "save_fixture"]
