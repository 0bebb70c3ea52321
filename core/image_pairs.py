"""Image pairs for evaluation: the one pair type, and two folders matched by name.

`ImagePair` (a name, the low-light or predicted image, the reference image, both uint8
RGB HWC) is what held-out evaluation (dln.heldout), Table 2 (parity.evaluation.table2)
and the data sources (core.data: built-in held-out photographs, LOL's eval15) pass
around; `open_heldout_pairs` opens a `--data` argument ('builtin' or a LOL-layout
folder) as such pairs. `match_by_name` pairs the files of two folders (LOL layout:
low/ and high/ share file names), read as uint8 RGB by `load_uint8`, a pair at a time
by `read_matched` (`dln metrics --compare-libraries`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.images import ImageError, list_images, load_image


@dataclasses.dataclass(frozen=True)
class ImagePair:
    name: str
    low: np.ndarray   # uint8 HWC: the input (or an estimate)
    high: np.ndarray  # uint8 HWC: the reference


@dataclasses.dataclass(frozen=True)
class MatchedFolders:
    pairs: list[tuple[str, Path, Path]]   # (name, prediction path, ground-truth path)
    only_pred: list[str]
    only_gt: list[str]


def _by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            raise ImageError(f"{folder}: not a folder (give the {role} images as a folder)")
        raise ImageError(f"{folder}: the {role} folder does not exist")
    paths, _ = list_images([folder])
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise ImageError(f"{folder}: two images are named {path.stem!r} "
                             f"({found[path.stem].name}, {path.name}); cannot match by name")
        found[path.stem] = path
    return found


def match_by_name(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> MatchedFolders:
    """Pairs of images with the same file name (without suffix) in both folders."""
    pred = _by_stem(Path(pred_dir), "prediction")
    gt = _by_stem(Path(gt_dir), "ground-truth")
    common = sorted(set(pred) & set(gt))
    if not common:
        raise ImageError(f"no image names in common between {pred_dir} ({len(pred)} images) "
                         f"and {gt_dir} ({len(gt)} images)")
    return MatchedFolders(pairs=[(n, pred[n], gt[n]) for n in common],
                          only_pred=sorted(set(pred) - set(gt)),
                          only_gt=sorted(set(gt) - set(pred)))


def read_matched(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike):
    """(name, prediction uint8, ground truth uint8) for every name in both folders
    (match_by_name), read one pair at a time: a folder of large pairs never sits in
    memory at once."""
    for name, pred, gt in match_by_name(pred_dir, gt_dir).pairs:
        yield name, load_uint8(pred), load_uint8(gt)


def load_uint8(path: str | os.PathLike) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3), as core.images.load_image reads it (orientation,
    palettes, grey, alpha dropped): 8-bit files exactly as stored, decoded straight to
    uint8 (load_image's x / 255 in float32, which rounding undoes exactly, would hold
    12 bytes per pixel more); 16-bit files rounded to 8 bits, a strip of rows at a time."""
    fast = _load_8bit(Path(path))
    if fast is not None:
        return fast
    unit = load_image(path)
    out = np.empty(unit.shape, np.uint8)
    for y in range(0, unit.shape[0], 256):
        out[y:y + 256] = np.round(unit[y:y + 256].astype(np.float64) * 255.0)
    return out


EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _load_8bit(path: Path) -> np.ndarray | None:
    """The uint8 pixels of an 8-bit PNG / JPEG / BMP within load_image's pixel limit;
    None for anything else (load_image then reads it, or says why it cannot)."""
    from PIL import Image

    from core import png16
    from core.images import (DECODERS, DEFAULT_MAX_PIXELS, _open_regular, _orientation,
                             _quiet_pillow, check_before_decoding, orient)

    _quiet_pillow()
    try:
        with _open_regular(path) as fh:
            head = fh.read(33)
            fh.seek(0)
            with Image.open(fh, formats=DECODERS) as im:
                width, height = im.size
                if (im.mode not in EIGHT_BIT_MODES or width * height > DEFAULT_MAX_PIXELS
                        or (im.format == "PNG" and png16.is_16bit_colour(head))):
                    return None
                check_before_decoding(im, fh, path, DEFAULT_MAX_PIXELS)  # as load_image
                im.load()
                orientation = _orientation(im.getexif())
                rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), np.uint8)
    except Exception:  # noqa: BLE001 - load_image reads it again and words the problem
        return None
    return orient(rgb, orientation)


def open_heldout_pairs(data: str) -> tuple[list[ImagePair], str, list[str]]:
    """('builtin' | a LOL-layout folder) -> (pairs, description, problems): the built-in
    held-out pairs, or a folder's low/ and high/ (or eval15/low and eval15/high)
    matched by name (core.data reads them; a bad pair is a problem line)."""
    from core.data import HELDOUT_SPLITS, builtin_heldout, folder_heldout, pair_folders

    if data == "builtin":
        return builtin_heldout(), "built-in held-out synthetic pairs (seed 0)", []
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"--data {data}: not a folder (give a LOL-layout folder or 'builtin')")
    found = pair_folders(root, HELDOUT_SPLITS)
    if found is None:
        raise InputError(f"--data {data}: no low/ and high/ folders (nor eval15/low, "
                         "eval15/high)")
    held, problems = folder_heldout(*found)
    if not held:
        raise InputError(f"--data {data}: no usable image pairs"
                         + (f" ({problems[0]})" if problems else ""))
    return held, f"{found[0].parent}", problems
