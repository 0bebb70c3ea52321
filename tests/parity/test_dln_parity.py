"""`dln parity` (DLN's preset of the engine): every block of the reference and the port
compared, reports, bad input refused before anything is allocated."""

import json

import numpy as np
import pytest
from PIL import Image

from core.config import DLNConfig
from dln.cli import main
from parity.engine.rows import align_rows
from parity.engine.torch_side import record_torch, torch_threads
from parity.presets import dln
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_authors_dataparallel_checkpoint_passes_at_1e5_on_odd_size_batch_3(tmp_path,
                                                                            authors_pth_64):
    report_dir = tmp_path / "report"
    code = main(["parity", "--weights", str(authors_pth_64), "--size", "37x53", "--batch", "3",
                 "--tol", "1e-5", "--report", str(report_dir), "--junit",
                 str(tmp_path / "junit.xml")])
    report = json.loads((report_dir / "report.json").read_text())
    worst = max(b["rel_to_scale"] for b in report["rows"])
    assert code == 0, f"first divergence {report['first_divergence']}, worst {worst:.2e}"
    assert report["first_divergence"] is None and report["passed"] is True
    assert report["inputs"]["shape"] == [3, 3, 37, 53]
    assert report["config"]["dim"] == 64 and len(report["rows"]) == 62
    assert worst <= 1e-5, f"worst relative error {worst:.2e}"
    prediction = report["rows"][-1]
    assert prediction["name"] == "prediction" and prediction["max_abs"] <= 1e-5, prediction
    md = (report_dir / "report.md").read_text()
    assert "PASS" in md and "`feat_out_2.conv2.conv_Offset`" in md
    assert (report_dir / "per_layer_error.png").read_bytes()[:8] == PNG_SIGNATURE
    assert 'tests="62" failures="0"' in (tmp_path / "junit.xml").read_text()


def test_blocks_are_every_named_block_children_before_parents():
    from reference_torch.model import DLN

    model = DLN(DLNConfig(dim=16))
    names = dln.block_names(model)
    # feat1, feat2, feature, out + per LBP: fc.0, fc.2, outlayer, fusion, 3 x (3 convs + op),
    # 2 local weights, the LBP itself = 19
    assert len(names) == 4 + 3 * 19, names
    order = [m for m, _ in record_torch(model, dln.random_inputs((9, 11), 2).x, names).outputs]
    assert order[-1] == "" and set(order[:-1]) == set(names)
    pos = {n: i for i, n in enumerate(order)}
    assert pos["feat_out_1.fusion.fc.0"] < pos["feat_out_1.fusion.outlayer"] \
        < pos["feat_out_1.fusion"] < pos["feat_out_1.conv1_1.conv_Encoder"]
    assert pos["feat_out_1.local_weight1_1"] < pos["feat_out_1.local_weight2_1"] \
        < pos["feat_out_1.conv3.conv_Encoder"] < pos["feat_out_1.conv3"] < pos["feat_out_1"]


def test_memory_counted_from_the_structure_equals_a_run_on_meta_tensors():
    from parity.engine.memory import capture_bytes
    from reference_torch.model import DLN

    for cfg, shape in ((DLNConfig(dim=16), (2, 13, 17)), (DLNConfig(dim=32, brightness=False),
                                                          (1, 9, 30))):
        model = DLN(cfg)
        assert dln.check_memory(cfg, *shape) == capture_bytes(
            model, [(shape[0], 3, *shape[1:])], dln.block_names(model))


def test_capture_leaves_the_models_users_run_unchanged():
    import torch

    from port.inference import make_apply
    from parity.engine.tolerance import FORWARD_ATOL, assert_close

    cfg = DLNConfig(dim=16)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 4), cfg)
    inputs = dln.random_inputs((13, 17), 2, seed=4)
    port = dln.prepare(ckpt, inputs)
    model = port.torch_model
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    with torch.no_grad(), torch_threads():  # the capture's thread count: same summation order
        plain = model(torch.from_numpy(inputs.x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(port.reference.outputs[("", "")], plain)
    flax_out = port.frontend.make_apply(frozenset({"feat1"}))(
        port.variables, inputs.x.transpose(0, 2, 3, 1))
    user = np.asarray(make_apply(cfg)(ckpt.flax_tree(), inputs.x.transpose(0, 2, 3, 1)))
    # the user path computes 1x1 convolutions as matrix products (port/pointwise.py), the
    # capture as convolutions: other kernels, so float32 rounding, not bit equality
    assert_close(flax_out[("", "")], user, FORWARD_ATOL, what="captured vs user path")
    assert set(flax_out) == {("feat1", ""), ("", "")}


def test_shape_mismatch_and_missing_blocks_are_reported_not_raised():
    ref = {("feat1", ""): np.ones((1, 4, 4, 8), np.float32),
           ("feat2", ""): np.ones((1, 4, 4, 4), np.float32),
           ("out", ""): np.ones((1, 4, 4, 3), np.float32),
           ("", ""): np.ones((1, 4, 4, 3), np.float32)}
    got = {("feat1", ""): np.ones((1, 4, 4, 8), np.float32),
           ("feat2", ""): np.ones((1, 4, 4, 16), np.float32),
           ("", ""): np.ones((1, 4, 4, 3), np.float32)}
    report = align_rows(ref, got, tol=1e-5, chosen=True)
    assert [r.status for r in report.rows] == ["pass", "shape mismatch", "missing in JAX",
                                               "pass"]
    assert report.first_divergence == "feat2" and report.rows[1].jax_shape == (1, 4, 4, 16)


def test_scale_aware_tolerance_judges_each_block_by_its_magnitude():
    ref = {("big", ""): np.full((1, 2, 2, 1), 100.0, np.float32),
           ("small", ""): np.full((1, 2, 2, 1), 0.1, np.float32)}
    got = {("big", ""): ref[("big", "")] + np.float32(5e-4),
           ("small", ""): ref[("small", "")] + np.float32(5e-5)}
    rows = align_rows(ref, got, tol=1e-5).rows
    assert rows[0].passed, rows[0]          # 5e-4 / 100 = 5e-6
    assert not rows[1].passed, rows[1]      # 5e-5 / max(1, 0.1) = 5e-5


def test_image_inputs_are_one_batch_centre_cropped_to_the_common_size(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((13, 21, 3)) * 255).astype(np.uint8)
    b = (rng.random((18, 17, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    inputs = dln.image_inputs([str(tmp_path)])
    assert inputs.x.shape == (2, 3, 13, 17)
    np.testing.assert_array_equal(inputs.x[0], (a[:, 2:19] / np.float32(255)).transpose(2, 0, 1))
    np.testing.assert_array_equal(inputs.x[1], (b[2:15] / np.float32(255)).transpose(2, 0, 1))
    assert main(["parity", "--variant", "dim=16", "--images", str(tmp_path)]) == 0
    assert main(["parity", "--variant", "dim=16", "--images", str(tmp_path / "a.png"),
                 str(tmp_path / "b.png"), "--batch", "3"]) == 2


def test_images_too_big_for_memory_are_refused_from_their_headers(tmp_path, monkeypatch, capsys):
    """A PNG whose header declares 20000 x 20000 pixels: refused before it is decoded."""
    import core.images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(core.images, "load_image",
                        lambda *a, **k: pytest.fail("an image was decoded"))
    monkeypatch.setattr(core.images, "header_size", lambda path: (20000, 20000))
    assert main(["parity", "--variant", "dim=16", "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GiB" in err, err


@pytest.mark.parametrize("argv,words", [
    (["--size", "0x5"], "positive"),
    (["--size", "big"], "HxW"),
    (["--batch", "0"], "at least 1"),
    (["--tol", "-1"], "positive number"),
    (["--seed=-1"], "seed"),
    (["--images", "/no/such/folder"], "no such file"),
    (["--variant", "brightness=maybe"], "brightness"),
    (["--size", "4000x6000", "--batch", "4"], "GiB"),
    (["--batch", "1000000000"], "GiB"),
    (["--variant", "dim=20000"], "dim"),
    (["--variant", "dim=1024", "--size", "900x900"], "GiB"),
    (["--weights", "/no/such.pth"], "no such file"),
])
def test_bad_input_exits_2_with_one_line(argv, words, capsys):
    assert exit_code(["parity", "--variant", "dim=16", *argv] if "--variant" not in argv
                     else ["parity", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def exit_code(argv: list[str]) -> int:
    """main's exit code, also where argparse itself exits (a value its type refuses)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_report_rows_stay_one_line_for_a_file_name_with_a_newline(tmp_path):
    from parity.engine.report import report_markdown

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(folder / "a\nb.png")
    cfg = DLNConfig(dim=16)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 1), cfg)
    markdown = report_markdown(dln.run_parity(ckpt, dln.image_inputs([str(folder)])))
    inputs_line = next(line for line in markdown.splitlines() if line.startswith("- inputs:"))
    assert "a\\nb.png" in inputs_line
    assert not any(line.startswith("b.png") for line in markdown.splitlines())
