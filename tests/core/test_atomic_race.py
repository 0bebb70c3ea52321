"""A staged race: the destination appears between the writer's check and its publish.

Without overwrite, the file that appeared meanwhile (another process's) is never
replaced: the write fails with FileExistsError, the other file keeps its bytes, and no
temporary file is left, also on a file system without hard links (where the writer
falls back to check-then-rename).
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

import core.atomic_files
from core.atomic_files import atomic_path, write_bytes_atomic
from core.images import OutputExistsError, write_png_atomic


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_appearing_after_the_check_is_never_replaced(tmp_path):
    dst = tmp_path / "out.png"
    with pytest.raises(FileExistsError):
        with atomic_path(dst, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            dst.write_bytes(b"someone else's")  # after the check, before the publish
    assert dst.read_bytes() == b"someone else's"
    assert _leftovers(tmp_path) == []


def test_without_hard_links_the_fallback_still_refuses_a_file_that_appeared(tmp_path,
                                                                             monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "hard links not supported here")

    monkeypatch.setattr(core.atomic_files.os, "link", no_links)
    dst = tmp_path / "out.png"
    with pytest.raises(FileExistsError):
        with atomic_path(dst, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            dst.write_bytes(b"someone else's")
    assert dst.read_bytes() == b"someone else's"
    assert _leftovers(tmp_path) == []
    write_bytes_atomic(tmp_path / "new.png", b"ours", overwrite=False)  # the fallback works
    assert (tmp_path / "new.png").read_bytes() == b"ours"


def test_a_png_writer_racing_another_process_keeps_the_other_file(tmp_path, monkeypatch):
    dst = tmp_path / "x.png"
    image = np.zeros((4, 5, 3), np.uint8)
    original_temporary = core.atomic_files._temporary_beside

    def temporary_then_race(path, suffix=".tmp"):  # the other process writes dst now
        made = original_temporary(path, suffix)
        if path == dst and suffix == ".tmp":
            dst.write_bytes(b"theirs")
        return made

    monkeypatch.setattr(core.atomic_files, "_temporary_beside", temporary_then_race)
    with pytest.raises(OutputExistsError):
        write_png_atomic(image, dst, overwrite=False)
    assert dst.read_bytes() == b"theirs"
    assert _leftovers(tmp_path) == []
