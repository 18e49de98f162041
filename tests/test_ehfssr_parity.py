"""EHFSSR against the authors' code (jianwensong/EHFSSR): same weights, same input -> same output and gradients.

Skipped unless EHFSSR_OFFICIAL_DIR points at a checkout of the official repository (and einops is installed). The
official model takes the 6-channel stack in its pipeline's colour order (BGR per view); our 'bgr' model takes RGB
views and reorders inside. Random weights: the official initialisation plus random LayerNorm affines and GSAttention
temperatures (initialised to 1 and 0 there), so that every parameter matters. float64 tolerance 1e-10, float32
1e-4; `-s` prints each maximum difference. The KITTI-size pair (LR 94x311) runs with ZOO_PARITY_FULL=1; the
authors' weights on Motorcycle need ../shared/weights.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.ehfssr import EHFSSR, EHFSSRConfig, VARIANTS
from tests.conftest import random_pair
from official.ehfssr import official_ehfssr, official_forward, requires_official
from tests.test_ehfssr import authors_weights, motorcycle, to_tensor

pytestmark = [requires_official, pytest.mark.usefixtures('one_thread')]
FULL = bool(os.environ.get('ZOO_PARITY_FULL'))
VARIANT_OF = {'ehfssr-s': 's', 'ehfssr': 'base'}


def paired_models(name: str, scale: int, dim: int = 16, groups: int = 1, blocks: int = 4,
                  dtype: torch.dtype = torch.float64):
    """The official model (random init, random LayerNorm affines and temperatures) and ours with its weights,
    loaded strictly."""
    torch.manual_seed(0)
    official = official_ehfssr(name, scale, dim, groups, blocks)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, p in official.named_parameters():
            if 'Layernorm' in key or 'layernorm' in key or key.endswith('temperature'):
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=g))
    config = EHFSSRConfig.variant(VARIANT_OF[name], scale, dim=dim, groups=groups, blocks=blocks,
                                  channel_order='bgr')
    ours = EHFSSR(config)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.to(dtype), ours.to(dtype)


def max_difference(official, ours, size, dtype=torch.float64, batch: int = 1, seed: int = 3) -> float:
    left, right = (v.to(dtype) for v in random_pair(batch, *size, seed=seed))
    with torch.no_grad():
        expected = official_forward(official, left.flip(1), right.flip(1))
        out = ours(left, right)
    return max((sr.flip(1) - e).abs().max().item() for sr, e in zip((out.sr_left, out.sr_right), expected))


CASES = [  # scale, LR size: odd sizes from the 9x9 minimum up; 11x101 has matches beyond the 96-pixel band
    (4, (9, 9)), (2, (13, 37)), (4, (21, 45)), (2, (11, 101)), (4, (32, 48)),
]


@pytest.mark.parametrize('name', ['ehfssr-s', 'ehfssr'])
@pytest.mark.parametrize('mode', ['eval', 'train'])
@pytest.mark.parametrize('scale, size', CASES, ids=[f'x{s}-{h}x{w}' for s, (h, w) in CASES])
def test_float64_matches_official(name, mode, scale, size):
    official, ours = paired_models(name, scale)
    official.train(mode == 'train'), ours.train(mode == 'train')
    diff = max_difference(official, ours, size, batch=2)
    print(f'\n[parity] {name} x{scale} {size[0]}x{size[1]} float64 {mode}: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


@pytest.mark.parametrize('name', ['ehfssr-s', 'ehfssr'])
def test_gradients_match_official(name):
    """The official LayerNorm has a hand-written backward; ours uses autograd (and a fused window attention)."""
    official, ours = paired_models(name, 4)
    official.train(), ours.train()
    left, right = (v.double() for v in random_pair(1, 19, 35, seed=4))
    official_forward(official, left.flip(1), right.flip(1))[0].square().mean().backward()
    ours(left, right).sr_left.flip(1).square().mean().backward()
    official_grads = dict(official.named_parameters())
    diff = max((p.grad - official_grads[n].grad).abs().max().item() for n, p in ours.named_parameters())
    print(f'\n[parity] {name} x4 float64 gradients: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


SIZES32 = [(2, (23, 45))] + ([(4, (94, 311))] if FULL else [])


@pytest.mark.parametrize('name', ['ehfssr-s', 'ehfssr'])
@pytest.mark.parametrize('scale, size', SIZES32, ids=[f'x{s}-{h}x{w}' for s, (h, w) in SIZES32])
def test_float32_released_size_matches_official(name, scale, size):
    """The released width and depth (5 groups of 6 blocks) in float32, eval and train."""
    dim = VARIANTS[VARIANT_OF[name]]['dim']
    official, ours = paired_models(name, scale, dim=dim, groups=5, blocks=6, dtype=torch.float32)
    for mode in (False, True):
        official.train(mode), ours.train(mode)
        diff = max_difference(official, ours, size, dtype=torch.float32)
        print(f'\n[parity] {name} x{scale} {size[0]}x{size[1]} float32 {"train" if mode else "eval"}: '
              f'max |ours - official| = {diff:.3e}')
        assert diff < 1e-4


def test_authors_weights_png_equal_official_on_motorcycle():
    """The authors' EHFSSR-S x4 on the real Motorcycle pair: our 8-bit SR images against the official code's
    (BasicSR tensor2img: clamp, x255, round), >= 99.9 % of the values equal and none off by more than 1."""
    from models.checkpoint import load_model
    path = authors_weights(4)
    _, lr = motorcycle(4)
    left, right = to_tensor(lr[0]), to_tensor(lr[1])
    ours, checkpoint = load_model(path, 4, name='ehfssr-s')
    official = official_ehfssr('ehfssr-s', 4)
    official.load_state_dict(checkpoint['params'], strict=True)
    official.eval()
    with torch.no_grad():
        out = ours(left, right)
        expected = official_forward(official, left.flip(1), right.flip(1))   # BGR stack, as their test reads PNGs
    to_png = lambda x: np.round(x.clamp(0, 1).numpy() * 255).astype(np.int16)   # noqa: E731
    ours_png = np.stack([to_png(sr) for sr in (out.sr_left, out.sr_right)])
    official_png = np.stack([to_png(sr.flip(1)) for sr in expected])
    difference = np.abs(ours_png - official_png)
    equal = (difference == 0).mean()
    float_diff = max((sr.flip(1) - e).abs().max().item() for sr, e in zip((out.sr_left, out.sr_right), expected))
    print(f'\n[parity] EHFSSR-S x4 Motorcycle: {100 * equal:.4f} % of 8-bit values equal, max |diff| '
          f'{difference.max()}, float max |diff| {float_diff:.2e}')
    assert equal >= 0.999 and difference.max() <= 1
