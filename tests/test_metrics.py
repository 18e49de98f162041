"""Metrics against closed forms, hand-built maps and scikit-image where the conventions coincide."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics import STEREO_BOUNDARY, bad_pixel_rate, d1_error, epe, psnr, quantize, ssim


def test_psnr_closed_form_and_crop():
    hr = torch.full((3, 40, 100), 0.5, dtype=torch.float64)
    sr = hr + 0.1                                   # MSE = 0.01 -> 20 dB
    assert psnr(sr, hr).item() == pytest.approx(20.0, abs=1e-9)
    sr = hr.clone()
    sr[:, :, :STEREO_BOUNDARY] += 0.2               # errors only in the 64 columns the "Left" score removes
    assert math.isinf(psnr(sr, hr, crop_left=STEREO_BOUNDARY).item())
    # full image: MSE = 0.04 * 64/100
    assert psnr(sr, hr).item() == pytest.approx(10 * math.log10(1 / (0.04 * 0.64)), abs=1e-9)


def test_psnr_per_image_and_against_skimage():
    rng = np.random.default_rng(0)
    hr = rng.random((2, 3, 30, 50))
    sr = np.clip(hr + rng.normal(0, 0.05, hr.shape), 0, 1)
    ours = psnr(torch.tensor(sr), torch.tensor(hr))
    assert ours.shape == (2,)
    for i in range(2):
        assert ours[i].item() == pytest.approx(peak_signal_noise_ratio(hr[i], sr[i], data_range=1), abs=1e-9)


def test_ssim_matches_skimage_box_window_valid_region():
    """evaluation.m's SSIM (7x7 box window, valid region, population statistics) is skimage's SSIM with
    gaussian_weights=False, use_sample_covariance=False, win_size=7 (skimage crops the half-window border)."""
    rng = np.random.default_rng(1)
    hr = rng.random((3, 40, 60))
    sr = np.clip(hr + rng.normal(0, 0.1, hr.shape), 0, 1)
    expected = structural_similarity(hr, sr, win_size=7, gaussian_weights=False, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=0)
    assert ssim(torch.tensor(sr), torch.tensor(hr)).item() == pytest.approx(expected, abs=1e-10)
    cropped = structural_similarity(hr[:, :, 5:], sr[:, :, 5:], win_size=7, gaussian_weights=False,
                                    use_sample_covariance=False, data_range=1.0, channel_axis=0)
    assert ssim(torch.tensor(sr), torch.tensor(hr), crop_left=5).item() == pytest.approx(cropped, abs=1e-10)
    assert ssim(torch.tensor(hr), torch.tensor(hr)).item() == pytest.approx(1.0, abs=1e-12)


def test_quantize_rounds():
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.2, -0.1, 100.6 / 255], dtype=torch.float64)
    assert (quantize(x) * 255).round().tolist() == [0, 1, 0, 255, 0, 101]


def test_disparity_metrics_on_hand_built_maps():
    gt = torch.tensor([[10.0, 20.0, 40.0, 0.0],
                       [100.0, 5.0, 8.0, 50.0]])
    pred = torch.tensor([[10.5, 22.0, 44.0, 7.0],
                         [104.0, 5.0, 12.0, 51.0]])
    mask = gt > 0                                   # 7 valid pixels
    errors = [0.5, 2.0, 4.0, 4.0, 0.0, 4.0, 1.0]
    assert epe(pred, gt, mask) == pytest.approx(sum(errors) / 7)
    assert bad_pixel_rate(pred, gt, mask, 1.0) == pytest.approx(4 / 7)     # > 1 px (1.0 itself is not bad)
    assert bad_pixel_rate(pred, gt, mask, 3.0) == pytest.approx(3 / 7)
    # D1: > 3 px AND > 5 % of gt: 40->4 (10 %) yes, 100->4 (4 %) no, 8->4 yes, 50->1 no
    assert d1_error(pred, gt, mask) == pytest.approx(2 / 7)
    assert epe(gt, gt, mask) == 0.0
    with pytest.raises(ValueError, match='selects no pixel'):
        epe(pred, gt, torch.zeros_like(mask))
    with pytest.raises(ValueError, match='shapes differ'):
        epe(pred, gt[:, :3], mask)
