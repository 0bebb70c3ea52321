"""Files published as a unit (core.atomic_files.atomic_paths) and state files read
without trusting them (core.state_files): nothing half-done, nothing that hangs."""

from __future__ import annotations

import os

import pytest

from core.atomic_files import atomic_paths
from core.state_files import FolderBusy, StateFileError, folder_lock, read_small_file


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_unit_is_published_whole(tmp_path):
    dsts = [tmp_path / "high.png", tmp_path / "low.png"]
    with atomic_paths(dsts) as temps:
        for tmp, text in zip(temps, (b"high", b"low")):
            tmp.write_bytes(text)
    assert [d.read_bytes() for d in dsts] == [b"high", b"low"]
    assert _leftovers(tmp_path) == []


def test_when_the_second_file_cannot_be_published_the_first_gets_its_old_content_back(
        tmp_path):
    high, low = tmp_path / "high.png", tmp_path / "low.png"
    high.write_bytes(b"old high")
    low.mkdir()  # a folder where the low image goes: its publish fails
    (low / "keep").write_bytes(b"")
    with pytest.raises(OSError):
        with atomic_paths([high, low]) as temps:
            temps[0].write_bytes(b"new high")
            temps[1].write_bytes(b"new low")
    assert high.read_bytes() == b"old high"
    assert _leftovers(tmp_path) == []


def test_without_overwrite_a_file_appearing_meanwhile_stops_the_whole_unit(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    with pytest.raises(FileExistsError):
        with atomic_paths([first, second], overwrite=False) as temps:
            temps[0].write_bytes(b"a")
            second.write_bytes(b"someone else's")
    assert not first.exists() and second.read_bytes() == b"someone else's"
    assert _leftovers(tmp_path) == []


def test_a_failure_inside_the_block_publishes_nothing(tmp_path):
    dst = tmp_path / "x.png"
    dst.write_bytes(b"before")
    with pytest.raises(RuntimeError):
        with atomic_paths([dst, tmp_path / "y.png"]) as temps:
            temps[0].write_bytes(b"after")
            raise RuntimeError("disk full, say")
    assert dst.read_bytes() == b"before" and not (tmp_path / "y.png").exists()
    assert _leftovers(tmp_path) == []


def test_a_link_in_the_way_is_replaced_never_written_through(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("precious")
    link = tmp_path / "summary.json"
    link.symlink_to(target)
    with atomic_paths([link]) as (tmp,):
        tmp.write_text("{}")
    assert target.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "{}"


def test_state_files_are_read_only_when_regular_and_small(tmp_path):
    good = tmp_path / "log.json"
    good.write_bytes(b"x" * 100)
    assert read_small_file(good, 100) == b"x" * 100
    with pytest.raises(StateFileError, match="more than"):
        read_small_file(good, 99)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # nobody writes: a blocking open would hang here
    with pytest.raises(StateFileError, match="not a regular file"):
        read_small_file(fifo, 100)
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "none.json", 100)


def test_a_folder_lock_refuses_a_second_holder_and_ends_with_the_first(tmp_path):
    with folder_lock(tmp_path):
        with pytest.raises(FolderBusy, match="in use") as info:
            with folder_lock(tmp_path, "another dln train"):
                pass
        assert "\n" not in str(info.value)
    with folder_lock(tmp_path):  # released: the next run may take it
        pass


def test_files_and_folders_with_names_of_nearly_255_bytes_are_written_and_replaced(tmp_path):
    """The temporary name beside a destination adds a dot, 8 characters and a suffix; for
    a long allowed name it must be cut to fit, or the file could never be written."""
    from core.atomic_files import atomic_directory, write_bytes_atomic

    name = "é" * 100 + "x" * 50 + ".png"   # 254 bytes in UTF-8
    assert len(os.fsencode(name)) == 254
    write_bytes_atomic(tmp_path / name, b"first", overwrite=False)
    write_bytes_atomic(tmp_path / name, b"second", overwrite=True)  # a backup name too
    assert (tmp_path / name).read_bytes() == b"second"
    with atomic_directory(tmp_path / ("d" * 254)) as folder:
        (folder / "f").write_bytes(b"x")
    assert (tmp_path / ("d" * 254) / "f").read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == sorted([name, "d" * 254])  # nothing left over
