"""port.metrics_dmpix (JAX / dm-pix, float32) against core.evaluation (scikit-image, float64)
on scikit-image's bundled photos, clean and darkened the authors' way."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from core import evaluation as ref
from parity.engine.tolerance import (METRIC_F64_ATOL, METRIC_PSNR_ATOL_DB, METRIC_SSIM_ATOL,
                              METRIC_THETA_ATOL_DEG)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")  # camera: grey
CROP = (160, 224)


def _crop(image, top=40, left=60):
    return np.ascontiguousarray(image[top:top + CROP[0], left:left + CROP[1]])


@pytest.fixture(scope="module")
def photo_pairs():
    """(name, prediction uint8, ground truth uint8): for every photo the darkened input
    (core.lowlight, the authors' recipe) and a close estimate (dimmed 5%, noise +-6)."""
    from core.lowlight import builtin_image, make_pair

    rng = np.random.default_rng(0)
    pairs = []
    for name in PHOTOS:
        low, high, _ = make_pair(builtin_image(name), name, seed=0)
        low, high = _crop(low), _crop(high)
        close = np.clip(0.95 * high + rng.integers(-6, 7, high.shape), 0, 255).astype(np.uint8)
        pairs += [(f"{name}/dark", low, high), (f"{name}/close", close, high)]
    return pairs


@pytest.fixture(scope="module")
def reference_values(photo_pairs):
    return {name: dict(psnr=ref.psnr(p, g, 255), ssim=ref.ssim_skimage(p, g, 255),
                       gauss=ref.ssim_gaussian(p, g, 255), theta=ref.theta(p, g))
            for name, p, g in photo_pairs}


def _batched(pairs, scale, offset=0.0):
    pred = np.stack([p for _, p, _ in pairs]).astype(np.float32) * np.float32(scale) + offset
    gt = np.stack([g for _, _, g in pairs]).astype(np.float32) * np.float32(scale) + offset
    return pred.astype(np.float32), gt.astype(np.float32)


def _assert_within(values, reference, key, tol, names):
    errors = np.abs(np.asarray(values, np.float64) - [reference[n][key] for n in names])
    worst = int(np.argmax(errors))
    assert errors[worst] <= tol, f"{key}: {names[worst]} off by {errors[worst]:.2e} (tol {tol})"


@pytest.mark.parametrize("scale,data_range", [(1.0, 255.0), (1 / 255, 1.0)],
                         ids=["floats_0_255", "floats_0_1"])
def test_jax_metrics_match_scikit_image_on_photos(photo_pairs, reference_values, scale,
                                                  data_range):
    from port import metrics_dmpix as jm

    names = [n for n, _, _ in photo_pairs]
    pred, gt = _batched(photo_pairs, scale)
    _assert_within(jm.ssim_skimage(pred, gt, data_range), reference_values, "ssim",
                   METRIC_SSIM_ATOL, names)
    _assert_within(jm.ssim_gaussian(pred, gt, data_range), reference_values, "gauss",
                   METRIC_SSIM_ATOL, names)
    _assert_within(jm.psnr(pred, gt, data_range), reference_values, "psnr",
                   METRIC_PSNR_ATOL_DB, names)
    _assert_within(jm.theta(pred, gt), reference_values, "theta", METRIC_THETA_ATOL_DEG, names)


def test_jax_metrics_take_uint8_as_0_255_values(photo_pairs, reference_values):
    from port import metrics_dmpix as jm

    name, pred, gt = photo_pairs[1]
    r = reference_values[name]
    assert abs(float(jm.ssim_skimage(pred, gt, 255.0)) - r["ssim"]) <= METRIC_SSIM_ATOL
    assert abs(float(jm.psnr(pred, gt, 255.0)) - r["psnr"]) <= METRIC_PSNR_ATOL_DB


def test_jax_metrics_on_floats_in_minus_one_one_match_the_reference_at_range_2(photo_pairs):
    from port import metrics_dmpix as jm

    pairs = photo_pairs[:2]
    pred, gt = _batched(pairs, 1 / 127.5, -1.0)
    for i in range(len(pairs)):
        p64, g64 = pred[i].astype(np.float64), gt[i].astype(np.float64)
        assert abs(float(jm.ssim_skimage(pred, gt, 2.0)[i])
                   - ref.ssim_skimage(p64, g64, 2.0)) <= METRIC_SSIM_ATOL
        assert abs(float(jm.psnr(pred, gt, 2.0)[i]) - ref.psnr(p64, g64, 2.0)) \
            <= METRIC_PSNR_ATOL_DB


def test_pix_defaults_are_not_scikit_image_defaults(photo_pairs, reference_values):
    # The report's Table 1 gap: dm-pix's own SSIM (Gaussian 11x11) vs scikit-image's.
    import dm_pix

    name, pred, gt = photo_pairs[0]
    pix_default = float(dm_pix.ssim(pred / np.float32(255), gt / np.float32(255)))
    assert abs(pix_default - reference_values[name]["ssim"]) > 1e-3
    assert abs(pix_default - reference_values[name]["gauss"]) <= METRIC_SSIM_ATOL


_F64_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    import dm_pix
    from port import metrics_dmpix as jm
    data = np.load(sys.argv[1])
    p, g = data["pred"].astype(np.float64), data["gt"].astype(np.float64)
    # each metric compiled whole (op by op, each op compiles on its own: ~1.5x slower)
    at_255 = lambda metric: float(jax.jit(metric, static_argnums=2)(p, g, 255.0))
    print(json.dumps(dict(
        ssim=at_255(jm.ssim_skimage), gauss=at_255(jm.ssim_gaussian), psnr=at_255(jm.psnr),
        theta=float(jax.jit(jm.theta)(p, g)),
        unscaled_k2=float(jax.jit(lambda a, b: dm_pix.ssim(
            a, b, max_val=255.0, filter_fn=jm.box_filter(7)))(p, g)))))
""")


def test_sqrt_48_49_k2_reproduces_sample_covariance_exactly_in_float64(photo_pairs, tmp_path,
                                                                        reference_values):
    # JAX in float64 runs in a subprocess (x64 is process-wide).
    name, pred, gt = photo_pairs[0]
    np.savez(tmp_path / "pair.npz", pred=pred, gt=gt)
    proc = subprocess.run([sys.executable, "-c", _F64_SCRIPT, str(tmp_path / "pair.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    r = reference_values[name]
    for key in ("ssim", "gauss", "psnr", "theta"):
        assert abs(got[key] - r[key]) <= METRIC_F64_ATOL, f"{key}: {got[key]!r} vs {r[key]!r}"
    # without the sqrt(48/49) factor the box-filter SSIM is off by far more than float32
    assert abs(got["unscaled_k2"] - r["ssim"]) > 1e-4, got["unscaled_k2"] - r["ssim"]
