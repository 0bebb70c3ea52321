"""Reading and writing checkpoint files safely.

Reading (see SECURITY.md):
- A file is read into memory once (regular files up to MAX_CHECKPOINT_BYTES only),
  so every check below looks at the very bytes that are finally parsed.
- .pth files are pickles, which can run code. Two independent gates stand before
  any object is built: weights.pickle_guard walks the opcodes without running them
  and refuses any import outside a short allowlist (tensors, storages, OrderedDict),
  then torch's weights-only unpickler (the one `torch.load(weights_only=True)` uses)
  unpickles exactly the scanned bytes, with meta storages (weights.torch_reader):
  names, shapes and dtypes are checked before any tensor is materialised.
- .safetensors files hold no code; the header is parsed as JSON and checked here:
  every offset must hold its shape, and the tensors must tile the data exactly.
  Callers see the declared shapes before any tensor is materialised (the `check`
  argument of both loaders).
- Every tensor must be floating point and finite. float16 and bfloat16 widen to
  float32 exactly; float64 is rounded to nearest float32 (a relative change of at
  most 2**-24, the rounding float32 arithmetic itself makes, so a note says so and
  no more). Each conversion is reported in `notes`.
- Whatever goes wrong, the loaders raise CheckpointError with one line: any other
  exception a parser raises on hostile bytes is caught at this boundary.

Writing: every file goes to a temporary file in the destination folder
(core.atomic_files, the project's one atomic writer), is flushed to disk, re-read
and compared bit for bit, and only then renamed over the destination (or, without
overwrite, hard-linked, which fails rather than replace a file), so a failed or
interrupted write leaves nothing behind. Output bytes
depend only on the content (no time stamps, no temporary names, sorted headers).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.atomic_files import atomic_path
from weights.errors import CheckpointError
from weights.pickle_guard import UnsafePickleError
from weights.tensor_checks import FLOAT_DTYPES_CONVERTED
from weights.tensor_checks import (FloatConversions, config_text, one_line,
                                   read_checkpoint_bytes)
from weights.safetensors_format import (  # noqa: F401 (safetensors_bytes re-exported)
    is_safetensors_bytes, parse_safetensors, safetensors_bytes, safetensors_header)
from weights.state_dict import WRAPPER_KEYS, require_dln_keys, strip_dataparallel

# 2**28 float32 values are 1 GiB: a DLN of width ~1200, far past any trained one (a
# dim-64 DLN has 700,586 values); nothing larger is materialised from a checkpoint.
MAX_TENSOR_ELEMENTS = 1 << 28


def sha256_of(path: Path) -> str:
    """The sha256 of a regular file's bytes, read in 1 MiB blocks. Opened non-blocking
    and checked on the descriptor, as every checkpoint read is: a FIFO or a file whose
    reads block (/proc/kmsg) is an OSError at once, never a hang."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        digest = hashlib.sha256()
        for block in iter(lambda: os.read(fd, 1 << 20), b""):
            digest.update(block)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _check_plain_tensor(name: str, value, torch) -> None:
    """A plain dense torch tensor, not another object, a sparse or a quantised tensor."""
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"entry {name!r} holds a value of type {type(value).__name__}, "
                              "not a tensor")
    if value.layout != torch.strided or value.is_quantized:
        raise CheckpointError(f"tensor {name!r} is not a plain dense tensor")


def _tensor_to_float32(name: str, value, conversions: FloatConversions) -> np.ndarray:
    import torch  # the torch side of the file format only

    _check_plain_tensor(name, value, torch)
    dtype = str(value.dtype).replace("torch.", "")
    if dtype == "bfloat16":  # numpy has no bfloat16; widening is exact
        value = value.to(torch.float32)
    array = value.detach().cpu().contiguous().numpy()
    return conversions.to_float32(name, array, dtype)


def load_pth(path: str | os.PathLike, notes: list[str] | None = None,
             check: Callable[[dict, str | None], None] | None = None,
             expect_dln: bool = True) -> tuple[dict[str, np.ndarray], str | None]:
    """A .pth state dict as torch-named float32 numpy arrays, plus the DLN config JSON
    that `dln convert` stores in the dict's `_metadata`, when present.

    Accepts the authors' DataParallel files (`module.` prefix), plain state dicts,
    and state dicts wrapped under `state_dict` / `model` (and similar) keys; both
    the zip format of torch.save and the legacy one.

    check(declared, config_json), when given, sees the state dict (prefix stripped)
    as meta tensors, shapes and dtypes only, before any tensor is materialised, and
    raises CheckpointError to refuse it (`weights.convert` compares it with the
    network's tensor table there).
    """
    path = Path(path)
    notes = [] if notes is None else notes
    data = read_checkpoint_bytes(path)
    try:
        return _parse_pth(data, path, notes, check, expect_dln)
    except UnsafePickleError as err:
        if err.what == "torch.storage.UntypedStorage":  # torch.save's, for no other reason
            raise CheckpointError(
                f"{path}: refused: it stores tensors as torch.storage.UntypedStorage, which "
                "torch.save writes for dtypes without a typed storage (float8, uint16-64), "
                "none of them weights this reader takes; nothing in it was run (save the "
                "weights as float32, float16, bfloat16 or float64)") from None
        raise CheckpointError(
            f"{path}: refused: its pickle asks for {err.what}, which is neither a tensor nor "
            "a plain container; nothing in it was run (the file may be malicious; a "
            "checkpoint should hold only a state dict)") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}" if str(path) not in str(err) else str(err)) \
            from None
    except Exception as err:  # noqa: BLE001 - every parser failure is the file's fault
        hint = " (it is a safetensors file: name it .safetensors)" if is_safetensors_bytes(data) \
            else f" ({one_line(err)})"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint{hint}") from None


def _parse_pth(data: bytes, path: Path, notes: list[str], check, expect_dln: bool = True):
    import torch

    from weights.torch_reader import declare

    declared = declare(data)  # both gates; meta tensors only, nothing materialised yet
    obj = declared.obj
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"holds a {type(obj).__name__}"
                              + (" that is empty" if isinstance(obj, dict) else "")
                              + ", not a state dict")
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError("state dict keys are not all strings")
    metadata = getattr(obj, "_metadata", None)
    config_json = None
    if isinstance(metadata, dict):
        root = metadata.get("", {})
        if isinstance(root, dict) and "dln_config" in root:
            config_json = config_text(root["dln_config"], path)
    state = strip_dataparallel(obj)
    if expect_dln:  # False: any model's state dict (`dln check --weights`)
        require_dln_keys(state)
    else:  # BatchNorm's integer training counters: no weights, never converted
        state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    for name, value in state.items():
        _check_declared_tensor(name, value, torch)
    if check is not None:
        check(state, config_json)
    _check_materialised_size(state, declared)
    conversions = FloatConversions()
    arrays = {k: _tensor_to_float32(k, declared.materialise(k, v), conversions)
              for k, v in state.items()}
    notes.extend(conversions.notes())
    return arrays, config_json


def _check_declared_tensor(name: str, value, torch) -> None:
    """Type, layout and dtype of one declared (meta) tensor, before it is materialised."""
    _check_plain_tensor(name, value, torch)
    dtype = str(value.dtype).replace("torch.", "")
    if dtype not in ("float32",) + FLOAT_DTYPES_CONVERTED:
        raise CheckpointError(f"tensor {name!r} has dtype {dtype}; only floating-point "
                              "tensors are read as weights")


def _check_materialised_size(state: dict, declared) -> None:
    """Refuse, before any memory is spent, tensors that hold more values than the file
    stores for them: each view must lie inside its storage, and all tensors together
    may not have more elements than their distinct storages (a stride-0 expand of one
    stored value to a huge shape is the trick this stops), nor more than
    MAX_TENSOR_ELEMENTS."""
    total, stored = 0, {}
    for name, value in state.items():
        storage = declared.check_view(name, value)
        stored[storage.key] = storage.numel
        total += value.numel()
    if total > sum(stored.values()):
        raise CheckpointError(
            f"refused: its tensors declare {total:,} values but the file stores only "
            f"{sum(stored.values()):,} for them (strides that repeat stored values)")
    if total > MAX_TENSOR_ELEMENTS:
        raise CheckpointError(f"refused: {total:,} values is more than the "
                              f"{MAX_TENSOR_ELEMENTS:,} a DLN checkpoint may hold here")


@contextlib.contextmanager
def atomic_destination(dst: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside dst; publish it as dst only if the block succeeds
    (core.atomic_files.atomic_path: fsync, usual file mode, clean-up on any failure).
    overwrite=False refuses an existing dst, also one that appears meanwhile."""
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst}: is a folder, not a file name")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{dst}: folder {parent} does not exist")
    try:
        with atomic_path(dst, overwrite=overwrite) as tmp:
            yield tmp
    except FileExistsError:
        raise CheckpointError(f"{dst}: exists (use --overwrite to replace it)") from None
    except OSError as err:
        raise CheckpointError(f"{dst}: cannot be written ({err.strerror or err})") from None


def save_pth(state: dict[str, np.ndarray], dst: str | os.PathLike, config_json: str,
             dataparallel: bool = False, overwrite: bool = True) -> None:
    """Write a torch state dict (optionally `module.`-prefixed), verified after writing.

    torch.save goes to memory first: written to a named file it would take the
    (random) temporary file name as its archive folder, and the bytes would differ
    from run to run.
    """
    from collections import OrderedDict

    import torch

    prefix = "module." if dataparallel else ""
    out = OrderedDict((prefix + k, torch.from_numpy(np.ascontiguousarray(v, np.float32)).clone())
                      for k, v in state.items())
    out._metadata = OrderedDict([("", {"version": 1, "dln_config": config_json})])  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.save(out, buffer)
    with atomic_destination(Path(dst), overwrite) as tmp:
        tmp.write_bytes(buffer.getvalue())
        back, back_config = load_pth(tmp)
        expected = {k: v.numpy() for k, v in strip_dataparallel(out).items()}
        _verify_equal(expected, back, tmp)
        if back_config != config_json:
            raise CheckpointError(f"{tmp}: re-read config differs from what was written")


def _verify_equal(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], where) -> None:
    if sorted(expected) != sorted(got):
        raise CheckpointError(f"{where}: re-read keys differ from what was written")
    for key, value in expected.items():
        other = got[key]
        if other.dtype != value.dtype or other.shape != value.shape or \
                value.tobytes() != other.tobytes():
            raise CheckpointError(f"{where}: re-read tensor {key!r} differs from what was written")


def save_safetensors(arrays: dict[str, np.ndarray], dst: str | os.PathLike,
                     metadata: dict[str, str], overwrite: bool = True) -> None:
    """Write a safetensors file atomically; the safetensors library re-reads it and
    every tensor and the metadata must come back bit for bit."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    arrays = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in sorted(arrays.items())}
    with atomic_destination(Path(dst), overwrite) as tmp:
        tmp.write_bytes(safetensors_bytes(arrays, metadata))
        _verify_equal(arrays, load_file(str(tmp)), tmp)
        with safe_open(str(tmp), framework="numpy") as fh:
            back = dict(fh.metadata() or {})
        if back != {str(k): str(v) for k, v in metadata.items()}:
            raise CheckpointError(f"{tmp}: re-read metadata differs from what was written")


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file (CheckpointError if it has no valid header)."""
    path = Path(path)
    try:
        return safetensors_header(read_checkpoint_bytes(path))[1]
    except CheckpointError as err:
        raise CheckpointError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(err)})") \
            from None


def load_safetensors(path: str | os.PathLike, notes: list[str] | None = None,
                     check: Callable[[dict, dict], None] | None = None,
                     skip_integers: bool = False
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (float32, finite) and the header metadata of a safetensors file.

    check(declared, metadata), when given, sees every tensor's declared shape (as
    DeclaredArray) before any is materialised, and raises CheckpointError to refuse.
    skip_integers: integer tensors (counters, index buffers) are left out (named in
    notes) instead of refused.
    """
    path = Path(path)
    notes = [] if notes is None else notes
    data = read_checkpoint_bytes(path)
    try:
        return parse_safetensors(data, path, notes, check, skip_integers)
    except CheckpointError as err:
        if data.startswith((b"PK\x03\x04", b"\x80\x02")):
            raise CheckpointError(f"{path}: not a safetensors file: it looks like a PyTorch "
                                  "checkpoint (name it .pth)") from None
        raise CheckpointError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - every parser failure is the file's fault
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(err)})") \
            from None


def is_safetensors_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".safetensors")
