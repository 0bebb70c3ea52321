"""Orbax checkpoint folders: the NNX way of saving weights, read and written safely.

Writing (`save_orbax`): the weights become an nnx.State of nnx.Param variables (what
`nnx.state(model, nnx.Param)` holds; never RNG state) and go through Orbax's
`StandardCheckpointer` into a private folder beside the destination, with the metadata
a safetensors file carries (format, config, parameter count, source) plus a sha256 of
every tensor as Orbax's custom metadata (Orbax's array files have no checksum); the
folder is re-read through `load_orbax` and compared bit for bit, and only then renamed
onto the destination (core.atomic_files.atomic_new_directory). `--overwrite` replaces
only a folder that is itself an Orbax checkpoint, never another folder or a file.
A plain NNX user restores such a folder with Orbax alone: `StandardCheckpointer().
restore(folder, nnx.state(nnx.eval_shape(lambda: DLN(...))))`.

Reading (`load_orbax`), an untrusted folder (see SECURITY.md):
1. A private snapshot first: the folder is copied into a temporary folder, walking it
   without following links. Only regular files and folders are copied, opened
   non-blocking and checked on the open descriptor, so a link (to /dev/zero, to a file
   elsewhere), a FIFO, a socket or a device anywhere inside is refused and nothing
   hangs; at most MAX_ORBAX_FILES entries, MAX_ORBAX_DEPTH levels and 2 GiB in all
   (weights.tensor_checks.MAX_CHECKPOINT_BYTES). Orbax then reads only the snapshot,
   so the folder cannot change between a check and its use.
2. Orbax's own metadata files, parsed here as bounded JSON before Orbax or tensorstore
   sees anything: `_CHECKPOINT_METADATA` (the handler must be the StandardCheckpointer's;
   its custom metadata holds this project's format, config and checksum) and `_METADATA`
   (every tensor's tree path and, for arrays saved from JAX, its `write_shape`). When
   every shape is declared there, the caller's `check` compares names and shapes with
   the network's tensor table at this point.
3. Orbax's array metadata (tensorstore's record of each array's shape and dtype, read
   without the data) must agree with `_METADATA` and hold floating-point dtypes (the
   caller's `check` runs here when `_METADATA` declared no shapes). Only then are the
   arrays restored, into a target of exactly those shapes and dtypes. Orbax itself
   checks no shapes (a restore into a target of another shape silently returns the
   stored one), so the restored arrays are compared with the declaration again, and
   with the checksum when the folder carries one.
4. Every tensor then passes the checks of the other formats (finite, float32, with
   the float16 / bfloat16 / float64 conversions noted).
Whatever goes wrong is one CheckpointError line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.atomic_files import atomic_new_directory
from weights.errors import CheckpointError
from weights.tensor_checks import MAX_CHECKPOINT_BYTES, FloatConversions, one_line

ORBAX_SUFFIX = ".orbax"
DIGEST_KEY = "tensors_sha256"  # custom metadata: tensors_sha256() of what was written
# A DLN folder has ~20 files (Orbax's OCDBT layout); without OCDBT ~400. Far more
# entries or levels than any checkpoint has are refused before anything is read.
MAX_ORBAX_FILES = 4096
MAX_ORBAX_DEPTH = 8
# _METADATA of a DLN is ~48 KB at 125 tensors; parsed JSON takes several times its size.
MAX_ORBAX_JSON_BYTES = 8 << 20
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
TREE_METADATA = "_METADATA"
STANDARD_HANDLER = "StandardCheckpointHandler"
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


FILE_SUFFIXES = (".pth", ".pt", ".safetensors")  # named as a file: never read as a folder


def is_orbax_path(path: str | os.PathLike) -> bool:
    """An Orbax checkpoint is a folder: a name ending in .orbax, or any existing folder
    not named like a checkpoint file."""
    name = str(path).rstrip("/").lower()
    return name.endswith(ORBAX_SUFFIX) or (Path(path).is_dir() and not name.endswith(FILE_SUFFIXES))


class DeclaredShape:
    """A tensor's shape as Orbax's metadata declares it, before anything is restored."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.ndim = len(shape)


def tensors_sha256(arrays: dict[str, np.ndarray]) -> str:
    """One digest of every tensor (name, dtype, shape and bytes, in name order): Orbax's
    array files carry no checksum, so a folder written here carries this one."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


# ---- 1. the private snapshot -----------------------------------------------------------
def _copy_regular_file(src: Path, dst: Path, budget: int) -> int:
    """Copy one regular file (checked on its descriptor, opened without following a link
    and without blocking); returns its size; refuses one that would exceed `budget`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(src, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"holds {src.name}, which is not a regular file")
        if info.st_size > budget:
            raise _too_big()
        copied = 0
        with open(dst, "wb") as out:
            while True:
                block = os.read(fd, 1 << 20)
                if not block:
                    break
                copied += len(block)
                if copied > budget:
                    raise _too_big()
                out.write(block)
        return copied
    finally:
        os.close(fd)


def _too_big() -> CheckpointError:
    return CheckpointError(f"its files hold more than the {MAX_CHECKPOINT_BYTES:,} bytes a "
                           "checkpoint may have")


def _copy_tree(root: Path, src: Path, dst: Path, depth: int, counts: list[int]) -> None:
    if depth > MAX_ORBAX_DEPTH:
        raise CheckpointError(f"folders nested deeper than {MAX_ORBAX_DEPTH} levels")
    with os.scandir(src) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    for entry in listed:
        counts[0] += 1
        if counts[0] > MAX_ORBAX_FILES:
            raise CheckpointError(f"more than {MAX_ORBAX_FILES:,} entries")
        where = Path(entry.path).relative_to(root)
        if entry.is_symlink():
            raise CheckpointError(f"holds a link, {where} (links inside a checkpoint folder "
                                  "are refused)")
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(dst / entry.name)
            _copy_tree(root, Path(entry.path), dst / entry.name, depth + 1, counts)
        elif entry.is_file(follow_symlinks=False):
            counts[1] += _copy_regular_file(Path(entry.path), dst / entry.name,
                                            MAX_CHECKPOINT_BYTES - counts[1])
        else:
            raise CheckpointError(f"holds {where}, which is not a regular file (a FIFO, "
                                  "socket or device)")


@contextlib.contextmanager
def orbax_snapshot(path: Path) -> Iterator[Path]:
    """A private copy of the folder at `path`, removed afterwards (see the module doc)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such folder" + (" (a dangling link)"
                                                          if path.is_symlink() else ""))
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (an Orbax checkpoint is a folder)")
    tmp = Path(tempfile.mkdtemp(prefix="dln-orbax-"))
    try:
        snapshot = tmp / "checkpoint"
        os.mkdir(snapshot)
        try:
            _copy_tree(path, path, snapshot, 0, [0, 0])
        except OSError as err:
            raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
        yield snapshot
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- 2. Orbax's metadata files, parsed here ----------------------------------------------
def _json_file(path: Path, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise CheckpointError(
                f"no {path.name}: not an Orbax checkpoint folder (a CheckpointManager's "
                "folder holds one checkpoint per step: name that one)")
        return None
    if path.stat().st_size > MAX_ORBAX_JSON_BYTES:
        raise CheckpointError(f"{path.name} is larger than {MAX_ORBAX_JSON_BYTES:,} bytes")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path.name} is not JSON ({one_line(err)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object")
    return data


def _custom_metadata(folder: Path) -> dict[str, str]:
    record = _json_file(folder / CHECKPOINT_METADATA, required=False) or {}
    handler = record.get("item_handlers")
    if handler is not None and not (isinstance(handler, str)
                                    and handler.endswith("." + STANDARD_HANDLER)):
        raise CheckpointError(f"written by {str(handler)[:80]!r}, not Orbax's "
                              "StandardCheckpointer (save with ocp.StandardCheckpointer)")
    custom = record.get("custom_metadata") or {}
    if not isinstance(custom, dict):
        raise CheckpointError("its custom metadata is not a map")
    return {k: v for k, v in custom.items() if isinstance(k, str) and isinstance(v, str)}


def _declared_tree(folder: Path) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    """Tree path (keys as stored) -> the write shape _METADATA declares (None where it
    declares none: Orbax records none for numpy arrays)."""
    tree = _json_file(folder / TREE_METADATA, required=True).get("tree_metadata")
    if not isinstance(tree, dict) or not tree:
        raise CheckpointError(f"{TREE_METADATA} declares no tensors")
    if len(tree) > MAX_ORBAX_FILES:
        raise CheckpointError(f"{TREE_METADATA} declares more than {MAX_ORBAX_FILES:,} tensors")
    declared = {}
    for entry in tree.values():
        keys = entry.get("key_metadata") if isinstance(entry, dict) else None
        value = entry.get("value_metadata") if isinstance(entry, dict) else None
        if not isinstance(keys, list) or not keys or not isinstance(value, dict) or not all(
                isinstance(k, dict) and isinstance(k.get("key"), str) and k.get("key_type") == 2
                for k in keys):
            raise CheckpointError(f"{TREE_METADATA} holds an entry that is not a tensor under "
                                  "a path of names")
        path = tuple(k["key"] for k in keys)
        shape = value.get("write_shape")
        if value.get("value_type") not in ("jax.Array", "np.ndarray") or not (
                shape is None or isinstance(shape, list)
                and all(type(n) is int and n >= 0 for n in shape)):
            raise CheckpointError(f"{TREE_METADATA}: {'.'.join(path)[:200]} is not an array")
        if path in declared:
            raise CheckpointError(f"{TREE_METADATA} declares {'.'.join(path)[:200]} twice")
        declared[path] = None if shape is None else tuple(shape)
    return declared


def tensor_names(paths) -> dict[tuple[str, ...], str]:
    """Stored tree path -> dotted weight name: an NNX state stores each variable's array
    under `value` (nnx.state(model)), a pure dict does not; a Linen-style tree may sit
    under `params`. Both wrappings are taken off when every path has them."""
    paths = list(paths)
    strip_value = all(len(p) > 1 and p[-1] == "value" for p in paths)
    strip_params = all(len(p) > 1 + strip_value and p[0] == "params" for p in paths)
    return {p: ".".join(p[int(strip_params):len(p) - int(strip_value)]) for p in paths}


# ---- 3. and 4. restore ---------------------------------------------------------------------
def _nest(flat: dict[tuple[str, ...], object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _array_metadata(checkpointer, folder: Path, listed: dict, names: dict) -> dict[tuple, tuple]:
    """Path -> (shape, dtype name) from Orbax's array metadata (tensorstore's record of
    each array; nothing is restored), checked against _METADATA's names and shapes."""
    from flax.traverse_util import flatten_dict

    stored = flatten_dict(checkpointer.metadata(folder).item_metadata.tree)
    if set(stored) != set(listed):
        raise CheckpointError(f"Orbax's array metadata and {TREE_METADATA} name different "
                              "tensors")
    out = {}
    for path, meta in stored.items():
        shape = tuple(int(n) for n in meta.shape)
        dtype = np.dtype(meta.dtype).name if meta.dtype is not None else "unknown"
        if listed[path] is not None and shape != listed[path]:
            raise CheckpointError(f"tensor {names[path]!r}: its array metadata says shape "
                                  f"{shape}, {TREE_METADATA} says {listed[path]}")
        if dtype not in FLOAT_DTYPES:
            hint = f" ({RNG_HINT})" if "rngs" in path or dtype.startswith("key") else ""
            raise CheckpointError(f"tensor {names[path]!r} has dtype {dtype}; weights are "
                                  f"floating point{hint}")
        out[path] = (shape, dtype)
    return out


def _restore(checkpointer, folder: Path, declared: dict[tuple, tuple]) -> dict[tuple, np.ndarray]:
    """The arrays, restored into a target of exactly the declared shapes and dtypes, and
    compared with the declaration again (Orbax itself returns whatever is stored)."""
    import jax
    from flax.traverse_util import flatten_dict

    target = _nest({p: jax.ShapeDtypeStruct(shape, np.dtype(dtype))
                    for p, (shape, dtype) in declared.items()})
    try:
        restored = flatten_dict(checkpointer.restore(folder, target))
    except Exception as err:  # noqa: BLE001 - tensorstore on damaged array files
        raise CheckpointError(f"its array data cannot be read ({one_line(err, 120)})") from None
    if set(restored) != set(declared):
        raise CheckpointError("Orbax restored other tensors than it declares")
    out = {}
    for path, value in restored.items():
        value = np.asarray(value)
        if (value.shape, value.dtype.name) != declared[path]:
            raise CheckpointError(f"tensor {'.'.join(path)!r} restored as {value.dtype} "
                                  f"{value.shape}, declared {declared[path][1]} "
                                  f"{declared[path][0]}")
        out[path] = value
    return out


RNG_HINT = "RNG state is not weights: save nnx.state(model, nnx.Param, nnx.BatchStat)"


def _with_rng_hint(check, names):
    """The caller's check, its refusal completed with RNG_HINT when the folder holds an
    NNX module's RNG state (`.rngs.` in a name)."""
    if check is None or not any("rngs" in name.split(".") for name in names):
        return check

    def checked(declared, metadata):
        try:
            check(declared, metadata)
        except CheckpointError as err:
            raise CheckpointError(f"{err} ({RNG_HINT})") from None
    return checked


def load_orbax(path: str | os.PathLike, notes: list[str] | None = None,
               check: Callable[[dict, dict], None] | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (float32, finite, dotted names) and the custom metadata of an Orbax folder.

    check(declared, metadata), when given, sees every tensor's declared shape (as
    DeclaredShape) before anything is restored, and raises CheckpointError to refuse."""
    path = Path(path)
    notes = [] if notes is None else notes
    try:
        import orbax.checkpoint as ocp

        with orbax_snapshot(path) as folder:
            metadata = _custom_metadata(folder)
            listed = _declared_tree(folder)
            names = tensor_names(listed)
            if len(set(names.values())) != len(names):
                raise CheckpointError("two stored tensors have one name")
            check = _with_rng_hint(check, names.values())
            early = check is not None and all(s is not None for s in listed.values())
            if early:  # the shapes _METADATA declares, before tensorstore opens anything
                check({names[p]: DeclaredShape(s) for p, s in listed.items()}, metadata)
            checkpointer = ocp.StandardCheckpointer()
            try:
                declared = _array_metadata(checkpointer, folder, listed, names)
                if check is not None and not early:
                    check({names[p]: DeclaredShape(s) for p, (s, _) in declared.items()},
                          metadata)
                restored = _restore(checkpointer, folder, declared)
            finally:
                checkpointer.close()
        if DIGEST_KEY in metadata and tensors_sha256(
                {names[p]: v for p, v in restored.items()}) != metadata[DIGEST_KEY]:
            raise CheckpointError("its tensors do not match the checksum it was written with "
                                  "(the folder was changed or damaged)")
        conversions = FloatConversions()
        arrays = {names[p]: conversions.to_float32(names[p], v, v.dtype.name)
                  for p, v in restored.items()}
        notes.extend(conversions.notes())
        return arrays, metadata
    except CheckpointError as err:
        raise CheckpointError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - Orbax / tensorstore on hostile bytes
        raise CheckpointError(f"{path}: not a readable Orbax checkpoint ({one_line(err)})") \
            from None


# ---- writing ---------------------------------------------------------------------------------
def is_orbax_checkpoint(path: Path) -> bool:
    """A real folder (not a link) holding Orbax's tree metadata: what --overwrite may replace."""
    return path.is_dir() and not path.is_symlink() and (path / TREE_METADATA).is_file()


def save_orbax(arrays: dict[str, np.ndarray], dst: str | os.PathLike, metadata: dict[str, str],
               overwrite: bool = True) -> None:
    """Write float32 weights (dotted names) as an Orbax checkpoint folder of nnx.Param
    variables, verified by re-reading, published by a rename (see the module doc)."""
    import orbax.checkpoint as ocp

    from weights.nnx_state import state_of_params

    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{dst}: folder {parent} does not exist")
    if (dst.exists() or dst.is_symlink()) and overwrite and not is_orbax_checkpoint(dst):
        raise CheckpointError(f"{dst}: exists and is not an Orbax checkpoint folder; refusing "
                              "to replace it")
    arrays = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in sorted(arrays.items())}
    metadata = {**{str(k): str(v) for k, v in metadata.items()},
                DIGEST_KEY: tensors_sha256(arrays)}
    try:
        with atomic_new_directory(dst, is_orbax_checkpoint if overwrite else None) as written:
            checkpointer = ocp.StandardCheckpointer()
            try:
                checkpointer.save(written, state_of_params(arrays), custom_metadata=metadata)
                checkpointer.wait_until_finished()
            finally:
                checkpointer.close()
            back, back_metadata = load_orbax(written)
            _verify_equal(arrays, back, written)
            if back_metadata != metadata:
                raise CheckpointError(f"{written}: re-read metadata differs from what was "
                                      "written")
    except FileExistsError:
        raise CheckpointError(f"{dst}: exists (use --overwrite to replace it)") from None
    except OSError as err:
        raise CheckpointError(f"{dst}: cannot be written ({err.strerror or err})") from None


def _verify_equal(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], where) -> None:
    if sorted(expected) != sorted(got):
        raise CheckpointError(f"{where}: re-read names differ from what was written")
    for key, value in expected.items():
        other = got[key]
        if other.dtype != value.dtype or other.shape != value.shape or \
                value.tobytes() != other.tobytes():
            raise CheckpointError(f"{where}: re-read tensor {key!r} differs from what was written")
