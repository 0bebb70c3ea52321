"""Hostile checkpoints and bad images through the other commands (parity, synth, table2).

They read weights through weights.convert.load_checkpoint and images through
core.images.load_image; these tests hold each command to the same contract as
convert and enhance: one line, the right exit code, no code run, no traceback.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dln.cli import main
from tests.weights.test_hostile_broken_checkpoints import broken_pth_variants
from tests.weights.test_hostile_code_carrying_checkpoints import hostile_paths


def _run(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, [line for line in out.err.splitlines() if line.strip()]


def _one_line_exit_2(code, lines, phrase):
    assert code == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0] and phrase in lines[0], lines


def test_parity_refuses_code_carrying_checkpoints_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    for case, path in hostile_paths(tmp_path, marker).items():
        code, _, lines = _run(["parity", "--weights", str(path)], capsys)
        _one_line_exit_2(code, lines, "refused")
        assert not marker.exists(), case


def test_parity_refuses_broken_checkpoints_with_one_line(tmp_path, capsys, authors_pth_16):
    from weights.synthetic import random_torch_state
    from core.config import DLNConfig

    variants = broken_pth_variants(authors_pth_16.read_bytes(),
                                   random_torch_state(DLNConfig(dim=16), 1))
    for name in ("empty", "truncated zip", "random bytes", "ResNet state dict"):
        data, phrase = variants[name]
        path = tmp_path / "bad.pth"
        path.write_bytes(data)
        code, _, lines = _run(["parity", "--weights", str(path)], capsys)
        _one_line_exit_2(code, lines, phrase)


def test_parity_with_a_bad_image_is_one_line(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "a.png")
    (folder / "b.png").write_text("not an image")
    code, _, lines = _run(["parity", "--variant", "dim=16", "--images", str(folder)], capsys)
    _one_line_exit_2(code, lines, "b.png")


def test_synth_writes_good_pairs_and_one_line_per_bad_image(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(source / f"{name}.png")
    (source / "empty.jpg").write_bytes(b"")
    (source / "text.png").write_text("hello")
    (source / "sub.png").mkdir()
    out = tmp_path / "out"
    code, _, lines = _run(["synth", "--source", str(source), "--out", str(out)], capsys)
    assert code == 1
    assert sorted(p.name for p in (out / "low").iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in (out / "high").iterdir()) == ["a.png", "b.png"]
    assert len(lines) == 3 and not any("Traceback" in line for line in lines), lines
    for name in ("empty.jpg", "text.png", "sub.png"):
        assert sum(name in line for line in lines) == 1, (name, lines)


def test_train_refuses_a_code_carrying_init_checkpoint_before_writing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = hostile_paths(tmp_path, marker)["exec, legacy torch.save"]
    out = tmp_path / "run"
    code, _, lines = _run(["train", "--init", str(path), "--out", str(out), "--steps", "1",
                           "--batch", "1", "--patch", "16", "--variant", "dim=16"], capsys)
    _one_line_exit_2(code, lines, "refused")
    assert not marker.exists() and not out.exists()


def test_metrics_with_a_bad_image_is_one_line(tmp_path, capsys):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (9, 9), (50, 60, 70)).save(tmp_path / folder / "a.png")
    Image.new("RGB", (9, 9), (52, 60, 70)).save(tmp_path / "pred" / "a.png")  # PSNR finite
    (tmp_path / "pred" / "b.png").write_bytes(b"")
    Image.new("RGB", (9, 9)).save(tmp_path / "gt" / "b.png")
    code, _, lines = _run(["metrics", "--pred", str(tmp_path / "pred"), "--gt",
                           str(tmp_path / "gt")], capsys)
    _one_line_exit_2(code, lines, "b.png")


def test_table2_refuses_code_carrying_checkpoint_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = hostile_paths(tmp_path, marker)["os.system, torch.save zip"]
    code, _, lines = _run(["table2", "--model", f"x={path}"], capsys)
    assert code == 2, lines
    assert any("refused" in line for line in lines) and not any("Traceback" in line
                                                                 for line in lines), lines
    assert not marker.exists()


def test_table2_refuses_a_broken_checkpoint_with_one_line(tmp_path, capsys):
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + bytes(100))
    code, _, lines = _run(["table2", "--model", f"x={tmp_path / 'cut.pth'}"], capsys)
    _one_line_exit_2(code, lines, "cut.pth")


def test_table2_with_an_unreadable_image_names_it_and_exits_1(tmp_path, capsys,
                                                                    authors_pth_16):
    rng = np.random.default_rng(1)
    for folder in ("low", "high"):
        (tmp_path / "lol" / folder).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)).save(
            tmp_path / "lol" / "low" / f"{name}.png")
        Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)).save(
            tmp_path / "lol" / "high" / f"{name}.png")
    (tmp_path / "lol" / "high" / "b.png").write_text("not an image")
    code, out, lines = _run(["table2", "--model", f"x={authors_pth_16}", "--data",
                             str(tmp_path / "lol"), "--repeats", "1"], capsys)
    named = [line for line in (out.splitlines() + lines) if "b.png" in line]
    assert len(named) == 1 and "Traceback" not in out + "".join(lines), named
    # SECURITY.md: exit 1 when dln table2 had to leave unreadable pairs out of its means
    assert code == 1, "an unreadable pair must end the run with exit 1"

