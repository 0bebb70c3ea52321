"""Training data: exact crop darkening, the authors' augmentation, seeded batches,
LOL-layout folders, `dln synth`, held-out pairs. numpy only (no framework)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data import (BatchStream, DataError, FolderPairs, SyntheticPairs, augment,
                      builtin_heldout, open_training_data, pair_folders, to_float)
from core.images import load_image
from core.lowlight import DarkeningDraw, contrast_mean, darken


def _textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_darkening_a_crop_equals_the_same_crop_of_the_darkened_full_image():
    image = _textured(90, 130, 1)
    image[:40] //= 3  # uneven brightness: the contrast mean matters
    rng = np.random.default_rng(2)
    for trial in range(25):
        draw = DarkeningDraw.sample(rng)
        top, left = int(rng.integers(0, 60)), int(rng.integers(0, 100))
        full = darken(image, draw)
        crop = darken(np.ascontiguousarray(image[top:top + 30, left:left + 30]), draw,
                      mean=contrast_mean(image, draw.saturation))
        diff = np.abs(crop.astype(int) - full[top:top + 30, left:left + 30].astype(int)).max()
        assert diff == 0, f"trial {trial}: crop differs by up to {diff} levels"


def test_augment_applies_one_transform_to_both_images_with_the_authors_odds():
    high = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    low = 255 - high  # a pixelwise function of high: survives any shared transform
    outcomes = {"identity": high, "vflip": high[::-1], "mirror": high[:, ::-1],
                "rot180": high[::-1, ::-1]}
    counts = dict.fromkeys(outcomes, 0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a_low, a_high = augment(low, high, rng)
        assert np.array_equal(a_low, 255 - a_high), "low and high were transformed differently"
        name = next(k for k, v in outcomes.items() if np.array_equal(a_high, v))
        counts[name] += 1
    # three independent p=0.5 switches (vflip, mirror, rot180 = vflip+mirror) give each of
    # the four orientations probability 1/4
    worst = max(abs(c / 2000 - 0.25) for c in counts.values())
    assert worst < 0.04, f"orientation frequencies {counts} are off 1/4 by {worst:.3f}"


def _small_source(n: int) -> SyntheticPairs:
    return SyntheticPairs({f"img{i}": _textured(40 + i, 50, i) for i in range(n)})


def test_batches_are_a_pure_function_of_seed_and_step():
    source = _small_source(5)
    a = BatchStream(source, 3, 16, seed=7, threads=1)
    b = BatchStream(source, 3, 16, seed=7, threads=3)
    later_first = [b.batch_at(s) for s in (4, 0, 2)]
    for (low_b, high_b), step in zip(later_first, (4, 0, 2)):
        low_a, high_a = a.batch_at(step)
        assert np.array_equal(low_a, low_b) and np.array_equal(high_a, high_b), f"step {step}"
    streamed = {s: (lo, hi) for s, lo, hi in a.iterate(1, 4)}
    assert all(np.array_equal(streamed[s][0], a.batch_at(s)[0]) for s in (1, 2, 3))
    in_processes = BatchStream(source, 3, 16, seed=7, processes=2)
    for step, low, high in in_processes.iterate(0, 5):
        assert np.array_equal(low, a.batch_at(step)[0]), f"worker process, step {step}"
        assert np.array_equal(high, a.batch_at(step)[1]), f"worker process, step {step}"
    other = BatchStream(source, 3, 16, seed=8).batch_at(0)[0]
    assert not np.array_equal(other, a.batch_at(0)[0]), "a different seed gave the same batch"
    low, high = a.batch_at(0)
    assert low.dtype == np.float32 and low.shape == (3, 16, 16, 3)
    assert float(low.mean()) < float(high.mean()), "low-light inputs are not darker"


def test_an_epoch_visits_each_pair_once_and_small_sets_repeat_to_fill_a_batch():
    stream = BatchStream(_small_source(6), 2, 8, seed=0)
    assert stream.steps_per_epoch == 3
    for epoch in (0, 1):
        seen = np.concatenate([stream.indices(epoch * 3 + k) for k in range(3)])
        assert sorted(seen.tolist()) == list(range(6)), f"epoch {epoch} visited {seen}"
    small = BatchStream(_small_source(3), 8, 8, seed=0)
    assert small.steps_per_epoch == 1
    idx = small.indices(0)
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2}


def test_lol_folder_pairs_by_name_any_size_and_reports_each_problem(tmp_path):
    root = tmp_path / "lol"
    for name, (h, w) in {"a": (40, 70), "b": (50, 33)}.items():
        _png(root / "high" / f"{name}.png", _textured(h, w, 1))
        _png(root / "low" / f"{name}.png", _textured(h, w, 2) // 4)
    _png(root / "low" / "only_low.png", _textured(40, 40, 3))
    _png(root / "high" / "sizes.png", _textured(40, 40, 4))
    _png(root / "low" / "sizes.png", _textured(41, 40, 4))
    _png(root / "high" / "tiny.png", _textured(10, 40, 4))
    _png(root / "low" / "tiny.png", _textured(10, 40, 4))
    (root / "high" / "broken.png").write_bytes(b"not a png")
    _png(root / "low" / "broken.png", _textured(40, 40, 5))
    data = open_training_data(str(root), patch=32)
    assert data.source.names == ["a", "b"]
    text = "\n".join(data.problems)
    for name in ("only_low", "sizes", "tiny", "broken"):
        assert name in text, f"no problem line for {name}: {data.problems}"
    assert len(data.problems) == 4 and all("\n" not in p for p in data.problems)
    low, high = BatchStream(data.source, 4, 32, seed=1).batch_at(0)
    assert low.shape == high.shape == (4, 32, 32, 3)


def test_our485_eval15_layout_trains_on_our485_and_holds_out_eval15(tmp_path):
    for split, names in (("our485", ("1", "2")), ("eval15", ("9",))):
        for name in names:
            _png(tmp_path / split / "high" / f"{name}.png", _textured(36, 60, int(name)))
            _png(tmp_path / split / "low" / f"{name}.png", _textured(36, 60, int(name)) // 5)
    data = open_training_data(str(tmp_path), patch=24)
    assert isinstance(data.source, FolderPairs) and data.source.names == ["1", "2"]
    assert [p.name for p in data.heldout] == ["9"]
    assert pair_folders(tmp_path, ("eval15",))[0].parent.name == "eval15"


def test_folder_of_plain_images_is_darkened_on_the_fly_and_skips_bad_files(tmp_path):
    _png(tmp_path / "x.png", _textured(60, 80, 1))
    _png(tmp_path / "y.jpg", _textured(50, 50, 2))
    (tmp_path / "z.png").write_bytes(b"\x89PNG broken")
    data = open_training_data(str(tmp_path), patch=64)
    assert data.source.names == ["x", "y"] and len(data.problems) == 1
    assert min(data.source.targets[0].shape[:2]) == 384, "targets are not resized to 384"
    assert data.heldout == []
    with pytest.raises(DataError, match="not a folder"):
        open_training_data(str(tmp_path / "missing"), patch=64)
    with pytest.raises(DataError, match="larger than"):
        open_training_data("builtin", patch=400)
    with pytest.raises(DataError, match="unknown built-in"):
        open_training_data("builtin:nonsense", patch=64)


def test_dln_synth_writes_lol_layout_and_one_line_per_bad_file(tmp_path, capsys):
    from dln.cli import main

    src = tmp_path / "src"
    _png(src / "p.png", _textured(100, 150, 1))
    (src / "bad.jpg").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert main(["synth", "--source", str(src), "--out", str(out), "--seed", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jpg" in err[0], err
    low, high = load_image(out / "low" / "p.png"), load_image(out / "high" / "p.png")
    assert high.shape == (384, 576, 3) and low.shape == high.shape
    assert low.mean() < high.mean()
    again = tmp_path / "again"
    main(["synth", "--source", str(src), "--out", str(again), "--seed", "3"])
    assert np.array_equal(load_image(again / "low" / "p.png"), low), "synth is not reproducible"
    assert main(["synth", "--source", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_builtin_heldout_pairs_are_the_bundled_samples():
    from core.paths import SAMPLE_IMAGES

    for pair in builtin_heldout():
        for kind, array in (("low", pair.low), ("high", pair.high)):
            bundled = load_image(SAMPLE_IMAGES / kind / f"{pair.name}.png")
            assert np.array_equal(to_float(array), bundled), f"{kind}/{pair.name} differs"


def test_heldout_psnr_is_computed_on_quantised_outputs():
    from core.image_pairs import ImagePair
    from dln.heldout import evaluate_heldout

    low = np.full((12, 12, 3), 100, np.uint8)
    high = np.full((12, 12, 3), 110, np.uint8)
    pair = ImagePair("flat", low, high)
    perfect = evaluate_heldout(lambda x: np.full_like(x, 110.5 / 255), [pair])
    assert perfect.psnr_enhanced == [float("inf")]
    assert abs(perfect.psnr_low[0] - 20 * np.log10(255 / 10)) < 1e-9
    # 105.9 levels truncate to 105: 5 levels off, not 4.1
    off = evaluate_heldout(lambda x: np.full_like(x, 105.9 / 255), [pair])
    assert abs(off.psnr_enhanced[0] - 20 * np.log10(255 / 5)) < 1e-9, off.psnr_enhanced


def test_synth_keeps_existing_pairs_unless_overwrite(tmp_path, capsys):
    from PIL import Image

    from dln.cli import main

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(src / f"{name}.png")
    out = tmp_path / "pairs"
    assert main(["synth", "--source", str(src), "--out", str(out)]) == 0
    (out / "low" / "a.png").write_bytes(b"mine")
    capsys.readouterr()
    assert main(["synth", "--source", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "a.png" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "low" / "a.png").read_bytes() == b"mine"  # kept
    assert main(["synth", "--source", str(src), "--out", str(out), "--overwrite"]) == 0
    assert (out / "low" / "a.png").read_bytes()[:4] == b"\x89PNG"
