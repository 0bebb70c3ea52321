"""Synthetic low-light pairs on disk (LOL layout) from any folder of images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.errors import UserError
from core.images import ImageError, list_images, load_image, write_pngs_atomic
from core.lowlight import make_pair
from core.run_outputs import OutputClash, OutputPlan, same_file
from core.text import escape_text


@dataclasses.dataclass
class SynthResult:
    written: list[str]
    problems: list[str]


def synthesize_folder(source: str | Path, out: str | Path, seed: int = 0,
                      overwrite: bool = False) -> SynthResult:
    """out/high/<stem>.png (shorter side 384) and out/low/<stem>.png (darkened), per image.

    Refused before anything is written (UserError): a folder without any image, and
    an --out whose high/ or low/ is the source folder itself (its outputs would
    replace the originals). Per image, one problem line while the others are still
    written: a file that cannot be read, a second file with the same stem, an output
    that is one of the source images (through a link, say; never replaced, even with
    overwrite), or (without overwrite) a pair whose outputs already exist. A pair is
    published as a unit (core.atomic_files.atomic_paths): both images or neither,
    never a new reference beside an old low-light image.
    """
    from core.data import to_uint8
    from core.progress import progress

    paths, problems = list_images([source])
    if not paths and not problems:
        raise UserError(f"{escape_text(source)}: no images to darken in this folder (png, "
                        "jpg, jpeg, bmp); nothing written")
    out = Path(out)
    for sub in ("high", "low"):
        if same_file(out / sub, source):
            raise UserError(f"--out {escape_text(out)}: its {sub}/ folder is the --source "
                            "folder, so the pairs would replace the original images; "
                            "nothing written (choose another --out)")
    plan = OutputPlan(paths)
    try:
        (out / "low").mkdir(parents=True, exist_ok=True)
        (out / "high").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {escape_text(out)}: cannot create its low/ and high/ folders "
                        f"({err.strerror or err})") from None
    written: list[str] = []
    stems: set[str] = set()
    for path in progress(paths, desc="synth", unit="image"):
        shown = escape_text(path)
        if path.stem in stems:
            problems.append(f"{shown}: another image is also named "
                            f"{escape_text(path.stem)!r}; skipped")
            continue
        stems.add(path.stem)
        targets = (out / "high" / f"{path.stem}.png", out / "low" / f"{path.stem}.png")
        try:
            for target in targets:
                plan.claim(target, path)
        except OutputClash as err:
            problems.append(str(err))
            continue
        existing = [escape_text(t) for t in targets if t.exists() or t.is_symlink()]
        if existing and not overwrite:
            problems.append(f"{shown}: {' and '.join(existing)} exist(s) "
                            "(use --overwrite to replace)")
            continue
        try:
            image = to_uint8(load_image(path))
            low, high, _ = make_pair(image, path.stem, seed)
        except ImageError as err:
            problems.append(escape_text(err) if str(path) in str(err) else
                            f"{shown}: {escape_text(err)}")
            continue
        try:
            write_pngs_atomic([high, low], targets, overwrite=overwrite)
        except ImageError as err:
            problems.append(escape_text(err))
            continue
        written.append(path.stem)
    return SynthResult(written, problems)
