"""The network: parameter counts, state_dict layout, outputs, batching, geometry and bad-input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import random_pair, randomise_batchnorm
from models import build_model
from models.ssrdefnet import SSRDEFNetOutput
from models.layers import ViewwiseBatchNorm2d
from models.ssrdefnet.cost_volume import coordinates_to_disparity, warp
from models.outputs import Pair

# Official parameter counts (spec Appendix A, measured on the authors' code).
PARAMETERS = {2: 2_091_168, 4: 2_255_776}


@pytest.fixture(scope='module')
def x4_eval():
    """One eval forward of a x4 model with random weights and BN statistics on a 30x90 pair (shared by tests)."""
    torch.manual_seed(0)
    model = build_model('ssrdefnet', 4).eval()
    randomise_batchnorm(model)
    left, right = random_pair(1, 30, 90)
    with torch.no_grad():
        return model(left, right), left, right


@pytest.mark.parametrize('scale', [2, 4])
def test_parameter_counts(scale):
    model = build_model('ssrdefnet', scale)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[scale]
    assert all(p.requires_grad for p in model.parameters())
    assert len(model.state_dict()) == 420
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batchnorms) == 27
    # every BatchNorm must keep the official per-view training statistics
    assert all(isinstance(m, ViewwiseBatchNorm2d) for m in batchnorms)
    assert sum(isinstance(m, torch.nn.PReLU) for m in model.modules()) == 74


@pytest.mark.parametrize('scale', [2, 4])
def test_state_dict_matches_official_layout(scale, reference_dir):
    reference = json.loads((reference_dir / f'ssrdefnet_x{scale}_state_dict.json').read_text())
    ours = [[name, list(t.shape)] for name, t in build_model('ssrdefnet', scale).state_dict().items()]
    assert ours == reference  # same names, same shapes, same order


def test_unknown_model_and_scale_are_rejected():
    with pytest.raises(ValueError, match='unknown model'):
        build_model('passrnet', 4)
    with pytest.raises(ValueError, match='defined for scale factors'):
        build_model('ssrdefnet', 3)


def test_output_fields_shapes_and_ranges(x4_eval):
    out, left, _ = x4_eval
    assert isinstance(out, SSRDEFNetOutput)
    assert len(out.sr) == 4 and all(len(x) == 2 for x in out.sr)
    for pair in out.sr:
        for img in pair:
            assert img.shape == (1, 3, 120, 360) and torch.isfinite(img).all()
    assert out.sr_left is out.sr[3].left and out.sr_right is out.sr[3].right
    for name, shape in [('attention', (1, 30, 90, 90)), ('valid_lr', (1, 1, 30, 90)), ('valid_hr', (1, 1, 120, 360)),
                        ('coords_lr', (1, 1, 120, 360)), ('coords_hr', (1, 1, 120, 360))]:
        stages = getattr(out, name)
        assert len(stages) == 2, name
        for pair in stages:
            for t in pair:
                assert t.shape == shape, name
                assert torch.isfinite(t).all(), name
    for pair in out.attention:  # each row of an attention map is a distribution over the other view's columns
        for m in pair:
            assert torch.allclose(m.sum(-1), torch.ones(1), atol=1e-5)
            assert m.min() >= 0
    for stages in (out.valid_lr, out.valid_hr):
        for pair in stages:
            for v in pair:
                assert v.min() >= 0 and v.max() <= 1
    for disp in (out.disp_left, out.disp_right, *out.disp_hr[0], *out.disp_lr[1]):
        assert disp.shape == (1, 1, 120, 360)
        assert disp.min() >= 0 and disp.max() <= 192
    # disp_left is the clamped x - coordinate of the final HR coordinates
    columns = torch.arange(360, dtype=torch.float32)
    assert torch.equal(out.disp_left, (columns - out.coords_hr[1].left).clamp(0, 192))
    assert torch.equal(out.disp_right, (out.coords_hr[1].right - columns).clamp(0, 192))


def test_train_mode_returns_same_type_and_trains():
    """Train mode returns the same structure; the total SR loss backpropagates into every parameter."""
    torch.manual_seed(0)
    model = build_model('ssrdefnet', 2).train()
    left, right = random_pair(2, 30, 60)
    out = model(left, right)
    assert isinstance(out, SSRDEFNetOutput)
    hr = torch.rand(2, 3, 60, 120)
    loss = sum((img - hr).abs().mean() for pair in out.sr for img in pair)
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert without_grad == []
    # the HR disparity is trained by the SR loss through the feedback warp (spec §8.2)
    assert model.get_cv.query.weight.grad.abs().sum() > 0



@pytest.mark.parametrize('train_mode', [True, False])
def test_outputs_do_not_depend_on_autograd(train_mode):
    """Without autograd the network takes its memory-saving paths (views one at a time in eval mode, in-place dense
    blocks, NHWC on CPU); the numbers must stay those of the autograd path, in training mode too, where BatchNorm
    must still see both views. float64, because training-mode BatchNorm on random weights amplifies rounding."""
    torch.manual_seed(2)
    model = build_model('ssrdefnet', 2).double().train(train_mode)
    randomise_batchnorm(model)
    left, right = (t.double() for t in random_pair(2, 30, 60, seed=6))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with_grad = model(left, right)
    model.load_state_dict(state)  # training mode updated the running statistics
    with torch.no_grad():
        without_grad = model(left, right)
    for recursion in range(2):
        for view in range(2):
            assert (with_grad.sr[2 * recursion + 1][view] - without_grad.sr[2 * recursion + 1][view]).abs().max() < 1e-9
            assert (with_grad.coords_hr[recursion][view] - without_grad.coords_hr[recursion][view]).abs().max() < 1e-6

def test_eval_batch_equals_single_images():
    """The official evaluation mode only runs batch 1; ours gives the same per-image result for any batch."""
    torch.manual_seed(1)
    model = build_model('ssrdefnet', 2).eval()
    randomise_batchnorm(model)
    left, right = random_pair(2, 30, 60, seed=3)
    with torch.no_grad():
        both = model(left, right)
        singles = [model(left[i:i + 1], right[i:i + 1]) for i in range(2)]
    for i, single in enumerate(singles):
        assert torch.allclose(both.sr_left[i], single.sr_left[0], atol=1e-5)
        assert torch.allclose(both.sr_right[i], single.sr_right[0], atol=1e-5)
        assert torch.allclose(both.disp_left[i], single.disp_left[0], atol=1e-3)
        assert torch.allclose(both.disp_right[i], single.disp_right[0], atol=1e-3)


def test_warp_samples_where_the_official_normalisation_says():
    """warp() reads column u at u*W/(W-1) - 0.5 and row y at y*H/(H-1) - 0.5 (spec Q3), zero outside the image.

    Reference: a direct NumPy bilinear interpolation at those positions.
    """
    rng = np.random.default_rng(0)
    h, w = 5, 7
    image = rng.random((h, w))
    coords = rng.uniform(-1, w, size=(h, w))

    def pixel(yy, xx):
        return image[yy, xx] if 0 <= yy < h and 0 <= xx < w else 0.0

    expected = np.zeros((h, w))
    for y in range(h):
        ry = y * h / (h - 1) - 0.5
        for x in range(w):
            rx = coords[y, x] * w / (w - 1) - 0.5
            y0, x0 = int(np.floor(ry)), int(np.floor(rx))
            a, b = ry - y0, rx - x0
            expected[y, x] = ((1 - a) * (1 - b) * pixel(y0, x0) + (1 - a) * b * pixel(y0, x0 + 1)
                              + a * (1 - b) * pixel(y0 + 1, x0) + a * b * pixel(y0 + 1, x0 + 1))
    got = warp(torch.tensor(image).view(1, 1, h, w), torch.tensor(coords).view(1, 1, h, w))
    np.testing.assert_allclose(got.view(h, w).numpy(), expected, atol=1e-12)


def test_coordinates_to_disparity_signs_and_clamp():
    coords = torch.tensor([[[[-5.0, 0.5, 2.0, 300.0]]]])
    # left: d = x - coord; right: d = coord - x; both clamped to [0, 192]
    assert coordinates_to_disparity(coords, 'left', 192).flatten().tolist() == [5.0, 0.5, 0.0, 0.0]
    assert coordinates_to_disparity(coords, 'right', 192).flatten().tolist() == [0.0, 0.0, 0.0, 192.0]
    assert coordinates_to_disparity(coords, 'right', None).flatten().tolist() == [-5.0, -0.5, 0.0, 297.0]
    with pytest.raises(ValueError, match="'left' or 'right'"):
        coordinates_to_disparity(coords, 'top', None)


@pytest.mark.parametrize('fix', [False, True])
def test_right_cost_volume_hypotheses_flag(fix, monkeypatch):
    """Official quirk Q1: the right cost is sampled at the left hypotheses; the opt-in flag uses the right ones."""
    model = build_model('ssrdefnet', 4, fix_right_cost_volume=fix).eval()
    seen = {}
    original = model.get_cv.forward

    def spy(features, sample_coords):
        seen['sample_at'] = sample_coords
        return original(features, sample_coords)

    monkeypatch.setattr(model.get_cv, 'forward', spy)
    hr = torch.rand(2, 64, 32, 64)
    coords = torch.rand(2, 1, 32, 64) * 64
    coords[1] += 5  # make the right view's hypotheses differ from the left's
    with torch.no_grad():
        model.hr_disparity(Pair.unfold(hr), coords)
    left_hyp, right_hyp = seen['sample_at'].chunk(2)
    assert not torch.equal(left_hyp, right_hyp) if fix else torch.equal(left_hyp, right_hyp)


@pytest.mark.parametrize('shape_left, shape_right, scale, message', [
    ((1, 3, 29, 90), (1, 3, 29, 90), 4, 'at least 30x30'),
    ((1, 3, 30, 20), (1, 3, 30, 20), 4, 'at least 30x30'),
    ((1, 3, 31, 90), (1, 3, 31, 90), 2, 'must be even'),
    ((1, 3, 30, 91), (1, 3, 30, 91), 2, 'must be even'),
    ((1, 3, 30, 90), (1, 3, 30, 92), 4, 'same shape'),
    ((1, 4, 30, 90), (1, 4, 30, 90), 4, r'shape \(B, 3, H, W\)'),
    ((1, 1, 30, 90), (1, 1, 30, 90), 4, r'shape \(B, 3, H, W\)'),
    ((3, 30, 90), (3, 30, 90), 4, r'shape \(B, 3, H, W\)'),
])
def test_bad_input_shapes_raise_before_computing(shape_left, shape_right, scale, message, monkeypatch):
    model = build_model('ssrdefnet', scale)

    def fail(*args):
        raise AssertionError('the network started computing on bad input')

    monkeypatch.setattr(model.init_feature, 'forward', fail)
    with pytest.raises(ValueError, match=message):
        model(torch.rand(shape_left), torch.rand(shape_right))


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_input_raises(value):
    model = build_model('ssrdefnet', 4)
    left = torch.rand(1, 3, 30, 90)
    right = left.clone()
    right[0, 1, 5, 7] = value
    with pytest.raises(ValueError, match='right image contains NaN or Inf'):
        model(left, right)


def test_integer_input_raises():
    model = build_model('ssrdefnet', 4)
    img = torch.randint(0, 255, (1, 3, 30, 90), dtype=torch.uint8)
    with pytest.raises(ValueError, match='floating-point'):
        model(img, img)


def test_training_step_tensors_stay_within_reusable_heap_blocks():
    """At the paper's x4 training patches (batch 2, 30x90 LR) no operation of a training step, forward, loss or
    backward, makes a tensor larger than kernels.AUTOGRAD_TENSOR_BYTES (glibc's largest mmap threshold): larger ones
    are fresh, zero-filled pages at every step (a 4.5 GB of them cost a third of the step before; see `per_view`)."""
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    from models.kernels import AUTOGRAD_TENSOR_BYTES
    from models.ssrdefnet.losses import SSRDEFNetLoss

    class LargestTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest, self.op, self.ops = 0, None, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and not t._is_view() and t.untyped_storage().nbytes() > self.largest:
                    self.largest, self.op = t.untyped_storage().nbytes(), func
            return out

    torch.manual_seed(0)
    model = build_model('ssrdefnet', 4).train()
    left, right = random_pair(2, 30, 90, seed=1)
    hr = torch.rand(2, 3, 120, 360)
    with LargestTensor() as mode:
        loss = SSRDEFNetLoss(4)(model(left, right), left, right, hr, hr)['total']
        forward_ops = mode.ops
        loss.backward()
    assert mode.ops > 2 * forward_ops > 0     # the backward ops were seen too
    assert model.encoder2.LFF.weight.grad is not None
    assert mode.largest <= AUTOGRAD_TENSOR_BYTES, f'{mode.op} made a {mode.largest / 2 ** 20:.1f} MiB tensor'


def test_activation_recomputation_gives_the_same_loss_gradients_and_running_statistics():
    """`grad_checkpoint=True` recomputes the stages in the backward pass (their HR arguments are Pairs of views):
    float64, x2, the same loss, gradients and BatchNorm running statistics as without recomputation."""
    from models.ssrdefnet.losses import SSRDEFNetLoss
    torch.manual_seed(3)
    left, right = (t.double() for t in random_pair(1, 30, 60, seed=4))
    hr = torch.rand(1, 3, 60, 120, dtype=torch.float64)
    results = []
    for recompute in (False, True):
        model = build_model('ssrdefnet', 2, grad_checkpoint=recompute).double().train()
        if results:
            model.load_state_dict(initial)
        else:
            initial = {k: v.clone() for k, v in model.state_dict().items()}
        loss = SSRDEFNetLoss(2)(model(left, right), left, right, hr, hr)['total']
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]),
                        {k: v.clone() for k, v in model.state_dict().items()}))
    (loss, grad, state), (loss_ckpt, grad_ckpt, state_ckpt) = results
    assert loss_ckpt == pytest.approx(loss, rel=1e-12)
    assert ((grad_ckpt - grad).norm() / grad.norm()).item() < 1e-10
    for name, value in state.items():
        assert (state_ckpt[name].double() - value.double()).abs().max() < 1e-12, name
