"""Gradient and training parity fail safe through `dln parity --gradients/--training`
(exit 1), on hand-made results put in place of the runs (each run takes a minute; the
runs themselves are tested in test_parity_gradients.py and test_train_parity.py): a NaN
or an infinity in one gradient tensor, a non-finite loss, no gradient compared at all,
a NaN loss at any step on either side. The agreeing results exit 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.config import DLNConfig
from dln.cli import main
from parity.grads import training_parity as training
from parity.grads.model_gradients import RELATIVE_L2, GradientParity, TensorRow
from parity.grads.training_zoo import FINITE
from parity.presets import dln

STEPS, LR = 4, 1e-5


# ---- gradients ---------------------------------------------------------------------------
def _gradients(errors: list[float], loss_jax: float = 0.5) -> GradientParity:
    rows = [TensorRow(f"t{i}.weight", f"params/t{i}/kernel", "dense", (3, 2), e, e, 1.0)
            for i, e in enumerate(errors)]
    return GradientParity("float64", RELATIVE_L2, 1e-6, "loss", 0.5, loss_jax, rows)


def _run_gradients(monkeypatch, capsys, result: GradientParity) -> tuple[int, str]:
    monkeypatch.setattr(dln, "run_gradients", lambda ckpt, x, target: result)
    code = main(["parity", "--gradients", "--variant", "dim=16", "--size", "11x11",
                 "--batch", "1"])
    return code, capsys.readouterr().out


def test_agreeing_gradients_pass(monkeypatch, capsys):
    code, out = _run_gradients(monkeypatch, capsys, _gradients([1e-9, 3e-9, 2e-9]))
    assert code == 0, out


@pytest.mark.parametrize("errors,loss_jax,worst", [
    ([1e-9, math.nan, 2e-9], 0.5, "t1.weight"),
    ([1e-9, 2e-9, math.nan], 0.5, "t2.weight"),
    ([math.inf, 1e-9, 2e-9], 0.5, "t0.weight"),
    ([1e-9, 2e-9, 3e-9], math.nan, "t2.weight"),
    ([1e-9, 2e-9, 3e-9], -math.inf, "t2.weight"),
    ([], 0.5, None),
], ids=["nan-tensor", "nan-last-tensor", "inf-tensor", "nan-loss", "inf-loss", "no-tensors"])
def test_a_non_finite_gradient_or_loss_or_nothing_compared_fails(monkeypatch, capsys, errors,
                                                                 loss_jax, worst):
    code, out = _run_gradients(monkeypatch, capsys, _gradients(errors, loss_jax))
    assert code == 1, out
    if worst is not None:  # the summary names the NaN as the worst, wherever it stands
        assert f"at {worst}," in out, out


# ---- training ----------------------------------------------------------------------------
def _sides(seed: int = 0):
    """(initial, torch side, JAX side) of a tiny agreeing run: two tensors and a scalar."""
    rng = np.random.default_rng(seed)
    initial = {"a.kernel": rng.normal(size=(3, 4)).astype(np.float32),
               "b.bias": rng.normal(size=(5,)).astype(np.float32),
               "c.act.negative_slope": np.asarray(0.25, np.float32)}
    torch_side = {"0/losses": np.array([0.9, 0.8, 0.7, 0.65])}
    jax_side = {"0/losses": torch_side["0/losses"] * (1 + 1e-8)}
    for name, start in initial.items():
        step = (rng.normal(size=start.shape) * 1e-4).astype(np.float32)
        for side in (torch_side, jax_side):
            side[f"0/w/{name}"] = start + step
            side[f"0/mu/{name}"] = step * 0.1
            side[f"0/nu/{name}"] = step * step
    return initial, torch_side, jax_side


def _training_result(side: str | None = None, step: int = 0, value: float = math.nan):
    initial, torch_side, jax_side = _sides()
    if side is not None:
        target = torch_side if side == "torch" else jax_side
        target["0/losses"] = target["0/losses"].copy()
        target["0/losses"][step] = value
    return training._compare(DLNConfig(dim=16), STEPS, 2, 32, LR, initial,
                             training.parity_rates(LR, STEPS), torch_side, jax_side, 0, None)


def _run_training(monkeypatch, capsys, result) -> tuple[int, str]:
    monkeypatch.setattr(training, "training_parity", lambda *args, **kwargs: result)
    code = main(["parity", "--training", "--variant", "dim=16", "--steps", str(STEPS)])
    return code, capsys.readouterr().out


def test_an_agreeing_training_run_passes(monkeypatch, capsys):
    code, out = _run_training(monkeypatch, capsys, _training_result())
    assert code == 0, out


@pytest.mark.parametrize("side", ["torch", "jax"])
@pytest.mark.parametrize("step", range(STEPS))
def test_a_nan_loss_at_any_step_fails(monkeypatch, capsys, side, step):
    result = _training_result(side, step)
    assert FINITE in result.failed_checks(), result.text()
    code, out = _run_training(monkeypatch, capsys, result)
    assert code == 1 and out.rstrip().splitlines()[-1].lstrip().startswith("FAIL"), out


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_loss_at_the_last_step_fails(monkeypatch, capsys, value):
    code, out = _run_training(monkeypatch, capsys, _training_result("jax", STEPS - 1, value))
    assert code == 1, out


def test_a_torch_parameter_the_conversion_plan_leaves_out_fails_as_a_row():
    """Every torch parameter has a gradient row: one with no converted counterpart is a
    failing row of its own, never silently left unjudged."""
    import types

    import flax.linen as nn
    import torch

    from parity import convert_weights
    from parity.grads.model_gradients import gradient_parity
    from weights.rules import plan_conversion

    class Port(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="fc")(x)

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.fc = torch.nn.Linear(3, 2)
    model.forward = model.fc.forward
    port = Port()
    x = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    variables = convert_weights(model, port, x)
    plan = plan_conversion(model)
    full = gradient_parity(model, port, variables, x, plan=plan)
    assert full.passed and len(full.rows) == 2, full.summary_lines()
    partial = types.SimpleNamespace(rules=[r for r in plan.rules if r.torch_name != "fc.bias"])
    result = gradient_parity(model, port, variables, x, plan=partial)
    assert not result.passed and [r.torch_name for r in result.rows if r.kind ==
                                  "no Flax counterpart"] == ["fc.bias"], result.rows
