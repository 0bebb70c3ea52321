"""PReLU slopes of every sign convert exactly: negative, zero, above one, per channel.

Random test weights draw slopes in [0.05, 0.5] (all positive), where a converter that
took |slope| or clipped at zero would go unnoticed; these checkpoints make the sign count.
"""

from __future__ import annotations

import numpy as np
import torch

from core.config import DLNConfig
from dln.cli import main
from tests.conftest import write_authors_pth
from weights.rules import to_flax, to_torch
from weights.spec import tensor_specs
from weights.synthetic import random_torch_state

SLOPES = (-0.75, -0.0625, 0.0, 0.3, 1.5)


def signed_slope_state(config: DLNConfig, seed: int = 5) -> dict[str, np.ndarray]:
    """Random DLN weights whose PReLU slopes cycle through SLOPES (negative ones first)."""
    state = random_torch_state(config, seed)
    slopes = [s.torch_name for s in tensor_specs(config) if s.kind == "prelu"]
    for i, name in enumerate(slopes):
        state[name] = np.full(state[name].shape, SLOPES[i % len(SLOPES)], np.float32)
    return state


def test_negative_zero_and_large_slopes_convert_exactly_both_ways(tmp_path, capsys):
    from safetensors.numpy import load_file

    config = DLNConfig(dim=16)
    state = signed_slope_state(config)
    src = write_authors_pth(tmp_path / "signed.pth", state)
    dst, back = tmp_path / "signed.safetensors", tmp_path / "back.pth"
    assert main(["convert", str(src), str(dst)]) == 0
    assert main(["convert", str(dst), str(back)]) == 0
    params = load_file(str(dst))
    again = torch.load(back, weights_only=True)
    seen = set()
    for spec in tensor_specs(config):
        if spec.kind != "prelu":
            continue
        want = state[spec.torch_name]
        assert params[spec.flax_name].shape == () and params[spec.flax_name] == want[0], \
            (spec.flax_name, params[spec.flax_name], want)
        assert np.array_equal(again[spec.torch_name].numpy(), want), spec.torch_name
        seen.add(float(want[0]))
    assert seen == {float(np.float32(s)) for s in SLOPES}


def test_per_channel_slopes_of_each_sign_keep_their_order_and_sign():
    slopes = np.array([-1.25, 0.0, 0.5, -0.03125, 2.0], np.float32)
    flax = to_flax("prelu", slopes)
    assert flax.shape == (5,) and np.array_equal(flax, slopes)
    assert np.array_equal(to_torch("prelu", flax, (5,)), slopes)
    assert to_flax("prelu", np.array([-0.5], np.float32)) == np.float32(-0.5)
