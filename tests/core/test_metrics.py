"""core.evaluation (numpy / scikit-image reference) on values known in closed form and
on the data-range pitfalls. No JAX here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from core import evaluation as metrics


def _pair_uint8(seed=0, shape=(40, 56, 3)):
    """A crop of a bundled photo and a noisy, dimmed copy of it."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photo = skimage.data.astronaut()
    top, left = rng.integers(0, 200, 2)
    gt = photo[top:top + shape[0], left:left + shape[1]]
    noisy = 0.8 * gt.astype(int) + rng.integers(-25, 26, gt.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), np.ascontiguousarray(gt)


def test_psnr_of_a_constant_error_is_10_log10_of_range_squared_over_error_squared():
    gt = np.zeros((9, 11, 3), np.uint8)
    pred = np.full((9, 11, 3), 10, np.uint8)
    expected = 10 * math.log10(255 ** 2 / 10 ** 2)
    assert abs(metrics.psnr(pred, gt, 255) - expected) <= 1e-12


def test_psnr_does_not_wrap_uint8_differences():
    # 0 - 255 in uint8 wraps to 1; the true error is 255, PSNR 0 dB.
    gt = np.full((8, 8, 3), 255, np.uint8)
    pred = np.zeros((8, 8, 3), np.uint8)
    assert abs(metrics.psnr(pred, gt, 255)) <= 1e-12


@pytest.mark.parametrize("to_scale,data_range", [
    (lambda u: u.astype(np.float32) / 255, 1.0),               # floats in [0, 1]
    (lambda u: u.astype(np.float32), 255.0),                   # 0-255 floats
])
def test_psnr_and_ssim_depend_only_on_the_data_once_the_range_is_stated(to_scale, data_range):
    pred, gt = _pair_uint8()
    sp, sg = to_scale(pred), to_scale(gt)
    assert abs(metrics.ssim_skimage(sp, sg, data_range)
               - metrics.ssim_skimage(pred, gt, 255)) <= 1e-6
    assert abs(metrics.psnr(sp, sg, data_range) - metrics.psnr(pred, gt, 255)) <= 1e-4
    assert abs(metrics.ssim_gaussian(sp, sg, data_range)
               - metrics.ssim_gaussian(pred, gt, 255)) <= 1e-6


def test_floats_in_minus_one_one_keep_psnr_but_change_ssim_luminance():
    # PSNR only sees differences: [-1, 1] with range 2 equals uint8 with range 255.
    # SSIM's luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) is not shift
    # invariant: images must be mapped back to [0, 1] (or uint8) before measuring.
    pred, gt = _pair_uint8()
    sp, sg = pred / 127.5 - 1, gt / 127.5 - 1
    assert abs(metrics.psnr(sp, sg, 2.0) - metrics.psnr(pred, gt, 255)) <= 1e-9
    assert abs(metrics.ssim_skimage(sp, sg, 2.0) - metrics.ssim_skimage(pred, gt, 255)) > 1e-2
    assert abs(metrics.ssim_skimage((sp + 1) / 2, (sg + 1) / 2, 1.0)
               - metrics.ssim_skimage(pred, gt, 255)) <= 1e-12


def test_a_wrong_data_range_gives_a_different_ssim_so_the_range_is_mandatory():
    pred, gt = _pair_uint8()
    unit_p, unit_g = pred / 255.0, gt / 255.0
    right = metrics.ssim_skimage(unit_p, unit_g, 1.0)
    wrong = metrics.ssim_skimage(unit_p, unit_g, 255.0)   # the classic float-image pitfall
    assert wrong - right > 0.05, (right, wrong)
    for bad in (None, 0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="data_range"):
            metrics.ssim_skimage(pred, gt, bad)


def test_ssim_is_the_authors_call_on_uint8_and_the_mean_of_per_channel_ssims():
    pred, gt = _pair_uint8(1)
    # the authors' call: scikit-image defaults, range from the uint8 dtype
    authors = structural_similarity(gt, pred, channel_axis=-1)
    per_channel = np.mean([structural_similarity(gt[..., c], pred[..., c], data_range=255)
                           for c in range(3)])
    ours = metrics.ssim_skimage(pred, gt, 255)
    assert abs(ours - authors) <= 1e-12 and abs(ours - per_channel) <= 1e-12
    assert abs(metrics.psnr(pred, gt, 255) - peak_signal_noise_ratio(gt, pred)) <= 1e-12


def test_gaussian_ssim_differs_from_the_default_ssim():
    pred, gt = _pair_uint8(2)
    default = metrics.ssim_skimage(pred, gt, 255)
    gaussian = metrics.ssim_gaussian(pred, gt, 255)
    assert abs(default - gaussian) > 1e-3, (default, gaussian)


def test_theta_is_the_xyz_angle_and_zero_vectors_count_zero():
    rgb = np.array([[[0.9, 0.2, 0.1], [0.1, 0.5, 0.3]]])
    other = np.array([[[0.2, 0.8, 0.4], [0.3, 0.1, 0.6]]])
    u, v = rgb @ metrics.RGB_TO_XYZ.T, other @ metrics.RGB_TO_XYZ.T
    cosines = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    expected = np.degrees(np.arccos(cosines))
    assert np.allclose(metrics.angle_map(rgb, other), expected, atol=1e-9)
    # a black pixel in either image counts 0 and stays in the mean
    rgb_black = rgb.copy()
    rgb_black[0, 1] = 0
    assert abs(metrics.theta(rgb_black, other) - expected[0, 0] / 2) <= 1e-9


def test_theta_ignores_brightness_and_uses_rgb_order():
    pred, gt = _pair_uint8(3)
    assert metrics.theta(gt // 2 * 2, (gt // 2).astype(np.uint8)) <= 1e-6  # parallel vectors
    # a BGR image fed as RGB (the report's defect 7) changes theta
    assert abs(metrics.theta(pred, gt) - metrics.theta(pred[..., ::-1], gt[..., ::-1])) > 1e-3


def test_evaluate_pair_is_the_authors_protocol_on_uint8_only():
    pred, gt = _pair_uint8(4)
    result = metrics.evaluate_pair(pred, gt)
    assert set(result) == {"psnr", "ssim", "theta"}
    assert abs(result["psnr"] - peak_signal_noise_ratio(gt, pred, data_range=255)) <= 1e-12
    assert abs(result["ssim"] - structural_similarity(gt, pred, channel_axis=-1)) <= 1e-12
    with pytest.raises(TypeError, match="uint8"):
        metrics.evaluate_pair(pred / 255.0, gt)
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate_pair(pred[:-1], gt)
