"""iPASSR (models/ipassr.py): state_dict layout, outputs, the bn_batch_stats option, the training objective and one
training step. Equivalence with the authors' code is in tests/test_ipassr_parity.py (needs their checkout)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_pair, randomise_batchnorm
from models import build_model, kernels
from models.ipassr import IPASSRLoss, IPASSROutput, PAMBatchNorm
from models.outputs import Pair
from models.registry import model_entry
from models.layers import ViewwiseBatchNorm2d

# Official parameter counts (spec §0.4, measured on the authors' model.py).
PARAMETERS = {2: 1_377_931, 4: 1_427_851}
# One small LR size for the network tests: each new shape costs oneDNN set-up time, which dominates at this size.
H, W = 12, 20


def x4_model(seed: int = 0, **options):
    """A x4 iPASSR with random weights and non-trivial PAM BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = build_model('ipassr', 4, **options)
    randomise_batchnorm(model, seed)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Layout

@pytest.mark.parametrize('scale', [2, 4])
def test_state_dict_matches_official_layout(scale, reference_dir):
    reference = json.loads((reference_dir / f'ipassr_x{scale}_state_dict.json').read_text())
    ours = [[name, list(t.shape)] for name, t in build_model('ipassr', scale).state_dict().items()]
    assert ours == reference  # same names, same shapes, same order, BatchNorm buffers included


@pytest.mark.parametrize('scale', [2, 4])
def test_parameter_counts_and_blocks(scale):
    model = build_model('ipassr', scale)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[scale]
    assert len(model.state_dict()) == 119
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms == [model.pam.bn] and isinstance(model.pam.bn, ViewwiseBatchNorm2d)
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    assert not any(isinstance(m, torch.nn.PReLU) for m in model.modules())
    assert model.scale == scale and model.min_input_size == (1, 2) and model.input_multiple == 1


def test_registry_entry():
    entry = model_entry('ipassr')
    assert entry.scales == (2, 4) and entry.criterion is IPASSRLoss
    recipe = entry.recipe
    assert (recipe.batch_size, recipe.optimizer, recipe.lr, recipe.schedule, recipe.n_steps, recipe.gamma,
            recipe.n_epochs) == (36, 'adam', 2e-4, 'step', 30, 0.5, 80)
    assert [o.name for o in entry.options] == ['bn_batch_stats']
    assert entry.options[0].kwargs['help'].startswith('iPASSR: ')
    assert entry.options[0].kwargs['action'] == 'store_true'
    state = build_model('ipassr', 2).state_dict()
    assert entry.release_options({'epoch': 80, 'state_dict': state}) == {'bn_batch_stats': True}
    assert entry.release_options(state) == {'bn_batch_stats': True}
    assert entry.release_options({'version': 1, 'model': state}) == {}
    assert build_model('ipassr', 4, bn_batch_stats=True).config.bn_batch_stats
    with pytest.raises(ValueError, match='scale factors'):
        build_model('ipassr', 3)


# ---------------------------------------------------------------------------------------------------------------
# Outputs

@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_output_fields_shapes_and_ranges(training):
    model = x4_model().train(training)
    left, right = random_pair(2, H, W)
    with torch.set_grad_enabled(training):
        out = model(left, right)
    assert type(out) is IPASSROutput
    assert out.sr_left.shape == out.sr_right.shape == (2, 3, 4 * H, 4 * W)
    assert isinstance(out.attention, Pair) and isinstance(out.valid, Pair)
    for m in out.attention:
        assert m.shape == (2, H, W, W)
        assert torch.allclose(m.sum(-1), torch.ones(2, H, W), atol=1e-5)
        assert m.min() >= 0
        assert m.requires_grad == training
    for v in out.valid:
        assert v.shape == (2, 1, H, W)
        # tanh(5 x cycle mass): in [0, 1) mathematically; float32 rounds it to 1 once the mass passes ~1.8
        assert v.min() >= 0 and v.max() <= 1
        assert not v.requires_grad                  # detached, as in the official PAM
    for x in (out.sr_left, out.sr_right, *out.attention, *out.valid):
        assert torch.isfinite(x).all()
    # M_left_to_right is the softmax of the transposed scores: both maps come from one score matrix
    score_rl = out.attention.left.log()
    score_lr = out.attention.right.log().transpose(-1, -2)
    centred = lambda s, dim: s - s.mean(dim, keepdim=True)  # noqa: E731  (softmax is shift-invariant per row)
    assert torch.allclose(centred(centred(score_rl, -1), -2), centred(centred(score_lr, -2), -1), atol=1e-3)


def test_batch_images_are_independent_in_eval():
    """In eval mode (running statistics) each image of a batch is computed alone, views folded or not."""
    model = x4_model(1).eval()
    left, right = random_pair(2, H, W, seed=2)
    with torch.no_grad():
        out = model(left, right)
        single = model(left[1:], right[1:])
    assert torch.allclose(single.sr_left, out.sr_left[1:], atol=1e-5)
    assert torch.allclose(single.sr_right, out.sr_right[1:], atol=1e-5)
    assert torch.allclose(single.attention.left, out.attention.left[1:], atol=1e-5)


def test_plain_and_fast_forms_agree():
    model = x4_model(2)
    left, right = random_pair(2, H, W, seed=3)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            fast = model(left, right)
            with kernels.plain_forms():
                plain = model(left, right)
        assert (fast.sr_left - plain.sr_left).abs().max() < 1e-5
        assert (fast.attention.right - plain.attention.right).abs().max() < 1e-5


def test_invalid_inputs_raise_before_computing():
    model = build_model('ipassr', 2)
    left, right = random_pair(1, 8, 8)
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(left[:, :2], right[:, :2])
    with pytest.raises(ValueError, match='same shape'):
        model(left, right[..., :-1])
    with pytest.raises(ValueError, match='floating-point'):
        model((left * 255).byte(), (right * 255).byte())
    with pytest.raises(ValueError, match='torch.Tensor'):
        model(left.numpy(), right)
    with pytest.raises(ValueError, match='NaN or Inf'):
        model(left, right.masked_fill(right > 0.9, float('nan')))
    with pytest.raises(ValueError, match='at least 2 pixels'):   # BatchNorm on batch statistics of one pixel
        model.train()(left[..., :1, :1], right[..., :1, :1])
    h, w = model.min_input_size
    with torch.no_grad():
        assert model.train()(left[..., :h, :w], right[..., :h, :w]).sr_left.shape == (1, 3, 2 * h, 2 * w)
        assert model.eval()(left[..., :1, :1], right[..., :1, :1]).sr_left.shape == (1, 3, 2, 2)


# ---------------------------------------------------------------------------------------------------------------
# bn_batch_stats: the official test.py normalises the PAM BatchNorm with each call's statistics (spec §0.5)

def test_pam_batchnorm_statistics_per_view():
    torch.manual_seed(0)
    bn = PAMBatchNorm(8, batch_stats_in_eval=True)
    randomise_batchnorm(bn, 1)
    left, right, other_right = torch.randn(3, 2, 8, 3, 5).unbind(0)
    out = bn.eval()(torch.cat([left, 3 * right + 1]))
    # each image of each view with its own (biased) statistics, as test.py's one-pair calls, then the affine map
    mean, var = left.mean((2, 3), keepdim=True), left.var((2, 3), unbiased=False, keepdim=True)
    expected = (left - mean) / (var + bn.eps).sqrt() * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(out[:2], expected, atol=1e-5)
    assert torch.allclose(bn(torch.cat([left, other_right]))[:2], out[:2], atol=1e-6)   # the other view is irrelevant
    assert bn.num_batches_tracked.item() == 0                  # eval mode leaves the running statistics alone
    bn.batch_stats_in_eval = False
    running = ((left - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
               * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    assert torch.allclose(bn(torch.cat([left, right]))[:2], running, atol=1e-5)


def test_bn_batch_stats_equals_train_mode_and_differs_from_running_statistics():
    model = x4_model(3, bn_batch_stats=True).eval()
    without_option = build_model('ipassr', 4).eval()
    without_option.load_state_dict(model.state_dict())
    left, right = random_pair(1, H, W, seed=4)
    running_mean = model.pam.bn.running_mean.clone()
    with torch.no_grad():
        with_batch_stats = model(left, right)
        # a train-mode forward: the official is_training=0 call with the module left in train mode
        train_mode = copy.deepcopy(model).train()(left, right)
        with_running_stats = without_option(left, right)
    assert torch.equal(model.pam.bn.running_mean, running_mean) and model.pam.bn.num_batches_tracked == 0
    for a, b in ((with_batch_stats.sr_left, train_mode.sr_left), (with_batch_stats.sr_right, train_mode.sr_right),
                 (with_batch_stats.attention.left, train_mode.attention.left),
                 (with_batch_stats.valid.right, train_mode.valid.right)):
        assert (a - b).abs().max() < 1e-5
    assert (with_batch_stats.attention.left - with_running_stats.attention.left).abs().max() > 1e-3
    assert (with_batch_stats.sr_left - with_running_stats.sr_left).abs().max() > 1e-4
    # a batch of pairs gives each pair what test.py's one-pair call gives it
    other_left, other_right = random_pair(1, H, W, seed=5)
    with torch.no_grad():
        batched = model(torch.cat([left, other_left]), torch.cat([right, other_right]))
    assert (batched.sr_left[:1] - with_batch_stats.sr_left).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Training objective

def shifted_pair(shift: int, scale: int = 2, batch: int = 1, height: int = 6, width: int = 24, seed: int = 0):
    """LR and HR pairs in which the left view's column x shows the right view's column x - shift (a fronto-parallel
    scene at disparity `shift`), cropped from one wider random image: (lr_left, lr_right, hr_left, hr_right)."""
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(batch, 3, height, width + shift, generator=g)
    hr = torch.rand(batch, 3, scale * height, scale * (width + shift), generator=g)
    return lr[..., :width], lr[..., shift:], hr[..., :scale * width], hr[..., scale * shift:]


def shift_attention(shift: int, batch: int, height: int, width: int) -> Pair:
    """Pair(M_right_to_left, M_left_to_right) (B, H, W, W) of a constant disparity `shift` (columns matched outside
    the image are sent to the nearest border column)."""
    columns = torch.arange(width)
    rl = F.one_hot((columns - shift).clamp(0, width - 1), width).float()   # left i <- right i - shift
    lr = F.one_hot((columns + shift).clamp(0, width - 1), width).float()   # right j <- left j + shift
    return Pair(rl.expand(batch, height, width, width), lr.expand(batch, height, width, width))


def test_loss_terms_vanish_for_a_perfect_prediction_and_correct_attention():
    scale, shift, margin = 2, 3, 4       # margin: LR columns where bicubic resampling sees the image border
    lr_left, lr_right, hr_left, hr_right = shifted_pair(shift, scale)
    b, _, h, w = lr_left.shape
    valid = torch.zeros(b, 1, h, w)
    valid_left, valid_right = valid.clone(), valid.clone()
    valid_left[..., margin + shift:w - margin] = 0.9     # left pixels whose match is inside the right view
    valid_right[..., margin:w - margin - shift] = 0.9
    out = IPASSROutput(hr_left.clone(), hr_right.clone(), shift_attention(shift, b, h, w), Pair(valid_left,
                                                                                                  valid_right))
    loss = IPASSRLoss(scale)
    terms = loss(out, lr_left, lr_right, hr_left, hr_right)
    assert set(terms) == {'sr', 'cons', 'photo', 'smooth', 'cycle', 'total'}
    for name in ('sr', 'cons', 'photo', 'cycle'):
        assert terms[name].item() < 1e-6, name
    # the attention of a constant disparity is smooth except where it is clamped at the border
    assert terms['smooth'].item() > 0

    # identity attention: perfectly smooth, and consistent cycles, but wrong for this pair
    identity = torch.eye(w).expand(b, h, w, w)
    wrong = loss(IPASSROutput(hr_left, hr_right, Pair(identity, identity), out.valid),
                 lr_left, lr_right, hr_left, hr_right)
    assert wrong['smooth'].item() == 0 and wrong['cycle'].item() < 1e-7
    assert wrong['photo'].item() > 1e-2

    # an imperfect prediction: the SR error is what the sr and cons terms measure
    noisy = IPASSROutput(hr_left + 0.1, hr_right, out.attention, out.valid)
    noisy_terms = loss(noisy, lr_left, lr_right, hr_left, hr_right)
    assert noisy_terms['sr'].item() == pytest.approx(0.1, rel=1e-5)
    assert noisy_terms['cons'].item() > 1e-2


def test_loss_weights_are_applied_and_unknown_terms_rejected():
    with pytest.raises(ValueError, match=r"unknown loss terms \['ssim'\]; known: \['cons', 'cycle'"):
        IPASSRLoss(4, {'ssim': 1.0})
    assert IPASSRLoss.DEFAULT_WEIGHTS == {'sr': 1.0, 'cons': 0.1, 'photo': 0.1, 'smooth': 0.1, 'cycle': 0.1}
    model = x4_model(5).train()
    lr_left, lr_right, hr_left, hr_right = shifted_pair(2, 4, batch=2, height=H, width=W, seed=1)
    out = model(lr_left, lr_right)
    terms = IPASSRLoss(4)(out, lr_left, lr_right, hr_left, hr_right)
    names = ('sr', 'cons', 'photo', 'smooth', 'cycle')
    assert all(terms[n].item() > 0 for n in names)
    expected = terms['sr'] + 0.1 * (terms['cons'] + terms['photo'] + terms['smooth'] + terms['cycle'])
    assert terms['total'].item() == pytest.approx(expected.item(), rel=1e-6)
    weights = {'sr': 0.5, 'cons': 2.0, 'photo': 0.0, 'smooth': 3.0, 'cycle': 0.25}
    custom = IPASSRLoss(4, weights)(out, lr_left, lr_right, hr_left, hr_right)
    assert custom['total'].item() == pytest.approx(sum(weights[n] * terms[n].item() for n in names), rel=1e-6)

    # cons sees the attention detached: it trains the SR path only (official train.py)
    attention = Pair(*(m.detach().requires_grad_() for m in out.attention))
    sr_left = out.sr_left.detach().requires_grad_()
    IPASSRLoss(4)(IPASSROutput(sr_left, out.sr_right.detach(), attention, out.valid),
                  lr_left, lr_right, hr_left, hr_right)['cons'].backward()
    assert attention.left.grad is None and sr_left.grad.abs().sum() > 0


def test_one_training_step_on_real_patches_lowers_the_loss():
    """A few Adam steps (official lr 2e-4) on a fixed batch of real x4 patches lower its loss."""
    from data.patches import sample_patches
    patches = sample_patches(4)
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255  # noqa: E731
    hr_left, hr_right, lr_left, lr_right = (torch.stack([to_tensor(p[k]) for p in (patches[3], patches[16])])
                                            for k in range(4))
    # 30 x 40 of the 30 x 90 LR patches (and their HR): a CPU-sized batch
    batch = (lr_left[..., :40], lr_right[..., :40], hr_left[..., :160], hr_right[..., :160])
    lr_left, lr_right = batch[:2]
    torch.manual_seed(0)
    model = build_model('ipassr', 4).train()
    criterion = IPASSRLoss(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    losses = []
    for _ in range(3):
        terms = criterion(model(lr_left, lr_right), *batch)
        assert all(torch.isfinite(v) for v in terms.values())
        losses.append(terms['total'].item())   # the loss of the weights before this step
        optimizer.zero_grad()
        terms['total'].backward()
        optimizer.step()
    with torch.no_grad():   # training mode: the same BatchNorm statistics as the steps (of this batch)
        after = criterion(model(lr_left, lr_right), *batch)['total'].item()
    assert after < 0.9 * losses[0], (losses, after)
