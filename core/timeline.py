"""Where a run's time goes: named spans on a shared clock, per thread.

`Timeline.span("decode", item="a.png")` records the wall interval of its block, with
the thread it ran on; `Timeline.off()` records nothing and costs one attribute read,
so the code that runs images can always be instrumented. A profile (the JSON of
`to_json`) is what `dln enhance --profile FILE` writes and `dln bench --workload
folder --profile` accounts for: the main thread's spans partition its time (what the
run waited on), the other threads' spans are the work overlapped with them.
Times are time.time() seconds, so another process (the benchmark driver, which
knows when it started the run) can place them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time


class Timeline:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.spans: list[dict] = []
        self.facts: dict = {}
        self._lock = threading.Lock()
        self.started = time.time()

    @classmethod
    def off(cls) -> "Timeline":
        return cls(enabled=False)

    @contextlib.contextmanager
    def span(self, name: str, **info):
        if not self.enabled:
            yield
            return
        start = time.time()
        try:
            yield
        finally:
            self.add(name, start, time.time(), **info)

    def add(self, name: str, start: float, end: float, **info) -> None:
        if self.enabled:
            row = {"name": name, "start": start, "end": end,
                   "thread": threading.current_thread().name, **info}
            with self._lock:
                self.spans.append(row)

    def note(self, **facts) -> None:
        """Facts of the run that are not intervals (image count, buckets, ...)."""
        if self.enabled:
            with self._lock:
                self.facts.update(facts)

    def to_json(self) -> str:
        with self._lock:
            return json.dumps({"started": self.started, "finished": time.time(),
                               "facts": self.facts, "spans": self.spans})
