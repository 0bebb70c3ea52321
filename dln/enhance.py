"""`dln enhance`: images in, enhanced PNGs out, with either backend.

A run has two parts. Planning, from the file headers, before anything is decoded or
written (`plan_run`): each image's output name must be free (not an input of the run,
not the output of an earlier input: core.run_outputs, decided for all images at once;
not an existing file unless overwrite=True); its pixel count must be within the limit (--max-pixels, or by default
the smaller of DEFAULT_MAX_PIXELS and what a tiled run fits in 80 % of the memory
available); the predictor plans it whole (in a size bucket or at its own size) or tiled
(frameworks.memory_plan), and whole images are grouped into batches. Every problem of
this part is one line in `failures` (an image) or a refusal of the run (InputError,
exit 2: `--tile off` with an image that fits no whole run, no scratch space for a
tiled one). After it, the list of (input, output) pairs of the run is complete.

Then the run itself (`_Pipeline`), batch by batch in the planned order, in three
threads so that decoding and encoding overlap the network: a reader decodes the next
batch while the current one computes, the main thread prepares, compiles and
dispatches batches (JAX returns at once; the next batch waits for the previous one to
finish computing, so only one computes at a time), and a writer waits for each
batch's result, checks it is finite, quantises it and writes each PNG atomically
(never half-written, never clobbering a file that appeared meanwhile unless
overwrite=True). A failure of one image or batch is one line while the others go on.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from core.errors import InputError
from core.images import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, ImageTooLargeError,
                         OutputExistsError, header_size, list_images, load_image, quantize,
                         write_png_atomic)
from core.memory import MEMORY_FRACTION, available_memory, working_budget
from core.progress import progress
from core.run_outputs import refused_outputs
from core.timeline import Timeline
from core.tiling import landscape, map_bytes, map_channels
from frameworks.memory_plan import (TILED_BYTES_PER_PIXEL, ImagePlan,  # noqa: F401
                                    batch_that_fits, estimated_bytes, tile_working_bytes,
                                    tiled_estimate)
from frameworks.predictor import Predictor

BACKENDS = ("jax", "torch")
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
                                    f"{_size(available)} of memory available")


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def too_large_line(err: ImageTooLargeError, config: DLNConfig, backend: str,
                   limit: PixelLimit) -> str:
    need = tiled_estimate(err.pixels, config, backend)
    size = f"{err.size[0]}x{err.size[1]} = " if err.size else ""
    return (f"{err.path}: refused before decoding: {size}{err.pixels / 1e6:.2f} MP would need "
            f"about {_size(need)} for the tiled {backend} forward pass (dim {config.dim}); the "
            f"limit is {limit.pixels / 1e6:.2f} MP (about "
            f"{_size(tiled_estimate(limit.pixels, config, backend))}, {limit.reason}); "
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
                f"(about {_size(job.plan.estimate_bytes)} each; the working budget is "
                f"{_size(working_budget())})")
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
                f"{job.path}: {h}x{w} needs about {_size(job.plan.estimate_bytes)} to run "
                f"whole (--tile off), more than the working budget of {_size(budget)}; "
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
            raise InputError(f"tiled inference needs {_size(need)} of scratch space in "
                             f"{where}, which has {_size(free)} free (set TMPDIR to a "
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
    timeline.note(images=sum(len(u.jobs) for u in units), units=len(units),
                  buckets=sorted({u.key for u in units if u.key}, key=str))
    _Pipeline(predictor, result, overwrite, limit, show_progress, timeline).run(units)
    return result


def _output_free(path: Path, dst: Path, overwrite: bool, result: "EnhanceResult") -> bool:
    if not overwrite and (dst.exists() or dst.is_symlink()):
        result.skipped.append(dst)
        result.failures.append(f"{path}: not enhanced: {dst} exists (--overwrite replaces it)")
        return False
    return True


_STOP = object()


@dataclasses.dataclass
class _Crash:
    error: BaseException


def _bytes_held(job: Job) -> int:
    """Decoded float32 image plus output, held from decoding to writing."""
    return 24 * job.size[0] * job.size[1] if job.size else 0


class _Pipeline:
    """Reader, network and writer threads over the planned units (module docstring)."""

    def __init__(self, predictor: Predictor, result: EnhanceResult, overwrite: bool,
                 limit: PixelLimit, show_progress: bool, timeline: Timeline):
        self.predictor, self.result, self.overwrite = predictor, result, overwrite
        self.limit, self.show_progress, self.timeline = limit, show_progress, timeline
        self._lock = threading.Lock()            # result lists, from three threads
        self._stop = threading.Event()           # set when the run is interrupted
        self._decoded: queue.Queue = queue.Queue(maxsize=1)
        self._finished: queue.Queue = queue.Queue(maxsize=1)
        self._room = threading.Condition()
        self._held = 0                           # bytes decoded and not yet written

    def run(self, units: list[Unit]) -> None:
        self._bar = progress(None, desc="enhance", unit="img",
                             total=sum(len(u.jobs) for u in units),
                             disable=not self.show_progress)
        reader = threading.Thread(target=self._read, args=(units,), name="reader",
                                  daemon=True)
        writer = threading.Thread(target=self._write, name="writer", daemon=True)
        reader.start()
        writer.start()
        try:
            self._compute(len(units))
        except BaseException:
            self._stop.set()     # an interrupt: the writer ends its current PNG and stops
            with self._room:
                self._room.notify_all()
            raise
        finally:
            self._send(self._finished, _STOP)
            with self.timeline.span("drain"):
                writer.join()
            reader.join()
            self._bar.close()

    # ---- the three threads -------------------------------------------------------------
    def _read(self, units: list[Unit]) -> None:
        try:
            self._read_units(units)
        except BaseException as err:  # a bug here must not leave the network waiting
            self._send(self._decoded, _Crash(err))

    def _read_units(self, units: list[Unit]) -> None:
        for unit in units:
            self._reserve(sum(_bytes_held(j) for j in unit.jobs))
            if self._stop.is_set():
                return
            images = []
            for job in unit.jobs:
                with self.timeline.span("decode", item=job.path.name):
                    image = self._decode(job)
                if image is not None:
                    images.append((job, image))
            if not self._send(self._decoded, (unit, images)):
                return

    def _compute(self, count: int) -> None:
        previous = None
        for _ in range(count):
            with self.timeline.span("wait_decode"):
                item = self._decoded.get()
            if isinstance(item, _Crash):
                raise item.error
            unit, images = item
            for part in self._parts(unit, images):
                previous = self._run_part(part, previous) or previous
        if previous is not None:   # the last batch computing: what the writer waits for
            with self.timeline.span("wait_previous"):
                try:
                    previous.wait()
                except Exception:  # noqa: BLE001 - the writer reports it, per image
                    pass

    def _write(self) -> None:
        while True:
            item = self._finished.get()
            if item is _STOP:
                return
            try:
                if not self._stop.is_set():
                    self._write_outputs(*item)
            except Exception as err:  # noqa: BLE001 - one line, and the next batch goes on
                self._fail(f"{item[2]}: {type(err).__name__}: {err}"[:300])
            finally:
                self._release(item[0])

    # ---- the work ------------------------------------------------------------------------
    def _decode(self, job: Job) -> np.ndarray | None:
        try:
            return load_image(job.path, max_pixels=self.limit.pixels)
        except ImageTooLargeError as err:
            self._fail(too_large_line(err, self.predictor.config, self.predictor.backend,
                                      self.limit))
        except ImageError as err:
            self._fail(str(err))
        except MemoryError:
            self._fail(f"{job.path}: out of memory while decoding")
        self._release([(job, None)])
        self._bar.update(1)
        return None

    def _parts(self, unit: Unit, images: list) -> list[tuple[tuple | None, list]]:
        """(key, pairs) to run: the unit's batch, or one tiled image; an image whose
        decoded shape is not its header's (EXIF rotation), or whose header could not be
        read, is planned again and runs on its own."""
        parts, same = [], []
        for job, image in images:
            shape = image.shape[:2]
            if job.size == shape and job.plan.mode == "whole":
                same.append((job, image))
                continue
            if job.size != shape:
                job.plan = self.predictor.plan(*shape)
            key = None if job.plan.mode == "tiled" else \
                self.predictor.group_key(job.plan, *shape)
            parts.append((key, [(job, image)]))
        if same:
            parts.insert(0, (unit.key, same))
        return parts

    def _run_part(self, part, previous):
        """Run whole images of one key (dispatched, not awaited) or one tiled image,
        and hand the result to the writer. Returns the dispatched batch, if any."""
        key, pairs = part
        predictor = self.predictor
        what = ", ".join(str(job.path) for job, _ in pairs)
        if key is None:
            job, image = pairs[0]
            self.result.notes.append(f"{job.path}: {image.shape[0]}x{image.shape[1]}, "
                                     f"{job.plan.describe()}")
            tty = self.show_progress and sys.stderr.isatty()
            pending = self._network(lambda: [predictor.run_tiled(image, job.plan, tty,
                                                                 job.path.name)], what)
        else:
            pending = self._network(lambda: predictor.submit([im for _, im in pairs], key,
                                                             after=previous), what)
        if pending is None:
            self._release(pairs)
            self._bar.update(len(pairs))
            return None
        with self.timeline.span("wait_writer"):
            self._send(self._finished, (pairs, pending, what))
        return None if isinstance(pending, list) else pending

    def _network(self, forward, what):
        try:
            return _run_network(forward, what)
        except ImageError as err:
            self._fail(str(err))
            return None

    def _write_outputs(self, pairs, pending, what) -> None:
        try:
            outputs = pending if isinstance(pending, list) else \
                _run_network(pending.result, what)
        except ImageError as err:
            self._fail(str(err))
            self._bar.update(len(pairs))
            return
        for (job, _), output in zip(pairs, outputs):
            if not self._stop.is_set():
                self._write_one(job, output)
            self._bar.update(1)

    def _write_one(self, job: Job, output: np.ndarray) -> None:
        if not np.all(np.isfinite(output)):
            self._fail(f"{job.path}: the network's output holds NaN or Inf (weights too "
                       "large for float32?); nothing written")
            return
        try:
            with self.timeline.span("quantize", item=job.path.name):
                levels = quantize(output)
            with self.timeline.span("encode_write", item=job.path.name):
                write_png_atomic(levels, job.dst, overwrite=self.overwrite)
            with self._lock:
                self.result.written.append(job.dst)
        except OutputExistsError:
            with self._lock:
                self.result.skipped.append(job.dst)
            self._fail(f"{job.path}: not enhanced: {job.dst} appeared meanwhile "
                       "(--overwrite replaces it)")
        except ImageError as err:
            self._fail(str(err))

    def _fail(self, line: str) -> None:
        with self._lock:
            self.result.failures.append(line)

    # ---- hand-overs and the bytes held -------------------------------------------------------
    def _send(self, q: queue.Queue, item) -> bool:
        """Put item on q; once the run is interrupted, queued work is dropped so that the
        stop marker gets through, and other items are not sent (False)."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._stop.is_set():
                    if item is not _STOP:
                        return False
                    try:
                        dropped = q.get_nowait()
                        if dropped is not _STOP and isinstance(dropped, tuple) and \
                                len(dropped) == 3:
                            self._release(dropped[0])
                    except queue.Empty:
                        pass

    def _reserve(self, need: int) -> None:
        """Wait until `need` more decoded bytes fit READ_AHEAD_BYTES (always when none
        are held: one image larger than that runs alone)."""
        with self._room:
            while self._held and self._held + need > READ_AHEAD_BYTES and \
                    not self._stop.is_set():
                self._room.wait()
            self._held += need

    def _release(self, pairs) -> None:
        with self._room:
            self._held = max(0, self._held - sum(_bytes_held(job) for job, _ in pairs))
            self._room.notify_all()


def _run_network(forward, what):
    try:
        return forward()
    except InputError as err:  # e.g. no room for the scratch file of a tiled run
        raise ImageError(f"{what}: {err}") from None
    except MemoryError:
        raise ImageError(f"{what}: out of memory in the forward pass (try --tile 256 or a "
                         "smaller --max-pixels)") from None
    except Exception as err:  # noqa: BLE001 - e.g. an accelerator out of memory
        text = " ".join(str(err).split())[:160]
        raise ImageError(f"{what}: the forward pass failed ({type(err).__name__}: {text})") \
            from None
