"""Training parity (JAX vs torch, same weights and batches) and data parallel = one device,
for both Flax trainers: Linen ("jax") and NNX ("nnx"), which also take equal steps; and a
representative few of the training zoo's defects caught on the same trajectory.

One run of parity.grads.training_parity.training_zoo serves all tests: torch trains in one
subprocess, both Flax trainers in another that has two forced host devices, then the Linen
trainer with each defect below from the same start on the same batches, and the first
steps rerun data-parallel over both devices (neither framework's gradients share a
process). Every
defect of the zoo was measured once at dim 16 and at dim 64 (parity/engine/tolerance.py
gives the figures); the suite runs the three that each of three checks must catch.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.config import DLNConfig
from parity.engine.tolerance import (DATA_PARALLEL_LOSS_RTOL, NNX_VS_LINEN_ATOL,
                                     TRAIN_FIRST_LOSS_RTOL,
                                     TRAIN_LOSS_RTOL, TRAIN_MOMENTS_RTOL,
                                     TRAIN_SCALAR_FINAL_RTOL, TRAIN_UPDATE_FLIP_LR,
                                     TRAIN_UPDATE_RTOL, TRAIN_UPDATE_TOTAL_RTOL,
                                     TRAIN_WEIGHTS_RTOL)
from parity.grads.training_parity import DATA_PARALLEL_STEPS, training_zoo
from parity.grads.training_zoo import CAUGHT, FIRST_LOSS, MOMENTS, UPDATES

# one defect per check that alone must catch it: the loss function (the TV term the
# issue's audit dropped unnoticed), the whole update (a rate 1% high), the moments (one
# tensor's gradients doubled, which Adam's update cannot see)
SUITE_DEFECTS = {"tv-dropped": FIRST_LOSS, "lr-plus-1pct": UPDATES, "grad-scaled-x2": MOMENTS}


@pytest.fixture(scope="module")
def zoo_dim16():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # torch's thread pool stalls on a busy machine
        return training_zoo(DLNConfig(dim=16), steps=20, batch=2, patch=32,
                            names=list(SUITE_DEFECTS), data_parallel_devices=2,
                            flax_frameworks=("jax", "nnx"))


@pytest.fixture(scope="module")
def parity_dim16(zoo_dim16):
    return zoo_dim16.correct


FLAX_TRAINERS = ["jax", "nnx"]


def trainer_result(parity_dim16, framework):
    return parity_dim16 if framework == "jax" else parity_dim16.others[framework]


@pytest.mark.parametrize("framework", FLAX_TRAINERS)
def test_jax_and_torch_losses_agree_for_20_steps_at_dim_16(parity_dim16, framework):
    result = trainer_result(parity_dim16, framework)
    assert result.framework == framework
    assert len(result.losses_jax) == len(result.losses_torch) == 20
    assert result.losses_torch[0] != result.losses_torch[-1], "training did not move"
    assert result.worst_loss <= TRAIN_LOSS_RTOL, (
        f"loss relative errors {['%.1e' % e for e in result.loss_rel]} exceed {TRAIN_LOSS_RTOL}")
    assert result.first_loss_rel <= TRAIN_FIRST_LOSS_RTOL, result.loss_rel[:3]
    assert result.rates[0] == pytest.approx(10 * result.rates[-1]), "the run changes its rate"


@pytest.mark.parametrize("framework", FLAX_TRAINERS)
def test_jax_and_torch_final_weights_agree_after_20_steps(parity_dim16, framework):
    result = trainer_result(parity_dim16, framework)
    name, worst = result.worst(result.weight_rel)
    assert worst <= TRAIN_WEIGHTS_RTOL, f"final {name} differs by {worst:.2e} (relative L2)"
    assert len(result.weight_rel) == 125


@pytest.mark.parametrize("framework", FLAX_TRAINERS)
def test_jax_and_torch_updates_final_minus_initial_agree_per_tensor(parity_dim16, framework):
    """The update is what training adds; the final weights are mostly the shared start.
    Scalars (PReLU slopes) move by ~200 float32 ulps in 20 steps: they are held to 32 ulps
    of torch's final value instead (parity/engine/tolerance.py says why)."""
    from weights.spec import tensor_specs

    parity_dim16 = trainer_result(parity_dim16, framework)

    size = {s.flax_name: int(np.prod(s.flax_shape)) for s in tensor_specs(DLNConfig(dim=16))}
    assert set(parity_dim16.update_rel) == set(size)
    tensors = {k: v for k, v in parity_dim16.update_rel.items() if size[k] > 1}
    scalars = {k: parity_dim16.weight_rel[k] for k in size if size[k] == 1}
    assert len(tensors) > 80 and scalars, (len(tensors), len(scalars))
    # Adam moves an element with a ~0 gradient by ~lr per step, so a rounding-level sign
    # flip there costs ~2 lr: the largest element differences are held to a bound in lr,
    # the rest of each tensor to the relative limit (parity/engine/tolerance.py)
    trimmed = {k: parity_dim16.update_rel_trimmed[k] for k in tensors}
    name = max(trimmed, key=trimmed.get)
    assert trimmed[name] <= TRAIN_UPDATE_RTOL, (
        f"update of {name} differs by {trimmed[name]:.2e} (plain {tensors[name]:.2e})")
    most = {k: parity_dim16.update_max_in_lr[k] for k in tensors}
    name = max(most, key=most.get)
    assert most[name] <= TRAIN_UPDATE_FLIP_LR, f"an element of {name} moved {most[name]:.2f} lr apart"
    name = max(scalars, key=scalars.get)
    assert scalars[name] <= TRAIN_SCALAR_FINAL_RTOL, f"final {name} differs by {scalars[name]:.2e}"
    assert parity_dim16.update_total_trimmed <= TRAIN_UPDATE_TOTAL_RTOL


@pytest.mark.parametrize("framework", FLAX_TRAINERS)
def test_jax_and_torch_adam_moments_agree_per_tensor(parity_dim16, framework):
    parity_dim16 = trainer_result(parity_dim16, framework)
    moments = {k: v for k, v in parity_dim16.moment_rel.items() if k not in parity_dim16.scalars}
    assert len(moments) > 80
    name = max(moments, key=moments.get)
    assert moments[name] <= TRAIN_MOMENTS_RTOL, f"Adam moments of {name}: {moments[name]:.2e}"


@pytest.mark.parametrize("defect", sorted(SUITE_DEFECTS))
def test_a_defect_of_the_jax_step_is_caught_by_the_check_that_must_see_it(zoo_dim16, defect):
    result = zoo_dim16.defects[defect]
    status, note = zoo_dim16.statuses()[defect]
    assert not result.passed and status == CAUGHT, f"{defect}: {status}: {note}"
    assert SUITE_DEFECTS[defect] in result.failed_checks(), result.text()


def test_two_host_devices_give_the_losses_of_one_device(parity_dim16):
    rel = parity_dim16.data_parallel_rel
    assert len(rel) == DATA_PARALLEL_STEPS, parity_dim16.losses_jax_data_parallel
    assert max(rel) <= DATA_PARALLEL_LOSS_RTOL, (
        f"2 devices {parity_dim16.losses_jax_data_parallel} vs 1 device "
        f"{parity_dim16.losses_jax[:DATA_PARALLEL_STEPS]}: worst {max(rel):.2e}")


def test_nnx_trainer_takes_the_linen_trainers_steps_to_float32_rounding(parity_dim16):
    """Same initial weights, same 20 batches: nnx.Optimizer + optax vs the Linen step."""
    nnx_result = parity_dim16.others["nnx"]
    losses, name, worst = parity_dim16.step_difference(nnx_result)
    assert len(nnx_result.losses_jax) == 20 and len(nnx_result.final_weights) == 125
    assert losses <= NNX_VS_LINEN_ATOL, (nnx_result.losses_jax, parity_dim16.losses_jax)
    assert worst <= NNX_VS_LINEN_ATOL, f"final {name} differs by {worst:.2e} relative to scale"
    assert nnx_result.agrees_with(parity_dim16)
    assert "nnx trainer:" in parity_dim16.text() and parity_dim16.passed


def test_training_parity_report_files(parity_dim16, zoo_dim16, tmp_path):
    assert parity_dim16.passed, parity_dim16.text()
    paths = parity_dim16.write_report(tmp_path)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "PASS" in paths[1].read_text()
    paths = zoo_dim16.write_report(tmp_path / "zoo")
    assert [p.name for p in paths] == ["training_zoo.json", "training_zoo.md", "training_zoo.png"]
    assert "3 caught" in paths[1].read_text() and zoo_dim16.passed


def test_dln_parity_training_flag_runs_training_parity_and_writes_the_report(
        parity_dim16, tmp_path, monkeypatch, capsys):
    import parity.grads.training_parity
    from dln.cli import main

    calls = []

    def recorded(config, **kwargs):
        calls.append((config, kwargs))
        return parity_dim16

    monkeypatch.setattr(parity.grads.training_parity, "training_parity", recorded)
    code = main(["parity", "--training", "--steps", "20", "--variant", "dim=16",
                 "--report", str(tmp_path)])
    assert code == 0
    config, kwargs = calls[0]
    assert config.dim == 16 and kwargs["steps"] == 20 and len(kwargs["initial"]) == 125
    assert "PASS" in capsys.readouterr().out
    assert (tmp_path / "training_parity.json").is_file()


def test_dln_parity_training_with_a_defect_or_the_zoo_exits_1_unless_all_is_caught(
        zoo_dim16, tmp_path, monkeypatch, capsys):
    import parity.grads.training_parity
    from dln.cli import main

    monkeypatch.setattr(parity.grads.training_parity, "training_parity",
                        lambda config, **kwargs: zoo_dim16.defects[kwargs["defect"]])
    code = main(["parity", "--training", "--variant", "dim=16", "--inject", "tv-dropped"])
    assert code == 1 and "FAIL (first loss)" in capsys.readouterr().out
    monkeypatch.setattr(parity.grads.training_parity, "training_zoo",
                        lambda config, **kwargs: zoo_dim16)
    code = main(["parity", "--training", "--zoo", "--variant", "dim=16",
                 "--report", str(tmp_path)])
    assert code == 0 and "3 caught" in capsys.readouterr().out
    assert (tmp_path / "training_zoo.md").is_file()
    assert main(["parity", "--zoo"]) == 2 and main(["parity", "--training", "--inject",
                                                     "conv1d-kernel"]) == 2
