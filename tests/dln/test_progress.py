"""Progress bars show on a terminal only: a pipe, a file or a CI log gets no tqdm noise
glued to the result lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from core.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drain(stream, monkeypatch, **kwargs) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("DLN_NO_PROGRESS", raising=False)
    bar = progress(range(3), desc="work", **kwargs)
    assert list(bar) == [0, 1, 2]
    bar.close()
    return stream.getvalue()


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    assert _drain(io.StringIO(), monkeypatch) == ""


def test_a_bar_on_a_terminal_unless_disabled(monkeypatch):
    assert "work" in _drain(_Terminal(), monkeypatch)
    assert _drain(_Terminal(), monkeypatch, disable=True) == ""
    monkeypatch.setenv("DLN_NO_PROGRESS", "1")
    bar = progress(range(2), desc="work")
    assert list(bar) == [0, 1] and sys.stderr.getvalue() == ""


def test_a_manual_bar_still_takes_updates_when_silent(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress(None, desc="table2", total=4)
    bar.set_postfix_str("model")
    bar.update(2)
    bar.close()
    assert sys.stderr.getvalue() == ""


def test_dln_synth_with_stderr_piped_writes_no_bar(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(source / f"{name}.png")
    env = {k: v for k, v in os.environ.items() if k != "DLN_NO_PROGRESS"}
    done = subprocess.run([sys.executable, "-m", "dln.cli", "synth", "--source", str(source),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "low").iterdir()) == ["a.png", "b.png"]
