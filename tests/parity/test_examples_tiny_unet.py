"""The second worked example (parity/examples/tiny_unet): forward and gradient parity at the
forward tolerance, and every applicable mutant caught at its site."""

import numpy as np
import pytest

from parity.examples.tiny_unet import flax_model, torch_model
from parity import CATALOGUE, gradient_parity, prepare_port, run_zoo
from parity.engine.tolerance import FORWARD_ATOL
from parity.zoo.mutation import CAUGHT, NOT_APPLICABLE
from parity.zoo.real_model_defects import DEFECTS as REAL_MODEL_DEFECTS

X = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def port():
    return prepare_port(torch_model.build(), flax_model.build(), X)


def test_forward_parity_of_every_module_at_the_forward_tolerance(port):
    report = port.compare()
    assert report.passed, report.failures[:3]
    compared = {r.name for r in report.compared}
    assert {"stem.0", "stem.1", "stem.2", "bottleneck.down", "bottleneck.norm",
            "bottleneck.depthwise", "bottleneck.prelu", "up", "upsample", "fuse", "head.1",
            "prediction[0]", "prediction[1]"} <= compared
    assert report.worst.rel_to_scale <= FORWARD_ATOL


def test_gradient_parity_per_parameter_at_the_forward_tolerance(port):
    grads = gradient_parity(port.torch_model, port.flax_model, port.variables, X,
                            plan=port.plan)
    assert len(grads.rows) == sum(1 for _ in port.torch_model.parameters())
    assert grads.passed, grads.summary()


def test_every_applicable_mutant_is_caught_at_its_site(port):
    zoo = run_zoo(port)
    applicable = [r for r in zoo.results if r.status != NOT_APPLICABLE]
    assert zoo.score == 1.0 and all(r.status == CAUGHT for r in applicable), \
        [(r.defect, r.site, r.status, r.note) for r in applicable if r.status != CAUGHT]
    caught = {r.defect for r in applicable}
    # every layer kind of the example is exercised by some defect
    # the entries for real models (attention, pooling, padding, tokens, training) have no
    # site in this example
    not_here = {"leaky-relu-default-slope", "layernorm-eps"} | set(REAL_MODEL_DEFECTS)
    assert caught == set(CATALOGUE) - not_here, caught
    by_site = {(r.defect, r.site): r.first_divergence for r in applicable}
    assert by_site[("batchnorm-eps", "stem.1")] == "stem.1"
    assert by_site[("same-padding-strided", "bottleneck.down")] == "bottleneck.down"
    assert by_site[("conv-transpose-unflipped", "up")] == "up"
    assert by_site[("flatten-order", "head.1")] == "head.1"
    assert by_site[("groupnorm-eps", "bottleneck.norm")] == "bottleneck.norm"
    missing = [r for r in zoo.results if r.status == NOT_APPLICABLE]
    assert {r.defect for r in missing} == not_here
    assert all(r.note for r in missing)  # says why, never a silent None
