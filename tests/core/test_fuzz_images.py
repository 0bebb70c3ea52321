"""Fuzzing load_image with mutated real images of every decoder route.

Allowed outcomes: an RGB float32 array in [0, 1], or ImageError with one line.
The 16-bit PNG route has this project's own chunk reader (core/png16.py), so it gets
mutations both of the raw file and behind valid CRCs.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.images import ImageError, load_image
from tests.weights.test_hostile_fuzzed_checkpoints import EDITS, mutate
from tests.core.test_images_robust import write_png16

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(6)
    rgb = Image.fromarray((rng.random((9, 13, 3)) * 255).astype(np.uint8))
    out = {}
    for name, fmt in {"a.png": "PNG", "a.jpg": "JPEG", "a.bmp": "BMP"}.items():
        buffer = io.BytesIO()
        rgb.save(buffer, format=fmt)
        out[name] = buffer.getvalue()
    for name, interlace in {"deep.png": False, "deep_adam7.png": True}.items():
        write_png16(folder / name, (rng.random((9, 13, 4)) * 65535).astype(np.uint16),
                    interlace=interlace, first_filter=1)
        out[name] = (folder / name).read_bytes()
    return out


def _outcome(path, max_pixels=10_000) -> None:
    try:
        image = load_image(path, max_pixels=max_pixels)
    except ImageError as err:
        assert "\n" not in str(err)
        return
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert np.all((image >= 0) & (image <= 1))


@FUZZ
@given(name=st.sampled_from(["a.png", "a.jpg", "a.bmp", "deep.png", "deep_adam7.png"]),
       edits=EDITS)
def test_mutated_images_load_or_give_one_line(tmp_path, real_images, name, edits):
    path = tmp_path / name
    path.write_bytes(mutate(real_images[name], edits))
    _outcome(path)


def _rechunk(png: bytes, edits) -> bytes:
    """Mutate the decompressed image data and IHDR fields of a PNG, then re-seal
    the zlib stream and every CRC so the decoder proper sees the damage."""
    chunks, pos = [], 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunks.append((kind, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    idat = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    ihdr = next(d for k, d in chunks if k == b"IHDR")
    half = len(edits) // 2
    ihdr = mutate(ihdr, edits[:half]) if half else ihdr
    idat = zlib.compress(mutate(idat, edits[half:]))

    def seal(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (png[:8] + seal(b"IHDR", ihdr) + seal(b"IDAT", idat) + seal(b"IEND", b""))


@FUZZ
@given(name=st.sampled_from(["deep.png", "deep_adam7.png"]), edits=EDITS)
def test_16bit_decoder_behind_valid_crcs_loads_or_gives_one_line(tmp_path, real_images, name,
                                                                 edits):
    path = tmp_path / name
    path.write_bytes(_rechunk(real_images[name], edits))
    _outcome(path)
