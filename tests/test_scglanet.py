"""SCGLANet (models/scglanet.py): state-dict layout and parameter count (full size, built only), SCGLA against a
token-by-token loop, the random rotations and their generator, the self-ensemble, shapes, gradients and the loss.
Reduced width and depth everywhere else (nothing here depends on them); CPU, no official code
(tests/test_scglanet_parity.py compares with it)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from models import build_model, model_entry
from models.outputs import StereoSROutput
from models.scglanet import (KEY_NORM_EPS, SCGLA, SCGLANet, SCGLANetConfig, SCGLANetLoss, bucket_order,
                             hash_bucket_count, tokens_to_views, views_to_tokens)
from tests.conftest import random_pair

pytestmark = pytest.mark.usefixtures('one_thread')
OFFICIAL_PARAMS = 25_317_040          # the official SCGLANet built with the test yml's network_g (measured)
TINY = dict(width=8, num_blocks=(1, 1, 1, 1, 1), drop_path=0.0)


def tiny(**overrides) -> SCGLANet:
    """A small SCGLANet with random residual scales (zero at init), built from seed 0."""
    torch.manual_seed(0)
    model = SCGLANet(SCGLANetConfig(**{**TINY, **overrides}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('.beta', '.gamma')):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


# ---- layout and registry


def test_state_dict_layout_and_parameter_count(reference_dir):
    model = build_model('scglanet', 4)      # SCGLANet-L; built, never run here
    reference = json.loads((reference_dir / 'scglanet_x4_state_dict.json').read_text())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, shape) for k, shape in reference]
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    assert (model.config.width, model.config.num_blocks, model.config.temperature) == (128, (16, 16, 32, 32, 32), 2)
    assert model.body1[0].module.fusion.temperature == 2 and model.body1[0].drop_rate == 0.1


def test_registry_entry():
    entry = model_entry('scglanet')
    assert entry.scales == (4,) and entry.criterion is SCGLANetLoss
    r = entry.recipe
    assert (r.optimizer, r.lr, r.betas, r.weight_decay, r.schedule, r.eta_min, r.total_iters, r.grad_clip,
            r.channel_shuffle, r.batch_size) == ('adamw', 5e-4, (0.9, 0.9), 0.0, 'cosine', 1e-7, 400_000, 0.01,
                                                 True, 24)
    assert {o.name for o in entry.options} == {'tlc', 'drop_path', 'scglanet_self_ensemble', 'scglanet_seed'}
    with pytest.raises(ValueError, match='scale factors 4'):
        build_model('scglanet', 2)
    model = build_model('scglanet', 4, tlc=False, drop_path=0.0, scglanet_self_ensemble=False, scglanet_seed=3)
    assert not model.config.tlc and not model.config.self_ensemble and model.body5[0].drop_rate == 0.0
    assert model.generator.initial_seed() == 3 and build_model('scglanet', 4).generator is None


def test_hash_bucket_count():
    """One bucket per chunk of 144 tokens, rounded up to even, at most 128 (arch.py:285)."""
    tokens = [143, 144, 234, 288, 432, 962, 5400, 2 * 94 * 311]
    assert [hash_bucket_count(n) for n in tokens] == [0, 2, 2, 2, 4, 6, 38, 128]


# ---- SCGLA against a loop over tokens


def naive_scgla(module: SCGLA, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """SCGLA written token by token from the official description, given the hash codes (B, n_hashes, L)."""
    two_b, c, h, w = x.shape
    b, size, length = two_b // 2, module.chunk_size, 2 * h * w

    def tokens(maps):   # per pair: (L, D), left view's pixels in raster order, then the right view's
        return [torch.cat([maps[i].flatten(1).T, maps[b + i].flatten(1).T]) for i in range(b)]

    match, values, fc_input = tokens(module.conv_match(x)), tokens(module.conv_assembly(x)), \
        tokens(module.conv_assembly_fc(x))
    order = bucket_order(codes, hash_bucket_count(length))
    out = torch.zeros(b, length, c, dtype=x.dtype)
    for i in range(b):
        results, log_norms = torch.zeros(module.n_hashes, length, c, dtype=x.dtype), \
            torch.zeros(module.n_hashes, length, dtype=x.dtype)
        for r in range(module.n_hashes):
            ids = order[i, r].tolist()
            ids += ids[length - (-length % size):]                  # pad with copies of the last tokens
            chunks = [ids[k * size:(k + 1) * size] for k in range(len(ids) // size)]
            for k, chunk in enumerate(chunks):
                key_ids = chunk + chunks[k - 1] + chunks[(k + 1) % len(chunks)]
                keys = match[i][key_ids]
                keys = keys / keys.norm(dim=1, keepdim=True).clamp_min(KEY_NORM_EPS)
                learned = module.fc(fc_input[i][key_ids])           # (3S, S): one column per query slot
                for slot, token in enumerate(chunk):
                    if k * size + slot >= length:                   # a padding copy
                        continue
                    scores = keys @ match[i][token] + learned[:, slot]
                    results[r, token] = scores.softmax(0) @ values[i][key_ids]
                    log_norms[r, token] = scores.logsumexp(0)
        out[i] = (results * log_norms.softmax(0)[..., None]).sum(0)
    return x + tokens_to_views(out, h, w)


@pytest.mark.parametrize('size', [(9, 13), (12, 12)], ids=['padded', 'exact-chunks'])
def test_scgla_equals_token_loop(size):
    torch.manual_seed(0)
    module = SCGLA(8).double()
    x = torch.randn(4, 8, *size, dtype=torch.float64)
    length = 2 * size[0] * size[1]
    with torch.no_grad():
        codes = module.hash_codes(views_to_tokens(module.conv_match(x)), hash_bucket_count(length),
                                  torch.Generator().manual_seed(2))
        module.hash_codes = lambda match, n_buckets, generator: codes
        expected = naive_scgla(module, x, codes)
        got = module(x)
    assert codes.shape == (2, 4, length) and len(codes.unique()) == hash_bucket_count(length)
    assert (got - expected).abs().max() < 1e-12


def test_bucket_order_sorts_each_round():
    codes = torch.randint(0, 6, (2, 4, 500), generator=torch.Generator().manual_seed(0))
    order = bucket_order(codes, 6)
    assert torch.equal(order.sort(-1).values, torch.arange(500).expand(2, 4, 500))   # a permutation per round
    assert (torch.gather(codes, 2, order).diff(dim=-1) >= 0).all()


def test_views_and_tokens_round_trip():
    x = torch.randn(4, 5, 3, 7)
    tokens = views_to_tokens(x)
    assert tokens.shape == (2, 42, 5) and torch.equal(tokens[1, 21 + 7 * 2 + 3], x[3, :, 2, 3])
    assert torch.equal(tokens_to_views(tokens, 3, 7), x)


# ---- rotations: a fresh draw per forward, from the generator or the global RNG


def test_rotations_come_from_the_generator():
    model = tiny(self_ensemble=False).eval()
    left, right = random_pair(1, 9, 13)
    with torch.no_grad():
        def run(seed):
            model.generator = torch.Generator().manual_seed(seed)
            return model(left, right).sr_left
        torch.manual_seed(0)
        state = torch.get_rng_state()
        first, again, other = run(5), run(5), run(6)
        assert torch.equal(torch.get_rng_state(), state)           # the global RNG is not touched
        assert torch.equal(first, again) and (first - other).abs().max() > 1e-4
        # A generator draws anew at every forward (as the official), and None draws from the global RNG.
        model.generator = torch.Generator().manual_seed(5)
        assert not torch.equal(model(left, right).sr_left, model(left, right).sr_left)
        model.generator = None
        torch.manual_seed(5)
        assert torch.equal(model(left, right).sr_left, first)


def test_fixed_hashing_makes_the_network_a_function_of_its_input():
    """fix_hashing (what ONNX export needs): rotations drawn once from the generator and a stable bucket order, so
    every forward of one input gives one output, the self-ensemble included; another bucket count is refused, and
    unfix_hashing draws anew again."""
    model = tiny().eval()                                           # self-ensemble on: six passes share the draws
    left, right = random_pair(1, 9, 13)
    model.generator = torch.Generator().manual_seed(5)
    model.fix_hashing(9, 13)
    state = model.generator.get_state()
    with torch.no_grad():
        first = model(left, right).sr_left
        assert torch.equal(model(left, right).sr_left, first)
        assert torch.equal(model.generator.get_state(), state)     # no draw at forward
        with pytest.raises(ValueError, match='fixed for 2 buckets'):
            model(*random_pair(1, 20, 40))                          # 1600 tokens: 12 buckets
        model.unfix_hashing()
        assert not torch.equal(model(left, right).sr_left, model(left, right).sr_left)


def test_stable_bucket_order_keeps_token_order_within_a_bucket():
    codes = torch.randint(0, 6, (2, 4, 500), generator=torch.Generator().manual_seed(0))
    order = bucket_order(codes, 6, stable=True)
    assert torch.equal(order, codes.sort(dim=-1, stable=True).indices)


def test_construction_replays_the_official_constructor_draws():
    """The official constructor draws rand(1, 6, 30, 90) and 4 modules x 4 rotations (32 x 38 at width 128) in its
    TLC conversion forward; ours draws the same after its weights (equality: tests/test_scglanet_parity.py)."""
    g = torch.Generator().manual_seed(0)
    SCGLANet(SCGLANetConfig(**TINY), generator=g)
    reference = torch.Generator().manual_seed(0)
    torch.rand(1, 6, 30, 90, generator=reference)
    for _ in range(16):
        torch.nn.init.orthogonal_(torch.empty(2, 38), generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())


# ---- forward


@pytest.mark.parametrize('size', [(6, 12), (9, 13)], ids=['smallest', 'odd'])
def test_output_structure_train_and_eval(size):
    model = tiny(self_ensemble=False)     # the ensemble: test_self_ensemble_is_the_mean_of_the_six_official_passes
    left, right = random_pair(2, *size)
    for training in (True, False):
        model.train(training)
        model.generator = torch.Generator().manual_seed(0)
        with torch.set_grad_enabled(training):
            out = model(left, right)
        assert isinstance(out, StereoSROutput)
        for sr in (out.sr_left, out.sr_right):
            assert sr.shape == (2, 3, 4 * size[0], 4 * size[1]) and torch.isfinite(sr).all()
        assert not torch.allclose(out.sr_left, out.sr_right)


def test_too_small_inputs_rejected():
    model = tiny()
    left, right = random_pair(1, 5, 14)                              # 2HW = 140 < 144
    with pytest.raises(ValueError, match='2\\*H\\*W >= 144'):
        model(left, right)
    with pytest.raises(ValueError, match='shape'):
        model(left[:, :2], right[:, :2])


def test_self_ensemble_is_the_mean_of_the_six_official_passes():
    """Eval mode: identity, horizontal flip with the views swapped, vertical flip, both, then BGR and GBR inputs;
    each output undone, then averaged; the passes draw their rotations in that order."""
    model = tiny().double().eval()
    left, right = (v.double() for v in random_pair(1, 9, 13, seed=2))
    with torch.no_grad():
        model.generator = torch.Generator().manual_seed(4)
        got = model(left, right)
        model.generator = torch.Generator().manual_seed(4)
        passes = []
        for transform, undo in [
            (lambda l, r: (l, r), lambda l, r: (l, r)),
            (lambda l, r: (r.flip(-1), l.flip(-1)), lambda l, r: (r.flip(-1), l.flip(-1))),
            (lambda l, r: (l.flip(-2), r.flip(-2)), lambda l, r: (l.flip(-2), r.flip(-2))),
            (lambda l, r: (r.flip(-1, -2), l.flip(-1, -2)), lambda l, r: (r.flip(-1, -2), l.flip(-1, -2))),
            (lambda l, r: (l[:, [2, 1, 0]], r[:, [2, 1, 0]]), lambda l, r: (l[:, [2, 1, 0]], r[:, [2, 1, 0]])),
            (lambda l, r: (l[:, [1, 2, 0]], r[:, [1, 2, 0]]), lambda l, r: (l[:, [2, 0, 1]], r[:, [2, 0, 1]])),
        ]:
            passes.append(undo(*model.super_resolve(*transform(left, right))))
        model.config.self_ensemble = False
        model.generator = torch.Generator().manual_seed(4)
        single = model(left, right)
    expected_left = sum(p[0] for p in passes) / 6
    expected_right = sum(p[1] for p in passes) / 6
    assert (got.sr_left - expected_left).abs().max() < 1e-12 and (got.sr_right - expected_right).abs().max() < 1e-12
    assert torch.equal(single.sr_left, passes[0][0])                 # off: the first pass alone
    assert (got.sr_left - single.sr_left).abs().max() > 1e-3


def test_training_backward_reaches_every_parameter():
    model = tiny(drop_path=0.0).train()
    model.generator = torch.Generator().manual_seed(0)
    left, right = random_pair(1, 9, 13)
    out = model(left, right)
    (out.sr_left.square().mean() + out.sr_right.abs().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_loss_is_l1_then_mse_on_demand():
    torch.manual_seed(0)
    sr = StereoSROutput(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    hr_left, hr_right = sr.sr_left + 0.1, sr.sr_right - 0.2
    terms = SCGLANetLoss(4)(sr, None, None, hr_left, hr_right)
    assert terms['l1'].item() == pytest.approx(0.15, abs=1e-6)
    assert terms['total'].item() == pytest.approx(0.15, abs=1e-6)
    stage2 = SCGLANetLoss(4, {'l1': 0.0, 'mse': 1.0})(sr, None, None, hr_left, hr_right)
    assert stage2['total'].item() == pytest.approx((0.01 + 0.04) / 2, abs=1e-6)
    assert F.l1_loss(torch.cat([sr.sr_left, sr.sr_right], 1), torch.cat([hr_left, hr_right], 1)).item() == \
        pytest.approx(terms['l1'].item(), abs=1e-6)   # = BasicSR's L1Loss on the 6-channel stack
