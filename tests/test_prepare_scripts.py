"""The preparation scripts write whole or nothing (data/staging.py): prepare_train.py replaces an existing
patches_x<s> whole, prepare_test.py refuses an existing dataset folder unless --overwrite; a failure halfway (a full
disk, Ctrl-C, SIGTERM) leaves the previous output byte for byte and no temporary folder. Tiny random images."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from data import prepare_test, prepare_train, staging
from data.readers import write_kitti_disparity
from utils import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, UsageError, run_script

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones included) -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def partials(folder: Path) -> list[Path]:
    return list(folder.rglob(f'{staging.PARTIAL_PREFIX}*'))


def raw_training(root: Path, seed: int = 0, pairs: int = 2, size=(160, 400)) -> Path:
    """Raw iPASSR training layout: one Middlebury pair (halved: 1 patch at x2) and `pairs` Flickr1024 pairs of half
    that size (1 patch each at x2)."""
    rng = np.random.default_rng(seed)
    for folder, count, (h, w) in (('Middlebury', 1, size), ('Flickr1024', pairs, (size[0] // 2, size[1] // 2))):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            for view in 'LR':
                iio.imwrite(root / folder / f'{i:04d}_{view}.png', rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def raw_kitti(root: Path, seed: int = 0, scenes: int = 3) -> Path:
    """Raw KITTI 2012 training layout with ground truth: writes KITTI2012 and the disparity set K2012."""
    rng = np.random.default_rng(seed)
    for sub in ('colored_0', 'colored_1', 'disp_occ', 'disp_noc'):
        (root / sub).mkdir(parents=True)
    for i in range(scenes):
        name = f'{i:06d}_10.png'
        for sub in ('colored_0', 'colored_1'):
            iio.imwrite(root / sub / name, rng.integers(0, 256, (40, 124, 3), dtype=np.uint8))
        gt = rng.uniform(1, 50, (40, 124)).astype(np.float32)
        write_kitti_disparity(root / 'disp_occ' / name, gt)
        write_kitti_disparity(root / 'disp_noc' / name, gt)
    return root


def failing_after(count: int, error: BaseException, writer):
    """`writer` that raises `error` on its (count + 1)-th call."""
    calls = []

    def write(*args, **kwargs):
        if len(calls) == count:
            raise error
        calls.append(1)
        return writer(*args, **kwargs)
    return write


# ---- prepare_train.py: replaces patches_x<s> whole

def test_prepare_train_replaces_existing_patches_whole(tmp_path):
    """As a user runs it (exit 0): the old folder's extra patches and stray files do not survive beside the new."""
    out = tmp_path / 'out'
    prepare_train.main(['--src', str(raw_training(tmp_path / 'old', seed=1, pairs=4)), '--scale_factor', '2',
                        '--out', str(out)])
    assert len(list((out / 'patches_x2').iterdir())) == 5
    (out / 'patches_x2' / 'notes.txt').write_text('stale')
    (out / 'keep.txt').write_text('beside the patches: not ours')
    done = subprocess.run([sys.executable, str(ROOT / 'data' / 'prepare_train.py'), '--src',
                           str(raw_training(tmp_path / 'new', seed=2)), '--scale_factor', '2', '--out', str(out)],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert f'wrote 3 patches from 3 pairs to {out / "patches_x2"} (replacing the previous ones)' in done.stderr
    assert sorted(p.name for p in (out / 'patches_x2').iterdir()) == ['000001', '000002', '000003']
    assert (out / 'keep.txt').read_text() == 'beside the patches: not ours' and not partials(tmp_path)
    lr = iio.imread(out / 'patches_x2' / '000003' / 'lr0.png')        # the new set's last Flickr1024 pair
    assert lr.shape == (30, 90, 3)


@pytest.mark.parametrize('error, status', [(OSError(errno.ENOSPC, 'No space left on device'), EXIT_RUNTIME),
                                           (KeyboardInterrupt(), EXIT_INTERRUPTED)])
def test_prepare_train_failing_halfway_leaves_the_previous_patches(tmp_path, monkeypatch, capsys, error, status):
    out = tmp_path / 'out'
    prepare_train.main(['--src', str(raw_training(tmp_path / 'old', seed=1)), '--scale_factor', '2', '--out', str(out)])
    before = snapshot(out)
    monkeypatch.setattr(prepare_train, 'write_image', failing_after(6, error, prepare_train.write_image))
    argv = ['--src', str(raw_training(tmp_path / 'new', seed=2, pairs=3)), '--scale_factor', '2', '--out', str(out)]
    assert run_script(prepare_train.main, argv) == status             # (6 files: one and a half patches written)
    assert snapshot(out) == before and not partials(tmp_path)
    # into a new folder: nothing is left at all
    assert run_script(prepare_train.main, argv[:-1] + [str(tmp_path / 'fresh' / 'out')]) == status
    assert not (tmp_path / 'fresh').exists()
    if status == EXIT_RUNTIME:
        assert capsys.readouterr().err.splitlines()[-1] == (
            f'error: [Errno 28] No space left on device while writing into {tmp_path / "fresh" / "out"}: nothing '
            f'there was changed, and the partial output is deleted')


def test_prepare_train_never_replaces_patches_with_none(tmp_path):
    out = tmp_path / 'out'
    prepare_train.main(['--src', str(raw_training(tmp_path / 'old')), '--scale_factor', '2', '--out', str(out)])
    before = snapshot(out)
    small = raw_training(tmp_path / 'small', size=(60, 160))
    with pytest.raises(ValueError, match=rf'^no patch cut from the 3 pairs under {small}: LR images must be at least '
                                         rf'96x36 pixels; {out / "patches_x2"} is left as it was$'):
        prepare_train.main(['--src', str(small), '--scale_factor', '2', '--out', str(out)])
    assert snapshot(out) == before and not partials(tmp_path)


# ---- prepare_test.py: refuses existing dataset folders unless --overwrite

def test_prepare_test_refuses_existing_output_and_overwrites_on_request(tmp_path):
    out = tmp_path / 'test'
    prepare_test.main(['--preset', 'kitti2012', '--src', str(raw_kitti(tmp_path / 'old', seed=1)), '--out', str(out)])
    (out / 'K2012' / 'hr' / 'stale').mkdir()
    before = snapshot(out)
    new = raw_kitti(tmp_path / 'new', seed=2, scenes=2)
    with pytest.raises(UsageError, match=rf'^{out / "KITTI2012"} and {out / "K2012"} already hold a test set; '
                                         rf'--overwrite replaces them whole, or choose another --out or --name$'):
        prepare_test.main(['--preset', 'kitti2012', '--src', str(new), '--out', str(out)])
    assert snapshot(out) == before
    # as a user runs it: --overwrite, exit 0, both sets replaced whole
    done = subprocess.run([sys.executable, str(ROOT / 'data' / 'prepare_test.py'), '--preset', 'kitti2012', '--src',
                           str(new), '--out', str(out), '--overwrite'], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    for name in ('KITTI2012', 'K2012'):
        assert sorted(p.name for p in (out / name / 'hr').iterdir()) == ['000000_10', '000001_10']
    hr = iio.imread(out / 'KITTI2012' / 'hr' / '000001_10' / 'hr0.png')
    assert np.array_equal(hr, iio.imread(new / 'colored_0' / '000001_10.png')[:40, :124])
    assert not partials(tmp_path)
    # a set of another name beside them is no conflict
    flickr = tmp_path / 'flickr'
    flickr.mkdir()
    for view in 'LR':
        iio.imwrite(flickr / f'0001_{view}.png', np.zeros((40, 120, 3), np.uint8))
    prepare_test.main(['--preset', 'flickr1024', '--src', str(flickr), '--out', str(out)])
    assert sorted(p.name for p in out.iterdir()) == ['Flickr1024', 'K2012', 'KITTI2012']


@pytest.mark.parametrize('writer', ['write_image', 'write_kitti_disparity'])
def test_prepare_test_failing_halfway_leaves_the_previous_output(tmp_path, monkeypatch, writer):
    out = tmp_path / 'test'
    prepare_test.main(['--preset', 'kitti2012', '--src', str(raw_kitti(tmp_path / 'old', seed=1)), '--out', str(out)])
    before = snapshot(out)
    monkeypatch.setattr(prepare_test, writer, failing_after(3, OSError(errno.ENOSPC, 'No space left on device'),
                                                            getattr(prepare_test, writer)))
    argv = ['--preset', 'kitti2012', '--src', str(raw_kitti(tmp_path / 'new', seed=2)), '--out', str(out),
            '--overwrite']
    assert run_script(prepare_test.main, argv) == EXIT_RUNTIME
    assert snapshot(out) == before and not partials(tmp_path)


def test_a_failing_rename_at_the_end_restores_both_sets(tmp_path, monkeypatch):
    """The last step moves KITTI2012 then K2012 into place; when the second move fails, the first is undone."""
    out = tmp_path / 'test'
    prepare_test.main(['--preset', 'kitti2012', '--src', str(raw_kitti(tmp_path / 'old', seed=1)), '--out', str(out)])
    before = snapshot(out)
    rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name == 'K2012' and staging.PARTIAL_PREFIX in str(src):
            raise OSError(errno.EIO, 'Input/output error')
        rename(src, dst)
    monkeypatch.setattr(staging.os, 'rename', failing_rename)
    with pytest.raises(OSError, match='Input/output error'):
        prepare_test.main(['--preset', 'kitti2012', '--src', str(raw_kitti(tmp_path / 'new', seed=2)), '--out',
                           str(out), '--overwrite'])
    assert snapshot(out) == before and not partials(tmp_path)


def test_authors_layout_makes_lr_whole_or_refuses_a_partial_one(tmp_path, monkeypatch, caplog):
    dataset = tmp_path / 'Set'
    rng = np.random.default_rng(0)
    for scene in ('a', 'b'):
        for view in range(2):
            (dataset / 'hr' / scene).mkdir(parents=True, exist_ok=True)
            iio.imwrite(dataset / 'hr' / scene / f'hr{view}.png', rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))
    argv = ['--src', str(dataset), '--scale_factor', '2']
    monkeypatch.setattr(prepare_test, 'write_image', failing_after(2, KeyboardInterrupt(), prepare_test.write_image))
    assert run_script(prepare_test.main, argv) == EXIT_INTERRUPTED
    assert not (dataset / 'lr_x2').exists() and not partials(tmp_path)
    monkeypatch.undo()
    prepare_test.main(argv)
    made = snapshot(dataset / 'lr_x2')
    assert sorted(made) == ['a/lr0.png', 'a/lr1.png', 'b/lr0.png', 'b/lr1.png']
    caplog.set_level('INFO')
    prepare_test.main(argv)                                           # complete: left alone
    assert 'its lr_x2 images are all there' in caplog.text and snapshot(dataset / 'lr_x2') == made
    (dataset / 'lr_x2' / 'b' / 'lr1.png').unlink()
    with pytest.raises(UsageError, match=rf'^{dataset / "lr_x2"} lacks 1 of its 4 images \(e.g. '
                                         rf'{dataset / "lr_x2" / "b" / "lr1.png"}\); --overwrite remakes'):
        prepare_test.main(argv)
    assert run_script(prepare_test.main, argv + ['--overwrite']) == 0
    assert snapshot(dataset / 'lr_x2') == made and not partials(tmp_path)


# ---- the staging folder itself

def test_sigterm_cleans_up_like_ctrl_c_and_stale_partials_are_removed(tmp_path):
    (tmp_path / 'out').mkdir()
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with staging.staged_output(tmp_path / 'out', ['x']) as folder:
            (folder / 'x').mkdir()
            os.kill(os.getpid(), signal.SIGTERM)
    assert not partials(tmp_path) and not (tmp_path / 'out' / 'x').exists()
    assert signal.getsignal(signal.SIGTERM) == handler                            # restored
    # a folder left by a killed process (its pid is gone) is removed by the next run; a live one's is not
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    stale = tmp_path / 'out' / f'{staging.PARTIAL_PREFIX}{int(dead.stdout)}-abc'
    live = tmp_path / 'out' / f'{staging.PARTIAL_PREFIX}{os.getppid()}-abc'
    stale.mkdir(), live.mkdir()
    with staging.staged_output(tmp_path / 'out', ['x']) as folder:
        (folder / 'x').mkdir()
    assert not stale.exists() and live.exists() and (tmp_path / 'out' / 'x').is_dir()
