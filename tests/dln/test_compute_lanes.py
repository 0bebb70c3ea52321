"""dln.compute_lanes: which lane (one single-core device each) the next batch runs on."""

from dln.compute_lanes import ComputeLanes, Work, lane_order


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


def test_a_batch_waits_for_the_other_lanes_while_together_they_exceed_the_budget():
    lanes = ComputeLanes(["a", "b"], budget=100)
    big = FakePending(0.0, 10)
    lanes.dispatched(0, big, estimate_bytes=60)
    assert lanes.after(1, 40) == []          # 60 + 40 fit beside each other
    assert lanes.after(1, 41) == [big]       # 60 + 41 do not: after the big one
    lanes.dispatched(1, FakePending(0.0, 10), estimate_bytes=30)
    assert big not in lanes.after(1, 40)     # its own lane's previous, then 60 + 40


def test_a_lane_where_the_program_is_compiled_is_preferred_when_as_good():
    lanes = ComputeLanes(["a", "b"], budget=100)
    assert lanes.choose(compiled={1}) == 1 and lanes.choose() == 0
    lanes.dispatched(0, FakePending(0.0, 1000))
    lanes.dispatched(1, FakePending(0.0, 1000))
    assert lanes.choose(compiled={1}) == 1 and lanes.choose(compiled={0}) == 0


def _works(*shapes, estimate_per_pixel=1):
    return [Work(h * w, None if estimate_per_pixel is None else h * w * estimate_per_pixel)
            for h, w in shapes]


def test_lane_order_pairs_a_batch_too_large_to_pair_with_itself_with_smaller_ones():
    # budget 3 GiB at dim 64: two 768x1024 (2.1 GB each) cannot compute side by side,
    # but each can beside the 480x640s and 240x320s, which keep the other lane busy
    big, mid, small = (768, 1024), (480, 640), (240, 320)
    works = _works(big, big, *[mid] * 4, *[small] * 8)
    budget = 1_200_000       # one big beside one mid, not beside another big
    planned = lane_order(works, 2, budget)
    assert sorted(i for i, _ in planned) == list(range(len(works)))
    assert not any(alone for _, alone in planned[:-1])
    assert planned[0][0] in (0, 1)          # the largest first
    # without work to run beside them, the same batches run alone, one after the other
    assert all(alone for _, alone in lane_order(_works(big, big, big), 2, budget))


def test_lane_order_runs_tiled_images_alone_and_one_lane_largest_first():
    works = _works((3000, 4000), estimate_per_pixel=None) + _works((480, 640), (480, 640))
    planned = lane_order(works, 2, 10**12)
    assert planned[0] == (0, True)          # the largest, alone
    assert all(not alone for _, alone in planned[1:-1])
    one = lane_order(_works((10, 10), (30, 30), (20, 20)), 1, 10**12)
    assert one == [(1, False), (2, False), (0, False)]
