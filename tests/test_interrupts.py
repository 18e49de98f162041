"""Interrupt a tiny run at every step and resume (issue 28, item 4): at each iteration of two epochs, including the
last of each (where a stop used to save an epoch without its loss, so the resume crashed with KeyError 'loss_total'
and log.csv took a header without the loss columns), the final weights equal an uninterrupted run's and the logs
hold one well-formed row per epoch."""
from __future__ import annotations

import csv
import json
import logging
import os
import socket

import pytest
import torch

import train
from training.state import INTERRUPTED

# NAFSSR-T without stochastic depth: a cheap network whose steps use no random numbers of their own
TINY = ['--model', 'nafssr-t', '--drop_path', '0', '--scale_factor', '2', '--trainset', 'sample', '--batch_size', '2',
        '--num_workers', '0', '--n_epochs', '2', '--max_iters_per_epoch', '2']


def weights(run) -> dict:
    return torch.load(run / 'last.pth', map_location='cpu', weights_only=True)['state_dict']


def check_logs(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2]
    with open(run / 'log.csv', newline='') as f:
        table = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in table] == [1, 2]
    for row, line in zip(rows, table):
        assert row['iterations'] == 2 and row['loss_total'] > 0, row
        assert float(line['loss_total']) == pytest.approx(row['loss_total'])
        assert None not in line and all(value != '' for value in line.values()), line   # no misaligned columns
    return rows


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp('straight')
    assert train.main(TINY + ['--checkpoint_dir', str(run)]) == 0
    return run


@pytest.mark.parametrize('stop_after', [1, 2, 3, 4])   # 2 and 4: the last iteration of an epoch (2: then the boundary)
def test_interrupt_at_any_step_resumes_to_the_same_weights_and_logs(straight, tmp_path, stop_after):
    run = tmp_path / 'cut'
    status = train.main(TINY + ['--checkpoint_dir', str(run), '--stop_after', str(stop_after)])
    assert status == (0 if stop_after == 4 else INTERRUPTED)
    if status == INTERRUPTED:
        assert train.main(['--resume', str(run / 'last.pth'), '--num_workers', '0']) == 0
    expected, resumed = weights(straight), weights(run)
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    rows, reference = check_logs(run), check_logs(straight)
    for row, ref in zip(rows, reference):
        assert row['loss_total'] == pytest.approx(ref['loss_total'], rel=1e-6)


def test_export_only_writes_an_interrupted_run_as_it_is(tmp_path, caplog):
    """--resume RUN --export FILE --export_only: the weights last saved, the log so far, and no step taken."""
    from models.checkpoint import read_checkpoint
    caplog.set_level(logging.INFO)
    run = tmp_path / 'cut'
    assert train.main(TINY + ['--checkpoint_dir', str(run), '--stop_after', '3']) == INTERRUPTED
    saved = torch.load(run / 'last.pth', map_location='cpu', weights_only=True)
    log_before, args_before = (run / 'log.jsonl').read_text(), (run / 'args.json').read_text()
    # a run still training holds its folder's lock: exporting it as it is reads, it does not take the folder
    (run / '.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'now'}))
    assert train.main(['--resume', str(run / 'last.pth'), '--export', str(tmp_path / 'now.pth'), '--export_only',
                       '--num_workers', '0']) == 0
    assert (run / '.lock').is_file() and (run / 'args.json').read_text() == args_before
    assert 'as it is (1 epoch(s) and 1 iteration(s) done)' in caplog.text
    state_dict, stored = read_checkpoint(tmp_path / 'now.pth')
    assert stored['epoch'] == 1 and [r['epoch'] for r in stored['log']] == [1] and 'optimizer' not in stored
    for key, value in saved['state_dict'].items():
        assert torch.equal(value, state_dict[key]), key
    after = torch.load(run / 'last.pth', map_location='cpu', weights_only=True)
    assert (after['epoch'], after['iteration']) == (saved['epoch'], saved['iteration'])   # nothing trained
    assert (run / 'log.jsonl').read_text() == log_before
    with pytest.raises(train.UsageError, match='--export_only writes the --export FILE of the --resume run'):
        train.main(TINY + ['--export', str(tmp_path / 'x.pth'), '--export_only'])


def test_export_only_needs_neither_the_teacher_file_nor_the_training_data(tmp_path):
    """--export_only of a distilled run records the teachers the run recorded (path, network, SHA-256) although the
    teacher file and the training data are gone: an export reads the run's checkpoint and log, nothing else."""
    from models import build_model
    from models.checkpoint import read_checkpoint, save_checkpoint
    torch.manual_seed(0)
    save_checkpoint(tmp_path / 'teacher.pth', build_model('nafssr-t', 2, drop_path=0.0).eval(),
                    args={'model': 'nafssr-t', 'scale_factor': 2})
    run = tmp_path / 'distilled'
    assert train.main(TINY + ['--checkpoint_dir', str(run), '--stop_after', '3',
                              '--teacher', str(tmp_path / 'teacher.pth'), 'nafssr-t', '0.5']) == INTERRUPTED
    saved = torch.load(run / 'last.pth', map_location='cpu', weights_only=False)
    recorded = saved['teachers']
    assert [(r['model'], r['weight'], len(r['sha256'])) for r in recorded] == [('nafssr-t', 0.5, 64)]
    (tmp_path / 'teacher.pth').unlink()
    # as if its data were not here: a patch folder of elsewhere
    saved['args'].update(trainset='patches', trainset_dir=str(tmp_path / 'absent'))
    torch.save(saved, run / 'last.pth')
    assert train.main(['--resume', str(run / 'last.pth'), '--export', str(tmp_path / 'now.pth'), '--export_only']) == 0
    state_dict, stored = read_checkpoint(tmp_path / 'now.pth')
    assert stored['teachers'] == recorded and stored['args']['trainset'] == 'patches'
    for key, value in saved['state_dict'].items():
        assert torch.equal(value, state_dict[key]), key
    with pytest.raises(FileNotFoundError, match='teacher.pth'):   # resuming the training itself needs the teacher
        train.main(['--resume', str(run / 'last.pth'), '--num_workers', '0'])
