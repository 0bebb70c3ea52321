"""The Flax NNX port vs the PyTorch reference on the same random weights (non-zero biases,
slopes in [0.05, 0.5]), at odd sizes, both variants' switches, within FORWARD_ATOL."""

import numpy as np
import pytest
import torch

from core.config import DLNConfig
from parity.engine.tolerance import FORWARD_ATOL, assert_close
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state


def run_torch_and_nnx(cfg, seed, shape):
    from port.inference import params_to_device
    from port.nnx_inference import make_nnx_apply
    from reference_torch.inference import model_from_state

    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, seed), cfg)
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    with torch.no_grad():
        y_torch = model_from_state(ckpt.torch_state, cfg)(
            torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    y_nnx = np.asarray(make_nnx_apply(cfg)(params_to_device(ckpt.flax_tree()), x))
    return x, y_torch, y_nnx


def test_full_width_nnx_port_matches_torch_to_1e_5_on_an_odd_size():
    x, y_torch, y_nnx = run_torch_and_nnx(DLNConfig(), seed=11, shape=(1, 21, 33, 3))
    assert np.abs(y_torch - x).mean() > 0.05  # the residual is not trivially zero
    assert_close(y_nnx, y_torch, FORWARD_ATOL, "NNX prediction, dim 64")


@pytest.mark.parametrize("brightness,sign,gamma", [(True, "paper", 0.4), (False, "code", 1.0),
                                                   (False, "paper", 1.0)])
def test_dim16_nnx_variants_match_torch(brightness, sign, gamma):
    cfg = DLNConfig(dim=16, brightness=brightness, residual_sign=sign, gamma=gamma)
    _, y_torch, y_nnx = run_torch_and_nnx(cfg, seed=3, shape=(2, 19, 26, 3))
    assert_close(y_nnx, y_torch, FORWARD_ATOL, f"NNX prediction {cfg.variant_string()}")
