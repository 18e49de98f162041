"""What every script needs: the runner that turns errors into one line (`run_script`, `UsageError`, exit codes),
argument types, devices, seeding, and the evaluation scripts' report ending. Checkpoint I/O: models/checkpoint.py;
MATLAB resizing: models/imresize.py; metrics: metrics.py; figures: figures.py."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from models.precision import PRECISIONS, precision_error

# ----------------------------------------------------------------------------------------------------------------
# Scripts: one way to fail. Every script's `if __name__ == '__main__'` is `sys.exit(run_script(main))`.

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A bad command-line argument found after parsing (a value out of range, a combination that cannot work):
    exit status 2, as argparse's own errors."""


def run_script(main, argv=None) -> int:
    """The top-level handler of every script: `main(argv)` and its exit status. What the user can act on is one
    line on stderr, `error: ...`, never a traceback: UsageError exits 2 (argparse's own errors already do);
    a missing or unreadable file, bad data, no memory, a non-finite value or a full disk exits 1; Ctrl-C exits 130.
    Anything else is a bug: one line naming it, exit 1. `--debug` anywhere on the command line (or SR_DEBUG=1)
    re-raises every error with its traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = '--debug' in args or os.environ.get('SR_DEBUG') == '1'
    try:
        status = main([a for a in args if a != '--debug'])
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print('interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  the one place that turns exceptions into messages
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        if isinstance(err, UsageError):
            print(f'error: {message}', file=sys.stderr)
            return EXIT_USAGE
        known = isinstance(err, (OSError, ValueError, MemoryError, torch.OutOfMemoryError)) or (
            isinstance(err, RuntimeError) and 'alloc' in message.lower())      # torch's CPU out-of-memory
        if known:
            print(f'error: {message}', file=sys.stderr)
        else:
            print(f'error: unexpected {type(err).__name__}: {message} (a bug: rerun with --debug for the traceback '
                  f'and report it)', file=sys.stderr)
        return EXIT_RUNTIME
    return status if isinstance(status, int) else 0


def worker_error_message(err: BaseException) -> str:
    """The message of an error raised in a DataLoader worker, without the worker's traceback that torch pastes into
    it ('Caught ValueError in DataLoader worker process 0. Original Traceback ...'): the original last line."""
    message = str(err)
    if 'Original Traceback' in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(': ', 1)[1] if ': ' in last and last.split(': ', 1)[0].isidentifier() else last
    return message


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded(int, text, 1, 'an integer >= 1')


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded(int, text, 0, 'an integer >= 0')


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _bounded(float, text, 0.0, 'a finite number >= 0')


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate, a timeout)."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f'{text!r} is not a finite number > 0')
    return value


def _bounded(kind, text: str, low, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not {what}') from None
    if value < low or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f'{text!r} is not {what}')
    return value


# ----------------------------------------------------------------------------------------------------------------
# Reproducibility

def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive each worker's NumPy/random seeds from its torch seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Devices

def add_device_args(parser) -> None:
    """--device (default: cuda when available) and --amp, shared by every script."""
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (autocast) on CUDA; ignored on CPU')
    parser.add_argument('--debug', action='store_true',
                        help='show the Python traceback of an error (default: one line, error: ...)')


def add_precision_args(parser) -> None:
    """--precision, shared by the inference scripts (demo.py, test_sr.py, test_disp.py); see `resolve_precision`."""
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='inference number format: fp32, or bf16 (bfloat16 autocast; the parallax-attention '
                             'softmax, the cost volume, outputs and metrics stay fp32) on CUDA and on CPUs with '
                             'AVX-512 BF16 or AMX, refused elsewhere; --amp on CUDA means bf16 (default: fp32)')


def resolve_device(name: str) -> torch.device:
    """torch.device for `name`, with a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f'--device {name!r} is not a valid torch device ({err})') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {name} asked for CUDA, but no CUDA device is available; use --device cpu')
    return device


def raise_missing(missing: list[str], what: str = 'files are missing') -> None:
    """A start-up check's ending: every missing file it found named in one FileNotFoundError (a message of its own
    for one, numbered for several: '<n> <what>: (1) ... | (2) ...'), so that no run finds them one at a time."""
    if len(missing) == 1:
        raise FileNotFoundError(missing[0])
    if missing:
        raise FileNotFoundError(f'{len(missing)} {what}: '
                                + ' | '.join(f'({k + 1}) {m}' for k, m in enumerate(missing)))


def check_creatable(folder: Path, flag: str) -> None:
    """At start-up, without making anything (a run stopped by a later check leaves no empty folder behind): `folder`
    exists as a folder, or its nearest existing ancestor is a folder this process may write into. OSError naming
    the flag otherwise."""
    _check_can_make(Path(folder), f'{flag} {folder}', 'the run folder')


def check_output_file(path: Path | None, flag: str) -> None:
    """At start-up, before the work whose numbers it will hold: a file a script writes at its end (e.g. --json) is not
    a folder and its folder can be made (made by the writer, not here), so that a bad path costs nothing. OSError /
    UsageError naming the flag."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f'{flag} {path} is a folder; give a file name, e.g. {path / "results.json"}')
    _check_can_make(path.parent, f'{flag} {path}', 'its folder')


def _check_can_make(folder: Path, label: str, what: str) -> None:
    """`folder` is a folder, or the nearest of its ancestors that exists is a folder this process may write into."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OSError(f'{label}: cannot create {what} ({probe} is a file)')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(f'{label}: cannot write {what} ({probe} is not writable)')


def resolve_precision(args, device: torch.device) -> str:
    """The inference precision that --precision (and --amp, bf16 on CUDA) ask for on `device`; UsageError when the
    device has no bfloat16 arithmetic."""
    precision = 'bf16' if args.amp and device.type == 'cuda' else args.precision
    reason = precision_error(precision, device)
    if reason:
        raise UsageError(reason)
    return precision


def print_report(lines: list[str], results: dict, json_path: Path | None) -> None:
    """The evaluation scripts' ending: the markdown report on stdout, and `results` as JSON at `json_path` (its
    folder made) when one is given, saying where."""
    print('\n'.join(lines))
    if json_path:
        write_json(json_path, results)
        print(f'JSON: {json_path}')


def write_json(path: Path, data) -> None:
    """`data` as indented JSON at `path`, its folder made (a --json file checked at start-up by check_output_file,
    which makes nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
