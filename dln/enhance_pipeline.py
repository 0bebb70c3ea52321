"""The run of `dln enhance` after its plan (dln.enhance.plan_run): three threads.

Batch by batch in the order dln.compute_lanes.lane_order plans: a reader decodes the
next batch while the current one computes; the main thread prepares, compiles and
dispatches batches (JAX returns at once; the next batch is dispatched only when the
previous one of its lane has computed, so one computes per lane at a time, and its host
work and compilation overlap that computation; there is one lane per core on a split
CPU, else one: dln.compute_lanes); a writer takes each batch's result as it computes
(whichever lane finishes first), checks it is finite, quantises it and writes each PNG
atomically. Decoded images held ahead of the network are bounded by READ_AHEAD_BYTES
(one larger image runs alone). An interrupt (Ctrl-C, SIGTERM) stops the reader, lets
the writer finish the PNG it is writing (no temporary file is left) and drops the rest.
A failure of one image or batch is one line while the others go on."""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading

import numpy as np

from core.errors import InputError
from core.images import (ImageError, ImageTooLargeError, OutputExistsError, load_image,
                         quantize, write_png_atomic)
from core.memory import working_budget
from core.progress import progress
from core.timeline import Timeline
from dln.compute_lanes import ComputeLanes, Work, lane_order

READ_AHEAD_BYTES = 256 * 2**20  # decoded images held ahead of the network, at most
WRITER_HOLDS = 8   # dispatched batches the writer holds, waiting for whichever computes first


_STOP = object()


@dataclasses.dataclass
class _Crash:
    error: BaseException


def _bytes_held(job) -> int:
    """Decoded float32 image plus output, held from decoding to writing."""
    return 24 * job.size[0] * job.size[1] if job.size else 0


class Pipeline:
    """Reader, network and writer threads over the planned units (module docstring)."""

    def __init__(self, predictor, result, overwrite: bool, limit, show_progress: bool,
                 timeline: Timeline):
        """predictor: frameworks.predictor.Predictor; result: dln.enhance.EnhanceResult
        (filled in); limit: dln.enhance.PixelLimit."""
        self.predictor, self.result, self.overwrite = predictor, result, overwrite
        self.limit, self.show_progress, self.timeline = limit, show_progress, timeline
        self._lock = threading.Lock()            # result lists, from three threads
        self._stop = threading.Event()           # set when the run is interrupted
        self._decoded: queue.Queue = queue.Queue(maxsize=1)
        # one dispatched batch per lane may wait for the writer
        self._finished: queue.Queue = queue.Queue(maxsize=max(1, len(predictor.lanes)))
        self._room = threading.Condition()
        self._writing = threading.Lock()         # held by the writer while it writes a PNG
        self._held = 0                           # bytes decoded and not yet written

    def run(self, units: list) -> None:
        """Run dln.enhance.plan_run's units, in the order dln.compute_lanes.lane_order
        plans for the predictor's lanes."""
        units = self._in_lane_order(units)
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
            # an interrupt: the writer finishes the PNG it is writing (no temporary file
            # is left) and writes nothing more; batches still computing are abandoned
            self._stop.set()
            with self._room:
                self._room.notify_all()
            with self._writing:
                pass
            self._bar.close()
            raise
        self._send(self._finished, _STOP)
        with self.timeline.span("drain"):
            writer.join()
        reader.join()
        self._bar.close()

    def _in_lane_order(self, units: list) -> list:
        """The units in lane_order's order, each marked alone (over every device) or not."""
        works = []
        for unit in units:
            if unit.key is None:
                size = unit.jobs[0].size or (0, 0)
                works.append(Work(size[0] * size[1], None))
            else:
                works.append(Work(len(unit.jobs) * unit.key[0] * unit.key[1],
                                  self.predictor.working_bytes(unit.key, len(unit.jobs))))
        ordered = []
        for index, alone in lane_order(works, len(self.predictor.lanes), working_budget()):
            units[index].alone = alone
            ordered.append(units[index])
        return ordered

    # ---- the three threads -------------------------------------------------------------
    def _read(self, units: list) -> None:
        try:
            self._read_units(units)
        except BaseException as err:  # a bug here must not leave the network waiting
            self._send(self._decoded, _Crash(err))

    def _read_units(self, units: list) -> None:
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
        lanes = ComputeLanes(self.predictor.lanes, working_budget())
        for _ in range(count):
            with self.timeline.span("wait_decode"):
                item = self._decoded.get()
            if isinstance(item, _Crash):
                raise item.error
            unit, images = item
            for part in self._parts(unit, images):
                self._run_part(part, lanes)
        self._wait_all(lanes)   # the last batches computing: what the writer waits for

    def _wait_all(self, lanes: ComputeLanes) -> None:
        """Until every batch dispatched in the lanes has computed (or failed: the writer
        reports it, per image)."""
        with self.timeline.span("wait_previous"):
            for pending in lanes.all_pending():
                try:
                    pending.wait()
                except Exception:  # noqa: BLE001 - the writer reports it, per image
                    pass

    def _write(self) -> None:
        """Write batches as they finish computing, not in the order they were dispatched:
        a batch computing for long in one lane does not hold back the other lanes'
        results (nor, through the bounded queue, the dispatching of their next batches)."""
        held: list = []        # taken from the queue, not yet written
        stopping = False
        while held or not stopping:
            if self._stop.is_set():   # interrupted: nothing more is written
                for item in held:
                    self._release(item[0])
                return
            if not stopping and len(held) < WRITER_HOLDS:
                try:
                    item = self._finished.get(timeout=None if not held else 0.005)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    stopping = True
                    continue   # the loop ends here when nothing is held
                elif item is not None:
                    held.append(item)
                    continue   # take whatever else is queued first
            ready = next((h for h in held if _computed(h[1])), None)
            if ready is None and (stopping or len(held) >= WRITER_HOLDS):
                ready = held[0]   # nothing more to take: wait for the oldest
            if ready is None:
                continue
            held.remove(ready)
            self._write_item(ready)

    def _write_item(self, item) -> None:
        try:
            if not self._stop.is_set():
                self._write_outputs(*item)
        except Exception as err:  # noqa: BLE001 - one line, and the next batch goes on
            self._fail(f"{item[2]}: {type(err).__name__}: {err}"[:300])
        finally:
            self._release(item[0])

    # ---- the work ------------------------------------------------------------------------
    def _decode(self, job) -> np.ndarray | None:
        from dln.enhance import too_large_line

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

    def _parts(self, unit, images: list) -> list[tuple[tuple | None, list, bool | None]]:
        """(key, pairs, alone) to run: the unit's batch, or one tiled image; an image whose
        decoded shape is not its header's (EXIF rotation), or whose header could not be
        read, is planned again and runs on its own (alone: None, decided when it runs)."""
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
            parts.append((key, [(job, image)], None))
        if same:
            parts.insert(0, (unit.key, same, unit.alone))
        return parts

    def _run_part(self, part, lanes: ComputeLanes) -> None:
        """Run whole images of one key (dispatched in a lane, or over every device, not
        awaited) or one tiled image, and hand the result to the writer."""
        key, pairs, alone = part
        predictor = self.predictor
        what = ", ".join(str(job.path) for job, _ in pairs)
        if key is None:
            job, image = pairs[0]
            self.result.notes.append(f"{job.path}: {image.shape[0]}x{image.shape[1]}, "
                                     f"{job.plan.describe()}")
            tty = self.show_progress and sys.stderr.isatty()
            self._wait_all(lanes)   # its tiles' memory is the budget's alone
            pending = self._network(lambda: [predictor.run_tiled(image, job.plan, tty,
                                                                 job.path.name)], what)
        else:
            estimate = predictor.working_bytes(key, len(pairs))
            if alone is None:
                alone = not lanes.takes(estimate)
            lane = None if alone else lanes.choose(predictor.compiled_lanes(key, len(pairs)))
            after = lanes.all_pending() if lane is None else lanes.after(lane, estimate)
            device = None if lane is None else lanes.device(lane)
            pending = self._network(lambda: predictor.submit(
                [im for _, im in pairs], key, after=after, device=device), what)
            if pending is not None and not isinstance(pending, list):
                lanes.dispatched(lane, pending, estimate)
        if pending is None:
            self._release(pairs)
            self._bar.update(len(pairs))
            return
        with self.timeline.span("wait_writer"):
            self._send(self._finished, (pairs, pending, what))

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
            with self._writing:
                if self._stop.is_set():
                    return
                self._write_one(job, output)
            self._bar.update(1)

    def _write_one(self, job, output: np.ndarray) -> None:
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


def _computed(pending) -> bool:
    """A dispatched batch has computed, or failed (a tiled image's list of outputs always
    has)."""
    try:
        return isinstance(pending, list) or pending.computed()
    except Exception:  # noqa: BLE001 - a failed batch: its result() says how
        return True


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
