"""Gradient parity of the training loss and one Adam step, JAX vs PyTorch, per tensor.

Gradients are held to GRAD_RTOL (1e-6) per tensor in float64 (JAX in a subprocess); float32
gradients differ by PReLU/ReLU branch flips at rounding level and are only reported
(see parity/grads/gradients.py). The Adam step is compared in float32, with identical
gradients and with each framework's own (float64-computed) gradients.
"""

import json

import numpy as np
import pytest

from dln.cli import main
from core.config import DLNConfig
from parity.grads import gradients
from parity.engine.capture import torch_threads
from parity.engine.tolerance import ADAM_STEP_RTOL, GRAD_RTOL
from weights.convert import checkpoint_from_torch_state
from weights.spec import tensor_specs
from weights.synthetic import random_torch_state
from tests.conftest import write_authors_pth


@pytest.fixture(scope="module")
def setup16(tmp_path_factory):
    """One gradient-parity run through `dln parity --gradients` on an authors'-layout
    (`module.`-prefixed) dim-16 file; the tests read its gradients.json."""
    folder = tmp_path_factory.mktemp("grad")
    cfg = DLNConfig(dim=16)
    state = random_torch_state(cfg, seed=21)
    pth = write_authors_pth(folder / "authors16.pth", state)
    code = main(["parity", "--gradients", "--weights", str(pth), "--size", "24x36",
                 "--batch", "2", "--seed", "3", "--report", str(folder / "report")])
    report = json.loads((folder / "report" / "gradients.json").read_text())
    assert (folder / "report" / "gradient_error.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = checkpoint_from_torch_state(state, cfg)
    x, target = gradients.gradient_batch(size=(24, 36), batch=2, seed=3)
    return ckpt, x, target, report, code


def _worst(rows):
    return max(rows, key=lambda r: r["rel_l2"])


def test_training_loss_gradients_match_torch_per_tensor_within_1e6_in_float64(setup16):
    *_, report, code = setup16
    rows = report["gradients_float64"]
    worst = _worst(rows)
    assert worst["rel_l2"] <= GRAD_RTOL, f"{worst['torch_name']}: {worst['rel_l2']:.2e}"
    assert code == 0 and report["passed"] is True
    assert len(rows) == 125 and len(report["gradients_float32"]) == 125
    losses = report["loss_float64"]
    assert abs(losses["jax"] - losses["torch"]) <= 1e-6 * max(1.0, abs(losses["torch"])), losses
    # every tensor receives gradient (none compared as 0 == 0 by accident)
    assert sum(r["reference_norm"] > 0 for r in rows) >= 120


def test_gradient_parity_uses_the_authors_training_loss(setup16):
    *_, report, _ = setup16
    assert report["loss"].startswith("dln_loss"), report["loss"]


def test_one_adam_step_gives_the_same_parameters_within_1e6(setup16):
    *_, report, _ = setup16
    for key in ("adam_same_gradients", "adam_own_gradients"):
        worst = _worst(report[key])
        assert worst["rel_l2"] <= ADAM_STEP_RTOL, f"{key} {worst['torch_name']}: {worst['rel_l2']:.2e}"


def test_gradient_check_fails_on_a_layout_mistake(setup16):
    """Gradients transposed wrongly on the way back (kernel flipped) must not pass."""
    ckpt, x, target, *_ = setup16
    cfg = ckpt.config
    _, _, torch_loss = gradients.training_losses()
    with torch_threads():
        _, grads_t = gradients.torch_gradients(ckpt.torch_state, cfg, x, target, torch_loss)
    spec = next(s for s in tensor_specs(cfg) if s.torch_name == "feat2.conv.weight")
    flipped = dict(grads_t)
    flipped[spec.torch_name] = grads_t[spec.torch_name][:, :, ::-1, ::-1]
    as_flax = {s.flax_name: gradients.torch_to_flax_array(s.kind, flipped[s.torch_name])
               for s in tensor_specs(cfg)}
    errors = gradients.compare_tensors(grads_t, as_flax, cfg)
    bad = {e.torch_name: e.rel_l2 for e in errors if e.rel_l2 > GRAD_RTOL}
    assert list(bad) == ["feat2.conv.weight"], bad


def test_adam_check_fails_with_the_help_texts_learning_rate(setup16):
    """The authors' flag help says lr 1e-4, the code uses 1e-5."""
    ckpt, x, target, *_ = setup16
    cfg = ckpt.config
    _, _, torch_loss = gradients.training_losses()
    with torch_threads():
        _, grads_t = gradients.torch_gradients(ckpt.torch_state, cfg, x, target, torch_loss)
        adam_t = gradients.torch_adam_step(ckpt.torch_state, grads_t)
    as_flax = {s.flax_name: gradients.torch_to_flax_array(s.kind, grads_t[s.torch_name])
               for s in tensor_specs(cfg)}
    wrong = gradients.optax_adam_step(ckpt.flax_params, as_flax, lr=1e-4)
    worst = max(e.rel_l2 for e in gradients.compare_tensors(adam_t, wrong, cfg))
    assert worst > ADAM_STEP_RTOL * 10, worst
    assert np.isfinite(worst)
