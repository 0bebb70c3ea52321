"""The authors' training losses in plain PyTorch, NCHW.

Written from the facts, not from the authors' files: a normalised Gaussian window
(11 x 11, sigma 1.5) built as the outer product of a 1-D Gaussian, applied per
channel by a grouped conv2d with NO padding; C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L
chosen from the FIRST argument (the prediction) at every call; the SSIM map averaged
over batch, channels and positions. TV with count_h = C (H-1) W, count_w = C H (W-1),
TV = 2 (h / count_h + w / count_w) / B. Works in the dtype of its inputs (float32 or
float64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.recipe import AUTHORS_RECIPE

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
TV_WEIGHT = AUTHORS_RECIPE.tv_weight  # 0.001, the authors' (core.recipe)


def gaussian_window(channels: int, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA
                    ) -> torch.Tensor:
    """(channels, 1, size, size) normalised 2-D Gaussian for a grouped conv, float32.

    Built the plain torch way: the 1-D Gaussian's values (computed in Python floats)
    stored as float32, normalised by their float32 sum, and the 2-D window as the
    float32 outer product of that line. SSIM subtracts squared means from filtered
    squares, so on smooth images the window's sum (1 up to float32 rounding) matters
    at the 1e-6 level: port.losses builds exactly the same float32 numbers.
    """
    line = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2.0 * sigma ** 2))
                         for i in range(size)], dtype=torch.float32)
    line = line / line.sum()
    plane = line[:, None] @ line[None, :]
    return plane.expand(channels, 1, size, size).contiguous()


def authors_ssim_range(pred: torch.Tensor) -> float:
    """L = max_val - min_val read from the prediction (255 / 1, minus -1 / 0)."""
    pred = pred.detach()
    max_val = 255.0 if float(torch.max(pred)) > 128 else 1.0
    min_val = -1.0 if float(torch.min(pred)) < -0.5 else 0.0
    return max_val - min_val


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' training SSIM (scalar): mean of the valid SSIM map."""
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"ssim needs two NCHW batches of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    channels, height, width = pred.shape[1:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"ssim needs at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, "
                         f"got {height} x {width}")
    big_l = authors_ssim_range(pred)
    window = gaussian_window(channels).to(device=pred.device, dtype=pred.dtype)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, padding=0, groups=channels)

    mu_p = blur(pred)
    mu_t = blur(target)
    mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
    sigma_pp = blur(pred * pred) - mu_pp
    sigma_tt = blur(target * target) - mu_tt
    sigma_pt = blur(pred * target) - mu_pt
    c1 = (0.01 * big_l) ** 2
    c2 = (0.03 * big_l) ** 2
    ssim_map = ((2 * mu_pt + c1) * (2 * sigma_pt + c2)) / (
        (mu_pp + mu_tt + c1) * (sigma_pp + sigma_tt + c2))
    return ssim_map.mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM(pred, target), NCHW."""
    return 1.0 - ssim(pred, target)


def tv_loss(pred: torch.Tensor) -> torch.Tensor:
    """The authors' total variation of an NCHW batch."""
    if pred.dim() != 4:
        raise ValueError(f"tv_loss needs an NCHW batch, got shape {tuple(pred.shape)}")
    batch, channels, height, width = pred.shape
    count_h = channels * (height - 1) * width
    count_w = channels * height * (width - 1)
    h_tv = torch.sum((pred[:, :, 1:, :] - pred[:, :, :-1, :]) ** 2)
    w_tv = torch.sum((pred[:, :, :, 1:] - pred[:, :, :, :-1]) ** 2)
    return 2.0 * (h_tv / count_h + w_tv / count_w) / batch


def dln_loss(pred: torch.Tensor, target: torch.Tensor, tv_weight: float = TV_WEIGHT
             ) -> torch.Tensor:
    """(1 - SSIM(pred, target)) + tv_weight * TV(pred), NCHW."""
    return ssim_loss(pred, target) + tv_weight * tv_loss(pred)
