"""The synthetic stereo scenes the demo checkpoint is trained on: views consistent with their disparity (slanted and
curved surfaces, occlusions), disparities that cover real pairs, patches of the iPASSR size with LR made by MATLAB
bicubic, reproducible from (seed, epoch, index), disparity maps that follow the augmentation, never Motorcycle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from data import synthetic
from data.patches import PATCH_HEIGHT, PATCH_WIDTH, augment
from data.synthetic import SyntheticStereo, random_scene, render_pair, render_view
from models.imresize import imresize

HEIGHT, WIDTH = 152, 392      # an x4 training render: (30 + 2 x 4) x (90 + 2 x 4) LR pixels


def sample_right(right: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """right(y, x - d(y, x)) for every left pixel, cubic spline interpolation (float)."""
    y, x = np.mgrid[0:right.shape[0], 0:right.shape[1]].astype(np.float64)
    coords = [y, np.clip(x - disparity, 0, right.shape[1] - 1)]
    if right.ndim == 2:
        return ndimage.map_coordinates(right.astype(np.float64), coords, order=1)
    return np.stack([ndimage.map_coordinates(right[..., c].astype(np.float64), coords, order=3)
                     for c in range(right.shape[-1])], axis=-1)


def visible_in_both(disparity_left, surface_left, surface_right) -> np.ndarray:
    """Left pixels whose point the right view shows: inside it, and the same surface wins there."""
    h, w = disparity_left.shape
    target = np.arange(w)[None] - disparity_left
    column = np.clip(np.round(target), 0, w - 1).astype(int)
    return (target >= 0) & (surface_right[np.arange(h)[:, None], column] == surface_left)


@pytest.mark.parametrize('seed', range(4))
def test_left_equals_right_at_x_minus_d_wherever_visible_in_both(seed):
    surfaces = random_scene(np.random.default_rng([seed, 1]), HEIGHT, WIDTH, 4)
    left, disparity_left, surface_left = render_view(surfaces, HEIGHT, WIDTH, 'left')
    right, disparity_right, surface_right = render_view(surfaces, HEIGHT, WIDTH, 'right')
    both = visible_in_both(disparity_left, surface_left, surface_right)
    assert both.mean() > 0.4
    # the geometry: the right view's disparity at x - d is d (exact up to interpolating between right pixels)
    error = np.abs(sample_right(disparity_right, disparity_left) - disparity_left)[both]
    assert np.median(error) < 0.01 and error.mean() < 0.3
    # the pixels: the right view resampled at x - d reproduces the left view (grey levels, 0-255)
    error = np.abs(sample_right(right, disparity_left) - left).mean(-1)[both]
    assert np.median(error) < 0.5
    # a control: every disparity off by 3 px gives errors the test would catch (textured scenes)
    shifted = np.abs(sample_right(right, disparity_left + 3) - left).mean(-1)[both]
    if np.median(np.abs(np.diff(left, axis=1))) > 1:
        assert np.median(shifted) > 4 * max(np.median(error), 0.25)


def test_surfaces_are_slanted_and_curved_with_occlusions():
    kinds = {'fronto-parallel': 0, 'slanted': 0, 'curved': 0}
    occluded = []
    for seed in range(30):
        surfaces = random_scene(np.random.default_rng([seed, 2]), HEIGHT, WIDTH, 4)
        for s in surfaces:
            kinds['curved' if s.q[0] or s.q[2] else 'slanted' if s.b or s.c else 'fronto-parallel'] += 1
        _, d, surface_left = render_view(surfaces, HEIGHT, WIDTH, 'left')
        _, _, surface_right = render_view(surfaces, HEIGHT, WIDTH, 'right')
        inside = np.arange(WIDTH)[None] - d >= 0
        occluded.append((inside & ~visible_in_both(d, surface_left, surface_right)).mean())
        # every surface keeps |dd/dx| < 1, so each row is seen in the same order by both views
        for s in surfaces:
            x = np.linspace(-10, WIDTH + 10, 200)
            for row in (0, HEIGHT - 1):
                assert np.all(np.diff(x - s.disparity(x, np.full_like(x, row))) > 0)
    assert min(kinds.values()) >= 10, kinds
    assert np.mean(occluded) > 0.02      # depth edges hide points from the right view


def test_disparities_cover_real_pairs_at_the_lr_patch_size():
    """Disparities in LR pixels at x4: all in [0.25, 40]; Motorcycle's range (about 2-15 LR pixels) well covered."""
    values = []
    for seed in range(40):
        _, _, disparity, _ = render_pair(np.random.default_rng([seed, 3]), HEIGHT, WIDTH, 4)
        values.append(disparity.ravel() / 4)
    values = np.concatenate(values)
    assert values.min() >= synthetic.FAR_DISPARITY[0] - 1e-6 and values.max() <= synthetic.MAX_DISPARITY_LR + 1e-6
    assert 0.4 < np.mean((values >= 2) & (values <= 15)) < 0.95
    assert np.mean(values > 15) > 0.05 and np.mean(values < 2) > 0.02
    # the range is set in LR pixels: at x2 the HR disparities are half as large (for frames of the same LR size)
    d2 = np.concatenate([render_pair(np.random.default_rng([seed, 3]), HEIGHT // 2, WIDTH // 2, 2)[2].ravel() / 2
                         for seed in range(20)])
    assert d2.max() <= synthetic.MAX_DISPARITY_LR + 1e-4 and 0.4 < np.mean((d2 >= 2) & (d2 <= 15)) < 0.95


def test_views_differ_photometrically_like_two_cameras():
    ratios = []
    for seed in range(10):
        rng = np.random.default_rng([seed, 4])
        surfaces = random_scene(rng, HEIGHT, WIDTH, 4)
        left, d, s_left = render_view(surfaces, HEIGHT, WIDTH, 'left')
        right, _, s_right = render_view(surfaces, HEIGHT, WIDTH, 'right')
        left8, right8 = synthetic.photometric(rng, left, right)
        both = visible_in_both(d, s_left, s_right) & (left.mean(-1) > 40) & (left.mean(-1) < 200)
        ratios.append(np.median(sample_right(right8.astype(float), d).mean(-1)[both] / left8.mean(-1)[both]))
    assert 0.85 < min(ratios) and max(ratios) < 1.15 and np.ptp(ratios) > 0.02


def test_patches_carry_exact_disparity_and_are_reproducible():
    data = SyntheticStereo(scale=4, length=3, augment=False, seed=5)
    assert data.has_disparity
    hr_left, hr_right, lr_left, lr_right, d_left, d_right = data[1]
    assert lr_left.shape == lr_right.shape == (3, PATCH_HEIGHT, PATCH_WIDTH)
    assert hr_left.shape == hr_right.shape == (3, PATCH_HEIGHT * 4, PATCH_WIDTH * 4)
    assert d_left.shape == d_right.shape == (1, PATCH_HEIGHT * 4, PATCH_WIDTH * 4) and d_left.dtype == torch.float32
    assert torch.isfinite(d_left).all() and d_left.min() >= 1 - 1e-4
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


@pytest.mark.parametrize('hflip,vflip', [(True, False), (False, True), (True, True)])
def test_disparity_follows_the_flips(hflip, vflip):
    """After a flip (a horizontal one swaps the views) the new left view still equals the new right view at
    x - d_left(x), with positive disparities: the maps are mirrored and swapped with the views, never negated."""
    hr_left, hr_right, _, _, d_left, d_right = synthetic.synthetic_patch(np.random.default_rng(1), 4)
    before = np.abs(sample_right(hr_right.astype(float), d_left) - hr_left).mean(-1)
    out = augment(hr_left, hr_right, hr_left, hr_right, d_left, d_right, hflip=hflip, vflip=vflip)
    new_left, new_right, _, _, new_d_left, new_d_right = (np.ascontiguousarray(a) for a in out)
    assert new_d_left.min() > 0 and new_d_right.min() > 0
    after = np.abs(sample_right(new_right.astype(float), new_d_left) - new_left).mean(-1)
    assert np.median(after) == pytest.approx(np.median(before), rel=0.1)      # photometric differences remain
    if hflip:
        np.testing.assert_array_equal(new_d_left, (d_right[:, ::-1] if not vflip else d_right[::-1, ::-1]))
    # a control: a negated map (the convention of signed right-view disparities) would be wrong, and is seen
    negated = np.abs(sample_right(new_right.astype(float), -new_d_left) - new_left).mean(-1)
    assert np.median(negated) > 5 * np.median(after)


def test_motorcycle_is_never_a_source():
    assert not any('motorcycle' in name for name in synthetic.SOURCES)
