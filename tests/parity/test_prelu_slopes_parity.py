"""Parity with PReLU slopes of every sign: negative, zero and above one, scalar (DLN, read
from a .pth file) and per channel (any model, through the generic converter)."""

from __future__ import annotations

import flax.linen as fnn
import numpy as np
import torch

from core.config import DLNConfig
from dln.cli import main
from examples.tiny_unet.flax_model import ChannelPReLU
from parity.engine.api import compare, convert_weights
from tests.conftest import write_authors_pth
from tests.weights.test_prelu_slopes import signed_slope_state


def test_dln_parity_passes_on_a_pth_with_negative_and_zero_slopes(tmp_path, capsys):
    from reference_torch.inference import model_from_state

    config = DLNConfig(dim=16)
    state = signed_slope_state(config)
    x = torch.from_numpy(np.random.default_rng(2).random((1, 3, 19, 26), dtype=np.float32))
    with torch.no_grad():
        signed = model_from_state(state, config)(x)
        unsigned = model_from_state({k: np.abs(v) if k.endswith("act.weight") else v
                                     for k, v in state.items()}, config)(x)
    assert float((signed - unsigned).abs().max()) > 1e-2  # the sign of a slope shows here
    path = write_authors_pth(tmp_path / "signed.pth", state)
    code = main(["parity", "--weights", str(path), "--size", "19x26", "--batch", "1"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]


class _ChannelNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.PReLU(4)

    def forward(self, x):
        return self.act(self.conv(x))


class _ChannelPort(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
        return ChannelPReLU(4, name="act")(x)


def test_per_channel_slopes_of_each_sign_pass_parity_and_convert_in_order():
    torch.manual_seed(0)
    net = _ChannelNet().eval()
    slopes = torch.tensor([-1.25, 0.0, 0.5, -0.25])
    with torch.no_grad():
        net.act.weight.copy_(slopes)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    variables = convert_weights(net, _ChannelPort(), x)
    np.testing.assert_array_equal(variables["params"]["act"]["negative_slope"], slopes.numpy())
    report = compare(net, _ChannelPort(), variables, x)
    assert report.passed, report.failures
    assert "act" in {r.name for r in report.compared}
