"""`dln parity`: every block of the reference and the port compared, reports, bad input."""

import json
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image

from dln.cli import main
from core.config import DLNConfig
from parity.engine.capture import (PREDICTION, capture_flax, capture_torch, flax_path,
                            torch_block_names, torch_threads)
from parity.engine.harness import image_inputs, random_inputs, run_parity
from weights.trees import nest_tree
from parity.engine.block_compare import compare_blocks
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_authors_dataparallel_checkpoint_passes_at_1e5_on_odd_size_batch_3(tmp_path,
                                                                            authors_pth_64):
    report_dir = tmp_path / "report"
    code = main(["parity", "--weights", str(authors_pth_64), "--size", "37x53", "--batch", "3",
                 "--tol", "1e-5", "--report", str(report_dir)])
    report = json.loads((report_dir / "report.json").read_text())
    worst = max(b["rel_to_scale"] for b in report["blocks"])
    assert code == 0, f"first divergence {report['first_divergence']}, worst {worst:.2e}"
    assert report["first_divergence"] is None and report["passed"] is True
    assert report["inputs"]["shape_nhwc"] == [3, 37, 53, 3]
    assert report["config"]["dim"] == 64 and len(report["blocks"]) == 62
    assert worst <= 1e-5, f"worst relative error {worst:.2e}"
    prediction = report["blocks"][-1]
    assert prediction["name"] == "prediction" and prediction["max_abs"] <= 1e-5, prediction
    md = (report_dir / "report.md").read_text()
    assert "PASS" in md and "`feat_out_2.conv2.conv_Offset`" in md
    assert (report_dir / "per_layer_error.png").read_bytes()[:8] == PNG_SIGNATURE


def test_blocks_are_every_named_block_children_before_parents():
    from reference_torch.model import DLN

    names = torch_block_names(DLN(DLNConfig(dim=16)))
    # feat1, feat2, feature, out + per LBP: fc.0, fc.2, outlayer, fusion, 3 x (3 convs + op),
    # 2 local weights, the LBP itself = 19
    assert len(names) == 4 + 3 * 19, names
    x = random_inputs((9, 11), 2).x
    model = DLN(DLNConfig(dim=16))
    order = list(capture_torch(model, x))
    assert order[-1] == PREDICTION and set(order[:-1]) == set(names)
    pos = {n: i for i, n in enumerate(order)}
    assert pos["feat_out_1.fusion.fc.0"] < pos["feat_out_1.fusion.outlayer"] \
        < pos["feat_out_1.fusion"] < pos["feat_out_1.conv1_1.conv_Encoder"]
    assert pos["feat_out_1.local_weight1_1"] < pos["feat_out_1.local_weight2_1"] \
        < pos["feat_out_1.conv3.conv_Encoder"] < pos["feat_out_1.conv3"] < pos["feat_out_1"]
    assert flax_path("feat_out_2.fusion.fc.0") == "feat_out_2/fusion/fc_0"


def test_capture_leaves_the_models_users_run_unchanged():
    import torch

    from port.inference import make_apply
    from reference_torch.inference import model_from_state

    cfg = DLNConfig(dim=16)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 4), cfg)
    x = random_inputs((13, 17), 2, seed=4).x
    model = model_from_state(ckpt.torch_state, cfg)
    captured = capture_torch(model, x)
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    with torch.no_grad(), torch_threads():  # the capture's thread count: same summation order
        plain = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(captured[PREDICTION], plain)
    flax_out = capture_flax(cfg, ckpt.flax_tree(), x, wanted={"feat1"})
    user = np.asarray(make_apply(cfg)(ckpt.flax_tree(), x))
    # the user path computes 1x1 convolutions as matrix products (port/pointwise.py), the
    # capture as convolutions: other kernels, so float32 rounding, not bit equality
    from parity.engine.tolerance import FORWARD_ATOL, assert_close

    assert_close(flax_out[PREDICTION], user, FORWARD_ATOL, what="captured vs user path")
    assert set(flax_out) == {"feat1", PREDICTION}


def test_shape_mismatch_and_missing_blocks_are_reported_not_raised():
    ref = OrderedDict([("feat1", np.ones((1, 4, 4, 8), np.float32)),
                       ("feat2", np.ones((1, 4, 4, 4), np.float32)),
                       ("out", np.ones((1, 4, 4, 3), np.float32))])
    got = {"feat1": np.ones((1, 4, 4, 8), np.float32), "feat2": np.ones((1, 4, 4, 16), np.float32)}
    report = compare_blocks(ref, got, tol=1e-5)
    assert [r.status for r in report.rows] == ["pass", "shape mismatch", "missing in JAX"]
    assert report.first_divergence == "feat2" and report.rows[1].jax_shape == (1, 4, 4, 16)


def test_scale_aware_tolerance_judges_each_block_by_its_magnitude():
    ref = OrderedDict([("big", np.full((1, 2, 2, 1), 100.0, np.float32)),
                       ("small", np.full((1, 2, 2, 1), 0.1, np.float32))])
    got = {"big": ref["big"] + np.float32(5e-4), "small": ref["small"] + np.float32(5e-5)}
    rows = compare_blocks(ref, got, tol=1e-5).rows
    assert rows[0].passed, rows[0]          # 5e-4 / 100 = 5e-6
    assert not rows[1].passed, rows[1]      # 5e-5 / max(1, 0.1) = 5e-5


def test_image_inputs_are_one_batch_centre_cropped_to_the_common_size(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((13, 21, 3)) * 255).astype(np.uint8)
    b = (rng.random((18, 17, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    inputs = image_inputs([str(tmp_path)])
    assert inputs.x.shape == (2, 13, 17, 3)
    np.testing.assert_array_equal(inputs.x[0], a[:, 2:19] / np.float32(255))
    np.testing.assert_array_equal(inputs.x[1], b[2:15] / np.float32(255))
    assert main(["parity", "--variant", "dim=16", "--images", str(tmp_path)]) == 0
    assert main(["parity", "--variant", "dim=16", "--images", str(tmp_path / "a.png"),
                 str(tmp_path / "b.png"), "--batch", "3"]) == 2


@pytest.mark.parametrize("argv,words", [
    (["--size", "0x5"], "positive"),
    (["--size", "big"], "HxW"),
    (["--batch", "0"], "batch"),
    (["--tol", "-1"], "tol"),
    (["--images", "/no/such/folder"], "no such file"),
    (["--variant", "brightness=maybe"], "brightness"),
    (["--size", "4000x6000", "--batch", "4"], "GiB"),
    (["--weights", "/no/such.pth"], "no such file"),
])
def test_bad_input_exits_2_with_one_line(argv, words, capsys):
    assert main(["parity", "--variant", "dim=16", *argv] if "--variant" not in argv
                else ["parity", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_nest_builds_the_flax_tree_from_dotted_names():
    tree = nest_tree({"a.b.kernel": 1, "a.c": 2, "d": 3}, sep=".")
    assert tree == {"a": {"b": {"kernel": 1}, "c": 2}, "d": 3}


def test_harness_run_records_timings_and_the_config_both_sides_ran():
    cfg = DLNConfig(dim=16, residual_sign="paper")
    run = run_parity(checkpoint_from_torch_state(random_torch_state(cfg, 8), cfg),
                     random_inputs((13, 17), 2), defect="residual-sign")
    assert run.config.residual_sign == "paper" and run.jax_config.residual_sign == "code"
    assert run.seconds["total"] >= run.seconds["torch"] > 0
