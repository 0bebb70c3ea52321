"""Image pairs for evaluation: the one pair type, and two folders matched by name.

`ImagePair` (a name, the low-light or predicted image, the reference image, both uint8
RGB HWC) is what held-out evaluation (dln.heldout), Table 2 (parity.evaluation.table2)
and the data sources (core.data: built-in held-out photographs, LOL's eval15) pass
around; `open_heldout_pairs` opens a `--data` argument ('builtin' or a LOL-layout
folder) as such pairs. `match_by_name` pairs the files of two folders (LOL layout:
low/ and high/ share file names), read as uint8 RGB by `load_uint8`.
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


def load_uint8(path: str | os.PathLike) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3): 8-bit files exactly as stored (the project's
    loader divides by 255 in float32, which rounding undoes exactly); 16-bit files
    rounded to 8 bits."""
    unit = load_image(path)
    return np.round(unit.astype(np.float64) * 255.0).astype(np.uint8)


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
