"""End to end: data/prepare_test.py -> test_sr.py / test_disp.py, checked against independent computations."""
from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio

import test_disp
import test_sr
from data import prepare_test
from data.readers import read_kitti_disparity, write_kitti_disparity, write_pfm
from models import build_model
from models.checkpoint import save_checkpoint
from models.imresize import imresize, modcrop

FAILS = (ValueError, OSError)   # what a script's main raises; run_script prints it as one line, exit 1 or 2


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'random_x4.pth'
    save_checkpoint(path, build_model('ssrdefnet', 4), epoch=0, args={'scale_factor': 4})
    return path


@pytest.fixture(scope='module')
def small_middlebury(tmp_path_factory):
    """scikit-image's Motorcycle pair (Middlebury 2006) cropped small, with its ground truth, in the raw
    Middlebury layout, prepared without halving: LR 32x92 at x4."""
    raw = tmp_path_factory.mktemp('raw_middlebury') / 'motorcycle'
    raw.mkdir()
    left, right, disparity = skdata.stereo_motorcycle()
    rows, cols = slice(200, 330), slice(300, 670)              # 130 x 370 -> modcrop 128 x 368
    iio.imwrite(raw / 'im0.png', left[rows, cols])
    iio.imwrite(raw / 'im1.png', right[rows, cols])
    write_pfm(raw / 'disp0GT.pfm', disparity[rows, cols])
    out = raw.parent.parent / 'test_middlebury'
    prepare_test.main(['--preset', 'middlebury', '--src', str(raw.parent), '--out', str(out), '--no-halve'])
    return out, raw


def test_prepare_middlebury_writes_the_authors_layout(small_middlebury):
    out, raw = small_middlebury
    hr = iio.imread(out / 'Middlebury' / 'hr' / 'motorcycle' / 'hr0.png')
    lr = iio.imread(out / 'Middlebury' / 'lr_x4' / 'motorcycle' / 'lr0.png')
    original = iio.imread(raw / 'im0.png')
    np.testing.assert_array_equal(hr, original[:128, :368])          # modcrop: bottom/right
    np.testing.assert_array_equal(lr, imresize(hr, 0.25))
    assert (out / 'Middlebury' / 'hr' / 'motorcycle' / 'disp0GT.pfm').is_file()


def test_prepare_kitti_writes_cropped_ground_truth(tmp_path, samples_dir):
    raw = tmp_path / 'training'
    for sub, name in (('colored_0', 'left.png'), ('colored_1', 'right.png')):
        (raw / sub).mkdir(parents=True)
        shutil.copy(samples_dir / 'kitti2012_000000' / name, raw / sub / '000000_10.png')
    rng = np.random.default_rng(0)
    gt = np.where(rng.random((376, 1241)) < 0.3, rng.uniform(1, 150, (376, 1241)), 0).astype(np.float32)
    write_kitti_disparity(raw / 'disp_occ' / '000000_10.png', gt)
    write_kitti_disparity(raw / 'disp_noc' / '000000_10.png', gt * (rng.random(gt.shape) < 0.8))
    prepare_test.main(['--preset', 'kitti2012', '--src', str(raw), '--out', str(tmp_path / 'test')])
    scene = tmp_path / 'test' / 'K2012' / 'hr' / '000000_10'
    written = read_kitti_disparity(scene / 'dispocc0.png')
    assert written.shape == (376, 1240)                              # cropped like the HR image (modcrop 4)
    np.testing.assert_allclose(written, np.floor(gt[:, :1240] * 256 + 0.5) / 256)
    assert (scene / 'dispnoc0.png').is_file() and (tmp_path / 'test' / 'KITTI2012' / 'hr' / '000000_10').is_dir()


def test_bicubic_psnr_equals_independent_computation(tmp_path, samples_dir, capsys):
    """On the real KITTI and Flickr1024 samples prepared as test sets, test_sr.py --model bicubic reports the PSNR
    that PIL + scikit-image compute from the raw files."""
    raw_kitti = tmp_path / 'kitti'
    for sub, name in (('colored_0', 'left.png'), ('colored_1', 'right.png')):
        (raw_kitti / sub).mkdir(parents=True)
        shutil.copy(samples_dir / 'kitti2012_000000' / name, raw_kitti / sub / '000000_10.png')
    raw_flickr = tmp_path / 'flickr'
    raw_flickr.mkdir()
    shutil.copy(samples_dir / 'flickr1024_0026' / 'left.png', raw_flickr / '0026_L.png')
    shutil.copy(samples_dir / 'flickr1024_0026' / 'right.png', raw_flickr / '0026_R.png')
    test_root = tmp_path / 'test'
    prepare_test.main(['--preset', 'kitti2012', '--src', str(raw_kitti), '--out', str(test_root)])
    prepare_test.main(['--preset', 'flickr1024', '--src', str(raw_flickr), '--out', str(test_root)])
    results = test_sr.main(['--model', 'bicubic', '--testset_dir', str(test_root), '--results_dir',
                            str(tmp_path / 'results'), '--json', str(tmp_path / 'bicubic.json')])
    assert list(results) == ['KITTI2012', 'Flickr1024']                # paper order
    assert json.loads((tmp_path / 'bicubic.json').read_text())['KITTI2012']['psnr_left'] == \
        results['KITTI2012']['psnr_left']
    table = capsys.readouterr().out
    assert '| KITTI2012 | 1 |' in table and 'MATLAB bicubic' in table

    for dataset, raw_left, raw_right in (('KITTI2012', raw_kitti / 'colored_0' / '000000_10.png',
                                          raw_kitti / 'colored_1' / '000000_10.png'),
                                         ('Flickr1024', raw_flickr / '0026_L.png', raw_flickr / '0026_R.png')):
        views = []
        for path in (raw_left, raw_right):
            img = np.asarray(Image.open(path).convert('RGB'))
            h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
            hr = img[:h, :w]
            sr = imresize(imresize(hr, 0.25), 4)                          # MATLAB bicubic down, then up
            views.append((hr.astype(np.float64) / 255, sr.astype(np.float64) / 255))
        (hr_l, sr_l), (hr_r, sr_r) = views
        left = peak_signal_noise_ratio(hr_l[:, 64:], sr_l[:, 64:], data_range=1)
        average = (peak_signal_noise_ratio(hr_l, sr_l, data_range=1) +
                   peak_signal_noise_ratio(hr_r, sr_r, data_range=1)) / 2
        assert results[dataset]['psnr_left'] == pytest.approx(left, abs=1e-6)
        assert results[dataset]['psnr_avg'] == pytest.approx(average, abs=1e-6)
        assert 20 < left < 40


def test_sr_with_checkpoint_saves_rounded_images(small_middlebury, random_checkpoint, tmp_path):
    test_root, _ = small_middlebury
    results = test_sr.main(['--checkpoint', str(random_checkpoint), '--testset_dir', str(test_root),
                            '--results_dir', str(tmp_path), '--run_name', 'run', '--quantize'])
    saved = iio.imread(tmp_path / 'run' / 'Middlebury' / 'motorcycle_L.png').astype(np.float64) / 255
    hr = iio.imread(test_root / 'Middlebury' / 'hr' / 'motorcycle' / 'hr0.png').astype(np.float64) / 255
    assert saved.shape == hr.shape == (128, 368, 3)
    # with --quantize the score is that of the saved 8-bit image
    expected = peak_signal_noise_ratio(hr[:, 64:], saved[:, 64:], data_range=1)
    assert results['Middlebury']['psnr_left'] == pytest.approx(expected, abs=1e-6)
    scene = results['Middlebury']['scenes']['motorcycle']
    assert 0 < scene['ssim_avg'] < 1 and np.isfinite(scene['psnr_avg'])


def test_disp_end_to_end_writes_figures_and_consistent_numbers(small_middlebury, random_checkpoint, tmp_path):
    test_root, raw = small_middlebury
    results = test_disp.main(['--checkpoint', str(random_checkpoint), '--testset_dir', str(test_root),
                              '--results_dir', str(tmp_path), '--run_name', 'run',
                              '--json', str(tmp_path / 'disp.json')])
    out = tmp_path / 'run' / 'disparity' / 'Middlebury'
    for suffix in ('disp', 'error'):
        assert iio.imread(out / f'motorcycle_{suffix}.png').shape == (128, 368, 3)     # colour-coded, HR size
    assert iio.imread(out / 'motorcycle_disp16.png').dtype == np.uint16
    figure = iio.imread(out / 'motorcycle_figure.png')
    assert figure.ndim == 3 and figure.shape[0] > 300
    numbers = json.loads((tmp_path / 'disp.json').read_text())['Middlebury']
    for key in ('epe_all', 'epe_noc', 'd1_all', 'd1_noc', 'bad1_all', 'bad3_all', 'epe_all_lr_r1'):
        assert key in numbers
    # recompute the EPE from the saved 16-bit disparity and the raw ground truth
    predicted = read_kitti_disparity(out / 'motorcycle_disp16.png')
    gt = skdata.stereo_motorcycle()[2][200:328, 300:668]
    valid = np.isfinite(gt) & (gt > 0) & (gt < 192)
    assert results['Middlebury']['epe_all'] == pytest.approx(np.abs(predicted - gt)[valid].mean(), abs=2e-3)
    assert 0 <= numbers['d1_all'] <= numbers['bad3_all'] + 1e-12 <= numbers['bad1_all'] + 2e-12


def test_scripts_explain_what_is_missing(tmp_path, random_checkpoint):
    with pytest.raises(FAILS, match='test-set folder not found'):
        test_sr.main(['--model', 'bicubic', '--testset_dir', str(tmp_path / 'nothing')])
    with pytest.raises(FAILS, match='checkpoint .*missing.pth not found'):
        test_sr.main(['--checkpoint', str(tmp_path / 'missing.pth'), '--testset_dir', str(tmp_path)])
    with pytest.raises(FAILS, match='x4 weights but the model was built for x2'):
        test_disp.main(['--checkpoint', str(random_checkpoint), '--scale_factor', '2', '--testset_dir',
                        str(tmp_path)])
    (tmp_path / 'Set' / 'hr' / 'a').mkdir(parents=True)
    with pytest.raises(FAILS, match='lr_x4 not found'):
        test_sr.main(['--model', 'bicubic', '--testset_dir', str(tmp_path)])


def test_single_image_folders_bicubic_equals_the_y_channel_formula(tmp_path):
    """test_sr.py --images DIR: each HR image modcropped, MATLAB-bicubic down and up, rounded to 8 bit, scored on
    BT.601 Y without `scale` border pixels - checked against the formula written out here in numpy."""
    folder = tmp_path / 'Set2'
    folder.mkdir()
    crops = {'astronaut': skdata.astronaut()[100:163, 150:250], 'coffee': skdata.coffee()[50:121, 200:290]}
    for name, img in crops.items():
        iio.imwrite(folder / f'{name}.png', img)
    result = test_sr.main(['--model', 'bicubic', '--scale_factor', '4', '--images', str(folder), '--no_save'])
    expected = []
    for img in crops.values():
        hr = modcrop(img, 4).astype(np.float64)
        sr = imresize(imresize(modcrop(img, 4), 0.25), 4).astype(np.float64)
        y = [16 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255 for x in (sr, hr)]
        mse = np.mean((y[0][4:-4, 4:-4] - y[1][4:-4, 4:-4]) ** 2)
        expected.append(10 * np.log10(255 ** 2 / mse))
    assert result['Set2']['num_images'] == 2
    assert result['Set2']['psnr'] == pytest.approx(np.mean(expected), abs=1e-6)
    assert 0.5 < result['Set2']['ssim'] < 1
