"""Import helpers for the authors' iPASSR code (YingqianWang/iPASSR), used by the parity tests and bench.py.

Point IPASSR_OFFICIAL_DIR at a checkout of the official repository (model.py, train.py); nothing of it is committed
here. model.py is imported under a private module name; the loss lines of train.py, which are inline in its
train(), are read from the checkout and executed as they are.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812  (the official loss lines refer to F)

from official.loading import OfficialRunner

OFFICIAL_ENV = 'IPASSR_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('ipassr',)   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set IPASSR_OFFICIAL_DIR to a checkout of YingqianWang/iPASSR to run its parity tests')
# Our loss-term names and the official train.py variables holding them.
LOSS_TERMS = {'sr': 'loss_SR', 'cons': 'loss_cons', 'photo': 'loss_photo', 'smooth': 'loss_smooth',
              'cycle': 'loss_cycle', 'total': 'loss'}
_cache: dict[str, types.ModuleType] = {}


def official_directory() -> Path:
    if not OFFICIAL_DIR:
        raise RuntimeError('IPASSR_OFFICIAL_DIR is not set')
    directory = Path(OFFICIAL_DIR)
    for name in ('model.py', 'train.py'):
        if not (directory / name).is_file():
            raise FileNotFoundError(f'IPASSR_OFFICIAL_DIR={directory} has no {name}')
    return directory


def official_model_module() -> types.ModuleType:
    """The official model.py, imported once as `ipassr_official_model` (its own imports are standard packages)."""
    if 'model' not in _cache:
        path = official_directory() / 'model.py'
        spec = importlib.util.spec_from_file_location('ipassr_official_model', path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _cache['model'] = module
    return _cache['model']


def official_ipassr(scale: int) -> torch.nn.Module:
    """The official `Net(upscale_factor=scale)`, freshly initialised (its forward takes `is_training` 0 or 1)."""
    return official_model_module().Net(scale)


def official_loss_code() -> str:
    """The lines of the official train() from "''' SR Loss '''" to the total `loss = loss_SR ...`, dedented."""
    lines = (official_directory() / 'train.py').read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "''' SR Loss '''" in line)
    end = next(i for i, line in enumerate(lines) if line.strip().startswith('loss = loss_SR'))
    return textwrap.dedent('\n'.join(lines[start:end + 1]))


def run_official_loss(outputs, lr_left, lr_right, hr_left, hr_right, scale: int) -> dict:
    """Every loss term of the official train.py for `outputs` = the official training-mode return value
    (SR_left, SR_right, (M_right_to_left, M_left_to_right), (V_left, V_right)), as {our term name: tensor}."""
    env = {'torch': torch, 'F': F, 'criterion_L1': torch.nn.L1Loss(), 'scale': scale,
           'HR_left': hr_left, 'HR_right': hr_right, 'LR_left': lr_left, 'LR_right': lr_right}
    env['SR_left'], env['SR_right'], (env['M_right_to_left'], env['M_left_to_right']), \
        (env['V_left'], env['V_right']) = outputs
    env['b'], env['c'], env['h'], env['w'] = lr_left.shape
    exec(official_loss_code(), env)  # noqa: S102  (the authors' code, from IPASSR_OFFICIAL_DIR)
    return {ours: env[theirs] for ours, theirs in LOSS_TERMS.items()}


def official_runner(name: str, scale: int, ours: torch.nn.Module):
    """bench.py's handle (official/loading.py OfficialRunner) on the official Net with `ours`' weights: evaluation as
    test.py runs it (is_training=0, module left in train mode when `ours` uses bn_batch_stats), and the training
    forward + the loss lines of train.py."""
    model = official_ipassr(scale)
    model.load_state_dict(ours.state_dict())

    def infer(left, right):
        model.train(ours.config.bn_batch_stats)
        return model(left, right, 0)

    def train_loss(left, right, hr_left, hr_right):
        model.train()
        return run_official_loss(model(left, right, 1), left, right, hr_left, hr_right, scale)['total']
    return OfficialRunner(model, infer, train_loss)

