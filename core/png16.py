"""A reader for 16-bit colour PNGs at full precision.

Pillow has no 16-bit-per-channel colour mode: it decodes 16-bit RGB, RGBA and
grey+alpha PNGs to 8 bits, dropping the low byte. This module decodes those three
colour types itself, following the PNG specification (ISO/IEC 15948): chunks with
CRCs, one zlib stream over the IDAT chunks, the five row filters, Adam7
interlacing. 16-bit grey (Pillow's "I;16") and every 8-bit PNG stay with Pillow.

Defensive by construction: the decompressed size is fixed by the header, so
zlib is never asked for more than that (no decompression bomb), and the file is
read chunk by chunk with every length checked before it is used.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (no palette at 16 bits)
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
    """(type, data) of each chunk after the signature, CRC-checked, up to IEND."""
    fh.seek(len(SIGNATURE))
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise PNGError("file ends before the IEND chunk (truncated)")
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
    head = _read_exact(fh, 33, "header")
    info = header(head)
    if info is None:
        raise PNGError("not a PNG file")
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        raise PNGError("IHDR chunk has a wrong CRC (corrupt file)")
    width, height, depth, colour, interlace = info
    if depth != 16 or colour not in HANDLED_COLOUR_TYPES:
        raise PNGError(f"bit depth {depth}, colour type {colour} is not 16-bit colour")
    if width == 0 or height == 0 or interlace not in (0, 1):
        raise PNGError(f"invalid header: {width}x{height}, interlace {interlace}")
    if width * height > max_pixels:
        raise PNGTooLargeError(width, height, max_pixels)
    bpp = 2 * CHANNELS[colour]
    passes = ([(0, 0, 1, 1)] if interlace == 0 else list(ADAM7))
    sizes = [(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in passes]
    expected = sum(h * (1 + w * bpp) for w, h in sizes if w and h)
    compressed_limit = expected + expected // 100 + (1 << 20)  # zlib's worst case is ~0.03 %

    idat, exif, seen_idat, total = [], None, False, 0
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
                idat.append(data)
                seen_idat = True
            else:
                exif = data
        else:
            if kind[0] & 0x20 == 0 and kind not in (b"PLTE",):  # an unknown critical chunk
                raise PNGError(f"unknown critical chunk {kind!r}")
            fh.seek(length + 4, 1)
    if not seen_idat:
        raise PNGError("no image data (IDAT)")

    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected)
    except zlib.error as err:
        raise PNGError(f"corrupt compressed data ({err})") from None
    if len(raw) < expected:
        raise PNGError(f"image data ends after {len(raw):,} of {expected:,} bytes (truncated)")

    channels = CHANNELS[colour]
    image = np.zeros((height, width, channels), np.uint16)
    offset = 0
    for (x0, y0, dx, dy), (w, h) in zip(passes, sizes):
        if not w or not h:
            continue
        size = h * (1 + w * bpp)
        rows = _unfilter(np.frombuffer(raw, np.uint8, size, offset).reshape(h, 1 + w * bpp), bpp)
        offset += size
        samples = rows.reshape(h, w * channels * 2).view(">u2").reshape(h, w, channels)
        image[y0::dy, x0::dx] = samples
    return image, exif


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth)."""
    height, stride = rows.shape[0], rows.shape[1] - 1
    out = np.empty((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = int(rows[y, 0]), rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # each byte adds the byte bpp to its left: a running sum per lane
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            cur = line + prior  # uint8 arithmetic wraps modulo 256, as the filter wants
        elif kind in (3, 4):
            cur = _unfilter_sequential(kind, line.tobytes(), prior.tobytes(), bpp)
        else:
            raise PNGError(f"row {y} has unknown filter type {kind}")
        out[y] = cur
        prior = out[y]
    return out


def _unfilter_sequential(kind: int, line: bytes, prior: bytes, bpp: int) -> np.ndarray:
    """Average and Paeth depend on the already decoded byte to the left: byte by byte."""
    cur = bytearray(line)
    for i in range(len(cur)):
        left = cur[i - bpp] if i >= bpp else 0
        up = prior[i]
        if kind == 3:
            cur[i] = (cur[i] + ((left + up) >> 1)) & 0xFF
            continue
        upper_left = prior[i - bpp] if i >= bpp else 0
        estimate = left + up - upper_left
        da, db, dc = abs(estimate - left), abs(estimate - up), abs(estimate - upper_left)
        if da <= db and da <= dc:
            predictor = left
        elif db <= dc:
            predictor = up
        else:
            predictor = upper_left
        cur[i] = (cur[i] + predictor) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)
