"""The one place that owns comparison tolerances.

Every tolerance used by tests and harnesses is named here with the reason it is
what it is. `compare` measures; `assert_close` fails with the max error in the
message (timm style).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Forward pass, same weights, JAX vs torch, float32: both sum ~600-2300 products per
# output in different orders (oneDNN vs XLA), so results differ by a few ulps times
# the depth of the network (~35 convs). Seen: ~1e-6 on O(1) outputs.
FORWARD_ATOL = 1e-5
# Errors scale with the magnitude of the values compared: a block whose outputs
# reach 100 cannot agree to 1e-5 absolute in float32 (ulp(100) = 7.6e-6). A block
# passes when max|a - b| <= tol * max(1, max|reference|).
SCALE_FLOOR = 1.0
# Losses (SSIM, TV) JAX vs torch: reductions over ~1e5 terms in float32. Compared
# with `compare` (relative to max(1, |reference|)): 1 - SSIM cancels when SSIM is
# near 1, so a loss of 0.05 carries the absolute error of SSIM (~1 ulp(1) = 6e-8).
LOSS_RTOL = 1e-6
# Gradient of the loss w.r.t. the prediction, JAX vs torch, relative L2 norm: the
# same float32 window, but XLA and oneDNN sum the 121 taps and the backward pass in
# different orders; seen ~2e-6 on 2 x 48 x 80 and 1 x 61 x 93 textured batches.
LOSS_GRAD_RTOL = 1e-5
# The same gradient on SMOOTH images (local variance ~1e-3 around a mean ~0.5):
# SSIM's f(x^2) - f(x)^2 cancels ~3 digits, so float32 gradients carry ~1e-5 relative
# rounding in either framework (seen: port 1e-5, torch 4e-5 from the float64 value).
# Pixels under windows whose float32 covariance rounds to exactly 0 are left out:
# there dm-pix's clip sign(s01) * min(...) has zero derivative (one such window moved
# the whole gradient by 7.6e-4 relative L2).
SMOOTH_LOSS_GRAD_RTOL = 5e-5
# Losses and gradients with both frameworks in float64: only float64 rounding is left,
# amplified by SSIM's cancellation (seen ~1e-10 on 2 x 48 x 80).
LOSS_F64_RTOL = 1e-8
# Evaluation metrics, JAX (dm-pix, float32) vs scikit-image (float64), on real photos
# (scikit-image's bundled images, clean and darkened). SSIM and theta are means over
# ~1e5 float32 terms with errors of either sign (seen: SSIM <= 6.6e-6, theta
# <= 1.7e-6 degrees); PSNR is 10 log10 of a float32 mean (seen <= 4.2e-6 dB).
METRIC_SSIM_ATOL = 1e-5
METRIC_THETA_ATOL_DEG = 1e-5
METRIC_PSNR_ATOL_DB = 1e-4
# The same metrics with JAX in float64: the formulas are identical (k2 * sqrt(48/49)
# absorbs the sample covariance exactly), so only float64 rounding is left (seen 2e-15).
METRIC_F64_ATOL = 1e-12
# Gradients of the training loss, per tensor, relative L2 norm: backward passes sum
# over every pixel and batch element, adding rounding compared to the forward.
# parity/grads/gradients.py holds it in FLOAT64 (seen: 3e-8 at dim 16, 7e-10 at dim 64).
# In float32 no port can meet it per tensor: pre-activations within rounding of a
# PReLU/ReLU kink take different branches in the two frameworks (seen up to 9e-3 on
# one tensor, and torch float32 is as far from its own float64 result).
GRAD_RTOL = 1e-4
# Parameters after one Adam step from identical parameters and gradients (float32;
# with each side's own float32 gradients a near-zero element can flip sign: 1.3e-5 seen).
ADAM_STEP_RTOL = 1e-6
# PNGs of the two backends: float32 outputs differing by ~1e-6 can straddle a
# quantisation boundary (x255, truncate), flipping a pixel by one level.
PNG_MAX_FRACTION_OFF_BY_ONE = 1e-3


@dataclasses.dataclass(frozen=True)
class Comparison:
    max_abs: float
    scale: float         # max |reference|
    rel_to_scale: float  # max_abs / max(SCALE_FLOOR, scale)
    passed: bool
    shape_ok: bool

    def describe(self) -> str:
        if not self.shape_ok:
            return "shape mismatch"
        return (f"max|diff| {self.max_abs:.3e}, scale {self.scale:.3e}, "
                f"relative to scale {self.rel_to_scale:.3e}")


def compare(actual, reference, tol: float = FORWARD_ATOL) -> Comparison:
    """Scale-aware comparison: passes when max|a - r| <= tol * max(1, max|r|)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        return Comparison(float("inf"), float("nan"), float("inf"), False, False)
    if a.size == 0:
        return Comparison(0.0, 0.0, 0.0, True, True)
    diff = np.abs(a - r)
    max_abs = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")
    scale = float(np.max(np.abs(r)))
    rel = max_abs / max(SCALE_FLOOR, scale)
    return Comparison(max_abs, scale, rel, bool(rel <= tol), True)


def assert_close(actual, reference, tol: float = FORWARD_ATOL, what: str = "") -> Comparison:
    result = compare(actual, reference, tol)
    if not result.shape_ok:
        raise AssertionError(f"{what}: shape {np.shape(actual)} != reference {np.shape(reference)}")
    if not result.passed:
        raise AssertionError(f"{what}: {result.describe()} exceeds tolerance {tol:.1e}")
    return result


def relative_l2(actual, reference) -> float:
    """||a - r|| / ||r|| (0 when both are zero)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    denom = float(np.linalg.norm(r))
    num = float(np.linalg.norm(a - r))
    return 0.0 if num == 0 else (num / denom if denom else float("inf"))


def assert_relative_l2(actual, reference, rtol: float, what: str = "") -> float:
    err = relative_l2(actual, reference)
    if not err <= rtol:
        raise AssertionError(f"{what}: relative L2 error {err:.3e} exceeds {rtol:.1e}")
    return err


def assert_pngs_match(a_uint8, b_uint8, max_fraction: float = PNG_MAX_FRACTION_OFF_BY_ONE,
                      what: str = "") -> float:
    """Equal except at most `max_fraction` of values off by exactly one level."""
    a = np.asarray(a_uint8, dtype=np.int16)
    b = np.asarray(b_uint8, dtype=np.int16)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shape {a.shape} != {b.shape}")
    diff = np.abs(a - b)
    worst = int(diff.max()) if diff.size else 0
    fraction = float(np.count_nonzero(diff)) / max(1, diff.size)
    if worst > 1 or fraction > max_fraction:
        raise AssertionError(f"{what}: {fraction:.4%} of values differ, worst by {worst} levels "
                             f"(allowed: {max_fraction:.2%} off by one)")
    return fraction
# Training parity, JAX vs torch, same initial weights and batches: each step's loss
# carries the forward/backward rounding of both frameworks, and Adam feeds every
# difference back into the weights, so differences grow step by step. 20 steps.
TRAIN_LOSS_RTOL = 1e-4
# Final weights after the compared steps, per tensor, relative L2 norm.
TRAIN_WEIGHTS_RTOL = 1e-3
# Data parallel: the same global batch on 1 and on N devices; only the order of the
# float32 reductions across devices differs.
DATA_PARALLEL_LOSS_RTOL = 1e-5
