"""The authors' SSRDE-FNet code (MIVRC/SSRDEFNet-PyTorch), run beside ours by the parity tests and bench.py.

Point SSRDEF_OFFICIAL_DIR at a checkout of the official repository; nothing of it is committed here. The official
files are imported under private module names, with their own `utils`/`common` in place of ours while they load.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812  (the official loss code refers to F)

from official.loading import OfficialRunner

OFFICIAL_ENV = 'SSRDEF_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('ssrdefnet',)   # the zoo names this module runs the official code of (bench.py)
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set SSRDEF_OFFICIAL_DIR to a checkout of MIVRC/SSRDEFNet-PyTorch to run parity tests')
_SHADOWED = ('utils', 'common', 'model', 'loss')
_cache: dict[str, types.ModuleType] = {}


@contextlib.contextmanager
def _official_imports(directory: Path):
    saved = {name: sys.modules.pop(name) for name in _SHADOWED if name in sys.modules}
    sys.path.insert(0, str(directory))
    try:
        try:
            import torchvision.transforms  # noqa: F401  (official model.py imports it but never uses it)
        except ImportError:
            stub = types.ModuleType('torchvision')
            stub.transforms = types.ModuleType('torchvision.transforms')
            sys.modules.setdefault('torchvision', stub)
            sys.modules.setdefault('torchvision.transforms', stub.transforms)
        yield
    finally:
        sys.path.remove(str(directory))
        for name in _SHADOWED:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def official_module(name: str) -> types.ModuleType:
    """The official `model` or `loss` module, imported once."""
    if name not in _cache:
        directory = Path(OFFICIAL_DIR)
        path = directory / f'{name}.py'
        if not path.is_file():
            raise FileNotFoundError(f'SSRDEF_OFFICIAL_DIR={directory} has no {name}.py')
        with _official_imports(directory):
            spec = importlib.util.spec_from_file_location(f'ssrdef_official_{name}', path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        _cache[name] = module
    return _cache[name]


# --------------------------------------------------------------------------------------------------------------
# The loss code of the official train.py, executed verbatim (it is inline in train(), not a function).

LOSS_TERMS = {'sr': 'loss_SR', 'photo': 'loss_photo', 'smooth': 'loss_smooth', 'cycle': 'loss_cycle',
              'cons': 'loss_cons', 'disp_smooth': 'loss_S', 'disp_unsup': 'loss_P', 'total': 'loss'}


def official_loss_code() -> str:
    """The lines of the official train() from "''' SR Loss '''" to the total `loss = ...`, dedented."""
    lines = (Path(OFFICIAL_DIR) / 'train.py').read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "''' SR Loss '''" in line)
    end = next(i for i, line in enumerate(lines) if line.strip().startswith('loss = loss_SR'))
    return textwrap.dedent('\n'.join(lines[start:end + 1]))


def run_official_loss(outputs, lr_left, lr_right, hr_left, hr_right, scale) -> dict:
    loss_module = official_module('loss')
    names = ['SR_left', 'SR_right', 'SR_left2', 'SR_right2', 'SR_left3', 'SR_right3', 'SR_left4', 'SR_right4']
    env = dict(zip(names, outputs[:8]))
    (env['M_right_to_left'], env['M_left_to_right']), (env['disp1'], env['disp2']), (env['V_left'], env['V_right']), \
        (env['V_left2'], env['V_right2']), (env['disp1_high'], env['disp2_high']), \
        (env['M_right_to_left3'], env['M_left_to_right3']), (env['disp1_3'], env['disp2_3']), \
        (env['V_left3'], env['V_right3']), (env['V_left4'], env['V_right4']), \
        (env['disp1_high_2'], env['disp2_high_2']) = outputs[8:]
    b, c, h, w = lr_left.shape
    env.update(HR_left=hr_left, HR_right=hr_right, LR_left=lr_left, LR_right=lr_right, b=b, c=c, h=h, w=w,
               scale=scale, torch=torch, F=F, criterion_L1=torch.nn.L1Loss(),
               dispwarpfeature=official_module('model').dispwarpfeature,
               loss_disp_smoothness=loss_module.loss_disp_smoothness,
               loss_disp_unsupervised=loss_module.loss_disp_unsupervised)
    exec(official_loss_code(), env)  # noqa: S102  (the authors' code, from SSRDEF_OFFICIAL_DIR)
    return {ours: env[theirs] for ours, theirs in LOSS_TERMS.items()}


def official_runner(name: str, scale: int, ours: torch.nn.Module) -> OfficialRunner:
    model = official_module('model').SSRDEFNet(scale)
    model.load_state_dict(ours.state_dict())
    return OfficialRunner(model, lambda left, right: model(left, right, 0),
                          lambda left, right, hr_left, hr_right: run_official_loss(
                              model(left, right, 1), left, right, hr_left, hr_right, scale)['total'])
