"""SwinFIRSSR against the authors' code (Zdafeng/SwinFIR): same weights, same input -> same output.

Skipped unless SWINFIR_OFFICIAL_DIR points at a checkout of the official repository (and einops is installed, which
its files import). Evaluation runs the authors' test procedure on the official side (mirror padding by 1-16 px,
crop; official/swinfirssr.official_test) against our model(left, right). Training mode runs with drop-path on,
both sides seeded alike. Small networks in float64 (tolerance 1e-10), the released width in float32 (1e-4); the
full network on a KITTI-size pair only with ZOO_PARITY_FULL=1 (minutes on a CPU). `-s` prints each maximum
difference.
"""
from __future__ import annotations

import os

import pytest
import torch

from models.swinfirssr import SwinFIRSSR, SwinFIRSSRConfig
from tests.conftest import random_pair
from official.swinfirssr import official_forward, official_swinfirssr, official_test, requires_official

pytestmark = [requires_official, pytest.mark.usefixtures('one_thread')]
einops = pytest.importorskip('einops')   # the official swinfir_utils.py imports it
FULL = os.environ.get('ZOO_PARITY_FULL') == '1'
WINDOW = 16
SMALL = dict(embed_dim=30, depths=(2, 2), num_heads=(2, 3), squeeze_factor=5)
# The released width and heads, two groups of two HABs.
RELEASED_WIDTH = dict(embed_dim=180, depths=(2, 2), num_heads=(6, 6))


def paired_models(scale: int, dtype: torch.dtype = torch.float64, residual_scale: float = 1.0, **config):
    """The official model (random init, non-zero random SCAM scales N(0, residual_scale^2)) and ours with its
    weights, loaded strictly; both with the authors' drop-path rate (0.1) unless `config` says otherwise."""
    config = SwinFIRSSRConfig(scale_factor=scale, **config)
    torch.manual_seed(0)
    official = official_swinfirssr(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if name.endswith(('.beta', '.gamma')):
                p.copy_(residual_scale * torch.randn(p.shape, generator=g))
    ours = SwinFIRSSR(config)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.to(dtype), ours.to(dtype)


def pair(size, dtype, batch: int = 1, seed: int = 3):
    return tuple(v.to(dtype) for v in random_pair(batch, *size, seed=seed))


def max_difference(ours_views, official_views) -> float:
    return max((a - b).abs().max().item() for a, b in zip(ours_views, official_views))


def eval_difference(official, ours, scale, size, dtype, batch: int = 1) -> float:
    left, right = pair(size, dtype, batch)
    official.eval(), ours.eval()
    with torch.no_grad():
        expected = official_test(official, left, right, scale, WINDOW)
        out = ours(left, right)
    return max_difference((out.sr_left, out.sr_right), expected)


def train_difference(official, ours, size, dtype, batch: int = 1) -> float:
    """Training mode with drop-path drawn from the same seed. The official network takes sizes that are multiples
    of the window; for other sizes it gets the stack mirrored to the next multiple (what ours does), cropped."""
    left, right = pair(size, dtype, batch, seed=4)
    official.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(7)
        expected = official_test(official, left, right, ours.scale, WINDOW, always=False)
        torch.manual_seed(7)
        out = ours(left, right)
    return max_difference((out.sr_left, out.sr_right), expected)


def test_index_buffers_equal_the_official():
    official, ours = paired_models(4, **SMALL)
    fresh = SwinFIRSSR(ours.config)
    for name in ('relative_position_index_SA', 'relative_position_index_OCA'):
        assert torch.equal(getattr(fresh, name), getattr(official, name))


EVAL_CASES = [  # id, scale, size, batch
    ('x4-odd-13x37', 4, (13, 37), 2),
    ('x2-odd-21x45', 2, (21, 45), 1),
    ('x4-multiple-16x32-whole-window-pad', 4, (16, 32), 1),
    ('x2-odd-9x50', 2, (9, 50), 1),
]


@pytest.mark.parametrize('name, scale, size, batch', EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_matches_the_authors_test(name, scale, size, batch):
    official, ours = paired_models(scale, **SMALL)
    diff = eval_difference(official, ours, scale, size, torch.float64, batch)
    print(f'\n[parity] {name} float64 eval: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


@pytest.mark.parametrize('scale, size', [(4, (32, 48)), (2, (16, 64)), (4, (13, 37))])
def test_train_mode_matches_official(scale, size):
    official, ours = paired_models(scale, **SMALL, drop_path=0.3)
    diff = train_difference(official, ours, size, torch.float64, batch=2)
    print(f'\n[parity] x{scale} {size[0]}x{size[1]} float64 train (drop-path 0.3, seeded): '
          f'max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


def test_gradients_match_official():
    official, ours = paired_models(4, **SMALL, drop_path=0.0)
    official.train(), ours.train()
    left, right = pair((16, 32), torch.float64, seed=5)
    official_forward(official, left, right)[0].square().mean().backward()
    ours(left, right).sr_left.square().mean().backward()
    official_grads = dict(official.named_parameters())
    diff = max((p.grad - official_grads[n].grad).abs().max().item() for n, p in ours.named_parameters())
    print(f'\n[parity] x4 float64 gradients: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


@pytest.mark.parametrize('scale, size', [(4, (21, 45)), (2, (13, 37))])
def test_float32_released_width_matches_official(scale, size):
    official, ours = paired_models(scale, torch.float32, residual_scale=0.1, **RELEASED_WIDTH)
    diff = eval_difference(official, ours, scale, size, torch.float32)
    print(f'\n[parity] width 180 x{scale} {size[0]}x{size[1]} float32 eval: max |ours - official| = {diff:.3e}')
    assert diff < 1e-4


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_small_network_on_a_kitti_size_pair(mode):
    """LR 94x311 at x4 (padded to 96x320), float64: the size-dependent parts (mask, padding, FFT, pooling)."""
    official, ours = paired_models(4, **SMALL)
    if mode == 'eval':
        diff = eval_difference(official, ours, 4, (94, 311), torch.float64)
    else:
        diff = train_difference(official, ours, (94, 311), torch.float64)
    print(f'\n[parity] small x4 KITTI 94x311 float64 {mode}: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


@pytest.mark.skipif(not FULL, reason='set ZOO_PARITY_FULL=1 for the full network on a KITTI-size pair (minutes)')
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_full_network_on_a_kitti_size_pair(mode):
    """The authors' x4 network (24.1M parameters) on LR 94x311 (padded to 96x320 in eval and in training)."""
    official, ours = paired_models(4, torch.float32, residual_scale=0.1)
    if mode == 'eval':
        diff = eval_difference(official, ours, 4, (94, 311), torch.float32)
    else:
        diff = train_difference(official, ours, (94, 311), torch.float32)
    print(f'\n[parity] full x4 KITTI 94x311 float32 {mode}: max |ours - official| = {diff:.3e}')
    assert diff < 1e-4
