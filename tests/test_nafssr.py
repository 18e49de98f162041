"""NAFSSR (models/nafssr.py): state-dict layout, parameter counts, the blocks against plain forms, drop-path, colour
order, the loss and one training step. CPU, no official code needed (tests/test_nafssr_parity.py compares with it)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import build_model, model_entry
from models.nafssr import (OPTIONS, VARIANTS, DropPath, NAFSSR, NAFSSRConfig, NAFSSRLoss, StereoBlock, TLCPool,
                           release_options)
from models.outputs import StereoSROutput
from tests.conftest import random_pair

# Parameter counts measured on the official code (spec §0.9): (variant, scale) -> count.
OFFICIAL_PARAMS = {('t', 4): 460_656, ('t', 2): 445_068, ('s', 4): 1_559_344, ('s', 2): 1_538_572,
                   ('b', 4): 6_796_464, ('b', 2): 6_765_324, ('l', 4): 23_832_112, ('l', 2): 23_790_604}
TLC_WINDOW = (45, 135)


def tiny(scale: int = 4, **overrides) -> NAFSSR:
    """A small NAFSSR with random residual scales (at init they are zero and the body would be the identity)."""
    torch.manual_seed(0)
    model = NAFSSR(NAFSSRConfig(scale_factor=scale, **{'width': 8, 'num_blocks': 2, **overrides}))
    randomise_residual_scales(model)
    return model


def randomise_residual_scales(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('.beta', '.gamma')):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---- layout: names, order, shapes, counts


@pytest.mark.parametrize('variant', ['t', 's', 'b', 'l'])
def test_state_dict_layout_and_parameter_count(variant, reference_dir):
    layouts = {}
    for scale in (4, 2):
        model = NAFSSR(NAFSSRConfig.variant(variant, scale))
        layouts[scale] = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[variant, scale]
        del model
    reference = [(k, shape) for k, shape in json.loads((reference_dir / f'nafssr_{variant}_x4_state_dict.json')
                                                       .read_text())]
    assert layouts[4] == reference
    n = VARIANTS[variant]['num_blocks']
    assert len(reference) == 4 + 32 * n
    # x2 differs from x4 only in the upsampler conv: 3 * 2^2 instead of 3 * 4^2 output channels.
    c = VARIANTS[variant]['width']
    expected_x2 = [(k, {'up.0.weight': [12, c, 3, 3], 'up.0.bias': [12]}.get(k, shape)) for k, shape in reference]
    assert layouts[2] == expected_x2


def test_registry_entries():
    for variant, iters in (('t', 400_000), ('s', 100_000), ('b', 100_000), ('l', 100_000)):
        entry = model_entry(f'nafssr-{variant}')
        assert entry.scales == (2, 4)
        assert entry.recipe.total_iters == iters and entry.recipe.lr == 3e-3 and entry.recipe.betas == (0.9, 0.9)
        assert entry.recipe.grad_clip == 0.01 and entry.recipe.optimizer == 'adamw' and entry.recipe.batch_size == 32
        assert entry.criterion is NAFSSRLoss
        assert {o.name for o in entry.options} == {'tlc', 'drop_path', 'channel_order'}
        # the family's shared definitions (CVHSSR and SCGLANet take the same): --help shows each once for all
        assert entry.options == OPTIONS
    model = build_model('nafssr-s', 2)
    assert (model.scale, model.config.width, model.config.num_blocks, model.config.drop_path) == (2, 64, 32, 0.1)
    assert model.min_input_size == (1, 1) and model.input_multiple == 1
    assert build_model('nafssr-s', 2, drop_path=0.0).body[0].drop_rate == 0.0
    assert build_model('nafssr-t', 4, tlc=False).body[0].module.blk.sca[0].tlc is False
    assert release_options({'params': {}}) == {'channel_order': 'bgr'}
    assert release_options({'model': {}}) == {}


# ---- forward


@pytest.mark.parametrize('scale', [2, 4])
@pytest.mark.parametrize('size', [(13, 37), (30, 90), (46, 137)])
def test_output_structure(scale, size):
    model = tiny(scale).eval()
    left, right = random_pair(2, *size)
    with torch.no_grad():
        out = model(left, right)
    assert isinstance(out, StereoSROutput)
    for sr in (out.sr_left, out.sr_right):
        assert sr.shape == (2, 3, scale * size[0], scale * size[1]) and sr.dtype == torch.float32
        assert torch.isfinite(sr).all()
    # The two views are different images, and the body made the output differ from the init map (checked below).
    assert not torch.allclose(out.sr_left, out.sr_right)


def test_identity_body_at_init():
    """At init every beta/gamma is zero: output = up(intro(x)) + bilinear(x), per view."""
    torch.manual_seed(0)
    model = NAFSSR(NAFSSRConfig(width=8, num_blocks=3)).double().eval()
    left, right = (v.double() for v in random_pair(1, 11, 29))
    with torch.no_grad():
        out = model(left, right)
        for view, sr in ((left, out.sr_left), (right, out.sr_right)):
            features = F.conv2d(view, model.intro.weight, model.intro.bias, padding=1)
            expected = F.pixel_shuffle(F.conv2d(features, model.up[0].weight, model.up[0].bias, padding=1), 4)
            expected = expected + F.interpolate(view, scale_factor=4, mode='bilinear', align_corners=False)
            torch.testing.assert_close(sr, expected, rtol=0, atol=1e-12)
        randomise_residual_scales(model)
        assert (model(left, right).sr_left - out.sr_left).abs().max() > 1e-3


def test_invalid_inputs_rejected():
    model = tiny()
    left, right = random_pair(1, 8, 8)
    with pytest.raises(ValueError, match='shape'):
        model(left[:, :2], right[:, :2])
    with pytest.raises(ValueError, match='same shape'):
        model(left, right[..., :7])
    with pytest.raises(ValueError, match='floating-point'):
        model((left * 255).to(torch.uint8), (right * 255).to(torch.uint8))
    with pytest.raises(ValueError, match='channel_order'):
        NAFSSR(NAFSSRConfig(channel_order='grb'))


# ---- TLC pooling


def naive_local_mean(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Official AvgPool2d written plainly: the mean of every valid window, then replicate padding, pixel by pixel."""
    n, c, h, w = x.shape
    kh, kw = min(h, window[0]), min(w, window[1])
    valid_h, valid_w = h - kh + 1, w - kw + 1
    valid = torch.empty(n, c, valid_h, valid_w, dtype=x.dtype)
    for i in range(valid_h):
        for j in range(valid_w):
            valid[:, :, i, j] = x[:, :, i:i + kh, j:j + kw].mean((2, 3))
    top, left = (h - valid_h) // 2, (w - valid_w) // 2
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = valid[:, :, min(max(i - top, 0), valid_h - 1), min(max(j - left, 0), valid_w - 1)]
    return out


@pytest.mark.parametrize('size', [(50, 150), (20, 150), (60, 40)])
def test_tlc_local_mean_equals_naive(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pooled = TLCPool(TLC_WINDOW)(x)
    assert pooled.shape == x.shape
    torch.testing.assert_close(pooled, naive_local_mean(x, TLC_WINDOW), rtol=0, atol=1e-12)
    # Local, not global: the map is not constant.
    assert pooled.std() > 1e-3
    # tlc=False pools globally whatever the size.
    torch.testing.assert_close(TLCPool(TLC_WINDOW, tlc=False)(x), x.mean((2, 3), keepdim=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize('size', [(45, 135), (30, 90), (7, 3)])
def test_tlc_is_global_within_window(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(TLCPool(TLC_WINDOW)(x), x.mean((2, 3), keepdim=True), rtol=0, atol=1e-12)


def test_tlc_switch_in_model():
    """Same weights: with and without TLC agree on a training-size input and differ on a larger one."""
    with_tlc, without = tiny().eval(), tiny(tlc=False).eval()
    without.load_state_dict(with_tlc.state_dict())
    with torch.no_grad():
        small, large = random_pair(1, 30, 90), random_pair(1, 50, 150)
        torch.testing.assert_close(with_tlc(*small).sr_left, without(*small).sr_left, rtol=0, atol=0)
        assert (with_tlc(*large).sr_left - without(*large).sr_left).abs().max() > 1e-4


# ---- drop-path


def test_drop_path_statistics():
    torch.manual_seed(0)
    block = StereoBlock(8, TLC_WINDOW)
    randomise_residual_scales(block)
    layer = DropPath(0.5, block)
    x = torch.randn(4, 8, 6, 10)  # batch 2, [left; right]
    with torch.no_grad():
        full = block(x)
        kept = x + 2 * (full - x)
        layer.train()
        drops = 0
        for _ in range(200):
            out = layer(x)
            if torch.equal(out, x):
                drops += 1
            else:
                torch.testing.assert_close(out, kept, rtol=0, atol=1e-6)
        # Binomial(200, 0.5): mean 100, standard deviation ~7.1; 4.5 sigma.
        assert abs(drops - 100) < 4.5 * math.sqrt(200 * 0.25)
        layer.eval()
        for _ in range(20):
            assert torch.equal(layer(x), full)


# ---- colour order


def test_bgr_model_equals_rgb_model_on_reversed_channels():
    rgb, bgr = tiny().eval(), tiny(channel_order='bgr').eval()
    bgr.load_state_dict(rgb.state_dict())
    left, right = random_pair(1, 12, 20)
    with torch.no_grad():
        out = bgr(left, right)
        reference = rgb(left.flip(1), right.flip(1))
    torch.testing.assert_close(out.sr_left, reference.sr_left.flip(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.sr_right, reference.sr_right.flip(1), rtol=0, atol=1e-6)
    assert (out.sr_left - reference.sr_left).abs().max() > 1e-3  # the reordering is not a no-op


# ---- loss and training


def test_loss():
    g = torch.Generator().manual_seed(0)
    hr_left, hr_right, sr_left, sr_right = (torch.rand(2, 3, 8, 12, generator=g) for _ in range(4))
    lr_left, lr_right = hr_left[..., ::4, ::4], hr_right[..., ::4, ::4]
    loss = NAFSSRLoss(4)
    assert loss(StereoSROutput(hr_left, hr_right), lr_left, lr_right, hr_left, hr_right)['total'] == 0
    terms = loss(StereoSROutput(sr_left, sr_right), lr_left, lr_right, hr_left, hr_right)
    expected = (((sr_left - hr_left) ** 2).mean() + ((sr_right - hr_right) ** 2).mean()) / 2
    torch.testing.assert_close(terms['mse'], expected)
    # The official MSELoss on the 6-channel stack.
    torch.testing.assert_close(terms['total'], F.mse_loss(torch.cat([sr_left, sr_right], 1),
                                                          torch.cat([hr_left, hr_right], 1)))
    weighted = NAFSSRLoss(4, {'mse': 3.0})(StereoSROutput(sr_left, sr_right), lr_left, lr_right, hr_left, hr_right)
    torch.testing.assert_close(weighted['total'], 3 * expected)
    with pytest.raises(ValueError, match='mse'):
        NAFSSRLoss(4, {'l1': 1.0})


def test_training_step_lowers_loss():
    from data.patches import sample_patches
    patches = sample_patches(4)[:2]
    hr_left, hr_right, lr_left, lr_right = (
        torch.from_numpy(np.stack([p[k] for p in patches])).permute(0, 3, 1, 2).float() / 255 for k in range(4))
    torch.manual_seed(0)
    model = NAFSSR(NAFSSRConfig(width=16, num_blocks=2)).train()
    recipe = model_entry('nafssr-t').recipe
    criterion = NAFSSRLoss(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas,
                                  weight_decay=recipe.weight_decay)

    def loss_now() -> float:
        with torch.no_grad():
            return criterion(model(lr_left, lr_right), lr_left, lr_right, hr_left, hr_right)['total'].item()

    before = loss_now()
    for _ in range(4):
        optimizer.zero_grad()
        criterion(model(lr_left, lr_right), lr_left, lr_right, hr_left, hr_right)['total'].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
    after = loss_now()
    assert after < 0.9 * before, (before, after)
