"""Hostile and odd image files of kinds the other image tests do not make: a file
rewritten between the two reads of the 16-bit route, compressed-metadata bombs,
animations, sockets and device links with image names, one-pixel-wide images."""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.image_pairs import load_uint8
from core.images import ImageError, ImageTooLargeError, load_image
from tests.core.test_images_robust import write_png16

RNG = np.random.default_rng(44)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int, colour: int, raw: bytes, before_idat: bytes = b""
         ) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + before_idat
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def test_16bit_png_enlarged_after_pillow_read_its_header_is_refused_before_inflating(
        tmp_path, monkeypatch):
    """The 16-bit route reads the file a second time. A file rewritten in between (here:
    right after Pillow read its header) to declare 60000 x 60000 must meet the size limit again, on
    the header that is decoded, before zlib is asked for 28.8 GB. (A text chunk larger
    than the reader's buffer makes the second read come from the disk.)"""
    path = tmp_path / "deep.png"
    write_png16(path, (RNG.random((4, 4, 4)) * 65535).astype(np.uint16))
    whole = path.read_bytes()
    path.write_bytes(whole[:33] + _chunk(b"tEXt", b"pad\0" + b"x" * 20000) + whole[33:])
    real_open = Image.open

    def open_then_rewrite(*args, **kwargs):
        image = real_open(*args, **kwargs)  # Pillow has read the 4 x 4 header
        ihdr = struct.pack(">IIBBBBB", 60000, 60000, 16, 6, 0, 0, 0)
        with open(path, "r+b") as fh:  # in place: the reader's open descriptor sees it
            fh.seek(8)
            fh.write(_chunk(b"IHDR", ihdr))
        return image

    monkeypatch.setattr(Image, "open", open_then_rewrite)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path, max_pixels=1000)
    assert info.value.size == (60000, 60000) and info.value.limit == 1000
    with pytest.raises(ImageTooLargeError):  # no limit of ours: Pillow's bomb limit holds
        load_image(path, max_pixels=None)


@pytest.mark.parametrize("kind", [b"iCCP", b"zTXt", b"iTXt"])
@pytest.mark.parametrize("depth", [8, 16])
def test_zlib_bomb_in_a_png_metadata_chunk_is_one_line(tmp_path, kind, depth):
    bomb = zlib.compress(b"\0" * (16 << 20), 9)  # 16 MiB of zeros in 16 KB
    payload = {b"iCCP": b"icc\0\0", b"zTXt": b"key\0\0", b"iTXt": b"key\0\1\0\0\0"}[kind] + bomb
    raw = b"".join(b"\0" + bytes(4 * 3 * depth // 8) for _ in range(4))
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(4, 4, depth, 2, raw, _chunk(kind, payload)))
    try:
        image = load_image(path)
    except ImageError as err:
        assert "\n" not in str(err) and "bomb.png" in str(err)
    else:  # a reader that skips the chunk may read the pixels
        assert image.shape == (4, 4, 3)


def test_animated_png_and_multi_picture_jpeg_give_their_first_frame(tmp_path):
    frames = [Image.fromarray((RNG.random((5, 7, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "multi.jpg", format="MPO", save_all=True,
                   append_images=frames[1:], quality=95)
    np.testing.assert_array_equal(load_image(tmp_path / "anim.png"),
                                  np.asarray(frames[0], np.float32) / 255)
    first = np.asarray(Image.open(io.BytesIO((tmp_path / "multi.jpg").read_bytes())), np.float32)
    np.testing.assert_array_equal(load_image(tmp_path / "multi.jpg"), first / 255)


def test_socket_and_link_to_a_device_named_as_images_are_refused_without_reading(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.png")  # reading it would never end
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(tmp_path / "sock.jpg"))
        for name in ("zero.png", "sock.jpg"):
            with pytest.raises(ImageError, match=name) as info:
                load_image(tmp_path / name)
            assert "\n" not in str(info.value)
    finally:
        listener.close()


@pytest.mark.parametrize("size", [(1, 37), (37, 1), (1, 1)])
def test_one_pixel_wide_or_high_images_of_every_decoder(tmp_path, size):
    array = (RNG.random((*size, 3)) * 255).astype(np.uint8)
    for name in ("a.png", "a.bmp"):
        Image.fromarray(array).save(tmp_path / name)
        np.testing.assert_array_equal(load_image(tmp_path / name), array / np.float32(255))
    Image.fromarray(array).save(tmp_path / "a.jpg", progressive=True)
    assert load_image(tmp_path / "a.jpg").shape == (*size, 3)
    deep = (RNG.random((*size, 3)) * 65535).astype(np.uint16)
    write_png16(tmp_path / "deep.png", deep, interlace=True)  # Adam7 passes left empty
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png"),
                                  deep.astype(np.float32) / np.float32(65535))


@pytest.mark.parametrize("orientation", range(0, 10))
def test_every_exif_orientation_of_an_8bit_image_matches_pillow_exif_transpose(tmp_path,
                                                                             orientation):
    """Out-of-range values (0, 9) leave the pixels as stored, as Pillow does."""
    from PIL import ImageOps

    im = Image.fromarray((RNG.random((5, 7, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    with Image.open(tmp_path / "o.png") as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(load_image(tmp_path / "o.png"), expected)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_png_with_image_data_cut_short_behind_valid_crcs_is_refused(tmp_path, channels):
    """Every chunk is intact, but the zlib stream holds half the rows: refused, never
    filled with zeros."""
    pixels = (RNG.random((16, 16, channels)) * 65535).astype(np.uint16)
    write_png16(tmp_path / "whole.png", pixels, first_filter=4)
    whole = (tmp_path / "whole.png").read_bytes()
    colour = {2: 4, 3: 2, 4: 6}[channels]
    raw = zlib.decompress(b"".join(_idat_payloads(whole)))
    cut = _png(16, 16, 16, colour, raw[: len(raw) // 2])
    (tmp_path / "cut.png").write_bytes(cut)
    with pytest.raises(ImageError, match="cut.png") as info:
        load_image(tmp_path / "cut.png")
    assert "\n" not in str(info.value)


def _idat_payloads(png: bytes) -> list[bytes]:
    payloads, at = [], 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            payloads.append(png[at + 8:at + 8 + length])
        at += 12 + length
    return payloads


@pytest.mark.parametrize("depth, colour, interlace", [(8, 2, 0), (8, 6, 1), (16, 0, 0), (1, 0, 0),
                                                      (4, 3, 0)])
def test_png_whose_zlib_stream_ends_before_the_last_row_is_refused_not_blacked(
        tmp_path, depth, colour, interlace):
    """Pillow takes a complete zlib stream that holds only the first rows for a finished
    image and leaves the rest black; every PNG route refuses it instead."""
    pixels = (RNG.random((12, 10, 3)) * 255).astype(np.uint8)
    mode = {(8, 2): "RGB", (8, 6): "RGBA", (16, 0): "I;16", (1, 0): "1", (4, 3): "P"}[depth,
                                                                                     colour]
    im = Image.fromarray(pixels).convert(mode if mode != "P" else "RGB")
    if mode == "P":
        im = im.quantize(colors=16)
    im.save(tmp_path / "whole.png", interlace=interlace, bits=depth if mode == "P" else None)
    whole = (tmp_path / "whole.png").read_bytes()
    assert whole[24:26] == bytes([depth, colour])
    raw = zlib.decompress(b"".join(_idat_payloads(whole)))
    ihdr = whole[16:29]
    cut = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _other_chunks(whole)
           + _chunk(b"IDAT", zlib.compress(raw[: len(raw) * 2 // 3])) + _chunk(b"IEND", b""))
    (tmp_path / "cut.png").write_bytes(cut)
    assert load_image(tmp_path / "whole.png").shape == (12, 10, 3)
    for reader in (load_image, load_uint8):  # load_uint8: metrics' and table2's 8-bit path
        with pytest.raises(ImageError, match=r"cut\.png: .*truncated"):
            reader(tmp_path / "cut.png")


def _other_chunks(png: bytes) -> bytes:
    """The chunks of png between IHDR and the first IDAT (a palette)."""
    kept, at = b"", 33
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            break
        kept += png[at:at + 12 + length]
        at += 12 + length
    return kept


def test_png_missing_only_its_iend_chunk_still_reads_with_every_row(tmp_path):
    """The row check refuses missing pixels, not a missing end marker after whole rows
    (Pillow reads such 8-bit files, and so does the 16-bit route)."""
    array = (RNG.random((6, 5, 3)) * 255).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    deep = (RNG.random((6, 5, 3)) * 65535).astype(np.uint16)
    write_png16(tmp_path / "deep.png", deep)
    for name in ("a.png", "deep.png"):
        whole = (tmp_path / name).read_bytes()
        assert whole[-12:] == _chunk(b"IEND", b"")
        (tmp_path / name).write_bytes(whole[:-12])
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), array / np.float32(255))
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png"),
                                  deep.astype(np.float32) / np.float32(65535))
