"""The network on CUDA: same numbers as on the CPU (TF32 off), sane under autocast, and a training step whose
gradients do not depend on activation recomputation. Skipped on machines without a GPU (CI has none)."""
from __future__ import annotations

import pytest
import torch

from conftest import random_pair, randomise_batchnorm
from models import build_model
from models.ssrdefnet.losses import SSRDEFNetLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.fixture(autouse=True)
def exact_cuda_float32():
    """Full float32 matmuls/convolutions, so CUDA is compared with the CPU at float32 precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def model_pair(scale: int, **options):
    torch.manual_seed(0)
    cpu = build_model('ssrdefnet', scale, **options)
    randomise_batchnorm(cpu)
    gpu = build_model('ssrdefnet', scale, **options)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


@pytest.mark.parametrize('scale, size', [(4, (30, 90)), (4, (33, 71)), (2, (31, 45))])
def test_cuda_eval_equals_cpu(scale, size):
    cpu, gpu = model_pair(scale)
    left, right = random_pair(2, *size)
    with torch.inference_mode():
        a = cpu.eval()(left, right)
        b = gpu.eval()(left.cuda(), right.cuda())
    assert (a.sr_left - b.sr_left.cpu()).abs().max() < 1e-4
    assert (a.sr_right - b.sr_right.cpu()).abs().max() < 1e-4
    assert (a.disp_left - b.disp_left.cpu()).abs().max() < 1e-3
    assert (a.disp_right - b.disp_right.cpu()).abs().max() < 1e-3


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_stays_close_to_float32(dtype):
    _, gpu = model_pair(4)
    gpu.eval()
    left, right = (t.cuda() for t in random_pair(1, 30, 90))
    with torch.inference_mode():
        full = gpu(left, right)
        with torch.autocast('cuda', dtype=dtype):
            mixed = gpu(left, right)
    for name in ('sr_left', 'sr_right'):
        ref, got = getattr(full, name), getattr(mixed, name).float()
        assert torch.isfinite(got).all()
        psnr = 10 * torch.log10(1 / (ref - got).pow(2).mean())
        assert psnr > (35 if dtype == torch.bfloat16 else 45), (name, float(psnr))


def test_training_step_gradients_match_cpu_and_recomputation():
    """One forward + full loss + backward in training mode: CUDA (with and without activation recomputation) against
    the CPU. Training mode amplifies float32 rounding (BatchNorm on tiny batches, argmax in the attention), so the
    comparison is of the loss and of the gradient as a whole, in relative terms."""
    torch.manual_seed(0)
    reference = build_model('ssrdefnet', 4).double()
    hr_left, hr_right = random_pair(2, 120, 360, seed=3)
    lr_left = torch.nn.functional.avg_pool2d(hr_left, 4)
    lr_right = torch.nn.functional.avg_pool2d(hr_right, 4)
    batch = [t.double() for t in (lr_left, lr_right, hr_left, hr_right)]

    def step(model, tensors):
        model.train().zero_grad()
        loss = SSRDEFNetLoss(4)(model(tensors[0], tensors[1]), *tensors)['total']
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    ref_loss, ref_grad = step(reference, batch)
    for recompute in (False, True):
        gpu = build_model('ssrdefnet', 4, grad_checkpoint=recompute).cuda().double()
        gpu.load_state_dict(reference.state_dict())
        loss, grad = step(gpu, [t.cuda() for t in batch])
        assert loss == pytest.approx(ref_loss, rel=1e-9)
        assert ((grad.cpu() - ref_grad).norm() / ref_grad.norm()).item() < 1e-8
