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


def test_float64_gradients_pass_where_a_bias_has_a_true_gradient_of_zero():
    """The token MLP's last bias feeds a LayerNorm over the same axis: its true gradient is
    0 and both frameworks leave float64 noise (~5e-17 of the largest tensor's norm), which
    relative to itself read 1.48; judged against GRAD_NORM_FLOOR of the largest norm it
    passes, and every other tensor keeps its plain relative L2 (~1e-15)."""
    from parity import gradient_parity, prepare_port
    from parity.engine.check import build
    from parity.engine.tolerance import GRAD_NORM_FLOOR, GRAD_RTOL

    import torch

    torch_model = build(TORCH, torch.nn.Module, "torch.nn.Module").eval()
    port_model = nnx_model.build()
    port_model.eval()
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    port = prepare_port(torch_model, port_model, x)
    result = gradient_parity(torch_model, port_model, port.variables, x, plan=port.plan,
                             float64=True)
    largest = max(r.reference_norm for r in result.rows)
    zero = [r for r in result.rows if r.reference_norm < GRAD_NORM_FLOOR * largest]
    assert {r.torch_name for r in zero} >= {"blocks.0.token_mlp.2.bias"}, zero
    assert result.passed, result.summary()
    assert all(r.rel_l2 <= GRAD_RTOL for r in result.rows)


def test_the_gradient_floor_lets_only_float64_noise_pass_on_a_zero_gradient_tensor():
    """Against a floor of 1e-9 of the largest norm, an error of 1e-14 of that norm on a
    tensor whose true gradient is 0 fails (GRAD_RTOL), while rounding noise passes."""
    from types import SimpleNamespace

    from parity.grads.model_gradients import _rows
    from parity.engine.tolerance import GRAD_RTOL

    rules = [SimpleNamespace(torch_name=n, key=n, kind="bias", torch_shape=(4,))
             for n in ("big", "zero")]
    torch_side = {"big": np.full(4, 0.5), "zero": np.full(4, 3e-17)}
    noise = {"big": torch_side["big"] * (1 + 1e-15), "zero": np.full(4, -2e-17)}
    defect = {"big": torch_side["big"], "zero": np.full(4, 1e-14)}
    assert all(r.rel_l2 <= GRAD_RTOL for r in _rows(rules, torch_side, noise, GRAD_RTOL))
    zero_row = _rows(rules, torch_side, defect, GRAD_RTOL)[1]
    assert zero_row.torch_name == "zero" and zero_row.rel_l2 > GRAD_RTOL, zero_row
