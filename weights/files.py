"""Reading and writing checkpoint files safely.

- .pth files are pickles. They are opened with `torch.load(weights_only=True)`,
  whose unpickler only rebuilds tensors and plain containers: a pickle that asks
  for anything else (os.system, eval, a class) is refused before it can run.
- .safetensors files hold no code at all; their JSON header is checked.
- Every write goes to a temporary file in the destination folder, is re-read and
  compared bit for bit, and only then renamed over the destination: a failed or
  interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from weights.errors import CheckpointError
from weights.state_dict import WRAPPER_KEYS, strip_dataparallel

FLOAT_DTYPES_CONVERTED = ("float16", "bfloat16", "float64")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file")


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unsafe_reason(err: BaseException) -> str | None:
    """Name what a refused weights-only unpickle asked for, if that was the failure."""
    text = str(err)
    if "Weights only load failed" not in text and "Unsupported global" not in text \
            and "Unsupported operand" not in text:
        return None
    for line in text.splitlines():
        line = line.strip()
        if "Unsupported global" in line or "Unsupported operand" in line \
                or "Unsupported class" in line:
            return line.split(":", 1)[-1].strip()
    return "an object other than tensors and plain containers"


def sanitize(name: str, value, notes: list[str]) -> np.ndarray:
    """A float32 numpy copy of one tensor; other float dtypes are converted with a note,
    anything else, or a non-finite value, is refused."""
    import torch  # the torch side of the file format only

    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"entry {name!r} is a {type(value).__name__}, not a tensor")
    dtype = str(value.dtype).replace("torch.", "")
    if dtype != "float32":
        if dtype not in FLOAT_DTYPES_CONVERTED:
            raise CheckpointError(f"tensor {name!r} has dtype {dtype}; DLN weights are float")
        notes.append(f"converted {dtype} tensors to float32")
        value = value.to(torch.float32)
    array = value.detach().cpu().contiguous().numpy().copy()
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise CheckpointError(f"tensor {name!r} holds {bad} NaN or Inf values")
    return array


def load_pth(path: str | os.PathLike, notes: list[str] | None = None
             ) -> tuple[dict[str, np.ndarray], str | None]:
    """A .pth state dict as torch-named float32 numpy arrays, plus the DLN config JSON
    that `dln convert` stores in the dict's `_metadata`, when present.

    Accepts the authors' DataParallel files (`module.` prefix), plain state dicts,
    and state dicts wrapped under `state_dict` / `model` (and similar) keys.
    """
    import pickle

    import torch

    path = Path(path)
    notes = [] if notes is None else notes
    _check_readable(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unsafe_reason(err)
        if reason is not None:
            raise CheckpointError(
                f"{path}: refused: the pickle asks for {reason}, which a weights-only load "
                "does not run (the file may be malicious)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(err)})") \
            from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError, IndexError, UnicodeDecodeError, MemoryError,
            OverflowError, AssertionError, ImportError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(err)})") \
            from None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: state dict keys are not all strings")
    metadata = getattr(obj, "_metadata", None)
    config_json = None
    if isinstance(metadata, dict):
        root = metadata.get("", {})
        if isinstance(root, dict) and isinstance(root.get("dln_config"), str):
            config_json = root["dln_config"]
    state = {k: sanitize(k, v, notes) for k, v in strip_dataparallel(obj).items()}
    return state, config_json


@contextlib.contextmanager
def atomic_destination(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside dst; rename it onto dst only if the block succeeds."""
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst}: is a folder, not a file name")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{dst}: folder {parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_pth(state: dict[str, np.ndarray], dst: str | os.PathLike, config_json: str,
             dataparallel: bool = False) -> None:
    """Write a torch state dict (optionally `module.`-prefixed), verified after writing."""
    from collections import OrderedDict

    import torch

    prefix = "module." if dataparallel else ""
    out = OrderedDict((prefix + k, torch.from_numpy(np.ascontiguousarray(v)).clone())
                      for k, v in state.items())
    out._metadata = OrderedDict([("", {"version": 1, "dln_config": config_json})])  # type: ignore[attr-defined]

    def verify(tmp: Path) -> None:
        back = torch.load(tmp, map_location="cpu", weights_only=True)
        _verify_equal({k: v.numpy() for k, v in out.items()},
                      {k: v.numpy() for k, v in back.items()}, tmp)

    with atomic_destination(Path(dst)) as tmp:
        torch.save(out, tmp)
        verify(tmp)


def _verify_equal(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], where) -> None:
    if sorted(expected) != sorted(got):
        raise CheckpointError(f"{where}: re-read keys differ from what was written")
    for key, value in expected.items():
        other = got[key]
        if other.dtype != value.dtype or other.shape != value.shape or \
                value.tobytes() != other.tobytes():
            raise CheckpointError(f"{where}: re-read tensor {key!r} differs from what was written")


def save_safetensors(arrays: dict[str, np.ndarray], dst: str | os.PathLike,
                     metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically and verify every tensor bit for bit."""
    from safetensors.numpy import load_file, save_file

    arrays = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in sorted(arrays.items())}
    with atomic_destination(Path(dst)) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)
        _verify_equal(arrays, load_file(str(tmp)), tmp)
        if read_safetensors_metadata(tmp) != metadata:
            raise CheckpointError(f"{tmp}: re-read metadata differs from what was written")


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return dict(fh.metadata() or {})


def load_safetensors(path: str | os.PathLike, notes: list[str] | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (float32, finite) and the header metadata of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    notes = [] if notes is None else notes
    _check_readable(path)
    try:
        metadata = read_safetensors_metadata(path)
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError, MemoryError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(err)})") \
            from None
    arrays = {}
    for key, value in raw.items():
        dtype = str(value.dtype)
        if dtype != "float32":
            if dtype not in FLOAT_DTYPES_CONVERTED:
                raise CheckpointError(f"tensor {key!r} has dtype {dtype}; DLN weights are float")
            notes.append(f"converted {dtype} tensors to float32")
            value = value.astype(np.float32)
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"tensor {key!r} holds NaN or Inf values")
        arrays[key] = value
    return arrays, metadata


def is_safetensors_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".safetensors")


