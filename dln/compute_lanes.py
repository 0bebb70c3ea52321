"""Which lane the next whole-image batch of `dln enhance` computes on.

On a CPU split into one XLA device per core (port.host_devices), each device is a lane:
a batch submitted to a lane is compiled for that device and computes on its core alone,
while the other lanes compute other batches. Measured per image at dim 64 on the 2-core
AMD EPYC, two images side by side, one per core, against one image at a time on both
cores: 240x320 655 against 930 ms, 480x640 2,607 against 3,056 ms, 768x1024 6,893
against 7,313 ms. A batch whose working memory, times the number of lanes, exceeds the
working budget (so that the lanes together could not hold such batches side by side)
runs alone over all the devices instead, in bands (port.host_devices.spread_sharding),
after the lanes' batches: one lane would run it on one core, about twice as slow.

Without a split there is one lane (the one device, or PyTorch) and batches compute one
after the other, as before.
"""

from __future__ import annotations

# Seconds per padded pixel of one lane before any batch has been seen to finish: 768x1024
# at dim 64 took ~13.8 s on one core of the 2-core AMD EPYC. Only the ratio between the
# lanes' predicted finishes matters, and it is replaced by the measured rate at once.
DEFAULT_SECONDS_PER_PIXEL = 17e-6


class ComputeLanes:
    """The lanes' batches in flight (objects with computed(), wait(), started, pixels,
    finished: port.tiled.Pending)."""

    def __init__(self, devices: list, budget: int):
        self.devices = list(devices) or [None]
        self.budget = int(budget)
        self._pending: list = [None] * len(self.devices)
        self._rate: float | None = None

    @property
    def split(self) -> bool:
        return len(self.devices) > 1

    def takes(self, estimate_bytes: int) -> bool:
        """Whether a batch of this working memory runs in one lane (else alone, over every
        device: `all_pending` first)."""
        return not self.split or estimate_bytes * len(self.devices) <= self.budget

    def choose(self) -> int:
        """The lane for the next batch: the first free one, else the one predicted to
        finish first (its dispatch time plus its pixels at the latest measured rate)."""
        for lane, pending in enumerate(self._pending):
            if pending is not None and pending.computed():
                self._learn(pending)
                self._pending[lane] = None
        for lane, pending in enumerate(self._pending):
            if pending is None:
                return lane
        rate = self._rate or DEFAULT_SECONDS_PER_PIXEL
        return min(range(len(self._pending)),
                   key=lambda lane: self._pending[lane].started +
                   self._pending[lane].pixels * rate)

    def _learn(self, pending) -> None:
        try:
            pending.wait()       # computed: returns at once and records when
        except Exception:  # noqa: BLE001 - the writer reports the batch's failure
            return
        if pending.finished and pending.pixels:
            self._rate = max(1e-12, (pending.finished - pending.started) / pending.pixels)

    def device(self, lane: int):
        return self.devices[lane]

    def after(self, lane: int) -> list:
        """What a batch in this lane waits for before it is dispatched."""
        return [p for p in (self._pending[lane],) if p is not None]

    def all_pending(self) -> list:
        return [p for p in self._pending if p is not None]

    def dispatched(self, lane: int | None, pending) -> None:
        """Record a batch dispatched in `lane`, or over every device (None)."""
        if lane is None:
            self._pending = [pending] * len(self._pending)
        else:
            self._pending[lane] = pending
