"""The NNX-only worked example (parity/examples/tiny_mixer): `dln check`'s run passes it,
two classic NNX porting mistakes are named at their module, and every mutant of the
catalogue that applies is caught where it was put (none missed)."""

import numpy as np
import pytest

from parity import compare, convert_weights
from parity.engine.check import run_check
from parity.examples.tiny_mixer import nnx_model
from parity.zoo.mutation import CAUGHT, MISSED

TORCH = "parity/examples/tiny_mixer/torch_model.py:build"
NNX = "parity/examples/tiny_mixer/nnx_model.py:build"
SHAPE = (2, 3, 16, 16)


@pytest.fixture(scope="module")
def checked():
    return run_check(TORCH, NNX, SHAPE, mutants="all")


def test_dln_check_passes_the_nnx_port_module_by_module(checked):
    report = checked.report
    assert report.passed, report.failures[:3]
    compared = {r.name: r.flax_name for r in report.compared}
    # nnx.List keeps torch's index, nnx.Sequential adds layers., a subclass of nnx.Conv
    # inheriting __call__ is captured
    assert compared["blocks.1.channel_mlp.1"] == "blocks.1.channel_mlp.layers.1"
    assert compared["blocks.0.norm1"] == "blocks.0.norm1"
    assert compared["patch"] == "patch" and compared["act"] == "act"
    assert len(report.compared) >= 25


def test_mutants_all_catches_at_least_six_and_misses_none(checked):
    zoo = checked.mutants
    caught = [r for r in zoo.results if r.status == CAUGHT]
    assert not [r for r in zoo.results if r.status == MISSED], zoo.summary()
    assert len(caught) >= 6 and zoo.score == 1.0 and checked.passed
    assert {"kernel-flip", "dense-untransposed", "batchnorm-eps", "batchnorm-batch-stats",
            "gelu-tanh", "leaky-relu-default-slope", "bias-dropped"} <= \
        {r.defect for r in caught}


@pytest.mark.parametrize("switches, module", [
    ({"gelu_approximate": True}, "blocks.1.channel_mlp.1"),    # nnx.gelu's tanh default
    ({"leaky_slope": None}, "act"),                            # jax.nn.leaky_relu's 0.01
])
def test_a_classic_nnx_porting_mistake_is_named_at_its_module(checked, switches, module):
    from parity.engine.check import build
    import torch

    torch_model = build(TORCH, torch.nn.Module, "torch.nn.Module")
    wrong = nnx_model.build(**switches)
    wrong.eval()
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    report = compare(torch_model, wrong, convert_weights(torch_model, wrong, x), x)
    assert not report.passed
    assert report.first_divergence_module == module
