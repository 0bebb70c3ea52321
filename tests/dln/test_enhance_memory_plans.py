"""Memory planned before allocating: whole-image estimates use the padded bucket, a strip
runs at its own size within 3 GiB, --tile off and --batch are held to the budget, and
cache problems fall back to no cache with one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DLNConfig
from dln.cli import main
from frameworks.memory_plan import batch_that_fits, estimated_bytes, plan_image
from tests.core.test_images_robust import png_header_only

GIB = 2**30
REPO = Path(__file__).resolve().parents[2]


def _enhance(argv, capsys):
    capsys.readouterr()
    code = main(["enhance", *argv])
    out = capsys.readouterr()
    return code, out.out, [line for line in out.err.splitlines() if line.strip()]


def _dark(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 70).astype(np.uint8)).save(path)
    return path


def test_whole_image_estimates_use_the_padded_bucket():
    cfg = DLNConfig()
    # a 1 x 200,000 strip pads to 32 x 262,144 in its bucket: 42 times its pixels
    strip = plan_image(1, 200_000, cfg, "jax", "auto", budget=3 * GIB)
    assert strip.mode == "whole" and not strip.padded and strip.shape == (1, 200_000)
    assert strip.estimate_bytes == estimated_bytes(1, 200_000, cfg, "jax") < GIB
    padded = plan_image(1, 200, cfg, "jax", "auto", budget=3 * GIB)
    assert padded.padded and padded.shape == (32, 224)
    assert padded.estimate_bytes == estimated_bytes(32, 224, cfg, "jax")
    # portrait images are planned in the landscape bucket they run in
    assert plan_image(600, 400, cfg, "jax").shape == (448, 640)
    # PyTorch pads nothing
    assert plan_image(1, 200_000, cfg, "torch", "auto", 3 * GIB).shape == (1, 200_000)
    assert plan_image(3000, 4000, cfg, "jax", "auto", 3 * GIB).mode == "tiled"


def test_tile_off_and_batch_are_held_to_the_budget():
    cfg = DLNConfig()
    off = plan_image(3000, 3000, cfg, "jax", "off", budget=3 * GIB)
    assert off.mode == "whole" and not off.fits and off.estimate_bytes > 3 * GIB
    small = plan_image(768, 1024, cfg, "jax", "off", budget=3 * GIB)
    assert small.fits
    assert batch_that_fits(small, 12, budget=3 * GIB) == 3 * GIB // small.estimate_bytes
    assert batch_that_fits(small, 12, budget=1) == 1
    assert batch_that_fits(small, 2, budget=100 * GIB) == 2


def test_tile_off_on_an_image_over_the_budget_is_refused_before_anything_runs(
        tmp_path, authors_pth_16, capsys):
    png_header_only(tmp_path / "big.png", 20000, 20000)   # never decoded
    _dark(tmp_path / "small.png", 8, 8)
    code, out, err = _enhance(["--weights", str(authors_pth_16), "--tile", "off",
                               "--max-pixels", "500000000", "--out", str(tmp_path / "o"),
                               str(tmp_path / "big.png"), str(tmp_path / "small.png")], capsys)
    assert code == 2 and len(err) == 1, err
    assert "big.png" in err[0] and "--tile off" in err[0] and "--tile auto" in err[0], err
    assert not any((tmp_path / "o").iterdir())


def test_a_batch_that_does_not_fit_is_lowered_with_a_note(tmp_path, authors_pth_16, capsys,
                                                          monkeypatch):
    import frameworks.memory_plan as memory_plan

    for i in range(3):
        _dark(tmp_path / f"im{i}.png", 30, 40, seed=i)
    one = plan_image(30, 40, DLNConfig(dim=16), "jax")
    monkeypatch.setattr(memory_plan, "working_budget", lambda: one.estimate_bytes * 2)
    code, out, err = _enhance(["--weights", str(authors_pth_16), "--batch", "3",
                               "--out", str(tmp_path / "o"), str(tmp_path)], capsys)
    assert code == 0, err
    assert len(err) == 1 and "--batch 3 lowered to 2" in err[0], err
    assert len(list((tmp_path / "o").glob("*.png"))) == 3


def test_cache_folder_and_index_problems_fall_back_with_one_warning(
        tmp_path, authors_pth_16, capsys, monkeypatch):
    _dark(tmp_path / "a.png", 20, 24)
    (tmp_path / "cache-is-a-file").write_text("x")
    monkeypatch.setenv("DLN_CACHE_DIR", str(tmp_path / "cache-is-a-file"))
    code, _, err = _enhance(["--weights", str(authors_pth_16), "--out", str(tmp_path / "o1"),
                             str(tmp_path / "a.png")], capsys)
    assert code == 0 and len(err) == 1 and "no compilation cache" in err[0], err
    monkeypatch.delenv("DLN_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/proc")
    code, _, err = _enhance(["--weights", str(authors_pth_16), "--out", str(tmp_path / "o2"),
                             str(tmp_path / "a.png")], capsys)
    assert code == 0 and len(err) == 1 and "/proc" in err[0], err
    cache = tmp_path / "cache"
    cache.mkdir()
    os.mkfifo(cache / "buckets.json")
    monkeypatch.setenv("DLN_CACHE_DIR", str(cache))
    code, _, err = _enhance(["--weights", str(authors_pth_16), "--out", str(tmp_path / "o3"),
                             str(tmp_path / "a.png")], capsys)
    assert code == 0 and len(err) == 1 and "not a regular file" in err[0], err


STRIP_CHILD = """
import json, sys
from dln.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
print(json.dumps({"code": code, "peak_mib": peak}))
"""


def test_a_one_pixel_high_strip_runs_at_its_own_size_under_3_gib(tmp_path):
    # Full width (the sample weights, dim 64): padded to its 32 x 131,072 bucket this
    # 1 x 100,000 strip took 8.4 GB; at its own size it needs well under 1 GiB. One of
    # the suite's few dim-64 runs (~10 s on 2 cores): the memory claim is about dim 64.
    from core.paths import SAMPLE_CHECKPOINT

    Image.fromarray(np.zeros((1, 100_000, 3), np.uint8)).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 1000
    env = {**os.environ, "DLN_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", STRIP_CHILD, "enhance", "--weights",
                           str(SAMPLE_CHECKPOINT), "--out", str(tmp_path / "o"),
                           str(tmp_path / "strip.png")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr
    assert result["peak_mib"] < 3 * 1024, result
    with Image.open(tmp_path / "o" / "strip.png") as im:
        assert im.size == (100_000, 1)
