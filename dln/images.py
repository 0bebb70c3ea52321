"""Image files in and out, the authors' way (dln_facts.md section 5).

Reading gives RGB float32 HWC in [0, 1]: 8-bit images are PIL-converted to RGB and
divided by 255 in float32 (exactly what the authors' ToTensor does), grayscale is
repeated, alpha dropped, palettes expanded, 16-bit images scaled by 65535, EXIF
orientation applied. Writing quantises like the authors (x 255, clip, truncate)
and renames a finished temporary file into place, so no PNG is ever half-written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_MAX_PIXELS = 16_000_000


class ImageError(Exception):
    """An image file that cannot be used; the message is one line for the user."""


def list_images(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (not recursive) into image paths, sorted per folder.

    Returns (paths, problems): a named input that does not exist is a problem line;
    files in a folder with other suffixes are skipped silently.
    """
    paths: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        elif item.exists() or item.is_symlink():
            paths.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return paths, problems


def _open_pil(path: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            EOFError, MemoryError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ImageError(f"{path}: cannot read image ({reason})") from None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1]."""
    path = Path(path)
    im = _open_pil(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(im, dtype=np.float64)
        scale = 65535.0
        arr = np.clip(gray / scale, 0, 1).astype(np.float32)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if im.mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
        return np.repeat(arr[:, :, None], 3, axis=2)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return rgb.astype(np.float32) / np.float32(255)


def quantize(image: np.ndarray) -> np.ndarray:
    """The authors' float -> uint8: x 255, clip to [0, 255], truncate (numpy astype)."""
    scaled = np.asarray(image, dtype=np.float32) * np.float32(255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def write_png_atomic(array_uint8: np.ndarray, dst: str | os.PathLike) -> None:
    """Write an 8-bit RGB (or gray) PNG via a temporary file and a rename."""
    from PIL import Image

    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(array_uint8)).save(tmp, format="PNG")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
