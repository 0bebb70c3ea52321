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

from typing import BinaryIO

# 25 times libjpeg's 10; at the measured ~10 ms per scan per 16 MP, 256 scans over a
# 64 MP image (the default pixel limit) cost about 10 s of decoding
MAX_JPEG_SCANS = 256
BLOCK = 1 << 20
SOI, EOI, SOS, TEM = 0xD8, 0xD9, 0xDA, 0x01
RESTARTS = range(0xD0, 0xD8)


class TooManyScansError(ValueError):
    """More scans than MAX_JPEG_SCANS before the first end-of-image marker."""


class _Blocks:
    """A file read forward in blocks, with a position inside the current block."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.buf, self.pos = fh, b"", 0

    def read(self, n: int) -> bytes | None:
        while len(self.buf) - self.pos < n:
            more = self.fh.read(BLOCK)
            if not more:
                return None
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
            self.buf, self.pos = b"", 0

    def next_marker(self) -> int | None:
        """The code of the next marker (0xFF, then neither 0x00 nor 0xFF); None at the end."""
        while True:
            at = self.buf.find(b"\xff", self.pos)
            if at < 0 or at + 1 >= len(self.buf):
                more = self.fh.read(BLOCK)
                if not more:
                    return None
                self.buf, self.pos = (self.buf[at:] if at >= 0 else b"") + more, 0
                continue
            code = self.buf[at + 1]
            if code in (0x00, 0xFF):  # a stuffed 0xFF in entropy data, or fill bytes
                self.pos = at + 1
                continue
            self.pos = at + 2
            return code


def scan_count(fh: BinaryIO, limit: int = MAX_JPEG_SCANS) -> int:
    """The number of scans (SOS markers) before the first EOI of the JPEG in fh, read
    from its start; TooManyScansError as soon as it passes limit. A file that is not a
    JPEG counts 0 (its decoder refuses it)."""
    fh.seek(0)
    blocks = _Blocks(fh)
    if blocks.read(2) != bytes([0xFF, SOI]):
        return 0
    scans = 0
    while True:
        code = blocks.next_marker()
        if code is None or code == EOI:
            return scans
        if code in RESTARTS or code in (SOI, TEM):  # markers without a length
            continue
        size = blocks.read(2)
        if size is None:
            return scans
        if code == SOS:
            scans += 1
            if scans > limit:
                raise TooManyScansError(f"more than {limit} scans (each is a pass over the "
                                        "whole image: such a file can take minutes to decode)")
        blocks.skip(max(int.from_bytes(size, "big") - 2, 0))
