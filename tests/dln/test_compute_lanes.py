"""dln.compute_lanes: which lane (one single-core device each) the next batch runs on."""

from dln.compute_lanes import ComputeLanes


class FakePending:
    def __init__(self, started, pixels, done=False, finished=None):
        self.started, self.pixels, self._done, self.finished = started, pixels, done, finished
        self.waited = 0

    def computed(self):
        return self._done

    def wait(self):
        self.waited += 1


def test_without_a_split_every_batch_runs_in_the_one_lane_after_the_previous():
    lanes = ComputeLanes([], budget=100)
    assert not lanes.split and lanes.takes(10**12) and lanes.device(0) is None
    first = FakePending(0.0, 10)
    assert lanes.choose() == 0
    lanes.dispatched(0, first)
    assert lanes.choose() == 0 and lanes.after(0) == [first]


def test_free_lanes_first_then_the_lane_predicted_to_finish_first():
    lanes = ComputeLanes(["core0", "core1"], budget=100)
    big, small = FakePending(0.0, 1_000_000), FakePending(0.5, 100_000)
    assert lanes.choose() == 0
    lanes.dispatched(0, big)
    assert lanes.choose() == 1
    lanes.dispatched(1, small)
    # both busy: the small batch dispatched half a second later finishes first
    assert lanes.choose() == 1 and lanes.after(1) == [small]
    assert lanes.device(1) == "core1"


def test_a_finished_batch_frees_its_lane_and_teaches_the_rate():
    lanes = ComputeLanes(["a", "b"], budget=100)
    done = FakePending(0.0, 1000, done=True, finished=2.0)     # 2 ms per pixel
    lanes.dispatched(0, done)
    lanes.dispatched(1, FakePending(1.0, 10))
    assert lanes.choose() == 0 and done.waited == 1 and lanes.all_pending() != []
    # with 2 ms per pixel, 1000 pixels from t=3 end after 10 pixels from t=4
    lanes.dispatched(0, FakePending(3.0, 1000))
    lanes.dispatched(1, FakePending(4.0, 10))
    assert lanes.choose() == 1


def test_a_batch_too_large_to_share_the_budget_runs_alone_over_every_device():
    lanes = ComputeLanes(["a", "b"], budget=100)
    assert lanes.takes(50) and not lanes.takes(51)
    first, second = FakePending(0.0, 1), FakePending(0.0, 1)
    lanes.dispatched(0, first)
    lanes.dispatched(1, second)
    assert lanes.all_pending() == [first, second]    # what the large batch waits for
    alone = FakePending(1.0, 1)
    lanes.dispatched(None, alone)
    assert lanes.after(0) == [alone] and lanes.after(1) == [alone]
