"""DSDMSR in the zoo (ModelEntry.modality 'disparity_map'): its registry entry, train.py on disparity-map patches,
test_disp.py on map folders and on the built-in Motorcycle ground truth, SSRDE-FNet's LR disparity super-resolved
by it (--upsampler) in the right units, the committed demo checkpoints' Motorcycle numbers against bicubic, and the
one-line refusals of the scripts that run stereo pairs."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import bench
import demo
import test_disp
import test_sr
import train
from data.disparity_maps import DisparityMapPatches
from data.readers import write_image, write_kitti_disparity, write_pfm
from evaluation import upsample_bicubic, upsample_nearest
from models import MAP_MODELS, STEREO_MODELS, build_model, model_entry
from test_cli_errors import outcome     # (exit status, stderr) of a script's main, as `python script.py` gives
from models.checkpoint import save_checkpoint
from training.flags import build_parser, resolve_config
from training.loop import train_step

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py: small convolutions, shared cores

# Committed demo checkpoints (README, DSDMSR section) and their Motorcycle numbers (test_disp.py --datasets sample):
# scale -> (fused RMSE, fused EPE). Bicubic of the same LR map: x4 1.6383 / 0.4414, x8 2.6600 / 0.9278 (px).
DEMO_NUMBERS = {4: (1.2185, 0.3240), 8: (2.2682, 0.8006)}
BICUBIC_MOTORCYCLE = {4: (1.6383, 0.4414), 8: (2.6600, 0.9278)}


def tiny_run(run_dir: Path, *extra: str) -> list[str]:
    return ['--model', 'dsdmsr', '--scale_factor', '2', '--synthetic_size', '4', '--batch_size', '2', '--map_patch',
            '8', '--num_workers', '0', '--n_epochs', '1', '--checkpoint_dir', str(run_dir), *extra]


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """A x2 DSDMSR checkpoint of train.py (one epoch of two steps on synthetic maps)."""
    run = tmp_path_factory.mktemp('dsdmsr_run')
    assert train.main(tiny_run(run)) == 0
    return run / 'last.pth'


# ---- the registry

def test_registry_entry():
    entry = model_entry('dsdmsr')
    assert entry.modality == 'disparity_map' and MAP_MODELS == ('dsdmsr',) and 'dsdmsr' not in STEREO_MODELS
    assert entry.scales == (2, 4, 8, 16) and not entry.estimates_disparity
    assert [(o.name, o.of_weights) for o in entry.options] == [
        ('dsdmsr_unit', True), ('dsdmsr_vdsr_depth', True), ('dsdmsr_fusion_inputs', True),
        ('dsdmsr_fusion_combine', True)]
    r = entry.recipe       # third-party train_dtu.py: Adam 1e-3, batch 32, 200 epochs, constant learning rate
    assert (r.optimizer, r.lr, r.batch_size, r.n_epochs, r.schedule, r.gamma) == ('adam', 1e-3, 32, 200, 'step', 1.0)
    args, _ = resolve_config(build_parser().parse_args(['--model', 'dsdmsr', '--scale_factor', '8']))
    assert (args.trainset, args.lr, args.batch_size) == ('synthetic', 1e-3, 32)
    model = build_model('dsdmsr', 8, dsdmsr_unit='vdsr', dsdmsr_vdsr_depth=4)
    assert sum(p.numel() for p in model.parameters()) == 13 * (64 * 9 * 2 + 64 * 64 * 9 * 2)


# ---- train.py: the map batches through the same loop

def test_one_step_on_a_map_batch_lowers_the_loss(tmp_path):
    run = train.setup(*resolve_config(build_parser().parse_args(tiny_run(tmp_path / 'run', '--lr', '1e-3'))))
    try:
        batch = default_collate([run.dataset[i] for i in range(2)])        # (lr_map, hr_map, hr_valid)
        names, before, metrics = train_step(run, batch)
        _, after, _ = train_step(run, batch)
    finally:
        run.lock.release()
    assert names == ['stage1', 'fused', 'total'] and set(metrics) == {'rmse'}
    assert math.isfinite(metrics['rmse']) and after[-1] < before[-1]


def test_train_py_writes_logs_and_a_checkpoint(trained):
    rows = [json.loads(line) for line in (trained.parent / 'log.jsonl').read_text().splitlines()]
    assert rows[0]['iterations'] == 2 and rows[0]['skipped_patches'] == 0 and rows[0]['rmse'] > 0
    assert {'loss_stage1', 'loss_fused', 'loss_total'} <= set(rows[0]) and 'psnr_left' not in rows[0]
    assert (trained.parent / 'curves.png').is_file()
    saved = torch.load(trained, weights_only=True)
    assert saved['args']['model'] == 'dsdmsr' and saved['args']['trainset'] == 'synthetic' and saved['epoch'] == 1


def test_train_py_on_a_folder_of_maps(tmp_path):
    maps = tmp_path / 'maps'
    maps.mkdir()
    write_pfm(maps / 'a.pfm', np.full((20, 24), 30.0, dtype=np.float32))
    kitti = np.zeros((20, 24), dtype=np.float32)
    kitti[::3] = 12.5                                          # sparse, as KITTI: 0 = no ground truth
    write_kitti_disparity(maps / 'b.png', kitti)
    run = tmp_path / 'run'
    assert train.main(tiny_run(run, '--trainset', 'disparity', '--trainset_dir', str(maps))) == 0
    assert torch.load(run / 'last.pth', weights_only=True)['args']['trainset'] == 'disparity'


def test_skipped_crops_are_counted_across_loader_workers(tmp_path):
    """The log's skipped_patches: redraws in DataLoader worker processes reach the main process's count."""
    disparity = np.full((40, 40), np.inf, dtype=np.float32)
    disparity[:20, :20] = 20.0                                  # valid only in one corner
    write_pfm(tmp_path / 'sparse.pfm', disparity)
    data = DisparityMapPatches(2, folder=tmp_path, length=8, lr_patch=4, augment=False, seed=0)
    for i in range(8):
        data[i]
    in_process = data.skipped
    data.set_epoch(0)
    assert data.skipped == 0
    for _ in DataLoader(data, batch_size=2, num_workers=2):
        pass
    assert data.skipped == in_process > 0


# ---- test_disp.py on maps

def write_maps(folder: Path) -> None:
    folder.mkdir()
    constant = np.full((16, 20), 10.0, dtype=np.float32)
    constant[3:6, 4:9] = np.inf                                 # Middlebury holes
    write_pfm(folder / 'constant.pfm', constant)
    write_pfm(folder / 'empty.pfm', np.full((8, 8), np.inf, dtype=np.float32))
    ramp = np.tile(np.linspace(5, 40, 24, dtype=np.float32), (12, 1))
    ramp[::4, ::5] = 0                                          # KITTI: 0 = no ground truth
    write_kitti_disparity(folder / 'sub' / 'ramp.png', ramp)


def test_test_disp_scores_a_folder_of_maps(trained, tmp_path):
    write_maps(tmp_path / 'maps')
    results = test_disp.main(['--model', 'dsdmsr', '--scale_factor', '2', '--checkpoint', str(trained), '--maps',
                              str(tmp_path / 'maps'), '--results_dir', str(tmp_path / 'out')])
    r = results['maps']
    assert r['num_maps'] == 2 and r['skipped_maps'] == ['empty']
    assert list(r['rows']) == ['nearest', 'bicubic', 'stage1', 'fused']
    constant = r['maps']['constant']
    assert constant['nearest']['rmse'] == 0.0 and constant['bicubic']['epe'] == pytest.approx(0.0, abs=1e-5)
    assert all(math.isfinite(v) for row in r['rows'].values() for v in row.values())
    pictures = tmp_path / 'out' / 'dsdmsr_x2_synthetic_last' / 'maps' / 'maps'   # <network>_x<s>_<trainset>_<file>
    assert {p.name for p in pictures.iterdir()} >= {'constant_disp.png', 'constant_error.png', 'constant_figure.png',
                                                      'sub_ramp_disp16.png', 'sub_ramp_bicubic_error.png'}


def test_test_disp_falls_back_on_the_built_in_motorcycle(trained, tmp_path):
    results = test_disp.main(['--model', 'dsdmsr', '--scale_factor', '2', '--checkpoint', str(trained), '--no_save',
                              '--testset_dir', str(tmp_path / 'none')])
    rows = results['sample']['rows']
    assert results['sample']['num_maps'] == 1
    # bicubic of the mask-aware x2 LR map: a property of the data, not of the network
    assert rows['bicubic']['rmse'] == pytest.approx(0.8022, abs=1e-3) and rows['nearest']['epe'] < 0.2


# ---- --upsampler: SSRDE-FNet's LR PAM disparity, super-resolved

def test_upsampled_pam_is_in_hr_pixels():
    """disp_pam is in LR pixels; the upsampled maps are s x it; the network's own bilinear PAM disparity is s x it
    bilinearly upsampled plus (s - 1) / 2 (its coordinates, not its disparities, are scaled)."""
    torch.manual_seed(0)
    scale = 2
    network = build_model('ssrdefnet', scale).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = network(torch.rand(1, 3, 30, 30, generator=g), torch.rand(1, 3, 30, 30, generator=g))
    pam = out.disp_pam[1].left
    assert pam.shape == (1, 1, 30, 30) and torch.isfinite(pam).all()
    upsampler = lambda x: SimpleNamespace(fused=upsample_nearest(x, scale))  # noqa: E731
    maps = test_disp.upsampled_pam(out, upsampler, scale)
    assert maps['pam_upsampler'].shape == (60, 60)
    torch.testing.assert_close(maps['pam_upsampler'], (upsample_nearest(pam, scale)[0, 0]).clamp(0, 192))
    torch.testing.assert_close(maps['pam_bicubic'], upsample_bicubic(pam, scale)[0, 0].clamp(0, 192))
    own = out.disp_lr[1].left[0, 0]
    bilinear = torch.nn.functional.interpolate(pam * scale, scale_factor=scale, mode='bilinear',
                                               align_corners=False)[0, 0]
    unclamped = -torch.nn.functional.max_pool2d(-pam, 3, stride=1, padding=1) > 0     # no neighbour clamped at 0
    inside = upsample_nearest(unclamped.float(), scale)[0, 0].bool()
    inside[:scale, :], inside[-scale:, :], inside[:, :scale], inside[:, -scale:] = False, False, False, False
    assert inside.sum() > 100
    torch.testing.assert_close(own[inside] - bilinear[inside], torch.full_like(own[inside], (scale - 1) / 2))


def write_stereo_set(root: Path) -> None:
    """K2015 in the test-set layout: one 30x30 LR pair (x2) with a KITTI ground truth."""
    rng = np.random.default_rng(0)
    hr, lr = root / 'K2015' / 'hr' / '000000', root / 'K2015' / 'lr_x2' / '000000'
    hr.mkdir(parents=True)
    lr.mkdir(parents=True)
    for name, folder, size in (('hr0', hr, 60), ('hr1', hr, 60), ('lr0', lr, 30), ('lr1', lr, 30)):
        write_image(folder / f'{name}.png', rng.random((size, size, 3)).astype(np.float32))
    write_kitti_disparity(hr / 'dispocc0.png', np.where(rng.random((60, 60)) < 0.7, 8.0, 0.0).astype(np.float32))


def test_upsampler_scores_beside_the_network(trained, tmp_path):
    torch.manual_seed(0)
    network = tmp_path / 'ssrdefnet_x2.pth'
    save_checkpoint(network, build_model('ssrdefnet', 2), args={'model': 'ssrdefnet', 'scale_factor': 2})
    write_stereo_set(tmp_path / 'test')
    results = test_disp.main(['--scale_factor', '2', '--checkpoint', str(network), '--testset_dir',
                              str(tmp_path / 'test'), '--upsampler', str(trained), '--no_save'])
    r = results['K2015']
    for key in ('lr_r2', 'pam_bicubic', 'pam_upsampler', 'hr_r2'):
        for metric in ('epe_all', 'rmse_all', 'bad3_noc'):
            assert math.isfinite(r[f'{metric}_{key}']), (metric, key)


# ---- the committed demo checkpoints on Motorcycle (never trained on)

@pytest.mark.parametrize('scale', [4, 8])
def test_demo_checkpoints_beat_bicubic_on_motorcycle(scale, tmp_path):
    path = ROOT / 'checkpoints' / f'dsdmsr_demo_x{scale}.pth'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    rows = test_disp.main(['--model', 'dsdmsr', '--scale_factor', str(scale), '--checkpoint', str(path),
                           '--datasets', 'sample', '--no_save'])['sample']['rows']
    assert (rows['bicubic']['rmse'], rows['bicubic']['epe']) == pytest.approx(BICUBIC_MOTORCYCLE[scale], abs=1e-4)
    assert rows['fused']['rmse'] < 0.97 * rows['bicubic']['rmse']
    assert rows['fused']['epe'] < 0.97 * rows['bicubic']['epe']
    if DEMO_NUMBERS[scale] is not None:
        assert (rows['fused']['rmse'], rows['fused']['epe']) == pytest.approx(DEMO_NUMBERS[scale], abs=2e-3)


# ---- the scripts that run stereo pairs refuse it, naming the one that runs it

def test_stereo_scripts_refuse_a_map_network(trained, capsys):
    use = 'dsdmsr is a disparity-map network: use test_disp.py --model dsdmsr'
    ssrdefnet_demo = ROOT / 'checkpoints' / 'ssrdefnet_demo_x4.pth'
    cases = [(test_sr.main, ['--model', 'dsdmsr'], 2, 'error: test_sr.py runs stereo networks'),
             (test_sr.main, ['--checkpoint', str(trained), '--scale_factor', '2'], 2, use),
             (bench.main, ['--model', 'dsdmsr'], 2, 'error: bench.py runs stereo networks'),
             (demo.main, ['--checkpoint', str(trained)], 2, 'error: demo.py runs stereo networks'),
             (train.main, ['--model', 'dsdmsr', '--trainset', 'sample', '--num_workers', '0'], 1,
              'dsdmsr trains on disparity maps: --trainset synthetic'),
             (test_disp.main, ['--checkpoint', str(ssrdefnet_demo), '--upsampler', str(ssrdefnet_demo)], 2,
              'expected a checkpoint of a disparity-map network'),
             (test_disp.main, ['--scale_factor', '4', '--checkpoint', str(ssrdefnet_demo), '--upsampler',
                               str(trained)], 2, 'is a x2 dsdmsr; this run is x4'),
             (test_disp.main, ['--model', 'dsdmsr'], 2, '--model dsdmsr needs --checkpoint PATH'),
             (test_disp.main, ['--model', 'dsdmsr', '--checkpoint', str(trained)], 1,
              'x2 weights but the model was built for x4; use --scale_factor 2')]
    for main, argv, status, message in cases:
        code, err = outcome(main, argv, capsys)
        assert code == status and message in err and sum('error' in line for line in err.splitlines()) == 1, \
            (argv, err)
