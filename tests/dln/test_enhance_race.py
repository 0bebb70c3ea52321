"""`dln enhance` racing another process: an output that appears after the run checked
its name (while the network runs, or while its PNG is being encoded, after the writer's
own check) is kept, named in one line, and the run exits 1 while the other images are
written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import core.atomic_files
import dln.enhance_pipeline
from dln.cli import main

ANOTHER = b"another process's file"


def _stage_race(monkeypatch, window: str, raced):
    if window == "while the network runs":
        real_run = dln.enhance_pipeline._run_network

        def network_then_another_process_writes(forward, what):
            outputs = real_run(forward, what)
            if raced.name in str(what):
                raced.write_bytes(ANOTHER)
            return outputs

        monkeypatch.setattr(dln.enhance_pipeline, "_run_network",
                            network_then_another_process_writes)
    else:  # inside the atomic writer: after its check, before its publish
        real_temporary = core.atomic_files._temporary_beside

        def temporary_then_another_process_writes(path, suffix=".tmp"):
            made = real_temporary(path, suffix)
            if path == raced and suffix == ".tmp":
                raced.write_bytes(ANOTHER)
            return made

        monkeypatch.setattr(core.atomic_files, "_temporary_beside",
                            temporary_then_another_process_writes)


@pytest.mark.parametrize("window", ["while the network runs", "while the PNG is encoded"])
def test_an_output_appearing_meanwhile_is_kept_and_reported(
        tmp_path, authors_pth_16, monkeypatch, capsys, window):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        Image.fromarray((rng.random((20, 24, 3)) * 90).astype(np.uint8)).save(
            folder / f"{name}.png")
    raced = out / "b.png"
    _stage_race(monkeypatch, window, raced)
    code = main(["enhance", "--weights", str(authors_pth_16), "--backend", "torch",
                 "--out", str(out), str(folder)])
    err = capsys.readouterr().err
    assert code == 1
    assert raced.read_bytes() == ANOTHER
    lines = [line for line in err.splitlines() if "appeared meanwhile" in line]
    assert len(lines) == 1 and "b.png" in lines[0], err
    assert np.asarray(Image.open(out / "a.png")).shape == (20, 24, 3)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no temporary left
