"""Every script's exit status is part of its contract (issue 28 item 1): each entry point runs here as a user and CI
run it, `python script.py ...` in a subprocess, on tiny inputs made from the built-in sample (crops of scikit-image's
Motorcycle), chained as the README chains them (prepare -> train -> evaluate -> figures), and must exit 0 and write
what it promises, readable. Sizes are the smallest each script takes, so that the file stays fast on CI."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from data.readers import write_pfm
from models.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'PYTHONDONTWRITEBYTECODE': '1'}
DEMO_X4 = ROOT / 'checkpoints' / 'ssrdefnet_demo_x4.pth'
DSDMSR_X4 = ROOT / 'checkpoints' / 'dsdmsr_demo_x4.pth'
# Every script with a `__main__`, and the test that runs it as a subprocess (test_every_script_is_run_somewhere).
COVERED = {
    'data/prepare_train.py': 'test_prepare_train_then_train',
    'train.py': 'test_prepare_train_then_train',
    'data/prepare_test.py': 'test_prepare_test_then_evaluate',
    'test_sr.py': 'test_prepare_test_then_evaluate',
    'test_disp.py': 'test_prepare_test_then_evaluate',
    'demo.py': 'test_demo_on_a_pair_with_references',
    'bench.py': 'test_bench_then_make_figs',
    'make_figs.py': 'test_bench_then_make_figs',
    'export.py': 'test_export',
    'weights.py': 'test_weights_lists_the_releases',
}


def run(*argv) -> subprocess.CompletedProcess:
    """`python *argv` from the repository root; it must exit 0 without a traceback."""
    done = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f'{argv[0]} exited {done.returncode}:\n{done.stderr[-3000:]}'
    assert 'Traceback' not in done.stderr and 'a bug' not in done.stderr, done.stderr[-3000:]
    return done


def motorcycle(top: int, left: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crop of the built-in Middlebury Motorcycle pair (uint8 views) and of its left-view disparity (float32)."""
    from skimage import data as skdata
    views = skdata.stereo_motorcycle()
    return tuple(np.ascontiguousarray(v[top:top + height, left:left + width]) for v in views)


@pytest.fixture(scope='module')
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('entry_points')


@pytest.fixture(scope='module')
def trained(work) -> dict:
    """prepare_train.py on one raw pair (one 30x90 LR patch at x4), then one training iteration of NAFSSR-T on it,
    with an --export: the chain of the README, `prepare_train.py ... && train.py ...`."""
    raw = work / 'raw_train'
    (raw / 'Middlebury').mkdir(parents=True)
    (raw / 'Flickr1024').mkdir()
    left, right, _ = motorcycle(100, 200, 160, 400)          # LR 40x100 at x4: one patch origin of the MATLAB loops
    iio.imwrite(raw / 'Flickr1024' / '0001_L.png', left)
    iio.imwrite(raw / 'Flickr1024' / '0001_R.png', right)
    patches = work / 'patches'
    prepared = run('data/prepare_train.py', '--src', raw, '--scale_factor', 4, '--out', patches)
    run_dir, export = work / 'run', work / 'nafssr-t_x4.pth'
    trained = run('train.py', '--model', 'nafssr-t', '--scale_factor', 4, '--trainset', 'patches', '--trainset_dir',
                  patches, '--batch_size', 1, '--n_epochs', 1, '--max_iters_per_epoch', 1, '--num_workers', 0,
                  '--checkpoint_dir', run_dir, '--export', export)
    return {'patches': patches, 'run': run_dir, 'export': export, 'prepared': prepared, 'trained': trained}


@pytest.fixture(scope='module')
def testset(work) -> Path:
    """prepare_test.py --preset middlebury on one raw scene (120x360, not halved): HR, LR x4 30x90, ground truth."""
    raw = work / 'raw_test' / 'Motorcycle'
    raw.mkdir(parents=True)
    left, right, disparity = motorcycle(100, 200, 120, 360)
    iio.imwrite(raw / 'im0.png', left)
    iio.imwrite(raw / 'im1.png', right)
    write_pfm(raw / 'disp0GT.pfm', disparity.astype(np.float32))
    out = work / 'test'
    run('data/prepare_test.py', '--preset', 'middlebury', '--src', raw.parent, '--scale_factor', 4, '--out', out,
        '--no-halve')
    return out / 'Middlebury'


def test_prepare_train_then_train(trained):
    assert re.search(r'wrote 1 patches from 1 pairs', trained['prepared'].stderr)
    patch = trained['patches'] / 'patches_x4' / '000001'
    assert iio.imread(patch / 'lr0.png').shape == (30, 90, 3) and iio.imread(patch / 'hr1.png').shape == (120, 360, 3)
    run_dir = trained['run']
    _, last = read_checkpoint(run_dir / 'last.pth')
    assert last['epoch'] == 1 and last['args']['model'] == 'nafssr-t' and last['args']['scale_factor'] == 4
    assert json.loads((run_dir / 'args.json').read_text())['trainset'] == 'patches'
    rows = list(csv.DictReader((run_dir / 'log.csv').open()))
    assert len(rows) == 1 and np.isfinite(float(rows[0]['loss_total']))
    assert len((run_dir / 'log.jsonl').read_text().splitlines()) == 1
    assert iio.imread(run_dir / 'curves.png').ndim == 3
    state_dict, exported = read_checkpoint(trained['export'])
    assert state_dict.keys() == last['state_dict'].keys() and exported['log']
    assert f'done: {run_dir / "last.pth"}' in trained['trained'].stderr


def test_a_finished_run_resumed_says_how_to_extend_it(trained):
    """--resume of a finished run with nothing more to do: not a silent "done" (exit 0) but a line saying how."""
    done = subprocess.run([sys.executable, 'train.py', '--resume', str(trained['run'] / 'last.pth'), '--total_iters',
                           '4'], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "--total_iters 4 (the run's: 0) would change what the run is" in done.stderr
    assert 'Traceback' not in done.stderr
    done = subprocess.run([sys.executable, 'train.py', '--resume', str(trained['run'] / 'last.pth')], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert 'this run has already finished its 1 epoch(s); to train it further pass --n_epochs above 1' in done.stderr
    assert 'Traceback' not in done.stderr


def test_prepare_test_then_evaluate(testset, trained, work):
    scene = testset / 'hr' / 'Motorcycle'
    assert iio.imread(scene / 'hr0.png').shape == (120, 360, 3)
    assert iio.imread(testset / 'lr_x4' / 'Motorcycle' / 'lr1.png').shape == (30, 90, 3)
    # test_sr.py: the trained network on the prepared set
    sr_json = work / 'sr.json'
    run('test_sr.py', '--checkpoint', trained['run'] / 'last.pth', '--testset_dir', testset.parent, '--results_dir',
        work / 'sr', '--json', sr_json)
    scores = json.loads(sr_json.read_text())
    assert np.isfinite(scores['Middlebury']['psnr_avg']) if 'Middlebury' in scores else scores, scores
    saved = list((work / 'sr').rglob('*.png'))
    assert len(saved) == 2 and all(iio.imread(p).shape == (120, 360, 3) for p in saved), saved
    # test_disp.py: SSRDE-FNet's disparity on the stereo set; DSDMSR on its ground-truth map
    for name, argv in (('ssrdefnet', ['--checkpoint', DEMO_X4]),
                       ('dsdmsr', ['--model', 'dsdmsr', '--scale_factor', 4, '--checkpoint', DSDMSR_X4])):
        disp_json = work / f'disp_{name}.json'
        run('test_disp.py', *argv, '--testset_dir', testset.parent, '--results_dir', work / f'disp_{name}', '--json',
            disp_json)
        numbers = [v for v in re.findall(r'-?\d+\.\d+', disp_json.read_text())]
        assert numbers and all(np.isfinite(float(v)) for v in numbers), name
        assert list((work / f'disp_{name}').rglob('*.png')), name


def test_demo_on_a_pair_with_references(testset, work):
    lr, hr = testset / 'lr_x4' / 'Motorcycle', testset / 'hr' / 'Motorcycle'
    out = work / 'demo'
    run('demo.py', '--left', lr / 'lr0.png', '--right', lr / 'lr1.png', '--hr_left', hr / 'hr0.png', '--hr_right',
        hr / 'hr1.png', '--gt_disp', hr / 'disp0GT.pfm', '--out', out)
    import demo
    for name in demo.OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert iio.imread(out / 'sr_left.png').shape == (120, 360, 3)
    metrics = json.loads((out / 'metrics.json').read_text())
    assert np.isfinite(metrics['ssrdefnet']['psnr_avg']) and np.isfinite(metrics['disparity']['ssrdefnet']['epe'])


def test_bench_then_make_figs(trained, work):
    bench_json = work / 'bench.json'
    run('bench.py', '--model', 'nafssr-t', '--cases', 'infer', '--sizes', '30x90', '--scales', 4, '--variants',
        'ours', '--repeats', 1, '--min-seconds', 0, '--no-flops', '--json', bench_json)
    rows = json.loads(bench_json.read_text())['rows']
    assert len(rows) == 1 and rows[0]['seconds'] > 0 and 'error' not in rows[0]
    figs = work / 'figs'
    run('make_figs.py', '--checkpoint', trained['export'], '--bench', bench_json, '--out', figs, '--authors_weights',
        work / 'no_weights')
    for name in ('demo_comparison.png', 'demo_training.png', 'bench.png'):
        assert iio.imread(figs / name).ndim == 3, name


def test_export(trained, work):
    pytest.importorskip('onnx')
    onnxruntime = pytest.importorskip('onnxruntime')
    out = work / 'nafssr-t.onnx'
    run('export.py', '--checkpoint', trained['export'], '--size', '30x90', '--out', out, '--threads', 1)
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['sr_left', 'sr_right']


def test_weights_lists_the_releases():
    from models.releases import RELEASES
    listed = run('weights.py').stdout
    assert all(name in listed for name in RELEASES)


def test_every_script_is_run_somewhere():
    """A new script with a `__main__` must be added to COVERED (and run here)."""
    scripts = {str(p.relative_to(ROOT)) for p in ROOT.rglob('*.py')
               if 'tests' not in p.parts and '.git' not in p.parts and "__name__ == '__main__'" in p.read_text()}
    scripts.discard('utils.py')      # its docstring names the idiom; not a script
    assert scripts == set(COVERED)
    names = set(re.findall(r'^def (test_\w+)', Path(__file__).read_text(), re.M))
    assert set(COVERED.values()) <= names
