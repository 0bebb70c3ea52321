"""Reading and writing checkpoint files safely.

Reading (see SECURITY.md):
- A file is read into memory once (regular files up to MAX_CHECKPOINT_BYTES only),
  so every check below looks at the very bytes that are finally parsed.
- .pth files are pickles, which can run code. Two independent gates stand before
  any object is built: weights.pickle_guard walks the opcodes without running them
  and refuses any import outside a short allowlist (tensors, storages, OrderedDict),
  then `torch.load(weights_only=True)` unpickles with torch's restricted unpickler.
- .safetensors files hold no code; the header is parsed as JSON and the tensors by
  the safetensors library, which checks every offset.
- Every tensor must be floating point and finite. float16 and bfloat16 widen to
  float32 exactly; float64 is rounded to nearest float32 (a relative change of at
  most 2**-24, the rounding float32 arithmetic itself makes, so a note says so and
  no more). Each conversion is reported in `notes`.
- Whatever goes wrong, the loaders raise CheckpointError with one line: any other
  exception a parser raises on hostile bytes is caught at this boundary.

Writing: every file goes to a temporary file in the destination folder, is
flushed to disk, re-read and compared bit for bit, and only then renamed over the
destination, so a failed or interrupted write leaves nothing behind. Output bytes
depend only on the content (no time stamps, no temporary names, sorted headers).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from weights.errors import CheckpointError
from weights.pickle_guard import UnsafePickleError, check_torch_file
from weights.tensor_checks import FLOAT_DTYPES_CONVERTED  # noqa: F401 (re-exported)
from weights.tensor_checks import (FloatConversions, check_config_json, one_line,
                                   read_checkpoint_bytes)
from weights.state_dict import WRAPPER_KEYS, require_dln_keys, strip_dataparallel

MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own header limit
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "bfloat16"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sanitize(name: str, value, notes: list[str]) -> np.ndarray:
    """A finite float32 numpy copy of one torch tensor (conversions noted in notes)."""
    conversions = FloatConversions()
    out = _tensor_to_float32(name, value, conversions)
    notes.extend(conversions.notes())
    return out


def _tensor_to_float32(name: str, value, conversions: FloatConversions) -> np.ndarray:
    import torch  # the torch side of the file format only

    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"entry {name!r} holds a value of type {type(value).__name__}, "
                              "not a tensor")
    if value.layout != torch.strided or value.is_quantized:
        raise CheckpointError(f"tensor {name!r} is not a plain dense tensor")
    dtype = str(value.dtype).replace("torch.", "")
    if dtype == "bfloat16":  # numpy has no bfloat16; widening is exact
        value = value.to(torch.float32)
    array = value.detach().cpu().contiguous().numpy()
    return conversions.to_float32(name, array, dtype)


def load_pth(path: str | os.PathLike, notes: list[str] | None = None
             ) -> tuple[dict[str, np.ndarray], str | None]:
    """A .pth state dict as torch-named float32 numpy arrays, plus the DLN config JSON
    that `dln convert` stores in the dict's `_metadata`, when present.

    Accepts the authors' DataParallel files (`module.` prefix), plain state dicts,
    and state dicts wrapped under `state_dict` / `model` (and similar) keys; both
    the zip format of torch.save and the legacy one.
    """
    path = Path(path)
    notes = [] if notes is None else notes
    data = read_checkpoint_bytes(path)
    try:
        return _parse_pth(data, path, notes)
    except UnsafePickleError as err:
        raise CheckpointError(
            f"{path}: refused: its pickle asks for {err.what}, which is neither a tensor nor "
            "a plain container; nothing in it was run (the file may be malicious; a "
            "checkpoint should hold only a state dict)") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}" if str(path) not in str(err) else str(err)) \
            from None
    except Exception as err:  # noqa: BLE001 - every parser failure is the file's fault
        hint = " (it is a safetensors file: name it .safetensors)" if _is_safetensors(data) \
            else f" ({one_line(err)})"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint{hint}") from None


def _parse_pth(data: bytes, path: Path, notes: list[str]):
    import torch

    check_torch_file(data)  # static gate: raises before anything is unpickled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
            config_json = check_config_json(root["dln_config"], path)
    state = strip_dataparallel(obj)
    require_dln_keys(state)
    conversions = FloatConversions()
    arrays = {k: _tensor_to_float32(k, v, conversions) for k, v in state.items()}
    notes.extend(conversions.notes())
    return arrays, config_json


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_destination(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside dst; rename it onto dst only if the block succeeds."""
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst}: is a folder, not a file name")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{dst}: folder {parent} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise CheckpointError(f"{dst}: cannot write in {parent} ({err.strerror or err})") \
            from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dst)
    except OSError as err:
        raise CheckpointError(f"{dst}: cannot be written ({err.strerror or err})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def save_pth(state: dict[str, np.ndarray], dst: str | os.PathLike, config_json: str,
             dataparallel: bool = False) -> None:
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
    with atomic_destination(Path(dst)) as tmp:
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


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A float32 safetensors file as bytes, the same bytes for the same content.

    Written here rather than by the safetensors library, whose header lists the
    metadata in an order that changes from process to process.
    """
    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    blobs, offset = [], 0
    for name in sorted(arrays):
        blob = np.ascontiguousarray(arrays[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": [int(n) for n in np.shape(arrays[name])],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def save_safetensors(arrays: dict[str, np.ndarray], dst: str | os.PathLike,
                     metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically; the safetensors library re-reads it and
    every tensor and the metadata must come back bit for bit."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    arrays = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in sorted(arrays.items())}
    with atomic_destination(Path(dst)) as tmp:
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
        return _safetensors_header(read_checkpoint_bytes(path))[1]
    except CheckpointError as err:
        raise CheckpointError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(err)})") \
            from None


def _safetensors_header(data: bytes) -> tuple[dict, dict[str, str]]:
    if len(data) < 8:
        raise CheckpointError("not a safetensors file: shorter than its 8-byte header size")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, MAX_SAFETENSORS_HEADER):
        raise CheckpointError(f"not a safetensors file: header size {size:,} does not fit "
                              f"in {len(data):,} bytes")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"not a safetensors file: corrupt header ({one_line(err)})") \
            from None
    if not isinstance(header, dict):
        raise CheckpointError("not a safetensors file: its header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError("safetensors metadata is not a map of text to text")
    return header, metadata


def load_safetensors(path: str | os.PathLike, notes: list[str] | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (float32, finite) and the header metadata of a safetensors file."""
    path = Path(path)
    notes = [] if notes is None else notes
    data = read_checkpoint_bytes(path)
    try:
        return _parse_safetensors(data, path, notes)
    except CheckpointError as err:
        if data.startswith((b"PK\x03\x04", b"\x80\x02")):
            raise CheckpointError(f"{path}: not a safetensors file: it looks like a PyTorch "
                                  "checkpoint (name it .pth)") from None
        raise CheckpointError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - every parser failure is the file's fault
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(err)})") \
            from None


def _is_safetensors(data: bytes) -> bool:
    try:
        _safetensors_header(data)
        return True
    except Exception:  # noqa: BLE001
        return False


def _parse_safetensors(data: bytes, path: Path, notes: list[str]):
    from safetensors import deserialize

    _header, metadata = _safetensors_header(data)
    if "config" in metadata:
        check_config_json(metadata["config"], path)
    conversions = FloatConversions()
    arrays = {}
    for name, view in deserialize(data):  # the library validates offsets and sizes
        code = view["dtype"]
        if code not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {code}; DLN weights are "
                                  "floating point")
        shape = tuple(int(n) for n in view["shape"])
        if code == "BF16":  # bfloat16 is the top half of a float32: widen bit-exactly
            bits = np.frombuffer(view["data"], dtype="<u2").astype(np.uint32) << 16
            array, dtype = bits.view(np.float32).reshape(shape), "bfloat16"
        else:
            array = np.frombuffer(view["data"], dtype=SAFETENSORS_DTYPES[code]).reshape(shape)
            dtype = array.dtype.name
        arrays[name] = conversions.to_float32(name, array, dtype)
    notes.extend(conversions.notes())
    return arrays, metadata


def is_safetensors_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".safetensors")
