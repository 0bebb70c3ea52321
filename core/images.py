"""Image files in and out, the authors' way (x255, clip, truncate on output), defensively.

Reading gives RGB float32 HWC in [0, 1]. 8-bit images are PIL-converted to RGB and
divided by 255 in float32 (exactly what the authors' ToTensor does): grey is
repeated, alpha dropped (not composited, as PIL's convert does), palettes expanded,
CMYK converted. 16-bit PNGs are read at full precision and divided by 65535
(grey through Pillow's "I;16", colour through core.png16). The EXIF orientation is
applied.

Hostile input is contained (see SECURITY.md): only regular files are opened (a
FIFO, device or folder named x.png is refused without blocking); only the PNG,
JPEG and BMP decoders may run, whatever the file is named (so no Ghostscript for
an EPS in disguise); the pixel count is read from the header and checked against
`max_pixels` before anything is decoded; a PNG's rows and a JPEG's scans and coded
data are checked before Pillow decodes them (check_before_decoding); and every
failure, whatever a decoder raises, becomes one ImageError line.

Writing quantises like the authors (x 255, clip, truncate) and renames a finished,
fsynced temporary file into place, so no PNG is ever half-written; with
overwrite=False an existing file is never replaced, even one that appears meanwhile.
"""

from __future__ import annotations

from core.errors import InputError, UserError
from core.text import escape_text
import errno
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DECODERS = ("PNG", "JPEG", "BMP")  # JPEG includes the multi-picture (MPO) files of phones
DEFAULT_MAX_PIXELS = 64_000_000  # 50-megapixel photos (8160 x 6144) run tiled
# zlib level of written PNGs: an enhanced 360x480 photo took 19 ms and 254 KB at level 3
# against 66 ms and 244 KB at Pillow's default 6 (4 % larger, 3.5x faster to encode; the
# encoder shares the cores with the network in `dln enhance`)
PNG_COMPRESS_LEVEL = 3
EXIF_ORIENTATION = 0x0112


class ImageError(UserError):
    """An image file that cannot be used; the message is one line for the user."""


class ImageTooLargeError(ImageError):
    """The header declares more pixels than allowed; nothing was decoded."""

    def __init__(self, path: Path, pixels: int, limit: int, size: tuple[int, int] | None):
        self.path, self.pixels, self.limit, self.size = path, pixels, limit, size
        shown = f"{size[0]}x{size[1]} = " if size else ""
        super().__init__(f"{path}: refused before decoding: {shown}{pixels / 1e6:.1f} MP is "
                         f"more than the limit of {limit / 1e6:.1f} MP ({limit} pixels)")


class OutputExistsError(ImageError):
    """write_png_atomic(overwrite=False) found the destination already there."""


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def list_images(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (not recursive) into image paths, sorted per folder.

    Returns (paths, problems): a named input that does not exist is a problem line.
    In a folder, files with other suffixes are skipped silently; anything with an
    image suffix is listed (a sub-folder or a dangling link named x.png too, so that
    its reader reports it rather than it vanishing unnoticed).
    """
    paths: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            try:
                entries = sorted(item.iterdir())
            except OSError as err:
                problems.append(f"{item}: cannot list folder ({err.strerror or err})")
                continue
            paths += [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        elif item.exists() or item.is_symlink():
            paths.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return paths, problems


def _open_regular(path: Path):
    """A binary file object for path, which must be a regular file (checked on the
    open descriptor, so nothing can be swapped in between; O_NONBLOCK keeps a FIFO
    from blocking the open)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno == errno.ENOENT and path.is_symlink():
            reason = "a link to a file that does not exist"
        elif err.errno == errno.EISDIR:
            reason = "a folder, not an image file (folders inside folders are not searched)"
        raise ImageError(f"{path}: cannot read image ({reason})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ImageError(f"{path}: cannot read image ({kind})")
    return os.fdopen(fd, "rb")


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, ...) array: the stored pixels as
    they are meant to be seen."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                       # mirrored left-right
        3: lambda a: a[::-1, ::-1],                    # turned 180 degrees
        4: lambda a: a[::-1],                          # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),                 # transposed
        6: lambda a: np.rot90(a, -1),                  # needs 90 degrees clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),     # transversed
        8: lambda a: np.rot90(a, 1),                   # needs 90 degrees anticlockwise
    }
    return np.ascontiguousarray(transforms.get(orientation, transforms[1])(array))


def _orientation(exif) -> int:
    try:
        value = int(exif.get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - corrupt EXIF: show the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1]; ImageError (one line) for anything unusable.

    max_pixels: refuse, from the header alone, images with more pixels
    (ImageTooLargeError); None for no limit of ours (Pillow's decompression-bomb
    limit still holds).
    """
    path = Path(path)
    try:
        with _open_regular(path) as fh:
            return _decode(fh, path, max_pixels)
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault
        raise ImageError(f"{path}: cannot read image ({_one_line(err)})") from None


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) from the file's header, without decoding; None when unreadable
    (load_image then says why). EXIF rotation may swap the two."""
    from PIL import Image

    _quiet_pillow()
    try:
        with _open_regular(Path(path)) as fh, Image.open(fh, formats=DECODERS) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - a planning hint only
        return None
    return (int(height), int(width)) if width and height else None


def _decode(fh, path: Path, max_pixels: int | None) -> np.ndarray:
    from PIL import Image

    from core import png16

    _quiet_pillow()
    if max_pixels is not None and max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = max_pixels  # only ever raised, to honour a larger limit
    try:
        im = Image.open(fh, formats=DECODERS)
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(found.group(1)) if found else 0
        raise ImageTooLargeError(path, pixels, max_pixels or Image.MAX_IMAGE_PIXELS,
                                 None) from None
    except Image.UnidentifiedImageError:
        fh.seek(0, os.SEEK_END)
        what = "an empty file" if fh.tell() == 0 else \
            "not a PNG, JPEG or BMP image (whatever its name says)"
        raise ImageError(f"{path}: cannot read image ({what})") from None
    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(path, width * height, max_pixels, (width, height))
        if width == 0 or height == 0:
            raise ImageError(f"{path}: cannot read image (it has no pixels)")
        fh.seek(0)
        head = fh.read(33)
        if im.format == "PNG" and png16.is_16bit_colour(head):
            return _decode_png16(fh, path, max_pixels)
        check_before_decoding(im, fh, path, max_pixels)
        im.load()
        return _pil_to_float(im, _orientation(im.getexif()))


def _quiet_pillow() -> None:
    """Silence two Pillow warnings that would only be noise here: the
    decompression-bomb warning (our own size check runs right after the header)
    and the note on palette transparency (alpha is dropped anyway). Filters are
    added once (and again only if something reset them), rather than a
    catch_warnings per call, which is not safe with loader threads."""
    from PIL import Image

    if not any(f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _png_limit(max_pixels: int | None) -> int:
    """The pixel limit core.png16 checks on the header it reads itself (the file may
    have changed since Pillow read it); None: Pillow's decompression-bomb limit."""
    from PIL import Image

    limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return limit or 1 << 62


def check_before_decoding(im, fh, path: Path, max_pixels: int | None) -> None:
    """What Pillow's decoders do not check, checked on the open file before im.load():
    a PNG must hold every row (Pillow leaves missing ones black); a JPEG at most
    core.jpeg_scans.MAX_JPEG_SCANS scans (each costs a pass over the whole image) and,
    Huffman-coded, a bit of coded data per 8x8 block (libjpeg fills what is missing
    grey). The file's position is restored."""
    from core import jpeg_scans

    position = fh.tell()
    if im.format == "PNG":
        _check_png_data(fh, path, max_pixels)
    elif im.format in ("JPEG", "MPO"):
        try:
            jpeg_scans.check(fh)
        except jpeg_scans.JPEGRefused as err:
            raise ImageError(f"{path}: refused before decoding: {err}") from None
    fh.seek(position)


def _check_png_data(fh, path: Path, max_pixels: int | None) -> None:
    from core import png16

    try:
        png16.check_image_data(fh, _png_limit(max_pixels))
    except png16.PNGTooLargeError as err:
        raise ImageTooLargeError(path, err.width * err.height, err.limit,
                                 (err.width, err.height)) from None
    except png16.PNGError as err:
        raise ImageError(f"{path}: cannot read image ({_one_line(err)})") from None


def _decode_png16(fh, path: Path, max_pixels: int | None) -> np.ndarray:
    """The file is read again here, so its size is checked again on these bytes: a
    file rewritten after Pillow read its header cannot slip a larger one past the
    limit (None: Pillow's decompression-bomb limit, as for every other image)."""
    from PIL import Image

    from core import png16

    fh.seek(0)
    try:
        samples, exif_bytes = png16.read(fh, _png_limit(max_pixels))
    except png16.PNGTooLargeError as err:
        raise ImageTooLargeError(path, err.width * err.height, err.limit,
                                 (err.width, err.height)) from None
    orientation = 1
    if exif_bytes:
        exif = Image.Exif()
        try:
            exif.load(exif_bytes)
            orientation = _orientation(exif)
        except Exception:  # noqa: BLE001 - corrupt EXIF: pixels as stored
            orientation = 1
    samples = orient(samples[:, :, :1] if samples.shape[2] == 2 else samples[:, :, :3],
                     orientation)  # turned while 2 bytes a sample, not 4
    scaled = samples.astype(np.float32)
    del samples
    scaled /= np.float32(65535)  # in place: the same float32 quotient
    return np.repeat(scaled, 3, axis=2) if scaled.shape[2] == 1 else scaled


# EXIF orientation -> Pillow's Image.Transpose value, as in ImageOps.exif_transpose
PIL_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


def _pil_to_float(im, orientation: int) -> np.ndarray:
    """Turned upright while the pixels are still in their narrowest form (8-bit RGB,
    one grey channel), and divided in place: a 36 MP JPEG with an EXIF quarter turn
    peaked at 968 MB above the start when the float32 array was turned, 658 MB so."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = orient(np.asarray(im), orientation).astype(np.float64) / 65535.0
        return np.repeat(np.clip(grey, 0, 1).astype(np.float32)[:, :, None], 3, axis=2)
    if im.mode == "F":
        grey = np.clip(orient(np.asarray(im, dtype=np.float32), orientation), 0, 1)
        return np.repeat(grey[:, :, None], 3, axis=2)
    upright = im.convert("RGB")
    if orientation != 1:  # Pillow's transpose (ImageOps.exif_transpose's): a 36 MP quarter
        upright = upright.transpose(PIL_TRANSPOSE[orientation])  # turn 0.1 s, numpy's 0.6 s
    rgb = np.asarray(upright, dtype=np.uint8)
    del upright
    scaled = rgb.astype(np.float32)
    del rgb
    scaled /= np.float32(255)  # in place: the same float32 quotient as x / 255
    return scaled


def parse_image_size(text: str) -> tuple[int, int]:
    """'400x600' -> (400, 600): height x width; ValueError for anything else."""
    parts = text.lower().replace(" ", "").replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"size must be HxW (height x width), e.g. 400x600; got {text!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"size must be positive, got {text!r}")
    return h, w


def quantize(image: np.ndarray) -> np.ndarray:
    """The authors' float -> uint8: x 255, clip to [0, 255], truncate (numpy astype)."""
    scaled = np.asarray(image, dtype=np.float32) * np.float32(255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def write_png_atomic(array_uint8: np.ndarray, dst: str | os.PathLike,
                     overwrite: bool = True) -> None:
    """Write an 8-bit RGB (or grey) PNG via an fsynced temporary file and a rename.

    overwrite=False: an existing dst is left alone (OutputExistsError); the final
    step is a hard link, which fails rather than replace a file that appeared in
    the meantime. Any OS failure (full disk, no permission) is an ImageError.
    """
    write_pngs_atomic([array_uint8], [dst], overwrite)


def write_pngs_atomic(arrays_uint8: list[np.ndarray], dsts: list[str | os.PathLike],
                      overwrite: bool = True) -> None:
    """Several PNGs published as a unit (core.atomic_files.atomic_paths): all are
    encoded into temporary files first; if one cannot be written or published, none
    of them is (a replaced file keeps its previous content)."""
    from PIL import Image

    from core.atomic_files import atomic_paths

    dsts = [Path(d) for d in dsts]
    try:
        with atomic_paths(dsts, overwrite=overwrite) as temps:
            for array, tmp in zip(arrays_uint8, temps):
                with open(tmp, "wb") as fh:
                    Image.fromarray(np.ascontiguousarray(array)).save(
                        fh, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    except FileExistsError:
        taken = [d for d in dsts if d.exists() or d.is_symlink()] or dsts
        raise OutputExistsError(f"{escape_text(taken[0])}: exists (use --overwrite to replace "
                                "it)") from None
    except OSError as err:
        where = escape_text(" and ".join(map(str, dsts)))
        raise ImageError(f"{where}: cannot write ({err.strerror or err})") from None
