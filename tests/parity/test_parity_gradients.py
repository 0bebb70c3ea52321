"""Gradient parity of the training loss and one Adam step, JAX vs PyTorch, per tensor.

Gradients are held to GRAD_RTOL (1e-6) per tensor in float64 (JAX in a subprocess); float32
gradients differ by PReLU/ReLU branch flips at rounding level and are only reported
(see parity/grads/model_gradients.py). The Adam step is compared in float32, with identical
gradients and with each framework's own (float64-computed) gradients.
"""

import dataclasses
import json

import numpy as np
import pytest

from core.config import DLNConfig
from core.recipe import AUTHORS_RECIPE
from dln.cli import main
from parity.engine.tolerance import ADAM_STEP_RTOL, GRAD_RTOL
from parity.grads import model_gradients as grads
from parity.presets import dln
from tests.conftest import write_authors_pth
from weights.convert import checkpoint_from_torch_state
from weights.rules import plan_conversion, to_flax
from weights.synthetic import random_torch_state


@pytest.fixture(scope="module")
def setup16(tmp_path_factory):
    """One gradient-parity run through `dln parity --gradients` on an authors'-layout
    (`module.`-prefixed) dim-16 file; the tests read its report.json."""
    folder = tmp_path_factory.mktemp("grad")
    cfg = DLNConfig(dim=16)
    state = random_torch_state(cfg, seed=21)
    pth = write_authors_pth(folder / "authors16.pth", state)
    code = main(["parity", "--gradients", "--weights", str(pth), "--size", "24x36",
                 "--batch", "2", "--seed", "3", "--report", str(folder / "report")])
    report = json.loads((folder / "report" / "report.json").read_text())
    assert (folder / "report" / "gradient_error.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = checkpoint_from_torch_state(state, cfg)
    x, target = dln.gradient_batch(size=(24, 36), batch=2, seed=3)
    return ckpt, x, target, report["gradients"], code


def _worst(rows):
    return max(rows, key=lambda r: r["rel_l2"])


def test_training_loss_gradients_match_torch_per_tensor_within_1e6_in_float64(setup16):
    *_, report, code = setup16
    rows = report["rows"]
    worst = _worst(rows)
    assert report["precision"] == "float64" and report["rule"] == "relative L2"
    assert worst["rel_l2"] <= GRAD_RTOL, f"{worst['torch_name']}: {worst['rel_l2']:.2e}"
    assert code == 0 and report["passed"] is True
    assert len(rows) == 125 and len(report["float32_rows"]) == 125
    losses = report["loss_values"]
    assert abs(losses["jax"] - losses["torch"]) <= 1e-6 * max(1.0, abs(losses["torch"])), losses
    # every tensor receives gradient (none compared as 0 == 0 by accident)
    assert sum(r["reference_norm"] > 0 for r in rows) >= 120


def test_gradient_parity_uses_the_authors_training_loss(setup16):
    *_, report, _ = setup16
    assert report["loss"].startswith("dln_loss"), report["loss"]


def test_one_adam_step_gives_the_same_parameters_within_1e6(setup16):
    *_, report, _ = setup16
    for key in ("same float32 gradients", "own float64 gradients"):
        worst = _worst(report["adam"][key])
        assert worst["rel_l2"] <= ADAM_STEP_RTOL, f"{key} {worst['torch_name']}: " \
                                                  f"{worst['rel_l2']:.2e}"


def _torch_grads(ckpt, x, target):
    import torch

    from reference_torch.losses import dln_loss

    model = dln.reference_model(ckpt)
    loss = lambda out: dln_loss(out, torch.from_numpy(target))  # noqa: E731
    return model, grads.torch_gradients(model, (x,), loss)[1]


def test_gradient_rows_fail_on_a_layout_mistake(setup16):
    """Gradients transposed wrongly on the way back (kernel flipped) must not pass."""
    ckpt, x, target, *_ = setup16
    model, grads_t = _torch_grads(ckpt, x, target)
    plan = plan_conversion(model)
    as_flax = {r.key: to_flax(r.kind, grads_t[r.torch_name]) for r in plan.rules}
    rule = next(r for r in plan.rules if r.torch_name == "feat2.conv.weight")
    as_flax[rule.key] = as_flax[rule.key][::-1, ::-1]
    rows = grads._rows(plan.rules, grads_t, as_flax, GRAD_RTOL)
    bad = {r.torch_name: r.rel_l2 for r in rows if not r.rel_l2 <= GRAD_RTOL}
    assert list(bad) == ["feat2.conv.weight"], bad


def test_adam_check_fails_with_the_help_texts_learning_rate(setup16):
    """The authors' flag help says lr 1e-4, the code uses 1e-5."""
    ckpt, x, target, *_ = setup16
    model, grads_t = _torch_grads(ckpt, x, target)
    plan = plan_conversion(model)
    start = {r.torch_name: ckpt.torch_state[r.torch_name] for r in plan.rules}
    stepped_t = grads.torch_adam_step(start, grads_t, AUTHORS_RECIPE)
    wrong = grads.optax_adam_step({r.key: to_flax(r.kind, start[r.torch_name]) for r in plan.rules},
                                  {r.key: to_flax(r.kind, grads_t[r.torch_name])
                                   for r in plan.rules},
                                  dataclasses.replace(AUTHORS_RECIPE, lr=1e-4))
    worst = max(r.rel_l2 for r in grads._rows(plan.rules, stepped_t, wrong, ADAM_STEP_RTOL))
    assert worst > ADAM_STEP_RTOL * 10, worst
    assert np.isfinite(worst)
