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
from core.jpeg_scans import MAX_JPEG_SCANS, scan_count

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
