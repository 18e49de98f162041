"""Import helpers for the authors' EHFSSR code (jianwensong/EHFSSR), used by the EHFSSR parity tests and bench.py.

Point EHFSSR_OFFICIAL_DIR at a checkout root of the official repository; nothing of it is committed here. Only the
two arch files are loaded (basicsr/models/archs/EHFSSR_S_arch.py and EHFSSR_arch.py), under private module names;
they need einops (tests skip without it). Their unused `matplotlib.pyplot` import is served by a stub while they load.
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from official.loading import OfficialRunner, load_module, official_names

OFFICIAL_ENV = 'EHFSSR_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('ehfssr-s', 'ehfssr')   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set EHFSSR_OFFICIAL_DIR to a checkout of jianwensong/EHFSSR to run its parity tests')
# zoo name -> (arch file, class) under basicsr/models/archs/
_CLASSES = {'ehfssr-s': ('EHFSSR_S_arch', 'EHFSSR_S'), 'ehfssr': ('EHFSSR_arch', 'EHFSSR')}
_cache: dict[str, types.ModuleType] = {}


def official_arch(name: str) -> type:
    """The official network class of zoo network `name` ('ehfssr-s' or 'ehfssr')."""
    file, cls = _CLASSES[name]
    if file not in _cache:
        if not OFFICIAL_DIR:
            raise RuntimeError(f'{OFFICIAL_ENV} is not set')
        pytest.importorskip('einops')
        matplotlib = types.ModuleType('matplotlib')
        matplotlib.pyplot = types.ModuleType('matplotlib.pyplot')
        with official_names({'matplotlib': matplotlib, 'matplotlib.pyplot': matplotlib.pyplot}):
            _cache[file] = load_module(f'ehfssr_official_{file}',
                                       Path(OFFICIAL_DIR) / 'basicsr' / 'models' / 'archs' / f'{file}.py',
                                       f'{OFFICIAL_ENV}={OFFICIAL_DIR}')
    return getattr(_cache[file], cls)


def official_ehfssr(name: str, scale: int, dim: int | None = None, groups: int = 5, blocks: int = 6) -> nn.Module:
    """The authors' model as their test ymls build it (dim 48 for EHFSSR-S, 64 for EHFSSR unless given), randomly
    initialised. It takes the 6-channel stack (B, 6, H, W) in its pipeline's colour order (BGR per view)."""
    kwargs = dict(up_scale=scale, groups=groups, num=blocks)
    if dim is not None:
        kwargs['dim'] = dim
    return official_arch(name)(**kwargs)


def official_forward(model: nn.Module, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the official model on a pair of (B, 3, H, W) views in the order given; returns the two SR views."""
    out = model(torch.cat([left, right], dim=1))
    return out[:, :3], out[:, 3:]


def official_runner(name: str, scale: int, ours: nn.Module) -> OfficialRunner:
    """bench.py's handle on the official model with `ours`' weights, in the colour order `ours` expects: the
    evaluation forward, and the training forward + the authors' loss (MSE + 0.02 x FFT L1) on the 6-channel stack."""
    model = official_ehfssr(name, scale, ours.config.dim, ours.config.groups, ours.config.blocks)
    model.load_state_dict(ours.state_dict())
    flip = (lambda v: v.flip(1)) if ours.config.channel_order == 'bgr' else (lambda v: v)

    def infer(left, right):
        return tuple(flip(v) for v in official_forward(model, flip(left), flip(right)))

    def train_loss(left, right, hr_left, hr_right):
        sr = torch.cat(official_forward(model, flip(left), flip(right)), 1)
        hr = torch.cat([flip(hr_left), flip(hr_right)], 1)
        sr_fft, hr_fft = torch.fft.rfft2(sr), torch.fft.rfft2(hr)   # official FFTLoss: L1 of stacked real, imag
        fft = torch.stack([sr_fft.real, sr_fft.imag], -1) - torch.stack([hr_fft.real, hr_fft.imag], -1)
        return torch.nn.functional.mse_loss(sr, hr) + 0.02 * fft.abs().mean()
    return OfficialRunner(model, infer, train_loss)
