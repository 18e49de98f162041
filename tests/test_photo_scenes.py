"""Stereo scenes textured with photographs (data/photo_scenes.py): views consistent with their exact disparity,
surfaces facing the camera that are pixel-exact crops of their photograph in both views, LR made by MATLAB bicubic,
reproducible from (seed, epoch, index), photographs from a folder or the packages' samples, never Motorcycle."""
from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from scipy import ndimage

import train
from data import photo_scenes
from data.patches import PATCH_HEIGHT, PATCH_WIDTH
from data.photo_scenes import (CropTexture, PhotoStereo, ResampledTexture, default_photographs, folder_photographs,
                               is_fronto_parallel, random_photo_scene, render_photo_pair)
from data.synthetic import render_view
from tests.test_synthetic import sample_right, visible_in_both
from models.checkpoint import file_sha256
from models.imresize import imresize

HEIGHT, WIDTH = 152, 392      # an x4 training render: (30 + 2 x 4) x (90 + 2 x 4) LR pixels


def read_rgb(path) -> np.ndarray:
    """A photograph read independently of the module (Pillow), as HxWx3 uint8."""
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert('RGB'))


@pytest.fixture(scope='module')
def photographs():
    return default_photographs()


def test_default_photographs_ship_inside_the_installed_packages(photographs):
    """Ten photographs, read from the packages' own folders (no download): colour and greyscale, at least 300 pixels
    on a side, so a training frame (152x392 at x4, 392 + 40 x 4 columns with the disparity) is a crop of them."""
    assert [p.name for p in photographs] == ['astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg',
                                             'grace_hopper.jpg', 'camera.png', 'coins.png', 'brick.png',
                                             'grass.png', 'gravel.png']
    import matplotlib
    import skimage
    packages = (skimage.__file__, matplotlib.__file__)
    for path in photographs:
        assert path.is_file() and any(path.is_relative_to(type(path)(p).parent) for p in packages)
        image = photo_scenes.read_photograph(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and min(image.shape[:2]) >= 300
        np.testing.assert_array_equal(image, read_rgb(path))
    colourful = [np.ptp(photo_scenes.read_photograph(p).astype(int).mean((0, 1))) > 5 for p in photographs]
    assert colourful == [True] * 5 + [False] * 5


def test_motorcycle_is_never_chosen(photographs, tmp_path):
    """Not a default; refused from a folder by name (also KITTI, Middlebury, Flickr1024) and by content (a renamed
    copy of scikit-image's file); and 200 scenes draw only the listed photographs."""
    motorcycle = photo_scenes.package_file('skimage', 'data/motorcycle_left.png')
    assert motorcycle.is_file() and len(photo_scenes.motorcycle_fingerprints()) == 3
    assert not any('motorcycle' in str(p).lower() for p in photographs)
    assert all(file_sha256(p) != file_sha256(motorcycle) for p in photographs)
    allowed = tmp_path / 'photos'
    allowed.mkdir()
    shutil.copy(photographs[1], allowed / 'cat.png')
    assert folder_photographs(allowed) == [allowed / 'cat.png']
    shutil.copy(motorcycle, allowed / 'holiday.png')             # a renamed copy
    with pytest.raises(ValueError, match='copy of scikit-image\'s Motorcycle'):
        folder_photographs(allowed)
    for i, name in enumerate(('Motorcycle-perfect/im0.png', 'KITTI2015/000000_10.png', 'a/middlebury.png',
                              'Flickr1024/0001_L.png')):
        file = tmp_path / f'textures{i}' / name
        file.parent.mkdir(parents=True)
        shutil.copy(photographs[0], file)
        for folder in (tmp_path / f'textures{i}', file.parent):      # a folder below texture_dir, or texture_dir
            with pytest.raises(ValueError, match='refused as a texture'):
                folder_photographs(folder)
    drawn = set()
    for seed in range(200):
        for surface in random_photo_scene(np.random.default_rng([seed, 9]), 40, 100, 4, photographs):
            drawn.add(surface.texture.path)
    assert drawn == set(photographs)


@pytest.mark.parametrize('seed', range(4))
def test_left_equals_right_at_x_minus_d_wherever_visible_in_both(seed, photographs):
    surfaces = random_photo_scene(np.random.default_rng([seed, 1]), HEIGHT, WIDTH, 4, photographs)
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
    # a control: every disparity off by 3 px gives errors the test would catch (even on smooth photographs)
    shifted = np.abs(sample_right(right, disparity_left + 3) - left).mean(-1)[both]
    assert np.median(shifted) > 4 * max(np.median(error), 0.1)


def test_surfaces_facing_the_camera_are_crops_of_their_photograph(photographs):
    """Wherever a fronto-parallel surface is seen, left(x, y) = photo[y + top, x + left] and right(x', y) =
    photo[y + top, x' + d + left] bit for bit, with d a whole number of HR pixels; the right camera's gain and offset
    (camera=True) are the only change to the right view; slanted and curved surfaces are resampled (not crops)."""
    seen = {'crop': 0, 'resampled': 0}
    splines = {}
    for seed in range(8):
        surfaces = random_photo_scene(np.random.default_rng([seed, 5]), HEIGHT, WIDTH, 4, photographs)
        left, d_left, surface_left = render_view(surfaces, HEIGHT, WIDTH, 'left')
        right, d_right, surface_right = render_view(surfaces, HEIGHT, WIDTH, 'right')
        left, right = photo_scenes.to_uint8(left), photo_scenes.to_uint8(right)
        y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
        for k, surface in enumerate(surfaces):
            fronto = is_fronto_parallel(surface)
            assert isinstance(surface.texture, CropTexture if fronto else ResampledTexture)
            if not fronto or not (surface_left == k).any():
                continue
            assert surface.a == int(surface.a) and 1 <= surface.a <= 160
            photo, t = read_rgb(surface.texture.path), surface.texture
            for view, disparity, shown, offset in ((left, d_left, surface_left, 0),
                                                   (right, d_right, surface_right, int(surface.a))):
                mask = shown == k
                if not mask.any():
                    continue
                rows, columns = y[mask] + t.top, x[mask] + offset + t.left
                # inside the photograph (the defaults are large enough: no mirrored pixel)
                assert rows.min() >= 0 and columns.min() >= 0
                assert rows.max() < photo.shape[0] and columns.max() < photo.shape[1]
                np.testing.assert_array_equal(view[mask], photo[rows, columns])
                assert np.all(disparity[mask] == surface.a)
            seen['crop'] += 1
        for k, surface in enumerate(surfaces):       # resampled: the photograph rotated and scaled, read correctly
            mask = surface_left == k
            if is_fronto_parallel(surface) or not mask.any():
                continue
            t = surface.texture
            scale = np.sqrt(np.linalg.det(t.matrix))
            assert photo_scenes.SCALE[0] - 1e-9 <= scale <= photo_scenes.SCALE[1] + 1e-9
            assert abs(np.arctan2(t.matrix[1, 0], t.matrix[0, 0])) <= photo_scenes.ROTATION + 1e-9
            # the window's splines equal the whole photograph's (cubic, mirrored) at the positions shown
            if t.path not in splines:
                photo = read_rgb(t.path).astype(float)
                splines[t.path] = [ndimage.spline_filter(photo[..., c], mode='mirror') for c in range(3)]
            coords = t.matrix @ np.stack([y[mask], x[mask]]) + t.offset[:, None]
            whole = np.stack([ndimage.map_coordinates(c, coords, order=3, mode='mirror', prefilter=False)
                              for c in splines[t.path]], -1)
            inside = np.all((coords > 4) & (coords < np.array(splines[t.path][0].shape)[:, None] - 5), axis=0)
            assert inside.mean() > 0.9
            error = np.abs(np.clip(whole, 0, 255) - t(x[mask], y[mask]))[inside]
            assert error.max() < 0.5
            seen['resampled'] += 1
    assert seen['crop'] >= 10 and seen['resampled'] >= 3, seen
    # render_photo_pair renders that scene (the last one); the right camera's gain and offset are the only change
    pair = render_photo_pair(np.random.default_rng([seed, 5]), HEIGHT, WIDTH, 4, photographs, camera=False)
    for a, b in zip(pair, (left, right, d_left.astype(np.float32), d_right.astype(np.float32))):
        np.testing.assert_array_equal(a, b)
    left2, right2, _, _ = render_photo_pair(np.random.default_rng([seed, 5]), HEIGHT, WIDTH, 4, photographs)
    np.testing.assert_array_equal(left2, left)
    inside = (right > 20) & (right < 200)
    ratio = right2[inside].astype(float) / right[inside]
    assert 0.8 < np.median(ratio) < 1.2 and not np.array_equal(right2, right)


def test_geometry_mixes_fronto_parallel_slanted_and_curved_surfaces(photographs):
    kinds = {'fronto-parallel': 0, 'slanted': 0, 'curved': 0}
    for seed in range(30):
        for s in random_photo_scene(np.random.default_rng([seed, 2]), HEIGHT, WIDTH, 4, photographs):
            kinds['curved' if s.q[0] or s.q[2] else 'slanted' if s.b or s.c else 'fronto-parallel'] += 1
    total = sum(kinds.values())
    assert 0.35 < kinds['fronto-parallel'] / total < 0.65 and kinds['slanted'] >= 10 and kinds['curved'] >= 5, kinds


def test_patches_carry_exact_disparity_and_are_reproducible():
    data = PhotoStereo(scale=4, length=3, augment=False, seed=5)
    assert data.has_disparity
    hr_left, hr_right, lr_left, lr_right, d_left, d_right = data[1]
    assert lr_left.shape == lr_right.shape == (3, PATCH_HEIGHT, PATCH_WIDTH)
    assert hr_left.shape == hr_right.shape == (3, PATCH_HEIGHT * 4, PATCH_WIDTH * 4)
    assert d_left.shape == d_right.shape == (1, PATCH_HEIGHT * 4, PATCH_WIDTH * 4) and d_left.dtype == torch.float32
    assert torch.isfinite(d_left).all() and d_left.min() >= 1 - 1e-4 and d_left.max() <= 160 + 1e-4
    assert all(torch.equal(a, b) for a, b in zip(data[1], PhotoStereo(4, 3, False, seed=5)[1]))
    assert not torch.equal(PhotoStereo(4, 3, False, seed=6)[1][0], hr_left)
    data.set_epoch(1)  # a new epoch renders new scenes
    assert not torch.equal(data[1][0], hr_left)
    # the LR view is the MATLAB-bicubic downscaling of the HR scene (computed over a margin, so away from the
    # border it equals downscaling the HR patch alone)
    hr = (hr_left.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lr = torch.from_numpy(imresize(hr, 0.25).transpose(2, 0, 1)).float() / 255
    inner = np.s_[:, 3:-3, 3:-3]
    assert (lr[inner] - lr_left[inner]).abs().max() <= 1 / 255 + 1e-6


def test_texture_dir_is_the_only_source(tmp_path, photographs):
    """Photographs from a folder (any depth): every surface shows one of them, and the defaults are not used."""
    folder = tmp_path / 'mine'
    (folder / 'sub').mkdir(parents=True)
    cat = read_rgb(photographs[1])
    PIL.Image.fromarray(cat[:, ::-1]).save(folder / 'mirrored_cat.png')
    PIL.Image.fromarray(cat[::-1]).save(folder / 'sub' / 'upside_down.PNG')
    (folder / 'notes.txt').write_text('not an image')
    data = PhotoStereo(scale=2, length=2, augment=False, seed=0, texture_dir=folder)
    assert data.photographs == [folder / 'mirrored_cat.png', folder / 'sub' / 'upside_down.PNG']
    assert data[0][0].shape == (3, PATCH_HEIGHT * 2, PATCH_WIDTH * 2)
    drawn = {s.texture.path for seed in range(20)
             for s in random_photo_scene(np.random.default_rng(seed), 76, 196, 2, data.photographs)}
    assert drawn == set(data.photographs)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no photographs'):
        PhotoStereo(2, texture_dir=tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='texture folder not found'):
        PhotoStereo(2, texture_dir=tmp_path / 'nowhere')


def test_a_photograph_smaller_than_the_frame_is_mirrored(tmp_path):
    """A 40x60 photograph textures a 152x392 frame: crops continue as the mirror image beyond its border."""
    folder = tmp_path / 'small'
    folder.mkdir()
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    PIL.Image.fromarray(small).save(folder / 'small.png')
    texture = CropTexture(folder / 'small.png', 0, 0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(float)
    values = texture(x, y)
    np.testing.assert_array_equal(values[:40, :60], small)
    np.testing.assert_array_equal(values[40:78, :60], small[-2:0:-1])
    np.testing.assert_array_equal(values[:40, 60:118], small[:, -2:0:-1])
    left, right, d_left, _ = render_photo_pair(rng, HEIGHT, WIDTH, 4, folder_photographs(folder))
    assert left.shape == right.shape == (HEIGHT, WIDTH, 3) and np.isfinite(d_left).all()


def test_train_py_trains_on_photo_scenes_with_disparity_supervision(tmp_path, photographs):
    """`train.py --trainset photo --texture_dir DIR`: one step of the default network with the supervised disparity
    loss (on 30x30 LR crops, which halve the test's time), the folder kept in the run's arguments."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    shutil.copy(photographs[2], folder / 'coffee.png')
    run = tmp_path / 'run'
    assert train.main(['--scale_factor', '2', '--trainset', 'photo', '--texture_dir', str(folder),
                       '--synthetic_size', '2', '--batch_size', '2', '--lr_crop', '30x30', '--num_workers', '0',
                       '--n_epochs', '1',
                       '--disp_supervision', '0.01', '--checkpoint_dir', str(run)]) == 0
    row = json.loads((run / 'log.jsonl').read_text().splitlines()[-1])
    assert row['loss_disp_sup'] > 0 and np.isfinite(row['loss_total'])
    args = json.loads((run / 'args.json').read_text())
    assert args['trainset'] == 'photo' and args['texture_dir'] == str(folder)
