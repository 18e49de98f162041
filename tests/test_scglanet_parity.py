"""SCGLANet against the authors' code (fzuzyb/SCGLANet): same weights, same random rotations -> same output.

Skipped unless SCGLANET_OFFICIAL_DIR points at a checkout of the official repository (einops is not needed). Both
networks draw a fresh hash rotation at every forward: the official from the global torch RNG, ours from the global
RNG or from a generator, so each comparison seeds both alike. Reduced widths and depths (the code does not depend
on them); the KITTI-size pair (LR 94x311) and SCGLANet-L itself run with ZOO_PARITY_FULL=1. float64 comparisons run
with float64 as the default dtype, in which both draw their rotations. `-s` prints each maximum difference.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.scglanet import NUM_BLOCKS, WIDTH, SCGLANet, SCGLANetConfig, SCGLANetLoss
from tests.conftest import random_pair
from official.scglanet import (default_dtype, official_forward, official_runner, official_scglanet,
                               official_self_ensemble, requires_official, shared_hash_codes)

pytestmark = requires_official
FULL = os.environ.get('ZOO_PARITY_FULL') == '1'
requires_full = pytest.mark.skipif(not FULL, reason='set ZOO_PARITY_FULL=1 for the KITTI-size and full-size cases')
SMALL = dict(width=16, num_blocks=(1, 1, 2, 1, 1))
KITTI_LR = (94, 311)


def paired_models(width: int, num_blocks: tuple[int, ...], dtype=torch.float64, drop_path: float = 0.0,
                  residual_scale: float = 1.0, self_ensemble: bool = False, seed: int = 0):
    """The official model and ours built from the same global seed (so with the same initial weights), then the
    official residual scales set to N(0, residual_scale^2) (zero at init: the body would be the identity) and
    copied into ours, loaded strictly."""
    torch.manual_seed(seed)
    official = official_scglanet(width, num_blocks, drop_path_rate=drop_path)
    ours = SCGLANet(SCGLANetConfig(width=width, num_blocks=num_blocks, drop_path=drop_path,
                                   self_ensemble=self_ensemble))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if name.endswith(('.beta', '.gamma')):
                p.copy_(residual_scale * torch.randn(p.shape, generator=g))
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.to(dtype).eval(), ours.to(dtype).eval()


def both_forwards(official, ours, left, right, seed: int = 7, generator: torch.Generator | None = None):
    """(official views, our views), each forward run from the global RNG seeded with `seed` (ours: from
    `generator` instead when given, seeded with `seed`)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    expected = official_forward(official, left, right)
    torch.manual_seed(seed)
    np.random.seed(seed)
    if generator is not None:
        generator.manual_seed(seed)
    ours.generator = generator
    out = ours(left, right)
    return expected, (out.sr_left, out.sr_right)


def max_difference(expected, got) -> float:
    return max((a - b).abs().max().item() for a, b in zip(expected, got))


def test_construction_draws_and_initial_weights_equal_the_official():
    """Built from one seed: the same initial weights, and the global RNG left in the same state (the official
    constructor's TLC conversion forward draws an input and 16 rotations; ours replays those draws)."""
    torch.manual_seed(0)
    official = official_scglanet(**SMALL)
    official_state = torch.get_rng_state()
    torch.manual_seed(0)
    ours = SCGLANet(SCGLANetConfig(**SMALL))
    assert torch.equal(torch.get_rng_state(), official_state)
    theirs = official.state_dict()
    assert list(theirs) == list(ours.state_dict())
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


CASES = [  # id, LR size: odd sizes, 2HW >= 144
    ('9x13-one-padded-chunk-pair', (9, 13)),     # 234 tokens: 2 buckets, 2 chunks, the last padded with 54 copies
    ('12x12-exact-chunks', (12, 12)),            # 288 tokens: 2 full chunks, no padding
    ('13x37', (13, 37)),                         # 962 tokens: 6 buckets, 7 chunks
    ('11x139-tlc-local', (11, 139)),             # W > 135: TLC pools local windows; 22 buckets
]


@pytest.mark.parametrize('name, size', CASES, ids=[c[0] for c in CASES])
def test_eval_float64_matches_official(name, size):
    official, ours = paired_models(**SMALL)
    left, right = (v.double() for v in random_pair(2, *size, seed=3))
    with default_dtype(torch.float64), torch.no_grad():
        expected, got = both_forwards(official, ours, left, right)
    diff = max_difference(expected, got)
    print(f'\n[parity] {name} float64 eval: max |ours - official| = {diff:.3e}')
    assert diff <= 1e-10


def test_generator_gives_the_official_draws_and_leaves_the_global_rng_alone():
    """A generator seeded s gives the rotations the official draws from the global RNG seeded s."""
    official, ours = paired_models(**SMALL)
    left, right = (v.double() for v in random_pair(1, 13, 37, seed=4))
    with default_dtype(torch.float64), torch.no_grad():
        torch.manual_seed(123)
        before = torch.get_rng_state()
        ours.generator = torch.Generator().manual_seed(5)
        ours(left, right)
        assert torch.equal(torch.get_rng_state(), before)
        expected, got = both_forwards(official, ours, left, right, seed=5, generator=torch.Generator())
    diff = max_difference(expected, got)
    print(f'\n[parity] 13x37 float64 eval, our generator vs their global RNG: {diff:.3e}')
    assert diff <= 1e-10


def test_train_mode_float64_matches_official_with_drop_path():
    """Training mode with drop-path 0.1 (NumPy coins seeded alike) on the training patch size (LR 25x75), three
    forwards in a row from one seed, then the gradients of a loss on the last."""
    official, ours = paired_models(width=16, num_blocks=(2, 2, 2, 2, 2), drop_path=0.1)
    official.train(), ours.train()
    left, right = (v.double() for v in random_pair(2, 25, 75, seed=5))
    with default_dtype(torch.float64):
        torch.manual_seed(11), np.random.seed(11)
        expected = [official_forward(official, left, right) for _ in range(3)]
        torch.manual_seed(11), np.random.seed(11)
        got = [ours(left, right) for _ in range(3)]
    diffs = [max_difference(e, (g.sr_left, g.sr_right)) for e, g in zip(expected, got)]
    (expected[-1][0].square().mean() + expected[-1][1].abs().mean()).backward()
    (got[-1].sr_left.square().mean() + got[-1].sr_right.abs().mean()).backward()
    theirs = dict(official.named_parameters())
    # Blocks the last forward dropped have no gradient, in both.
    assert all((p.grad is None) == (theirs[n].grad is None) for n, p in ours.named_parameters())
    grad_diff = max((p.grad - theirs[n].grad).abs().max().item() for n, p in ours.named_parameters()
                    if p.grad is not None)
    print(f'\n[parity] 25x75 float64 train, 3 forwards: {", ".join(f"{d:.3e}" for d in diffs)}; '
          f'gradients {grad_diff:.3e}')
    assert max(diffs) <= 1e-10 and grad_diff <= 1e-10


def test_self_ensemble_float64_matches_official():
    """Eval mode with the self-ensemble on = the authors' test_selfensemble (6 passes, 6 x 4 x 4 rotations)."""
    official, ours = paired_models(**SMALL, self_ensemble=True)
    left, right = (v.double() for v in random_pair(1, 9, 13, seed=6))
    with default_dtype(torch.float64), torch.no_grad():
        torch.manual_seed(10)
        expected = official_self_ensemble(official, left, right)
        torch.manual_seed(10)
        out = ours(left, right)
    diff = max_difference(expected, (out.sr_left, out.sr_right))
    print(f'\n[parity] 9x13 float64 self-ensemble: max |ours - official| = {diff:.3e}')
    assert diff <= 1e-10


@pytest.mark.parametrize('size', [(13, 37), (23, 67)])
def test_eval_float32_matches_official(size):
    official, ours = paired_models(**SMALL, dtype=torch.float32)
    left, right = random_pair(2, *size, seed=7)
    with torch.no_grad(), shared_hash_codes(ours) as codes:
        expected, got = both_forwards(official, ours, left, right)
    diff = max_difference(expected, got)
    print(f'\n[parity] {size[0]}x{size[1]} float32 eval: max |ours - official| = {diff:.3e}; our own hash codes '
          f'differ at {codes["differ"]} of {codes["total"]}')
    assert diff <= 1e-4 and codes['differ'] == 0


def test_eval_float32_tlc_local_with_shared_hash_codes():
    """47x141 (TLC local in both directions, 92 buckets): here float32 rounding flips a near-tied hash code (1 of
    the 424,128 codes of 4 modules x batch 2 x 4 rounds was measured), which reorders the later tokens (max
    difference 0.17 without sharing); with the official codes shared, the rest agrees to float32 rounding."""
    official, ours = paired_models(**SMALL, dtype=torch.float32)
    left, right = random_pair(2, 47, 141, seed=3)
    with torch.no_grad(), shared_hash_codes(ours) as codes:
        expected, got = both_forwards(official, ours, left, right)
    diff = max_difference(expected, got)
    print(f'\n[parity] 47x141 float32 eval, shared codes: max |ours - official| = {diff:.3e}; our own codes differ '
          f'at {codes["differ"]} of {codes["total"]}')
    assert diff <= 1e-4 and codes['differ'] <= 1e-4 * codes['total']


@pytest.mark.parametrize('self_ensemble, tlc, size', [(True, True, (9, 13)), (False, False, (11, 139))],
                         ids=['ensemble-tlc-9x13', 'one-pass-global-11x139'])
def test_bench_runner_matches_ours_float64(self_ensemble, tlc, size):
    """bench.py's official_runner, configured from our model: its inference (the authors' self-ensemble or one
    forward; TLC, or SCGLANet's base class SCGLASRNet with global pooling, which differs from TLC where W > 135) and
    its training loss (train yml L1, drop-path 0.1) equal ours."""
    with default_dtype(torch.float64):
        ours = SCGLANet(SCGLANetConfig(**SMALL, tlc=tlc, self_ensemble=self_ensemble, drop_path=0.1))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in ours.named_parameters():
                if name.endswith(('.beta', '.gamma')):
                    p.copy_(torch.randn(p.shape, generator=g))
        runner = official_runner('scglanet', 4, ours)
        assert next(runner.model.parameters()).dtype == torch.float64
        left, right = random_pair(1, *size, seed=12)
        hr_left, hr_right = random_pair(1, 4 * size[0], 4 * size[1], seed=13)
        ours.eval()
        with torch.no_grad():
            torch.manual_seed(3)
            expected = runner.infer(left, right)
            torch.manual_seed(3)
            out = ours(left, right)
            infer_diff = max_difference(expected, (out.sr_left, out.sr_right))
            torch.manual_seed(4), np.random.seed(4)
            expected_loss = runner.train_loss(left, right, hr_left, hr_right)
            ours.train()
            torch.manual_seed(4), np.random.seed(4)
            loss = SCGLANetLoss(4)(ours(left, right), left, right, hr_left, hr_right)['total']
    print(f'\n[parity] bench runner {size[0]}x{size[1]} float64 (ensemble {self_ensemble}, TLC {tlc}): inference '
          f'{infer_diff:.3e}, training loss {abs(loss - expected_loss).item():.3e}')
    assert runner.model.training
    assert infer_diff <= 1e-10 and abs(loss - expected_loss).item() <= 1e-12


# ---- ZOO_PARITY_FULL=1: the KITTI-size pair (58,468 tokens: 128 buckets, 407 chunks) and SCGLANet-L


@requires_full
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_kitti_size_float64_matches_official(training):
    official, ours = paired_models(width=8, num_blocks=(1, 1, 1, 1, 1), drop_path=0.1)
    official.train(training), ours.train(training)
    left, right = (v.double() for v in random_pair(1, *KITTI_LR, seed=8))
    with default_dtype(torch.float64), torch.no_grad():
        expected, got = both_forwards(official, ours, left, right)
    diff = max_difference(expected, got)
    print(f'\n[parity] KITTI 94x311 float64 {"train" if training else "eval"}: max |ours - official| = {diff:.3e}')
    assert diff <= 1e-10


@requires_full
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_kitti_size_float32_matches_official(training):
    official, ours = paired_models(width=8, num_blocks=(1, 1, 1, 1, 1), drop_path=0.1, dtype=torch.float32)
    official.train(training), ours.train(training)
    left, right = random_pair(1, *KITTI_LR, seed=8)
    with torch.no_grad(), shared_hash_codes(ours) as codes:
        expected, got = both_forwards(official, ours, left, right)
    diff = max_difference(expected, got)
    print(f'\n[parity] KITTI 94x311 float32 {"train" if training else "eval"}, shared codes: max |ours - official| '
          f'= {diff:.3e}; our own codes differ at {codes["differ"]} of {codes["total"]}')
    assert diff <= 1e-4 and codes['differ'] <= 1e-4 * codes['total']


@requires_full
def test_scglanet_l_float32_matches_official():
    """The released size (width 128, 16+16+32+32+32 blocks) in float32 on an odd pair; residual scales
    N(0, 0.1^2), since 128 blocks with unit random scales blow the features (and their rounding) up."""
    official, ours = paired_models(WIDTH, NUM_BLOCKS, dtype=torch.float32, residual_scale=0.1)
    left, right = random_pair(1, 13, 37, seed=9)
    with torch.no_grad(), shared_hash_codes(ours) as codes:
        expected, got = both_forwards(official, ours, left, right)
    diff = max_difference(expected, got)
    print(f'\n[parity] SCGLANet-L 13x37 float32 eval, shared codes: max |ours - official| = {diff:.3e}; our own '
          f'codes differ at {codes["differ"]} of {codes["total"]}')
    assert diff <= 1e-4
