"""ISRResCNet: its operators against their definitions, the WMAD noise estimate on noise of known sigma, the layout and
the authors' checkpoint format, the whole-image quantities under tiling, one training step, and (skipped unless
ISRRESCNET_OFFICIAL_DIR is set) equality with the official code on random weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.patches import sample_patches
from models import build_model, model_entry
from models.inference import global_inputs, predict_tiled
from models.isrrescnet import (ISRResCNet, ISRResCNetConfig, bilinear_initialisation, cubic_upsample, cubic_weights,
                               decimate, l2_projection, matlab_resize, wmad_sigma)
from tests.conftest import random_pair
from official.isrrescnet import official_isrrescnet, official_modules, official_super_resolve, requires_official
from models.checkpoint import load_model

# A small denoiser (same code) where the test is about the scheme or plumbing, not the released width.
SMALL = dict(depth=2, feedback_steps=2, features=16)


def catmull_rom(a, b, c, d, t):
    """The official Hermite form of the 1-D cubic, written out."""
    return ((-a + 3 * b - 3 * c + d) / 2) * t ** 3 + (a - 2.5 * b + 2 * c - d / 2) * t ** 2 + ((c - a) / 2) * t + b


def upsample_loop(y: torch.Tensor, s: int, swap: bool) -> torch.Tensor:
    """U pixel by pixel (spec §2.3): 4x4 neighbourhood, column taps with one fraction, row sums with the other."""
    h, w = y.shape[-2:]
    out = torch.zeros(*y.shape[:-2], h * s, w * s, dtype=y.dtype)
    for i in range(h * s):
        for j in range(w * s):
            t_row, t_col = (i % s) / s, (j % s) / s
            rows = [min(max(i // s - 1 + r, 0), h - 1) for r in range(4)]
            cols = [min(max(j // s - 1 + c, 0), w - 1) for c in range(4)]
            first, second = (t_row, t_col) if swap else (t_col, t_row)
            sums = [catmull_rom(*(y[..., rows[r], cols[c]] for c in range(4)), first) for r in range(4)]
            out[..., i, j] = catmull_rom(*sums, second)
    return out


@pytest.mark.parametrize('swap', [True, False])
def test_back_projection_interpolation_equals_its_loop_form(swap):
    y = torch.rand(1, 2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fast = cubic_upsample(y, 3, swap_axes=swap)
    assert (fast - upsample_loop(y, 3, swap)).abs().max() < 1e-12
    assert torch.equal(decimate(fast, 3), y)                      # interpolating: U(y)[::s, ::s] = y


def test_the_official_interpolation_swaps_the_axes():
    """An image varying along the columns only: the correct U keeps its rows equal; the official one makes rows
    differ (the row fraction weights the column taps) while each run of s columns is constant."""
    y = torch.tensor([0.0, 10, 50, 20, 80, 30], dtype=torch.float64).expand(1, 1, 6, 6)
    correct, official = cubic_upsample(y, 4, swap_axes=False), cubic_upsample(y, 4, swap_axes=True)
    assert (correct - correct[..., :1, :]).abs().max() < 1e-12
    assert (official[..., 1, :] - official[..., 0, :]).abs().max() > 1
    assert (official[..., :, 1:4] - official[..., :, :1]).abs().max() < 1e-12
    # phase (a, b) is interpolated as (b, a): down the first s rows of column 0 runs the correct first s columns
    assert (official[0, 0, :4, 0] - correct[0, 0, 0, :4]).abs().max() < 1e-9
    # weights of the taps sum to 1 at every fraction, and reproduce a linear ramp
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    assert torch.allclose(cubic_weights(t).sum(-1), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(cubic_weights(t) @ torch.tensor([-1.0, 0, 1, 2], dtype=torch.float64), t)


def test_gradient_step_is_a_back_projection():
    """z = v - (U(D v) - U(y)) has D z = y for any v: the data step makes the (0, 0) phase equal the LR pixels."""
    g = torch.Generator().manual_seed(1)
    y, v = torch.rand(2, 3, 7, 9, generator=g) * 255, torch.rand(2, 3, 28, 36, generator=g) * 255
    z = v - (cubic_upsample(decimate(v, 4), 4) - cubic_upsample(y, 4))
    assert (decimate(z, 4) - y).abs().max() < 1e-3


def test_bicubic_degradation_is_matlab_imresize_and_keeps_consistent_estimates():
    """--isrrescnet_bicubic_degradation: H and U equal imresize.imresize (MATLAB bicubic) on floats, and the data step
    leaves an estimate consistent with the LR image (H v = y) unchanged, so the HR image itself is a fixed point."""
    from models.imresize import imresize
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(2, 3, 24, 36, generator=g, dtype=torch.float64) * 255
    y = matlab_resize(hr, (8, 12), 1 / 3)
    expected = np.stack([imresize(img.permute(1, 2, 0).numpy(), 1 / 3) for img in hr]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-9)
    up = matlab_resize(y, (24, 36), 3)
    expected = np.stack([imresize(img.permute(1, 2, 0).numpy(), 3) for img in y]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(up.numpy(), expected, atol=1e-9)
    z = hr - (matlab_resize(matlab_resize(hr, (8, 12), 1 / 3), (24, 36), 3) - up)
    assert (z - hr).abs().max() < 1e-9
    model = build_model('isrrescnet', 2, isrrescnet_bicubic_degradation=True, iterations=2, depth=1)
    official = build_model('isrrescnet', 2, iterations=2, depth=1)
    official.load_state_dict(model.state_dict())
    left, right = torch.rand(2, 1, 3, 10, 12, generator=g)
    with torch.no_grad():
        ours, theirs = model(left, right), official(left, right)
    assert ours.sr_left.shape == (1, 3, 20, 24) and not torch.allclose(ours.sr_left, theirs.sr_left, atol=1e-2)


def test_bilinear_initialisation_darkens_the_border_unless_corrected():
    y = torch.full((1, 3, 5, 7), 100.0)
    official = bilinear_initialisation(y, 4)
    assert official[0, 0, 0, 0].item() == pytest.approx(25) and official[0, 0, 0, 10].item() == pytest.approx(50)
    assert official[0, 0, 10, 0].item() == pytest.approx(50) and official[0, 0, 10, 10].item() == pytest.approx(100)
    assert torch.allclose(bilinear_initialisation(y, 4, align_corners=True), torch.full((1, 3, 20, 28), 100.0))


@pytest.mark.parametrize('sigma', [5.0, 10.0, 25.0])
def test_wmad_recovers_the_sigma_of_synthetic_noise(sigma):
    """A smooth image plus Gaussian noise of known sigma (/255): the estimate is within 10 %."""
    g = torch.Generator().manual_seed(int(sigma))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing='ij')
    clean = torch.stack([0.5 + 0.3 * torch.sin(3 * xx + c) * torch.cos(2 * yy) for c in range(3)])[None]
    noisy = clean + torch.randn(clean.shape, generator=g) * sigma / 255
    assert wmad_sigma(noisy).item() * 255 == pytest.approx(sigma, rel=0.1)
    assert wmad_sigma(clean).item() * 255 < 0.5
    with pytest.raises(ValueError, match='at least 8x8'):
        wmad_sigma(torch.rand(1, 3, 7, 20))


def test_l2_projection_caps_the_norm():
    r = torch.randn(2, 3, 10, 10) * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)
    out = l2_projection(r, torch.tensor([2.0, 2.0]), torch.tensor(0.0))
    radius = 2.0 * (300 - 1) ** 0.5
    assert torch.allclose(out[0], r[0])                                   # inside the ball: unchanged
    assert out[1].norm().item() == pytest.approx(radius, rel=1e-5)        # outside: on the sphere, same direction
    assert torch.allclose(out[1] / out[1].norm(), r[1] / r[1].norm(), atol=1e-6)


def test_layout_parameters_and_the_authors_file_format(tmp_path, reference_dir):
    model = build_model('isrrescnet', 4)
    reference = json.loads((reference_dir / 'isrrescnet_x4_state_dict.json').read_text())
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == reference
    assert sum(p.numel() for p in model.parameters()) == 388_823          # shared blocks counted once
    # the authors' file: {'model_state_dict': <92 keys, blocks under both names>}
    torch.manual_seed(3)
    source = build_model('isrrescnet', 4)
    torch.save({'model_state_dict': source.state_dict(), 'epoch': 1}, tmp_path / 'isrrescnet_x4.pth')
    loaded, _ = load_model(tmp_path / 'isrrescnet_x4.pth', 4, name='isrrescnet')
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    assert loaded.model.resblocks is loaded.model.fbblock.RBs
    # a file with one alias only loads; one whose aliases disagree is refused
    only = {k: v for k, v in source.state_dict().items() if '.fbblock.RBs.' not in k}
    fresh = build_model('isrrescnet', 4)
    fresh.load_state_dict(only)
    assert torch.equal(fresh.model.fbblock.RBs[2].conv1.weight_v, source.model.resblocks[2].conv1.weight_v)
    bad = dict(source.state_dict())
    bad['model.fbblock.RBs.0.relu1.weight'] = bad['model.fbblock.RBs.0.relu1.weight'] + 1
    with pytest.raises(ValueError, match='hold different values'):
        fresh.load_state_dict(bad)


def test_denoiser_bands_equal_the_whole_image_and_tiling_uses_the_global_sigma():
    torch.manual_seed(0)
    model = ISRResCNet(ISRResCNetConfig(scale_factor=2, iterations=2, **SMALL)).eval()
    left, right = random_pair(1, 16, 12)
    left[..., 8:, :] += torch.randn(1, 3, 8, 12, generator=torch.Generator().manual_seed(1)) * 0.2   # noisier half
    with torch.no_grad():
        whole = model(left, right)
        model.config.band = 7                           # HR bands of 7 rows, halo = receptive radius
        banded = model(left, right)
    assert (whole.sr_left - banded.sr_left).abs().max() < 1e-5
    # predict_tiled: every band receives the sigma of the whole pair, not its own
    sigma = global_inputs(model, left, right)['sigma']
    band_sigma = model.estimate_sigma(torch.cat([left[..., :8, :], right[..., :8, :]]) * 255)
    assert (sigma - band_sigma).abs().max() > 1            # so a per-band estimate would differ
    seen, forward = [], model.forward
    model.forward = lambda l, r, sigma=None: seen.append(sigma) or forward(l, r, sigma=sigma)
    predict_tiled(model, left, right, band=8, overlap=0)
    assert len(seen) == 2 and all(torch.equal(s, sigma) for s in seen)


def test_one_training_step_lowers_each_loss_on_real_patches():
    """Real Motorcycle patches (x2, cropped to 12x12 LR), the released K = 10 scheme with a small denoiser: Adam
    steps on the fixed batch lower both terms (final and TBPTT intermediate)."""
    hr_left, hr_right, lr_left, lr_right = (torch.from_numpy(np.ascontiguousarray(x[:24, :24] if i < 2 else
                                                                                   x[:12, :12])).permute(2, 0, 1)
                                            .float()[None] / 255 for i, x in enumerate(sample_patches(2)[5]))
    torch.manual_seed(0)
    model = ISRResCNet(ISRResCNetConfig(scale_factor=2, **SMALL)).train()
    criterion = model_entry('isrrescnet').criterion(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = None
    for _ in range(3):
        out = model(lr_left, lr_right)
        assert len(out.intermediate) == 1                 # iteration 5 of 10
        terms = criterion(out, lr_left, lr_right, hr_left, hr_right)
        before = before or {k: v.item() for k, v in terms.items()}
        optimizer.zero_grad()
        terms['total'].backward()
        optimizer.step()
    with torch.no_grad():
        after = criterion(model(lr_left, lr_right), lr_left, lr_right, hr_left, hr_right)
    for name in ('sr', 'intermediate', 'total'):
        assert after[name].item() < before[name], name


# ----------------------------------------------------------------------------------------------------------------
# Against the official code (random weights: no trained weights can be downloaded here)


def paired(scale: int, iterations: int = 10):
    """The official model (random init, alpha and w moved off their init) and ours with its weights."""
    torch.manual_seed(0)
    official = official_isrrescnet(iterations)
    with torch.no_grad():
        official.alpha.add_(torch.randn(iterations) * 0.3)
        official.w.add_(torch.randn(iterations) * 0.3)
    ours = build_model('isrrescnet', scale, iterations=iterations).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.eval(), ours


@requires_official
def test_operators_match_official():
    problems, wmad = official_modules()['problems'], official_modules()['wmad'].Wmad_estimator()
    y = torch.rand(2, 3, 11, 13, generator=torch.Generator().manual_seed(2)) * 255
    diffs = {'U': (problems.bicubic_interp_nd(y, None, 4) - cubic_upsample(y, 4)).abs().max().item(),
             'D': (problems.bicubic_interp_nd(cubic_upsample(y, 4), None, 0.25) - y).abs().max().item(),
             'init': (problems.downsampling(y, None, 4) - bilinear_initialisation(y, 4)).abs().max().item(),
             'wmad': (wmad(y / 255) - wmad_sigma(y / 255)).abs().max().item()}
    print(f'\n[parity] ISRResCNet operators, 0-255 units: {diffs}')
    assert diffs['U'] < 1e-3 and diffs['D'] < 1e-3 and diffs['init'] < 1e-4 and diffs['wmad'] < 1e-7


@requires_official
@pytest.mark.parametrize('scale, size', [(4, (11, 13)), (2, (12, 16))])
def test_model_matches_official(scale, size):
    """The demo's inference (10 iterations, WMAD sigma, bilinear init) in float32, [left; right] as one batch."""
    official, ours = paired(scale)
    left, right = random_pair(1, *size, seed=3)
    with torch.no_grad():
        expected = official_super_resolve(official, torch.cat([left, right]), scale)
        out = ours(left, right)
    diff = (torch.cat([out.sr_left, out.sr_right]) - expected).abs().max().item()
    print(f'\n[parity] ISRResCNet x{scale} {size[0]}x{size[1]} float32: max |ours - official| = {diff:.3e} ([0, 1])')
    assert diff < 1e-4


def test_single_image_protocol_equals_basicsr_conventions(tmp_path):
    """`single`: Y = 16 + BT.601 weights in 0-255, `scale` border pixels cropped, PSNR range 255 (closed form for a
    constant Y offset), SSIM = skimage's Gaussian SSIM (sigma 1.5, no sample covariance); and a folder of images is
    scored image by image."""
    from skimage.metrics import structural_similarity
    from evaluation import evaluate_image_folder, single_image_scores, y_channel
    from data.readers import write_image
    assert y_channel(torch.ones(3, 1, 1)).item() == pytest.approx(235.0) and y_channel(torch.zeros(3, 1, 1)) == 16
    rng = np.random.default_rng(0)
    hr = torch.from_numpy(rng.integers(0, 256, (3, 40, 48)) / 255.0)
    sr = hr.clone()
    sr[:, 4:-4, 4:-4] = (sr[:, 4:-4, 4:-4] + 2 / 255).clamp(max=1)    # inside the crop only
    p, s = single_image_scores(sr, hr, 4, 'single')
    y_sr, y_hr = (y_channel(x)[0, 4:-4, 4:-4].numpy() for x in (sr, hr))
    assert p == pytest.approx(10 * np.log10(255 ** 2 / np.mean((y_sr - y_hr) ** 2)), abs=1e-9)
    assert s == pytest.approx(structural_similarity(y_sr, y_hr, data_range=255, gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False), abs=1e-9)
    for i in range(2):
        write_image(tmp_path / f'img{i}.png', rng.random((30 + i, 37, 3)))
    from models.imresize import imresize

    def bicubic(lr):
        return torch.from_numpy(imresize(lr.permute(1, 2, 0).numpy().astype(np.float64), 4)).permute(2, 0, 1)
    result = evaluate_image_folder(bicubic, tmp_path, 4)
    assert result['num_images'] == 2 and 5 < result['psnr'] < 40 and 0 < result['ssim'] < 1
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no images'):
        evaluate_image_folder(bicubic, tmp_path / 'empty', 4)
