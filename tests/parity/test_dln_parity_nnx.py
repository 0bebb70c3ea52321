"""`dln parity --backend nnx`: DLN's NNX port (port/nnx_model.py) through the engine's NNX
frontend, block by block against the PyTorch reference, with the same rows and report as
the Linen port; DLN's zoo entries reach the NNX port through its frontend and are caught
at the same first divergence (worked out from the network in test_parity_zoo.py)."""

import json

import pytest

from core.config import DLNConfig
from dln.cli import main
from parity.presets import dln
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state


def _ports(cfg, size=(13, 17)):
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, seed=5), cfg)
    inputs = dln.random_inputs(size, batch=2, seed=1)
    return dln.prepare(ckpt, inputs, backend="nnx"), dln.prepare(ckpt, inputs, backend="jax")


@pytest.fixture(scope="module")
def port16():
    return _ports(DLNConfig(dim=16))[0]


@pytest.mark.parametrize("brightness,sign", [(True, "code"), (False, "paper")])
def test_every_block_of_the_nnx_port_agrees_with_torch_like_the_linen_port(brightness, sign):
    nnx_port, linen_port = _ports(DLNConfig(dim=16, brightness=brightness, residual_sign=sign,
                                            gamma=0.6), size=(11, 19))
    nnx_report, linen_report = nnx_port.compare(), linen_port.compare()
    assert nnx_report.passed, nnx_report.failures[:3]
    assert [r.name for r in nnx_report.rows] == [r.name for r in linen_report.rows]
    assert len(nnx_report.compared) == len(linen_report.compared) >= 60
    flax_names = {r.name: r.flax_name for r in nnx_report.rows}
    assert flax_names["feat_out_1.fusion.fc.0"] == "feat_out_1.fusion.fc_0"   # NNX path


@pytest.mark.parametrize("defect, expected", [
    ("conv1d-kernel", "feat1"),                            # modules run with other attributes
    ("fa-no-bias", "feat_out_1.fusion.outlayer"),          # a variable removed + attribute
    ("dense-untransposed", "feat_out_2.fusion.fc.0"),      # variables only
    ("residual-sign", "feat_out_1.conv3.conv_Encoder"),    # another NNX model
    ("concat-order", "feature"),                           # a module's input changed
])
def test_dlns_defects_reach_the_nnx_port_and_show_at_their_block(port16, defect, expected):
    result = dln._run(port16, port16.flax_model.config, defect, {}, [])
    assert result.report.first_divergence == expected, result.report.failures[:2]
    assert result.report.failures[0].rel_to_scale > 1e-3


def test_cli_runs_the_nnx_port_on_the_fixture_and_refuses_its_gradients(tmp_path, capsys):
    assert main(["parity", "--backend", "nnx", "--fixture", "--report", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "pass" and "NNX" in json.dumps(report)
    assert main(["parity", "--backend", "nnx", "--gradients"]) == 2
    assert "Linen port" in capsys.readouterr().err
