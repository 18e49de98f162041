"""Import helpers for the authors' NAFSSR code (megvii-research/NAFNet), used by the NAFSSR parity tests and bench.py.

Point NAFNET_OFFICIAL_DIR at a checkout root of the official repository; nothing of it is committed here. Importing
the `basicsr` package would pull in cv2, lmdb and the rest of BasicSR, so only the four arch files are loaded, under
private module names. While they load, the `basicsr.*` names their imports refer to point at those private modules
(and at a stub `basicsr.utils`); afterwards sys.modules is restored.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from official.loading import OfficialRunner, official_names

OFFICIAL_ENV = 'NAFNET_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('nafssr-t', 'nafssr-s', 'nafssr-b', 'nafssr-l')   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set NAFNET_OFFICIAL_DIR to a checkout of megvii-research/NAFNet to run parity tests')

# The arch files in import order (each imports only the ones before it), under basicsr/models/archs/.
_ARCH_FILES = ('arch_util', 'local_arch', 'NAFNet_arch', 'NAFSSR_arch')
_PACKAGE = 'basicsr.models.archs'
_cache: dict[str, types.ModuleType] = {}


def official_modules() -> dict[str, types.ModuleType]:
    """The official arch modules {'arch_util': ..., 'local_arch': ..., 'NAFNet_arch': ..., 'NAFSSR_arch': ...}."""
    if _cache:
        return _cache
    if not OFFICIAL_DIR:
        raise RuntimeError('NAFNET_OFFICIAL_DIR is not set')
    directory = Path(OFFICIAL_DIR) / 'basicsr' / 'models' / 'archs'
    stubs = {name: types.ModuleType(name) for name in ('basicsr', 'basicsr.models', _PACKAGE, 'basicsr.utils')}
    stubs['basicsr.utils'].get_root_logger = lambda *args, **kwargs: logging.getLogger('basicsr')
    with official_names(stubs):
        for name in _ARCH_FILES:
            path = directory / f'{name}.py'
            if not path.is_file():
                raise FileNotFoundError(f'NAFNET_OFFICIAL_DIR={OFFICIAL_DIR} has no {path}')
            spec = importlib.util.spec_from_file_location(f'nafnet_official_{name}', path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[f'{_PACKAGE}.{name}'] = module  # the name the next files import it by
            spec.loader.exec_module(module)
            _cache[name] = module
        for name in _ARCH_FILES:
            sys.modules.pop(f'{_PACKAGE}.{name}', None)
    return _cache


def official_nafssr(width: int, num_blocks: int, scale: int, tlc: bool = True,
                    drop_path_rate: float = 0.0) -> nn.Module:
    """The authors' model: `NAFSSR` (with the test-time local converter, TLC) or, with tlc=False, the plain
    `NAFNetSR` it derives from (global pooling), both stereo with a SCAM in every block. It takes the 6-channel stack
    (B, 6, H, W) and returns (B, 6, sH, sW). NAFSSR's constructor runs one forward on torch.rand and leaves the model
    in eval mode; NAFNetSR is left in eval mode too, for symmetry."""
    arch = official_modules()['NAFSSR_arch']
    if tlc:
        model = arch.NAFSSR(up_scale=scale, width=width, num_blks=num_blocks, drop_path_rate=drop_path_rate,
                            drop_out_rate=0.0)
    else:
        model = arch.NAFNetSR(up_scale=scale, width=width, num_blks=num_blocks, img_channel=3,
                              drop_path_rate=drop_path_rate, drop_out_rate=0.0, fusion_from=-1, fusion_to=1000,
                              dual=True)
    return model.eval()


def official_forward(model: nn.Module, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the official model on a pair of (B, 3, H, W) views in the channel order given; returns the two SR views."""
    out = model(torch.cat([left, right], dim=1))
    return out[:, :3], out[:, 3:]


def official_runner(name: str, scale: int, ours: nn.Module):
    """bench.py's handle (official/loading.py OfficialRunner) on the official model with `ours`' weights: evaluation
    with TLC, and the training forward + MSE loss on the 6-channel stack, in the colour order `ours` expects."""
    config = ours.config
    model = official_nafssr(config.width, config.num_blocks, scale, tlc=config.tlc, drop_path_rate=config.drop_path)
    model.load_state_dict(ours.state_dict())

    def train_loss(left, right, hr_left, hr_right):
        sr_left, sr_right = official_forward(model, left, right)
        return torch.nn.functional.mse_loss(torch.cat([sr_left, sr_right], 1), torch.cat([hr_left, hr_right], 1))
    return OfficialRunner(model, lambda left, right: official_forward(model, left, right), train_loss)

