"""`dln enhance`: images in, enhanced PNGs out, on any backend of the one predictor.

A run has two parts. Planning, from the file headers, before anything is decoded or
written (`plan_run`): each image's output name must be free (not an input of the run,
not the output of an earlier input: core.run_outputs, decided for all images at once;
not an existing file unless overwrite=True); its pixel count must be within the limit
(--max-pixels, or by default the smaller of DEFAULT_MAX_PIXELS and what a tiled run
fits in 80 % of the memory available); the predictor plans it whole (in a size bucket
or at its own size) or tiled (frameworks.memory_plan), and whole images are grouped
into batches. Every problem of this part is one line in `failures` (an image) or a
refusal of the run (InputError, exit 2: `--tile off` with an image that fits no whole
run, no scratch space for a tiled one). After it, the list of (input, output) pairs of
the run is complete.

Then the run itself (dln.enhance_pipeline.Pipeline), batch by batch in the planned
order, in three threads so that decoding and encoding overlap the network; a failure
of one image or batch is one line while the others go on.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from core.config import DLNConfig
from core.errors import InputError
from core.images import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, ImageTooLargeError,
                         header_size, list_images)
from core.memory import MEMORY_FRACTION, available_memory, working_budget
from core.run_outputs import refused_outputs
from core.timeline import Timeline
from core.tiling import map_bytes, map_channels
from core.units import format_bytes
from dln.enhance_pipeline import Pipeline
from frameworks.memory_plan import (TILED_BYTES_PER_PIXEL, ImagePlan,  # noqa: F401
                                    batch_that_fits, estimated_bytes, tile_working_bytes,
                                    tiled_estimate)
from frameworks.predictor import Predictor

READ_AHEAD_BYTES = 256 * 2**20  # decoded images held ahead of the network, at most


@dataclasses.dataclass
class EnhanceResult:
    written: list[Path]
    skipped: list[Path]
    failures: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)  # how big images were run

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclasses.dataclass(frozen=True)
class PixelLimit:
    pixels: int
    reason: str   # how the limit was set, for the refusal line


def pixel_limit(config: DLNConfig, backend: str, max_pixels: int | None = None) -> PixelLimit:
    """--max-pixels when given; else the smaller of DEFAULT_MAX_PIXELS and what a
    tiled run fits in MEMORY_FRACTION of the memory available now (one tile's working
    memory plus TILED_BYTES_PER_PIXEL per pixel; the stage maps go to a scratch file)."""
    if max_pixels is not None:
        return PixelLimit(int(max_pixels), "set by --max-pixels")
    available = available_memory()
    if available is None:
        return PixelLimit(DEFAULT_MAX_PIXELS, "the default --max-pixels")
    room = int(available * MEMORY_FRACTION) - tile_working_bytes(config, backend)
    fits = room // TILED_BYTES_PER_PIXEL
    if fits >= DEFAULT_MAX_PIXELS:
        return PixelLimit(DEFAULT_MAX_PIXELS, "the default --max-pixels")
    return PixelLimit(max(fits, 1), f"what fits in {MEMORY_FRACTION:.0%} of the "
                                    f"{format_bytes(available)} of memory available")


def too_large_line(err: ImageTooLargeError, config: DLNConfig, backend: str,
                   limit: PixelLimit) -> str:
    need = tiled_estimate(err.pixels, config, backend)
    size = f"{err.size[0]}x{err.size[1]} = " if err.size else ""
    return (f"{err.path}: refused before decoding: {size}{err.pixels / 1e6:.2f} MP would need "
            f"about {format_bytes(need)} for the tiled {backend} forward pass (dim {config.dim}); the "
            f"limit is {limit.pixels / 1e6:.2f} MP (about "
            f"{format_bytes(tiled_estimate(limit.pixels, config, backend))}, {limit.reason}); "
            "--max-pixels changes it")


def _prepare_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ImageError(f"{output_dir}: exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageError(f"{output_dir}: cannot create the output folder "
                         f"({err.strerror or err})") from None


@dataclasses.dataclass
class Job:
    """One image of the run: where it comes from and goes, and how it runs."""
    path: Path
    dst: Path
    plan: ImagePlan
    size: tuple[int, int] | None        # (height, width) from the header (EXIF may swap)
    key: tuple | None = None            # whole images: the predictor's group key


@dataclasses.dataclass
class Unit:
    """What the network runs in one go: a batch of whole images of one key, or one
    tiled image."""
    jobs: list[Job]
    key: tuple | None                   # None: tiled
    alone: bool = False                 # over every device of a split CPU, not in one lane


def plan_run(paths: list[Path], output_dir: Path, predictor: Predictor, limit: PixelLimit,
             overwrite: bool, batch: int, result: EnhanceResult) -> list[Unit]:
    """Every image planned from its header, in the order given; the refused ones are
    lines in result.failures. Returns the units to run, in order."""
    from PIL import Image

    config, backend = predictor.config, predictor.backend
    if limit.pixels > (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = limit.pixels  # as load_image does: headers up to the limit
    jobs: list[Job] = []
    refused = refused_outputs((path, output_dir / f"{path.stem}.png") for path in paths)
    result.failures += refused.values()  # decided for the whole run before any write
    for path in paths:
        dst = output_dir / f"{path.stem}.png"
        if path in refused or not _output_free(path, dst, overwrite, result):
            continue
        size = header_size(path)
        if size and size[0] * size[1] > limit.pixels:
            err = ImageTooLargeError(path, size[0] * size[1], limit.pixels, size[::-1])
            result.failures.append(too_large_line(err, config, backend, limit))
            continue
        plan = predictor.plan(*size) if size else ImagePlan("whole")  # unreadable: fails later
        jobs.append(Job(path, dst, plan, size))
    _refuse_what_cannot_run(jobs, predictor)
    predictor.plan_folder([j.size for j in jobs if j.size and
                           predictor.in_buckets(j.plan, *j.size)], batch)
    units: list[Unit] = []
    open_units: dict[tuple, Unit] = {}
    for job in jobs:
        if job.plan.mode == "tiled":
            units.append(Unit([job], None))
            continue
        job.key = predictor.group_key(job.plan, *job.size) if job.size else None
        unit = open_units.get(job.key)
        if unit is None or job.key is None:
            unit = Unit([], job.key)
            units.append(unit)
            open_units[job.key] = unit
        unit.jobs.append(job)
        if len(unit.jobs) >= _batch_limit(job, batch, result):
            del open_units[job.key]
    # the largest first, the smallest last: the run ends with the shortest encode
    return sorted(units, key=lambda u: -sum(j.size[0] * j.size[1] for j in u.jobs if j.size))


def _batch_limit(job: Job, batch: int, result: EnhanceResult) -> int:
    fits = batch_that_fits(job.plan, batch)
    if fits < batch:
        line = (f"--batch {batch} lowered to {fits} for images of {job.key[0]}x{job.key[1]} "
                f"(about {format_bytes(job.plan.estimate_bytes)} each; the working budget is "
                f"{format_bytes(working_budget())})")
        if line not in result.notes:
            result.notes.append(line)
    return fits


def _refuse_what_cannot_run(jobs: list[Job], predictor: Predictor) -> None:
    """Refuse the run (InputError: one line, exit 2) before anything runs when an image
    cannot run as asked: --tile off over the budget, or no scratch space for a tiled
    image's stage maps."""
    budget = working_budget()
    for job in jobs:
        if not job.plan.fits:
            h, w = job.size
            raise InputError(
                f"{job.path}: {h}x{w} needs about {format_bytes(job.plan.estimate_bytes)} to run "
                f"whole (--tile off), more than the working budget of {format_bytes(budget)}; "
                "use --tile auto (or --tile N) to run it in tiles")
    on_disk = [j for j in jobs if j.plan.mode == "tiled" and not j.plan.maps_in_memory]
    if on_disk:
        import shutil
        import tempfile

        channels = map_channels(predictor.stages.stages)
        need = max(map_bytes(*j.size, channels) for j in on_disk)
        where = tempfile.gettempdir()
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return  # the scratch file's own reservation says why, per image
        if free < need:
            raise InputError(f"tiled inference needs {format_bytes(need)} of scratch space in "
                             f"{where}, which has {format_bytes(free)} free (set TMPDIR to a "
                             "roomier folder)")


def enhance_paths(ckpt, inputs: list[str | os.PathLike], output_dir: str | os.PathLike,
                  backend: str = "jax", overwrite: bool = False,
                  max_pixels: int | None = None, show_progress: bool = True,
                  tile: str | int = "auto", batch: int = 1, use_cache: bool = True,
                  cache_dir: str | os.PathLike | None = None,
                  timeline: Timeline | None = None) -> EnhanceResult:
    """Enhance every image named by `inputs` (files or folders) into output_dir/<stem>.png.

    tile: "auto", "off" or a tile side (frameworks.memory_plan); batch: whole images of
    one size bucket per forward pass; use_cache: JAX's persistent compilation cache in
    cache_dir (default port.compile_cache.compilation_cache_dir()); timeline: where the
    time goes (core.timeline; off by default).
    No image at all among the inputs is an InputError (exit 2)."""
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    timeline = timeline or Timeline.off()
    output_dir = Path(output_dir)
    paths, failures = list_images(inputs)
    if not paths:
        named = "; ".join(failures) if failures else \
            f"no {', '.join(s[1:] for s in IMAGE_SUFFIXES)} files in {', '.join(map(str, inputs))}"
        raise InputError(f"nothing to enhance: {named}")
    _prepare_output_dir(output_dir)
    with timeline.span("predictor"):
        predictor = Predictor(ckpt, backend, tile=tile, use_cache=use_cache,
                              cache_dir=cache_dir, timeline=timeline)
    result = EnhanceResult([], [], failures, notes=list(predictor.warnings))
    limit = pixel_limit(ckpt.config, backend, max_pixels)
    with timeline.span("plan"):
        units = plan_run(paths, output_dir, predictor, limit, overwrite, batch, result)
    result.notes += [w for w in predictor.warnings if w not in result.notes]
    # Here every (input, output) pair of the run is known (the jobs of `units`), and
    # nothing has been written yet.
    timeline.note(images=sum(len(u.jobs) for u in units), units=len(units), batch=batch,
                  devices=predictor.devices,
                  buckets=sorted({u.key for u in units if u.key}, key=str))
    Pipeline(predictor, result, overwrite, limit, show_progress, timeline).run(units)
    return result


def _output_free(path: Path, dst: Path, overwrite: bool, result: "EnhanceResult") -> bool:
    if not overwrite and (dst.exists() or dst.is_symlink()):
        result.skipped.append(dst)
        result.failures.append(f"{path}: not enhanced: {dst} exists (--overwrite replaces it)")
        return False
    return True
