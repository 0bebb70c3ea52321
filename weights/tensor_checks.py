"""Checks shared by the checkpoint loaders: reading a file's bytes within limits,
tensor dtypes and values, and the type of the stored network config.

Every function raises CheckpointError with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weights.errors import CheckpointError

FLOAT_DTYPES_CONVERTED = ("float16", "bfloat16", "float64")
MAX_CHECKPOINT_BYTES = 2 << 30   # a dim-64 DLN is 2.8 MB; 2 GiB leaves room for wide ones


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint_bytes(path: Path) -> bytes:
    """The whole file, if it is a readable, non-empty regular file within the size limit.

    Read by core.state_files.read_small_file: opened non-blocking and checked on the
    descriptor, so a FIFO swapped in after the checks on the name, or a regular file
    whose reads block (/proc/kmsg), is one line instead of a hang."""
    from core.state_files import StateFileError, read_small_file

    if not path.exists():
        raise CheckpointError(f"{path}: no such file" + (" (a dangling link)"
                                                        if path.is_symlink() else ""))
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: {size:,} bytes is more than the "
                              f"{MAX_CHECKPOINT_BYTES:,} a checkpoint may have")
    try:
        data = read_small_file(path, MAX_CHECKPOINT_BYTES)
    except StateFileError as err:  # changed since the checks above: its own words
        raise CheckpointError(f"{path}: cannot be read ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise CheckpointError(f"{path}: empty file")
    return data


class FloatConversions:
    """Collects the dtype conversions of one load and words them as notes."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.largest_change = 0.0

    def to_float32(self, name: str, array: np.ndarray, dtype: str) -> np.ndarray:
        """A finite float32 copy of `array` (whose original dtype is `dtype`)."""
        if dtype not in ("float32",) + FLOAT_DTYPES_CONVERTED:
            raise CheckpointError(f"tensor {name!r} has dtype {dtype}; only floating-point "
                                  "tensors are read as weights")
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise CheckpointError(f"tensor {name!r} holds {bad} NaN or Inf value(s)")
        if dtype == "float64":
            peak = float(np.max(np.abs(array), initial=0.0))
            if peak > float(np.finfo(np.float32).max):
                raise CheckpointError(f"tensor {name!r} holds float64 values up to {peak:.3g}, "
                                      "beyond the float32 range")
            out = array.astype(np.float32)
            change = float(np.max(np.abs(out.astype(np.float64) - array), initial=0.0))
            self.largest_change = max(self.largest_change, change)
        else:
            out = np.array(array, dtype=np.float32, copy=True)
        if dtype != "float32":
            self.count[dtype] = self.count.get(dtype, 0) + 1
        return np.require(out, requirements="C")  # (ascontiguousarray would make 0-d 1-d)

    def notes(self) -> list[str]:
        lines = []
        for dtype, n in sorted(self.count.items()):
            if dtype == "float64":
                how = ("exact: every value was already a float32 value"
                       if self.largest_change == 0 else
                       f"rounded to nearest, largest change {self.largest_change:.2g}; at most "
                       "2^-24 relative, the rounding of float32 arithmetic itself")
            else:
                how = f"exact: every {dtype} value is a float32 value"
            lines.append(f"converted {n} {dtype} tensor(s) to float32 ({how})")
        return lines


def config_text(value, where) -> str:
    """The stored DLN config, which must be text; it is parsed (once) by whoever needs
    the network it describes (weights.convert)."""
    if not isinstance(value, str):
        raise CheckpointError(f"{where}: stored network config is not text")
    return value
