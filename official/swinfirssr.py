"""Import helpers for the authors' SwinFIRSSR code (Zdafeng/SwinFIR), used by the SwinFIRSSR parity tests and
bench.py.

Point SWINFIR_OFFICIAL_DIR at a checkout root of the official repository; nothing of it is committed here (its
licence is CC BY-NC-SA 4.0). Only the three arch files are loaded, under private module names. Their imports of
BasicSR (installing it would pull in cv2, lmdb and the rest) are answered by stubs: an ARCH_REGISTRY whose
`register()` leaves the class as it is, and arch_util's `trunc_normal_` and `to_2tuple` (initialisation and
argument plumbing only; parity copies the weights). The official files import `einops`: the parity tests skip
without it. sys.modules is restored afterwards.
"""
from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from torch import nn

from official.loading import load_module, official_names

OFFICIAL_ENV = 'SWINFIR_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('swinfirssr',)   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set SWINFIR_OFFICIAL_DIR to a checkout of Zdafeng/SwinFIR to run parity tests')

# The arch files in import order (each imports only the ones before it), under swinfir/archs/.
_ARCH_FILES = ('local_arch', 'swinfir_utils', 'swinfirssr_arch')
_cache: dict[str, types.ModuleType] = {}


class _Registry:
    """Stands in for BasicSR's ARCH_REGISTRY: `@ARCH_REGISTRY.register()` returns the class unchanged."""

    @staticmethod
    def register(obj=None):
        return (lambda cls: cls) if obj is None else obj


def _to_2tuple(x):
    return tuple(x) if isinstance(x, Iterable) else (x, x)


def _stubs() -> dict[str, types.ModuleType]:
    names = ('basicsr', 'basicsr.utils', 'basicsr.utils.registry', 'basicsr.archs', 'basicsr.archs.arch_util',
             'swinfir', 'swinfir.archs')
    stubs = {name: types.ModuleType(name) for name in names}
    stubs['basicsr.utils.registry'].ARCH_REGISTRY = _Registry()
    stubs['basicsr.archs.arch_util'].trunc_normal_ = nn.init.trunc_normal_   # same signature and bounds (a=-2, b=2)
    stubs['basicsr.archs.arch_util'].to_2tuple = _to_2tuple
    return stubs


def official_modules() -> dict[str, types.ModuleType]:
    """The official arch modules {'local_arch': ..., 'swinfir_utils': ..., 'swinfirssr_arch': ...}."""
    if _cache:
        return _cache
    if not OFFICIAL_DIR:
        raise RuntimeError(f'{OFFICIAL_ENV} is not set')
    directory = Path(OFFICIAL_DIR) / 'swinfir' / 'archs'
    with official_names(_stubs()):
        try:
            for name in _ARCH_FILES:
                module = load_module(f'swinfir_official_{name}', directory / f'{name}.py',
                                     f'{OFFICIAL_ENV}={OFFICIAL_DIR}')
                sys.modules[f'swinfir.archs.{name}'] = module   # the name the next files import it by
                _cache[name] = module
        finally:
            for name in _ARCH_FILES:
                sys.modules.pop(f'swinfir.archs.{name}', None)
    return _cache


def official_swinfirssr(config) -> nn.Module:
    """The authors' `SwinFIRSSR` with the test yml's arguments (and the config's sizes); `config` a
    models.swinfirssr.SwinFIRSSRConfig. It takes the 6-channel stack (B, 6, H, W), H and W multiples of the window,
    and returns (B, 6, sH, sW). img_size 64 as in the yml (it only matters when it is not above the window)."""
    arch = official_modules()['swinfirssr_arch']
    return arch.SwinFIRSSR(
        upscale=config.scale_factor, in_chans=3, img_size=64, window_size=config.window_size,
        compress_ratio=config.compress_ratio, squeeze_factor=config.squeeze_factor, conv_scale=config.conv_scale,
        overlap_ratio=config.overlap_ratio, img_range=1., depths=list(config.depths), embed_dim=config.embed_dim,
        num_heads=list(config.num_heads), mlp_ratio=config.mlp_ratio, upsampler='pixelshuffle',
        resi_connection='SFB', drop_path_rate=config.drop_path)


def official_forward(model: nn.Module, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official network on the stack of a pair whose sizes are multiples of its window; returns the SR views."""
    out = model(torch.cat([left, right], dim=1))
    return out[:, :3], out[:, 3:]


def mirror_pad(x: torch.Tensor, window: int, always: bool = True) -> torch.Tensor:
    """The authors' test-time padding of a (B, C, H, W) stack (swinfirssr_model.py 28-32), in its own words: extend
    the bottom and right with the mirror image (x.flip concatenated, edge repeated) up to the next multiple of the
    window strictly above the size (1 to `window` pixels). always=False: only up to the next multiple (0 to
    window - 1 pixels), what our training mode does with sizes the authors never train on."""
    h, w = x.shape[-2:]
    pad_h, pad_w = ((n // window + 1) * window - n if always else -n % window for n in (h, w))
    x = torch.cat([x, x.flip(2)], 2)[:, :, :h + pad_h]
    return torch.cat([x, x.flip(3)], 3)[:, :, :, :w + pad_w]


def official_test(model: nn.Module, left: torch.Tensor, right: torch.Tensor, scale: int, window: int,
                  always: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """What the authors' SwinFIRSSRModel.test does (swinfirssr_model.py 24-46): `mirror_pad` the stack, run the
    network, crop to s*H x s*W. The caller sets the mode and the grad mode."""
    h, w = left.shape[-2:]
    out = model(mirror_pad(torch.cat([left, right], dim=1), window, always))[..., :h * scale, :w * scale]
    return out[:, :3], out[:, 3:]


def official_runner(name: str, scale: int, ours: nn.Module):
    """bench.py's handle (official.loading.OfficialRunner) on the official model with `ours`' weights: the
    authors' test (padding, eval) for inference; training: the network on the stack (mirrored to the next multiple
    of the window where it is not one, as ours) with the colour Charbonnier loss of their train yml."""
    from official.loading import OfficialRunner
    model = official_swinfirssr(ours.config)
    model.load_state_dict(ours.state_dict())

    def infer(left, right):
        model.eval()
        return official_test(model, left, right, scale, ours.config.window_size)

    def train_loss(left, right, hr_left, hr_right):
        model.train()
        sr_left, sr_right = official_test(model, left, right, scale, ours.config.window_size, always=False)
        error = torch.cat([sr_left - hr_left, sr_right - hr_right], 1)
        return torch.sqrt(error.square().mean(1, keepdim=True) + 1e-6).mean()
    return OfficialRunner(model, infer, train_loss)
