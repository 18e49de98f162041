"""SRNet: layout, the Diff-label generator (a hand-made image and Pillow itself), MPR-SA against a loop form on square
and non-square maps, one training step on real patches, the recipe, and (skipped unless SRNET_OFFICIAL_DIR is set)
equality with the official code on random weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.patches import sample_patches
from models import build_model, model_entry
from training.flags import build_parser, resolve_config
from models.srnet import (DETAIL, EDGE_ENHANCE_MORE, MultiPoolingSpatialAttention, SRNet, SRNetConfig, diff_labels,
                          pil_filter3x3)
from tests.conftest import random_pair, randomise_batchnorm
from official.srnet import official_diff_label, official_srnet, official_zoom, requires_official


def test_layout_and_parameters(reference_dir):
    reference = json.loads((reference_dir / 'srnet_zoom_x4_state_dict.json').read_text())
    model = build_model('srnet', 4)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == reference
    trainable = {s: sum(p.numel() for p in build_model('srnet', s).parameters() if p.requires_grad) for s in (4, 8)}
    assert trainable == {4: 3_429_678, 8: 3_725_102}
    corrected = build_model('srnet', 4, srnet_no_upsampler_relu=True)          # same names: the weights still load
    corrected.load_state_dict(model.state_dict())


def test_pil_filters_on_a_hand_made_image():
    """A 5x5 difference map of 6 with 12 at the centre. EDGE_ENHANCE_MORE (9 x centre - 8 neighbours): the centre
    becomes 60, its 8 neighbours 0, the border keeps 6. DETAIL ((10 x centre - 4 neighbours) / 6, clipped): the centre
    becomes 100, the other inner pixels -66/6 or -12/6, clipped to 0; the border keeps 6."""
    img = torch.full((1, 1, 5, 5), 6.0)
    img[..., 2, 2] = 12
    enhanced = pil_filter3x3(img, *EDGE_ENHANCE_MORE)
    expected = torch.full((5, 5), 6.0)
    expected[1:4, 1:4] = 0
    expected[2, 2] = 60
    assert torch.equal(enhanced[0, 0], expected)
    expected[2, 2] = 100
    assert torch.equal(pil_filter3x3(enhanced, *DETAIL)[0, 0], expected)


def test_diff_labels_difference_of_the_nearest_upsampling():
    """LR 2x2 at x2, HR = its nearest upsampling except one inner pixel 30 levels brighter: |HR - up(LR)| is 30 there
    and 0 elsewhere; the filters then turn it into min(255, 30 x 9 x 10 / 6) = 255 and clip the neighbours to 0."""
    lr = torch.tensor([[10.0, 200], [90, 40]]).expand(1, 3, 2, 2) / 255
    hr = lr.repeat_interleave(2, -2).repeat_interleave(2, -1).clone()
    hr[..., 1, 2] += 30 / 255
    label = diff_labels(lr, hr) * 255
    expected = torch.zeros(4, 4)
    expected[1, 2] = 255
    assert torch.allclose(label[0, 0], expected, atol=1e-4)


@pytest.mark.parametrize('resample', ['nearest', 'bicubic'])
def test_diff_labels_equal_generate_s_label_with_pillow(resample):
    """The label of generate_s_label.py's Pillow pipeline (resize, ImageChops.difference, EDGE_ENHANCE_MORE, DETAIL)
    on random 8-bit images, bit for bit."""
    from PIL import Image
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (2, 10, 14, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    ours = diff_labels(*(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 for x in (lr, hr)), resample)
    pil = {'nearest': Image.NEAREST, 'bicubic': Image.BICUBIC}[resample]
    expected = np.stack([official_diff_label(a, b, pil) for a, b in zip(lr, hr)])
    assert np.array_equal(np.round(ours.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), expected)


def rot90_loop(p: torch.Tensor, times: int) -> torch.Tensor:
    """torch.rot90(p, times, dims=(2, 3)) of square maps, index by index: out[y, x] = p[x, S - 1 - y] per turn."""
    for _ in range(times):
        s = p.shape[-1]
        out = torch.empty_like(p)
        for y in range(s):
            for x in range(s):
                out[..., y, x] = p[..., x, s - 1 - y]
        p = out
    return p


def mpr_sa_loop(module: MultiPoolingSpatialAttention, x: torch.Tensor) -> torch.Tensor:
    """MPR-SA as the spec states it, tile by tile and pixel by pixel: square tiles of side min(H, W) along the longer
    axis (the last flush with the end), per tile the pooled maps (channel-group means), their rotations on the
    channel axis, the three 7x7 conv + BN, sigmoid; each pixel's mask = mean over the tiles that hold it; channel c
    multiplied by mask c mod 8."""
    n, c, h, w = x.shape
    side, length = min(h, w), max(h, w)
    starts = sorted({*range(0, length - side, side), length - side})
    masks, counts = torch.zeros(n, 8, h, w, dtype=x.dtype), torch.zeros(h, w, dtype=x.dtype)
    for start in starts:
        rows = slice(start, start + side) if h > w else slice(0, h)
        cols = slice(start, start + side) if w >= h else slice(0, w)
        tile = x[..., rows, cols]
        logits = 0
        for k, conv in zip((1, 2, 4), (module.spatial1, module.spatial2, module.spatial3)):
            pooled = torch.stack([tile[:, g * c // k:(g + 1) * c // k].mean(1) for g in range(k)], 1)
            logits = logits + conv(torch.cat([rot90_loop(pooled, i) for i in range(4)], 1))
        masks[..., rows, cols] += torch.sigmoid(logits)
        counts[rows, cols] += 1
    masks = masks / counts
    return x * torch.stack([masks[:, i % 8] for i in range(c)], 1)


@pytest.mark.parametrize('size', [(7, 7), (6, 15), (14, 5), (5, 10)])
def test_mpr_sa_equals_its_loop_form(size):
    """Square (one tile: the official computation), wide with an overlapping last tile, tall, and two exact tiles;
    BatchNorm with random running statistics (eval: the same per tile in both forms)."""
    torch.manual_seed(0)
    module = MultiPoolingSpatialAttention(16).double().eval()
    randomise_batchnorm(module)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    assert (module(x) - mpr_sa_loop(module, x)).abs().max() < 1e-12


def test_wide_views_run_with_the_output_contract():
    torch.manual_seed(0)
    model = SRNet(SRNetConfig(scale_factor=2, n_resblocks=1, n_feats=16)).eval()
    left, right = random_pair(1, 6, 17)
    with torch.no_grad():
        out = model(left, right)
    assert out.sr_left.shape == out.sr_right.shape == out.diff_left.shape == (1, 3, 12, 34)
    assert torch.isfinite(out.sr_left).all() and torch.isfinite(out.diff_right).all()
    up = torch.nn.functional.interpolate(left, scale_factor=2, mode='bicubic', align_corners=False)
    assert (out.sr_left - up).abs().mean() > 0          # (random weights: shapes and finiteness are the point)


def test_one_training_step_lowers_each_loss_on_real_patches():
    """A real 30x90 Motorcycle patch pair (x4; MPR-SA on 30x30 tiles) through SRNet with one RCAB per branch: a few
    Adam steps (lr 1e-4, the recipe's) on the fixed batch lower both terms."""
    hr_left, hr_right, lr_left, lr_right = (torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float()[None]
                                            / 255 for x in sample_patches(4)[7])
    torch.manual_seed(0)
    model = SRNet(SRNetConfig(scale_factor=4, n_resblocks=1)).train()
    criterion = model_entry('srnet').criterion(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = None
    for _ in range(3):
        terms = criterion(model(lr_left, lr_right), lr_left, lr_right, hr_left, hr_right)
        before = before or {k: v.item() for k, v in terms.items()}
        optimizer.zero_grad()
        terms['total'].backward()
        optimizer.step()
    with torch.no_grad():
        after = criterion(model(lr_left, lr_right), lr_left, lr_right, hr_left, hr_right)
    for name in ('sr', 'diff', 'total'):
        assert after[name].item() < before[name], name


def test_recipes_reach_train_py():
    srnet, _ = resolve_config(build_parser().parse_args(['--model', 'srnet']))
    assert (srnet.optimizer, srnet.lr, srnet.batch_size, srnet.n_steps, srnet.gamma, srnet.n_epochs) == \
        ('adam', 1e-4, 16, 100, 0.5, 500)
    isr, _ = resolve_config(build_parser().parse_args(['--model', 'isrrescnet']))
    assert (isr.optimizer, isr.lr, isr.batch_size, isr.n_steps, isr.gamma, isr.n_epochs, isr.grad_clip) == \
        ('adam', 1e-3, 8, 100, 0.1, 300, 0.0)
    assert model_entry('srnet').criterion.DEFAULT_WEIGHTS == {'sr': 1.0, 'diff': 1.0}


# ----------------------------------------------------------------------------------------------------------------
# Against the official code (random weights, random BatchNorm statistics; square inputs, which it needs)


@requires_official
@pytest.mark.parametrize('scale, size, blocks, dtype, tol', [
    (4, 12, 2, torch.float64, 1e-10), (2, 9, 2, torch.float64, 1e-10), (8, 6, 2, torch.float64, 1e-10),
    (4, 12, 16, torch.float32, 1e-4)], ids=['x4-12', 'x2-9', 'x8-6', 'x4-12-released-depth-float32'])
@pytest.mark.parametrize('training', [False, True])
def test_model_matches_official(scale, size, blocks, dtype, tol, training):
    torch.manual_seed(0)
    official = official_srnet(scale, n_resblocks=blocks).to(dtype)
    randomise_batchnorm(official)
    ours = SRNet(SRNetConfig(scale_factor=scale, n_resblocks=blocks)).to(dtype)
    ours.load_state_dict(official.state_dict())
    official.train(training), ours.train(training)
    left, right = (v.to(dtype) for v in random_pair(1, size, size, seed=3))
    with torch.no_grad():
        expected_sr, expected_diff = official_zoom(official, torch.cat([left, right]))
        out = ours(left, right)
    diff = max((torch.cat([out.sr_left, out.sr_right]) - expected_sr).abs().max().item(),
               (torch.cat([out.diff_left, out.diff_right]) - expected_diff).abs().max().item())
    print(f'\n[parity] SRNet x{scale} {size}x{size} {blocks} blocks {dtype} {"train" if training else "eval"}: '
          f'max |ours - official| = {diff:.3e} ([0, 1] units, SR and Diff)')
    assert diff < tol


def test_srnet_protocol_crops_scale_plus_6_and_uses_the_2019_skimage_ssim():
    from skimage.metrics import structural_similarity
    from evaluation import scene_scores
    rng = np.random.default_rng(1)
    hr = torch.from_numpy(rng.integers(0, 256, (3, 40, 50)) / 255.0)
    sr = hr.clone()
    sr[:, :10, :] = 0                                   # inside the 4 + 6 border: not counted by the PSNR
    sr[:, 10:-10, 10:-10] = (sr[:, 10:-10, 10:-10] - 3 / 255).clamp(min=0)
    scores = scene_scores(sr, hr, hr, hr, protocol='srnet', scale=4)
    crop = (slice(None), slice(10, -10), slice(10, -10))
    mse = ((sr[crop] - hr[crop]) ** 2).mean().item()
    assert scores['psnr_left'] == pytest.approx(10 * np.log10(1 / mse), abs=1e-9)
    assert scores['psnr_r'] == float('inf')
    expected = structural_similarity(sr.permute(1, 2, 0).numpy(), hr.permute(1, 2, 0).numpy(), channel_axis=-1,
                                     data_range=2.0, win_size=7)
    assert scores['ssim_left'] == pytest.approx(expected, abs=1e-9)
