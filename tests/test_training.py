"""train.py end to end on CPU: it trains, checkpoints, resumes bit for bit, stops cleanly on Ctrl-C and on a
non-finite loss, and two DDP processes match one process with the same global batch (x2 keeps it fast)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import train
import training.loop
from models.ssrdefnet.losses import SSRDEFNetLoss
from training.health import loss_failure
from training.state import INTERRUPTED
from training.tasks import StereoSR, training_psnr_label

FAILS = (ValueError, OSError)   # what a script's main raises; run_script prints it as one line, exit 1 or 2

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--scale_factor', '2', '--trainset', 'sample', '--batch_size', '2', '--num_workers', '0']


def load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def test_resume_after_interrupt_is_bit_exact(tmp_path):
    """2 epochs x 2 iterations, once straight and once interrupted after 3 iterations (mid-epoch 2) and resumed.
    The StepLR halves the learning rate every epoch here, so the schedule is exercised too."""
    recipe = TINY + ['--n_epochs', '2', '--max_iters_per_epoch', '2', '--n_steps', '1']
    assert train.main(recipe + ['--checkpoint_dir', str(tmp_path / 'straight')]) == 0
    assert train.main(recipe + ['--checkpoint_dir', str(tmp_path / 'cut'), '--stop_after', '3']) == INTERRUPTED
    cut = load(tmp_path / 'cut' / 'last.pth')
    assert (cut['epoch'], cut['iteration']) == (1, 1)                 # epoch 1 done, 1 batch of epoch 2 done
    assert train.main(['--resume', str(tmp_path / 'cut' / 'last.pth'), '--n_epochs', '2', '--num_workers', '0']) == 0

    straight, resumed = load(tmp_path / 'straight' / 'last.pth'), load(tmp_path / 'cut' / 'last.pth')
    assert straight['epoch'] == resumed['epoch'] == 2 and resumed['iteration'] == 0
    for key, value in straight['state_dict'].items():
        assert torch.equal(value, resumed['state_dict'][key]), key
    assert straight['scheduler']['_last_lr'] == resumed['scheduler']['_last_lr'] == [2e-4 * 0.25]
    assert set(straight) >= {'state_dict', 'optimizer', 'scheduler', 'epoch', 'args', 'version'}
    # the logs and curves are written beside the checkpoint, one row per epoch
    rows = [json.loads(line) for line in (tmp_path / 'straight' / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2] and rows[1]['lr'] == pytest.approx(1e-4)
    assert rows[0]['iterations'] == 2 and 10 < rows[0]['psnr_left'] < 50
    assert (tmp_path / 'straight' / 'curves.png').stat().st_size > 10_000
    assert json.loads((tmp_path / 'straight' / 'args.json').read_text())['batch_size'] == 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    calls = {'n': 0}
    forward = SSRDEFNetLoss.forward

    def poisoned(self, *args):
        terms = forward(self, *args)
        calls['n'] += 1
        if calls['n'] == 2:                                          # first iteration of epoch 2
            terms['total'] = terms['total'] * float('nan')
        return terms

    monkeypatch.setattr(SSRDEFNetLoss, 'forward', poisoned)
    run = tmp_path / 'run'
    assert train.main(TINY + ['--n_epochs', '3', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]) == 1
    assert "non-finite loss terms {'sr':" in caplog.text
    assert 'at epoch 2, iteration 1 (step 2, lr 0.0002)' in caplog.text
    kept = load(run / 'last.pth')
    assert kept['epoch'] == 1 and all(torch.isfinite(v).all() for v in kept['state_dict'].values())


def damage_weights_after_step(monkeypatch, number: int, damage) -> None:
    """train_step as it is, then `damage(model)` (under no_grad) right after step `number` (with one iteration per
    epoch, step 2 is the only iteration of epoch 2)."""
    calls = {'n': 0}
    step = training.loop.train_step

    def damaged(run, batch):
        result = step(run, batch)
        calls['n'] += 1
        if calls['n'] == number:
            with torch.no_grad():
                damage(run.model)
        return result

    monkeypatch.setattr(training.loop, 'train_step', damaged)


def test_weights_that_are_not_finite_are_never_saved_or_resumed(tmp_path, monkeypatch, caplog):
    """A step whose loss was finite can still leave NaN weights (an exploding update on an epoch's last iteration):
    last.pth keeps the last good epoch, the run stops, and such a file is refused by --resume and the loaders."""
    damage_weights_after_step(monkeypatch, 2, lambda model: next(model.parameters()).fill_(float('nan')))
    run = tmp_path / 'run'
    assert train.main(TINY + ['--n_epochs', '3', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]) == 1
    assert 'weight tensors are not finite' in caplog.text
    kept = load(run / 'last.pth')
    assert kept['epoch'] == 1 and all(torch.isfinite(v).all() for v in kept['state_dict'].values())

    kept['state_dict']['init_feature.weight'][0, 0, 0, 0] = float('inf')
    torch.save(kept, tmp_path / 'diverged.pth')
    with pytest.raises(FAILS, match=r'diverged.pth holds non-finite weights .*init_feature.weight'):
        train.main(['--resume', str(tmp_path / 'diverged.pth'), '--num_workers', '0'])
    from models.checkpoint import load_model
    with pytest.raises(ValueError, match=r'diverged.pth holds non-finite weights .*earlier checkpoint'):
        load_model(tmp_path / 'diverged.pth', 2)


def test_exploded_finite_weights_never_replace_the_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    """A diverged step can leave finite but exploded weights (issue 28: max |w| 201 after a step at lr 200). The
    health check before the save (training/health.py: outputs on a probe batch within 10x the image range) refuses
    them: last.pth keeps epoch 1, byte for byte, and the stop line names the epoch, step, value and the kept file."""

    def times_five(model):                                           # the SR reconstruction x5: finite,
        for name, p in model.named_parameters():                     # outputs ~1e14 (a diverged step's)
            if name.startswith(('reconstruct.', 'upscale.')):
                p.mul_(5)

    damage_weights_after_step(monkeypatch, 2, times_five)
    run = tmp_path / 'run'
    argv = TINY + ['--n_epochs', '3', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]
    assert train.main(argv) == 1
    line = next(x for x in caplog.text.splitlines() if 'not saving' in x)
    assert re.search(rf'not saving {re.escape(str(run / "last.pth"))} at epoch 2, step 2: probe output sr_left '
                     rf'reaches [0-9.e+]+ \(bound 10\); .* the last good checkpoint is '
                     rf'{re.escape(str(run / "last.pth"))}',
                     line), line
    kept = load(run / 'last.pth')
    assert kept['epoch'] == 1 and max(v.abs().max() for v in kept['state_dict'].values() if v.is_floating_point()) < 10


def test_an_exploded_training_loss_is_refused_against_the_runs_history():
    """The loss half of the health check: LOSS_JUMP (10) x the median of the last epochs' mean losses."""
    assert loss_failure(0.5, []) is None                              # no history yet: the probe alone decides
    assert loss_failure(0.3, [0.1, 0.05, 0.2]) is None                # 3x the median: an ordinary bump
    assert loss_failure(1.5, [0.1, 0.05, 0.2]) == ('training loss 1.5 is more than 10x the median 0.1 of the last 3 '
                                                   'epochs')
    assert loss_failure(float('inf'), [0.1]) == 'training loss inf'


def test_one_run_per_checkpoint_folder(tmp_path, caplog):
    """A live run's lock refuses a second writer with its owner named; a dead run's lock is taken over; a finished
    run leaves none."""
    run = tmp_path / 'run'
    run.mkdir()
    (run / '.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'now'}))
    argv = TINY + ['--n_epochs', '1', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]
    with pytest.raises(FAILS, match=rf'is in use by another run \(host .*, PID {os.getpid()}, since now\)'):
        train.main(argv)
    assert not (run / 'last.pth').exists()
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    (run / '.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': int(gone.stdout), 'since': 'then'}))
    assert train.main(argv) == 0
    assert 'taking over the lock of a run that is gone' in caplog.text
    assert (run / 'last.pth').is_file() and not (run / '.lock').exists()


def test_non_finite_disparities_stop_before_they_become_indices(tmp_path, monkeypatch, caplog):
    """NaN weights in the disparity branch reach the cost volume as NaN hypotheses; their integer column indices used
    to crash the run with 'index -9223372036854775808 is out of bounds'. Now the run stops with where and when."""
    import models.ssrdefnet.network as network
    forward = network.SSRDEFNet.hr_disparity
    calls = {'n': 0}

    def diverging(self, hr_features, coords_lr):   # training steps only (not the eval-mode probe of the saves)
        calls['n'] += self.training
        return forward(self, hr_features, coords_lr * float('nan') if calls['n'] > 2 and self.training else coords_lr)

    monkeypatch.setattr(network.SSRDEFNet, 'hr_disparity', diverging)
    run = tmp_path / 'run'
    assert train.main(TINY + ['--n_epochs', '2', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]) == 1
    assert ("HR cost volume's disparity hypotheses (from the PAM disparity) are not finite at epoch 2, iteration 1 "
            "(step 2, lr 0.0002)") in caplog.text
    assert load(run / 'last.pth')['epoch'] == 1


def test_missing_and_corrupt_data_are_explained(tmp_path):
    with pytest.raises(FAILS, match=r'patches_x4 does not exist; create it with .*prepare_train.py.*'
                                         r'--trainset sample'):
        train.main(['--trainset_dir', str(tmp_path / 'nowhere'), '--num_workers', '0'])
    (tmp_path / 'p' / 'patches_x4').mkdir(parents=True)
    with pytest.raises(FAILS, match='patches_x4 is empty'):
        train.main(['--trainset_dir', str(tmp_path / 'p'), '--num_workers', '0'])
    bad = tmp_path / 'p' / 'patches_x4' / '000001'
    bad.mkdir()
    for name in ('hr0.png', 'hr1.png', 'lr0.png', 'lr1.png'):
        (bad / name).write_bytes(b'garbage')
    with pytest.raises(FAILS, match=r'bad training patch .*000001.*hr0.png: cannot decode'):
        train.main(['--trainset_dir', str(tmp_path / 'p'), '--num_workers', '0', '--batch_size', '1',
                    '--checkpoint_dir', str(tmp_path / 'run')])
    with pytest.raises(FAILS, match='must split into 1 processes x 4 micro-batches'):
        train.main(TINY + ['--grad_accum', '4', '--batch_size', '6'])
    # --resume of what is not a training checkpoint: missing, truncated, weights only (the demo checkpoint)
    with pytest.raises(FAILS, match=r'--resume: checkpoint not found: .*nothing.pth'):
        train.main(['--resume', str(tmp_path / 'nothing.pth')])
    (tmp_path / 'cut.pth').write_bytes(ROOT.joinpath('checkpoints', 'ssrdefnet_demo_x4.pth').read_bytes()[:5000])
    with pytest.raises(FAILS, match=r'--resume: .*cut.pth: cannot read this checkpoint.*truncated'):
        train.main(['--resume', str(tmp_path / 'cut.pth')])
    with pytest.raises(FAILS, match=r'ssrdefnet_demo_x4.pth is not a training checkpoint .*no optimizer, '
                                         r'scheduler.*resume from <checkpoint_dir>/last.pth'):
        train.main(['--resume', str(ROOT / 'checkpoints' / 'ssrdefnet_demo_x4.pth')])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_a_resumable_checkpoint(tmp_path, signum):
    """Ctrl-C, and SIGTERM, which schedulers send before they preempt a job: the running iteration ends, last.pth is
    written, the exit code says interrupted."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen([sys.executable, 'train.py', *TINY, '--n_epochs', '1', '--max_iters_per_epoch', '50',
                             '--checkpoint_dir', str(tmp_path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:                                          # wait until training has started
        if 'training patches' in line:
            break
    proc.send_signal(signum)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == INTERRUPTED, rest[-2000:]
    assert 'Continue with --resume' in rest and signal.Signals(signum).name in rest
    saved = load(tmp_path / 'last.pth')
    assert saved['epoch'] == 0 and saved['iteration'] >= 1


def test_sigterm_to_the_whole_process_group_with_workers_saves_a_checkpoint(tmp_path):
    """What `timeout`, Slurm and other schedulers do: SIGTERM to every process of the job, DataLoader workers
    included. The workers ignore it (the main process stops them), so the running iteration ends and last.pth is
    written, as when the main process alone is signalled."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    tiny = [a if a != '0' or i != TINY.index('--num_workers') + 1 else '1' for i, a in enumerate(TINY)]
    proc = subprocess.Popen([sys.executable, 'train.py', *tiny, '--n_epochs', '1', '--max_iters_per_epoch', '50',
                             '--checkpoint_dir', str(tmp_path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stderr:                                          # wait until the first step is under way
        if '/50 [' in line and 'it/s' in line or 's/it' in line:
            break
    os.killpg(proc.pid, signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == INTERRUPTED, rest[-2000:]
    assert 'Continue with --resume' in rest and 'a bug' not in rest
    saved = load(tmp_path / 'last.pth')
    assert saved['epoch'] == 0 and saved['iteration'] >= 1


def test_two_ddp_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo) vs 1 process accumulating the same two half-batches: same weights.
    BatchNorm running statistics differ (each DDP rank keeps its own), so only parameters are compared."""
    recipe = TINY + ['--device', 'cpu', '--n_epochs', '1', '--max_iters_per_epoch', '2']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                          '--master_port', str(free_port()), 'train.py', *recipe,
                          '--checkpoint_dir', str(tmp_path / 'ddp')], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / 'ddp').iterdir()) == ['args.json', 'curves.png', 'last.pth',
                                                                      'log.csv', 'log.jsonl']
    # same thread count as each DDP process: float32 training-mode rounding depends on it, and Adam's first step
    # (+-lr by the gradient's sign) turns rounding noise in near-zero gradients into lr-sized differences
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(recipe + ['--grad_accum', '2', '--checkpoint_dir', str(tmp_path / 'one')]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load(tmp_path / 'ddp' / 'last.pth')['state_dict'], load(tmp_path / 'one' / 'last.pth')['state_dict']
    torch.manual_seed(1234)                                           # train.py's default seed: the initial weights
    initial = train.build_model('ssrdefnet', 2).state_dict()
    moved = 0
    for key, value in a.items():
        if 'running_' in key or 'num_batches' in key:
            continue
        torch.testing.assert_close(value, b[key], atol=1e-7, rtol=0, msg=key)
        moved += not torch.equal(value, initial[key])
    assert moved > 300                                                # the parameters did train


def test_export_writes_a_labelled_weights_only_checkpoint(tmp_path):
    """--export: the trained weights, args and a demo label, without the optimiser state."""
    from models.checkpoint import describe_checkpoint, load_model
    path = tmp_path / 'shared.pth'
    assert train.main(TINY + ['--n_epochs', '1', '--max_iters_per_epoch', '1',
                              '--checkpoint_dir', str(tmp_path / 'run'), '--export', str(path)]) == 0
    exported, full = load(path), load(tmp_path / 'run' / 'last.pth')
    assert 'optimizer' not in exported and exported['demo'] is True and 'NOT the weights' in exported['note']
    assert exported['args']['trainset'] == 'sample' and exported['epoch'] == 1
    assert path.stat().st_size < 0.5 * (tmp_path / 'run' / 'last.pth').stat().st_size
    for key, value in full['state_dict'].items():
        assert torch.equal(value, exported['state_dict'][key]), key
    model, meta = load_model(path, 2)
    assert 'demo checkpoint' in describe_checkpoint(path, meta)


def poison_gradients(monkeypatch, bad_steps):
    """Make the gradient of init_feature.weight NaN on the given (1-based) backward passes; the loss stays finite."""
    build = train.build_model
    calls = {'n': 0}

    def building(*args, **kwargs):
        model = build(*args, **kwargs)

        def hook(grad):
            calls['n'] += 1
            return grad * float('nan') if calls['n'] in bad_steps else grad
        model.init_feature.weight.register_hook(hook)
        return model
    monkeypatch.setattr(train, 'build_model', building)


def test_non_finite_gradients_stop_the_run_naming_the_parameters(tmp_path, monkeypatch, caplog):
    poison_gradients(monkeypatch, {2})
    run = tmp_path / 'run'
    assert train.main(TINY + ['--n_epochs', '3', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]) == 1
    assert ("non-finite gradients in 1 parameter tensors (e.g. ['init_feature.weight']) at epoch 2, iteration 1 "
            "(step 2, lr 0.0002). Stopping") in caplog.text
    assert '--skip_nonfinite N skips up to N such batches' in caplog.text
    kept = load(run / 'last.pth')
    assert kept['epoch'] == 1 and all(torch.isfinite(v).all() for v in kept['state_dict'].values())


def test_skip_nonfinite_skips_bad_batches_without_touching_the_weights(tmp_path, monkeypatch, caplog):
    """--skip_nonfinite 1: the bad batch (step 2) is skipped - no update - and training goes on; a second bad
    batch (step 4) stops the run. The skip count is part of the run (saved, resumed)."""
    poison_gradients(monkeypatch, {2, 4})
    run = tmp_path / 'run'
    argv = TINY + ['--n_epochs', '2', '--max_iters_per_epoch', '2', '--checkpoint_dir', str(run)]
    assert train.main(argv + ['--skip_nonfinite', '1', '--n_steps', '100']) == 1
    assert 'batch skipped (1 of --skip_nonfinite 1)' in caplog.text
    assert 'at epoch 2, iteration 2 (step 4' in caplog.text and 'all 1 skips used' in caplog.text
    after_epoch_1 = load(run / 'last.pth')
    assert after_epoch_1['epoch'] == 1 and after_epoch_1['skipped_nonfinite'] == 1
    # the skipped step did not move Adam: one real step in epoch 1 = step count 1
    state = after_epoch_1['optimizer']['state']
    assert all(int(s['step']) == 1 for s in state.values())


@pytest.mark.parametrize('model', ['ssrdefnet', 'ipassr'])
def test_a_skipped_batch_leaves_no_trace_in_batchnorm_statistics(tmp_path, monkeypatch, caplog, model):
    """A NaN input batch (step 2) reaches the BatchNorm layers before anything non-finite is noticed; --skip_nonfinite
    puts their running statistics back, so the epoch ends with the statistics of step 1 and is saved."""
    build, calls, after_step_1 = train.build_model, {'n': 0}, {}

    def building(*args, **kwargs):   # NaN into the first BatchNorm layer's input on the second training step
        model = build(*args, **kwargs)
        norm = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        norm.register_forward_pre_hook(lambda module, inputs: (inputs[0] * float('nan'),)
                                       if module.training and calls['n'] == 1 else None)
        return model

    step = training.loop.train_step

    def recording(run, batch):
        result = step(run, batch)
        calls['n'] += 1
        after_step_1.update({k: v.clone() for k, v in run.model.state_dict().items() if 'running' in k})
        return result

    monkeypatch.setattr(train, 'build_model', building)
    monkeypatch.setattr(training.loop, 'train_step', recording)
    run = tmp_path / 'run'
    assert train.main(TINY + ['--model', model, '--n_epochs', '1', '--max_iters_per_epoch', '2', '--skip_nonfinite',
                              '1', '--checkpoint_dir', str(run)]) == 0
    assert 'batch skipped (1 of --skip_nonfinite 1)' in caplog.text
    saved = load(run / 'last.pth')
    assert saved['epoch'] == 1 and len(after_step_1) >= 2
    for key, value in after_step_1.items():
        assert torch.equal(saved['state_dict'][key], value), key
    assert all(int(s['step']) == 1 for s in saved['optimizer']['state'].values())   # Adam stepped once


def test_resume_keeps_the_runs_settings_and_says_what_the_command_line_changes(tmp_path, caplog):
    run = tmp_path / 'run'
    assert train.main(TINY + ['--n_epochs', '1', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run),
                              '--save_every', '1']) == 0
    assert train.main(['--resume', str(run / 'last.pth'), '--n_epochs', '2']) == 0
    stored = json.loads((run / 'args.json').read_text())
    assert stored['num_workers'] == 0 and stored['save_every'] == 1 and stored['n_epochs'] == 2   # kept, kept, given
    assert "--resume: n_epochs changed from the run's 1 to 2 (command line)" in caplog.text
    assert (run / 'epoch_002.pth').is_file()


def test_validation_data_is_checked_at_start_up_and_validation_never_costs_the_epoch(tmp_path, monkeypatch):
    run = tmp_path / 'run'
    argv = TINY + ['--n_epochs', '1', '--max_iters_per_epoch', '1', '--checkpoint_dir', str(run)]
    with pytest.raises(FAILS, match=r'test-set folder not found: .*nowhere'):
        train.main(argv + ['--val_dir', str(tmp_path / 'nowhere'), '--val_every', '1'])
    (tmp_path / 'val' / 'Set' / 'hr' / 'scene').mkdir(parents=True)
    with pytest.raises(FAILS, match=r'Set/lr_x2 not found'):
        train.main(argv + ['--val_dir', str(tmp_path / 'val'), '--val_every', '1'])
    with pytest.raises(FAILS, match='--val_every 1 needs --val_dir'):
        train.main(argv + ['--val_every', '1'])
    assert not (run / 'last.pth').exists()        # nothing trained before the data was found wanting

    def interrupted(*args):
        raise KeyboardInterrupt                   # a second Ctrl-C during validation
    (tmp_path / 'val' / 'Set' / 'lr_x2' / 'scene').mkdir(parents=True)
    for folder, names in (('hr', ('hr0.png', 'hr1.png')), ('lr_x2', ('lr0.png', 'lr1.png'))):
        for name in names:
            iio.imwrite(tmp_path / 'val' / 'Set' / folder / 'scene' / name,
                        np.zeros((60, 180, 3) if folder == 'hr' else (30, 90, 3), np.uint8))
    monkeypatch.setattr(StereoSR, 'validate', interrupted)      # the stereo task's validation
    with pytest.raises(KeyboardInterrupt):
        train.main(argv + ['--val_dir', str(tmp_path / 'val'), '--val_every', '1'])
    assert load(run / 'last.pth')['epoch'] == 1    # the epoch was saved before validating


def test_lr_crop_trains_on_small_patches_with_a_training_psnr(tmp_path):
    """--lr_crop 8x8 at x2: 16-pixel-wide HR crops, narrower than the stereo boundary, so the training PSNR is over
    whole views (finite, not the NaN of an empty crop); the crop is part of the run and survives a resume."""
    argv = ['--model', 'isrrescnet', '--scale_factor', '2', '--trainset', 'sample', '--lr_crop', '8x8',
            '--batch_size', '1', '--max_iters_per_epoch', '2', '--num_workers', '0', '--device', 'cpu',
            '--checkpoint_dir', str(tmp_path / 'run')]
    assert train.main(argv + ['--n_epochs', '1']) == 0
    assert train.main(['--resume', str(tmp_path / 'run' / 'last.pth'), '--n_epochs', '2', '--device', 'cpu',
                       '--num_workers', '0']) == 0
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert len(rows) == 2
    assert all(10 < row['psnr_left'] < 60 and 10 < row['psnr_right'] < 60 for row in rows)
    assert load(tmp_path / 'run' / 'last.pth')['args']['lr_crop'] == '8x8'
    assert training_psnr_label(tmp_path / 'run') == 'train, left (whole view)'     # the curves' legend
    assert training_psnr_label(tmp_path) == 'train, left (64 px cropped)'          # no args.json: full patches


def test_default_workers_fit_the_usable_cpus():
    """The default --num_workers is at most the CPUs the process may use (its affinity), not a fixed 4 that makes
    torch warn every epoch on a 2-core machine."""
    from training.config import DEFAULT_WORKERS, usable_cpus
    assert 1 <= DEFAULT_WORKERS == min(4, usable_cpus()) <= len(os.sched_getaffinity(0))
    one = subprocess.run(['taskset', '-c', '0', sys.executable, '-c',
                          'from training.config import DEFAULT_WORKERS; print(DEFAULT_WORKERS)'],
                         cwd=ROOT, capture_output=True, text=True)
    assert one.stdout.strip() == '1', one.stderr[-500:]
