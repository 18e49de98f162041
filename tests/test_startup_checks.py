"""Issue 28 items 6-7: what can be checked at start-up is checked before any work, each missing weight file is named
with all the others, a pickled object in a file is refused without torch's or numpy's advice to load it unsafely."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import make_figs
import train
from data.readers import read_disparity
from models import build_model, perceptual
from models.checkpoint import read_checkpoint
from utils import run_script

ROOT = Path(__file__).resolve().parents[1]
DSDMSR_X4 = ROOT / 'checkpoints' / 'dsdmsr_demo_x4.pth'
TINY = ['--model', 'nafssr-t', '--scale_factor', '4', '--trainset', 'sample', '--batch_size', '2', '--num_workers',
        '0', '--n_epochs', '1', '--max_iters_per_epoch', '1']


def outcome(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `python script.py argv`, through the scripts' top-level handler."""
    status = run_script(main, argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'a bug' not in err, err
    return status, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith('error')]


def test_a_disparity_map_network_as_teacher_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, 'setup', lambda *a, **k: pytest.fail('setup ran: data and networks were built'))
    code, err = outcome(train.main, TINY + ['--checkpoint_dir', str(tmp_path / 'run'), '--teacher', str(DSDMSR_X4)],
                        capsys)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert f'--teacher {DSDMSR_X4} is dsdmsr, a disparity-map network: a teacher must output what the student ' \
           f'nafssr-t does' in err
    assert not (tmp_path / 'run').exists()


def test_every_missing_weight_file_is_named_in_one_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, 'setup', lambda *a, **k: pytest.fail('setup ran: data and networks were built'))
    (tmp_path / 'vgg').mkdir()
    argv = TINY + ['--init', str(tmp_path / 'init.pth'), '--teacher', str(tmp_path / 'teacher_a.pth'),
                   '--teacher', str(tmp_path / 'teacher_b.pth'), '0.5', '--perceptual', '--vgg_weights',
                   str(tmp_path / 'vgg'), '--checkpoint_dir', str(tmp_path / 'run')]
    code, err = outcome(train.main, argv, capsys)
    assert code == 1 and len(error_lines(err)) == 1 and len(err.strip().splitlines()) == 1, err
    assert 'error: 4 weight files are missing or unreadable' in err
    for name in ('init.pth', 'teacher_a.pth', 'teacher_b.pth', 'vgg16-397923af.pth'):
        assert name in err, name


def pickled_checkpoint(path: Path) -> Path:
    """A file torch.load(weights_only=True) refuses: weights beside a pickled argparse.Namespace."""
    torch.save({'state_dict': build_model('nafssr-t', 4).state_dict(), 'args': argparse.Namespace(lr=1)}, path)
    return path


def test_a_pickled_object_is_refused_by_name_without_the_weights_only_advice(tmp_path, capsys):
    path = pickled_checkpoint(tmp_path / 'pickled.pth')
    for read in (read_checkpoint, perceptual.load_file):
        with pytest.raises(ValueError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and 'argparse.Namespace' in message and '\n' not in message
        assert 'weights_only' not in message and 'trust' not in message
    # as scripts report it: --teacher and --init, one line each
    code, err = outcome(train.main, TINY + ['--teacher', str(path), '--checkpoint_dir', str(tmp_path / 'run')], capsys)
    assert code == 1 and f'--teacher: {path}: this checkpoint holds pickled Python objects' in err, err
    assert 'weights_only' not in err and len(error_lines(err)) == 1
    import demo
    code, err = outcome(demo.main, ['--checkpoint', str(path), '--out', str(tmp_path / 'demo')], capsys)
    assert code == 1 and str(path) in err and 'weights_only' not in err, err


def test_an_npy_disparity_of_pickled_objects_is_refused_by_name(tmp_path):
    objects = tmp_path / 'objects.npy'
    np.save(objects, np.array([{'a': 1}], dtype=object), allow_pickle=True)
    cube = tmp_path / 'cube.npy'
    np.save(cube, np.zeros((2, 3, 3)))
    for path, words in ((objects, 'cannot read this .npy disparity map'), (cube, 'a 3-D array of float64')):
        with pytest.raises(ValueError) as caught:
            read_disparity(path)
        assert str(path) in str(caught.value) and words in str(caught.value)
        assert 'allow_pickle' not in str(caught.value) and 'unsafely' not in str(caught.value)


@pytest.mark.parametrize('content, words', [
    ('[]', 'not a bench.py --json file'),
    ('{"model": "m", "device": "cpu", "torch": "2", "rows": []}', 'no successful measurement to draw (0 rows'),
    ('{"model": "m", "device": "cpu", "torch": "2", "rows": [{"error": "timeout"}]}', 'no successful measurement'),
    ('{"model": "m", "device": "cpu", "torch": "2", "rows": [{"kind": "infer", "scale": 4, "batch": 1, "h": 30, '
     '"w": 90, "variant": "ours", "count_only": true, "gflop": 4.5}]}', 'holds no timings (a bench.py --count-only'),
    ('{"rows": [', 'not a JSON file'),
])
def test_make_figs_checks_the_bench_file_before_the_demo_runs(content, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(make_figs, 'demo_figures', lambda *a: pytest.fail('the demo ran before --bench was read'))
    bench = tmp_path / 'bench.json'
    bench.write_text(content)
    code, err = outcome(make_figs.main, ['--bench', str(bench), '--out', str(tmp_path / 'figs')], capsys)
    assert code == 1 and f'error: --bench {bench}: {words}' in err and len(error_lines(err)) == 1, err
    assert not (tmp_path / 'figs').exists()


def test_an_iteration_based_run_once_finished_says_it_is_not_extended_by_resuming(tmp_path, capsys):
    run = tmp_path / 'run'
    assert train.main(TINY[:-4] + ['--total_iters', '1', '--checkpoint_dir', str(run)]) == 0
    assert json.loads((run / 'args.json').read_text())['total_iters'] == 1
    code, err = outcome(train.main, ['--resume', str(run / 'last.pth')], capsys)
    assert code == 2 and 'this run has already finished its 1 iterations (--total_iters is part of the run' in err
    assert f'start a new run from it with --init {run / "last.pth"}' in err and len(error_lines(err)) == 1
    # a flag that would change its length is refused by name, never ignored (the run counts iterations)
    for extra, named in ((['--n_epochs', '5'], '--n_epochs 5 (the run counts iterations: total_iters 1)'),
                         (['--total_iters', '8'], "--total_iters 8 (the run's: 1)")):
        code, err = outcome(train.main, ['--resume', str(run / 'last.pth'), *extra], capsys)
        assert code == 2 and named in err and f'--init {run / "last.pth"}' in err and len(error_lines(err)) == 1, err
    # --export alone still exports a finished run (exit 0)
    assert train.main(['--resume', str(run / 'last.pth'), '--export', str(tmp_path / 'again.pth')]) == 0
    assert read_checkpoint(tmp_path / 'again.pth')[1]['args']['total_iters'] == 1


def test_a_folder_where_a_file_is_expected_is_called_a_folder(tmp_path, capsys):
    from data.readers import read_image, read_pfm
    from weights import resolve_checkpoint
    for read, what in ((read_checkpoint, 'checkpoint file'), (read_image, 'image file'),
                       (read_pfm, 'disparity file'), (resolve_checkpoint, 'checkpoint file')):
        with pytest.raises(FileNotFoundError, match=f'{tmp_path} is a folder, not an? {what}'):
            read(tmp_path)
    import demo
    code, err = outcome(demo.main, ['--checkpoint', str(tmp_path), '--out', str(tmp_path / 'out')], capsys)
    assert code == 1 and f'error: {tmp_path} is a folder, not a checkpoint file' in err, err


def test_an_init_of_another_network_is_refused_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    from training.tasks import StereoSR
    monkeypatch.setattr(StereoSR, 'build_dataset', lambda *a: pytest.fail('the training data was read first'))
    argv = TINY + ['--init', str(DSDMSR_X4), '--checkpoint_dir', str(tmp_path / 'run')]
    code, err = outcome(train.main, argv, capsys)
    assert code == 1 and f'--init {DSDMSR_X4} is a checkpoint of dsdmsr, not nafssr-t' in err, err


def test_a_json_path_that_is_a_folder_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    import bench
    import test_disp
    import test_sr
    monkeypatch.setattr(bench, 'run_case', lambda *a: pytest.fail('a case ran before --json was checked'))
    for main, argv in ((test_sr.main, ['--model', 'bicubic', '--scale_factor', '4', '--datasets', 'sample']),
                       (test_disp.main, ['--model', 'dsdmsr', '--scale_factor', '4', '--checkpoint', str(DSDMSR_X4)]),
                       (bench.main, ['--model', 'nafssr-t', '--count-only', '--sizes', '30x90', '--cases', 'infer'])):
        code, err = outcome(main, argv + ['--json', str(tmp_path)], capsys)
        assert code == 2 and f'error: --json {tmp_path} is a folder; give a file name' in err, (main, err)
    blocked = tmp_path / 'file'
    blocked.write_text('not a folder')
    code, err = outcome(test_sr.main, ['--model', 'bicubic', '--datasets', 'sample', '--json', str(blocked / 'x.json')],
                        capsys)
    assert code == 1 and f'error: --json {blocked / "x.json"}: cannot create its folder' in err, err


def test_test_disp_names_a_missing_checkpoint_and_upsampler_together(tmp_path, capsys):
    import test_disp
    code, err = outcome(test_disp.main, ['--checkpoint', str(tmp_path / 'net.pth'), '--upsampler',
                                         str(tmp_path / 'up.pth')], capsys)
    assert code == 1 and f'checkpoint {tmp_path / "net.pth"} not found' in err, err
    assert f'--upsampler {tmp_path / "up.pth"} not found' in err and len(error_lines(err)) == 1


def test_test_sr_names_a_missing_checkpoint_lpips_files_and_disparity_net_together(tmp_path, capsys, monkeypatch):
    import test_sr
    monkeypatch.setattr(perceptual, 'hub_checkpoints', lambda: tmp_path / 'hub')     # no cached AlexNet here
    monkeypatch.setattr(perceptual, 'installed_lpips_heads', lambda: None)
    monkeypatch.setattr(test_sr, 'load_model', lambda *a, **k: pytest.fail('a network was loaded first'))
    (tmp_path / 'lpips').mkdir()
    code, err = outcome(test_sr.main, ['--checkpoint', str(tmp_path / 'net.pth'), '--datasets', 'sample', '--lpips',
                                       '--lpips_weights', str(tmp_path / 'lpips'), '--stereo_consistency',
                                       '--disparity_net', str(tmp_path / 'disp.pth')], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and 'error: 4 files are missing' in err, err
    for name in ('net.pth', 'alex.pth', 'alexnet-owt-7be5be79.pth', 'disp.pth'):
        assert name in err, name
    # the lpips package's own heads, or a trunk --download_weights will fetch, are not missing
    monkeypatch.setattr(perceptual, 'installed_lpips_heads', lambda: tmp_path / 'alex.pth')
    left = perceptual.missing_lpips_files(tmp_path / 'lpips')
    assert len(left) == 1 and 'alexnet-owt-7be5be79.pth' in left[0]
    assert perceptual.missing_lpips_files(tmp_path / 'lpips', download=True) == []
    assert perceptual.missing_lpips_files(perceptual.RANDOM) == []
    # one missing file: its own message, as before
    code, err = outcome(test_sr.main, ['--checkpoint', str(tmp_path / 'net.pth'), '--datasets', 'sample'], capsys)
    assert code == 1 and f'--checkpoint: checkpoint {tmp_path / "net.pth"} not found' in err, err


def test_make_figs_names_its_flag_for_an_output_folder_or_bench_file_it_cannot_use(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(make_figs, 'demo_figures', lambda *a: pytest.fail('the demo ran first'))
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    code, err = outcome(make_figs.main, ['--out', str(blocker / 'figs')], capsys)
    assert code == 1 and f'error: --out {blocker / "figs"}: cannot create the output folder' in err, err
    code, err = outcome(make_figs.main, ['--bench', str(tmp_path), '--out', str(tmp_path / 'figs')], capsys)
    assert code == 1 and f'error: --bench {tmp_path} is a folder' in err, err


def test_a_checkpoint_dir_that_cannot_be_made_is_named_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    from training.tasks import StereoSR
    monkeypatch.setattr(StereoSR, 'build_dataset', lambda *a: pytest.fail('the training data was read first'))
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    code, err = outcome(train.main, TINY + ['--checkpoint_dir', str(blocker / 'run')], capsys)
    assert code == 1 and f'error: --checkpoint_dir {blocker / "run"}: cannot create the run folder' in err, err


@pytest.mark.parametrize('betas', [['2', '0.999'], ['0.9', 'nan'], ['0.9', '1'], ['-0.1', '0.9'], ['x', '0.9']])
def test_adam_betas_outside_0_1_are_refused_naming_the_flag(betas, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(TINY + ['--betas', *betas])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and 'argument --betas' in err and 'is not in [0, 1)' in err, err


def test_a_run_refused_at_start_up_leaves_no_run_folder(tmp_path, capsys):
    """The --checkpoint_dir check makes nothing: a run that a later start-up check refuses leaves no empty folder."""
    run = tmp_path / 'a' / 'run'
    code, err = outcome(train.main, TINY + ['--batch_size', '3', '--grad_accum', '2', '--checkpoint_dir', str(run)],
                        capsys)
    assert code == 2 and 'must split into' in err and not (tmp_path / 'a').exists(), err


def test_a_flag_that_would_redefine_a_resumed_run_is_refused_not_replaced(tmp_path, capsys):
    """--resume with a different --lr / --batch_size: the run refuses and names each flag with the run's value (it
    used to continue with the checkpoint's values after a warning, the flags silently without effect)."""
    run = tmp_path / 'run'
    assert train.main(TINY + ['--n_epochs', '1', '--checkpoint_dir', str(run)]) == 0
    code, err = outcome(train.main, ['--resume', str(run / 'last.pth'), '--n_epochs', '2', '--lr', '0.5',
                                     '--batch_size', '4'], capsys)
    assert code == 2 and "--batch_size 4 (the run's: 2); --lr 0.5 (the run's: " in err, err
    assert f'--init {run / "last.pth"}' in err and sum('error' in line for line in err.splitlines()) == 1
    assert train.main(['--resume', str(run / 'last.pth'), '--n_epochs', '2']) == 0       # a SETTING may change
