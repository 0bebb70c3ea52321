"""dln.enhance_pipeline on a CPU split into lanes: a batch that finishes first is written
first, while a batch dispatched earlier in the other lane still computes; a tiled image
starts only when the lanes' batches have computed (its tiles' memory is the budget's)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from core.timeline import Timeline
from dln.enhance import EnhanceResult, Job, PixelLimit, Unit
from dln.enhance_pipeline import Pipeline
from frameworks.memory_plan import ImagePlan


class _Pending:
    def __init__(self, image, event, pixels):
        self._image, self._event = image, event
        self.started, self.pixels, self.finished = 0.0, pixels, None

    def computed(self):
        return self._event.is_set()

    def wait(self):
        assert self._event.wait(30)

    def result(self):
        self.wait()
        return [self._image]


class _TwoLanes:
    """A predictor with two lanes; the batch of key `slow` computes until released."""
    backend, config = "jax", None

    def __init__(self, slow):
        self.lanes = ["lane0", "lane1"]
        self.slow, self.release, self.devices_used = slow, threading.Event(), []
        self.tiled_after_release = None

    def working_bytes(self, key, count=1):
        return count * key[0] * key[1]

    def compiled_lanes(self, key, count=1):
        return set()

    def run_tiled(self, image, plan, show_progress=False, label=""):
        self.tiled_after_release = self.release.is_set()
        return image

    def submit(self, images, key, after=(), device=None):
        self.devices_used.append(device)
        done = threading.Event()
        if key != self.slow:
            done.set()
        else:
            self.release = done
        return _Pending(images[0], done, key[0] * key[1])


# a pipeline thread that raises fails the test (pytest reports it as this warning)
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_a_batch_computed_first_is_written_while_an_earlier_one_still_computes(tmp_path):
    rng = np.random.default_rng(0)
    units = []
    for name, shape in (("slow", (24, 32)), ("fast", (32, 24))):
        path = tmp_path / f"{name}.png"
        Image.fromarray((rng.random(shape + (3,)) * 200).astype(np.uint8)).save(path)
        key = (24, 32, shape[0] > shape[1])
        job = Job(path, tmp_path / f"out_{name}.png",
                  ImagePlan("whole", (24, 32), estimate_bytes=1), shape, key)
        units.append(Unit([job], key))
    predictor = _TwoLanes(slow=units[0].key)
    result = EnhanceResult([], [], [])
    pipeline = Pipeline(predictor, result, overwrite=False, limit=PixelLimit(10**9, "test"),
                        show_progress=False, timeline=Timeline.off())
    run = threading.Thread(target=pipeline.run, args=(units,))
    run.start()
    try:
        fast_out = tmp_path / "out_fast.png"
        for _ in range(200):                      # up to 10 s
            if fast_out.exists() or not run.is_alive():
                break
            run.join(0.05)
        assert fast_out.exists(), "the finished batch waited for the one still computing"
        assert not (tmp_path / "out_slow.png").exists()
        assert sorted(predictor.devices_used) == ["lane0", "lane1"]   # side by side
    finally:
        predictor.release.set()
        run.join(30)
    assert not result.failures and sorted(p.name for p in result.written) == \
        ["out_fast.png", "out_slow.png"]


def test_a_tiled_image_waits_for_the_batches_computing_in_the_lanes(tmp_path):
    rng = np.random.default_rng(1)
    key = (24, 32, False)
    units = []
    for name, shape, plan in (("whole", (24, 32), ImagePlan("whole", (24, 32), estimate_bytes=1)),
                              ("tiled", (10, 12), ImagePlan("tiled", tile=64))):
        path = tmp_path / f"{name}.png"
        Image.fromarray((rng.random(shape + (3,)) * 200).astype(np.uint8)).save(path)
        job = Job(path, tmp_path / f"out_{name}.png", plan, shape,
                  key if name == "whole" else None)
        units.append(Unit([job], job.key))
    predictor = _TwoLanes(slow=key)
    result = EnhanceResult([], [], [])
    pipeline = Pipeline(predictor, result, overwrite=False, limit=PixelLimit(10**9, "test"),
                        show_progress=False, timeline=Timeline.off())
    run = threading.Thread(target=pipeline.run, args=(units,))
    run.start()
    run.join(0.5)
    assert predictor.tiled_after_release is None     # not started while the batch computes
    predictor.release.set()
    run.join(30)
    assert predictor.tiled_after_release is True and not result.failures


def test_the_writer_ends_cleanly_when_it_has_written_everything_before_the_run_ends(
        tmp_path, monkeypatch):
    """The writer sees the last batch computed, writes it and waits for more before the
    main thread, still in its own wait for that batch, says the run has ended."""
    rng = np.random.default_rng(2)
    path = tmp_path / "only.png"
    Image.fromarray((rng.random((24, 32, 3)) * 200).astype(np.uint8)).save(path)
    key = (24, 32, False)
    job = Job(path, tmp_path / "out_only.png", ImagePlan("whole", (24, 32), estimate_bytes=1),
              (24, 32), key)
    real_wait = _Pending.wait

    def late_wait(self):            # the main thread learns of it 0.3 s after the writer
        real_wait(self)
        time.sleep(0.3)

    monkeypatch.setattr(_Pending, "wait", late_wait)
    predictor = _TwoLanes(slow=key)
    result = EnhanceResult([], [], [])
    pipeline = Pipeline(predictor, result, overwrite=False, limit=PixelLimit(10**9, "test"),
                        show_progress=False, timeline=Timeline.off())
    run = threading.Thread(target=pipeline.run, args=([Unit([job], key)],))
    run.start()
    time.sleep(0.2)
    predictor.release.set()
    run.join(30)
    assert [p.name for p in result.written] == ["out_only.png"] and not result.failures
