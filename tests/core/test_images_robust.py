"""Every kind of image input is read right, and every bad one is one line.

16-bit colour PNGs are written here by a small independent encoder (all five row
filters, optional Adam7), since Pillow cannot write them.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.images import (DEFAULT_MAX_PIXELS, ImageError, ImageTooLargeError, list_images,
                        load_image, orient)

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_rows(pixels: np.ndarray, bpp: int, first_filter: int) -> bytes:
    """Encode rows of big-endian samples, row y using filter (first_filter + y) % 5."""
    rows = pixels.astype(">u2").reshape(pixels.shape[0], -1).view(np.uint8)
    out = bytearray()
    prior = np.zeros(rows.shape[1], np.int64)
    for y, row in enumerate(rows.astype(np.int64)):
        kind = (first_filter + y) % 5
        enc = []
        for i, x in enumerate(row):
            a = int(row[i - bpp]) if i >= bpp else 0
            b = int(prior[i])
            c = int(prior[i - bpp]) if i >= bpp else 0
            predictor = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            enc.append((int(x) - predictor) % 256)
        out += bytes([kind]) + bytes(enc)
        prior = row
    return bytes(out)


def write_png16(path, pixels: np.ndarray, interlace: bool = False, exif: bytes | None = None,
                first_filter: int = 0) -> None:
    """A 16-bit PNG of (H, W, C) uint16 pixels, C = 2 (grey+alpha), 3 (RGB) or 4 (RGBA)."""
    height, width, channels = pixels.shape
    colour = {2: 4, 3: 2, 4: 6}[channels]
    bpp = 2 * channels
    if interlace:
        raw = b"".join(_filter_rows(pixels[y0::dy, x0::dx], bpp, first_filter)
                       for x0, y0, dx, dy in ADAM7
                       if pixels[y0::dy, x0::dx].size)
    else:
        raw = _filter_rows(pixels, bpp, first_filter)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, int(interlace))
    body = _chunk(b"IHDR", ihdr) + (_chunk(b"eXIf", exif) if exif else b"")
    compressed = zlib.compress(raw, 9)
    half = len(compressed) // 2  # two IDAT chunks, as real encoders often write
    body += _chunk(b"IDAT", compressed[:half]) + _chunk(b"IDAT", compressed[half:])
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b""))


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height; its image data is garbage."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x00" * 64)
                 + _chunk(b"IEND", b""))


def _exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


RNG = np.random.default_rng(21)
SAMPLES = (RNG.random((7, 11, 4)) * 65535).astype(np.uint16)


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_colour_png_is_read_at_full_precision(tmp_path, channels, interlace):
    pixels = SAMPLES[:, :, :channels]
    path = tmp_path / "deep.png"
    write_png16(path, pixels, interlace=interlace, first_filter=channels)
    got = load_image(path)
    rgb = np.repeat(pixels[:, :, :1], 3, 2) if channels == 2 else pixels[:, :, :3]
    expected = rgb.astype(np.float32) / np.float32(65535)
    assert got.dtype == np.float32 and got.shape == (7, 11, 3)
    err = float(np.max(np.abs(got - expected)))
    assert err == 0.0, f"max error {err}"


def test_16bit_colour_png_keeps_the_low_byte_pillow_drops(tmp_path):
    """Two values with the same high byte must stay distinct."""
    pixels = np.zeros((1, 2, 3), np.uint16)
    pixels[0, 0], pixels[0, 1] = 0x1200, 0x12FF
    write_png16(tmp_path / "d.png", pixels)
    got = load_image(tmp_path / "d.png")
    assert got[0, 1, 0] - got[0, 0, 0] == pytest.approx(0xFF / 65535, abs=1e-7)


def test_16bit_png_exif_orientation_matches_the_8bit_route(tmp_path):
    pixels = (SAMPLES[:, :, :3] // 257 * 257).astype(np.uint16)  # exactly 8-bit values
    write_png16(tmp_path / "r16.png", pixels, exif=_exif_with_orientation(6))
    im = Image.fromarray((pixels // 257).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "r8.png", exif=exif.tobytes())
    a, b = load_image(tmp_path / "r16.png"), load_image(tmp_path / "r8.png")
    assert a.shape == (11, 7, 3)
    np.testing.assert_allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_agrees_with_pillow_exif_transpose(orientation):
    array = (RNG.random((3, 5, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(orient(array, orientation), expected)


def test_8bit_modes_become_rgb_like_pillow_convert(tmp_path):
    base = (RNG.random((6, 9, 3)) * 255).astype(np.uint8)
    rgb = Image.fromarray(base)
    images = {"grey.png": rgb.convert("L"), "grey_alpha.png": rgb.convert("LA"),
              "rgba.png": rgb.convert("RGBA"), "palette.png": rgb.convert("P"),
              "bilevel.png": rgb.convert("1"), "rgb.bmp": rgb}
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    images["palette_transparent.png"] = pal
    for name, im in images.items():
        im.save(tmp_path / name)
        expected = np.asarray(Image.open(tmp_path / name).convert("RGB"), np.float32) / 255
        np.testing.assert_array_equal(load_image(tmp_path / name), expected, err_msg=name)


def test_cmyk_jpeg_and_grey16_png(tmp_path):
    base = (RNG.random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(base).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(load_image(tmp_path / "c.jpg"), expected)
    grey = (RNG.random((5, 4)) * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    got = load_image(tmp_path / "g16.png")
    np.testing.assert_allclose(got, np.repeat(grey[:, :, None], 3, 2) / 65535.0, atol=1e-7)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    """Stored 16 wide x 24 high with orientation 6: seen 24 wide x 16 high, turned clockwise."""
    stored = np.zeros((24, 16, 3), np.uint8)
    stored[:12, :, 0] = 255   # top half red
    stored[12:, :, 2] = 255   # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    got = load_image(tmp_path / "r.jpg")
    assert got.shape == (16, 24, 3)
    # after a clockwise quarter turn the stored top (red) is on the right
    assert got[8, 20, 0] > 0.9 and got[8, 20, 2] < 0.1
    assert got[8, 3, 2] > 0.9 and got[8, 3, 0] < 0.1


def test_bad_files_are_one_line_image_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading must not block
    Image.new("RGB", (40, 40)).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (4, 4)).save(tmp_path / "tiff.png", format="TIFF")
    Image.new("RGB", (4, 4)).save(tmp_path / "gif.jpg", format="GIF")
    (tmp_path / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\n")
    expected = {"empty.png": "empty file", "text.png": "not a PNG, JPEG or BMP",
                "folder.png": "folder", "dangling.jpg": "does not exist",
                "loop.png": "symbolic links", "fifo.png": "not a regular file",
                "truncated.png": "cannot read image", "tiff.png": "not a PNG, JPEG or BMP",
                "gif.jpg": "not a PNG, JPEG or BMP", "eps.png": "not a PNG, JPEG or BMP"}
    problems = []
    for name, phrase in expected.items():
        try:
            load_image(tmp_path / name)
            problems.append(f"{name}: loaded")
        except ImageError as err:
            line = str(err)
            if "\n" in line or phrase not in line or name not in line:
                problems.append(f"{name}: {line}")
    assert not problems, "\n".join(problems)


def _read_as_nobody(folder, name: str) -> str:
    """load_image(name) in a forked child that enters `folder` and then drops root for
    the unprivileged uid/gid 65534 (root reads files whatever their mode, so CI, which
    runs as root, would never see the refusal). Returns what the child saw."""
    import time

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls and load_image, then _exit
        message = "child failed before reading"
        try:
            os.close(read)
            os.chdir(folder)  # a relative name needs no search right on the parents
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_image(name)
                message = "loaded"
            except ImageError as err:
                message = "ImageError: " + str(err)
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            message = f"{type(err).__name__}: {err}"
        finally:
            os.write(write, message.encode()[:4000])
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the unprivileged child hung")
        time.sleep(0.05)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read().decode()


def test_file_without_read_permission_is_one_line(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ImageError, match="Permission denied") as info:
            load_image(tmp_path / "locked.png")
        seen = "ImageError: " + str(info.value)
    else:
        tmp_path.chmod(0o711)  # the child may look up names in it, not list or read it
        seen = _read_as_nobody(tmp_path, "locked.png")
    assert seen.startswith("ImageError: ") and "\n" not in seen, seen
    assert "Permission denied" in seen and "locked.png" in seen, seen


def test_a_jpeg_named_png_is_read_by_its_content(tmp_path):
    Image.new("RGB", (4, 4), (200, 100, 50)).save(tmp_path / "photo.png", format="JPEG")
    assert load_image(tmp_path / "photo.png").shape == (4, 4, 3)


def test_too_many_pixels_refused_from_the_header_before_decoding(tmp_path):
    png_header_only(tmp_path / "wide.png", 10000, 7000)    # 70 MP > default 64 MP
    png_header_only(tmp_path / "bomb.png", 30000, 30000)   # past Pillow's own bomb limit
    for name, pixels in {"wide.png": 70_000_000, "bomb.png": 900_000_000}.items():
        with pytest.raises(ImageTooLargeError) as info:
            load_image(tmp_path / name)  # the data is garbage: decoding would fail otherwise
        assert info.value.pixels == pixels and info.value.limit == DEFAULT_MAX_PIXELS
    with pytest.raises(ImageTooLargeError, match=r"limit of 0\.0 MP \(10 pixels\)"):
        load_image(tmp_path / "wide.png", max_pixels=10)


def test_folder_listing_keeps_odd_entries_with_image_names_for_reporting(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "notes.txt").write_text("skip me")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    paths, problems = list_images([tmp_path, tmp_path / "missing.jpg"])
    assert [p.name for p in paths] == ["a.png", "dangling.png", "sub.png"]
    assert problems == [f"{tmp_path / 'missing.jpg'}: no such file or folder"]
