"""A static look at what a pickle would import, before anything unpickles it.

A pickle can only run code by first naming a callable: the opcodes GLOBAL,
STACK_GLOBAL and INST look one up by module and name, EXT1/2/4 through the copyreg
registry. This module walks the opcodes with `pickletools.genops` (a parser: it
builds no objects and calls nothing) and refuses every name outside a short
allowlist of what a saved state dict needs: OrderedDict, torch's tensor-rebuild
functions, storage classes and dtypes.

It is the second of two independent gates. The first is torch's own weights-only
unpickler, which the loader always uses as well; either one alone refuses a file
that calls os.system, eval, exec or subprocess. This one also holds if something
in the process has widened torch's allowlist (torch.serialization.add_safe_globals),
and it names what was asked for in one line.

A zip checkpoint is also held to one structure rule (`check_zip_structure`): the
file must be read the same way by every zip reader, because Python's zipfile
(used to list the entries) corrects offsets by bytes found before the archive
while torch's reader takes the declared offsets as they are. So: no bytes before
the first local header and none after the end record (no comment), the central
directory exactly where the end record says and ending where the end record
begins, every entry's local header naming what the central directory names, no
two entries with one name, no entries that overlap, and exactly one `data.pkl`.
"""

from __future__ import annotations

import io
import pickletools
import struct
import tarfile
import warnings
import zipfile

from weights.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"  # torch.load takes the zip path exactly when a file starts so
LEGACY_PICKLES = 5         # magic number, protocol, sys info, the object, storage keys
# A DLN's data.pkl is ~20 KB whatever its width (the tensor count sets it). Unpickling
# can build an object per byte or two (an empty dict is one opcode), ~100 bytes of
# memory each, so this limit keeps the unpickler's memory far below the 1 GiB bound.
MAX_PICKLE_BYTES = 4 << 20
MAX_UNPACKED_BYTES = 2 << 30  # all entries of a zip checkpoint together, unpacked
MAX_UNPACK_RATIO = 8          # torch.save stores entries uncompressed; floats barely compress

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte",
             "Bool", "ComplexFloat", "ComplexDouble", "Untyped")
_DTYPES = ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64",
           "long", "int32", "int", "int16", "short", "int8", "uint8", "bool", "uint16",
           "uint32", "uint64", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2")
ALLOWED_GLOBALS = frozenset(
    {("collections", "OrderedDict"),
     ("torch._utils", "_rebuild_tensor"),
     ("torch._utils", "_rebuild_tensor_v2"),
     ("torch._utils", "_rebuild_tensor_v3"),
     ("torch._utils", "_rebuild_parameter"),
     ("torch._utils", "_rebuild_parameter_with_state"),
     ("torch", "device"),
     ("torch", "Size")}
    | {("torch", f"{kind}Storage") for kind in _STORAGES}
    | {("torch", name) for name in _DTYPES})

_STRING_PUSHES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                  "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class UnsafePickleError(CheckpointError):
    """The pickle names a callable outside the allowlist; `what` is module.name."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def globals_in_pickle(stream: io.BufferedIOBase) -> list[tuple[str, str]]:
    """(module, name) of every global one pickle in `stream` names, in order.

    Reads up to and including the STOP opcode. An import this walk cannot pin to
    two literal strings (a STACK_GLOBAL fed by anything but string pushes or memo
    lookups of strings) raises UnsafePickleError: ordinary picklers never do that.
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, str] = {}  # only memo slots known to hold strings
    memoized = 0
    start = stream.tell()
    top: list[str | None] = [None, None]  # the two topmost stack items, when known strings
    for opcode, arg, pos in pickletools.genops(stream):
        if pos is not None and pos - start > MAX_PICKLE_BYTES:
            raise CheckpointError(f"a pickle longer than {MAX_PICKLE_BYTES:,} bytes (a DLN's "
                                  "is ~20 KB)")
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append((module, attr))
            top = [None, None]
        elif name == "STACK_GLOBAL":
            if top[0] is None or top[1] is None:
                raise UnsafePickleError("an import assembled at run time (STACK_GLOBAL)")
            found.append((top[0], top[1]))
            top = [None, None]
        elif name in ("EXT1", "EXT2", "EXT4"):
            raise UnsafePickleError(f"copyreg extension code {arg}")
        elif name in _STRING_PUSHES:
            top = [top[1], arg if isinstance(arg, str) else arg.decode("latin-1")]
        elif name in _MEMO_GETS:
            top = [top[1], memo.get(int(arg))]
        elif name == "MEMOIZE":
            if top[1] is not None:
                memo[memoized] = top[1]
            memoized += 1
        elif name in _MEMO_PUTS:
            if top[1] is not None:
                memo[int(arg)] = top[1]
            else:
                memo.pop(int(arg), None)
        elif name not in ("FRAME", "PROTO"):
            top = [None, None]
    return found


def _check_allowed(found: list[tuple[str, str]]) -> None:
    for module, attr in found:
        if (module, attr) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"{module}.{attr}")


def _u16(data: bytes, at: int) -> int:
    return struct.unpack_from("<H", data, at)[0]


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _u64(data: bytes, at: int) -> int:
    return struct.unpack_from("<Q", data, at)[0]


def _central_directory_span(data: bytes) -> tuple[int, int]:
    """(offset, end) of the central directory as the end record declares it, after
    checking that the end record closes the file and that the directory ends where
    the end record (or its zip64 form) begins: bytes put before the archive shift
    that position, so zipfile and torch's reader would read different entries."""
    end = len(data) - 22
    if end < 0 or data[end:end + 4] != b"PK\x05\x06":
        raise CheckpointError("not a readable PyTorch checkpoint: its zip end record is not "
                              "the last 22 bytes (a comment or bytes after the archive)")
    size, offset = _u32(data, end + 12), _u32(data, end + 16)
    directory_end = end
    if end >= 20 and data[end - 20:end - 16] == b"PK\x06\x07":  # zip64 locator
        record = _u64(data, end - 20 + 8)
        if record + 56 > end - 20 or data[record:record + 4] != b"PK\x06\x06":
            raise CheckpointError("refused: its zip64 end record is not where its locator "
                                  "says (an ambiguous archive)")
        size, offset = _u64(data, record + 40), _u64(data, record + 48)
        directory_end = record
    if offset + size != directory_end:
        raise CheckpointError(
            f"refused: its zip central directory is declared at {offset:,} + {size:,} bytes "
            f"but ends at {directory_end:,} (bytes before the archive, or a second "
            "directory: zip readers would disagree on its contents)")
    return offset, directory_end


def check_zip_structure(archive: zipfile.ZipFile, data: bytes) -> None:
    """Refuse a zip whose contents two zip readers could see differently (module doc)."""
    directory_start, _ = _central_directory_span(data)
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"refused: its zip holds two entries named {twice[0]!r} "
                              "(an ambiguous archive)")
    pickles = [n for n in names if n.endswith("data.pkl")]
    if len(pickles) > 1:
        raise CheckpointError(f"refused: its zip holds {len(pickles)} data.pkl entries "
                              f"({', '.join(sorted(pickles)[:3])}): an ambiguous archive")
    spans = []
    for info in infos:
        start = info.header_offset
        if start + 30 > directory_start or data[start:start + 4] != b"PK\x03\x04":
            raise CheckpointError(f"refused: zip entry {info.filename!r} has no local header "
                                  "where the central directory says")
        name_length, extra_length = _u16(data, start + 26), _u16(data, start + 28)
        local_name = data[start + 30:start + 30 + name_length]
        if local_name != info.orig_filename.encode("utf-8") and \
                local_name != info.orig_filename.encode("cp437", "replace"):
            raise CheckpointError(f"refused: zip entry {info.filename!r} is named "
                                  f"{local_name[:60]!r} in its local header")
        spans.append((start, start + 30 + name_length + extra_length + info.compress_size,
                      info.filename))
    spans.sort()
    if spans and spans[0][0] != 0:
        raise CheckpointError(f"refused: {spans[0][0]:,} bytes before the first zip entry "
                              "(an ambiguous archive)")
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
        if end > start:
            raise CheckpointError(f"refused: zip entries {name!r} and {other!r} overlap "
                                  "(an ambiguous archive)")
    if spans and spans[-1][1] > directory_start:
        raise CheckpointError(f"refused: zip entry {spans[-1][2]!r} runs into the central "
                              "directory (an ambiguous archive)")


def scan_pickle_at(data: bytes, start: int) -> int:
    """Check the one pickle that begins at data[start]; return where it ends (after STOP)."""
    stream = io.BytesIO(data)
    stream.seek(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check_allowed(globals_in_pickle(stream))
    return stream.tell()


def _zip_pickles(data: bytes) -> list[bytes]:
    """The .pkl entries of a zip checkpoint, after refusing a zip bomb: torch would
    allocate each entry's unpacked size, so the sizes the directory declares must
    be plausible for the file's size before anything is unpacked."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        check_zip_structure(archive, data)
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > min(MAX_UNPACKED_BYTES, MAX_UNPACK_RATIO * len(data) + (1 << 20)):
            raise CheckpointError(
                f"its zip entries would unpack to {unpacked:,} bytes from {len(data):,} "
                "(a zip bomb?); torch.save writes them uncompressed")
        pickles = []
        for info in archive.infolist():
            if not info.filename.endswith(".pkl"):
                continue
            if info.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"{info.filename} would unpack to {info.file_size:,} bytes (limit "
                    f"{MAX_PICKLE_BYTES:,})")
            pickles.append(archive.read(info))
        if not any(p.filename.endswith("data.pkl") for p in archive.infolist()):
            raise CheckpointError("a zip file without data.pkl, so not a torch.save checkpoint")
        return pickles


def check_torch_file(data: bytes) -> str:
    """Refuse `data` (a whole .pth file) unless every pickle in it is allowlisted.

    Returns the format found, "zip" (torch.save since 1.6) or "legacy" (older
    torch.save, a run of pickles followed by raw storage bytes). Raises
    UnsafePickleError naming the first disallowed global, or CheckpointError when
    the bytes are not a torch checkpoint at all.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genops warns about odd escapes in garbage
        if data.startswith(ZIP_MAGIC):
            for blob in _zip_pickles(data):
                _check_allowed(globals_in_pickle(io.BytesIO(blob)))
            return "zip"
        if _is_tar(data):
            raise CheckpointError("a tar archive: the .tar checkpoints of PyTorch < 0.4 are "
                                  "not supported (re-save the state dict with a current torch)")
        stream = io.BytesIO(data)
        for _ in range(LEGACY_PICKLES):
            _check_allowed(globals_in_pickle(stream))
        return "legacy"


def _is_tar(data: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:"):
            return True
    except (tarfile.TarError, ValueError, OSError, EOFError):
        return False
