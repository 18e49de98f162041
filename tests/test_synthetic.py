"""The synthetic stereo scenes the demo checkpoint is trained on: views consistent with their disparity, patches of
the iPASSR size and LR made by MATLAB bicubic, reproducible from (seed, epoch, index), never the Motorcycle pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data import synthetic
from data.patches import PATCH_HEIGHT, PATCH_WIDTH
from data.synthetic import SyntheticStereo, render_pair
from utils import imresize


def matching_fraction(left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> float:
    """Fraction of left pixels (whose match lies inside the right view) with left(y, x) == right(y, x - d)."""
    h, w = disparity.shape
    yy, xx = np.mgrid[0:h, 0:w]
    target = xx - disparity
    inside = target >= 0
    same = (left[yy[inside], xx[inside]] == right[yy[inside], target[inside]]).all(axis=-1)
    return same.mean()


@pytest.mark.parametrize('seed', range(6))
def test_views_agree_where_the_disparity_says(seed):
    left, right, disparity = render_pair(np.random.default_rng(seed), 152, 392)
    assert left.shape == right.shape == (152, 392, 3) and left.dtype == np.uint8
    assert disparity.min() >= 1 and disparity.max() <= synthetic.MAX_BACKGROUND_DISPARITY + synthetic.MAX_EXTRA_DISPARITY
    # exact where the point is visible in both views; occlusions at object borders take the rest
    assert matching_fraction(left, right, disparity) > 0.85
    # a control: the same test with every disparity off by 3 px fails on textured photographs
    assert matching_fraction(left, right, disparity + 3) < 0.5


def test_patches_are_reproducible_and_sized_like_ipassr():
    data = SyntheticStereo(scale=4, length=3, augment=False, seed=5)
    hr_left, hr_right, lr_left, lr_right = data[1]
    assert lr_left.shape == lr_right.shape == (3, PATCH_HEIGHT, PATCH_WIDTH)
    assert hr_left.shape == hr_right.shape == (3, PATCH_HEIGHT * 4, PATCH_WIDTH * 4)
    assert all(t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1 for t in (hr_left, lr_left))
    assert all(torch.equal(a, b) for a, b in zip(data[1], SyntheticStereo(4, 3, False, seed=5)[1]))
    data.set_epoch(1)  # a new epoch renders new scenes
    assert not torch.equal(data[1][0], hr_left)
    # the LR view is the MATLAB-bicubic downscaling of the HR scene (computed over a margin, so away from the
    # border it equals downscaling the HR patch alone)
    hr = (hr_left.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lr = torch.from_numpy(imresize(hr, 0.25).transpose(2, 0, 1)).float() / 255
    inner = np.s_[:, 3:-3, 3:-3]
    assert (lr[inner] - lr_left[inner]).abs().max() <= 1 / 255 + 1e-6


def test_motorcycle_is_never_a_source():
    assert not any('motorcycle' in name for name in synthetic.SOURCES)
