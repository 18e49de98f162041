"""Metrics: pure functions on tensors, one value per image over the last three (C, H, W) dimensions; conventions
(crop of the stereo boundary, data range, SSIM covariance) are explicit arguments. The evaluation protocols that
combine them live in evaluation.py."""
from __future__ import annotations

import torch
from torch import Tensor

# Columns removed from the left of the left view for the "Left" scores: they have no match in the right view
# (iPASSR evaluation.m `stereo_boundary`, official test_sr.py `[:, :, :, 64:]`), the same at x2 and x4.
STEREO_BOUNDARY = 64
# SSIM of iPASSR's evaluation.m: 7x7 averaging window ('valid' filtering), K = (0.01, 0.03), L = 1.
SSIM_WINDOW = 7
SSIM_K = (0.01, 0.03)
# KITTI D1 outlier: error > 3 px and > 5 % of the true disparity.
D1_PIXELS, D1_RELATIVE = 3.0, 0.05


def quantize(img: Tensor) -> Tensor:
    """What an 8-bit PNG stores: clamp to [0, 1], scale to 255, round to nearest (not truncate), back to [0, 1]."""
    return torch.floor(img.clamp(0, 1) * 255 + 0.5) / 255  # half up, as data.readers.write_image


def psnr(sr: Tensor, hr: Tensor, data_range: float = 1.0, crop_left: int = 0) -> Tensor:
    """PSNR in dB on all channels, (..., C, H, W) -> (...). 10 log10(range^2 / MSE), MSE over C*H*W in float64.

    crop_left: columns removed from the left first (STEREO_BOUNDARY for the official "Left" score). No Y channel,
    no other border crop. Identical images give inf.
    """
    if sr.shape != hr.shape:
        raise ValueError(f'psnr: shapes differ, {tuple(sr.shape)} vs {tuple(hr.shape)}')
    diff = sr[..., crop_left:].double() - hr[..., crop_left:].double()
    mse = diff.pow(2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(data_range ** 2 / mse)


def ssim(sr: Tensor, hr: Tensor, data_range: float = 1.0, crop_left: int = 0, window: int = SSIM_WINDOW,
         sample_covariance: bool = False) -> Tensor:
    """SSIM with the convention of iPASSR's evaluation.m, (..., C, H, W) -> (...).

    Per channel: box (averaging) window `window` x `window`, statistics over 'valid' positions only (no padding),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, mean of the SSIM map; then the mean over channels. Computed in float64.
    `sample_covariance`: (co)variances with the n/(n-1) correction, n = window^2, as scikit-image's
    `structural_similarity` by default (NAFSSR's metric); with it, this equals skimage's value with
    `win_size=window, channel_axis`, whose mean also leaves out the (window-1)/2 border.
    """
    if sr.shape != hr.shape:
        raise ValueError(f'ssim: shapes differ, {tuple(sr.shape)} vs {tuple(hr.shape)}')
    x = sr[..., crop_left:].double()
    y = hr[..., crop_left:].double()
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    if h < window or w < window:
        raise ValueError(f'ssim needs images of at least {window}x{window}, got {h}x{w}')
    x, y = x.reshape(-1, c, h, w), y.reshape(-1, c, h, w)

    def local_mean(t):
        return torch.nn.functional.avg_pool2d(t, window, stride=1)

    c1, c2 = (SSIM_K[0] * data_range) ** 2, (SSIM_K[1] * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    norm = window * window / (window * window - 1) if sample_covariance else 1.0
    var_x = norm * (local_mean(x * x) - mu_x ** 2)
    var_y = norm * (local_mean(y * y) - mu_y ** 2)
    cov = norm * (local_mean(x * y) - mu_x * mu_y)
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(lead)


def _masked_errors(pred: Tensor, gt: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    if not (pred.shape == gt.shape == mask.shape):
        raise ValueError(f'disparity metrics: shapes differ, pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, '
                         f'mask {tuple(mask.shape)}')
    mask = mask.bool()
    if not mask.any():
        raise ValueError('disparity metrics: the mask selects no pixel')
    return (pred[mask].double() - gt[mask].double()).abs(), gt[mask].double()


def epe(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    """End-point error: mean |pred - gt| in pixels over the pixels where `mask` is true."""
    error, _ = _masked_errors(pred, gt, mask)
    return error.mean().item()


def rmse(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    """Root mean squared error in pixels over the pixels where `mask` is true (computed in float64)."""
    if not (pred.shape == gt.shape == mask.shape):
        raise ValueError(f'rmse: shapes differ, pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, '
                         f'mask {tuple(mask.shape)}')
    mask = mask.bool()
    if not mask.any():
        raise ValueError('rmse: the mask selects no pixel')
    return (pred[mask].double() - gt[mask].double()).pow(2).mean().sqrt().item()


def bad_pixel_rate(pred: Tensor, gt: Tensor, mask: Tensor, threshold: float) -> float:
    """Fraction of masked pixels whose error exceeds `threshold` pixels (e.g. >1 px, >3 px)."""
    error, _ = _masked_errors(pred, gt, mask)
    return (error > threshold).double().mean().item()


def d1_error(pred: Tensor, gt: Tensor, mask: Tensor, pixels: float = D1_PIXELS,
             relative: float = D1_RELATIVE) -> float:
    """KITTI D1: fraction of masked pixels with error > 3 px and > 5 % of the true disparity (`pixels`, `relative`)."""
    error, truth = _masked_errors(pred, gt, mask)
    return ((error > pixels) & (error > relative * truth.abs())).double().mean().item()
