"""The same command twice gives byte-identical outputs.

convert runs in two separate processes: what varies between processes (hash
seeds, the safetensors library's metadata order) is what would break it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from dln.cli import main

DLN_MAIN = "import sys; from dln.cli import main; sys.exit(main(sys.argv[1:]))"


def _convert_in_new_process(src, dst):
    env = dict(os.environ, PYTHONHASHSEED="random", DLN_NO_PROGRESS="1")
    done = subprocess.run([sys.executable, "-c", DLN_MAIN, "convert", str(src), str(dst)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


def test_convert_twice_in_two_processes_gives_identical_bytes(tmp_path, authors_pth_16):
    first, second = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _convert_in_new_process(authors_pth_16, first)
    _convert_in_new_process(authors_pth_16, second)
    assert first.read_bytes() == second.read_bytes()
    # back to .pth: the bytes do not depend on the destination's (or a temp file's) name
    assert main(["convert", str(first), str(tmp_path / "a.pth")]) == 0
    assert main(["convert", str(first), str(tmp_path / "other_name.pth")]) == 0
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "other_name.pth").read_bytes()


def test_enhance_twice_gives_identical_pngs_on_both_backends(tmp_path, authors_pth_16):
    rng = np.random.default_rng(4)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        Image.fromarray((rng.random((10, 12, 3)) * 70).astype(np.uint8)).save(src / f"{name}.png")
    for backend in ("jax", "torch"):
        for run in ("1", "2"):
            assert main(["enhance", "--weights", str(authors_pth_16), "--backend", backend,
                         "--output", str(tmp_path / f"{backend}{run}"), str(src)]) == 0
        for name in ("a.png", "b.png"):
            one = (tmp_path / f"{backend}1" / name).read_bytes()
            two = (tmp_path / f"{backend}2" / name).read_bytes()
            assert one == two, f"{backend} {name} differs between runs"


def test_synth_twice_gives_identical_pairs(tmp_path):
    rng = np.random.default_rng(9)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(src / f"{name}.jpg")
    for run in ("1", "2"):
        assert main(["synth", "--source", str(src), "--out", str(tmp_path / run)]) == 0
    for part in ("low", "high"):
        for name in ("a.png", "b.png"):
            one = (tmp_path / "1" / part / name).read_bytes()
            assert one == (tmp_path / "2" / part / name).read_bytes(), f"{part}/{name}"


def test_parity_report_files_are_byte_identical_across_runs(tmp_path):
    from dln.cli import main

    for name in ("one", "two"):
        assert main(["parity", "--variant", "dim=16", "--size", "9x11", "--batch", "2",
                     "--report", str(tmp_path / name)]) == 0
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "report.json" in files and "report.md" in files
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
