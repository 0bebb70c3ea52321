"""Large pairs are evaluated in strips with the whole-image numbers: PSNR and theta bit
for bit, SSIM to float64 summation order; images decode straight to uint8."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.evaluation import evaluate_pair, psnr_uint8, ssim_skimage, theta


def _pair(h, w, seed):
    rng = np.random.default_rng(seed)
    gt = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    noise = rng.integers(-40, 41, (h, w, 3))
    pred = np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8)
    pred[: h // 3, : w // 4] = 0          # zero vectors: theta counts them as 0
    return pred, gt


@pytest.mark.parametrize("h,w,strip", [(61, 47, 300), (40, 33, 33 * 7), (23, 90, 1)])
def test_strips_give_the_whole_image_numbers(h, w, strip):
    pred, gt = _pair(h, w, seed=h)
    strips = evaluate_pair(pred, gt, strip_pixels=strip)
    assert strips["psnr"] == psnr_uint8(pred, gt)            # exact: an integer sum
    assert strips["theta"] == theta(pred, gt)                # exact: the same mean call
    whole = ssim_skimage(pred, gt, 255.0)
    assert abs(strips["ssim"] - whole) <= 1e-12 * abs(whole), (strips["ssim"], whole)
    assert evaluate_pair(pred, pred.copy(), strip_pixels=strip)["psnr"] == float("inf")


def test_load_uint8_decodes_8_bit_files_to_the_values_load_image_gives(tmp_path):
    from core.image_pairs import load_uint8
    from core.images import load_image

    rng = np.random.default_rng(1)
    rgb = (rng.random((9, 13, 3)) * 255).astype(np.uint8)
    grey = (rng.random((9, 13)) * 255).astype(np.uint8)
    files = {"rgb.png": Image.fromarray(rgb), "grey.png": Image.fromarray(grey),
             "pal.png": Image.fromarray(rgb).convert("P"),
             "rgba.png": Image.fromarray(np.dstack([rgb, grey])),
             "jpeg.jpg": Image.fromarray(rgb), "bmp.bmp": Image.fromarray(rgb),
             "g16.png": Image.fromarray((rng.random((9, 13)) * 65535).astype(np.uint16))}
    for name, im in files.items():
        im.save(tmp_path / name)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "rot.jpg", exif=exif)
    for name in list(files) + ["rot.jpg"]:
        expected = np.round(load_image(tmp_path / name).astype(np.float64) * 255).astype(np.uint8)
        got = load_uint8(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, expected), name


METRICS_CHILD = """
import json, sys
from dln.cli import main
code = main(["metrics", "--json", "--pred", sys.argv[1], "--gt", sys.argv[2]])
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
print(json.dumps({"code": code, "peak_mib": peak}))
"""


def test_dln_metrics_on_a_large_pair_holds_memory_to_the_strips(tmp_path):
    # 4.4 MP: computed whole this pair peaks at ~0.85 GB (11.2 GB at 64 MP, which in
    # strips measured 1.1 GB on the 2-core AMD EPYC); in strips ~0.25 GB
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(3)
    gt = (rng.random((2000, 2200, 3)) * 255).astype(np.uint8)
    for side, image in (("gt", gt), ("pred", gt // 2 + 20)):
        (tmp_path / side).mkdir()
        Image.fromarray(image).save(tmp_path / side / "a.png", compress_level=1)
    done = subprocess.run([sys.executable, "-c", METRICS_CHILD, str(tmp_path / "pred"),
                           str(tmp_path / "gt")], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2], env=dict(os.environ))
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["code"] == 0, done.stderr
    assert result["peak_mib"] < 500, result
    reported = json.loads("\n".join(lines[:-1]))["images"][0]
    pred = gt // 2 + 20
    assert reported["psnr"] == psnr_uint8(pred, gt)
