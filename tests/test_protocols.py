"""Protocol rows of evaluation.py scored against BasicSR's calculate_psnr, rewritten here from its definition
(basicsr/metrics/psnr_ssim.py: crop `crop_border` pixels at every side of the uint8 HWC image, float64 MSE,
20 log10(255 / sqrt(MSE))), then averaged over the two views as SwinFIR's swinfirssr_model.py 105-121 does."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation import protocol_entry, scene_scores


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

