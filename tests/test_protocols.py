"""Protocol rows of evaluation.py scored against BasicSR's calculate_psnr, rewritten here from its definition
(basicsr/metrics/psnr_ssim.py: crop `crop_border` pixels at every side of the uint8 HWC image, float64 MSE,
20 log10(255 / sqrt(MSE))), then averaged over the two views as SwinFIR's swinfirssr_model.py 105-121 does."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from evaluation import DISPARITY_PROTOCOLS, MAP_METRICS, map_scores, protocol_entry, scene_scores


def basicsr_psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """calculate_psnr on uint8 (H, W, 3) arrays, RGB, crop_border pixels removed at every side."""
    if crop_border:
        sr, hr = sr[crop_border:-crop_border, crop_border:-crop_border], hr[crop_border:-crop_border,
                                                                            crop_border:-crop_border]
    mse = np.mean((sr.astype(np.float64) - hr.astype(np.float64)) ** 2)
    return float(20 * np.log10(255.0 / np.sqrt(mse)))


def to_unit(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float() / 255


@pytest.mark.parametrize('scale', [2, 4])
def test_swinfir_protocol_crops_exactly_scale_pixels(scale):
    rng = np.random.default_rng(scale)
    h, w, error = 40, 56, 3
    hr = [rng.integers(10, 240, (h, w, 3), dtype=np.uint8) for _ in range(2)]
    sr = [x.copy() for x in hr]
    sr[0][scale:-scale, scale:-scale] += error                 # inside the crop: a known error of 3 levels
    sr[1][scale:-scale, scale:-scale] -= 2 * error
    for view in sr:                                            # the cropped border: garbage
        view[:scale], view[-scale:], view[:, :scale], view[:, -scale:] = 0, 255, 255, 0
    scores = scene_scores(to_unit(sr[0]), to_unit(hr[0]), to_unit(sr[1]), to_unit(hr[1]), protocol='swinfir',
                          scale=scale)
    expected = [20 * math.log10(255 / error), 20 * math.log10(255 / (2 * error))]   # closed form of a constant error
    assert scores['psnr_l'] == pytest.approx(expected[0], abs=1e-4)
    assert scores['psnr_r'] == pytest.approx(expected[1], abs=1e-4)
    assert scores['psnr_avg'] == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert scores['psnr_avg'] == pytest.approx((basicsr_psnr(sr[0], hr[0], scale) + basicsr_psnr(sr[1], hr[1], scale))
                                               / 2, abs=1e-4)
    # one pixel more would see the garbage: a crop of scale - 1 gives a far lower PSNR
    assert basicsr_psnr(sr[0], hr[0], scale - 1) < expected[0] - 10
    entry = protocol_entry('swinfir')
    assert entry.rounded and entry.channel == 'rgb'                # on uint8 RGB, as calculate_psnr
    assert entry.describe(scale).count(f'without {scale} border pixels') == 1


# ---- disparity scorings: DISPARITY_PROTOCOLS entries drive test_disp.py's masks, clamps, rates and header lines

def test_stereo_disparity_header_is_the_published_protocol_line():
    assert DISPARITY_PROTOCOLS['stereo'].describe(4) == (
        'left-view EPE in HR px over 0 < gt < 192 (all = dispocc0 / PFM, noc = dispnoc0 / PFM & mask0nocc), '
        'disparities clamped to [0, 192]; >1px, >3px, D1 (>3 px and >5 %) of the final HR disparity')
    assert DISPARITY_PROTOCOLS['map_sr'].describe(2).startswith('each ground-truth map cropped to a multiple of 2, '
                                                                'downsampled x2 mask-aware')
    assert MAP_METRICS == ('rmse', 'epe', 'bad1', 'bad3', 'd1')


def test_stereo_valid_mask_and_clamp_come_from_the_entry():
    import test_disp
    gt = torch.tensor([float('nan'), float('inf'), -1.0, 0.0, 0.5, 100.0, 191.9, 192.0, 300.0])
    expected = torch.tensor([False, False, False, False, True, True, True, False, False])
    assert torch.equal(test_disp.valid_mask(gt), expected)
    narrow = dataclasses.replace(test_disp.STEREO, max_disparity=100.0, clamp=(0.0, 100.0))
    assert torch.equal(narrow.valid(gt), expected & (gt < 100))
    assert narrow.clamped(torch.tensor([-5.0, 50.0, 250.0])).tolist() == [0.0, 50.0, 100.0]
    assert torch.equal(DISPARITY_PROTOCOLS['map_sr'].valid(gt), torch.isfinite(gt))   # no range for map SR


def test_d1_and_error_rates_follow_the_entry():
    import test_disp
    gt = torch.tensor([10.0, 10.0, 100.0, 100.0, 100.0])
    pred = gt + torch.tensor([0.5, 2.0, 3.5, 4.0, 6.0])   # D1: > 3 px and > 5 % (100 -> 5 px): only the last
    mask = torch.ones_like(gt, dtype=torch.bool)
    scores = test_disp.scene_metrics({'hr_r2': pred, 'hr_r1': pred, 'lr_r2': pred, 'lr_r1': pred}, gt, gt)
    assert [scores[f'{k}_all'] for k in ('bad1', 'bad3', 'd1')] == pytest.approx([0.8, 0.6, 0.2])
    assert scores['d1_noc'] == scores['d1_all']
    assert map_scores(pred, gt, mask)['d1'] == pytest.approx(0.2)
    looser = dataclasses.replace(test_disp.STEREO, bad_thresholds=(2.0,), d1_pixels=1.0, d1_relative=0.03)
    rates = looser.rates(pred, gt, mask)   # > 1 px and > 3 %: 2 px of 10, and 3.5, 4, 6 px of 100
    assert rates == pytest.approx({'bad2': 0.6, 'd1': 0.8})
