"""NAFSSR against the authors' code (megvii-research/NAFNet): same weights, same input -> same output.

Skipped unless NAFNET_OFFICIAL_DIR points at a checkout of the official repository. The official model takes the
6-channel stack in its pipeline's colour order (BGR per view); our 'bgr' model takes RGB views and reorders inside.
Comparisons run in float64 (tolerance 1e-10) and once in float32 (1e-4); `-s` prints each maximum difference.
"""
from __future__ import annotations

import pytest
import torch

from models.nafssr import NAFSSR, NAFSSRConfig
from tests.conftest import random_pair
from official.nafnet import official_forward, official_nafssr, requires_official

pytestmark = requires_official


def paired_models(width: int, num_blocks: int, scale: int, tlc: bool = True, channel_order: str = 'bgr',
                  dtype: torch.dtype = torch.float64, residual_scale: float = 1.0, *,
                  official_build=official_nafssr, network: type[NAFSSR] = NAFSSR):
    """The official model (random init, non-zero random residual scales N(0, residual_scale^2), so the body
    matters) and ours with its weights, loaded strictly. `official_build` and `network` pair another network of
    NAFSSR's layout (tests/test_cvhssr_parity.py)."""
    torch.manual_seed(0)
    official = official_build(width, num_blocks, scale, tlc=tlc)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if name.endswith(('.beta', '.gamma')):
                p.copy_(residual_scale * torch.randn(p.shape, generator=g))
    ours = network(network.config_class(scale_factor=scale, width=width, num_blocks=num_blocks, tlc=tlc,
                                        channel_order=channel_order))
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.to(dtype), ours.to(dtype)


def max_difference(official, ours, size, channel_order: str = 'bgr', dtype=torch.float64, batch: int = 1, *,
                   forward=official_forward) -> float:
    """Largest |ours - official| over both SR views of a random pair of LR `size`; `forward` runs the official
    model on a pair in its colour order."""
    left, right = (v.to(dtype) for v in random_pair(batch, *size, seed=3))
    to_official = (lambda v: v.flip(1)) if channel_order == 'bgr' else (lambda v: v)
    with torch.no_grad():
        expected = forward(official, to_official(left), to_official(right))
        out = ours(left, right)
    return max((to_official(sr) - e).abs().max().item() for sr, e in zip((out.sr_left, out.sr_right), expected))


CASES = [  # id, scale, size, tlc, channel order
    ('x4-tlc-local-50x150', 4, (50, 150), True, 'bgr'),
    ('x4-tlc-small-20x40', 4, (20, 40), True, 'bgr'),
    ('x2-tlc-local-odd-47x141', 2, (47, 141), True, 'bgr'),
    ('x4-tlc-odd-13x37', 4, (13, 37), True, 'bgr'),
    ('x4-no-tlc-50x150', 4, (50, 150), False, 'bgr'),
    ('x2-no-tlc-odd-21x45', 2, (21, 45), False, 'bgr'),
    ('x4-rgb-raw-stack-50x150', 4, (50, 150), True, 'rgb'),
]


@pytest.mark.parametrize('name, scale, size, tlc, channel_order', CASES, ids=[c[0] for c in CASES])
def test_eval_matches_official(name, scale, size, tlc, channel_order):
    official, ours = paired_models(16, 3, scale, tlc=tlc, channel_order=channel_order)
    official.eval(), ours.eval()
    diff = max_difference(official, ours, size, channel_order, batch=2)
    print(f'\n[parity] {name} float64 eval: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


@pytest.mark.parametrize('scale', [2, 4])
def test_train_mode_matches_official(scale):
    """Training mode with drop_path 0 (the official draws its coin but never drops); 30x90 = the training patch."""
    official, ours = paired_models(16, 3, scale)
    official.train(), ours.train()
    diff = max_difference(official, ours, (30, 90), batch=2)
    print(f'\n[parity] x{scale} float64 train 30x90: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


def test_gradients_match_official():
    """The official LayerNorm has a hand-written backward; ours uses autograd. Same loss -> same gradients."""
    official, ours = paired_models(16, 2, 4)
    official.train(), ours.train()
    left, right = (v.double() for v in random_pair(1, 30, 90, seed=4))
    official_forward(official, left.flip(1), right.flip(1))[0].square().mean().backward()
    ours(left, right).sr_left.flip(1).square().mean().backward()
    official_grads = dict(official.named_parameters())
    diff = max((p.grad - official_grads[n].grad).abs().max().item() for n, p in ours.named_parameters())
    print(f'\n[parity] x4 float64 gradients: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


def test_float32_nafssr_s_size_matches_official():
    """A released width and depth (NAFSSR-S) in float32 with TLC active on a 50x150 input. Residual scales
    N(0, 0.1^2): with unit scales 32 random blocks blow the features up, and float32 rounding with them."""
    official, ours = paired_models(64, 32, 4, dtype=torch.float32, residual_scale=0.1)
    official.eval(), ours.eval()
    diff = max_difference(official, ours, (50, 150), dtype=torch.float32)
    print(f'\n[parity] NAFSSR-S x4 float32 eval TLC 50x150: max |ours - official| = {diff:.3e}')
    assert diff < 1e-4
