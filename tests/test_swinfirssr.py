"""SwinFIRSSR (models/swinfirssr/): state-dict layout and parameter counts, the index buffers, masks, windows and
padding against plain loop forms, the SCAM quirk, the loss, output shapes on odd sizes, gradients, and the authors'
'params_ema' files. CPU, no official code needed (tests/test_swinfirssr_parity.py compares with it). The network is
large (24M parameters, windows of 16): only the layout test builds it at full size; forwards use a small config."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from models import build_model, model_entry
from models.outputs import StereoSROutput
from models.swinfirssr import SwinFIRSSR, SwinFIRSSRConfig, SwinFIRSSRLoss
from models.swinfirssr.attention import (overlapping_attention_position_index, overlapping_windows,
                                         self_attention_position_index, shifted_window_mask, window_merge,
                                         window_partition)
from models.swinfirssr.fourier import FourierUnit
from models.swinfirssr.network import RGB_MEAN, evaluation_padding, symmetric_pad
from models.swinfirssr.scam import SCAM
from tests.conftest import random_pair
from models.checkpoint import load_model

pytestmark = pytest.mark.usefixtures('one_thread')

# Trainable parameters of the official model built with the test ymls (zoo2.md §0).
OFFICIAL_PARAMS = {2: 23_943_095, 4: 24_090_807}
WINDOW = 16


def tiny(scale: int = 4, **overrides) -> SwinFIRSSR:
    """Two residual groups of width 30, windows of 16, random non-zero SCAM scales (zero at init, which would hide
    the cross-view path). The channel attention squeezes 30 -> 6 (squeeze factor 5, not 30: one channel behind a
    ReLU is often dead, and its weights get no gradient)."""
    torch.manual_seed(0)
    config = dict(embed_dim=30, depths=(2, 2), num_heads=(2, 3), squeeze_factor=5, drop_path=0.0)
    model = SwinFIRSSR(SwinFIRSSRConfig(scale_factor=scale, **{**config, **overrides}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('.beta', '.gamma')):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


# ---- layout: names, order, shapes, counts, buffers


@pytest.mark.parametrize('scale', [2, 4])
def test_state_dict_layout_and_parameter_count(scale, reference_dir):
    model = SwinFIRSSR(SwinFIRSSRConfig(scale_factor=scale))
    layout = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    reference = [(k, shape) for k, shape in json.loads(
        (reference_dir / f'swinfirssr_x{scale}_state_dict.json').read_text())]
    assert layout == reference
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == OFFICIAL_PARAMS[scale]
    state = model.state_dict()
    assert state['relative_position_index_SA'].dtype == state['relative_position_index_OCA'].dtype == torch.int64
    assert 'mean' not in state                      # a plain attribute in the official model, not saved


def test_registry_entry():
    entry = model_entry('swinfirssr')
    assert entry.scales == (2, 4) and entry.criterion is SwinFIRSSRLoss
    recipe = entry.recipe
    assert (recipe.optimizer, recipe.lr, recipe.betas, recipe.total_iters, recipe.batch_size, recipe.grad_clip) == \
        ('adam', 2e-4, (0.9, 0.99), 800_000, 32, 0.0)
    assert recipe.channel_shuffle and 'train_SwinFIRSSR_SSRx{2,4}_scratch.yml' in recipe.source
    assert entry.release_options({'params': {}, 'params_ema': {}}) == {}       # RGB: nothing to reorder
    model = build_model('swinfirssr', 2)
    assert model.scale == 2 and model.config.embed_dim == 180 and model.config.window_size == WINDOW
    assert model.min_input_size == (1, 1) and model.input_multiple == 1      # any size: the network pads


def test_position_indices_equal_their_definition():
    """Index of query (r, c) and key (r', c'): self-attention (r - r' + 15) * 31 + (c - c' + 15); OCAB, keys in the
    24x24 window that starts 4 px before the query window, (r' - r - 7) * 39 + (c' - c - 7)."""
    sa, oca = self_attention_position_index(WINDOW), overlapping_attention_position_index(WINDOW, 24)
    assert sa.shape == (256, 256) and oca.shape == (256, 576)
    for q, k in ((0, 0), (17, 200), (255, 3), (100, 100)):
        (r, c), (r2, c2) = divmod(q, 16), divmod(k, 16)
        assert sa[q, k] == (r - r2 + 15) * 31 + (c - c2 + 15)
    for q, k in ((0, 0), (17, 575), (255, 3), (100, 300)):
        (r, c), (r2, c2) = divmod(q, 16), divmod(k, 24)
        assert oca[q, k] == (r2 - r - 7) * 39 + (c2 - c - 7)
    # The OCAB index goes negative; wrapped around the 1521-entry table every offset still has its own entry.
    assert (oca.min().item(), oca.max().item()) == (-880, 640)
    assert torch.unique(oca % 1521).numel() == 1521 == 39 ** 2
    assert torch.unique(sa).numel() == 31 ** 2 and sa.min() == 0


def test_shift_mask_equals_the_region_labelling():
    """Swin's mask from its definition: label the nine regions cut by rows/columns H-16 and H-8 (W-16, W-8), window
    the labels, and mask (-100) every pair of different labels."""
    h, w = 32, 48
    labels = torch.zeros(h, w)
    cuts = [slice(0, -16), slice(-16, -8), slice(-8, None)]
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            labels[rows, cols] = 3 * i + j
    windows = [labels[r:r + 16, c:c + 16].reshape(-1) for r in range(0, h, 16) for c in range(0, w, 16)]
    expected = torch.stack([torch.where(x[:, None] != x[None, :], -100.0, 0.0) for x in windows])
    torch.testing.assert_close(shifted_window_mask(h, w, 16, 8, torch.float32, torch.device('cpu')), expected,
                               rtol=0, atol=0)


def test_windows_equal_slices():
    x = torch.randn(2, 32, 48, 5)
    windows = window_partition(x, 16)
    assert windows.shape == (12, 256, 5)
    torch.testing.assert_close(windows[4], x[0, 16:32, 16:32].reshape(256, 5), rtol=0, atol=0)  # image 0, row 1, col 1
    torch.testing.assert_close(window_merge(windows, 16, 2, 32, 48), x, rtol=0, atol=0)
    keys = overlapping_windows(x, 16, 24)                                       # 24x24 around each window, zeros out
    padded = F.pad(x, (0, 0, 4, 4, 4, 4))
    assert keys.shape == (12, 576, 5)
    for index, (n, r, c) in enumerate((n, r, c) for n in range(2) for r in range(2) for c in range(3)):
        torch.testing.assert_close(keys[index], padded[n, 16 * r:16 * r + 24, 16 * c:16 * c + 24].reshape(576, 5),
                                   rtol=0, atol=0)


def test_evaluation_padding_is_the_authors_mirror():
    """1 to 16 px, a whole window at multiples of 16; cat([x, flip(x)]) cropped, i.e. symmetric (edge repeated)."""
    assert [evaluation_padding(n, 16) for n in (1, 13, 15, 16, 17, 32, 94, 311)] == [15, 3, 1, 16, 15, 16, 2, 9]
    x = torch.arange(2 * 3 * 20 * 30, dtype=torch.float64).view(2, 3, 20, 30)
    authors = torch.cat([x, x.flip(2)], 2)[:, :, :32]
    authors = torch.cat([authors, authors.flip(3)], 3)[:, :, :, :32]
    torch.testing.assert_close(symmetric_pad(x, 12, 2), authors, rtol=0, atol=0)
    # Longer than the image (the authors' concatenation would be too short): the mirror repeats.
    row = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    assert symmetric_pad(row, 0, 13)[0, 0, 0].tolist() == [1, 2, 3, 3, 2, 1, 1, 2, 3, 3, 2, 1, 1, 2, 3, 3]


def test_scam_residual_carries_the_normalised_features():
    """The authors' quirk: with beta = gamma = 0 SCAM returns LayerNorm(x), not x; otherwise each view adds the
    row-wise attention over the other view, here against a loop over rows."""
    torch.manual_seed(0)
    scam = SCAM(8).double()
    x = torch.randn(4, 3, 5, 8, dtype=torch.float64) * 3 + 1                     # [left; right], B = 2
    normed = F.layer_norm(x, (8,), scam.norm.weight, scam.norm.bias)
    torch.testing.assert_close(scam(x), normed, rtol=0, atol=1e-12)
    with torch.no_grad():
        scam.beta.normal_(), scam.gamma.normal_()
    out = scam(x)
    left, right = normed.chunk(2)
    proj = {name: lambda t, conv=getattr(scam, name): t @ conv.weight[:, :, 0, 0].T + conv.bias
            for name in ('l_proj1', 'r_proj1', 'l_proj2', 'r_proj2')}
    for b in range(2):
        for row in range(3):
            scores = proj['l_proj1'](left[b, row]) @ proj['r_proj1'](right[b, row]).T / math.sqrt(8)  # W_l, W_r
            expected_left = left[b, row] + scores.softmax(1) @ proj['r_proj2'](right[b, row]) * scam.beta.view(-1)
            expected_right = right[b, row] + scores.T.softmax(1) @ proj['l_proj2'](left[b, row]) * scam.gamma.view(-1)
            torch.testing.assert_close(out[b, row], expected_left, rtol=0, atol=1e-12)
            torch.testing.assert_close(out[2 + b, row], expected_right, rtol=0, atol=1e-12)


def test_fourier_unit_is_a_pointwise_map_of_the_spectrum():
    """The unit's channels are (re_0, im_0, re_1, im_1): a 1x1 conv that sends (re_0, im_0, re_1, im_1) to
    (im_1, re_1, im_0, re_0) with zero bias makes the new spectrum of channel 0 LeakyReLU(im_1) + i LeakyReLU(re_1)
    and that of channel 1 LeakyReLU(im_0) + i LeakyReLU(re_0), in the orthonormal FFT, transformed back."""
    unit = FourierUnit(2).double()
    with torch.no_grad():
        unit.conv_layer.weight.copy_(torch.eye(4, dtype=torch.float64).flip(1)[:, :, None, None])
        unit.conv_layer.bias.zero_()
    x = torch.randn(1, 2, 6, 10, dtype=torch.float64)
    spectrum = torch.fft.rfftn(x, dim=(-2, -1), norm='ortho').flip(1)                # channels swapped
    swapped = torch.complex(F.leaky_relu(spectrum.imag, 0.2), F.leaky_relu(spectrum.real, 0.2))
    torch.testing.assert_close(unit(x), torch.fft.irfftn(swapped, s=(6, 10), dim=(-2, -1), norm='ortho'),
                               rtol=0, atol=1e-12)


def test_rgb_mean_keeps_the_official_float32_rounding():
    model = tiny().double()
    assert model.mean.dtype == torch.float64
    assert model.mean.view(-1).tolist() == torch.tensor(RGB_MEAN, dtype=torch.float32).double().tolist()
    assert model.mean.view(-1).tolist() != list(RGB_MEAN)


# ---- forward


@pytest.mark.parametrize('scale, size', [(4, (13, 37)), (2, (21, 45))])
def test_output_structure_on_odd_sizes(scale, size):
    model = tiny(scale)
    left, right = random_pair(2, *size)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            out = model(left, right)
        assert isinstance(out, StereoSROutput)
        for sr in (out.sr_left, out.sr_right):
            assert sr.shape == (2, 3, scale * size[0], scale * size[1]) and torch.isfinite(sr).all()
        assert not torch.allclose(out.sr_left, out.sr_right)


def test_evaluation_pads_by_the_authors_rule_and_training_to_the_next_multiple():
    """Evaluation: the network on the pair mirrored by 1-16 px, cropped (a 16x32 pair gets a whole window more).
    Training with no drop-path: only to the next multiple (none for 16x32), so the two modes differ there."""
    model = tiny(2).double()
    left, right = (v.double() for v in random_pair(1, 16, 32, seed=2))
    with torch.no_grad():
        model.eval()
        out = model(left, right)
        expected = model.super_resolve(symmetric_pad(torch.cat([left, right]), 16, 16))[..., :32, :64]
        torch.testing.assert_close(torch.cat([out.sr_left, out.sr_right]), expected, rtol=0, atol=0)
        model.train()
        trained = model(left, right)
        torch.testing.assert_close(torch.cat([trained.sr_left, trained.sr_right]),
                                   model.super_resolve(torch.cat([left, right])), rtol=0, atol=0)
        assert (trained.sr_left - out.sr_left).abs().max() > 1e-6              # the padding reaches the FFT/pooling
        left, right = (v.double() for v in random_pair(1, 13, 30, seed=3))
        trained = model(left, right)
        expected = model.super_resolve(symmetric_pad(torch.cat([left, right]), 3, 2))[..., :26, :60]
        torch.testing.assert_close(torch.cat([trained.sr_left, trained.sr_right]), expected, rtol=0, atol=0)


def test_drop_path_acts_in_training_only_and_is_seeded():
    model = tiny(drop_path=0.5)
    left, right = random_pair(2, 16, 16, seed=4)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        first = model(left, right).sr_left
        torch.manual_seed(0)
        assert torch.equal(model(left, right).sr_left, first)
        assert not torch.equal(model(left, right).sr_left, first)
        model.eval()
        assert torch.equal(model(left, right).sr_left, model(left, right).sr_left)


def test_backward_reaches_every_parameter():
    model = tiny().train()
    left, right = random_pair(1, 16, 32, seed=5)
    hr = random_pair(1, 64, 128, seed=6)
    loss = SwinFIRSSRLoss(4)(model(left, right), left, right, *hr)['total']
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_loss_is_the_colour_charbonnier_over_both_views():
    """One square root per pixel over the 6 channels: errors d (left) and 0 (right) give sqrt(d^2 / 2 + 1e-6)."""
    criterion = SwinFIRSSRLoss(4)
    hr = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    out = StereoSROutput(hr + 0.3, hr.clone())
    terms = criterion(out, None, None, hr, hr)
    assert terms['charbonnier'].item() == pytest.approx(math.sqrt(0.09 / 2 + 1e-6), rel=1e-12)
    assert terms['total'].item() == terms['charbonnier'].item()
    assert criterion(StereoSROutput(hr, hr), None, None, hr, hr)['total'].item() == pytest.approx(1e-3, rel=1e-12)


def test_the_authors_ema_weights_load(tmp_path):
    """BasicSR files hold 'params' and 'params_ema'; the authors' test loads 'params_ema', and so does the loader."""
    model = SwinFIRSSR(SwinFIRSSRConfig(scale_factor=2))
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema['conv_last.bias'] += 1.0
    torch.save({'params': model.state_dict(), 'params_ema': ema}, tmp_path / 'SwinFIRSSR_SSRx2.pth')
    loaded, _ = load_model(tmp_path / 'SwinFIRSSR_SSRx2.pth', 2, name='swinfirssr')
    assert torch.equal(loaded.conv_last.bias, ema['conv_last.bias'])
    assert not loaded.training
