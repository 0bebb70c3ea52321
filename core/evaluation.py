"""Reference evaluation metrics (numpy / scikit-image, float64): the authors' protocol.

This is the production evaluation protocol: `dln metrics`, `dln table2`, held-out
PSNR during training and `dln demo` all measure with these functions (and the one
PSNR helper, `psnr_uint8`). port/metrics_dmpix.py is its dm-pix twin in JAX, kept
only to compare the two libraries (`dln metrics --compare`, Table 1); nothing
reports its figures as results.

The authors' evaluation: the enhanced image is quantised to uint8 (x255, clip,
truncate), then compared with the uint8 ground truth by
- PSNR with data_range 255 (per image; a folder's figure is the mean of per-image values);
- SSIM with scikit-image's `structural_similarity` at its defaults (uniform 7 x 7
  window, sample covariance, K1 0.01, K2 0.03), data range 255, one SSIM per channel
  averaged (their `multichannel=True` is today's `channel_axis=-1`);
- theta (the report's angular error): mean per-pixel angle in degrees between the
  estimate's and the ground truth's colour vectors after the linear RGB -> XYZ
  transform (OpenCV's matrix applied to the gamma-encoded RGB values); pixels where
  either vector is zero count as 0 and stay in the mean.

Every function takes the range of the data explicitly: the classic pitfalls are
floats in [-1, 1] (range 2), floats on the 0-255 scale (range 255) and uint8 (range
255, and never subtract uint8 arrays: they wrap around). Inputs are converted to
float64 before any arithmetic.

`evaluate_pair` computes a large pair (more than WHOLE_PAIR_PIXELS) in strips of rows,
so that its memory is the two uint8 images, a float64 angle per pixel and one strip's
float64 work, whatever the size (a 64-megapixel pair took 11.2 GB whole): PSNR from the
exact integer sum of squared differences (bit for bit the whole-image figure), theta
from the same per-pixel angles averaged by the same call (bit for bit), SSIM from each
strip's SSIM map with 3 rows of context on each side (its 7 x 7 window's radius), so
that every kept value is the whole-image map's up to the rounding of scipy's running
window sums; the mean of those values agrees with the whole-image SSIM to ~1e-15.
"""

from __future__ import annotations

import numpy as np

# OpenCV's RGB -> XYZ matrix (rows X, Y, Z), the one the report's theta uses.
RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
# Wang et al. (2004) settings: Gaussian window, sigma 1.5 (11 x 11 with scikit-image's
# truncate 3.5), population covariance.
WANG_SIGMA = 1.5
AUTHORS_DATA_RANGE = 255.0


def _pair_float64(pred, gt, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred)
    b = np.asarray(gt)
    if a.shape != b.shape:
        raise ValueError(f"{what}: prediction {a.shape} and ground truth {b.shape} differ in shape")
    return a.astype(np.float64), b.astype(np.float64)


def _check_range(data_range) -> float:
    if data_range is None or not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    return float(data_range)


def _check_rgb(a: np.ndarray, what: str) -> None:
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{what} needs RGB images (H, W, 3), got shape {a.shape}")


def psnr(pred, gt, data_range) -> float:
    """10 log10(data_range^2 / MSE) in dB (inf for identical images)."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pair_float64(pred, gt, "psnr")
    return float(peak_signal_noise_ratio(b, a, data_range=_check_range(data_range)))


def psnr_uint8(pred_uint8, gt_uint8) -> float:
    """PSNR of two uint8 images at data range 255 (the authors' figure); inf for identical
    images (checked first, so no divide-by-zero warning)."""
    if np.array_equal(np.asarray(pred_uint8), np.asarray(gt_uint8)):
        return float("inf")
    return psnr(pred_uint8, gt_uint8, AUTHORS_DATA_RANGE)


def ssim_skimage(pred, gt, data_range) -> float:
    """The authors' SSIM: scikit-image defaults (uniform 7 x 7, sample covariance),
    computed per channel (last axis) and averaged."""
    from skimage.metrics import structural_similarity

    a, b = _pair_float64(pred, gt, "ssim_skimage")
    _check_rgb(a, "ssim_skimage")
    return float(structural_similarity(b, a, data_range=_check_range(data_range),
                                       channel_axis=-1))


def ssim_gaussian(pred, gt, data_range) -> float:
    """SSIM at Wang et al.'s settings: Gaussian sigma 1.5 (11 x 11), population covariance,
    per channel and averaged; the same settings as dm_pix.ssim's defaults."""
    from skimage.metrics import structural_similarity

    a, b = _pair_float64(pred, gt, "ssim_gaussian")
    _check_rgb(a, "ssim_gaussian")
    return float(structural_similarity(b, a, data_range=_check_range(data_range),
                                       channel_axis=-1, gaussian_weights=True,
                                       sigma=WANG_SIGMA, use_sample_covariance=False))


def angle_map(pred, gt) -> np.ndarray:
    """Per-pixel angle in degrees between the XYZ vectors (0 where either is zero).

    atan2(|u x v|, u . v) is the angle acos(u . v / (|u| |v|)) without acos's loss of
    accuracy for nearly parallel vectors (where most pixels of a good estimate lie)."""
    a, b = _pair_float64(pred, gt, "theta")
    _check_rgb(a, "theta")
    u = a @ RGB_TO_XYZ.T
    v = b @ RGB_TO_XYZ.T
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    dot = np.sum(u * v, axis=-1)
    angle = np.degrees(np.arctan2(cross, dot))
    zero = ~np.any(u != 0, axis=-1) | ~np.any(v != 0, axis=-1)
    return np.where(zero, 0.0, angle)


def theta(pred, gt) -> float:
    """Mean per-pixel colour angle (degrees) in XYZ; RGB input on any common scale."""
    return float(np.mean(angle_map(pred, gt)))


WHOLE_PAIR_PIXELS = 4_000_000   # larger pairs are evaluated in strips (module docstring)
STRIP_PIXELS = 1_000_000        # pixels per strip: ~0.2 GB of float64 work
SSIM_WINDOW = 7                 # scikit-image's default window side


def evaluate_pair(pred_uint8, gt_uint8, strip_pixels: int | None = None) -> dict[str, float]:
    """The authors' evaluation of one uint8 RGB pair: PSNR and SSIM at data range 255
    (scikit-image defaults), and theta. Pairs above WHOLE_PAIR_PIXELS (or any pair, when
    strip_pixels is given) are computed in strips of about that many pixels."""
    for name, arr in (("prediction", pred_uint8), ("ground truth", gt_uint8)):
        if np.asarray(arr).dtype != np.uint8:
            raise TypeError(f"evaluate_pair needs uint8 images; the {name} is "
                            f"{np.asarray(arr).dtype}")
    pred, gt = np.asarray(pred_uint8), np.asarray(gt_uint8)
    if strip_pixels is None and pred.shape[0] * pred.shape[1] <= WHOLE_PAIR_PIXELS:
        return dict(psnr=psnr_uint8(pred, gt),
                    ssim=ssim_skimage(pred, gt, AUTHORS_DATA_RANGE),
                    theta=theta(pred, gt))
    if pred.shape != gt.shape:
        raise ValueError(f"evaluate_pair: prediction {pred.shape} and ground truth "
                         f"{gt.shape} differ in shape")
    _check_rgb(pred, "evaluate_pair")
    rows = max(SSIM_WINDOW, (strip_pixels or STRIP_PIXELS) // max(1, pred.shape[1]))
    return dict(psnr=_psnr_in_strips(pred, gt, rows), ssim=_ssim_in_strips(pred, gt, rows),
                theta=_theta_in_strips(pred, gt, rows))


def _strips(height: int, rows: int):
    return [(y, min(y + rows, height)) for y in range(0, height, rows)]


def _psnr_in_strips(pred: np.ndarray, gt: np.ndarray, rows: int) -> float:
    """scikit-image's PSNR: its float64 mean of squared differences of integers is
    exact (every partial sum is an integer below 2^53), so the integer sum gives it."""
    total = 0
    for y0, y1 in _strips(pred.shape[0], rows):
        diff = pred[y0:y1].astype(np.int32) - gt[y0:y1].astype(np.int32)
        total += int(np.sum(diff * diff, dtype=np.int64))
    if total == 0:
        return float("inf")
    mse = np.float64(total) / np.float64(pred.size)
    return float(10 * np.log10((float(AUTHORS_DATA_RANGE) ** 2) / mse))


def _theta_in_strips(pred: np.ndarray, gt: np.ndarray, rows: int) -> float:
    angles = np.empty(pred.shape[:2], np.float64)
    for y0, y1 in _strips(pred.shape[0], rows):
        angles[y0:y1] = angle_map(pred[y0:y1], gt[y0:y1])
    return float(np.mean(angles))


def _ssim_in_strips(pred: np.ndarray, gt: np.ndarray, rows: int) -> float:
    """scikit-image's default SSIM, channel by channel: the mean of the SSIM map without
    its 3-pixel border, each strip's map computed with 3 rows of context each side."""
    from skimage.metrics import structural_similarity

    height, width = pred.shape[:2]
    pad = (SSIM_WINDOW - 1) // 2
    if min(height, width) < SSIM_WINDOW:
        return ssim_skimage(pred, gt, AUTHORS_DATA_RANGE)  # scikit-image says why
    means = []
    for channel in range(pred.shape[2]):
        total, count = 0.0, 0
        for y0, y1 in _strips(height - 2 * pad, rows):
            a0, a1 = y0, y1 + 2 * pad   # input rows: kept rows [y0 + pad, y1 + pad) + context
            _, s_map = structural_similarity(
                gt[a0:a1, :, channel].astype(np.float64),
                pred[a0:a1, :, channel].astype(np.float64),
                data_range=AUTHORS_DATA_RANGE, full=True)
            kept = s_map[pad:-pad, pad:width - pad]
            total += float(np.sum(kept, dtype=np.float64))
            count += kept.size
        means.append(total / count)
    return float(np.mean(means))
