"""Import helpers for the authors' ISRResCNet code (RaoUmer/ISRResCNet), used by the parity tests and bench.py.

Point ISRRESCNET_OFFICIAL_DIR at a checkout of the official repository (its root, or its isrrescnet_code_demo/
folder); nothing of it is committed here. Its three model files are loaded under private module names; while
problems.py loads, the name it imports its noise estimator by (`modules.wmad_estimator`) points at the private
module, and sys.modules is restored afterwards (our own `models` package is never shadowed).
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

from official.loading import OfficialRunner, load_module, official_names

OFFICIAL_ENV = 'ISRRESCNET_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('isrrescnet',)   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set ISRRESCNET_OFFICIAL_DIR to a checkout of RaoUmer/ISRResCNet to run parity tests')
RGB_RANGE = 255.0
_cache: dict[str, types.ModuleType] = {}


def demo_dir() -> Path:
    root = Path(OFFICIAL_DIR)
    return root / 'isrrescnet_code_demo' if (root / 'isrrescnet_code_demo').is_dir() else root


def _load(name: str, path: Path) -> types.ModuleType:
    return load_module(name, path, f'{OFFICIAL_ENV}={OFFICIAL_DIR}')


def official_modules() -> dict[str, types.ModuleType]:
    """{'wmad': modules/wmad_estimator.py, 'problems': modules/problems.py, 'model': models/ISRResCNet.py}."""
    if _cache:
        return _cache
    if not OFFICIAL_DIR:
        raise RuntimeError(f'{OFFICIAL_ENV} is not set')
    directory = demo_dir()
    _cache['wmad'] = _load('isrrescnet_official_wmad', directory / 'modules' / 'wmad_estimator.py')
    package = types.ModuleType('modules')
    package.wmad_estimator = _cache['wmad']
    with official_names({'modules': package, 'modules.wmad_estimator': _cache['wmad']}):
        _cache['problems'] = _load('isrrescnet_official_problems', directory / 'modules' / 'problems.py')
    _cache['model'] = _load('isrrescnet_official_model', directory / 'models' / 'ISRResCNet.py')
    return _cache


def official_isrrescnet(iterations: int = 10, depth: int = 5) -> torch.nn.Module:
    """The demo's model: ISRResCNet(ResFBNet(depth=5), max_iter=10, sigma_max=2, sigma_min=1)."""
    arch = official_modules()['model']
    with torch.no_grad():
        return arch.ISRResCNet(arch.ResFBNet(depth=depth), max_iter=iterations, sigma_max=2, sigma_min=1)


def official_super_resolve(model: torch.nn.Module, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The demo's inference (test_isrrescnet.py): Super_Resolution(mode='bicubic') on the 0-255 image,
    forward_all_iter(init=True, noise_estimation=True). lr (B, 3, h, w) in [0, 1] -> (B, 3, sh, sw) in [0, 1]."""
    problem = official_modules()['problems'].Super_Resolution(lr * RGB_RANGE, scale=scale, mode='bicubic')
    return model.forward_all_iter(problem, init=True, noise_estimation=True) / RGB_RANGE


def official_runner(name: str, scale: int, ours: torch.nn.Module):
    """bench.py's handle on the official model with `ours`' weights: the demo's inference on [left; right] as one
    batch, and (no training code is released) the full unrolled forward with an L1 loss on the final estimate."""
    model = official_isrrescnet(ours.config.iterations, ours.config.depth)
    model.load_state_dict(ours.state_dict())

    def infer(left, right):
        sr = official_super_resolve(model, torch.cat([left, right]), scale)
        return sr.chunk(2)

    def train_loss(left, right, hr_left, hr_right):
        sr = official_super_resolve(model, torch.cat([left, right]), scale)
        return torch.nn.functional.l1_loss(sr, torch.cat([hr_left, hr_right]))
    return OfficialRunner(model, infer, train_loss)
