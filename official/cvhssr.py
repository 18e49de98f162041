"""Import helpers for the authors' CVHSSR code (AlexZou14/CVHSSR), used by the CVHSSR parity tests and bench.py.

Point CVHSSR_OFFICIAL_DIR at a checkout root of the official repository; nothing of it is committed here. Importing
the `basicsr` package would pull in cv2, lmdb and the rest of BasicSR, so only three files are loaded, under private
module names: the arch file (it imports nothing of BasicSR) and the loss files (losses.py imports
`basicsr.models.losses.loss_util`, pointed at the private copy while it loads; sys.modules is restored afterwards).
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from official.loading import load_module, official_names

OFFICIAL_ENV = 'CVHSSR_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('cvhssr-t', 'cvhssr-s')   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set CVHSSR_OFFICIAL_DIR to a checkout of AlexZou14/CVHSSR to run parity tests')
TRAIN_SIZE = (1, 6, 30, 90)                 # every official yml's train_size
_cache: dict[str, types.ModuleType] = {}


def official_modules() -> dict[str, types.ModuleType]:
    """{'arch': CVHSSR_arch, 'losses': losses} of the official checkout, imported once."""
    if _cache:
        return _cache
    if not OFFICIAL_DIR:
        raise RuntimeError(f'{OFFICIAL_ENV} is not set')
    root, origin = Path(OFFICIAL_DIR) / 'basicsr' / 'models', f'{OFFICIAL_ENV}={OFFICIAL_DIR}'
    _cache['arch'] = load_module('cvhssr_official_arch', root / 'archs' / 'CVHSSR_arch.py', origin)
    loss_util = load_module('cvhssr_official_loss_util', root / 'losses' / 'loss_util.py', origin)
    stubs = {name: types.ModuleType(name) for name in ('basicsr', 'basicsr.models', 'basicsr.models.losses')}
    stubs['basicsr.models.losses.loss_util'] = loss_util
    with official_names(stubs):
        _cache['losses'] = load_module('cvhssr_official_losses', root / 'losses' / 'losses.py', origin)
    return _cache


def official_cvhssr(width: int, num_blocks: int, scale: int, tlc: bool = True,
                    drop_path_rate: float = 0.0) -> nn.Module:
    """The authors' model: `CVHSSR` (with the test-time local converter, TLC) or, with tlc=False, the plain stereo
    `CVHSR` it derives from (global pooling), a CVIM in every block. It takes the 6-channel stack (B, 6, H, W) and
    returns (B, 6, sH, sW). CVHSSR's constructor runs one forward on torch.rand (it consumes the torch RNG) and
    leaves the model in eval mode; CVHSR is left in eval mode too, for symmetry."""
    arch = official_modules()['arch']
    if tlc:
        model = arch.CVHSSR(up_scale=scale, width=width, num_blks=num_blocks, drop_path_rate=drop_path_rate,
                            train_size=TRAIN_SIZE, drop_out_rate=0.0)
    else:
        model = arch.CVHSR(up_scale=scale, width=width, num_blks=num_blocks, img_channel=3,
                           drop_path_rate=drop_path_rate, drop_out_rate=0.0, fusion_from=-1, fusion_to=1000,
                           dual=True)
    return model.eval()


def official_forward(model: nn.Module, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the official model on a pair of (B, 3, H, W) views in the channel order given; returns the two SR views."""
    out = model(torch.cat([left, right], dim=1))
    return out[:, :3], out[:, 3:]


def official_loss() -> nn.Module:
    """The authors' training loss (ComposeLoss, loss_weight 0.01 as in CVHSSR_Sx4.yml) on 6-channel stacks."""
    return official_modules()['losses'].ComposeLoss(loss_weight=0.01, reduction='mean')


def official_runner(name: str, scale: int, ours: nn.Module):
    """bench.py's handle (official.loading.OfficialRunner) on the official model with `ours`' weights: evaluation
    with TLC, and the training forward + ComposeLoss on the 6-channel stack, in the colour order `ours` expects."""
    from official.loading import OfficialRunner
    config = ours.config
    model = official_cvhssr(config.width, config.num_blocks, scale, tlc=config.tlc, drop_path_rate=config.drop_path)
    model.load_state_dict(ours.state_dict())
    loss = official_loss()

    def train_loss(left, right, hr_left, hr_right):
        return loss(torch.cat(official_forward(model, left, right), 1), torch.cat([hr_left, hr_right], 1))
    return OfficialRunner(model, lambda left, right: official_forward(model, left, right), train_loss)
