"""JAX's persistent compilation cache for `dln enhance`, and its index of bucket shapes.

The cache folder ($DLN_CACHE_DIR, else $XDG_CACHE_HOME/dln-port/jax, else
~/.cache/dln-port/jax) keeps every compiled XLA executable, so a later process with
the same shapes compiles nothing; `buckets.json` in it lists the whole-image bucket
shapes compiled there, per network and batch size, so that a folder's plan counts them
as free. Both are hints, never inputs that can stop a run: a folder that cannot be
created or written (a file in its place, read-only, under /proc) means no cache, with
one warning; an index that is not a regular file (a FIFO, a device), larger than
INDEX_MAX_BYTES, not JSON, nested too deep, or not of the expected shape is ignored
with one warning (and replaced by a good one when the run adds a shape).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

from core.atomic_files import write_text_atomic
from core.config import DLNConfig

BUCKET_INDEX = "buckets.json"
INDEX_MAX_BYTES = 1 << 20      # ~30,000 entries; a real index holds a few dozen
MAX_SIDE = 1 << 20             # a bucket side larger than this is not one we wrote


def compilation_cache_dir() -> Path:
    """$DLN_CACHE_DIR, else $XDG_CACHE_HOME/dln-port/jax, else ~/.cache/dln-port/jax."""
    if os.environ.get("DLN_CACHE_DIR"):
        return Path(os.environ["DLN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dln-port" / "jax"


def usable_cache_folder(folder: Path) -> str | None:
    """None when `folder` can hold the cache (created if needed, writable), else why not."""
    try:
        os.makedirs(folder, exist_ok=True)
        if not folder.is_dir():
            return "not a folder"
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def enable_compilation_cache(folder) -> str | None:
    """Keep every compiled XLA executable in `folder` (JAX's persistent compilation
    cache). Entries of any compile time and size are kept: the stage and bucket
    programs compile in ~0.3-2 s. Returns None, or a warning line when the folder
    cannot serve (then no cache is used)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    problem = usable_cache_folder(Path(folder))
    if problem:
        return (f"no compilation cache: {folder} cannot be used ({problem}); every shape "
                "compiles this run")
    if jax.config.jax_compilation_cache_dir != str(folder):
        compilation_cache.reset_cache()  # a process may switch folders (tests do)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return None


def _valid_entries(data) -> bool:
    if not isinstance(data, dict):
        return False
    for key, entries in data.items():
        if not isinstance(key, str) or not isinstance(entries, list):
            return False
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3
                    and all(type(v) is int and 0 < v <= MAX_SIDE for v in entry)):
                return False
    return True


def read_index(path: Path) -> tuple[dict, str | None]:
    """(the index, None) or ({}, why it was ignored). Opened without blocking and
    without following a last-component symlink, read only when it is a regular file
    of at most INDEX_MAX_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}, None
    except OSError as err:
        return {}, f"cannot be opened ({err.strerror or err})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return {}, "not a regular file"
        if info.st_size > INDEX_MAX_BYTES:
            return {}, f"larger than {INDEX_MAX_BYTES} bytes"
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(INDEX_MAX_BYTES + 1)
    except OSError as err:
        return {}, f"cannot be read ({err.strerror or err})"
    finally:
        os.close(fd)
    if len(raw) > INDEX_MAX_BYTES:
        return {}, f"larger than {INDEX_MAX_BYTES} bytes"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        return {}, "not valid JSON"
    if not _valid_entries(data):
        return {}, "not a map of network -> [batch, height, width] entries"
    return data, None


class BucketIndex:
    """The whole-image bucket shapes compiled into one persistent cache folder, per
    network (port, jax version and config) and batch size, so a later plan counts them as
    free (a warm cache). `warnings` holds the one line said about a damaged index."""

    def __init__(self, folder: Path, config: DLNConfig, backend: str = "jax"):
        import jax

        self.path = Path(folder) / BUCKET_INDEX
        # the Linen ("jax") and the NNX port trace their own programs: one key each
        port = "" if backend == "jax" else f"{backend}-"
        self.key = f"{port}jax-{jax.__version__}-{config.to_json()}"
        self._known: set[tuple[int, int, int]] = set()  # entries seen on disk this process
        self.warnings: list[str] = []

    def _read(self) -> dict:
        data, problem = read_index(self.path)
        if problem and not self.warnings:
            self.warnings.append(f"{self.path}: ignored ({problem}); it is rewritten when "
                                 "a new shape is compiled")
        return data

    def compiled(self, batch: int) -> set[tuple[int, int]]:
        return {(h, w) for n, h, w in self._read().get(self.key, []) if n == batch}

    def add(self, batch: int, bucket: tuple[int, int]) -> None:
        entry = (int(batch), int(bucket[0]), int(bucket[1]))
        if entry in self._known:  # every later batch of a bucket: no read, no write
            return
        data = self._read()
        entries = {tuple(e) for e in data.get(self.key, [])}
        self._known.add(entry)
        if entry in entries:
            return
        data[self.key] = sorted(entries | {entry})
        try:
            write_text_atomic(self.path, json.dumps(data))
        except OSError:
            pass  # a read-only cache folder only loses the hint
