"""The vectorised ops against the slow loop forms of the official code, kept here as references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.layers import ViewwiseBatchNorm2d
from models.ssrdefnet.cost_volume import CostVolume, sampling_grid, swap_views
from models.ssrdefnet.feedback import subpixel_draft
from models.ssrdefnet.interaction import correlation_gate
from models.parallax import cycle_valid_mask, relax_rows


def reference_cost_volume(query, key, coords):
    """The official GetCostVolume loop: one grid_sample per hypothesis, written into a zero tensor."""
    n, c, h, w = query.shape
    d = coords.shape[1]
    grid = sampling_grid(coords)
    cost = torch.zeros(n, d, h, w, dtype=query.dtype)
    for i in range(d):
        sampled = F.grid_sample(key, grid[:, i * h:(i + 1) * h], mode='bilinear', padding_mode='zeros',
                                align_corners=False)
        cost[:, i] = (query * sampled).mean(dim=1)
    return cost


def test_cost_volume_matches_hypothesis_loop():
    torch.manual_seed(0)
    cv = CostVolume(24)
    features = torch.randn(4, 24, 16, 40)
    coords = torch.rand(4, 24, 16, 40) * 44 - 2  # includes samples outside the image
    fast = cv(features, coords)
    slow = reference_cost_volume(cv.query(features), swap_views(cv.key(features)), coords)
    assert fast.shape == (4, 24, 16, 40)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)


@pytest.mark.parametrize('band_bytes', [1, 2 * 17 * 17 * 8 * 3, 1 << 30])
def test_correlation_and_its_gradients_match_hypothesis_loop(band_bytes, monkeypatch):
    """The banded matrix-product correlation (1-row, 3-row and whole-image bands) against the official loop of
    grid_samples, values and all three gradients, in float64, with samples beyond both image borders."""
    import models.ssrdefnet.kernels
    monkeypatch.setitem(models.ssrdefnet.kernels.COST_CHUNK_BYTES, 'cpu', band_bytes)
    g = torch.Generator().manual_seed(1)
    query, key = (torch.randn(2, 5, 9, 17, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    coords = (torch.rand(2, 6, 9, 17, dtype=torch.float64, generator=g) * 22 - 2.5).requires_grad_()
    fast = models.ssrdefnet.kernels.correlation(query, key, coords)
    slow = reference_cost_volume(query, key, coords)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0)
    grad = torch.randn(fast.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(fast, (query, key, coords), grad),
                    torch.autograd.grad(slow, (query, key, coords), grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_correlation_stays_float32_under_autocast():
    """Autocast would run the correlation's matrix products in bfloat16 (4e-3 off here); the cost volume keeps the
    precision of its float32 coordinates, as the official grid_sample does under autocast."""
    from models.ssrdefnet.kernels import correlation
    g = torch.Generator().manual_seed(0)
    query, key = (torch.randn(2, 24, 16, 40, generator=g, requires_grad=True) for _ in range(2))
    coords = torch.rand(2, 24, 16, 40, generator=g) * 40
    reference = correlation(query, key, coords)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        cost = correlation(query, key, coords)
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, reference, atol=1e-6, rtol=0)
    grad = torch.randn(cost.shape, generator=g)
    with torch.autocast('cpu', dtype=torch.bfloat16):   # a backward pass run inside autocast, too
        grads = torch.autograd.grad(cost, (query, key), grad)
    for a, b in zip(grads, torch.autograd.grad(reference, (query, key), grad)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def reference_subpixel_draft(features, coords_hr, scale, query, key, fuse):
    """The official HRDIF loop over the s*s sub-pixel phases, u (rows) outer and v (columns) inner."""
    left, right = features.chunk(2)
    coords_left, coords_right = coords_hr.chunk(2)
    drafts = []
    for own, other, coords in ((left, right, coords_left), (right, left, coords_right)):
        q = query(own)
        acc = None
        for u in range(scale):
            for v in range(scale):
                pi = coords[:, :, u::scale, v::scale] / scale
                n, c, h, w = other.shape
                warped = F.grid_sample(other, sampling_grid(pi), mode='bilinear', padding_mode='zeros',
                                       align_corners=False)
                gate = (torch.tanh(5 * torch.sum(q * key(warped), 1).unsqueeze(1)) + 1) / 2
                mixed = (1 - gate) * own + gate * warped
                term = own + fuse(mixed - own)
                acc = term if acc is None else acc + term
        drafts.append(acc / scale ** 2)
    return torch.cat(drafts)


@pytest.mark.parametrize('scale', [2, 4])
def test_subpixel_draft_matches_phase_loop(scale):
    from models.layers import ResidualDenseBlock
    torch.manual_seed(scale)
    query, key = torch.nn.Conv2d(64, 32, 1), torch.nn.Conv2d(64, 32, 1)
    fuse = ResidualDenseBlock(64, num_layers=2, growth=24)
    features = torch.randn(4, 64, 8, 12)
    coords_hr = torch.rand(4, 1, 8 * scale, 12 * scale) * 12 * scale
    with torch.no_grad():
        fast = subpixel_draft(features, swap_views(features), coords_hr, scale, query, key, fuse)
        slow = reference_subpixel_draft(features, coords_hr, scale, query, key, fuse)
        # the draft keeps the layout of the features, so that the second recursion's LR stage stays channels-last
        nhwc = features.contiguous(memory_format=torch.channels_last)
        fast_nhwc = subpixel_draft(nhwc, swap_views(nhwc), coords_hr, scale, query, key, fuse)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_nhwc, slow, atol=1e-5, rtol=1e-5)
    assert fast_nhwc.is_contiguous(memory_format=torch.channels_last) and not fast_nhwc.is_contiguous()


def reference_relax(m, pixels):
    """The official M_Relax: the map plus copies shifted down and up by 1..pixels rows, zero-filled."""
    total = m.clone()
    for i in range(pixels):
        total = total + F.pad(m[:, :-1 - i, :], (0, 0, i + 1, 0))
        total = total + F.pad(m[:, i + 1:, :], (0, 0, 0, i + 1))
    return total


def test_relax_and_valid_mask_match_official_forms():
    torch.manual_seed(0)
    n, w = 6, 11
    forward = torch.softmax(torch.randn(n, w, w), -1)
    backward = torch.softmax(torch.randn(n, w, w), -1)
    torch.testing.assert_close(relax_rows(forward, 2), reference_relax(forward, 2), atol=1e-6, rtol=0)
    # official: bmm of each relaxed row with the matching column of the backward attention
    mass = torch.bmm(reference_relax(forward, 2).reshape(-1, w).unsqueeze(1),
                     backward.permute(0, 2, 1).reshape(-1, w).unsqueeze(2)).view(n, w)
    torch.testing.assert_close(cycle_valid_mask(forward, backward), torch.tanh(5 * mass), atol=1e-6, rtol=0)


def test_correlation_gate_broadcasts_like_per_phase_calls():
    torch.manual_seed(0)
    a = torch.randn(2, 1, 32, 5, 6)
    b = torch.randn(2, 4, 32, 5, 6)
    gate = correlation_gate(a, b)
    assert gate.shape == (2, 4, 1, 5, 6)
    for p in range(4):
        expected = (torch.tanh(5 * torch.sum(a[:, 0] * b[:, p], 1).unsqueeze(1)) + 1) / 2
        torch.testing.assert_close(gate[:, p], expected)


def viewwise_and_official_batchnorm(channels):
    """Our ViewwiseBatchNorm2d and a plain BatchNorm2d (the official layer) in the same state."""
    ours = ViewwiseBatchNorm2d(channels)
    official = torch.nn.BatchNorm2d(channels)
    official.load_state_dict(ours.state_dict())
    return ours, official


def test_viewwise_batchnorm_equals_two_official_calls():
    """Training mode: each view normalised with its own statistics, running stats updated left then right."""
    torch.manual_seed(0)
    ours, official = viewwise_and_official_batchnorm(8)
    left, right = torch.randn(3, 8, 5, 7) * 2 + 1, torch.randn(3, 8, 5, 7) - 1
    for _ in range(2):
        folded = ours(torch.cat([left, right]))
        separate = torch.cat([official(left), official(right)])
        torch.testing.assert_close(folded, separate, atol=0, rtol=0)
    for name, value in official.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, atol=0, rtol=0)
    assert ours.num_batches_tracked.item() == 4
    # and the two views really are normalised separately (a joint BatchNorm would differ)
    joint = torch.nn.BatchNorm2d(8)(torch.cat([left, right]))
    assert (joint - folded).abs().max() > 0.1
    ours.eval()
    official.eval()
    torch.testing.assert_close(ours(torch.cat([left, right])), torch.cat([official(left), official(right)]))


def test_viewwise_batchnorm_in_one_view_stages_normalises_each_call_whole():
    """Inside `one_view` (an HR stage run one view at a time) each call's batch is one view: the official calls."""
    from models.kernels import one_view
    torch.manual_seed(1)
    ours, official = viewwise_and_official_batchnorm(8)
    left, right = torch.randn(2, 8, 5, 7) * 2 + 1, torch.randn(2, 8, 5, 7) - 1
    with one_view():
        separate = [ours(left), ours(right)]
    for got, view in zip(separate, (left, right)):
        torch.testing.assert_close(got, official(view), atol=0, rtol=0)
    for name, value in official.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, atol=0, rtol=0)
    # outside the context a batch of two patches is split again into two views of one patch each
    assert (ours(left) - official(left)).abs().max() > 1e-3


def reference_dense_block(rdb, x):
    """The official RDB form: every layer convolves the concatenation of all earlier maps."""
    features = x
    for dense in rdb.conv:
        features = torch.cat([features, F.prelu(dense.conv(features), dense.relu.weight)], dim=1)
    return rdb.LFF(features) + x


@pytest.mark.parametrize('band_bytes', [1, 3 * 120 * 8, 1 << 30])
def test_banded_inference_dense_block_matches_official_form(band_bytes, monkeypatch):
    """Evaluation convolves a band of rows at a time into one buffer (1-row, 3-row and whole-image bands here)."""
    import models.kernels
    from models.layers import ResidualDenseBlock
    monkeypatch.setitem(models.kernels.INFERENCE_BAND_BYTES, 'cpu', band_bytes)
    torch.manual_seed(3)
    rdb = ResidualDenseBlock(16, num_layers=3, growth=8).double()
    for dense in rdb.conv:
        dense.relu.weight.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        banded = rdb(x)          # no autograd: the banded, in-place form
        expected = reference_dense_block(rdb, x)
    assert (banded - expected).abs().max() < 1e-12


@pytest.mark.parametrize('tensor_bytes', [1, 1 << 30])
def test_autograd_dense_block_matches_official_form_and_gradients(tensor_bytes, monkeypatch):
    """With autograd the dense block runs on chunks of images (one image per chunk with a 1-byte budget here) and
    splits its 1x1 fusion at the block input; values and gradients must be those of the official form."""
    import models.kernels
    from models.layers import ResidualDenseBlock
    monkeypatch.setattr(models.kernels, 'AUTOGRAD_TENSOR_BYTES', tensor_bytes)
    torch.manual_seed(6)
    rdb = ResidualDenseBlock(16, num_layers=3, growth=8).double()
    for dense in rdb.conv:
        dense.relu.weight.data.uniform_(-0.5, 0.5)
    x = torch.randn(3, 16, 7, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 16, 7, 5, dtype=torch.float64)
    for ours, official in zip(*(output_and_gradients(rdb, form, x, upstream)
                                for form in (rdb, lambda t: reference_dense_block(rdb, t)))):
        assert (ours - official).abs().max() < 1e-12


@pytest.mark.parametrize('make', ['head', 'pointwise'])
def test_rewritten_convolutions_match_conv2d_and_gradients(make):
    """In CPU training the SR heads run as transposed convolutions and the HR 1x1 convolutions as batched matrix
    products (models.kernels.HeadConv2d, PointwiseConv2d); values and gradients must be those of nn.Conv2d."""
    from models.kernels import HeadConv2d, PointwiseConv2d
    torch.manual_seed(8)
    ours = (HeadConv2d(16, 3) if make == 'head' else PointwiseConv2d(16, 5)).double()
    x = torch.randn(2, 16, 9, 13, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, ours.out_channels, 9, 13, dtype=torch.float64)
    conv = torch.nn.Conv2d(16, ours.out_channels, ours.kernel_size, padding=ours.padding).double()
    conv.load_state_dict(ours.state_dict())
    for mine, reference in zip(output_and_gradients(ours, ours, x, upstream),
                               output_and_gradients(conv, conv, x, upstream)):
        assert (mine - reference).abs().max() < 1e-12
    assert ours.weight.grad.abs().min() > 0          # every weight received a gradient


def output_and_gradients(module, form, x, upstream):
    """[form(x), d/dx, d/d each parameter of module] for the backward of `upstream` through form(x)."""
    module.zero_grad()
    x.grad = None
    out = form(x)
    out.backward(upstream)
    return [out.detach(), x.grad.clone(), *(p.grad.clone() for p in module.parameters())]


@pytest.mark.parametrize('band_bytes', [1, 3 * 40 * 64 * 8, 1 << 30])
@pytest.mark.parametrize('make', ['hr_matching_feature', 'lr_matching_feature'])
def test_banded_inference_matching_features_match_official_form(make, band_bytes, monkeypatch):
    """In evaluation the pyramid-pooling fusion runs band by band (1-row, 3-row and whole-image bands here) on the
    concatenation of each band, with the BatchNorm folded in and the PReLU in place; it must equal lastconv on the
    whole concatenation (the official form, BatchNorm with running statistics)."""
    import models.kernels
    import models.ssrdefnet.features
    monkeypatch.setitem(models.kernels.INFERENCE_BAND_BYTES, 'cpu', band_bytes)
    torch.manual_seed(4)
    feature = getattr(models.ssrdefnet.features, make)().double().eval()
    for module in feature.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.fill_(0.3)
    x = torch.randn(2, 64, 33, 40, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        banded = feature(x)
        expected = reference_matching_feature(feature, x)
    assert banded.shape == expected.shape
    assert (banded - expected).abs().max() < 1e-12
    assert banded.is_contiguous(memory_format=torch.channels_last)


def reference_matching_feature(feature, x):
    """The official form: lastconv on the whole concatenation of the input and the resized pooled branches."""
    size = x.shape[2:]
    pooled = [F.interpolate(getattr(feature, name)(x), size=size, mode='bilinear', align_corners=False)
              for name in reversed(feature.branch_names)]
    return feature.lastconv(torch.cat([x, *pooled], dim=1))


@pytest.mark.parametrize('train_mode', [True, False])
@pytest.mark.parametrize('make', ['hr_matching_feature', 'lr_matching_feature'])
def test_autograd_matching_features_match_official_form_and_gradients(make, train_mode):
    """With autograd the fusion convolves the input and the pooled branches separately and adds them (no
    concatenation); values and gradients must be those of the convolution of the concatenation."""
    import models.ssrdefnet.features
    torch.manual_seed(7)
    feature = getattr(models.ssrdefnet.features, make)().double().train(train_mode)
    x = torch.randn(4, 64, 33, 40, dtype=torch.float64, requires_grad=True)   # two views of two patches
    upstream = torch.randn_like(feature(x))
    for ours, official in zip(*(output_and_gradients(feature, form, x, upstream)
                                for form in (feature, lambda t: reference_matching_feature(feature, t)))):
        assert (ours - official).abs().max() < 1e-10


def test_ssim_separable_blur_matches_official_2d_window():
    """The loss's SSIM blurs with two 1-D Gaussian passes; the official convolves with the 11x11 outer product."""
    from models.ssrdefnet.losses import SSIM_WINDOW, gaussian_window, ssim_map
    g = gaussian_window().double()
    window = torch.outer(g, g).expand(3, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t):
        return F.conv2d(t, window, padding=SSIM_WINDOW // 2, groups=3)

    torch.manual_seed(5)
    a, b = torch.rand(2, 3, 20, 33, dtype=torch.float64), torch.rand(2, 3, 20, 33, dtype=torch.float64)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    assert (ssim_map(a, b) - expected).abs().max() < 1e-12
    assert (ssim_map(a, a) - 1).abs().max() < 1e-12    # and it is a similarity: 1 for identical images
