"""DLN's zoo entries: every defect makes `dln parity` exit 1 at the right first divergence.

Expected first divergences are worked out from the network, not read from the code:
blocks are listed as they finish (children before parents), so the first failing one
is the innermost block that reads the defect first.
"""

import json

import numpy as np
import pytest

from core.config import DLNConfig
from dln.cli import main
from parity.presets import dln
from parity.presets.dln_defects import DEFECTS
from parity.zoo.mutation import CAUGHT, run_zoo
from weights.convert import checkpoint_from_torch_state, load_checkpoint
from weights.synthetic import random_torch_state

EXPECTED_FIRST_DIVERGENCE_DIM16 = {
    "conv1d-kernel": "feat1",                        # the first 3x3 conv
    "feature-width": "feature",                      # 4*dim channels: a shape mismatch
    "brightness-scaled": "feat1",                    # reads the brightness channel
    "fa-no-bias": "feat_out_1.fusion.outlayer",      # the first FA outlayer
    # at dim 16 feat_out_1's fc.0 weight is 1 x 16: reshaping it IS transposing it,
    # so the first dense layer that changes is feat_out_2's (2 x 32)
    "dense-untransposed": "feat_out_2.fusion.fc.0",
    "kernel-flip": "feat1",                          # 1x1 kernels are flip-invariant
    "prelu-default-slope": "feat1",
    # lambda1 and D run before the sign is applied, and local_weight2_1(hr) is
    # evaluated before conv3(r): conv3's encoder is the first to read the residual
    "residual-sign": "feat_out_1.conv3.conv_Encoder",
    "concat-order": "feature",
}


@pytest.fixture(scope="module")
def port16():
    cfg = DLNConfig(dim=16)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, seed=5), cfg)
    return dln.prepare(ckpt, dln.random_inputs((13, 17), batch=2, seed=1))


def test_the_zoo_holds_every_defect_the_issue_names():
    assert set(EXPECTED_FIRST_DIVERGENCE_DIM16) == set(DEFECTS)


@pytest.mark.parametrize("defect", list(EXPECTED_FIRST_DIVERGENCE_DIM16))
def test_defect_is_caught_at_its_first_divergence(defect, port16):
    result = dln._run(port16, port16.flax_model.config, defect, {}, [])
    layers, expected = result.report, EXPECTED_FIRST_DIVERGENCE_DIM16[defect]
    assert layers.first_divergence == expected, (
        f"{defect}: first divergence {layers.first_divergence}, expected {expected}; "
        f"failing: {[r.name for r in layers.failures][:5]}")
    assert result.details["defect"]["expected_first_divergence"] in (expected, f"{expected}.conv")
    first = layers.failures[0]
    if defect == "feature-width":
        assert first.status == "shape mismatch" and first.jax_shape[-1] == 4 * 16, first
    else:
        assert first.rel_to_scale > 1e-3, f"{defect}: {first}"
    assert layers.failures[-1].name == "prediction"  # and the output is wrong too


def test_the_engines_zoo_runs_dlns_catalogue_and_catches_entries_where_declared(port16):
    names = ["kernel-flip", "residual-sign", "concat-order"]  # the cheapest to run
    zoo = run_zoo(port16, names=names, catalogue=DEFECTS)
    assert {r.defect: r.status for r in zoo.results} == {name: CAUGHT for name in names}
    assert zoo.score == 1.0


def test_cli_exits_1_and_writes_first_divergence_to_report(tmp_path):
    code = main(["parity", "--variant", "dim=16", "--size", "13x17", "--inject", "kernel-flip",
                 "--report", str(tmp_path / "r")])
    assert code == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["first_divergence"] == "feat1" and report["verdict"] == "diverges"
    assert report["defect"]["name"] == "kernel-flip"


def test_dense_untransposed_diverges_in_the_first_lbp_when_its_weights_are_not_vectors():
    cfg = DLNConfig(dim=32)  # feat_out_1's fc.0 is 2 x 32: reshape != transpose
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, seed=2), cfg)
    result = dln.run_parity(ckpt, dln.random_inputs((9, 11), 2, seed=3),
                            defect="dense-untransposed")
    assert result.first_divergence == "feat_out_1.fusion.fc.0", result.first_divergence


def test_defects_do_not_leak_into_a_following_clean_run(port16):
    assert not dln._run(port16, port16.flax_model.config, "concat-order", {}, []).passed
    clean = port16.compare()
    assert clean.passed, clean.worst


def test_the_earlier_ports_three_structural_defects_give_its_421610_parameters():
    """The report's port had 421,610 parameters (1-D convs, a 4*dim feature block, an FA
    outlayer without bias) instead of 700,586."""
    from parity.engine.prepared import PreparedPort

    cfg = DLNConfig()
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 0), cfg)
    port = PreparedPort(None, _frontend(cfg), {"params": ckpt.flax_tree()}, (), None, None,
                        None)
    assert sum(v.size for v in ckpt.flax_params.values()) == 700_586
    for name in ("feature-width", "conv1d-kernel", "fa-no-bias"):
        port.variables = DEFECTS[name].mutate(port, None).variables
    flat = port.frontend.flat(port.variables)
    assert sum(int(np.size(v)) for v in flat.values()) == 421_610
    assert flat["params/feat1/conv/kernel"].shape == (3, 4, 128)  # what Conv(kernel_size=3) holds


def _frontend(cfg):
    from parity.engine.frontend import frontend_for

    return frontend_for(dln.port_model(cfg))


def test_parameter_defects_change_what_they_claim(port16):
    flat = port16.frontend.flat(port16.variables)

    def mutated(name):
        return port16.frontend.flat(DEFECTS[name].mutate(port16, None).variables)

    np.testing.assert_array_equal(mutated("kernel-flip")["params/feat1/conv/kernel"][0, 0],
                                  flat["params/feat1/conv/kernel"][2, 2])
    assert mutated("prelu-default-slope")["params/feat2/act/negative_slope"] == \
        np.float32(0.01)  # flax.linen.PReLU's default slope
    torch_w = port16.torch_state()["feat_out_2.fusion.fc.0.weight"]  # (out 2, in 32)
    np.testing.assert_array_equal(mutated("dense-untransposed")[
        "params/feat_out_2/fusion/fc_0/kernel"], torch_w.reshape(32, 2))


def test_fa_no_bias_on_zero_bias_weights_says_it_cannot_show():
    from parity.engine.prepared import PreparedPort

    cfg = DLNConfig(dim=16)
    state = random_torch_state(cfg, 1)
    for i in (1, 2, 3):
        state[f"feat_out_{i}.fusion.outlayer.conv.bias"][:] = 0
    ckpt = checkpoint_from_torch_state(state, cfg)
    port = PreparedPort(None, _frontend(cfg), {"params": ckpt.flax_tree()}, (), None, None,
                        None)
    assert "zero" in DEFECTS["fa-no-bias"].mutate(port, None).equivalent


def test_brightness_defect_without_brightness_channel_is_bad_input(capsys):
    code = main(["parity", "--variant", "dim=16,brightness=off", "--inject", "brightness-scaled"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "brightness" in err, err


def test_unknown_defect_is_bad_input_listing_the_zoo(capsys):
    assert main(["parity", "--variant", "dim=16", "--inject", "no-such-bug"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conv1d-kernel" in err, err


def test_sample_checkpoint_fa_no_bias_is_equivalent_exactly_when_its_biases_are_zero():
    # the bundled checkpoint is trained (weights/sample/README.md); the zoo says that
    # fa-no-bias cannot show on a checkpoint exactly when its FA outlayer biases are zero
    from core.paths import SAMPLE_CHECKPOINT
    from parity.engine.prepared import PreparedPort

    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    port = PreparedPort(None, _frontend(ckpt.config), {"params": ckpt.flax_tree()}, (), None,
                        None, None)
    mutation = DEFECTS["fa-no-bias"].mutate(port, None)
    biases = [v for k, v in ckpt.flax_params.items() if k.endswith("outlayer.conv.bias")]
    assert bool(mutation.equivalent) == all(not np.any(b) for b in biases)
