"""Which lane the next whole-image batch of `dln enhance` computes on, and in what order.

On a CPU split into one XLA device per core (port.host_devices), each device is a lane:
a batch submitted to a lane is compiled for that device and computes on its core alone,
while the other lanes compute other batches. Measured per image at dim 64 on the 2-core
AMD EPYC, two images side by side, one per core, against one image at a time on both
cores (one image in two bands): 240x320 655 against 930 (745) ms, 480x640 2,607 against
3,056 (2,805) ms, 768x1024 6,893 against 7,313 (7,410) ms.

The lanes share the working budget: a batch is dispatched in a lane only when its working
memory plus that of the batches computing in the other lanes fits the budget (else it
also waits for those). `lane_order` plans the run before it starts: the largest batches
first, each lane taking, whenever it is free, the largest batch that fits beside what the
other lanes compute (a 768x1024 at dim 64 needs 2.1 GB of a 3 GiB budget: it computes
beside images up to 480x640, not beside another 768x1024); a batch that nothing left
could run beside for most of its time (a folder of 768x1024 photos), the last batch when
another lane would stand idle, and every tiled image run alone over all the devices
instead, in bands (port.host_devices.spread_sharding).

Without a split there is one lane (the one device, or PyTorch) and batches compute one
after the other in the planned order (the largest first).
"""

from __future__ import annotations

import collections
import dataclasses

# Seconds per padded pixel of one lane before any batch has been seen to finish: 768x1024
# at dim 64 took ~13.8 s on one core of the 2-core AMD EPYC. Only the ratio between the
# lanes' predicted finishes matters, and it is replaced by the measured rate at once.
DEFAULT_SECONDS_PER_PIXEL = 17e-6
# A batch whose program is compiled for one lane and not another goes to the first lane
# unless the other is predicted free this much sooner: one compilation took ~0.5 s of the
# main thread beside two busy lanes (2-core AMD EPYC; JAX's cache key includes the device).
COMPILE_SECONDS = 0.5
# One image in bands over two devices takes this share of its time in one lane: measured
# 745 / 1,310 ms at 240x320, 2,805 / 5,214 ms at 480x640, 7,410 / 13,786 ms at 768x1024
# (0.57, 0.54, 0.54; the lane figures are twice the per-image figures of a lane pair).
BANDS_SHARE_OF_TWO = 0.55
# A batch runs in a lane unless that would waste more core time than running it alone in
# bands: in a lane, the other lanes stand idle for the part of its time that they have no
# work for (what they compute now, and the batches left that fit the budget beside it);
# alone, each lane waits until all are free, and bands take BANDS_SHARE_OF_TWO of the
# lane time on each of two cores (10 % more core time).


@dataclasses.dataclass(frozen=True)
class Work:
    """What lane_order needs of one unit of the run."""
    pixels: int               # pixels computed (padded, times the batch)
    estimate: int | None      # working memory in one lane; None: runs only alone (tiled)


def _bands_time(lane_time: float, lanes: int) -> float:
    return lane_time * BANDS_SHARE_OF_TWO * 2 / lanes


def lane_order(works: list[Work], lanes: int, budget: int) -> list[tuple[int, bool]]:
    """(index into works, alone) in the order to dispatch them; alone: over every device
    (see the module docstring). One lane: the largest first, none alone."""
    order = sorted(range(len(works)), key=lambda i: -works[i].pixels)
    if lanes < 2:
        return [(i, False) for i in order]
    # works of one (pixels, estimate) are interchangeable: kept as classes, largest first
    classes: dict[tuple, collections.deque] = {}
    for i in order:
        classes.setdefault((works[i].pixels, works[i].estimate),
                           collections.deque()).append(i)
    keys = list(classes)
    free = [0.0] * lanes                  # when each lane is next free (simulated)
    last: list[tuple[float, int]] = [(0.0, 0)] * lanes   # (end, estimate) of its last batch
    planned: list[tuple[int, bool]] = []
    rate = DEFAULT_SECONDS_PER_PIXEL
    while keys:
        lane = min(range(lanes), key=free.__getitem__)
        now = free[lane]
        beside = sum(est for other, (end, est) in enumerate(last) if other != lane and end > now)
        key = next((k for k in keys if k[1] is None or k[1] + beside <= budget), None)
        if key is None:
            later = [end for other, (end, _) in enumerate(last) if other != lane and end > now]
            if later:                     # wait until another lane's batch ends
                free[lane] = min(later)
                continue
            key = keys[0]                 # fits beside nothing: alone
        index = classes[key].popleft()
        if not classes[key]:
            keys.remove(key)
        pixels, estimate = key
        lane_time = pixels * rate
        alone = estimate is None or _wasted_alone(free, lane_time, lanes) < \
            _wasted_in_lane(keys, classes, key, last, lane, now, budget, rate, lanes)
        if alone:
            start = max(free)
            end = start + _bands_time(lane_time, lanes)
            free = [end] * lanes
            last = [(end, estimate or 0)] * lanes
        else:
            free[lane] = now + lane_time
            last[lane] = (now + lane_time, estimate)
        planned.append((index, alone))
    return planned


def _wasted_alone(free: list[float], lane_time: float, lanes: int) -> float:
    """Core seconds lost running a batch alone: lanes waiting for the last one to be free,
    and the bands' extra time."""
    start = max(free)
    return sum(start - f for f in free) + lanes * _bands_time(lane_time, lanes) - lane_time


def _wasted_in_lane(keys, classes, picked, last, lane, now, budget, rate, lanes) -> float:
    """Core seconds the other lanes stand idle while `picked` computes in `lane`: its
    time on each of them less what they can compute beside it (the rest of what they
    compute now, and every batch left that fits the budget beside it)."""
    lane_time = picked[0] * rate
    running = sum(min(end - now, lane_time) for other, (end, _) in enumerate(last)
                  if other != lane and end > now)
    fitting = sum(k[0] * len(classes[k]) for k in keys
                  if k[1] is not None and k[1] + picked[1] <= budget) * rate
    return max(0.0, (lanes - 1) * lane_time - running - fitting)


class ComputeLanes:
    """The lanes' batches in flight (objects with computed(), wait(), started, pixels,
    finished: port.tiled.Pending) and their working memory."""

    def __init__(self, devices: list, budget: int):
        self.devices = list(devices) or [None]
        self.budget = int(budget)
        self._pending: list = [None] * len(self.devices)
        self._bytes: list[int] = [0] * len(self.devices)
        self._rate: float | None = None

    @property
    def split(self) -> bool:
        return len(self.devices) > 1

    def takes(self, estimate_bytes: int) -> bool:
        """Whether a batch of this working memory, not planned by lane_order (an image
        planned again once decoded), runs in one lane: when as many as there are lanes
        fit the budget side by side (else alone, over every device: `all_pending` first)."""
        return not self.split or estimate_bytes * len(self.devices) <= self.budget

    def choose(self, compiled: set[int] | frozenset = frozenset()) -> int:
        """The lane for the next batch: the first free one (one where its program is
        `compiled` first), else the one predicted to be ready first (its batch's dispatch
        time plus its pixels at the latest measured rate, plus COMPILE_SECONDS where the
        program is not compiled)."""
        for lane, pending in enumerate(self._pending):
            if pending is not None and pending.computed():
                self._learn(pending)
                self._pending[lane] = None
                self._bytes[lane] = 0
        free = [lane for lane, pending in enumerate(self._pending) if pending is None]
        if free:
            return next((lane for lane in free if lane in compiled), free[0])
        rate = self._rate or DEFAULT_SECONDS_PER_PIXEL
        return min(range(len(self._pending)),
                   key=lambda lane: self._pending[lane].started +
                   self._pending[lane].pixels * rate +
                   (0.0 if lane in compiled else COMPILE_SECONDS))

    def _learn(self, pending) -> None:
        try:
            pending.wait()       # computed: returns at once and records when
        except Exception:  # noqa: BLE001 - the writer reports the batch's failure
            return
        if pending.finished and pending.pixels:
            self._rate = max(1e-12, (pending.finished - pending.started) / pending.pixels)

    def device(self, lane: int):
        return self.devices[lane]

    def after(self, lane: int, estimate_bytes: int = 0) -> list:
        """What a batch of this working memory waits for before it is dispatched in
        `lane`: the lane's previous batch, and the other lanes' batches (the largest
        first) while what they hold and the batch together exceed the budget."""
        waits = [p for p in (self._pending[lane],) if p is not None]
        others = sorted((other for other in range(len(self._pending))
                         if other != lane and self._pending[other] is not None),
                        key=lambda other: -self._bytes[other])
        held = sum(self._bytes[other] for other in others)
        for other in others:
            if held + estimate_bytes <= self.budget:
                break
            if self._pending[other] not in waits:
                waits.append(self._pending[other])
            held -= self._bytes[other]
        return waits

    def all_pending(self) -> list:
        return [p for p in self._pending if p is not None]

    def dispatched(self, lane: int | None, pending, estimate_bytes: int = 0) -> None:
        """Record a batch dispatched in `lane`, or over every device (None)."""
        if lane is None:
            self._pending = [pending] * len(self._pending)
            self._bytes = [0] * len(self._pending)
            self._bytes[0] = int(estimate_bytes)
        else:
            self._pending[lane] = pending
            self._bytes[lane] = int(estimate_bytes)
