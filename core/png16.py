"""A reader for 16-bit colour PNGs at full precision.

Pillow has no 16-bit-per-channel colour mode: it decodes 16-bit RGB, RGBA and
grey+alpha PNGs to 8 bits, dropping the low byte. This module reads those three
colour types' chunks itself, following the PNG specification (ISO/IEC 15948):
lengths, CRCs, the header against the caller's pixel limit, the amount of IDAT
data; then Pillow's C decoder inflates and unfilters (five row filters, Adam7) a
PNG rebuilt from exactly those checked chunks, and is asked for both bytes of each
sample (see RAWMODES). 16-bit grey (Pillow's "I;16") and every 8-bit PNG stay with
Pillow alone.

Defensive by construction: the pixel count is checked on the header decoded here;
Pillow inflates only as many bytes as that header's image holds (no decompression
bomb); the file is read chunk by chunk with every length checked before it is used.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
HANDLED_COLOUR_TYPES = (2, 4, 6)     # RGB, grey+alpha, RGBA
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # (x0, y0, dx, dy) of the seven passes
MAX_EXIF_BYTES = 1 << 20


class PNGError(ValueError):
    """The bytes break the PNG format; the message is one line."""


class PNGTooLargeError(PNGError):
    """The header read here declares more pixels than the caller allows; nothing was
    decompressed."""

    def __init__(self, width: int, height: int, limit: int):
        self.width, self.height, self.limit = width, height, limit
        super().__init__(f"{width}x{height} pixels is more than the limit of {limit}")


def header(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a file's first 33 bytes,
    or None if they are not a PNG signature followed by an IHDR chunk."""
    if len(head) < 33 or not head.startswith(SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, colour, interlace


def is_16bit_colour(head: bytes) -> bool:
    info = header(head)
    return info is not None and info[2] == 16 and info[3] in HANDLED_COLOUR_TYPES


def _chunks(fh: BinaryIO):
    """(length, type) of each chunk after the signature, up to the file's end. A file
    that ends between chunks without IEND is the caller's to judge (Pillow reads one
    whose rows are all there); one that ends inside a chunk header is truncated."""
    fh.seek(len(SIGNATURE))
    while True:
        head = fh.read(8)
        if not head:
            return
        if len(head) < 8:
            raise PNGError("file ends inside a chunk header (truncated)")
        length, kind = struct.unpack(">I4s", head)
        if length > 0x7FFFFFFF:
            raise PNGError(f"chunk {kind!r} declares an impossible length {length}")
        yield length, kind


def _read_exact(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise PNGError(f"file ends inside the {what} (truncated)")
    return data


def read(fh: BinaryIO, max_pixels: int) -> tuple[np.ndarray, bytes | None]:
    """(pixels, raw eXIf payload or None) of a 16-bit colour PNG open in `fh`.

    pixels: uint16 array (height, width, channels), channels 3 (RGB), 2 (grey,
    alpha) or 4 (RGBA). max_pixels is checked against the header read here, not one
    the caller read earlier: the file may have changed since (PNGTooLargeError
    before anything is decompressed).
    """
    info, idat, exif = _walk(fh, max_pixels, keep_data=True)
    if info[2] != 16 or info[3] not in HANDLED_COLOUR_TYPES:
        raise PNGError(f"bit depth {info[2]}, colour type {info[3]} is not 16-bit colour")
    return _unfiltered_by_pillow(info[5], b"".join(idat), info[3]), exif


def check_image_data(fh: BinaryIO, max_pixels: int) -> None:
    """Any PNG's chunks are whole and its zlib stream holds every row its header
    declares (PNGError otherwise). Pillow takes a stream that ends early for a finished
    image and leaves the rows after it black; this is checked for the PNGs it decodes."""
    _walk(fh, max_pixels, keep_data=False)


def _walk(fh: BinaryIO, max_pixels: int, keep_data: bool):
    """((width, height, depth, colour, interlace, IHDR chunk), IDAT payloads or [],
    eXIf payload or None), after checking every chunk up to IEND and counting the
    inflated rows (in slices, never more than the header's image holds)."""
    fh.seek(0)
    head = _read_exact(fh, 33, "header")
    info = header(head)
    if info is None:
        raise PNGError("not a PNG file")
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        raise PNGError("IHDR chunk has a wrong CRC (corrupt file)")
    width, height, depth, colour, interlace = info
    if colour not in CHANNELS or depth not in DEPTHS[colour]:
        raise PNGError(f"bit depth {depth} with colour type {colour} is not a valid PNG")
    if width == 0 or height == 0 or interlace not in (0, 1):
        raise PNGError(f"invalid header: {width}x{height}, interlace {interlace}")
    if width * height > max_pixels:
        raise PNGTooLargeError(width, height, max_pixels)
    bits = depth * CHANNELS[colour]
    passes = ([(0, 0, 1, 1)] if interlace == 0 else list(ADAM7))
    sizes = [(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in passes]
    expected = sum(h * (1 + (w * bits + 7) // 8) for w, h in sizes if w and h)
    compressed_limit = expected + expected // 100 + (1 << 20)  # zlib's worst case is ~0.03 %

    rows, idat, exif, total = _RowCounter(expected), [], None, 0
    for length, kind in _chunks(fh):
        if kind == b"IHDR":
            fh.seek(length + 4, 1)  # parsed and CRC-checked above
            continue
        if kind == b"IEND":
            break
        if kind == b"IDAT" or kind == b"eXIf":
            if kind == b"IDAT":
                total += length
                if total > compressed_limit:
                    raise PNGError("more compressed image data than the image can hold")
            elif length > MAX_EXIF_BYTES:
                raise PNGError(f"eXIf chunk of {length:,} bytes is too large")
            data = _read_exact(fh, length, f"{kind.decode()} chunk")
            crc = _read_exact(fh, 4, "chunk CRC")
            if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                raise PNGError(f"{kind.decode()} chunk has a wrong CRC (corrupt file)")
            if kind == b"IDAT":
                rows.feed(data)
                if keep_data:
                    idat.append(data)
            else:
                exif = data
        else:
            if kind[0] & 0x20 == 0 and kind not in (b"PLTE",):  # an unknown critical chunk
                raise PNGError(f"unknown critical chunk {kind!r}")
            fh.seek(length + 4, 1)
    if total == 0:
        raise PNGError("no image data (IDAT)")
    if rows.produced < expected:
        raise PNGError(f"image data ends after {rows.produced:,} of {expected:,} bytes "
                       "(truncated)")
    return (width, height, depth, colour, interlace, head[8:33]), idat, exif


class _RowCounter:
    """Inflates a zlib stream fed in pieces, counting the bytes and dropping them: at
    most 16 MiB at a time, and never more than `expected` in all."""

    def __init__(self, expected: int):
        self.inflater, self.produced, self.expected = zlib.decompressobj(), 0, expected

    def feed(self, data: bytes) -> None:
        pending = data
        try:
            while pending and self.produced < self.expected:
                out = self.inflater.decompress(pending, min(self.expected - self.produced,
                                                            1 << 24))
                self.produced += len(out)
                pending = self.inflater.unconsumed_tail
        except zlib.error as err:
            raise PNGError(f"corrupt compressed data ({err})") from None


# Pillow decodes the rows (zlib, the five filters, Adam7) in C at full precision; only
# its last step, the unpacking to 8 bits, drops a byte. Its unpacker reads the high byte
# of each big-endian sample as "16B" and the byte after it (here: the low byte) as
# "16L", with the same bytes per pixel for the filters. Grey+alpha (4 bytes a pixel) is
# unpacked whole as 8-bit RGBA. (Row by row in Python, a 1 MP RGBA image whose rows all
# use the Paeth filter took 2.3 s; a 64 MP one would take minutes.)
RAWMODES = {2: ("RGB;16B", "RGB;16L"), 6: ("RGBA;16B", "RGBA;16L"), 4: ("RGBA",)}


def _unfiltered_by_pillow(ihdr: bytes, data: bytes, colour: int) -> np.ndarray:
    """The samples of a PNG made of exactly the IHDR checked here and the IDAT data read
    here (so Pillow sees no other header), decoded by Pillow once per rawmode."""
    import io

    from PIL import Image

    png = SIGNATURE + ihdr + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    planes = []
    for rawmode in RAWMODES[colour]:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as im:
            (tile,) = im.tile
            im.tile = [(tile[0], tile[1], tile[2], rawmode)]
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as err:
                raise PNGError(f"corrupt or truncated image data ({err})") from None
            planes.append(np.asarray(im).astype(np.uint16))
    if colour == 4:  # (grey high, grey low, alpha high, alpha low) per pixel
        byte_pairs = planes[0]
        return (byte_pairs[:, :, 0::2] << 8) | byte_pairs[:, :, 1::2]
    channels = CHANNELS[colour]
    return (planes[0][:, :, :channels] << 8) | planes[1][:, :, :channels]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
