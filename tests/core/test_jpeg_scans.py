"""A progressive JPEG with thousands of scans (each a pass over the whole image) is
refused before decoding; real JPEGs' scans are counted as libjpeg sees them."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from core.image_pairs import load_uint8
from core.images import ImageError, load_image
from core.jpeg_scans import MAX_JPEG_SCANS, scan_count, walk

RNG = np.random.default_rng(12)


def _jpeg(**options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((RNG.random((24, 40, 3)) * 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def _last_scan(jpeg: bytes) -> tuple[int, int]:
    """(start, end) of the last SOS segment with its entropy-coded data (up to EOI)."""
    start = jpeg.rindex(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[start + 2:start + 4])
    assert jpeg.endswith(b"\xff\xd9") and start + 2 + length < len(jpeg) - 2
    return start, len(jpeg) - 2


def test_scans_are_counted_as_encoders_write_them():
    assert scan_count(io.BytesIO(_jpeg())) == 1                    # baseline: one scan
    assert scan_count(io.BytesIO(_jpeg(progressive=True))) == 10   # libjpeg's colour script
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    mpo = io.BytesIO()
    frames[0].save(mpo, "MPO", save_all=True, append_images=frames[1:])
    assert scan_count(mpo) == 1  # Pillow decodes the first picture only


@pytest.mark.parametrize("junk", [b"", b"\x00stray\xff\x00bytes"])
def test_a_progressive_jpeg_repeating_a_scan_past_the_limit_is_refused_in_one_line(
        tmp_path, junk):
    """libjpeg decodes a repeated scan again (with a warning); stray bytes between
    scans, which it skips, do not hide them from the count."""
    jpeg = _jpeg(progressive=True)
    start, end = _last_scan(jpeg)
    repeats = MAX_JPEG_SCANS - 9  # 10 + repeats scans: one past the limit
    bomb = jpeg[:end] + (junk + jpeg[start:end]) * repeats + jpeg[end:]
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    (tmp_path / "fine.jpg").write_bytes(jpeg[:end] + (junk + jpeg[start:end]) * (repeats - 1)
                                        + jpeg[end:])
    assert load_image(tmp_path / "fine.jpg").shape == (24, 40, 3)  # exactly at the limit
    for reader in (load_image, load_uint8):
        with pytest.raises(ImageError, match=rf"bomb\.jpg: refused before decoding: more "
                                             rf"than {MAX_JPEG_SCANS} scans") as info:
            reader(tmp_path / "bomb.jpg")
        assert "\n" not in str(info.value)


def test_blocks_and_coded_bytes_of_a_frame_follow_its_sampling():
    """40 x 24 at 4:2:0: luma 5 x 3 blocks, each chroma plane 20 x 12 pixels = 3 x 2."""
    layout = walk(io.BytesIO(_jpeg(subsampling=2)))
    assert layout.huffman_blocks == 15 + 6 + 6 and layout.scans == 1
    assert 0 < layout.entropy_bytes < len(_jpeg(subsampling=2))


def test_a_tiny_jpeg_whose_header_declares_a_huge_frame_is_refused_before_allocating(
        tmp_path):
    """16 x 16 pixels of coded data behind a header saying 7999 x 7999: libjpeg would
    allocate all 64 MP and fill them grey."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 7999, 7999)
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    for reader in (load_image, load_uint8):
        with pytest.raises(ImageError, match=r"huge\.jpg: refused before decoding: .* bytes "
                                             r"of image data cannot code the"):
            reader(tmp_path / "huge.jpg")


@pytest.mark.parametrize("mode, options", [("L", {"progressive": True}),
                                           ("RGB", {"progressive": True, "subsampling": 2}),
                                           ("CMYK", {}), ("RGB", {"subsampling": 0})])
def test_flat_jpegs_at_the_lowest_quality_pass_the_coded_data_bound(tmp_path, mode, options):
    """The most compressible real files (one grey level, quality 1) code about 2 bits a
    block, twice the bound of one."""
    Image.new(mode, (512, 384), (128,) * len(mode)).save(tmp_path / "flat.jpg", quality=1,
                                                         **options)
    layout = walk(io.BytesIO((tmp_path / "flat.jpg").read_bytes()))
    assert layout.entropy_bytes * 8 >= layout.huffman_blocks
    assert load_image(tmp_path / "flat.jpg").shape == (384, 512, 3)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_the_walk_is_the_same_whatever_the_reading_block(monkeypatch, block):
    """Markers, segment lengths and stuffed bytes split across reads are found alike."""
    import core.jpeg_scans

    jpeg = _jpeg(progressive=True)
    start, end = _last_scan(jpeg)
    data = jpeg[:end] + b"\xff\xff" + jpeg[start:end] + jpeg[end:]  # fill bytes, a repeat
    whole = walk(io.BytesIO(data))
    monkeypatch.setattr(core.jpeg_scans, "BLOCK", block)
    assert walk(io.BytesIO(data)) == whole
    assert whole.scans == 11 and whole.huffman_blocks == 15 + 6 + 6
