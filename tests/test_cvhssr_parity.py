"""CVHSSR against the authors' code (AlexZou14/CVHSSR @252cd38): same weights, same input -> same output.

Skipped unless CVHSSR_OFFICIAL_DIR points at a checkout of the official repository. The official model takes the
6-channel stack in its pipeline's colour order (BGR per view); our 'bgr' model takes RGB views and reorders inside.
Random weights: float64 (tolerance 1e-10) and float32 (1e-4), train and eval mode, TLC on (and off), odd sizes;
the KITTI-size pair (LR 94x311) runs with ZOO_PARITY_FULL=1. The authors' weights (../shared/weights): the 8-bit SR
of a real pair equals the official code's. `-s` prints each maximum difference.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.cvhssr import CVHSSR, CVHSSRLoss
from models.outputs import StereoSROutput
from tests.conftest import random_pair
from official.cvhssr import official_cvhssr, official_forward, official_loss, requires_official
from tests import test_nafssr_parity as nafssr_parity
from tests.test_cvhssr import motorcycle, released_weights, to_tensor
from metrics import quantize
from models.checkpoint import load_model

pytestmark = [requires_official, pytest.mark.usefixtures('one_thread')]
FULL = os.environ.get('ZOO_PARITY_FULL') == '1'


def paired_models(*args, **kwargs):
    """NAFSSR's pairing (official model with random non-zero residual scales, ours with its weights) for CVHSSR."""
    return nafssr_parity.paired_models(*args, official_build=official_cvhssr, network=CVHSSR, **kwargs)


def max_difference(*args, **kwargs) -> float:
    """NAFSSR's comparison on a random pair, through CVHSSR's official forward."""
    return nafssr_parity.max_difference(*args, forward=official_forward, **kwargs)


CASES = [  # id, scale, size, tlc, channel order
    ('x4-tlc-local-odd-47x141', 4, (47, 141), True, 'bgr'),
    ('x2-tlc-local-odd-53x139', 2, (53, 139), True, 'bgr'),
    ('x4-tlc-small-odd-13x37', 4, (13, 37), True, 'bgr'),
    ('x2-tlc-tall-odd-61x45', 2, (61, 45), True, 'bgr'),
    ('x4-no-tlc-odd-47x141', 4, (47, 141), False, 'bgr'),
    ('x4-rgb-raw-stack-21x45', 4, (21, 45), True, 'rgb'),
]


@pytest.mark.parametrize('name, scale, size, tlc, channel_order', CASES, ids=[c[0] for c in CASES])
def test_eval_matches_official(name, scale, size, tlc, channel_order):
    official, ours = paired_models(16, 3, scale, tlc=tlc, channel_order=channel_order)
    official.eval(), ours.eval()
    diff = max_difference(official, ours, size, channel_order, batch=2)
    print(f'\n[parity] {name} float64 eval: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


@pytest.mark.parametrize('scale, size', [(4, (30, 90)), (2, (30, 90)), (4, (47, 141))])
def test_train_mode_matches_official(scale, size):
    """Training mode with drop_path 0 (the official draws its NumPy coin but never drops); 30x90 = the training
    patch; 47x141 is larger than the TLC window, which the official pools locally in training mode too."""
    official, ours = paired_models(16, 3, scale)
    official.train(), ours.train()
    diff = max_difference(official, ours, size, batch=2)
    print(f'\n[parity] x{scale} float64 train {size[0]}x{size[1]}: max |ours - official| = {diff:.3e}')
    assert diff < 1e-10


def test_gradients_and_loss_match_official():
    """The official LayerNorm has a hand-written backward; ours uses autograd. The loss is the official ComposeLoss
    (MSE + 0.01 FFT-Charbonnier on the 6-channel stack) against ours: same value, same gradients."""
    official, ours = paired_models(16, 2, 4)
    official.train(), ours.train()
    left, right = (v.double() for v in random_pair(1, 30, 90, seed=4))
    hr_left, hr_right = (v.double() for v in random_pair(1, 120, 360, seed=5))
    expected = official_loss()(torch.cat(official_forward(official, left.flip(1), right.flip(1)), 1),
                               torch.cat([hr_left.flip(1), hr_right.flip(1)], 1))
    out = ours(left, right)
    loss = CVHSSRLoss(4)(StereoSROutput(out.sr_left.flip(1), out.sr_right.flip(1)), left, right,
                         hr_left.flip(1), hr_right.flip(1))['total']
    expected.backward()
    loss.backward()
    official_grads = dict(official.named_parameters())
    diff = max((p.grad - official_grads[n].grad).abs().max().item() for n, p in ours.named_parameters())
    print(f'\n[parity] x4 float64 loss {loss.item():.6f} vs {expected.item():.6f}; gradients: max |diff| = {diff:.3e}')
    assert abs(loss.item() - expected.item()) < 1e-12 and diff < 1e-10


def test_float32_cvhssr_t_size_matches_official():
    """CVHSSR-T's width and depth in float32, TLC local on a 47x141 input (residual scales N(0, 0.1^2))."""
    official, ours = paired_models(48, 16, 4, dtype=torch.float32, residual_scale=0.1)
    official.eval(), ours.eval()
    diff = max_difference(official, ours, (47, 141), dtype=torch.float32)
    print(f'\n[parity] CVHSSR-T x4 float32 eval TLC 47x141: max |ours - official| = {diff:.3e}')
    assert diff < 1e-4


@pytest.mark.skipif(not FULL, reason='KITTI size: minutes of CPU; set ZOO_PARITY_FULL=1')
@pytest.mark.parametrize('dtype, tolerance, training', [(torch.float64, 1e-10, False), (torch.float32, 1e-4, False),
                                                        (torch.float64, 1e-10, True)])
def test_kitti_size_matches_official(dtype, tolerance, training):
    """LR 94x311 (KITTI at x4) with CVHSSR-T's width and depth: TLC pools 45x135 windows of it."""
    official, ours = paired_models(48, 16, 4, dtype=dtype, residual_scale=0.1)
    official.train(training), ours.train(training)
    diff = max_difference(official, ours, (94, 311), dtype=dtype)
    mode = 'train' if training else 'eval'
    print(f'\n[parity] CVHSSR-T x4 {str(dtype)[6:]} {mode} KITTI 94x311: max |ours - official| = {diff:.3e}')
    assert diff < tolerance


@pytest.mark.parametrize('scale', [4, 2])
def test_authors_weights_give_the_official_pngs(scale, samples_dir):
    """The authors' CVHSSR-T on Motorcycle (x4: the whole LR view, 124x185; x2: a 64x160 LR crop, larger than the
    TLC window), both codes float32 on the CPU: our 8-bit SR equals the official code's (BGR stack in, BGR out)."""
    path = released_weights(scale)
    ours, checkpoint = load_model(path, scale, name='cvhssr-t')
    official = official_cvhssr(48, 16, scale)
    official.load_state_dict(checkpoint['params'], strict=True)
    _, lr = motorcycle(samples_dir, scale)
    left, right = (to_tensor(v if scale == 4 else v[100:164, 150:310]) for v in lr)
    with torch.no_grad():
        out = ours(left, right)
        expected = official_forward(official, left.flip(1), right.flip(1))
    ours8 = torch.cat([quantize(out.sr_left), quantize(out.sr_right)])
    official8 = torch.cat([quantize(sr.flip(1)) for sr in expected])
    levels = ((ours8 - official8) * 255).round().abs()
    equal = (levels == 0).double().mean().item()
    print(f'\n[parity] CVHSSR-T x{scale} Motorcycle {tuple(left.shape[2:])}: {100 * equal:.4f} % of 8-bit values '
          f'equal, max {levels.max().item():.0f} level(s) apart')
    assert equal >= 0.999 and levels.max().item() <= 1
    assert np.isfinite(out.sr_left.numpy()).all()
