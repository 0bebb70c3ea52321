"""Evaluation metrics in JAX on dm-pix, float32: the dm-pix twin of core/evaluation.py.

core/evaluation.py (numpy / scikit-image, float64) is the production evaluation
protocol; this module computes the same figures with dm-pix only to compare the two
libraries (parity.evaluation.library_compare, `dln metrics --compare`) and to show
that their gaps are settings, not implementations. No command reports its numbers
as a model's quality.

Images are (..., H, W, 3) float arrays (uint8 is converted to float32 values 0-255,
never divided), with the data range stated explicitly.

SSIM at scikit-image's defaults through `dm_pix.ssim`. scikit-image filters with a
uniform 7 x 7 window (NP = 49 taps) and scales every (co)variance by the sample
factor NP / (NP - 1) = 49/48; dm-pix uses the population (co)variances s = f(xy) -
f(x) f(y). With v = (49/48) s the contrast-structure term is

    (2 v_xy + C2) / (v_x + v_y + C2) = (2 s_xy + (48/49) C2) / (s_x + s_y + (48/49) C2),

multiplying numerator and denominator by 48/49, and (48/49) C2 = (k2 sqrt(48/49) R)^2.
The luminance term has no covariance in it, so dm-pix with a 7 x 7 box `filter_fn`
and k2 = 0.03 sqrt(48/49) computes scikit-image's SSIM map exactly; scikit-image's
mean over the map cropped by the window radius is the mean over dm-pix's "valid" map.
dm-pix's clipping (variances >= eps^2, |covariance| <= sqrt(var var)) only touches
rounding noise.

The box filter sums the 49 values with weight 1 and then divides by 49: weights of
fl(1/49) would sum to 1 + d, and SSIM's f(x^2) - f(x)^2 turns that into a bias of
about -d mu^2 in every variance; on the 0-255 scale the sums of uint8-derived values
are exact integers in float32, so only the division rounds.

theta uses atan2(|u x v|, u . v) for the angle: acos of a cosine near 1 loses half
of float32's digits (0.02 degrees), atan2 keeps the angle to ~1e-6 degrees.
"""

from __future__ import annotations

import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from core.evaluation import RGB_TO_XYZ, WANG_SIGMA

SKIMAGE_WINDOW = 7
SKIMAGE_K1 = 0.01
SKIMAGE_K2 = 0.03
# k2 that absorbs scikit-image's sample-covariance factor NP / (NP - 1), NP = 7 * 7
SAMPLE_COVARIANCE_K2 = SKIMAGE_K2 * math.sqrt((SKIMAGE_WINDOW ** 2 - 1) / SKIMAGE_WINDOW ** 2)
GAUSSIAN_WINDOW = 11


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if not jnp.issubdtype(x.dtype, jnp.floating) else x


def _check_range(data_range) -> None:
    if data_range is None or not np.isfinite(data_range) or float(data_range) <= 0:
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")


def box_filter(size: int = SKIMAGE_WINDOW):
    """A dm-pix `filter_fn`: per-channel size x size mean over "valid" positions of
    (..., H, W, C) arrays, as a sum with weight 1 divided by size^2."""
    def filter_fn(z: jax.Array) -> jax.Array:
        batched = z if z.ndim == 4 else z[None]
        channels = batched.shape[-1]
        kernel = jnp.ones((size, size, 1, channels), batched.dtype)
        summed = jax.lax.conv_general_dilated(
            batched, kernel, window_strides=(1, 1), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
            precision=jax.lax.Precision.HIGHEST)
        mean = summed / jnp.asarray(size * size, batched.dtype)
        return mean if z.ndim == 4 else mean[0]

    return filter_fn


_BOX7 = box_filter(SKIMAGE_WINDOW)


def psnr(pred, gt, data_range: float) -> jax.Array:
    """PSNR in dB per image: 20 log10(data_range) - 10 log10(MSE over H, W, C)."""
    _check_range(data_range)
    a, b = _as_float(pred), _as_float(gt)
    mse = dm_pix.mse(a, b)
    return 20.0 * jnp.log10(jnp.asarray(data_range, mse.dtype)) - 10.0 * jnp.log10(mse)


def ssim_skimage(pred, gt, data_range: float) -> jax.Array:
    """scikit-image's default SSIM (uniform 7 x 7, sample covariance), mean over
    channels, per image, via dm_pix.ssim."""
    _check_range(data_range)
    return dm_pix.ssim(_as_float(pred), _as_float(gt), max_val=float(data_range),
                       k1=SKIMAGE_K1, k2=SAMPLE_COVARIANCE_K2, filter_fn=_BOX7)


def ssim_gaussian(pred, gt, data_range: float) -> jax.Array:
    """SSIM at Wang et al.'s settings (dm-pix's own defaults: Gaussian 11 x 11, sigma
    1.5, population covariance), per image."""
    _check_range(data_range)
    return dm_pix.ssim(_as_float(pred), _as_float(gt), max_val=float(data_range),
                       filter_size=GAUSSIAN_WINDOW, filter_sigma=WANG_SIGMA,
                       k1=SKIMAGE_K1, k2=SKIMAGE_K2)


def angle_map(pred, gt) -> jax.Array:
    """Per-pixel angle (degrees) between the XYZ colour vectors; 0 where either is zero."""
    a, b = _as_float(pred), _as_float(gt)
    if a.shape != b.shape or a.shape[-1] != 3:
        raise ValueError(f"theta needs two RGB arrays of one shape, got {a.shape} and {b.shape}")
    matrix = jnp.asarray(RGB_TO_XYZ, a.dtype)
    u = jnp.einsum("...c,xc->...x", a, matrix, precision=jax.lax.Precision.HIGHEST)
    v = jnp.einsum("...c,xc->...x", b, matrix, precision=jax.lax.Precision.HIGHEST)
    cross = jnp.linalg.norm(jnp.cross(u, v), axis=-1)
    dot = jnp.sum(u * v, axis=-1)
    zero = jnp.all(u == 0, axis=-1) | jnp.all(v == 0, axis=-1)
    return jnp.where(zero, 0.0, jnp.degrees(jnp.arctan2(cross, dot)))


def theta(pred, gt) -> jax.Array:
    """Mean per-pixel colour angle in degrees, per image."""
    return jnp.mean(angle_map(pred, gt), axis=(-2, -1))
