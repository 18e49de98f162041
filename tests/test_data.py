"""Training data: patch geometry of GenerateTrainingPatches.m, prepare_train.py, augmentation, determinism."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from data import prepare_train
from data.patches import PatchFolder, PatchList, augment, patch_origins
from models.imresize import imresize

ROOT = Path(__file__).resolve().parents[1]


def matlab_origins(h_lr: int, w_lr: int) -> list[tuple[int, int]]:
    """MATLAB `for x = 3:20:h-33, for y = 3:20:w-93` (1-based, inclusive), as 0-based corners."""
    return [(x - 1, y - 1) for x in range(3, h_lr - 33 + 1, 20) for y in range(3, w_lr - 93 + 1, 20)]


@pytest.mark.parametrize('h, w', [(125, 185), (124, 184), (126, 186), (33, 93), (34, 94), (200, 300)])
def test_patch_origins_follow_the_matlab_loops(h, w):
    assert list(patch_origins(h, w)) == matlab_origins(h, w)


def test_prepare_train_matches_generate_training_patches(tmp_path):
    """Two Middlebury-like pairs (halved first) and one Flickr1024-like pair: patch count, order and content."""
    rng = np.random.default_rng(0)
    src = tmp_path / 'raw'
    shapes = {'Middlebury': [(300, 420), (260, 400)], 'Flickr1024': [(180, 500)]}
    images = {}
    for folder, sizes in shapes.items():
        (src / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            for view in ('L', 'R'):
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                images[(folder, i, view)] = img
                iio.imwrite(src / folder / f'{i:04d}_{view}.png', img)
    # as a user runs it (exit status 0, not the patch count: `prepare_train.py ... && train.py ...` must go on)
    done = subprocess.run([sys.executable, str(ROOT / 'data' / 'prepare_train.py'), '--src', str(src),
                           '--scale_factor', '2', '--out', str(tmp_path / 'out')], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    count = int(re.search(r'wrote (\d+) patches', done.stderr).group(1))

    expected = []
    for folder, sizes in shapes.items():
        for i, (h, w) in enumerate(sizes):
            left = images[(folder, i, 'L')]
            if folder == 'Middlebury':
                left = imresize(left, 0.5)
            hr = left[: left.shape[0] // 2 * 2, : left.shape[1] // 2 * 2]
            lr = imresize(hr, 0.5)
            expected += [(hr, lr, corner) for corner in matlab_origins(*lr.shape[:2])]
    assert count == len(expected) == len(list((tmp_path / 'out' / 'patches_x2').iterdir()))
    for number in (1, len(expected) // 2, len(expected)):          # first, middle and last patch
        hr, lr, (top, left) = expected[number - 1]
        folder = tmp_path / 'out' / 'patches_x2' / f'{number:06d}'
        np.testing.assert_array_equal(iio.imread(folder / 'lr0.png'), lr[top:top + 30, left:left + 90])
        np.testing.assert_array_equal(iio.imread(folder / 'hr0.png'),
                                      hr[2 * top:2 * top + 60, 2 * left:2 * left + 180])


def test_horizontal_flip_swaps_and_mirrors_the_views():
    hr_l, hr_r, lr_l, lr_r = (np.arange(24).reshape(2, 4, 3) + 100 * k for k in range(4))
    out = augment(hr_l, hr_r, lr_l, lr_r, hflip=True, vflip=False)
    np.testing.assert_array_equal(out[0], hr_r[:, ::-1])             # new left = mirrored old right
    np.testing.assert_array_equal(out[1], hr_l[:, ::-1])
    np.testing.assert_array_equal(out[2], lr_r[:, ::-1])
    np.testing.assert_array_equal(out[3], lr_l[:, ::-1])
    out = augment(hr_l, hr_r, lr_l, lr_r, hflip=False, vflip=True)
    np.testing.assert_array_equal(out[0], hr_l[::-1])                # vertical flip keeps the views
    np.testing.assert_array_equal(out[3], lr_r[::-1])


def test_flip_keeps_disparities_positive():
    """left(x) = right(x - d) with d > 0 holds again after the flip-and-swap (a plain mirror would make d < 0)."""
    rng = np.random.default_rng(1)
    scene = rng.random((8, 40, 1))
    d = 5
    left, right = scene[:, :-d], scene[:, d:]
    np.testing.assert_array_equal(left[:, d:], right[:, :-d])                 # left(x) = right(x - d)
    new_left, new_right, _, _ = augment(left, right, left, right, hflip=True, vflip=False)
    np.testing.assert_array_equal(new_left[:, d:], new_right[:, :-d])         # still a positive disparity d
    mirrored_left, mirrored_right = left[:, ::-1], right[:, ::-1]
    assert not np.array_equal(mirrored_left[:, d:], mirrored_right[:, :-d])


def test_augmentation_is_deterministic_per_epoch_and_index():
    rng = np.random.default_rng(2)
    patches = [tuple(rng.integers(0, 256, s, dtype=np.uint8) for s in ((60, 180, 3),) * 2 + ((30, 90, 3),) * 2)
               for _ in range(8)]
    a, b = PatchList(patches, 2, seed=7), PatchList(patches, 2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert all(torch.equal(x, y) for i in range(8) for x, y in zip(a[i], b[i]))
    b.set_epoch(4)
    flips = [not all(torch.equal(x, y) for x, y in zip(a[i], b[i])) for i in range(8)]
    assert any(flips)                                                 # another epoch draws other flips
    sample = a[0]
    assert sample[0].shape == (3, 60, 180) and sample[2].shape == (3, 30, 90) and sample[0].max() <= 1


def test_mismatched_patch_names_the_folder(tmp_path):
    for scale in (2, 4):                          # the same x4-sized files filed under patches_x2 and patches_x4
        folder = tmp_path / f'patches_x{scale}' / '000001'
        folder.mkdir(parents=True)
        for name, shape in (('hr0.png', (120, 360, 3)), ('hr1.png', (120, 360, 3)), ('lr0.png', (30, 90, 3)),
                            ('lr1.png', (30, 90, 3))):
            iio.imwrite(folder / name, np.zeros(shape, dtype=np.uint8))
    assert PatchFolder(tmp_path, 4)[0][0].shape == (3, 120, 360)
    with pytest.raises(ValueError, match=r'patches_x2/000001: HR \(120, 360\) is not 2x LR \(30, 90\)'):
        PatchFolder(tmp_path, 2)[0]
    iio.imwrite(tmp_path / 'patches_x4' / '000001' / 'lr1.png', np.zeros((30, 91, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match='000001: left and right differ in size'):
        PatchFolder(tmp_path, 4)[0]


def coordinate_patch(scale: int, view: int) -> tuple[np.ndarray, ...]:
    """A 30x90 LR patch whose pixels are (row, column, view) and its HR patch holding the LR pixel each HR pixel lies
    in: any co-located crop has hr[::s, ::s] == lr."""
    rows, cols = np.mgrid[:30, :90]
    lr = [np.stack([rows, cols, np.full_like(rows, v)], -1).astype(np.uint8) for v in (view, view + 1)]
    hr = [x.repeat(scale, 0).repeat(scale, 1) for x in lr]
    return (*hr, *lr)


def test_lr_crop_keeps_hr_and_lr_co_located_and_is_drawn_per_epoch():
    scale = 3
    patches = [coordinate_patch(scale, 2 * i) for i in range(6)]
    data = PatchList(patches, scale, seed=5)
    data.crop = (7, 11)
    data.set_epoch(2)
    origins = []
    for i in range(6):
        hr_l, hr_r, lr_l, lr_r = (np.rint(x.numpy() * 255).astype(int) for x in data[i])
        assert lr_l.shape == (3, 7, 11) and hr_l.shape == (3, 21, 33)
        np.testing.assert_array_equal(hr_l[:, ::scale, ::scale], lr_l)
        np.testing.assert_array_equal(hr_r[:, ::scale, ::scale], lr_r)
        assert sorted({lr_l[2, 0, 0], lr_r[2, 0, 0]}) == [2 * i, 2 * i + 1]     # both views of patch i
        # the flips mirror the crop; its origin is the smallest row and column it holds
        origins.append((lr_l[0].min(), lr_l[1].min()))
        assert lr_l[0].max() - lr_l[0].min() == 6 and lr_l[1].max() - lr_l[1].min() == 10
    assert len(set(origins)) > 1                                       # random positions
    again = PatchList(patches, scale, seed=5)
    again.crop = (7, 11)
    again.set_epoch(2)
    assert all(torch.equal(x, y) for i in range(6) for x, y in zip(data[i], again[i]))
    again.set_epoch(3)
    assert not all(torch.equal(x, y) for i in range(6) for x, y in zip(data[i], again[i]))


def test_lr_crop_follows_disparity_and_teacher_outputs():
    scale = 2
    hr_l, hr_r, lr_l, lr_r = coordinate_patch(scale, 0)
    disparity = hr_l[..., 1].astype(np.float32)                    # disparity = LR column, to see where it was cut

    class WithDisparity(PatchList):
        has_disparity = True

        def load(self, index):
            return (*super().load(index), disparity, disparity + 100)

    data = WithDisparity([(hr_l, hr_r, lr_l, lr_r)], scale, augment=False)
    data.extras = lambda index: [(hr_l.astype(np.float32), hr_r.astype(np.float32))]
    data.crop = (5, 9)
    hr_left, _, lr_left, _, d_left, d_right, teacher_left, _ = data[0]
    np.testing.assert_array_equal(d_left[0], hr_left[1] * 255)
    np.testing.assert_array_equal(d_right[0], hr_left[1] * 255 + 100)
    np.testing.assert_array_equal(teacher_left[0], hr_left * 255)
    assert lr_left.shape == (3, 5, 9) and teacher_left.shape == (1, 3, 10, 18)
