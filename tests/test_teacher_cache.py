"""The teacher cache is verified before every reuse (data/teacher_cache.py, training/objectives.py): a truncated array,
a damaged header, another teacher file or changed training patches are each reported by name before the first step
(never numpy's mmap or "load it unsafely" words), and rebuilt only with --teacher_cache_rebuild. Tiny hand-made
teachers (nearest-neighbour upscaling) stand in for networks, except in the one end-to-end run of train.py."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from data.patches import PatchFolder, sample_patches
from data.teacher_cache import ARRAY_FILE, META_FILE, TeacherCache
from training.config import TrainConfig
from training.objectives import attach_teacher_cache

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_thread')


class Upscale(torch.nn.Module):
    """A teacher: nearest-neighbour x2 times `gain` (two gains = two different teachers)."""

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain

    def forward(self, left, right):
        up = torch.nn.Upsample(scale_factor=2, mode='nearest')
        return SimpleNamespace(sr_left=up(left) * self.gain, sr_right=up(right) * self.gain)


@functools.cache
def first_patches() -> list:
    return sample_patches(2)[:3]


def write_patches(root: Path, count: int = 3) -> Path:
    for i, views in enumerate(first_patches()[:count]):
        folder = root / 'patches_x2' / f'{i:06d}'
        folder.mkdir(parents=True)
        for name, view in zip(('hr0', 'hr1', 'lr0', 'lr1'), views):
            iio.imwrite(folder / f'{name}.png', view)
    return root


@pytest.fixture
def setup(tmp_path):
    """attach(**changes) runs the cache step of train.py for a 3-patch folder and one teacher whose file's SHA-256
    is 'a' * 64; it returns the dataset with the cache attached, or raises what train.py would print."""
    patches = write_patches(tmp_path / 'patches')
    cache = tmp_path / 'cache'

    def attach(sha='a' * 64, gain=1.0, **changes):
        config = TrainConfig(scale_factor=2, trainset='patches', trainset_dir=patches, teacher_cache=cache,
                             batch_size=2, **changes)
        dataset = PatchFolder(patches, 2, augment=False)
        records = [{'path': 'teacher.pth', 'model': 'upscale', 'sha256': sha, 'weight': 1.0}]
        attach_teacher_cache(config, dataset, [Upscale(gain)], records, torch.device('cpu'), 0, 1, False,
                             torch.bfloat16)
        return dataset
    return SimpleNamespace(attach=attach, cache=cache, array=cache / ARRAY_FILE, meta=cache / META_FILE,
                           patches=patches)


def test_a_cache_records_what_it_holds_and_what_it_was_built_from(setup, caplog):
    caplog.set_level(logging.INFO, logger='train')
    dataset = setup.attach()
    meta = json.loads(setup.meta.read_text())
    assert meta['format'] == 2 and meta['complete'] is True
    assert meta['arrays'][ARRAY_FILE] == {'shape': [3, 1, 2, 60, 180, 3], 'dtype': '<f4',
                                          'bytes': setup.array.stat().st_size}
    assert setup.array.stat().st_size == 128 + 3 * 2 * 60 * 180 * 3 * 4
    source = meta['source']
    assert source['teacher_sha256'] == ['a' * 64] and source['teacher_networks'] == ['upscale']
    assert source['scale_factor'] == 2 and source['trainset'] == 'patches' and source['trainset_patches'] == 3
    assert source['lr_patch'] == [30, 90] and source['dtype'] == 'float32' and source['precision'] == 'float32'
    assert source['trainset_digest'] == PatchFolder(setup.patches, 2).fingerprint()
    # the outputs are the teacher's on each whole patch
    lr_left = torch.from_numpy(dataset.load(1)[2].transpose(2, 0, 1).copy()).float()[None] / 255
    expected = Upscale()(lr_left, lr_left).sr_left[0].permute(1, 2, 0).numpy()
    assert np.array_equal(dataset.extras(1)[0][0], expected)
    # the second run reuses it untouched
    stamp = setup.array.stat().st_mtime_ns
    setup.attach()
    assert 'teacher cache: reusing' in caplog.text and setup.array.stat().st_mtime_ns == stamp


def damage_truncate(setup):
    data = setup.array.read_bytes()
    setup.array.write_bytes(data[:len(data) // 2])
    return rf'{setup.array}: {len(data) // 2} bytes, meta.json records {len(data)} \(truncated\)'


def damage_header_text(setup):          # numpy: "Cannot parse header: ..."
    data = setup.array.read_bytes()
    setup.array.write_bytes(data[:20] + b'garbage' + data[27:])
    return rf'{setup.array}: damaged header \(not a readable .npy array header\)'


def damage_magic(setup):                # numpy's np.load: "... you can load it unsafely using allow_pickle="
    data = setup.array.read_bytes()
    setup.array.write_bytes(b'\x00' * 8 + data[8:])
    return rf'{setup.array}: damaged header \(not a readable .npy array header\)'


def damage_header_shape(setup):         # a valid header that no longer says what meta.json records
    data = setup.array.read_bytes()
    setup.array.write_bytes(data.replace(b"'shape': (3, 1, 2, 60, 180, 3)", b"'shape': (6, 1, 1, 60, 180, 3)"))
    return rf'{setup.array}: shape in its header \[6, 1, 1, 60, 180, 3\], meta.json records \[3, 1, 2, 60, 180, 3\]'


def damage_meta(setup):
    setup.meta.write_text(setup.meta.read_text()[:50])
    return rf'{setup.meta}: damaged \(not a JSON object\)'


def change_trainset(setup):             # one patch file rewritten (another size or modification time)
    path = setup.patches / 'patches_x2' / '000001' / 'hr0.png'
    iio.imwrite(path, 255 - iio.imread(path))
    return (rf'{setup.meta}: trainset_digest differs \(cache .{{12}}\.\.\., this run .{{12}}\.\.\.\): the training '
            rf'patches \(file names, sizes and modification times, or pixels\) changed')


def add_patch(setup):
    shutil.copytree(setup.patches / 'patches_x2' / '000001', setup.patches / 'patches_x2' / '000009')
    return rf'{setup.meta}: trainset_patches differs \(cache 3, this run 4\): the number of patches changed'


@pytest.mark.parametrize('damage', [damage_truncate, damage_header_text, damage_magic, damage_header_shape,
                                    damage_meta, change_trainset, add_patch])
def test_damage_or_other_data_is_refused_naming_the_file_then_rebuilt_on_request(setup, damage, caplog):
    setup.attach()
    expected = damage(setup)
    with pytest.raises(ValueError, match=rf'^--teacher_cache: {expected}; --teacher_cache_rebuild replaces it, or '
                                         rf'give another folder$') as refusal:
        setup.attach()
    assert 'mmap' not in str(refusal.value) and 'unsafely' not in str(refusal.value)
    caplog.set_level(logging.WARNING, logger='train')
    dataset = setup.attach(teacher_cache_rebuild=True)
    assert f'teacher cache: rebuilding {setup.cache}: ' in caplog.text
    assert len(dataset.extras(len(dataset) - 1)) == 1
    setup.attach()                                                          # verified now: reused


def test_another_teacher_dtype_or_precision_is_refused(setup):
    setup.attach()
    with pytest.raises(ValueError, match=rf'^--teacher_cache: {setup.meta}: teacher_sha256 differs \(cache '
                                         rf'\[aaaaaaaaaaaa\.\.\.\], this run \[bbbbbbbbbbbb\.\.\.\]\): the teacher '
                                         rf'files \(SHA-256\) changed; --teacher_cache_rebuild'):
        setup.attach(sha='b' * 64, gain=2.0)
    with pytest.raises(ValueError, match=r"dtype differs \(cache 'float32', this run 'float16'\)"):
        setup.attach(teacher_cache_dtype='float16')
    # the rebuilt cache holds the new teacher's outputs, stored as float16
    dataset = setup.attach(sha='b' * 64, gain=2.0, teacher_cache_dtype='float16', teacher_cache_rebuild=True)
    assert np.load(setup.array, mmap_mode='r').dtype == np.float16
    assert dataset.extras(0)[0][0].max() > 1.0                              # gain 2: the new teacher's
    with pytest.raises(ValueError, match=r"precision differs \(cache 'float32', this run 'bfloat16 autocast'\)"):
        config = TrainConfig(scale_factor=2, trainset='patches', trainset_dir=setup.patches,
                             teacher_cache=setup.cache, batch_size=2, teacher_cache_dtype='float16')
        attach_teacher_cache(config, PatchFolder(setup.patches, 2), [Upscale(2.0)],
                             [{'path': 't', 'model': 'upscale', 'sha256': 'b' * 64}], torch.device('cpu'), 0, 1,
                             True, torch.bfloat16)


def test_an_interrupted_build_is_redone_and_a_foreign_folder_refused(setup, monkeypatch, caplog):
    calls = []

    class Interrupting(Upscale):
        def forward(self, left, right):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().forward(left, right)

    monkeypatch.setattr(sys.modules[__name__], 'Upscale', Interrupting)
    with pytest.raises(KeyboardInterrupt):
        setup.attach()
    assert json.loads(setup.meta.read_text())['complete'] is False
    caplog.set_level(logging.WARNING, logger='train')
    setup.attach()                                                          # (the third call goes through)
    assert f'teacher cache: rebuilding {setup.cache}: {setup.meta}: its build was interrupted' in caplog.text
    assert json.loads(setup.meta.read_text())['complete'] is True
    # an old-format cache (format 1: no sizes, no digest) cannot be verified
    meta = json.loads(setup.meta.read_text())
    setup.meta.write_text(json.dumps({'complete': True, 'teachers': meta['source']['teacher_sha256']}))
    with pytest.raises(ValueError, match=r'format differs \(cache 1, this code 2\): built by an older version'):
        setup.attach()
    for name in (META_FILE, ARRAY_FILE):
        (setup.cache / name).unlink()
    (setup.cache / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match=rf'{setup.cache} is not a teacher cache \(no meta.json\) and is not empty'):
        setup.attach()


def test_lr_crop_reads_crops_of_the_whole_patch_outputs(setup):
    """--lr_crop with a cache: the teachers saw whole patches; each item gets the crop co-located with its HR crop
    (before, the build ran on random crops and the reads sliced them again: a 16x0 target and the "a bug" line)."""
    dataset = setup.attach()
    dataset.crop = (8, 16)
    for index in range(len(dataset)):
        hr_left, _, lr_left, _, cached_left, _ = dataset[index]
        assert cached_left.shape == (1, 3, 16, 32) and hr_left.shape == (3, 16, 32)
        expected = torch.nn.functional.interpolate(lr_left[None], scale_factor=2, mode='nearest')[0]
        assert torch.equal(cached_left[0], expected)          # the teacher's output on exactly this crop's pixels


def test_a_file_damaged_during_the_run_is_named():
    source = TeacherCache(Path('/nonexistent/cache'))
    with pytest.raises(ValueError, match=r'^teacher cache /nonexistent/cache/teacher_outputs.npy cannot be read any '
                                         r'more'):
        source(0)


def test_train_py_refuses_a_truncated_cache_and_another_teacher_before_the_first_step(tmp_path, caplog):
    """As a user runs it: one line naming the file, exit 1, no numpy words, nothing trained (a subprocess, once);
    then another teacher file under the same name is refused, and --teacher_cache_rebuild rebuilds (in process)."""
    import train
    from models import build_model
    from models.checkpoint import save_checkpoint
    torch.manual_seed(5)
    teacher = tmp_path / 'teacher_x2.pth'
    save_checkpoint(teacher, build_model('nafssr-t', 2), epoch=0, args={'model': 'nafssr-t', 'scale_factor': 2})
    patches, cache = write_patches(tmp_path / 'patches', 2), tmp_path / 'cache'
    argv = ['--model', 'nafssr-t', '--scale_factor', '2', '--batch_size', '2', '--num_workers', '0',
            '--max_iters_per_epoch', '1', '--n_epochs', '1', '--total_iters', '0', '--trainset', 'patches',
            '--trainset_dir', str(patches), '--teacher', str(teacher), '--teacher_cache', str(cache)]
    assert train.main(argv + ['--checkpoint_dir', str(tmp_path / 'a')]) == 0
    array = cache / ARRAY_FILE
    data = array.read_bytes()
    array.write_bytes(data[:-1000])
    refused = subprocess.run([sys.executable, str(ROOT / 'train.py'), *argv, '--checkpoint_dir', str(tmp_path / 'b')],
                             capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f'error: --teacher_cache: {array}: {len(data) - 1000} bytes, meta.json records {len(data)} (truncated); '
        f'--teacher_cache_rebuild replaces it, or give another folder')
    assert 'mmap' not in refused.stderr and not (tmp_path / 'b' / 'log.jsonl').exists()
    array.write_bytes(data)
    torch.manual_seed(6)                                     # another teacher file under the same name
    save_checkpoint(teacher, build_model('nafssr-t', 2), epoch=0, args={'model': 'nafssr-t', 'scale_factor': 2})
    with pytest.raises(ValueError, match=rf'^--teacher_cache: {cache / META_FILE}: teacher_sha256 differs'):
        train.main(argv + ['--checkpoint_dir', str(tmp_path / 'c')])
    assert not (tmp_path / 'c' / 'log.jsonl').exists()
    caplog.set_level(logging.WARNING, logger='train')
    assert train.main(argv + ['--checkpoint_dir', str(tmp_path / 'd'), '--teacher_cache_rebuild']) == 0
    assert f'teacher cache: rebuilding {cache}: {cache / META_FILE}: teacher_sha256 differs' in caplog.text
    assert json.loads((tmp_path / 'd' / 'log.jsonl').read_text())['loss_distill'] > 0
