"""Tiled and bucketed inference equal the whole-image forward (both frameworks, exact to
float32 rounding), for odd image sizes and tile sizes that do not divide the image."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import DLNConfig
from core.tiling import HALO_F1, HALO_FINAL, HALO_LBP, MapStore, padded_region, tile_count
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


def test_halos_are_the_receptive_fields_of_the_stages():
    # f1: two 3x3 convs; LBP: 1x1 outlayer, then 3 x (three 3x3 convs) chained, 1x1
    # local weights; final: feature 3x3 + out 3x3
    assert (HALO_F1, HALO_LBP, HALO_FINAL) == (2, 3 * 3, 2)


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
        assert store.on_disk and any(tmp_path.iterdir())
        store.write(0, 0, 0, values)
        np.testing.assert_array_equal(store.read(-2, -3, 11, 15, 8),
                                      padded_region(values, -2, -3, 11, 15))
        np.testing.assert_array_equal(store.read(3, 4, 2, 2, 5), values[3:5, 4:6, :5])
    assert not any(tmp_path.iterdir())  # the scratch folder is removed afterwards
    assert tile_count(7, 9, 4) == 6


def test_sample_weights_dim64_tiled_equals_whole_on_a_small_image():
    from core.paths import SAMPLE_CHECKPOINT

    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    assert ckpt.config.dim == 64
    rows = compare_tiled_with_whole(ckpt, _lowlight(41, 58, seed=3), tiles=(24,),
                                    maps_in_memory=(False,), bucket=False)
    bad = [r for r in rows if not r["passed"]]
    assert not bad, bad
