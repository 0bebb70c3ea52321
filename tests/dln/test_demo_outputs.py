"""`dln demo` writes nothing through a link, nothing half-written, and nothing over one of
its own inputs. The enhancement itself is replaced by a copy (its behaviour has its own
tests): what is tested here is where the demo's files go."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
from PIL import Image

from dln.cli import main


@pytest.fixture
def demo_inputs(tmp_path, authors_pth_16, monkeypatch):
    from dln import enhance
    from dln.enhance import EnhanceResult

    def copy_as_enhanced(ckpt, inputs, output_dir, **_):
        output_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted(inputs[0].iterdir()):
            shutil.copyfile(path, output_dir / f"{path.stem}.png")
            written.append(output_dir / f"{path.stem}.png")
        return EnhanceResult(written, [], [])

    monkeypatch.setattr(enhance, "enhance_paths", copy_as_enhanced)
    rng = np.random.default_rng(3)
    for kind in ("low", "high"):
        (tmp_path / "samples" / kind).mkdir(parents=True)
        for name in ("a", "b"):
            Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(
                tmp_path / "samples" / kind / f"{name}.png")
    return ["demo", "--weights", str(authors_pth_16), "--samples", str(tmp_path / "samples")]


def _demo(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


def test_a_summary_json_that_is_a_link_is_replaced_not_written_through(tmp_path, capsys,
                                                                       demo_inputs):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / "summary.json").symlink_to(target)
    code, lines = _demo(capsys, demo_inputs + ["--out", str(out)])
    assert code == 0, lines
    assert target.read_text() == "keep me"
    assert not (out / "summary.json").is_symlink() and '"psnr_low_db"' in \
        (out / "summary.json").read_text()


def test_a_full_disk_at_the_summary_is_one_line_and_no_empty_file(tmp_path, capsys,
                                                                  demo_inputs, monkeypatch):
    from core import report_files

    def disk_full(dst, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(report_files, "write_text_atomic", disk_full)
    out = tmp_path / "out"
    code, lines = _demo(capsys, demo_inputs + ["--out", str(out)])
    assert code == 2 and len(lines) == 1 and "No space left" in lines[0], lines
    assert not (out / "summary.json").exists()


def test_a_demo_whose_outputs_would_replace_its_inputs_writes_nothing(tmp_path, capsys,
                                                                       demo_inputs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "enhanced").symlink_to(tmp_path / "samples" / "low", target_is_directory=True)
    before = {p: p.read_bytes() for p in (tmp_path / "samples").rglob("*.png")}
    code, lines = _demo(capsys, demo_inputs + ["--out", str(out)])
    assert code == 2 and len(lines) == 1 and "input" in lines[0], lines
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["enhanced"]
