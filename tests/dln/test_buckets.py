"""Size buckets: the padding rule, and bucketed / batched / tiled `dln enhance` runs that
write the same PNGs as whole-image runs; an empty folder is a user error; the JAX
compilation cache goes where it is told."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.tiling import bucket_shape, bucket_side, padding_overhead
from dln.cli import main
from parity.engine.tolerance import assert_pngs_match


def test_bucket_sides_pad_at_most_a_quarter_and_keep_ladder_sides():
    for n in range(1, 3000):
        side = bucket_side(n)
        assert side >= n and (n <= 32 or side <= 1.25 * n), n
    for on_ladder in (32, 64, 320, 384, 448, 512, 640, 768, 896, 1024):
        assert bucket_side(on_ladder) == on_ladder
    assert bucket_shape(400, 600) == (448, 640)
    assert padding_overhead(384, 512) == 0.0
    assert len({bucket_shape(h, w) for h in range(240, 257) for w in range(300, 321)}) == 1


def _folder(root, sizes, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 80).astype(np.uint8)).save(root / f"im{i}.png")
    return root


def _pngs(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_batched_buckets_and_tiles_write_the_pngs_of_whole_image_runs(
        tmp_path, authors_pth_16, backend):
    # one bucket (40x64) in both orientations: JAX runs the portrait one transposed
    inputs = _folder(tmp_path / "in", [(37, 50), (40, 55), (33, 61), (61, 33)])
    runs = {"off": ["--tile", "off"], "batch": ["--tile", "off", "--batch", "3"],
            "tiled": ["--tile", "24"]}
    for name, extra in runs.items():
        code = main(["enhance", "--weights", str(authors_pth_16), "--backend", backend,
                     "--out", str(tmp_path / name), *extra, str(inputs)])
        assert code == 0
    reference = _pngs(tmp_path / "off")
    assert len(reference) == 4
    for name in ("batch", "tiled"):
        for image, png in _pngs(tmp_path / name).items():
            assert_pngs_match(png, reference[image], what=f"{backend} {name} {image}")


def test_empty_folder_is_one_line_exit_2(tmp_path, authors_pth_16, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["enhance", "--weights", str(authors_pth_16), "--out", str(tmp_path / "o"),
                 str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nothing to enhance" in err[0], err
    assert not (tmp_path / "o").exists()


def test_compilation_cache_is_written_to_the_given_folder(tmp_path, authors_pth_16):
    from dln.enhance import enhance_paths
    from weights.convert import load_checkpoint

    inputs = _folder(tmp_path / "in", [(21, 27)])
    cache = tmp_path / "cache"
    enhance_paths(load_checkpoint(authors_pth_16), [inputs], tmp_path / "o", backend="jax",
                  cache_dir=cache, show_progress=False)
    assert cache.is_dir() and any(cache.iterdir())


def test_auto_runs_small_images_whole_and_12_megapixels_tiled_with_maps_on_disk():
    from core.config import DLNConfig
    from core.memory import WHOLE_IMAGE_BUDGET
    from frameworks.memory_plan import parse_tile, plan_image

    cfg = DLNConfig()
    budget = WHOLE_IMAGE_BUDGET
    assert plan_image(400, 600, cfg, "jax", "auto", budget).mode == "whole"
    big = plan_image(3000, 4000, cfg, "jax", "auto", budget)
    assert big.mode == "tiled" and big.tile == 512 and not big.maps_in_memory
    assert big.estimate_bytes < 3 * 2**30
    assert plan_image(3000, 4000, cfg, "torch", "off", budget).mode == "whole"
    assert plan_image(40, 60, cfg, "torch", 256, budget).mode == "tiled"
    assert parse_tile("AUTO") == "auto" and parse_tile("256") == 256
    for bad in ("big", "8"):
        with pytest.raises(ValueError):
            parse_tile(bad)


def _cover_cost(plan, shapes):
    from core.tiling import smallest_cover

    return [smallest_cover(plan, s) for s in shapes]


def test_folder_plan_merges_buckets_only_while_compilations_cost_more_than_padding():
    from core.tiling import landscape, plan_buckets

    sizes = [(240, 320), (300, 400), (360, 480), (384, 512), (480, 640), (600, 800),
             (576, 768), (768, 1024), (320, 240), (480, 360), (640, 480), (1024, 768)]
    shapes = [landscape(*s) for s in sizes]
    own = sorted({bucket_shape(*s) for s in shapes})
    assert len(own) == 7     # portrait images share the landscape buckets: 12 sizes, 7 shapes
    # each ladder bucket's images start in the smallest shape holding them all: 360x480
    # and 384x512 share the 384x512 bucket, every other group is one size, unpadded
    tight = [(240, 320), (300, 400), (384, 512), (480, 640), (576, 768), (600, 800),
             (768, 1024)]
    assert plan_buckets(shapes, compile_pixels=0) == tight          # compiling is free
    merged = plan_buckets(shapes, compile_pixels=150_000)
    assert 1 < len(merged) < len(tight)
    one = plan_buckets(shapes, compile_pixels=10**9)             # compiling is dear: one bucket
    assert one == [(768, 1024)]
    # a bucket above max_pixels is never formed by a merger
    capped = plan_buckets(shapes, compile_pixels=10**9, max_pixels=400_000)
    assert all(h * w <= 400_000 for h, w in capped if (h, w) not in tight)
    for plan in (merged, one, capped):
        covers = _cover_cost(plan, shapes)
        assert all(c is not None and c[0] >= s[0] and c[1] >= s[1]
                   for c, s in zip(covers, shapes)), (plan, covers)
    # shapes compiled before cost nothing: a warm plan keeps them instead of merging
    assert plan_buckets(shapes, compile_pixels=10**9, compiled=set(tight)) == tight
    assert plan_buckets(shapes, compile_pixels=150_000, compiled=set(merged)) == merged
    # each image counts: one more image in the 384x512 group weighs the same whatever
    # its size within the group's tight shape
    assert plan_buckets(shapes + [(370, 500)], 150_000) == \
        plan_buckets(shapes + [(384, 512)], 150_000)


def test_a_folder_of_too_many_distinct_buckets_is_left_unmerged():
    from core.tiling import PLAN_MAX_BUCKETS, plan_buckets

    sides = [bucket_side(n) for n in range(200, 3000, 7)]
    ladder = sorted(set(sides))
    shapes = [(h, w) for h in ladder for w in ladder if h <= w][:PLAN_MAX_BUCKETS + 10]
    # compiling this dear would merge everything into one bucket; above the cap the
    # greedy search (minutes at 150 buckets) is not run and each keeps its own
    assert plan_buckets(shapes, compile_pixels=10**9) == sorted(shapes)
    assert len(plan_buckets(shapes[:PLAN_MAX_BUCKETS], compile_pixels=10**9)) == 1


def test_a_merged_or_transposed_bucket_gives_the_plain_forward(tmp_path):
    from port.inference import make_enhancer
    from port.tiled import JaxStages, JaxWholeImage
    from tests.conftest import write_authors_pth
    from weights.convert import load_checkpoint
    from weights.synthetic import random_torch_state
    from core.config import DLNConfig
    from parity.engine.tolerance import TILED_FORWARD_ATOL, compare

    ckpt = load_checkpoint(write_authors_pth(tmp_path / "w.pth",
                                             random_torch_state(DLNConfig(dim=16), seed=5)))
    runner = JaxWholeImage(JaxStages(ckpt.flax_tree(), ckpt.config))
    plain = make_enhancer(ckpt.flax_tree(), ckpt.config)
    rng = np.random.default_rng(2)
    for h, w, bucket in [(29, 41, (48, 64)), (41, 29, (48, 64)), (32, 40, (32, 40)),
                         (40, 32, None)]:
        image = rng.random((h, w, 3), dtype=np.float32) * 0.4
        result = compare(runner.run([image], bucket)[0], plain(image), TILED_FORWARD_ATOL)
        assert result.passed, (h, w, bucket, result.max_abs)


def test_the_bucket_index_remembers_compiled_shapes_per_batch(tmp_path):
    from core.config import DLNConfig
    from port.compile_cache import BucketIndex

    index = BucketIndex(tmp_path, DLNConfig(dim=16))
    assert index.compiled(1) == set()
    index.add(1, (384, 512))
    index.add(2, (256, 320))
    again = BucketIndex(tmp_path, DLNConfig(dim=16))
    assert again.compiled(1) == {(384, 512)} and again.compiled(2) == {(256, 320)}
    assert BucketIndex(tmp_path, DLNConfig(dim=32)).compiled(1) == set()   # another network
    (tmp_path / "buckets.json").write_text("{not json")
    assert BucketIndex(tmp_path, DLNConfig(dim=16)).compiled(1) == set()
