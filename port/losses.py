"""The authors' training losses in JAX, NHWC.

    loss = (1 - SSIM(pred, target)) + tv_weight * TV(pred),   tv_weight = 0.001

SSIM is `dm_pix.ssim` at the authors' settings: Gaussian window 11 x 11, sigma 1.5,
"valid" filtering, C1 = (0.01 L)^2, C2 = (0.03 L)^2, and the range L chosen from the
PREDICTION at every call: max_val = 255 if max(pred) > 128 else 1; min_val = -1 if
min(pred) < -0.5 else 0. The mean over batch, channels and valid positions equals
dm-pix's per-image mean averaged over the batch (every image of a batch has one size).

The window goes in through dm-pix's `filter_fn`: a per-channel 2-D "VALID" correlation
with the authors' float32 window (the 1-D Gaussian stored as float32, normalised by
its sum, outer product), computed as a sum of 121 shifted, weighted copies
(`valid_filter`, ~7x faster on XLA CPU than a depthwise convolution). dm-pix's built-in filter is the same Gaussian applied as two
separable "valid" 1-D convolutions, but its float32 weights sum to 1 only up to a
different rounding; SSIM subtracts squared means from filtered squares
(sigma = f(x^2) - f(x)^2), so a window summing to 1 + d shifts every variance by about
-d mu^2. On smooth images (local variance 1e-3, mean 0.5) that ulp-level difference
moved the mean SSIM by 4e-6 (2e-5 relative) away from the authors' float32 value;
with the identical window the two agree to ~1e-7. dm-pix's clipping of variances at
eps^2 and of |covariance| at sqrt(var_a var_b) only acts on values that are rounding
noise, which the authors' code keeps: a difference far below float32 resolution of
the mean.

TV uses the authors' normalisation: count_h = C (H - 1) W for the vertical
differences, count_w = C H (W - 1) for the horizontal ones (the earlier JAX port
swapped them, which only square patches hide), TV = 2 (h / count_h + w / count_w) / B.

All functions are jit-able and differentiable; the range rule is a step function of
the prediction and carries no gradient (as in the authors' code, where it is a
Python `if` on a comparison).
"""

from __future__ import annotations

import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from core.recipe import AUTHORS_RECIPE

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
TV_WEIGHT = AUTHORS_RECIPE.tv_weight  # 0.001, the authors' (core.recipe)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """(size, size) float32 window, the same numbers as the authors' torch window: the
    1-D Gaussian rounded to float32, divided by its sum (rounded once to float32), and
    the float32 outer product of that line."""
    line = np.array([math.exp(-((i - size // 2) ** 2) / (2.0 * sigma ** 2))
                     for i in range(size)], np.float32)
    line = line / np.float32(line.sum(dtype=np.float64))
    return np.outer(line, line).astype(np.float32)


def _correlate_valid(z: jax.Array, window: np.ndarray) -> jax.Array:
    """Per-channel 2-D "valid" correlation of an NHWC array: for each window row (a
    loop of kh steps), the sum over its taps of the tap's weight times the input shifted
    by it, added to the running total."""
    kh, kw = window.shape
    height, width = z.shape[1] - kh + 1, z.shape[2] - kw + 1
    weights = jnp.asarray(window, z.dtype)

    def add_row(i, total):
        rows = jax.lax.dynamic_slice_in_dim(z, i, height, axis=1)
        for j in range(kw):
            total = total + rows[:, :, j:j + width, :] * weights[i, j]
        return total

    start = jnp.zeros((z.shape[0], height, width, z.shape[3]), z.dtype)
    return jax.lax.fori_loop(0, kh, add_row, start)


def valid_filter(window: np.ndarray):
    """A dm-pix `filter_fn`: per-channel 2-D "VALID" correlation of NHWC arrays with the
    float32 `window` (weights exactly the window's), as shifted, weighted sums, one
    window row per loop step, rather than a depthwise convolution. Its gradient (a
    custom VJP) is the "full" correlation of the output gradient with the flipped
    window, in the same form. Measured on a 2-core AMD EPYC, batch 4 x 96^2 x 3: the
    authors' loss and its gradient take ~28 ms of CPU this way against ~200 ms with
    XLA's depthwise convolution (~1 GFLOP/s on its CPU backend; the SSIM filters were
    5-8% of the whole training step) and ~67 ms with all 121 taps unrolled (which also
    compiles 3x longer); values agree to float32 summation order."""
    weights = np.asarray(window, np.float32)
    flipped = np.ascontiguousarray(weights[::-1, ::-1])
    kh, kw = weights.shape

    @jax.custom_vjp
    def filter_fn(z: jax.Array) -> jax.Array:
        return _correlate_valid(z, weights)

    def forward(z):
        return _correlate_valid(z, weights), None

    def backward(_, g):
        padded = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
        return (_correlate_valid(padded, flipped),)

    filter_fn.defvjp(forward, backward)
    return filter_fn


_AUTHORS_FILTER = valid_filter(gaussian_window())


def authors_ssim_range(pred: jax.Array) -> jax.Array:
    """L = max_val - min_val read from the prediction (255 / 1, minus -1 / 0)."""
    pred = jax.lax.stop_gradient(jnp.asarray(pred))
    max_val = jnp.where(jnp.max(pred) > 128, 255.0, 1.0)
    min_val = jnp.where(jnp.min(pred) < -0.5, -1.0, 0.0)
    return (max_val - min_val).astype(jnp.float32)


def _check_nhwc_pair(pred: jax.Array, target: jax.Array) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"ssim_loss needs two NHWC batches of one shape, got {pred.shape} "
                         f"and {target.shape}")
    height, width = pred.shape[1], pred.shape[2]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"ssim_loss needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} "
                         f"pixels (valid {SSIM_WINDOW} x {SSIM_WINDOW} window), got "
                         f"{height} x {width}")


def ssim(pred: jax.Array, target: jax.Array) -> jax.Array:
    """The authors' training SSIM: scalar mean over batch, channels and valid positions."""
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    _check_nhwc_pair(pred, target)
    per_image = dm_pix.ssim(pred, target, max_val=authors_ssim_range(pred),
                            k1=SSIM_K1, k2=SSIM_K2, filter_fn=_AUTHORS_FILTER)
    return jnp.mean(per_image)


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """1 - SSIM(pred, target) with the authors' semantics (NHWC)."""
    return 1.0 - ssim(pred, target)


def tv_loss(pred: jax.Array) -> jax.Array:
    """The authors' total variation of an NHWC batch (squared differences)."""
    pred = jnp.asarray(pred)
    if pred.ndim != 4:
        raise ValueError(f"tv_loss needs an NHWC batch, got shape {pred.shape}")
    batch, height, width, channels = pred.shape
    count_h = channels * (height - 1) * width
    count_w = channels * height * (width - 1)
    h_tv = jnp.sum(jnp.square(pred[:, 1:, :, :] - pred[:, :-1, :, :]))
    w_tv = jnp.sum(jnp.square(pred[:, :, 1:, :] - pred[:, :, :-1, :]))
    return 2.0 * (h_tv / count_h + w_tv / count_w) / batch


def dln_loss(pred: jax.Array, target: jax.Array, tv_weight: float = TV_WEIGHT) -> jax.Array:
    """The authors' training loss: (1 - SSIM(pred, target)) + tv_weight * TV(pred)."""
    return ssim_loss(pred, target) + tv_weight * tv_loss(pred)
