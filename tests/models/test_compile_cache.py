"""The compilation cache and its bucket index are hints that can never stop or hang a run:
a damaged index (FIFO, link to /dev/zero, huge, deep, wrong types) is ignored with one
warning, an unusable cache folder means no cache with one warning."""

from __future__ import annotations

import json
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import DLNConfig
from port.compile_cache import (BUCKET_INDEX, INDEX_MAX_BYTES, BucketIndex, read_index,
                                usable_cache_folder)


def _within(seconds, fn):
    """fn() in a thread; fails instead of hanging the suite."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung"
    return out["value"]


def test_a_fifo_or_a_link_to_dev_zero_is_ignored_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data, problem = _within(5, lambda: read_index(fifo))
    assert data == {} and problem == "not a regular file"
    (tmp_path / "zero").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero" / BUCKET_INDEX)
    index = BucketIndex(tmp_path / "zero", DLNConfig(dim=16))
    assert _within(5, lambda: index.compiled(1)) == set()
    assert len(index.warnings) == 1 and "ignored" in index.warnings[0]
    index.add(1, (32, 40))          # the next run finds a good index (the link is replaced)
    assert BucketIndex(tmp_path / "zero", DLNConfig(dim=16)).compiled(1) == {(32, 40)}
    assert os.path.exists("/dev/zero")


def test_huge_deep_and_mistyped_indexes_are_ignored_with_one_warning(tmp_path):
    path = tmp_path / BUCKET_INDEX
    cases = {"huge": "[" * 10 + " " * INDEX_MAX_BYTES + "]" * 10,
             "deep": "[" * 100_000 + "]" * 100_000,
             "types": json.dumps({"k": [[1, "a", 3]]}),
             "negative": json.dumps({"k": [[1, -32, 40]]}),
             "list": "[1, 2, 3]", "bytes": b"\xff\xfe{".decode("latin-1")}
    for name, text in cases.items():
        path.write_text(text, encoding="latin-1")
        data, problem = read_index(path)
        assert data == {} and problem, name
        index = BucketIndex(tmp_path, DLNConfig(dim=16))
        assert index.compiled(1) == set() and index.compiled(2) == set(), name
        assert len(index.warnings) == 1 and "\n" not in index.warnings[0], name


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=20))
def test_any_json_value_as_index_gives_a_set_of_shapes_or_a_warning(tmp_path_factory, value):
    folder = tmp_path_factory.mktemp("idx")
    (folder / BUCKET_INDEX).write_text(json.dumps(value))
    index = BucketIndex(folder, DLNConfig(dim=16))
    shapes = index.compiled(1)
    assert isinstance(shapes, set)
    assert all(isinstance(h, int) and isinstance(w, int) for h, w in shapes)
    assert len(index.warnings) <= 1


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_as_index_never_raise(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("raw")
    (folder / BUCKET_INDEX).write_bytes(raw)
    index = BucketIndex(folder, DLNConfig(dim=16))
    assert isinstance(index.compiled(1), set)
    index.add(1, (32, 32))
    assert (32, 32) in BucketIndex(folder, DLNConfig(dim=16)).compiled(1)


def test_an_unusable_cache_folder_is_named_not_raised(tmp_path):
    (tmp_path / "file").write_text("x")
    assert usable_cache_folder(tmp_path / "file") is not None
    assert usable_cache_folder(tmp_path / "file" / "below") is not None
    assert usable_cache_folder(__import__("pathlib").Path("/proc/dln-port/jax")) is not None
    assert usable_cache_folder(tmp_path / "new" / "jax") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_unusable(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert usable_cache_folder(folder) is not None
    finally:
        folder.chmod(0o700)
