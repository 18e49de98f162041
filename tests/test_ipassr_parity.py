"""Numerical equivalence of models/ipassr.py with the authors' iPASSR, run side by side on CPU.

Runs only when IPASSR_OFFICIAL_DIR points at a checkout of YingqianWang/iPASSR (CI has none):
    IPASSR_OFFICIAL_DIR=/path/to/iPASSR python -m pytest -q -s tests/test_ipassr_parity.py

Same weights (the official random initialisation, with random BatchNorm statistics and affine parameters, loaded
strictly into ours) and the same inputs, in the three ways the official network runs:
  train: is_training=1 in train mode (BatchNorm on batch statistics)     vs ours in train mode;
  test:  is_training=0 in train mode, as test.py runs it (never eval())  vs ours in eval mode with bn_batch_stats;
  eval:  is_training=1 after net.eval() (running statistics)             vs ours in eval mode.
float32 within 1e-4 (images in [0, 1]; attention and masks in [0, 1]); float64 within 1e-10.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_pair, randomise_batchnorm
from models import build_model
from models.ipassr import IPASSRLoss
from official.ipassr import LOSS_TERMS, official_ipassr, requires_official, run_official_loss

pytestmark = [requires_official, pytest.mark.filterwarnings('ignore')]
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
# Batch of each way of running: test.py runs one pair per call; training and eval batches of two show that the
# per-view BatchNorm statistics are over the batch of one view.
BATCH = {'train': 2, 'test': 1, 'eval': 2}


def twin_models(scale: int, seed: int = 0, dtype: torch.dtype = torch.float32, **options):
    """(official, ours) with identical random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    official = official_ipassr(scale)
    randomise_batchnorm(official, seed)
    ours = build_model('ipassr', scale, **options)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.to(dtype), ours.to(dtype)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def run_both(mode: str, scale: int, height: int, width: int, dtype: torch.dtype, seed: int = 0):
    """Official and our outputs for one way of running, and both modules afterwards."""
    official, ours = twin_models(scale, seed, dtype, bn_batch_stats=(mode == 'test'))
    official.train(mode != 'eval')
    ours.train(mode == 'train')
    left, right = (x.to(dtype) for x in random_pair(BATCH[mode], height, width, seed=seed + 1))
    with torch.no_grad():
        got = ours(left, right)
        # is_training=1 returns the attention maps and masks too; in test mode they come from the same module
        # state as the is_training=0 call (train-mode BatchNorm normalises with the call's statistics either way).
        sr_left, sr_right, attention, valid = official(left, right, 1)
        if mode == 'test':
            sr_left, sr_right = official(left, right, 0)
    expected = {'sr_left': sr_left, 'sr_right': sr_right, 'M_right_to_left': attention[0],
                'M_left_to_right': attention[1], 'V_left': valid[0], 'V_right': valid[1]}
    ours_named = {'sr_left': got.sr_left, 'sr_right': got.sr_right, 'M_right_to_left': got.attention.left,
                  'M_left_to_right': got.attention.right, 'V_left': got.valid.left, 'V_right': got.valid.right}
    return {name: max_diff(expected[name], ours_named[name]) for name in expected}, official, ours


# float32 at the training patch size and an odd size; float64 (slow on CPU) at smaller even and odd sizes
CASES = [(torch.float32, 4, 30, 90), (torch.float32, 2, 30, 90), (torch.float32, 4, 31, 93), (torch.float32, 2, 31, 93),
         (torch.float64, 4, 16, 48), (torch.float64, 2, 17, 47)]


@pytest.mark.parametrize('dtype, scale, height, width', CASES,
                         ids=[f'x{s}-{h}x{w}-{str(d)[6:]}' for d, s, h, w in CASES])
@pytest.mark.parametrize('mode', ['train', 'test', 'eval'])
def test_outputs_match_official(mode, scale, height, width, dtype):
    diffs, official, ours = run_both(mode, scale, height, width, dtype)
    print(f'\n{mode} x{scale} {height}x{width} {str(dtype)[6:]}: '
          + ', '.join(f'{name} {diff:.1e}' for name, diff in diffs.items()))
    for name, diff in diffs.items():
        assert diff < TOLERANCE[dtype], f'{name}: {diff:.2e}'
    if mode == 'train':  # running statistics updated as by the official two calls (left, then right)
        for (name, a), (_, b) in zip(official.state_dict().items(), ours.state_dict().items()):
            if name.startswith('pam.bn.'):
                assert max_diff(a.double(), b.double()) < TOLERANCE[dtype], name
        assert ours.pam.bn.num_batches_tracked.item() == 2
    else:  # our eval mode never touches the running statistics, not even with bn_batch_stats
        assert ours.pam.bn.num_batches_tracked.item() == 0


def test_bn_batch_stats_batch_equals_single_official_calls_per_view():
    """With a batch of one view per call (test.py), ours on a batch of 1 equals the official call exactly as above;
    the running statistics of the official module in train mode are irrelevant to the output."""
    official, ours = twin_models(4, seed=3, bn_batch_stats=True)
    ours.eval()
    left, right = random_pair(1, 30, 90, seed=4)
    with torch.no_grad():
        first = official(left, right, 0)
        again = official(left, right, 0)          # running statistics have moved; outputs have not
        got = ours(left, right)
    assert max_diff(first[0], again[0]) == 0
    assert max_diff(first[0], got.sr_left) < TOLERANCE[torch.float32]
    assert max_diff(first[1], got.sr_right) < TOLERANCE[torch.float32]


# ---------------------------------------------------------------------------------------------------------------
# Training objective: our IPASSRLoss against the loss lines of the official train.py, executed as they are.

@pytest.mark.parametrize('scale, height, width', [(4, 20, 36), (2, 21, 37)])
def test_loss_terms_and_gradients_match_official_train_py(scale, height, width):
    """Every term and the total on the same outputs and batch, then the gradients of the total with respect to every
    parameter, each network trained by its own loss code (float64, training mode, batch 2)."""
    official, ours = twin_models(scale, seed=5, dtype=torch.float64)
    official.train()
    ours.train()
    lr_left, lr_right = (x.double() for x in random_pair(2, height, width, seed=6))
    g = torch.Generator().manual_seed(7)
    # HR near the bicubic upsampling of LR, so the terms have realistic magnitudes
    hr_left, hr_right = (F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False).clamp(0, 1) * 0.9
                         + 0.1 * torch.rand(2, 3, scale * height, scale * width, generator=g, dtype=torch.float64)
                         for x in (lr_left, lr_right))
    batch = (lr_left, lr_right, hr_left, hr_right)

    out = ours(lr_left, lr_right)
    got = IPASSRLoss(scale)(out, *batch)
    # the official loss lines on our outputs, passed in the official return structure
    same_outputs = run_official_loss((out.sr_left, out.sr_right, tuple(out.attention), tuple(out.valid)), *batch,
                                     scale)
    for name in LOSS_TERMS:
        rel = abs(got[name].item() - same_outputs[name].item()) / abs(same_outputs[name].item())
        print(f'\nx{scale} loss {name}: official {same_outputs[name].item():.12g}, ours {got[name].item():.12g}, '
              f'relative difference {rel:.1e}', end='')
        assert got[name].item() != 0
        assert rel < 1e-12, name
    got['total'].backward()

    expected = run_official_loss(official(lr_left, lr_right, 1), *batch, scale)
    assert abs(expected['total'].item() - got['total'].item()) < 1e-10
    expected['total'].backward()
    official_grads = {name: p.grad for name, p in official.named_parameters()}
    # pam.bq.bias and pam.bs.bias get no gradient (the width mean removes them): theirs is rounding noise (~1e-20),
    # so each parameter's difference is relative to its largest gradient, floored at 1e-6 of the network's largest
    floor = 1e-6 * max(g.abs().max().item() for g in official_grads.values())
    worst = 0.0
    for name, p in ours.named_parameters():
        reference = official_grads[name]
        rel = (p.grad - reference).abs().max().item() / max(reference.abs().max().item(), floor)
        worst = max(worst, rel)
        assert rel < 1e-8, f'{name}: {rel:.1e}'
    print(f'\nx{scale} gradients of the total: largest relative difference over parameters {worst:.1e}')
