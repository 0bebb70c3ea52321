"""Synthetic low-light pairs on disk (LOL layout) from any folder of images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.errors import UserError
from core.images import ImageError, list_images, load_image, write_png_atomic
from core.lowlight import make_pair


@dataclasses.dataclass
class SynthResult:
    written: list[str]
    problems: list[str]


def synthesize_folder(source: str | Path, out: str | Path, seed: int = 0,
                      overwrite: bool = False) -> SynthResult:
    """out/high/<stem>.png (shorter side 384) and out/low/<stem>.png (darkened), per image.

    A file that cannot be read, a second file with the same stem, or (without
    overwrite) a pair whose outputs already exist is one problem line; the others
    are still written. A folder without any image is a UserError (nothing written). A pair is never left half-replaced by an existing file.
    """
    from core.data import to_uint8
    from core.progress import progress

    paths, problems = list_images([source])
    if not paths and not problems:
        raise UserError(f"{source}: no images to darken in this folder (png, jpg, jpeg, bmp); "
                        "nothing written")
    out = Path(out)
    (out / "low").mkdir(parents=True, exist_ok=True)
    (out / "high").mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for path in progress(paths, desc="synth", unit="image"):
        if path.stem in written:
            problems.append(f"{path}: another image is also named {path.stem!r}; skipped")
            continue
        try:
            image = to_uint8(load_image(path))
        except ImageError as err:
            problems.append(str(err))
            continue
        targets = (out / "high" / f"{path.stem}.png", out / "low" / f"{path.stem}.png")
        existing = [str(t) for t in targets if t.exists() or t.is_symlink()]
        if existing and not overwrite:
            problems.append(f"{path}: {' and '.join(existing)} exist(s) "
                            "(use --overwrite to replace)")
            continue
        low, high, _ = make_pair(image, path.stem, seed)
        try:
            write_png_atomic(high, targets[0], overwrite=overwrite)
            write_png_atomic(low, targets[1], overwrite=overwrite)
        except ImageError as err:
            problems.append(str(err))
            continue
        written.append(path.stem)
    return SynthResult(written, problems)
