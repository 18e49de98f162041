"""models/checkpoint.py load_checkpoint / save_checkpoint: official and project formats, and clear errors on files
that don't fit."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import random_pair, randomise_batchnorm
from models import build_model
from models.checkpoint import (CHECKPOINT_VERSION, infer_scale_factor, load_checkpoint, read_checkpoint, results_name,
                               save_checkpoint)


def trained_looking(scale: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model('ssrdefnet', scale)
    randomise_batchnorm(model, seed)
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path):
    model = trained_looking(2)
    path = tmp_path / 'run' / 'last.pth'
    save_checkpoint(path, torch.nn.DataParallel(model), epoch=3, args={'scale_factor': 2})
    assert [p.name for p in (tmp_path / 'run').iterdir()] == ['last.pth']  # the temporary file became the target

    raw = torch.load(path, weights_only=True)
    assert raw['version'] == CHECKPOINT_VERSION and raw['epoch'] == 3
    assert not any(k.startswith('module.') for k in raw['state_dict'])  # saved unwrapped

    restored = build_model('ssrdefnet', 2).eval()
    meta = load_checkpoint(restored, path)
    assert meta['args'] == {'scale_factor': 2}
    left, right = random_pair(1, 30, 60)
    with torch.no_grad():
        a, b = model(left, right), restored(left, right)
    assert torch.equal(a.sr_left, b.sr_left) and torch.equal(a.disp_right, b.disp_right)


def test_official_release_format_loads(tmp_path):
    """The authors' file: {'epoch', 'state_dict'} saved from DataParallel, keys prefixed with 'module.'."""
    model = trained_looking(4, seed=1)
    official = {'epoch': 80, 'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}
    path = tmp_path / 'SSRDEF_4xSR_epoch80.pth.tar'
    torch.save(official, path)
    restored = build_model('ssrdefnet', 4)
    assert load_checkpoint(restored, path)['epoch'] == 80
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_missing_batch_counters_are_tolerated(tmp_path):
    model = trained_looking(2)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert len(state) == 420 - 27
    torch.save(state, tmp_path / 'old.pth')
    restored = build_model('ssrdefnet', 2)
    load_checkpoint(restored, tmp_path / 'old.pth')
    assert torch.equal(restored.final.weight, model.final.weight)


def test_wrong_scale_is_named(tmp_path):
    save_checkpoint(tmp_path / 'x2.pth', build_model('ssrdefnet', 2))
    assert infer_scale_factor(read_checkpoint(tmp_path / 'x2.pth')[0]) == 2
    with pytest.raises(ValueError, match=r'x2 weights but the model was built for x4; use --scale_factor 2'):
        load_checkpoint(build_model('ssrdefnet', 4), tmp_path / 'x2.pth')


def test_other_model_is_rejected(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    torch.save({'state_dict': other.state_dict()}, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='missing keys.*unexpected keys.*another model'):
        load_checkpoint(build_model('ssrdefnet', 4), tmp_path / 'other.pth')


def test_changed_shape_is_rejected(tmp_path):
    state = build_model('ssrdefnet', 4).state_dict()
    state['final.weight'] = torch.zeros(3, 64, 5, 5)
    torch.save(state, tmp_path / 'edited.pth')
    with pytest.raises(ValueError, match=r'final.weight: file \(3, 64, 5, 5\) vs model \(3, 64, 3, 3\)'):
        load_checkpoint(build_model('ssrdefnet', 4), tmp_path / 'edited.pth')


def test_truncated_and_missing_files(tmp_path):
    save_checkpoint(tmp_path / 'full.pth', build_model('ssrdefnet', 2))
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r'cut.pth: cannot read this checkpoint.*truncated'):
        load_checkpoint(build_model('ssrdefnet', 2), tmp_path / 'cut.pth')
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='text.pth: cannot read') as raised:
        load_checkpoint(build_model('ssrdefnet', 2), tmp_path / 'text.pth')
    assert 'weights_only' not in str(raised.value) and 'pickled Python objects' not in str(raised.value)
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match="list.pth: not a model checkpoint"):
        load_checkpoint(build_model('ssrdefnet', 2), tmp_path / 'list.pth')
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        load_checkpoint(build_model('ssrdefnet', 2), tmp_path / 'nowhere.pth')


def test_a_failed_write_keeps_the_old_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk: torch.save writes part of the file, then fails. The message says what happened, the partial
    temporary file (named after this writer, so two runs in one folder never share one) is removed, and the previous
    checkpoint is untouched."""
    model = trained_looking(2)
    path = tmp_path / 'last.pth'
    save_checkpoint(path, model, epoch=1)
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, target):
        assert '.last.pth.' in str(target) and str(os.getpid()) in str(target)
        with open(target, 'wb') as f:
            f.write(b'partial')
        raise RuntimeError('[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0')

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(OSError, match=r'cannot write checkpoint .*last.pth .*disk full'):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.setattr(torch, 'save', real_save)
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth'] and path.read_bytes() == before


def test_results_of_different_runs_never_share_a_folder():
    """test_sr.py / test_disp.py results: the files train.py names itself (last.pth, best.pth, epoch_NNN.pth) are
    named by their run and network; a file named by hand keeps its name."""
    ours = {'version': CHECKPOINT_VERSION, 'args': {'model': 'nafssr-t', 'run_name': 'nafssr-t_x4_patches'}}
    assert results_name('checkpoints/nafssr-t_x4_patches/last.pth', ours, 4) == 'nafssr-t_x4_patches_last'
    other = {**ours, 'args': {'model': 'ipassr', 'run_name': 'a'}}
    assert results_name('runs/a/best.pth', other, 2) == 'ipassr_a_x2_best'
    assert results_name('runs/b/epoch_010.pth', {'version': 1, 'args': {}}, 4) == 'ssrdefnet_b_x4_epoch_010'
    assert results_name('checkpoints/SSRDEF_4xSR_epoch80.pth.tar', {'epoch': 80}, 4) == 'SSRDEF_4xSR_epoch80_x4'
    assert results_name('checkpoints/ssrdefnet_demo_x4.pth', ours, 4) == 'ssrdefnet_demo_x4_x4'
