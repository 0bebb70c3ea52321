"""Training parity's verdict fails safe, judged on hand-made results (no training run):
a NaN or an infinity anywhere (either side, a loss, a weight, a moment, one element of
an update), a tensor or a step left uncompared, or an empty comparison each make it FAIL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.config import DLNConfig
from parity.grads.training_parity import _compare, parity_rates, worst_of
from parity.grads.training_zoo import FINITE, LOSSES, UPDATES, WEIGHTS

STEPS = 4
LR = 1e-5


def _sides(rng_seed: int = 0):
    """(initial, torch side, JAX side) of a tiny agreeing run: two tensors and a scalar."""
    rng = np.random.default_rng(rng_seed)
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


def _judge(initial, torch_side, jax_side):
    return _compare(DLNConfig(dim=16), STEPS, 2, 32, LR, initial, parity_rates(LR, STEPS),
                    torch_side, jax_side, 0, None)


def test_agreeing_sides_pass():
    result = _judge(*_sides())
    assert result.passed, result.text()
    assert result.failed_checks() == []


@pytest.mark.parametrize("side", ["torch", "jax"])
@pytest.mark.parametrize("where,value", [("0/losses", math.nan), ("0/losses", math.inf),
                                         ("0/w/b.bias", math.nan), ("0/w/a.kernel", -math.inf),
                                         ("0/mu/b.bias", math.nan),
                                         ("0/nu/c.act.negative_slope", math.inf)])
def test_a_nan_or_infinity_anywhere_on_either_side_fails(side, where, value):
    initial, torch_side, jax_side = _sides()
    target = torch_side if side == "torch" else jax_side
    array = np.array(target[where], dtype=target[where].dtype)
    array.reshape(-1)[min(2, array.size - 1)] = value
    target[where] = array
    result = _judge(initial, torch_side, jax_side)
    assert not result.passed and FINITE in result.failed_checks(), result.text()


def test_a_nan_in_one_update_element_fails_the_update_check_too():
    initial, torch_side, jax_side = _sides()
    jax_side["0/w/a.kernel"] = jax_side["0/w/a.kernel"].copy()
    jax_side["0/w/a.kernel"][1, 2] = np.nan
    result = _judge(initial, torch_side, jax_side)
    assert {FINITE, UPDATES, WEIGHTS} <= set(result.failed_checks()), result.text()


@pytest.mark.parametrize("missing", ["0/w/b.bias", "0/mu/a.kernel"])
def test_a_tensor_missing_on_one_side_fails(missing):
    initial, torch_side, jax_side = _sides()
    del jax_side[missing]
    assert FINITE in _judge(initial, torch_side, jax_side).failed_checks()


def test_fewer_losses_than_steps_fail():
    initial, torch_side, jax_side = _sides()
    jax_side["0/losses"] = jax_side["0/losses"][:2]
    assert FINITE in _judge(initial, torch_side, jax_side).failed_checks()


def test_an_empty_comparison_fails():
    _, torch_side, jax_side = _sides()
    result = _judge({}, {"0/losses": np.array([])}, {"0/losses": np.array([])})
    assert not result.passed and FINITE in result.failed_checks()
    assert _judge({}, torch_side, jax_side).passed is False


def test_a_loss_off_by_more_than_its_limit_fails_only_the_loss_checks():
    initial, torch_side, jax_side = _sides()
    jax_side["0/losses"] = torch_side["0/losses"] * np.array([1, 1, 1 + 1e-3, 1])
    result = _judge(initial, torch_side, jax_side)
    assert result.failed_checks() == [LOSSES], result.text()


def test_the_worst_of_a_table_is_a_nan_wherever_it_stands():
    """max() alone passes over a NaN that is not the first value."""
    for position in range(3):
        values = [1e-9, 2e-9, 3e-9]
        values[position] = math.nan
        name, value = worst_of({f"t{i}": v for i, v in enumerate(values)})
        assert name == f"t{position}" and math.isnan(value)
    assert math.isnan(worst_of({})[1])


def test_a_defect_counts_as_caught_only_by_a_check_the_correct_run_passes():
    from parity.grads.training_zoo import BELOW, CAUGHT, DEFECTS, MISSED, status_of

    def judged(loss_factors):
        initial, torch_side, jax_side = _sides()
        jax_side["0/losses"] = torch_side["0/losses"] * np.asarray(loss_factors)
        return _judge(initial, torch_side, jax_side)

    correct = judged([1, 1, 1, 1])
    off_at_step_1 = judged([1 + 1e-3, 1, 1, 1])      # fails "first loss" and "losses"
    off_later = judged([1, 1, 1 + 1e-3, 1])          # fails "losses" only
    tv = DEFECTS["tv-dropped"]                       # must show in "first loss"
    assert status_of(tv, off_at_step_1, correct)[0] == CAUGHT
    assert status_of(tv, off_later, correct)[0] == MISSED
    assert status_of(tv, correct, correct)[0] == BELOW
    # when the correct trainer itself fails a check, failing it too is no evidence
    assert status_of(DEFECTS["lr-plus-1pct"], off_later, off_later)[0] == BELOW
