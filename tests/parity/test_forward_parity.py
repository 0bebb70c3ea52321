"""JAX port vs PyTorch reference on the same random weights (non-zero biases,
slopes in [0.05, 0.5]) at an odd size with batch 2."""

import numpy as np
import pytest
import torch

from core.config import DLNConfig
from parity.engine.tolerance import FORWARD_ATOL, assert_close
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state


def run_both(cfg, seed, shape=(2, 37, 53, 3)):
    from port.inference import make_apply, params_to_device
    from reference_torch.inference import model_from_state

    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, seed), cfg)
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    with torch.no_grad():
        y_torch = model_from_state(ckpt.torch_state, cfg)(
            torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    y_jax = np.asarray(make_apply(cfg)(params_to_device(ckpt.flax_tree()), x))
    return x, y_torch, y_jax


def test_full_width_port_matches_torch_to_1e_5_on_odd_size_batch_2():
    x, y_torch, y_jax = run_both(DLNConfig(), seed=11)
    assert np.abs(y_torch - x).mean() > 0.05  # the residual is not trivially zero
    result = assert_close(y_jax, y_torch, FORWARD_ATOL, "prediction")
    assert result.max_abs <= 1e-5, result.describe()


@pytest.mark.parametrize("brightness", [True, False])
@pytest.mark.parametrize("sign", ["code", "paper"])
@pytest.mark.parametrize("gamma", [1.0, 0.4])
def test_dim16_variants_match_torch(brightness, sign, gamma):
    cfg = DLNConfig(dim=16, brightness=brightness, residual_sign=sign, gamma=gamma)
    _, y_torch, y_jax = run_both(cfg, seed=3, shape=(2, 19, 26, 3))
    assert_close(y_jax, y_torch, FORWARD_ATOL, f"prediction {cfg.variant_string()}")
