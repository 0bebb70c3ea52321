"""port.losses on cases with values known in closed form (no torch involved)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from port import losses


def _vertical_ramp(n, h, w, c, step):
    """x[b, i, j, k] = step * i: only vertical differences, each equal to `step`."""
    column = step * np.arange(h, dtype=np.float32)[None, :, None, None]
    return np.broadcast_to(column, (n, h, w, c)).astype(np.float32)


def test_tv_divides_vertical_differences_by_c_times_h_minus_1_times_w():
    # h_tv = B C (H-1) W step^2, count_h = C (H-1) W  ->  TV = 2 step^2, whatever B, H, W.
    # The swapped counts of the earlier port give 2 step^2 (H-1) W / (H (W-1)) = 0.0196.
    n, h, w, c, step = 2, 20, 50, 3, 0.1
    tv = float(losses.tv_loss(_vertical_ramp(n, h, w, c, step)))
    expected = 2 * step ** 2
    assert abs(tv - expected) <= 1e-6 * expected, f"TV {tv} != {expected}"


def test_tv_divides_horizontal_differences_by_c_times_h_times_w_minus_1():
    n, h, w, c, step = 1, 50, 20, 3, 0.25
    ramp = np.swapaxes(_vertical_ramp(n, w, h, c, step), 1, 2)  # varies along the width
    tv = float(losses.tv_loss(ramp))
    expected = 2 * step ** 2
    assert abs(tv - expected) <= 1e-6 * expected, f"TV {tv} != {expected}"


@pytest.mark.parametrize("pred_range,expected_l", [
    ((0.0, 1.0), 1.0), ((-0.6, 1.0), 2.0), ((0.0, 200.0), 255.0), ((-1.0, 200.0), 256.0),
    ((-0.5, 128.0), 1.0),  # both thresholds are strict inequalities
])
def test_range_rule_reads_max_and_min_of_the_prediction(pred_range, expected_l):
    pred = np.linspace(*pred_range, 24 * 24 * 3, dtype=np.float32).reshape(1, 24, 24, 3)
    assert float(losses.authors_ssim_range(pred)) == expected_l


def test_range_rule_ignores_the_target():
    import dm_pix

    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
    target = np.clip(pred + rng.normal(0, 0.2, pred.shape), 0, 1).astype(np.float32)
    target[0, 3, 4, 1] = 200.0
    # only the prediction counts: L = 1 although the target reaches 200
    loss = float(losses.ssim_loss(pred, target))
    with_l1 = 1 - float(dm_pix.ssim(pred, target, max_val=1.0)[0])
    with_l255 = 1 - float(dm_pix.ssim(pred, target, max_val=255.0)[0])
    assert abs(with_l1 - with_l255) > 1e-3, "pair does not tell L = 1 from L = 255"
    assert abs(loss - with_l1) <= 1e-5, f"loss {loss}, L=1 gives {with_l1}, L=255 {with_l255}"


def test_ssim_loss_is_zero_for_identical_images_and_invariant_to_the_255_scale():
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 1, (2, 17, 29, 3)).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    assert abs(float(losses.ssim_loss(target, target))) <= 1e-6
    # pred in [0, 1] with L = 1 and the same pair x255 with L = 255 give one SSIM
    # (C1, C2 scale with L^2 like the moments), provided max(pred x255) > 128.
    unit = float(losses.ssim_loss(pred, target))
    scaled = float(losses.ssim_loss(pred * 255, target * 255))
    assert abs(unit - scaled) <= 1e-5, f"{unit} vs {scaled}"


def test_losses_are_jit_able_and_match_eager():
    rng = np.random.default_rng(2)
    pred = rng.uniform(-1, 1, (2, 13, 21, 3)).astype(np.float32)
    target = rng.uniform(-1, 1, (2, 13, 21, 3)).astype(np.float32)
    eager = float(losses.dln_loss(pred, target))
    jitted = float(jax.jit(losses.dln_loss)(jnp.asarray(pred), jnp.asarray(target)))
    assert abs(eager - jitted) <= 1e-6, f"{eager} vs {jitted}"
    expected = float(losses.ssim_loss(pred, target)) + 0.001 * float(losses.tv_loss(pred))
    assert abs(eager - expected) <= 1e-6, f"dln_loss {eager} != 1-SSIM + 0.001 TV {expected}"


def test_ssim_loss_rejects_images_smaller_than_the_window():
    x = np.zeros((1, 10, 40, 3), np.float32)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        losses.ssim_loss(x, x)


def test_ssim_filter_equals_the_depthwise_convolution_and_so_does_its_gradient():
    """valid_filter computes the authors' window as shifted sums; a depthwise "VALID"
    convolution with the same float32 window is the reference (a flipped or transposed
    window, a wrong offset or a missing tap would be off by far more than rounding)."""
    window = losses.gaussian_window()
    rng = np.random.default_rng(4)
    z = rng.uniform(0, 1, (2, 19, 23, 3)).astype(np.float32)
    g = rng.normal(0, 1, (2, 9, 13, 3)).astype(np.float32)
    asym = window * np.linspace(0.5, 1.5, 121, dtype=np.float32).reshape(11, 11)

    def depthwise(w):
        kernel = jnp.broadcast_to(jnp.asarray(w)[:, :, None, None], w.shape + (1, 3))
        return lambda a: jax.lax.conv_general_dilated(
            a, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=3, precision="highest")

    for w in (window, asym):  # the asymmetric window tells a flip from none
        y, vjp = jax.vjp(losses.valid_filter(w), z)
        y_ref, vjp_ref = jax.vjp(depthwise(w), z)
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(vjp(g)[0]), np.asarray(vjp_ref(g)[0]),
                                   rtol=1e-5, atol=1e-6)
