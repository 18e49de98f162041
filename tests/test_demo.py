"""demo.py: the main job on the built-in sample with the demo checkpoint, odd inputs, tiling, memory guard."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import demo
from models import build_model
from models.inference import band_starts, band_weights, pad_to_valid, predict, predict_tiled
from models.checkpoint import save_checkpoint

FAILS = (ValueError, OSError)   # what a script's main raises; run_script prints it as one line, exit 1 or 2


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'random_x4.pth'
    save_checkpoint(path, build_model('ssrdefnet', 4), epoch=0, args={})
    return path


@pytest.fixture(scope='module')
def small_pair(tmp_path_factory):
    """A small real LR pair (scikit-image Motorcycle, downscaled) as 8-bit PNGs."""
    from skimage import data as skdata
    from models.imresize import imresize
    left, right, _ = skdata.stereo_motorcycle()
    folder = tmp_path_factory.mktemp('pair')
    views = [imresize(v[100:236, 200:600], 0.25) for v in (left, right)]     # LR 34x100
    for name, img in zip(('left', 'right'), views):
        iio.imwrite(folder / f'{name}.png', img)
    return folder, views


def test_main_job_on_the_sample_beats_bicubic(tmp_path, capsys):
    """`python demo.py` with no argument: SR, disparity, scores and pictures for Motorcycle, demo weights."""
    if not demo.DEMO_CHECKPOINT.is_file():
        pytest.fail(f'the demo checkpoint {demo.DEMO_CHECKPOINT} must be committed')
    (tmp_path / 'notes.txt').write_text('a file of the user\'s')
    metrics = demo.main(['--out', str(tmp_path)])
    for name in ('sr_left.png', 'sr_right.png', 'bicubic_left.png', 'bicubic_right.png', 'disparity_left.png',
                 'disparity_left_16bit.png', 'disparity_figure.png', 'comparison.png', 'metrics.json'):
        assert (tmp_path / name).is_file(), name
    # demo.OUTPUTS (removed before each run, so that none is left from an earlier one) is every file it writes, and
    # nothing else in the folder is touched
    assert {p.name for p in tmp_path.iterdir()} == {*demo.OUTPUTS, 'notes.txt'}
    assert iio.imread(tmp_path / 'sr_left.png').shape == (500, 740, 3)
    assert json.loads((tmp_path / 'metrics.json').read_text())['ssrdefnet'] == metrics['ssrdefnet']
    # the demo checkpoint (README: synthetic scenes, then photo scenes with the authors' CVHSSR-T as teacher; never
    # Motorcycle; on a CPU) measured +1.40 dB over MATLAB bicubic ((L+R)/2; 25.22 vs 23.82 dB), SSIM
    # 0.8141 vs 0.7509, and a disparity of EPE 4.87 px with 20.4 % over 3 px, better than the block
    # matcher below (8.95 px, 36.7 %)
    assert metrics['psnr_gain_over_bicubic'] == pytest.approx(1.40, abs=0.05)
    assert metrics['psnr_gain_over_bicubic'] >= 1.3
    assert metrics['ssrdefnet']['ssim_avg'] == pytest.approx(0.8141, abs=0.003)
    # the disparity files: KITTI 16-bit PNG (value / 256), consistent with the colour map's range
    from data.readers import read_kitti_disparity
    disparity = read_kitti_disparity(tmp_path / 'disparity_left_16bit.png')
    assert disparity.shape == (500, 740) and 0 <= disparity.min() and disparity.max() <= 192
    scores = metrics['disparity']
    assert scores['ssrdefnet']['epe'] == pytest.approx(4.87, abs=0.2)
    assert scores['ssrdefnet']['bad3'] == pytest.approx(0.204, abs=0.01)
    assert scores['ssrdefnet']['epe'] < scores['block matcher']['epe'] - 1.5
    assert scores['ssrdefnet']['bad3'] < scores['block matcher']['bad3'] - 0.05
    # the references printed beside it, measured on this pair: the 9x9 SAD block matcher on the bicubic-upsampled
    # LR pair (EPE 8.95 px, 36.7 % over 3 px) and the median ground-truth disparity everywhere (14.79 px, 94.0 %)
    assert scores['block matcher']['epe'] == pytest.approx(8.95, abs=0.01)
    assert scores['block matcher']['bad3'] == pytest.approx(0.367, abs=0.001)
    assert scores['constant']['epe'] == pytest.approx(14.79, abs=0.01)
    assert scores['constant']['bad3'] == pytest.approx(0.940, abs=0.001)
    out = capsys.readouterr().out
    assert 'SSRDE-FNet vs bicubic: +' in out and 'comparison.png' in out
    assert '| block matcher (9x9 SAD' in out and '| constant (the median' in out


@pytest.mark.parametrize('kind', ['rgba', 'grey', 'sixteen_bit', 'jpeg'])
def test_odd_input_kinds(kind, small_pair, random_checkpoint, tmp_path):
    folder, views = small_pair
    paths = []
    for name, img in zip(('left', 'right'), views):
        if kind == 'rgba':
            data, suffix = np.concatenate([img, np.full(img.shape[:2] + (1,), 128, np.uint8)], axis=2), 'png'
        elif kind == 'grey':
            data, suffix = img.mean(2).astype(np.uint8), 'png'
        elif kind == 'sixteen_bit':
            data, suffix = img.mean(2).astype(np.uint16) * 257, 'png'
        else:
            data, suffix = img, 'jpg'
        paths.append(tmp_path / f'{name}.{suffix}')
        iio.imwrite(paths[-1], data)
    metrics = demo.main(['--left', str(paths[0]), '--right', str(paths[1]), '--checkpoint', str(random_checkpoint),
                         '--out', str(tmp_path / 'out')])
    sr = iio.imread(tmp_path / 'out' / 'sr_left.png')
    assert sr.shape == (136, 400, 3) and metrics['lr_size'] == [34, 100]
    if kind in ('grey', 'sixteen_bit'):   # replicated to RGB, and the network keeps the three channels close
        assert np.abs(sr[..., 0].astype(int) - sr[..., 2].astype(int)).mean() < 20


def test_views_of_different_sizes_are_refused(small_pair, random_checkpoint, tmp_path):
    folder, views = small_pair
    iio.imwrite(tmp_path / 'narrow.png', views[1][:, :90])
    with pytest.raises(FAILS, match=r'--left .*left.png is 100x34 but --right .*narrow.png is 90x34'):
        demo.main(['--left', str(folder / 'left.png'), '--right', str(tmp_path / 'narrow.png'),
                   '--checkpoint', str(random_checkpoint), '--out', str(tmp_path / 'out')])


def test_pairs_below_the_minimum_are_padded_and_cropped_back(random_checkpoint, small_pair, tmp_path):
    folder, views = small_pair
    for name, img in zip(('left', 'right'), views):
        iio.imwrite(tmp_path / f'{name}.png', img[:20, :25])              # 20x25 < 30x30
    demo.main(['--left', str(tmp_path / 'left.png'), '--right', str(tmp_path / 'right.png'),
               '--checkpoint', str(random_checkpoint), '--out', str(tmp_path / 'out')])
    assert iio.imread(tmp_path / 'out' / 'sr_left.png').shape == (80, 100, 3)
    assert iio.imread(tmp_path / 'out' / 'disparity_left_16bit.png').shape == (80, 100)


def test_pad_to_valid():
    x2, x4 = build_model('ssrdefnet', 2), build_model('ssrdefnet', 4)   # 30x30 at least, even sizes at x2
    x = torch.rand(1, 3, 31, 45)
    (left, _), size = pad_to_valid(x, x, x2)
    assert left.shape[-2:] == (32, 46) and size == (31, 45)
    assert torch.equal(left[..., :31, :45], x) and torch.equal(left[..., 31, :45], x[..., 29, :])   # reflection
    (left, _), _ = pad_to_valid(torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12), x4)
    assert left.shape[-2:] == (30, 30)                                   # too small to reflect: replicated


def test_band_geometry():
    assert band_starts(100, 40, 8) == [0, 32, 60]
    assert band_starts(30, 40, 8) == [0]
    weights = band_weights(40, 8, 12)
    ramp_up, ramp_down = weights[:8], band_weights(40, 12, 8)[-8:]
    torch.testing.assert_close(ramp_up + ramp_down, torch.ones(8))      # neighbouring bands' weights sum to 1
    assert weights[8:28].eq(1).all()


def test_tiled_equals_untiled_within_tolerance():
    """Bands see less context (channel attention and pyramid pooling average over the band), so the result is close
    to, not equal to, a whole-image pass: with the demo weights the SR images agree to within 35 dB PSNR."""
    from skimage import data as skdata
    from metrics import psnr
    from models.checkpoint import load_model
    from models.imresize import imresize
    model, _ = load_model(demo.DEMO_CHECKPOINT, 4)
    left, right, _ = skdata.stereo_motorcycle()
    lr = [torch.from_numpy(imresize(v[:288, 100:580], 0.25).transpose(2, 0, 1))[None].float() / 255
          for v in (left, right)]                                         # LR 72x120
    whole = predict(model, *lr)
    tiled = predict_tiled(model, *lr, band=40, overlap=16)
    assert tiled['sr_left'].shape == whole['sr_left'].shape == (1, 3, 288, 480)
    assert psnr(tiled['sr_left'], whole['sr_left']).item() > 35
    assert psnr(tiled['sr_right'], whole['sr_right']).item() > 35
    assert (tiled['disp_left'] - whole['disp_left']).abs().median().item() < 1.0


def test_too_large_a_pair_suggests_tiling(small_pair, random_checkpoint, tmp_path, monkeypatch):
    folder, _ = small_pair
    monkeypatch.setattr(demo, 'available_bytes', lambda device: 700 << 20)
    with pytest.raises(MemoryError, match=r'out of memory: a 100x34 LR pair needs about .* GiB .* use --tile \d+'):
        demo.main(['--left', str(folder / 'left.png'), '--right', str(folder / 'right.png'),
                   '--checkpoint', str(random_checkpoint), '--out', str(tmp_path)])
