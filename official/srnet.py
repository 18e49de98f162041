"""Import helpers for the authors' SRNet code (selous123/SRNet-zoom-pytorch), used by the parity tests and bench.py.

Point SRNET_OFFICIAL_DIR at a checkout of the official repository; nothing of it is committed here. Only
src/model/common.py and src/model/ssl.py are loaded, under private module names; while ssl.py loads, the name it
imports common by (`model.common`) points at the private module, and sys.modules is restored afterwards. Its label
generator, generate_s_label.py, is a script; `official_diff_label` runs its Pillow pipeline on arrays.
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from models.srnet import diff_labels
from official.loading import OfficialRunner, load_module, official_names

OFFICIAL_ENV = 'SRNET_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('srnet',)   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set SRNET_OFFICIAL_DIR to a checkout of selous123/SRNet-zoom-pytorch to run parity tests')
RGB_RANGE = 255.0
_cache: dict[str, types.ModuleType] = {}


def _load(name: str, path: Path) -> types.ModuleType:
    return load_module(name, path, f'{OFFICIAL_ENV}={OFFICIAL_DIR}')


def official_modules() -> dict[str, types.ModuleType]:
    """{'common': src/model/common.py, 'ssl': src/model/ssl.py}."""
    if _cache:
        return _cache
    if not OFFICIAL_DIR:
        raise RuntimeError(f'{OFFICIAL_ENV} is not set')
    directory = Path(OFFICIAL_DIR) / 'src' / 'model'
    _cache['common'] = _load('srnet_official_common', directory / 'common.py')
    package = types.ModuleType('model')
    package.common = _cache['common']
    with official_names({'model': package, 'model.common': _cache['common']}):
        _cache['ssl'] = _load('srnet_official_ssl', directory / 'ssl.py')
    return _cache


def official_srnet(scale: int, n_resblocks: int = 16, n_feats: int = 64) -> torch.nn.Module:
    """The released configuration: `--model SSL --attn`, option.py defaults (reduction 16, res_scale 1, 0-255)."""
    args = types.SimpleNamespace(n_resblocks=n_resblocks, n_feats=n_feats, scale=[scale], rgb_range=255, n_colors=3,
                                 reduction=16, res_scale=1, attn=True)
    return official_modules()['ssl'].EDSR_Zoom(args)


def official_zoom(model: torch.nn.Module, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lr (N, 3, h, h) in [0, 1] -> (SR, Diff prediction) in [0, 1] units (the official model runs on 0-255)."""
    sr, diff = model(lr * RGB_RANGE)
    return sr / RGB_RANGE, diff / RGB_RANGE


def official_diff_label(lr: np.ndarray, hr: np.ndarray, resample=None) -> np.ndarray:
    """generate_s_label.py's Diff label on uint8 HWC arrays with the installed Pillow: resize(LR, HR size) (with
    `resample`, None = the installed Pillow's default), ImageChops.difference, EDGE_ENHANCE_MORE, DETAIL."""
    from PIL import Image, ImageChops, ImageFilter
    high, low = Image.fromarray(hr), Image.fromarray(lr)
    up = low.resize(high.size) if resample is None else low.resize(high.size, resample)
    label = ImageChops.difference(high, up).filter(ImageFilter.EDGE_ENHANCE_MORE).filter(ImageFilter.DETAIL)
    return np.asarray(label)


def official_runner(name: str, scale: int, ours: torch.nn.Module):
    """bench.py's handle on the official model with `ours`' weights: each view run alone (the official network
    takes one image; both views as one batch would mix their BatchNorm statistics in training) and the hybrid L1
    with our Diff labels. The official MPR-SA needs square views: bench cases must be square for it."""
    model = official_srnet(scale, ours.config.n_resblocks, ours.config.n_feats)
    torch.nn.Module.load_state_dict(model, ours.state_dict(), strict=True)

    def infer(left, right):
        return official_zoom(model, left)[0], official_zoom(model, right)[0]

    def train_loss(left, right, hr_left, hr_right):
        loss = 0
        for lr, hr in ((left, hr_left), (right, hr_right)):
            sr, diff = official_zoom(model, lr)
            loss = loss + torch.nn.functional.l1_loss(sr, hr) + torch.nn.functional.l1_loss(diff, diff_labels(lr, hr))
        return loss / 2
    return OfficialRunner(model, infer, train_loss)
