"""Tiled and bucketed inference equal the whole-image forward (both frameworks, exact to
float32 rounding), for odd image sizes and tile sizes that do not divide the image."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import DLNConfig
from core.tiling import MapStore, padded_region, tile_count
from parity.engine.tiled_vs_whole import compare_tiled_with_whole
from weights.convert import load_checkpoint


def _lowlight(h, w, seed):
    return (np.random.default_rng(seed).random((h, w, 3), dtype=np.float32) * 0.35)


@pytest.fixture(scope="module")
def ckpt16(tmp_path_factory):
    from tests.conftest import write_authors_pth
    from weights.synthetic import random_torch_state

    path = tmp_path_factory.mktemp("w") / "dim16.pth"
    write_authors_pth(path, random_torch_state(DLNConfig(dim=16), seed=11))
    return load_checkpoint(path)


def test_the_stage_table_read_off_the_tensor_table_has_the_receptive_fields_as_halos(ckpt16):
    from port.tiled import JaxStages
    from reference_torch.tiled import TorchStages
    from weights.stages import dln_stages

    table = dln_stages(DLNConfig())
    # f1: two 3x3 convs; LBP: 1x1 outlayer, then 3 x (three 3x3 convs) chained, 1x1
    # local weights; final: feature 3x3 + out 3x3, run on the third LBP's tiles
    assert [(s.name, s.halo) for s in table] == [("f1", 2), ("lbp1", 9), ("lbp2", 9),
                                                 ("lbp3+final", 11)]
    assert [(s.reads, s.writes, s.mean, s.image) for s in table] == [
        (0, 64, False, True), (64, 64, True, False), (128, 64, True, False),
        (192, 0, True, True)]
    assert [s.steps for s in table] == [(("f1", 2),), (("lbp1", 9),), (("lbp2", 9),),
                                        (("lbp3", 9), ("final", 2))]
    # both frameworks run the one table
    assert JaxStages(ckpt16.flax_tree(), ckpt16.config).stages == dln_stages(ckpt16.config)
    assert TorchStages(ckpt16.torch_state, ckpt16.config).stages == dln_stages(ckpt16.config)


@pytest.mark.parametrize("size,tile,stores", [((45, 71), 20, (True, False)),
                                               ((83, 37), 29, (True,))])
def test_tiles_and_buckets_match_whole_image_in_both_frameworks(ckpt16, size, tile, stores):
    rows = compare_tiled_with_whole(ckpt16, _lowlight(*size, seed=size[0]), (tile,),
                                    maps_in_memory=stores)
    assert len(rows) == 2 * (len(stores) + 1) + 1   # + JAX's whole-image runner
    bad = [r for r in rows if not r["passed"]]
    assert not bad, bad


def test_the_memmap_store_reads_zeros_outside_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.random((7, 9, 8), dtype=np.float32)
    with MapStore(7, 9, 8, in_memory=False, scratch_dir=str(tmp_path)) as store:
        assert store.on_disk and not any(tmp_path.iterdir())  # a file without a name
        store.write(0, 0, 0, values)
        np.testing.assert_array_equal(store.read(-2, -3, 11, 15, 8),
                                      padded_region(values, -2, -3, 11, 15))
        np.testing.assert_array_equal(store.read(3, 4, 2, 2, 5), values[3:5, 4:6, :5])
    assert not any(tmp_path.iterdir())
    assert tile_count(7, 9, 4) == 6


def test_sample_weights_dim64_tiled_equals_whole_on_a_small_image():
    from core.paths import SAMPLE_CHECKPOINT

    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    assert ckpt.config.dim == 64
    rows = compare_tiled_with_whole(ckpt, _lowlight(41, 58, seed=3), tiles=(24,),
                                    maps_in_memory=(False,), bucket=False)
    bad = [r for r in rows if not r["passed"]]
    assert not bad, bad


KILLED_CHILD = """
import sys, time
from core.tiling import MapStore
store = MapStore(512, 512, 256, in_memory=False, scratch_dir=sys.argv[1])  # 256 MiB reserved
print("reserved", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_tiled_run_leaves_no_scratch_bytes(tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    free_before = shutil.disk_usage(scratch).free
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(scratch)],
                             stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert child.stdout.readline().strip() == "reserved"
        assert not any(scratch.iterdir())
        held = free_before - shutil.disk_usage(scratch).free
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not any(scratch.iterdir())
    # the reservation was real while it ran (disk usage of other processes moves the free
    # figure too, so only the sign is asserted: at least half the 256 MiB was taken)
    assert held >= 2**27, held


def test_scratch_space_that_cannot_be_reserved_is_one_clear_error(tmp_path, monkeypatch):
    import errno
    import os

    from core.errors import InputError

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(InputError) as err:
        MapStore(100, 100, 64, in_memory=False, scratch_dir=str(tmp_path))
    assert "needs 2 MiB of scratch space in" in str(err.value) and "\n" not in str(err.value)
    assert "No space left on device" in str(err.value)
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError, match="cannot create its scratch file"):
        MapStore(4, 4, 4, in_memory=False, scratch_dir=str(tmp_path / "missing"))


_SPLIT_SCRIPT = r"""
import json, sys
import numpy as np
from core.tiling import TiledPlan, run_tiled
from parity.engine.tolerance import measure
from port.inference import make_enhancer
from port.nnx_tiled import NnxStages
from port.tiled import JaxStages, JaxWholeImage
from weights.convert import load_checkpoint

ckpt = load_checkpoint(sys.argv[1])
rng = np.random.default_rng(5)
low = lambda h, w: rng.random((h, w, 3), dtype=np.float32) * 0.35
stages = JaxStages(ckpt.flax_tree(), ckpt.config)
report = {"devices": [0 if s.mesh is None else int(s.mesh.devices.size)
                      for s in (stages, NnxStages(ckpt.flax_tree(), ckpt.config))]}
whole, runner = make_enhancer(ckpt.flax_tree(), ckpt.config), JaxWholeImage(stages)
image = low(45, 70)    # tiles of 40 + halos 2, 9 and 11 each side: 44, 58, 62 rows, in bands
tiled = run_tiled(stages, image, TiledPlan(tile=40, maps_in_memory=True))
report["tiles"] = {"worst": measure(tiled, whole(image)).rel_to_scale}
batches = {"2 plain": [low(40, 64), low(40, 64)],          # one image per core
           "3 masked": [low(40, 60), low(40, 60), low(40, 60)],   # bands, padded
           "2 portrait": [low(60, 40), low(60, 40)]}      # transposed, one per core
for label, images in batches.items():
    outputs = runner.run(images, (40, 64))
    worst = max(measure(o, whole(im)).rel_to_scale for o, im in zip(outputs, images))
    spec = runner.program(len(images), (40, 64), "plain" not in label).input_shardings[0][1]
    report[label] = {"worst": worst, "spec": [str(a) for a in spec.spec]}
# lanes: one batch per device, each compiled for its device alone, computing side by side
a, b = low(40, 60), low(60, 40)
in_lanes = [runner.submit([im], (40, 64), device=d) for im, d in zip((a, b), runner.lanes)]
ran_on = sorted(str(d.id) for p in in_lanes for d in p._out.devices())
report["lanes"] = {"count": len(runner.lanes), "devices": ran_on,
                   "worst": max(measure(p.result()[0], whole(im)).rel_to_scale
                                for p, im in zip(in_lanes, (a, b)))}
# no axis divides over the two devices (odd sides at their own size, odd tiles with their
# halos): one device computes it, not every device the whole of it (n x the memory)
odd = low(33, 47)
alone = runner.submit([odd], (33, 47))
seen = []
class Watched:
    stages = stages.stages
    def start_stage(self, *args):
        fetch = stages.start_stage(*args)
        seen.append(len(fetch._out.devices()))
        return fetch
odd_tiled = run_tiled(Watched(), odd, TiledPlan(tile=21, maps_in_memory=True))
report["unspread"] = {"devices": [len(alone._out.devices()), max(seen)],
                      "worst": max(measure(alone.result()[0], whole(odd)).rel_to_scale,
                                   measure(odd_tiled, whole(odd)).rel_to_scale)}
print(json.dumps(report, default=float))
"""


def test_a_cpu_split_into_two_devices_runs_batches_bands_and_tiles_exactly(tmp_path):
    """`dln enhance` on a split CPU (one XLA host device per core): batches in lanes, one
    per device, computing side by side; a batch of two images spread one per device, an
    odd batch and each tile in horizontal bands (XLA exchanging
    border rows and summing the FA means across devices), portrait images transposed, all
    equal the one-device whole-image forward to float32 rounding. (The NNX runner shares
    this runner and its placement: it is checked to see the two devices.)"""
    import json
    import os
    import subprocess
    import sys

    from parity.engine.tolerance import TILED_FORWARD_ATOL
    from tests.conftest import write_authors_pth
    from weights.synthetic import random_torch_state

    path = tmp_path / "dim16.pth"
    write_authors_pth(path, random_torch_state(DLNConfig(dim=16), seed=12))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
               "--xla_cpu_multi_thread_eigen=false", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _SPLIT_SCRIPT, str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == [2, 2]     # the Linen and the NNX runner
    assert report["2 plain"]["spec"][:2] == ["cores", "None"]     # one image per core
    assert report["3 masked"]["spec"][:2] == ["None", "cores"]    # bands
    assert report["lanes"]["count"] == 2 and report["lanes"]["devices"] == ["0", "1"]
    assert report["unspread"]["devices"] == [1, 1]   # one device, not both replicated
    for label in ("tiles", "2 plain", "3 masked", "2 portrait", "lanes", "unspread"):
        assert report[label]["worst"] <= TILED_FORWARD_ATOL, (label, report[label])


def test_a_batch_waiting_for_a_failed_earlier_batch_still_runs(ckpt16):
    """A batch dispatched after one that failed (say, out of memory in its lane) runs:
    the earlier failure is that batch's own, reported when its result is fetched."""
    from port.inference import make_enhancer
    from port.tiled import JaxStages, JaxWholeImage

    class FailedEarlier:
        def wait(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    image = _lowlight(32, 40, seed=3)
    runner = JaxWholeImage(JaxStages(ckpt16.flax_tree(), ckpt16.config))
    output = runner.submit([image], after=[FailedEarlier()]).result()[0]
    reference = make_enhancer(ckpt16.flax_tree(), ckpt16.config)(image)
    np.testing.assert_allclose(output, reference, atol=1e-5)


def test_the_scratch_store_in_channel_blocks_round_trips_partial_and_clipped_writes(tmp_path):
    """Blocks of 3 channels out of 9: a write covering whole blocks, one starting inside a
    block, regions clipped at the image's edge, reads of a prefix of the channels."""
    rng = np.random.default_rng(1)
    expected = np.zeros((6, 7, 9), np.float32)
    with MapStore(6, 7, 9, in_memory=False, scratch_dir=str(tmp_path), block=3) as store:
        first = rng.random((4, 5, 6), dtype=np.float32)          # blocks 0 and 1, clipped
        store.write(3, 4, 0, first)
        expected[3:, 4:, 0:6] = first[:3, :3]
        second = rng.random((6, 7, 4), dtype=np.float32)         # channels 4..7: partial
        store.write(0, 0, 4, second)
        expected[:, :, 4:8] = second
        np.testing.assert_array_equal(store.read(-1, -2, 9, 11, 9),
                                      padded_region(expected, -1, -2, 9, 11))
        np.testing.assert_array_equal(store.read(2, 3, 3, 3, 5), expected[2:5, 3:6, :5])


@pytest.mark.parametrize("in_memory", (True, False))
def test_map_blocks_read_into_reused_buffers_keep_nothing_of_the_last_read(tmp_path,
                                                                          in_memory):
    """run_tiled reads each tile's maps into buffers of a tile before it: an inside
    region read into NaN-filled buffers, then an edge region (zeros outside) into the
    same ones, then channels cut inside a block, all equal fresh padded reads."""
    rng = np.random.default_rng(2)
    values = rng.random((10, 12, 6), dtype=np.float32)
    with MapStore(10, 12, 6, in_memory=in_memory, scratch_dir=str(tmp_path),
                  block=3) as store:
        store.write(0, 0, 0, values)
        buffers = [np.full((5, 5, 3), np.nan, np.float32) for _ in range(2)]
        for y0, x0, channels in ((2, 3, 6), (-2, 8, 6), (6, -1, 5), (1, 1, 6)):
            buffers = store.read_blocks(y0, x0, 5, 5, channels, into=buffers)
            assert [b.shape[-1] for b in buffers] == [3, channels - 3]
            np.testing.assert_array_equal(np.concatenate(buffers, axis=-1),
                                          padded_region(values, y0, x0, 5, 5)[:, :, :channels])
