"""The safetensors format, read and written here rather than by the library.

Written: the same bytes for the same content (sorted header, no time stamps).
Read: the header is parsed and every tensor's byte range checked against its
dtype and shape, and the ranges must tile the data section exactly, before any
tensor is built; a caller's `check` sees the declared shapes first, so nothing it
does not expect is materialised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from weights.errors import CheckpointError
from weights.tensor_checks import FloatConversions, one_line

# A DLN's header is ~15 KB (125 tensors), an optimizer file's ~40 KB. The library allows
# 100 MB, but parsed JSON can take ten times its size in memory; 8 MiB keeps that small.
MAX_SAFETENSORS_HEADER = 8 << 20
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "bfloat16"}
SAFETENSORS_ITEMSIZE = {"F32": 4, "F16": 2, "F64": 8, "BF16": 2}
# integer and boolean tensors (BatchNorm's num_batches_tracked, Swin's
# relative_position_index): never weights; skipped on request (skip_integers)
INDEX_ITEMSIZE = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


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


def safetensors_header(data: bytes) -> tuple[dict, dict[str, str]]:
    if len(data) < 8:
        raise CheckpointError("not a safetensors file: shorter than its 8-byte header size")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, MAX_SAFETENSORS_HEADER):
        raise CheckpointError(f"not a safetensors file: header size {size:,} does not fit "
                              f"in {len(data):,} bytes")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"), object_pairs_hook=_unique_keys)
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


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all different. Python's json keeps the last of two
    equal keys, other readers refuse the file or keep the first: a tensor named twice
    could load as different weights elsewhere, so it is refused here."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return result


def is_safetensors_bytes(data: bytes) -> bool:
    try:
        safetensors_header(data)
        return True
    except Exception:  # noqa: BLE001
        return False


class DeclaredArray:
    """A tensor's declared dtype and shape, standing in for it until it is materialised."""

    def __init__(self, code: str, shape: tuple[int, ...], begin: int, end: int):
        self.code, self.shape, self.begin, self.end = code, shape, begin, end
        self.ndim = len(shape)


def _declared_tensors(header: dict, body_size: int, skipped: list[str] | None = None
                      ) -> dict[str, DeclaredArray]:
    """Every tensor the header declares, after checking that their byte ranges have the
    sizes their shapes imply and tile the data section exactly (no gap, no overlap).
    skipped: when given, integer tensors are left out (their names appended) instead of
    refused."""
    def unreadable(reason: str) -> CheckpointError:
        return CheckpointError(f"not a readable safetensors file: {reason}")

    declared = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            raise unreadable(f"tensor {name!r} has no dtype")
        code, shape, offsets = entry["dtype"], entry.get("shape"), entry.get("data_offsets")
        index = skipped is not None and code in INDEX_ITEMSIZE
        if code not in SAFETENSORS_DTYPES and not index:
            raise CheckpointError(f"tensor {name!r} has dtype {code}; only floating-point "
                                  "tensors are read as weights")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise unreadable(f"tensor {name!r} has no valid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or \
                not all(type(n) is int for n in offsets):
            raise unreadable(f"tensor {name!r} has no valid data offsets")
        begin, end = offsets
        itemsize = INDEX_ITEMSIZE[code] if index else SAFETENSORS_ITEMSIZE[code]
        if not 0 <= begin <= end <= body_size or end - begin != math.prod(shape) * itemsize:
            raise unreadable(f"tensor {name!r}: data offsets {offsets} do not hold its "
                             f"shape {shape} within {body_size:,} bytes")
        declared[name] = DeclaredArray(code, tuple(shape), begin, end)
    position = 0
    for item in sorted(declared.values(), key=lambda d: (d.begin, d.end)):
        if item.begin != position:
            raise unreadable("its tensors' data overlap or leave gaps")
        position = item.end
    if position != body_size:
        raise unreadable(f"{body_size - position:,} bytes after its last tensor")
    for name in [n for n, d in declared.items() if d.code in INDEX_ITEMSIZE]:
        del declared[name]
        skipped.append(name)
    return declared


def parse_safetensors(data: bytes, path: Path, notes: list[str], check=None,
                      skip_integers: bool = False):
    header, metadata = safetensors_header(data)  # metadata: text to text, checked there
    body_start = 8 + int.from_bytes(data[:8], "little")
    skipped: list[str] | None = [] if skip_integers else None
    declared = _declared_tensors(header, len(data) - body_start, skipped)
    if skipped:
        notes.append(f"{len(skipped)} integer tensors not read as weights: "
                     f"{', '.join(sorted(skipped)[:8])}" + (" ..." if len(skipped) > 8 else ""))
    if check is not None:
        check(declared, metadata)
    body = memoryview(data)[body_start:]
    conversions = FloatConversions()
    arrays = {}
    for name, item in declared.items():
        raw = body[item.begin:item.end]
        if item.code == "BF16":  # bfloat16 is the top half of a float32: widen bit-exactly
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array, dtype = bits.view(np.float32).reshape(item.shape), "bfloat16"
        else:
            array = np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[item.code]).reshape(item.shape)
            dtype = array.dtype.name
        arrays[name] = conversions.to_float32(name, array, dtype)
    notes.extend(conversions.notes())
    return arrays, metadata
