"""Counting a JPEG's scans before it is decoded.

A progressive JPEG is decoded scan by scan, and every scan passes over the whole
image's coefficients, however few bytes it holds (a run of empty blocks is one
symbol). libjpeg accepts a scan that repeats an earlier one with a warning, so a
156 KB file of 4000 x 4000 pixels and 2,010 scans took 19.6 s to decode here, against
0.27 s for the same image's 10 scans: about 10 ms per scan per 16 MP, so thousands of
scans over 64 MP keep a command busy for many minutes. Encoders write far fewer
(libjpeg's progressive default: 10 for colour; a baseline JPEG has one per frame).

The markers are walked the way libjpeg finds them: segments by their length, and from
anywhere else (entropy-coded data, stray bytes) to the next 0xFF followed by a byte
other than 0x00 and 0xFF. Counting stops at the first end-of-image marker: Pillow
decodes only the first picture of a multi-picture (MPO) file. The file is read in
1 MiB blocks, never whole.
"""

from __future__ import annotations

import dataclasses
import re
from typing import BinaryIO

# 25 times libjpeg's 10; at the measured ~10 ms per scan per 16 MP, 256 scans over a
# 64 MP image (the default pixel limit) cost about 10 s of decoding
MAX_JPEG_SCANS = 256
BLOCK = 1 << 20
SOI, EOI, SOS, TEM = 0xD8, 0xD9, 0xDA, 0x01
RESTARTS = range(0xD0, 0xD8)
MARKER = re.compile(rb"\xff[\x01-\xfe]")  # 0xFF 0x00 is a stuffed byte, 0xFF 0xFF fill
HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7)     # SOF markers
ARITHMETIC_FRAMES = (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # a block can take under a bit


class JPEGRefused(ValueError):
    """The marker walk found a reason to refuse the file before it is decoded."""


class TooManyScansError(JPEGRefused):
    """More scans than MAX_JPEG_SCANS before the first end-of-image marker."""


class TooLittleDataError(JPEGRefused):
    """Fewer bits of Huffman-coded data than the frame has 8x8 blocks."""


@dataclasses.dataclass
class JPEGLayout:
    scans: int = 0
    entropy_bytes: int = 0        # coded data after each scan header, restart markers in
    huffman_blocks: int | None = None  # 8x8 blocks of a Huffman-coded frame; None otherwise


class _Blocks:
    """A file read forward in blocks, with a position inside the current block."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.buf, self.pos, self.base = fh, b"", 0, 0  # base: file offset of buf

    def position(self) -> int:
        return self.base + self.pos

    def read(self, n: int) -> bytes | None:
        while len(self.buf) - self.pos < n:
            more = self.fh.read(BLOCK)
            if not more:
                return None
            self.base += self.pos
            self.buf, self.pos = self.buf[self.pos:] + more, 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        left = len(self.buf) - self.pos
        if n <= left:
            self.pos += n
        else:  # the file's position is the end of the block
            self.fh.seek(n - left, 1)
            self.base, self.buf, self.pos = self.base + self.pos + n, b"", 0

    def next_marker(self) -> int | None:
        """The code of the next marker (0xFF, then neither 0x00 nor 0xFF); None at the end.
        Found by a regular expression, so stuffed bytes (0xFF 0x00) cost no Python step."""
        while True:
            found = MARKER.search(self.buf, self.pos)
            if found:
                self.pos = found.end()
                return self.buf[found.start() + 1]
            more = self.fh.read(BLOCK)
            if not more:
                return None
            trailing = self.pos < len(self.buf) and self.buf.endswith(b"\xff")
            keep = len(self.buf) - 1 if trailing else len(self.buf)  # a marker's first byte
            self.base += keep
            self.buf, self.pos = self.buf[keep:] + more, 0


def _blocks_of_frame(payload: bytes) -> int | None:
    """8x8 blocks in all components of a frame header (SOF payload); None if unusable."""
    if len(payload) < 6:
        return None
    height, width, count = int.from_bytes(payload[1:3], "big"), \
        int.from_bytes(payload[3:5], "big"), payload[5]
    factors = [(b >> 4, b & 15) for b in payload[7:6 + 3 * count:3]]
    if not height or not width or not factors or len(factors) != count or \
            not all(h and v for h, v in factors):
        return None
    hmax, vmax = max(h for h, _ in factors), max(v for _, v in factors)
    return sum(-(-(-(-width * h // hmax)) // 8) * -(-(-(-height * v // vmax)) // 8)
               for h, v in factors)


def walk(fh: BinaryIO, limit: int = MAX_JPEG_SCANS) -> JPEGLayout:
    """Scans, coded bytes and blocks of the JPEG in fh up to its first EOI, read from
    its start; TooManyScansError as soon as the scans pass limit. A file that is not a
    JPEG gives an empty layout (its decoder refuses it)."""
    fh.seek(0)
    blocks, layout = _Blocks(fh), JPEGLayout()
    if blocks.read(2) != bytes([0xFF, SOI]):
        return layout
    coded_from = None  # where the current scan's coded data began
    while True:
        code = blocks.next_marker()
        if code in RESTARTS or code in (SOI, TEM):  # markers without a length
            continue
        if coded_from is not None:
            end = blocks.position() - (2 if code is not None else 0)
            layout.entropy_bytes += end - coded_from
            coded_from = None
        if code is None or code == EOI:
            return layout
        size = blocks.read(2)
        if size is None:
            return layout
        length = max(int.from_bytes(size, "big") - 2, 0)
        if code in HUFFMAN_FRAMES + ARITHMETIC_FRAMES and layout.huffman_blocks is None:
            payload = blocks.read(length) or b""
            if code in HUFFMAN_FRAMES:
                layout.huffman_blocks = _blocks_of_frame(payload)
            continue
        blocks.skip(length)
        if code == SOS:
            layout.scans += 1
            if layout.scans > limit:
                raise TooManyScansError(f"more than {limit} scans (each is a pass over the "
                                        "whole image: such a file can take minutes to decode)")
            coded_from = blocks.position()


def scan_count(fh: BinaryIO, limit: int = MAX_JPEG_SCANS) -> int:
    return walk(fh, limit).scans


def check(fh: BinaryIO) -> None:
    """Refuse, before decoding, a JPEG with too many scans, or a Huffman-coded one whose
    coded data has fewer bits than its frame has 8x8 blocks: every block's DC term takes
    a code of at least one bit, so such a file is cut short or corrupt, and libjpeg
    would still allocate the whole image and fill it grey (a 600-byte file declaring
    7999 x 7999 pixels made `dln synth` peak at 2.3 GB)."""
    layout = walk(fh)
    if layout.huffman_blocks and layout.entropy_bytes * 8 < layout.huffman_blocks:
        raise TooLittleDataError(
            f"{layout.entropy_bytes:,} bytes of image data cannot code the "
            f"{layout.huffman_blocks:,} blocks its header declares (cut short or corrupt)")
