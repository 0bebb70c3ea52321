"""`dln metrics` and the honest library Table 1 (parity.evaluation.library_compare)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dln.cli import main
from core.images import write_png_atomic

SHAPE = (48, 72, 3)  # non-square on purpose


def _write_folders(root, names=("a", "b"), shape=SHAPE, seed=0):
    """pred/ and gt/ folders of uint8 PNGs with matching names; returns the arrays."""
    import skimage.data

    rng = np.random.default_rng(seed)
    (root / "pred").mkdir()
    (root / "gt").mkdir()
    photo = skimage.data.chelsea()
    arrays = {}
    for i, name in enumerate(names):
        gt = np.ascontiguousarray(photo[20 * i:20 * i + shape[0], 30 * i:30 * i + shape[1]])
        pred = np.clip(0.7 * gt + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
        write_png_atomic(pred, root / "pred" / f"{name}.png")
        write_png_atomic(gt, root / "gt" / f"{name}.png")
        arrays[name] = (pred, gt)
    return arrays


def test_dln_metrics_json_equals_scikit_image_on_the_uint8_pairs(tmp_path, capsys):
    arrays = _write_folders(tmp_path)
    code = main(["metrics", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["images"]}
    assert set(rows) == set(arrays)
    for name, (pred, gt) in arrays.items():
        psnr = peak_signal_noise_ratio(gt, pred, data_range=255)
        ssim = structural_similarity(gt, pred, channel_axis=-1)  # the authors' call
        assert abs(rows[name]["psnr"] - psnr) <= 1e-6, (rows[name]["psnr"], psnr)
        assert abs(rows[name]["ssim"] - ssim) <= 1e-6, (rows[name]["ssim"], ssim)
    for key in ("psnr", "ssim", "theta"):
        expected = np.mean([rows[n][key] for n in rows])
        assert abs(report["mean"][key] - expected) <= 1e-12


def test_dln_metrics_table_lists_every_image_and_the_mean(tmp_path, capsys):
    _write_folders(tmp_path)
    assert main(["metrics", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "PSNR", "SSIM", "theta"]
    assert [line.split()[0] for line in lines[1:]] == ["a", "b", "mean"]


def test_dln_metrics_skips_unmatched_names_with_a_note(tmp_path, capsys):
    _write_folders(tmp_path)
    write_png_atomic(np.zeros(SHAPE, np.uint8), tmp_path / "pred" / "extra.png")
    assert main(["metrics", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unmatched_predictions"] == ["extra"]
    assert "1 predictions without ground truth skipped: extra" in captured.err


@pytest.mark.parametrize("case", ["size_mismatch", "missing_folder", "no_common_names",
                                  "missing_gt_option"])
def test_dln_metrics_user_errors_are_one_line_and_exit_2(tmp_path, capsys, case):
    _write_folders(tmp_path)
    pred, gt = str(tmp_path / "pred"), str(tmp_path / "gt")
    if case == "size_mismatch":
        write_png_atomic(np.zeros((50, 72, 3), np.uint8), tmp_path / "pred" / "a.png")
        argv = ["metrics", "--pred", pred, "--gt", gt]
    elif case == "missing_folder":
        argv = ["metrics", "--pred", str(tmp_path / "nope"), "--gt", gt]
    elif case == "no_common_names":
        (tmp_path / "other").mkdir()
        write_png_atomic(np.zeros(SHAPE, np.uint8), tmp_path / "other" / "z.png")
        argv = ["metrics", "--pred", str(tmp_path / "other"), "--gt", gt]
    else:
        argv = ["metrics", "--pred", pred]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dln metrics: error:") and "\n" not in err, err


def test_compare_libraries_separates_settings_gap_from_implementation_gap(tmp_path):
    from parity.evaluation.library_compare import compare_folders, swapped_count_tv, write_report

    _write_folders(tmp_path, names=("a",))
    rows = compare_folders(tmp_path / "pred", tmp_path / "gt")
    defaults = [r for r in rows if r.metric == "SSIM" and r.settings.startswith("each")]
    assert len(defaults) == 1 and abs(defaults[0].difference) > 1e-3, defaults
    assert sum(r.settings.startswith("matched") for r in rows) == 2
    for r in rows:
        if r.metric == "SSIM" and r.settings.startswith("matched"):
            assert abs(r.difference) <= 1e-5, (r.settings, r.difference)
    psnr = next(r for r in rows if r.metric.startswith("PSNR"))
    assert abs(psnr.difference) <= 1e-4
    written = write_report(rows, tmp_path / "out")
    assert [p.name for p in written] == ["table1.md", "table1.json", "table1.png"]
    assert all(p.stat().st_size > 0 for p in written)
    # swapped TV counts: a vertical ramp on H x W gives 2 step^2 (H-1) W / (H (W-1))
    ramp = np.broadcast_to(np.arange(10.0)[None, :, None, None], (1, 10, 30, 3))
    assert abs(swapped_count_tv(ramp) - 2 * 9 * 30 / (10 * 29)) <= 1e-12


def test_compare_libraries_cli_defaults_to_the_bundled_samples_and_checks_options(
        capsys, tmp_path, monkeypatch):
    import core.paths
    from core.image_pairs import match_by_name

    bundled = match_by_name(core.paths.SAMPLE_IMAGES / "low", core.paths.SAMPLE_IMAGES / "high")
    assert len(bundled.pairs) >= 1 and not bundled.only_pred and not bundled.only_gt
    assert main(["metrics", "--compare-libraries", "--pred", str(tmp_path)]) == 2
    assert "both --pred and --gt" in capsys.readouterr().err
    # no folders given: SAMPLE_IMAGES/low vs SAMPLE_IMAGES/high (small stand-ins here)
    _write_folders(tmp_path, names=("a",))
    (tmp_path / "pred").rename(tmp_path / "low")
    (tmp_path / "gt").rename(tmp_path / "high")
    monkeypatch.setattr(core.paths, "SAMPLE_IMAGES", tmp_path)
    assert main(["metrics", "--compare-libraries"]) == 0
    out = capsys.readouterr().out
    assert "| a | SSIM | each library's defaults" in out
    assert "not the implementations" in out


def test_a_table1_report_that_would_replace_a_compared_image_is_refused_first(tmp_path,
                                                                               capsys):
    _write_folders(tmp_path, names=("a", "table1"))
    before = (tmp_path / "pred" / "table1.png").read_bytes()
    capsys.readouterr()
    code = main(["metrics", "--compare-libraries", "--pred", str(tmp_path / "pred"),
                 "--gt", str(tmp_path / "gt"), "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "table1.png" in err, err
    assert (tmp_path / "pred" / "table1.png").read_bytes() == before
    assert not (tmp_path / "pred" / "table1.md").exists()
