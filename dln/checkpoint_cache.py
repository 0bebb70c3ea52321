"""A .pth checkpoint read once: its verified conversion, kept for later JAX runs.

Reading a .pth goes through PyTorch (its zip reader and weights-only unpickler, after
the pickle scan: weights.files), so a JAX run of `dln enhance` on a .pth imports
PyTorch for that alone: ~1.5 s of a run's start-up on the 2-core AMD EPYC, as long as
importing JAX. After a JAX run has read a .pth, its checkpoint (tensors, network
config) is kept as safetensors in the cache folder, under the sha256 of the file's
bytes and the variant asked for; a later JAX run of the same bytes reads that instead
(~0.04 s, no PyTorch). What is kept is what the checks of the first read accepted, and
safetensors are read with their declared shapes checked against the tensor table like
any other, so a cached entry is trusted no more than the compilation cache beside it.
A file whose reading produced notes (converted dtypes, ...) is not kept, so that every
run shows them; at most MAX_ENTRIES files are kept (the oldest go first); any problem
with the cache folder just means reading the .pth again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_SUBFOLDER = "checkpoints"
MAX_ENTRIES = 8


def _key(path: Path, overrides: dict) -> str | None:
    """None when the file cannot be hashed (load_checkpoint then says why): a FIFO or a
    file whose reads block is refused by weights.files.sha256_of, not waited on."""
    from weights.files import sha256_of

    try:
        digest = sha256_of(path)
    except OSError:
        return None
    variant = json.dumps(overrides, sort_keys=True, default=str)
    return f"{digest}-{hashlib.sha256(variant.encode()).hexdigest()[:16]}"


def _entry(source: Path, overrides: dict, cache_folder: Path | None
           ) -> tuple[str, Path] | None:
    """(key, path) of the kept conversion of this .pth and variant in `cache_folder`
    (which may not exist yet); None when nothing is kept for it (no cache folder, a
    safetensors file, not a regular file, bytes that cannot be hashed)."""
    from weights.files import is_safetensors_path

    if cache_folder is None or is_safetensors_path(source) or not source.is_file():
        return None
    key = _key(source, overrides)
    if key is None:
        return None
    return key, Path(cache_folder) / CACHE_SUBFOLDER / f"{key}.safetensors"


def _is_kept(kept: Path) -> bool:
    return kept.is_file() and not kept.is_symlink()


def load_checkpoint_once(path, overrides: dict | None, cache_folder: Path | None):
    """weights.convert.load_checkpoint(path, overrides), or its kept conversion when
    `cache_folder` holds one for these bytes; cache_folder None: no cache."""
    from weights.convert import load_checkpoint

    overrides = dict(overrides or {})
    source = Path(path)
    entry = _entry(source, overrides, cache_folder)
    if entry is None:
        return load_checkpoint(source, overrides)
    key, kept = entry
    if _is_kept(kept):
        try:
            ckpt = load_checkpoint(kept, overrides)
            ckpt.source = source
            os.utime(kept)          # recently used: kept longest
            return ckpt
        except Exception:  # noqa: BLE001 - a damaged entry: read the .pth again
            pass
    ckpt = load_checkpoint(source, overrides)
    if not ckpt.notes and _key(source, overrides) == key:  # kept only under the key of
        _keep(ckpt, kept)          # the bytes read: a file changed meanwhile is not kept
    return ckpt


def keep_in_background(path, cache_folder: Path | None):
    """A child process that reads this .pth (no variant) and keeps its conversion in
    `cache_folder`, started when the folder has none yet, so that the caller imports
    JAX on the other core meanwhile and then reads the kept entry (load_checkpoint_once
    with the same arguments); None when there is nothing to start. PyTorch's import
    and the read took ~1.0 s of a cold `dln enhance` start-up on the 2-core AMD EPYC,
    JAX's ~1.1 s after it. A child that fails keeps nothing, and the caller then reads
    the file itself (with its one-line error, if any)."""
    import subprocess

    from dln.own_package import interpreter_argv

    source = Path(path)
    entry = _entry(source, {}, cache_folder)
    if entry is None or _is_kept(entry[1]):
        return None
    # the child imports this very package, not whatever `dln` the working folder holds
    code = ("from dln.checkpoint_cache import load_checkpoint_once; "
            "load_checkpoint_once(sys.argv[1], {}, sys.argv[2])")
    try:
        return subprocess.Popen([*interpreter_argv(code), str(source), str(cache_folder)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _keep(ckpt, kept: Path) -> None:
    from weights.convert import save_checkpoint

    folder = kept.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, kept, overwrite=True)
        entries = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-MAX_ENTRIES]:
            old.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - a cache that cannot be written is no cache
        pass
