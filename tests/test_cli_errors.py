"""Every entry point fails the same way: one line `error: ...` on stderr, exit 2 for a bad argument, 1 for a run
that cannot go on, 130 for Ctrl-C, a traceback only with --debug; DataLoader workers' errors without their
tracebacks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import bench
import demo
import make_figs
import test_disp
import test_sr
import train
import weights
from data import prepare_test, prepare_train
from utils import UsageError, run_script, worker_error_message

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ('demo.py', 'train.py', 'test_sr.py', 'test_disp.py', 'bench.py', 'make_figs.py', 'data/prepare_test.py',
           'data/prepare_train.py')


def outcome(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of a script's main run through the top-level handler, as `python script.py` would."""
    try:
        status = run_script(main, argv)
    except SystemExit as exit_:       # argparse's own usage errors (exit 2)
        status = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=__import__('sys').stderr)
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return status, err


def test_every_script_ends_in_the_handler():
    handler = r"if __name__ == '__main__':\n    sys\.exit\(run_script\(main\)\)"
    for script in SCRIPTS:
        assert re.search(handler, (ROOT / script).read_text()), script


def test_scripts_raise_and_only_the_handler_prints():
    """One error idiom: no module exits with its own message (sys.exit('error: ...')); they raise (UsageError for a
    bad argument, the error itself for a file or data at fault) and run_script formats it."""
    sources = [p for p in ROOT.rglob('*.py') if 'tests' not in p.parts and '.git' not in p.parts]
    assert len(sources) > 20
    for path in sources:
        assert not re.search(r"sys\.exit\(f?['\"]error", path.read_text()), path


@pytest.mark.parametrize('main,argv,status,message', [
    (demo.main, ['--tile', '-5'], 2, "argument --tile: '-5' is not an integer >= 0"),
    (demo.main, ['--overlap', 'x'], 2, "argument --overlap: 'x' is not an integer >= 0"),
    (demo.main, ['--left', 'L.png'], 2, 'error: give both --left and --right'),
    (demo.main, ['--checkpoint', 'nothing.pth'], 1, 'error: checkpoint nothing.pth not found'),
    (demo.main, ['--model', 'nope'], 2, "argument --model: invalid choice: 'nope'"),
    (test_disp.main, ['--model', 'dsdmsr', '--checkpoint', str(ROOT / 'checkpoints' / 'dsdmsr_demo_x4.pth'), '--maps',
                      str(ROOT / 'README.md')], 2, 'README.md is a file; give the folder that holds'),
    (weights.main, ['--timeout', 'nan'], 2, "argument --timeout: 'nan' is not a finite number >= 0"),
    (weights.main, ['--timeout', '0'], 2, "argument --timeout: '0' is not a finite number > 0"),
    (test_sr.main, ['--model', 'nafssr-t'], 2, 'error: --model nafssr-t needs --checkpoint PATH'),
    (test_sr.main, ['--batch_size', '0'], 2, "argument --batch_size: '0' is not an integer >= 1"),
    (test_disp.main, ['--checkpoint', str(ROOT / 'checkpoints' / 'ssrdefnet_demo_x4.pth'), '--testset_dir',
                      'nowhere'], 1, 'error: test-set folder not found: nowhere'),
    (bench.main, ['--sizes', '30x'], 2, "error: --sizes '30x': each comma-separated item must be an LR size"),
    (bench.main, ['--cases', 'train', '--batches', '5'], 2, 'error: no case matches'),
    (bench.main, ['--sizes', '0x8'], 2, "error: --sizes '0x8': each comma-separated item must be an LR size"),
    (bench.main, ['--model', 'srnet', '--variants', 'ours_lowmem'], 2, 'srnet has no memory options'),
    (bench.main, ['--repeats', '0'], 2, "argument --repeats: '0' is not an integer >= 1"),
    (bench.main, ['--model', 'nope'], 2, "error: --model 'nope' is not in the zoo"),
    (make_figs.main, ['--bench', 'missing.json', '--checkpoint', 'nothing.pth'], 1, 'error: --bench missing.json not'),
    (prepare_test.main, ['--src', 'nowhere', '--preset', 'middlebury'], 1, 'error: --src nowhere is not a folder'),
    (prepare_train.main, ['--src', 'nowhere'], 1, 'error: nowhere/Middlebury not found'),
    (train.main, ['--batch_size', '3', '--grad_accum', '2', '--trainset', 'sample'], 2, 'must split into'),
    (train.main, ['--trainset', 'sample', '--lr_crop', '1x1'], 2, '--lr_crop 1x1: ssrdefnet cannot run on 1x1 LR'),
    (train.main, ['--gamma', '1e6'], 2, "argument --gamma: '1e6' is not in (0, 1]"),
    (train.main, ['--gamma', '0'], 2, "argument --gamma: '0' is not in (0, 1]"),
    (train.main, ['--batch_size', '0'], 2, "argument --batch_size: '0' is not an integer >= 1"),
    (train.main, ['--n_epochs', '-1'], 2, "argument --n_epochs: '-1' is not an integer >= 1"),
    (train.main, ['--skip_nonfinite', '-1'], 2, "argument --skip_nonfinite: '-1' is not an integer >= 0"),
    (train.main, ['--disp_supervision', 'nan'], 2, "argument --disp_supervision: 'nan' is not a finite number >= 0"),
    (train.main, ['--lr', '0'], 2, "argument --lr: '0' is not a finite number > 0"),
    (train.main, ['--trainset', 'sample', '--loss_weight', 'sr=-1'], 2, "--loss_weight 'sr=-1': a weight is a finite"),
    (train.main, ['--trainset', 'sample', '--loss_weight', 'sr=nan'], 2, "--loss_weight 'sr=nan': a weight is a fin"),
])
def test_bad_arguments_and_inputs_give_one_line_and_the_right_status(main, argv, status, message, capsys):
    code, err = outcome(main, argv, capsys)
    assert code == status and message in err, err
    assert sum('error' in line for line in err.splitlines()) == 1      # one line says what is wrong


def test_bad_files_are_named(tmp_path, capsys):
    garbage = tmp_path / 'garbage.png'
    garbage.write_bytes(b'not an image')
    truncated = tmp_path / 'cut.pth'
    truncated.write_bytes((ROOT / 'checkpoints' / 'ssrdefnet_demo_x4.pth').read_bytes()[:4000])
    bad_pfm = tmp_path / 'bad.pfm'
    bad_pfm.write_bytes(b'Pf\n4 4\n-1.0\n' + b'\0' * 10)
    good = tmp_path / 'good.png'
    import imageio.v3 as iio
    import numpy as np
    iio.imwrite(good, np.zeros((32, 40, 3), np.uint8))
    cases = [
        (demo.main, ['--left', str(garbage), '--right', str(garbage)], f'{garbage}: cannot decode image'),
        (demo.main, ['--checkpoint', str(truncated)], 'cut.pth: cannot read this checkpoint'),
        (demo.main, ['--left', str(good), '--right', str(good), '--gt_disp', str(bad_pfm)], 'bad.pfm'),
        (test_sr.main, ['--checkpoint', str(truncated), '--scale_factor', '4'], 'cut.pth: cannot read this checkpoint'),
        (train.main, ['--resume', str(truncated)], 'cut.pth: cannot read this checkpoint'),
    ]
    for main, argv, message in cases:
        code, err = outcome(main, argv, capsys)
        assert code == 1 and message in err and sum('error' in line for line in err.splitlines()) == 1, (argv, err)


def test_output_folder_that_cannot_be_made_is_named(tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    code, err = outcome(demo.main, ['--out', str(blocker / 'out')], capsys)       # before the network runs
    assert code == 1 and f'error: --out {blocker / "out"}: cannot create the output folder' in err, err


def test_unexpected_errors_say_so_and_debug_shows_the_traceback(capsys):
    def broken(argv):
        return {}['missing']
    assert run_script(broken, []) == 1
    err = capsys.readouterr().err
    assert "error: unexpected KeyError: 'missing' (a bug: rerun with --debug" in err and 'Traceback' not in err
    with pytest.raises(KeyError):
        run_script(broken, ['--debug'])

    def usage(argv):
        raise UsageError('--x 3 cannot work with --y')
    assert run_script(usage, []) == 2 and capsys.readouterr().err == 'error: --x 3 cannot work with --y\n'

    def interrupted(argv):
        raise KeyboardInterrupt
    assert run_script(interrupted, []) == 130 and 'interrupted' in capsys.readouterr().err

    def out_of_memory(argv):
        raise RuntimeError('[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can\'t allocate memory')
    assert run_script(out_of_memory, []) == 1 and 'unexpected' not in capsys.readouterr().err


def test_worker_errors_lose_the_workers_traceback():
    pasted = ValueError('Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
                        'last):\n  File "x.py", line 3, in load\n    raise ValueError(...)\nValueError: bad training '
                        'patch /data/000001: /data/000001/hr0.png: cannot decode image\n')
    assert worker_error_message(pasted) == 'bad training patch /data/000001: /data/000001/hr0.png: cannot decode image'
    assert worker_error_message(ValueError('plain message')) == 'plain message'


@pytest.mark.parametrize('argv,message', [
    (['--model', 'srnet', '--trainset', 'sample', '--lr_crop', '31x16'],
     'error: --lr_crop 31x16 is larger than the 30x90 LR training patches'),
    (['--model', 'srnet', '--trainset', 'sample', '--lr_crop', '16'], "argument --lr_crop: expected HxW"),
    (['--model', 'dsdmsr', '--lr_crop', '16x16'], 'error: --lr_crop crops stereo patches; dsdmsr crops its maps'),
])
def test_bad_lr_crop_is_refused(argv, message, tmp_path, capsys):
    code, err = outcome(train.main, [*argv, '--checkpoint_dir', str(tmp_path / 'run'), '--device', 'cpu'], capsys)
    assert code in (1, 2) and message in err, err
    assert not (tmp_path / 'run' / 'last.pth').exists()
