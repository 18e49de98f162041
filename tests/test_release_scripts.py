"""The scripts take the authors' releases by name (weights.resolve_checkpoint): test_sr.py and demo.py --checkpoint,
train.py --init and --teacher; test_sr.py --datasets sample scores any weights on the built-in pair.

The tiny tests use random weights in a release table of the test's own (a toy file under a release name, the cache
folder in a temporary directory). The tests with the authors' files of ../shared/weights (skipped when absent)
reach them through symlinks, never copies, and check what users come for: the gain over bicubic on Motorcycle x4.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

import test_sr
import train
import weights
from models import build_model
from models.checkpoint import load_model, save_checkpoint
from models.releases import RELEASES, Release
from tests.conftest import SHARED
from training.flags import build_parser, resolve_config
from utils import UsageError

SHARED_WEIGHTS = SHARED / 'weights'
FAILS = (ValueError, OSError)   # what a script's main raises; run_script prints it as one line
# Motorcycle x4 (scikit-image's pair, MATLAB-bicubic LR, (L+R)/2 RGB PSNR of the float SR, whole views): the
# bicubic baseline, measured with the official code (issue 30) and by test_sr.py alike.
BICUBIC_MOTORCYCLE_X4 = 23.8208
TRAIN_TINY = ['--trainset', 'sample', '--batch_size', '2', '--num_workers', '0', '--max_iters_per_epoch', '1',
              '--n_epochs', '1', '--total_iters', '0']


def toy_release(tmp_path: Path, monkeypatch, model: str = 'nafssr-t', scale: int = 4, seed: int = 0) -> Release:
    """Random `model` weights saved as an authors' BasicSR file ({'params': ...}, which implies BGR views), in a cache
    folder of the test's own, under the release name '<model>_x<scale>' of a table that holds only it."""
    torch.manual_seed(seed)
    cache = tmp_path / 'cache'
    cache.mkdir(exist_ok=True)
    path = cache / f'toy_{model}_x{scale}.pth'
    torch.save({'params': build_model(model, scale).state_dict()}, path)
    release = Release(name=f'{model}_x{scale}', model=model, scale=scale, file=path.name, pages=('https://example',),
                      source='test', weights_key='params', channel_order='bgr', format='test',
                      sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(weights, 'RELEASES', {release.name: release})
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    return release


# ---- test_sr.py --datasets sample

def test_sample_scores_a_release_by_name_beside_bicubic(tmp_path, monkeypatch):
    """A release name alone sets the network and the scale (no --model, no --scale_factor); the sample's bicubic row
    is the measured baseline and the gain is the difference of the two rows."""
    release = toy_release(tmp_path, monkeypatch)
    results = test_sr.main(['--checkpoint', release.name, '--datasets', 'sample', '--results_dir',
                            str(tmp_path / 'out'), '--device', 'cpu'])
    sample, bicubic = results['sample'], results['sample (bicubic)']
    assert sorted(p.name for p in (tmp_path / 'out').rglob('*.png')) == ['Motorcycle_L.png', 'Motorcycle_R.png']
    assert sample['scale_factor'] == 4 and sample['num_scenes'] == 1 and 'toy_nafssr-t_x4.pth' in sample['weights']
    assert bicubic['psnr_avg'] == pytest.approx(BICUBIC_MOTORCYCLE_X4, abs=1e-3)
    assert sample['gain_over_bicubic'] == pytest.approx(sample['psnr_avg'] - bicubic['psnr_avg'])
    assert sample['psnr_avg'] < bicubic['psnr_avg']         # random weights: no better than bicubic


def test_the_scale_defaults_to_the_one_a_project_checkpoint_records(tmp_path, capsys):
    from data.readers import write_image
    torch.manual_seed(1)
    path = tmp_path / 'tiny_x2.pth'
    save_checkpoint(path, build_model('nafssr-t', 2), epoch=0, args={'model': 'nafssr-t', 'scale_factor': 2})
    write_image(tmp_path / 'images' / 'a.png', torch.rand(36, 40, 3).numpy())
    results = test_sr.main(['--checkpoint', str(path), '--images', str(tmp_path / 'images'), '--device', 'cpu'])
    assert results['images']['num_images'] == 1 and '# Single-image SR x2: nafssr-t' in capsys.readouterr().out


def test_a_release_name_that_contradicts_the_flags_or_is_missing_is_one_line(tmp_path, monkeypatch):
    release = toy_release(tmp_path, monkeypatch)
    with pytest.raises(UsageError, match='holds x4 weights; use --scale_factor 4'):
        test_sr.main(['--checkpoint', release.name, '--scale_factor', '2', '--datasets', 'sample'])
    with pytest.raises(UsageError, match='holds nafssr-t weights, not nafssr-s'):
        test_sr.main(['--checkpoint', release.name, '--model', 'nafssr-s', '--datasets', 'sample'])
    (tmp_path / 'cache' / release.file).write_bytes(b'another file')
    with pytest.raises(FAILS, match=f'SHA-256 [0-9a-f]{{64}}, expected {release.sha256}'):
        test_sr.main(['--checkpoint', release.name, '--datasets', 'sample'])
    (tmp_path / 'cache' / release.file).unlink()
    with pytest.raises(FileNotFoundError, match=f'{release.file} not found in .*; no direct download'):
        test_sr.main(['--checkpoint', release.name, '--datasets', 'sample', '--download_weights'])


def test_demo_takes_a_release_name(tmp_path, monkeypatch):
    import demo
    from data.readers import write_image
    release = toy_release(tmp_path, monkeypatch, scale=4)
    views = [tmp_path / 'left.png', tmp_path / 'right.png']    # a small LR pair: the network, not the demo, matters
    for path in views:
        write_image(path, torch.rand(32, 40, 3).numpy())
    metrics = demo.main(['--checkpoint', release.name, '--left', str(views[0]), '--right', str(views[1]), '--out',
                         str(tmp_path / 'demo'), '--device', 'cpu'])
    assert metrics['scale_factor'] == 4 and metrics['lr_size'] == [32, 40]
    assert (tmp_path / 'demo' / 'sr_left.png').is_file()


# ---- train.py --init / --teacher

def setup_run(argv: list[str]) -> train.Run:
    """train.py's setup of `argv` (no epoch run), its folder lock released."""
    args = build_parser().parse_args(argv)
    train.resolve_weight_names(args)
    config, checkpoint = resolve_config(args)
    run = train.setup(config, checkpoint)
    run.lock.release()
    return run


def test_init_from_an_authors_bgr_file_builds_the_network_its_weights_need(tmp_path, monkeypatch, caplog):
    """--init with a BasicSR 'params' file (NAFSSR/CVHSSR/EHFSSR releases: trained on BGR views) starts from the
    network that load_model (test_sr.py, demo.py) builds from it, and the run records channel_order='bgr'."""
    caplog.set_level(logging.INFO, logger='train')
    release = toy_release(tmp_path, monkeypatch, scale=2, seed=3)
    path = tmp_path / 'cache' / release.file
    for init, extra in ((str(path), ['--model', 'nafssr-t']), (release.name, [])):   # a path; a release name
        run = setup_run(TRAIN_TINY + ['--scale_factor', '2', '--init', init, *extra,
                                      '--checkpoint_dir', str(tmp_path / f'run{len(extra)}')])
        assert run.config.model == 'nafssr-t' and run.config.options['channel_order'] == 'bgr'
        assert "--init: channel_order='bgr'" in caplog.text
        reference, _ = load_model(path, 2, name='nafssr-t')
        as_rgb = build_model('nafssr-t', 2)
        as_rgb.load_state_dict(reference.state_dict())
        left, right = torch.rand(2, 1, 3, 30, 34)
        with torch.no_grad():
            ours, expected = run.model.eval()(left, right).sr_left, reference(left, right).sr_left
            assert torch.equal(ours, expected)
            assert (as_rgb.eval()(left, right).sr_left - expected).abs().max() > 1e-3   # what --init did before


def test_init_refuses_a_checkpoint_of_another_network(tmp_path):
    path = tmp_path / 'other.pth'
    save_checkpoint(path, build_model('nafssr-t', 2), epoch=0, args={'model': 'nafssr-t', 'scale_factor': 2})
    with pytest.raises(FAILS, match='is a checkpoint of nafssr-t, not nafssr-s; use --model nafssr-t'):
        setup_run(TRAIN_TINY + ['--scale_factor', '2', '--model', 'nafssr-s', '--init', str(path),
                                '--checkpoint_dir', str(tmp_path / 'run')])


def test_teacher_by_release_name_records_the_file_and_its_network(tmp_path, monkeypatch):
    release = toy_release(tmp_path, monkeypatch, scale=2, seed=4)
    run = tmp_path / 'run'
    assert train.main(TRAIN_TINY + ['--model', 'nafssr-t', '--scale_factor', '2', '--teacher', release.name, '0.5',
                                    '--checkpoint_dir', str(run)]) == 0
    saved = torch.load(run / 'last.pth', map_location='cpu', weights_only=True)
    teacher = saved['teachers'][0]
    assert (teacher['path'], teacher['model'], teacher['weight']) == (str(tmp_path / 'cache' / release.file),
                                                                      'nafssr-t', 0.5)
    assert teacher['sha256'] == release.sha256
    with pytest.raises(UsageError, match='--teacher: .*holds nafssr-t weights, not nafssr-s'):
        train.main(TRAIN_TINY + ['--model', 'nafssr-t', '--scale_factor', '2', '--teacher', release.name, 'nafssr-s',
                                 '--checkpoint_dir', str(tmp_path / 'run2')])


# ---- the authors' files (../shared/weights): what users come for

@pytest.fixture(scope='module')
def shared_weights() -> Path:
    if not (SHARED_WEIGHTS / 'SHA256SUMS').is_file():
        pytest.skip(f'the authors\' weights are not at {SHARED_WEIGHTS}')
    return SHARED_WEIGHTS


@pytest.mark.parametrize('model, name', [('cvhssr-t', 'cvhssr-t_x4'), ('ehfssr-s', 'ehfssr-s_x4')])
def test_authors_weights_gain_over_bicubic_on_motorcycle(shared_weights, model, name, capsys):
    """Issue 30: at least +3.0 dB over MATLAB bicubic on Motorcycle x4 (official code: CVHSSR-T 26.95 dB, EHFSSR-S
    26.96 dB, bicubic 23.82 dB), from the file as the authors ship it, by path and --model."""
    results = test_sr.main(['--model', model, '--checkpoint', str(shared_weights / RELEASES[name].file),
                            '--datasets', 'sample', '--no_save', '--device', 'cpu'])
    assert results['sample']['scale_factor'] == 4
    assert results['sample (bicubic)']['psnr_avg'] == pytest.approx(BICUBIC_MOTORCYCLE_X4, abs=1e-3)
    assert results['sample']['gain_over_bicubic'] >= 3.0
    assert f'sample: {model} +{results["sample"]["gain_over_bicubic"]:.2f} dB over bicubic' in capsys.readouterr().out


def test_authors_cvhssr_teacher_runs_a_training_step(shared_weights, tmp_path, monkeypatch):
    """train.py --teacher cvhssr-t_x4 (the authors' file, by release name, through a symlink in the cache folder):
    one step of a tiny student at x4, the teacher built as the file needs (BGR)."""
    release = RELEASES['cvhssr-t_x4']
    (tmp_path / release.file).symlink_to(shared_weights / release.file)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    run = tmp_path / 'run'
    argv = TRAIN_TINY + ['--model', 'nafssr-t', '--scale_factor', '4', '--teacher', 'cvhssr-t_x4',
                         '--checkpoint_dir', str(run)]
    assert train.main(argv) == 0           # one epoch of one iteration
    teacher = torch.load(run / 'last.pth', map_location='cpu', weights_only=True)['teachers'][0]
    assert teacher['model'] == 'cvhssr-t' and teacher['sha256'] == release.sha256


def test_the_trained_figure_is_not_drawn_without_the_files(tmp_path, capsys):
    import make_figs
    assert make_figs.trained_figure(tmp_path, tmp_path / 'trained.png') is None
    assert not (tmp_path / 'trained.png').exists()
    assert 'no trained-network figure: cvhssr-t_x4: CVHSSR_Tx4.pth not found' in capsys.readouterr().out
