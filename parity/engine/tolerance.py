"""The one place that owns comparison tolerances.

Every tolerance used by tests and harnesses is named here with the reason it is
what it is. `measure` applies the pass rule; `assert_close` fails with the max error
in the message (timm style).
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
# ...but below that floor the rule is absolute, and a row whose values are all tiny
# passes whatever it holds: a 13-layer conv stack left at torch's default init (no
# residuals, BatchNorm on its initial running statistics) ends at max|out| = 5.8e-7, and
# a port flattening NHWC before its Linear (wrong by 90% of that scale) passed at 1e-5.
# So a forward row whose scale is under the floor also fails when its error exceeds
# SMALL_SCALE_RTOL of its own scale and SMALL_SCALE_NOISE (one ulp of 1.0 in float32:
# inputs are O(1), so differences below it may be rounding residue of a cancellation).
# A correct port's rows stay far inside: the same stack's rows at scales 2e-5..1e-4
# differ by <= 1e-12 relative; float32 rounding is ~1e-7 of the values it acts on.
SMALL_SCALE_RTOL = 1e-2
SMALL_SCALE_NOISE = float(np.finfo(np.float32).eps)   # 1.19e-7
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
# Gradients of the training loss, per tensor, relative L2 norm, both frameworks in
# FLOAT64 (parity/grads/model_gradients.py). Only float64 rounding (1.1e-16) is left, amplified
# by SSIM's cancellation (the loss itself agrees to ~1e-10, LOSS_F64_RTOL) and, for the
# PReLU slopes, by the cancelling sum of x * dL/dy over every negative input. Measured
# (2-core AMD EPYC, dim 16, 2 x 24 x 36): median 2.9e-10, worst 2.9e-8 (a PReLU slope);
# dim 64 (sample model, same batch): worst 1.4e-9. 1e-6 leaves 30x over the worst and is
# far below what one float32 step would leave (float32 gradients, same run: worst 7.9e-5),
# so a port that computes anything in float32, or any layout error, fails. In float32 no
# port can meet a per-tensor limit: pre-activations within rounding of a PReLU/ReLU kink
# take different branches in the two frameworks (seen up to 9e-3 on one tensor, and torch
# float32 is as far from its own float64 result); float32 figures are reported only.
GRAD_RTOL = 1e-6
# A tensor whose true gradient is zero (a bias followed by a normalisation, say) has a
# reference of float64 rounding noise on both sides, and noise relative to noise is
# ~1 (seen 1.48 on an MLP-Mixer's last token-MLP bias before a LayerNorm, whose float64
# reference norm was 5.4e-17 of the largest tensor's). So each relative L2 is taken
# against at least this fraction of the largest gradient norm of the comparison: an
# error then passes only below GRAD_RTOL * 1e-9 = 1e-15 of that norm, within float64
# rounding (2.2e-16 per operation), so a defect of any size fails (that bias then read
# 8.1e-8; every tensor with a real gradient keeps its plain relative L2, ~1e-15).
GRAD_NORM_FLOOR = 1e-9
# Parameters after one Adam step from identical parameters and gradients (float32;
# with each side's own float32 gradients a near-zero element can flip sign: 1.3e-5 seen).
ADAM_STEP_RTOL = 1e-6
# PNGs of the two backends: float32 outputs differing by ~1e-6 can straddle a
# quantisation boundary (x255, truncate), flipping a pixel by one level.
PNG_MAX_FRACTION_OFF_BY_ONE = 1e-3
# Tiled / bucketed inference (core.tiling) vs the same framework's whole-image
# forward: the same products, only the FA means are summed in another order (per tile,
# accumulated in float64) and the convolutions run on other shapes. Seen at dim 16 on
# 45x71 and 83x37 images, tiles of 20 and 29: JAX <= 2.6e-7, torch <= 6.8e-7 relative
# to scale; the forward tolerance is kept, no loosening needed.
TILED_FORWARD_ATOL = FORWARD_ATOL


@dataclasses.dataclass(frozen=True)
class Comparison:
    max_abs: float
    scale: float         # max |reference|
    rel_to_scale: float  # max_abs / max(SCALE_FLOOR, scale)
    passed: bool
    shape_ok: bool
    empty: bool = False  # zero-size arrays: nothing was measured, so it cannot pass

    def describe(self) -> str:
        if not self.shape_ok:
            return "shape mismatch"
        if self.empty:
            return "nothing to compare (zero-size arrays)"
        return (f"max|diff| {self.max_abs:.3e}, scale {self.scale:.3e}, "
                f"relative to scale {self.rel_to_scale:.3e}")


def measure(actual, reference, tol: float = FORWARD_ATOL) -> Comparison:
    """Scale-aware comparison: passes when max|a - r| <= tol * max(1, max|r|).

    Fails safe: a NaN or an infinity anywhere in either array (even at the same place on
    both sides) is an infinite error, and zero-size arrays (nothing measured) never pass."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        return Comparison(float("inf"), float("nan"), float("inf"), False, False)
    if a.size == 0:
        return Comparison(float("nan"), float("nan"), float("nan"), False, True, empty=True)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: judged on the next line
        diff = np.abs(a - r)
    # np.max, not np.nanmax, and any non-finite difference is infinite: NaN never passes
    max_abs = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")
    scale = float(np.max(np.abs(r)))
    # an infinite error stays infinite relative to any scale (inf / inf would be NaN)
    rel = max_abs / max(SCALE_FLOOR, scale) if max_abs < float("inf") else float("inf")
    return Comparison(max_abs, scale, rel, bool(rel <= tol), True)


def assert_close(actual, reference, tol: float = FORWARD_ATOL, what: str = "") -> Comparison:
    result = measure(actual, reference, tol)
    if not result.shape_ok:
        raise AssertionError(f"{what}: shape {np.shape(actual)} != reference {np.shape(reference)}")
    if not result.passed:
        raise AssertionError(f"{what}: {result.describe()} exceeds tolerance {tol:.1e}")
    return result


def relative_l2(actual, reference, floor: float = 0.0) -> float:
    """||a - r|| / max(||r||, floor) (0 when both are zero)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    denom = max(float(np.linalg.norm(r)), floor)
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
# Training parity, JAX vs torch, same initial weights, batches and rates (20 steps, the
# rate divided by 10 for the last 5; parity.grads.training_parity). Every limit below sits
# between what the correct trainers give and what the smallest defect of the training zoo
# (parity/grads/training_zoo.py, injected into the JAX step) moves, both figures beside
# it. Measured on a 2-core AMD EPYC (shared with other jobs), seed 0, in two
# configurations: A = dim 16, batch 2, 32 x 32 crops (the test suite's); B = dim 64,
# batch 2, 48 x 48 (`dln parity --training`'s default). The limits hold for 20 steps:
# longer runs drift further apart (Adam feeds every rounding back), so they may fail safe.
#
# Step 1's loss: identical weights on the identical batch, so only the loss function's
# float32 rounding is left. Correct: 4.5e-7 (A), 4.7e-7 (B). Smallest defect: TV weight
# doubled, 4.3e-5 (A) / 2.4e-5 (B); TV dropped 4.3e-5 / 2.5e-5 (a 10% re-weighting moves
# it 4.8e-6 (A): not claimed). 5e-6: 10x over the correct run, 4.8x under the defect.
TRAIN_FIRST_LOSS_RTOL = 5e-6
# Each of the first 20 steps' losses: every step carries both frameworks' rounding and
# Adam feeds each difference back into the weights. Correct: worst 2.2e-6 (A), 7.5e-6 (B;
# 9.2e-6 seen earlier at full width). Smallest defect naming this check: Adam beta2 0.99,
# 2.8e-4 (A) / 3.6e-4 (B) (lr 1% high: 2.3e-3 / 9.7e-3). 5e-5: 6.7x over the worst correct
# figure, 5.6x under the defect.
TRAIN_LOSS_RTOL = 5e-5
# Final weights after the compared steps, per tensor, relative L2. Correct: worst 7.0e-6
# (A), 2.6e-6 (B). 20 steps move a weight by ~1e-4 of its size, so this check is coarse:
# the defects it catches on its own figure are the large ones (Adam eps inside the root
# 2.5e-4 / 7.6e-4, the schedule one step early 1.9e-4 / 3.3e-4, no bias correction 1.5e-2 /
# 1.7e-2); the update and moment checks below carry the rest. 1e-4: 14x over correct.
TRAIN_WEIGHTS_RTOL = 1e-4
# The stricter check: each tensor's update (final - initial), relative L2. 20 steps at lr
# 1e-5 move a weight by ~1e-4 of its size, so the final weights alone would hide errors of
# the update up to ~10x its size.
# Adam divides each gradient by its running RMS, so an element whose gradient is ~0
# moves by about +-lr per step whatever its size: where rounding flips such a gradient's
# sign in one framework, that element's update differs by ~2 lr, however exact the rest.
# So the relative L2 leaves out each tensor's largest TRAIN_UPDATE_FLIP_FRACTION of
# element differences (at least one element), and those elements are held instead to
# TRAIN_UPDATE_FLIP_LR x lr (correct: 1.99 lr in A and B, one flipped element; smallest
# defect above it: Adam eps inside the root, 13.8 lr (A) / 15.3 lr (B)).
# Per tensor, trimmed: correct worst 8.7e-4 (A; feat_out_1.conv2.conv_Decoder's kernel),
# 4.7e-4 (B); earlier runs without the rate decay: 8.3e-4 and 8e-5 on two EPYCs, the CPU's
# kernels move it ~4x. Smallest defect naming this check: Adam eps 1e-7 instead of 1e-8,
# 5.8e-3 (A, feat_out_2.fusion.fc_2's kernel, whose gradients are small enough for eps to
# matter) / 4.6e-2 (B). 2.5e-3: 2.9x over the worst correct figure, 2.3x under the defect.
TRAIN_UPDATE_RTOL = 2.5e-3
# All tensors' updates together (every tensor with more than one element), trimmed the
# same way: rounding noise averages out here, a defect of the whole step does not.
# Correct: 2.2e-4 (A), 2.0e-4 (B). Smallest defect naming this check: Adam beta2 0.99,
# 2.6e-3 (A) / 4.2e-3 (B); learning rate 1% high 1.0e-2 / 9.8e-3. 1.5e-3: 6.8x over correct.
TRAIN_UPDATE_TOTAL_RTOL = 1.5e-3
# Adam's first and second moments after the run, per tensor (the larger of the two
# relative L2 errors). Adam's update is blind to a constant scale of one tensor's
# gradients (it divides them by their own RMS; measured: doubling feat1's kernel
# gradients moves no update figure at all), its moments are not. Tensors with more than
# one element: correct worst 1.75e-3 (A), 6.0e-4 (B); smallest defect naming this check:
# Adam beta2 0.9999, 0.90 (A and B) (feat1's kernel gradients doubled: 3.0; lr 1% high
# 2.1e-2 / 2.0e-2). 1e-2: 5.7x over correct. Scalars (PReLU slopes: cancelling sums of
# x * dL/dy) carry more rounding: correct worst 3.3e-2 (A), 1.3e-2 (B); 0.3, 9x over it
# (beta2 0.9999 gives 0.90 there, the schedule one step early 0.5-0.9).
TRAIN_MOMENTS_RTOL = 1e-2
TRAIN_SCALAR_MOMENTS_RTOL = 0.3
TRAIN_UPDATE_FLIP_FRACTION = 1e-3
TRAIN_UPDATE_FLIP_LR = 4.0   # two steps' worth of sign flips; seen 1.99
# Scalar tensors (the PReLU slopes): 20 steps move a slope of ~0.25 by only ~200 float32
# ulps, so one ulp apart is 5e-3 of its update (seen: 4.9e-3): an update limit cannot be
# met there by float32 itself. Each scalar must instead end within 32 float32 ulps
# (relative 32 * 2^-23 = 3.8e-6) of torch's. Correct: 9.2e-7 (A), 1.4e-6 (B); earlier
# runs 1.2e-7 and 1.11e-6 (9 ulps) on two EPYCs. Smallest defect above it: Adam beta2
# 0.99, 8.8e-6 (A) / 9.5e-6 (B); lr 1% high 2.0e-5 / 2.4e-5.
TRAIN_SCALAR_FINAL_RTOL = 32 * 2.0 ** -23
# Data parallel: the same global batch on 1 and on N devices; only the order of the
# float32 reductions across devices differs.
DATA_PARALLEL_LOSS_RTOL = 1e-5


# Quality metrics of two backends' PNGs (dln table2's rows against a hand computation with
# another kernel or memory layout, e.g. torch channels_last vs NCHW, JAX vs torch): the
# images obey PNG_MAX_FRACTION_OFF_BY_ONE, and what that rule allows the metrics to move is
# taken from the images themselves. PSNR: the exact worst case below (on another CPU one
# flipped value moved table2's PSNR by 2.5e-5 dB; the bound on the 24x36 test images is
# <= 5.4e-4 dB, where a fixed 0.05 dB limit was ~100x looser). SSIM: a one-level change of one
# value moves each of the <= 49 windows holding it by at most ~0.04 (|dS/dmu| <= sqrt(2/C1)
# over 49 values, |dS/dx| <= 2 * (48/7) / 48 / sqrt(2 C2)), i.e. 49 * 0.04 / (3 * windows)
# per flipped value: ~1e-3 per value on 24x36, no tighter than a plain limit, so table2's
# test holds the images to the rule and each row's metrics to the protocol applied to its
# own images, exactly (same numpy code on the same arrays).
def psnr_shift_bound_db(prediction_uint8, reference_uint8,
                        max_fraction: float = PNG_MAX_FRACTION_OFF_BY_ONE) -> float:
    """Largest change of PSNR (data range 255) caused by moving at most `max_fraction` of
    the prediction's values by one level: moving a value with error e away from the
    reference adds 2|e| + 1 to the squared-error sum, towards it removes 2|e| - 1."""
    err = np.abs(np.asarray(prediction_uint8, np.float64)
                 - np.asarray(reference_uint8, np.float64)).ravel()
    flips = int(np.floor(max_fraction * err.size))
    sse = float(np.sum(err ** 2))
    if flips == 0:
        return 0.0
    largest = np.sort(err)[::-1][:flips]
    worst_up = float(np.sum(2 * largest + 1))
    worst_down = float(np.sum(np.maximum(2 * largest - 1, 0)))
    up = 10 * np.log10((sse + worst_up) / sse) if sse else float("inf")
    down = 10 * np.log10(sse / (sse - worst_down)) if sse > worst_down else float("inf")
    return float(max(up, down))
# Gradients of any model's loss (default: the sum of its outputs) per parameter, float32,
# by the forward pass rule (relative to max(1, max|torch gradient|)): the backward pass
# sums over batch and pixels in a different order in each framework. Measured on the
# tiny encoder-decoder example (parity/examples/tiny_unet, width 8, 2 x 3 x 16 x 16): see
# worst 4.1e-6 (up.bias) on the 2-core dev machine; held to the forward tolerance.
MODEL_GRAD_TOL = FORWARD_ATOL
# Flax NNX port vs the Linen port (port/nnx_model.py vs port/model.py), same weights and
# input: the same lax operations in the same order (convolutions, dense products, the
# 1x1 dot rewrite), so XLA compiles the same program. Measured on the 2-core AMD EPYC:
# forward bit-equal (max|diff| 0.0) at dim 16 (both variants' switches, 2 x 37 x 29 and
# 1 x 19 x 27) and at dim 64 (1 x 21 x 33); the NNX trainer (nnx.Optimizer + optax) vs
# the Linen trainer, 20 steps at dim 16 (batch 2 x 32^2): all 20 losses and all 125 final
# tensors bit-equal. Held to 1e-6 relative to scale (~8 float32 ulps of an O(1) value;
# losses relative to themselves), not to 0, only so that a future XLA fusing the two
# traces differently cannot fail it; a real porting difference (a flipped kernel, another
# padding, a wrong Adam term) is orders of magnitude larger.
NNX_VS_LINEN_ATOL = 1e-6


def fails_at_its_own_scale(comparison: Comparison) -> bool:
    """A forward row that passes the absolute rule only because all its values are below
    SCALE_FLOOR, while it differs by more than SMALL_SCALE_RTOL of them (see above)."""
    c = comparison
    return bool(c.shape_ok and not c.empty and c.passed and c.scale < SCALE_FLOOR and
                c.max_abs > SMALL_SCALE_NOISE and c.max_abs > SMALL_SCALE_RTOL * c.scale)
