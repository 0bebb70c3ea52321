"""Reading a torch.save file in two passes, so nothing is built before it is checked.

`declare(data)` unpickles the checkpoint with torch's weights-only unpickler (the
one `torch.load(weights_only=True)` uses), but every storage it asks for is a
*meta* storage: tensors come out with their declared shapes, strides and dtypes
and no memory behind them. The pickle it unpickles is the very bytes
weights.pickle_guard scanned: for a zip, the `data.pkl` record as torch's own zip
reader returns it (after the archive passed the zip structure rule and both zip
readers returned the same bytes for every entry); for the legacy format, each of
its five pickles as the byte range the scan walked.

Every storage the pickle declares must be stored whole: a zip record of exactly
the declared size, or in the legacy format a record in the storage list whose
element count equals the declaration (a storage declared but absent from that
list would be allocated and never filled: heap garbage).

`Declared.materialise(tensor)` then builds one real tensor from its storage's
stored bytes, after checking that its view lies inside the storage. Callers
compare names, shapes and dtypes with what they expect first and materialise only
what they need, so a tiny file that declares a huge tensor (a stride-0 `expand`
of one stored value) is refused before any memory is spent on it.
"""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import warnings
import zipfile

from weights.errors import CheckpointError
from weights.pickle_guard import ZIP_MAGIC, check_torch_file, scan_pickle_at

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


@dataclasses.dataclass(frozen=True)
class StoredStorage:
    key: str
    dtype: object      # torch.dtype
    numel: int         # elements, as declared
    start: int = -1    # legacy format: where its bytes begin in the file


def _unreadable(reason: str) -> CheckpointError:
    return CheckpointError(f"not a readable PyTorch checkpoint: {reason}")


class Declared:
    """The unpickled object (meta tensors) and the storages the file declares."""

    def __init__(self, obj, storages: dict[str, StoredStorage], by_cdata: dict[int, str],
                 record_reader=None, data: bytes = b"", big_endian: bool = False):
        self.obj = obj
        self.storages = storages
        self._by_cdata = by_cdata
        self._read_record = record_reader
        self._data = data
        self._big_endian = big_endian
        self._flat: dict[str, object] = {}  # storages already read, by key

    def storage_of(self, tensor) -> StoredStorage:
        key = self._by_cdata.get(tensor.untyped_storage()._cdata)
        if key is None:
            raise CheckpointError("a tensor whose storage is not stored in the file")
        return self.storages[key]

    def check_view(self, name: str, tensor) -> StoredStorage:
        """The tensor's storage, after checking that its declared view lies inside it."""
        stored = self.storage_of(tensor)
        if tensor.dtype != stored.dtype:
            raise CheckpointError(f"tensor {name!r} is {tensor.dtype} over a {stored.dtype} "
                                  "storage")
        sizes, strides, offset = tuple(tensor.shape), tuple(tensor.stride()), \
            int(tensor.storage_offset())
        if offset < 0 or any(s < 0 for s in strides):
            raise CheckpointError(f"tensor {name!r} has a negative offset or stride")
        if math.prod(sizes) > 0:
            last = offset + sum((n - 1) * s for n, s in zip(sizes, strides))
            if last >= stored.numel:
                raise CheckpointError(
                    f"tensor {name!r} reaches element {last:,} of a storage of "
                    f"{stored.numel:,}")
        return stored

    def materialise(self, name: str, tensor):
        """A real CPU tensor with the declared view over the stored bytes, holding the
        values torch.load returns: a tensor whose pickled metadata names the negative
        bit (torch sets it whenever the key "neg" is present, whatever its value) reads
        negated, so it is negated here too (the stored bytes alone would flip its sign)."""
        import torch

        stored = self.check_view(name, tensor)
        if stored.key not in self._flat:
            self._flat[stored.key] = self._read_storage(stored)
        view = torch.as_strided(self._flat[stored.key], tuple(tensor.shape),
                                tuple(tensor.stride()), int(tensor.storage_offset()))
        return -view if tensor.is_neg() else view

    def _read_storage(self, stored: StoredStorage):
        """One storage's stored bytes as a flat CPU tensor (read once, then shared)."""
        import torch

        itemsize = torch._utils._element_size(stored.dtype)
        nbytes = stored.numel * itemsize
        if self._read_record is not None:
            blob = self._read_record(f"data/{stored.key}")
        else:
            blob = memoryview(self._data)[stored.start:stored.start + nbytes]
        if len(blob) != nbytes:
            raise CheckpointError(f"storage {stored.key!r} holds {len(blob):,} bytes, not the "
                                  f"{nbytes:,} declared")
        if nbytes == 0:
            return torch.empty(0, dtype=stored.dtype)
        flat = torch.frombuffer(bytearray(blob), dtype=stored.dtype)
        return _byteswapped(flat, itemsize) if self._big_endian and itemsize > 1 else flat


def _byteswapped(flat, itemsize: int):
    import torch

    raw = flat.view(torch.uint8).reshape(-1, itemsize).flip(1).contiguous()
    return raw.reshape(-1).view(flat.dtype)


class _MetaStorages:
    """persistent_load for torch's unpickler: a meta storage per declared storage."""

    def __init__(self, legacy: bool):
        self.legacy = legacy
        self.storages: dict[str, StoredStorage] = {}
        self.by_cdata: dict[int, str] = {}
        self._typed: dict[str, object] = {}

    def __call__(self, saved_id):
        import torch

        if not isinstance(saved_id, tuple) or not saved_id or saved_id[0] not in (
                "storage", b"storage"):
            raise CheckpointError("its pickle refers to something other than a storage")
        if self.legacy:
            if len(saved_id) != 6:
                raise CheckpointError("a malformed storage reference")
            _, storage_type, key, _location, numel, view = saved_id
            if view is not None:
                raise CheckpointError("storage views of PyTorch < 0.4 are not supported "
                                      "(re-save the state dict with a current torch)")
        else:
            if len(saved_id) != 5:
                raise CheckpointError("a malformed storage reference")
            _, storage_type, key, _location, numel = saved_id
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError("a malformed storage reference")
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else \
            getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError("a storage reference without a storage type")
        if key in self.storages:
            if self.storages[key].dtype != dtype or self.storages[key].numel != numel:
                raise CheckpointError(f"storage {key!r} is declared twice, differently")
            return self._typed[key]
        nbytes = numel * torch._utils._element_size(dtype)
        meta = torch.UntypedStorage(nbytes, device="meta")
        self.storages[key] = StoredStorage(key, dtype, numel)
        self.by_cdata[meta._cdata] = key
        typed = torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)
        self._typed[key] = typed
        return typed


def _unpickle(blob: bytes, persistent_load=None):
    """torch's weights-only unpickler over exactly these bytes, which must all be used."""
    from torch import _weights_only_unpickler

    stream = io.BytesIO(blob)
    unpickler = _weights_only_unpickler.Unpickler(stream, encoding="utf-8")
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = unpickler.load()
    if stream.tell() != len(blob):
        raise CheckpointError("its pickle does not end where the scan found its end")
    return obj


def declare(data: bytes) -> Declared:
    """The checkpoint in `data` with meta tensors; raises before anything unsafe is built."""
    check_torch_file(data)  # the static gate, and the zip structure rule
    if data.startswith(ZIP_MAGIC):
        return _declare_zip(data)
    return _declare_legacy(data)


def _declare_zip(data: bytes) -> Declared:
    import torch

    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    records = list(reader.get_all_records())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        prefix = names[0].split("/", 1)[0] + "/" if "/" in names[0] else ""
        if sorted(prefix + r for r in records) != sorted(names):
            raise CheckpointError("refused: torch's zip reader and Python's see different "
                                  "entries (an ambiguous archive)")
        for record in records:
            if reader.get_record(record) != archive.read(prefix + record):
                raise CheckpointError(f"refused: zip entry {record!r} reads differently in "
                                      "torch's zip reader and Python's (an ambiguous archive)")
    if "data.pkl" not in records:
        raise CheckpointError("a zip file without data.pkl, so not a torch.save checkpoint")
    pickle_bytes = reader.get_record("data.pkl")
    scan_pickle_at(pickle_bytes, 0)  # exactly the bytes unpickled below
    byteorder = reader.get_record("byteorder").strip() if "byteorder" in records else b"little"
    if byteorder not in (b"little", b"big"):
        raise CheckpointError(f"byte order {byteorder[:20]!r} is neither little nor big")
    storages = _MetaStorages(legacy=False)
    obj = _unpickle(pickle_bytes, storages)
    for stored in storages.storages.values():
        record = f"data/{stored.key}"
        if record not in records:
            raise _unreadable(f"storage {stored.key!r} is declared but not stored")
        nbytes = stored.numel * torch._utils._element_size(stored.dtype)
        size = reader.get_record_size(record) if hasattr(reader, "get_record_size") else \
            len(reader.get_record(record))
        if size != nbytes:
            raise _unreadable(f"storage {stored.key!r} holds {size:,} bytes, not the "
                                  f"{nbytes:,} declared")
    return Declared(obj, storages.storages, storages.by_cdata, reader.get_record,
                    big_endian=byteorder == b"big")


def _declare_legacy(data: bytes) -> Declared:
    import torch

    position, values = 0, []
    storages = _MetaStorages(legacy=True)
    for index in range(5):  # magic, protocol, sys info, the object, storage keys
        end = scan_pickle_at(data, position)
        values.append(_unpickle(data[position:end], storages if index == 3 else None))
        position = end
    magic, protocol, sys_info, obj, keys = values
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise _unreadable("bad legacy magic number")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise CheckpointError("a big-endian legacy checkpoint is not supported")
    declared = storages.storages
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _unreadable("its storage list is not a list of names")
    if len(set(keys)) != len(keys) or set(keys) != set(declared):
        unread = sorted(set(declared) - set(keys))
        raise _unreadable(
            "its storage list does not match the storages it declares"
            + (f" ({len(unread)} declared but never stored, e.g. {unread[0]!r}: their memory "
               "would be left unfilled)" if unread else ""))
    placed = {}
    for key in keys:
        stored = declared[key]
        if position + 8 > len(data):
            raise _unreadable(f"storage {key!r} is cut off")
        count = struct.unpack_from("<q", data, position)[0]
        if count != stored.numel:
            raise _unreadable(f"storage {key!r} stores {count:,} elements, not the "
                                  f"{stored.numel:,} declared")
        start = position + 8
        position = start + count * torch._utils._element_size(stored.dtype)
        if position > len(data):
            raise _unreadable(f"storage {key!r} is cut off")
        placed[key] = dataclasses.replace(stored, start=start)
    if position != len(data):
        raise _unreadable(f"{len(data) - position:,} bytes after its last storage")
    return Declared(obj, placed, storages.by_cdata, data=data)
