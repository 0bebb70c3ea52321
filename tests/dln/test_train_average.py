"""`dln train --ema`: the weight average is what the arithmetic says, resumes exactly,
is what the run hands out, and both frameworks average alike.

PyTorch training runs in a subprocess (torch and JAX computing gradients in one
process have crashed inside XLA); the JAX run is in this process.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.recipe import TrainingRecipe
from dln.cli import main
from dln.training_loop import update_average
from weights.convert import load_checkpoint
from weights.files import load_safetensors
from weights.training_checkpoint import load_state

from test_train import TINY, _dln_runs_in_subprocess

TORCH = ["train", *TINY, "--framework", "torch", "--lr-decay", "none"]
AVERAGED_3 = [*TINY, "--lr-decay", "none", "--ema", "0.9", "--steps", "3"]


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """Every PyTorch run of this module, in order, in one fresh process (one start of
    Python and PyTorch instead of three): the folder holding them by name."""
    root = tmp_path_factory.mktemp("torch_runs")
    args = [*TORCH, "--ema", "0.6"]
    done = _dln_runs_in_subprocess(
        [*TORCH, "--steps", "1", "--out", str(root / "one")],
        [*TORCH, "--steps", "2", "--out", str(root / "two")],
        [*TORCH, "--steps", "2", "--ema", "0.9", "--out", str(root / "averaged")],
        [*args, "--steps", "4", "--out", str(root / "straight")],
        [*args, "--steps", "2", "--out", str(root / "resumed")],
        [*args, "--steps", "4", "--resume", "--out", str(root / "resumed")],
        ["train", *AVERAGED_3, "--framework", "torch", "--out", str(root / "averaged_3")])
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def test_average_decay_is_a_running_mean_until_the_horizon_then_constant():
    recipe = TrainingRecipe(ema_decay=0.9)
    assert [recipe.average_decay(t) for t in (1, 2, 4)] == [0.0, 0.5, 0.75]
    assert recipe.average_decay(10) == pytest.approx(0.9)
    assert recipe.average_decay(1000) == 0.9
    with pytest.raises(ValueError):
        TrainingRecipe(ema_decay=1.0).average_decay(3)


def test_update_average_starts_at_the_weights_and_moves_by_one_minus_decay():
    w1 = {"k": np.array([1.0, 2.0], np.float32)}
    w2 = {"k": np.array([3.0, 6.0], np.float32)}
    average = update_average(None, w1, 0.0)
    assert average["k"] is not w1["k"]
    np.testing.assert_array_equal(average["k"], w1["k"])
    np.testing.assert_array_equal(update_average(average, w2, 0.75)["k"], [1.5, 3.0])


def test_the_saved_average_of_two_steps_is_the_mean_of_each_steps_weights(torch_runs):
    one, two, averaged = torch_runs / "one", torch_runs / "two", torch_runs / "averaged"
    _, first, _ = load_state(one)
    _, second, _ = load_state(two)
    _, state, _ = load_state(averaged)
    handed_out = load_checkpoint(averaged / "weights.safetensors").flax_params
    optimizer_arrays, _ = load_safetensors(averaged / "optimizer.safetensors")
    assert state.average is not None and state.count == 2
    for name, w2 in second.params.items():
        expected = first.params[name] + np.float32(0.5) * (w2 - first.params[name])
        # the optimiser's own weights are the plain run's, bit for bit
        np.testing.assert_array_equal(state.params[name], w2, err_msg=name)
        np.testing.assert_array_equal(optimizer_arrays[f"params/{name}"], w2, err_msg=name)
        # the average is (w1 + w2) / 2 in float32, and it is what weights.safetensors holds
        np.testing.assert_array_equal(state.average[name], expected, err_msg=name)
        np.testing.assert_array_equal(handed_out[name], expected, err_msg=name)
    moved = max(float(np.max(np.abs(second.params[n] - first.params[n]))) for n in first.params)
    assert moved > 0, "two steps that do not move the weights prove nothing"


def test_an_averaging_run_resumes_to_the_uninterrupted_average(torch_runs):
    """torch_runs: 4 steps straight; 2 steps, then resumed to 4 (EMA 0.6)."""
    straight, resumed = torch_runs / "straight", torch_runs / "resumed"
    _, a, _ = load_state(straight)
    _, b, _ = load_state(resumed)
    assert a.count == b.count == 4
    for name in a.params:
        for what, x, y in (("weights", a.params, b.params), ("average", a.average, b.average),
                           ("mu", a.mu, b.mu)):
            worst = float(np.max(np.abs(x[name] - y[name])))
            assert worst == 0.0, f"{what} {name} differs by {worst:.3e} after resume"
    assert any(float(np.max(np.abs(a.average[n] - a.params[n]))) > 0 for n in a.params)


def test_resuming_with_another_ema_decay_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", "--ema", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "2", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "ema (0.5 then, 0.0 now)" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("decay", ["1", "-0.1", "nan"])
def test_an_ema_decay_outside_zero_to_one_is_one_line(tmp_path, capsys, decay):
    with pytest.raises(SystemExit) as stop:  # argparse's own one-line error
        main(["train", *TINY, "--steps", "1", "--ema", decay, "--out", str(tmp_path / "r")])
    code = stop.value.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--ema" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_jax_and_torch_averages_agree_after_the_same_steps(tmp_path, torch_runs):
    """The average is numpy arithmetic on each framework's weights, so the two averages
    differ only by what the weights themselves differ (training parity)."""
    jax_out, torch_out = tmp_path / "jax", torch_runs / "averaged_3"
    assert main(["train", *AVERAGED_3, "--out", str(jax_out)]) == 0
    _, j, _ = load_state(jax_out)
    _, t, _ = load_state(torch_out)
    lr = 1e-4
    diff = np.concatenate([(j.average[n] - t.average[n]).ravel() for n in j.params])
    moved = np.concatenate([(t.average[n] - t.params[n]).ravel() for n in j.params])
    worst = float(np.max(np.abs(diff)))
    # Adam moves every element by about lr per step whatever its gradient's size, so an
    # element whose gradient is ~0 can step the other way in one framework: at most
    # 2 lr apart per step (measured worst here: 3.7e-5, 0.37 lr, on a 2-core AMD EPYC)
    assert worst < 2 * lr, f"averages differ by up to {worst:.2e} ({worst / lr:.2f} lr)"
    relative = float(np.linalg.norm(diff) / np.linalg.norm(moved))
    # and as a whole: the difference is a small part of how far the average sits from
    # the last weights (measured 5.0e-3; 2e-2 leaves room for other CPUs' rounding)
    assert relative < 2e-2, f"average difference {relative:.2e} of the average's own spread"
