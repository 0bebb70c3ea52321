"""What a new user sees when a command cannot start: one line `dln CMD: error: ...` saying
why, exit 2, nothing written; argparse's own errors included (no usage block)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dln.cli import main


def _one_line(capsys, argv) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse ends by SystemExit
        code = stop.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (argv, code, captured.err)
    assert len(lines) == 1 and "Traceback" not in captured.err, (argv, captured.err)
    assert lines[0].startswith(f"dln {argv[0]}: error: "), lines
    assert "usage:" not in captured.err + captured.out, captured.err
    return lines[0]


@pytest.mark.parametrize("argv, phrase", [
    (["parity", "--size", "-5x3"], "--size=VALUE"),
    (["parity", "--size=-5x3"], "size must be positive"),
    (["enhance", "--weights", "w.pth", "--out", "o", "--max-pixels", "0", "in"],
     "--max-pixels"),
    (["table2", "--repeats", "many"], "--repeats"),
])
def test_argparse_errors_are_one_line_without_the_usage_block(capsys, argv, phrase):
    assert phrase in _one_line(capsys, argv)


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["parity", "--help"])
    assert stop.value.code == 0 and "usage: dln parity" in capsys.readouterr().out


def test_demo_with_a_samples_folder_without_low_says_so_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "samples" / "high").mkdir(parents=True)
    out = tmp_path / "out"
    line = _one_line(capsys, ["demo", "--samples", str(tmp_path / "samples"),
                              "--out", str(out)])
    assert "low/ and high/" in line and "nan" not in line.lower(), line
    assert not out.exists()


def test_demo_with_low_images_lacking_references_names_them(tmp_path, capsys):
    for side in ("low", "high"):
        (tmp_path / "s" / side).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "s" / "low" / "a.png")
    line = _one_line(capsys, ["demo", "--samples", str(tmp_path / "s"),
                              "--out", str(tmp_path / "out")])
    assert "no reference in high/ for a.png" in line, line
    (tmp_path / "s" / "low" / "a.png").unlink()
    assert "no images in low/" in _one_line(capsys, ["demo", "--samples", str(tmp_path / "s"),
                                                     "--out", str(tmp_path / "out")])


def test_synth_on_a_folder_without_images_says_why(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("not an image")
    line = _one_line(capsys, ["synth", "--source", str(tmp_path / "src"),
                              "--out", str(tmp_path / "out")])
    assert "no images" in line and "src" in line, line
    assert not (tmp_path / "out").exists()


def test_metrics_with_a_file_for_pred_says_it_is_not_a_folder(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one.png")
    (tmp_path / "gt").mkdir()
    line = _one_line(capsys, ["metrics", "--pred", str(tmp_path / "one.png"),
                              "--gt", str(tmp_path / "gt")])
    assert "not a folder" in line and "does not exist" not in line, line


def test_metrics_size_mismatch_is_reported_height_by_width(tmp_path, capsys):
    for folder, shape in (("pred", (8, 12, 3)), ("gt", (9, 12, 3))):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / folder / "a.png")
    line = _one_line(capsys, ["metrics", "--pred", str(tmp_path / "pred"),
                              "--gt", str(tmp_path / "gt")])
    assert "8x12" in line and "9x12" in line and "HxW" in line, line
