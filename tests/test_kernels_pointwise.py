"""The 1x1 convolutions' oneDNN form (`kernels.pointwise_conv` in CPU evaluation of channels-last maps) and the
networks that use it: each equals its plain form (models/kernels.py `plain_forms`) in float64 and float32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_pair
from models import build_model, kernels
from models.cvhssr import CVHSSR, CVHSSRConfig
from models.ehfssr import EHFSSR, EHFSSRConfig
from models.nafssr import NAFSSR, NAFSSRConfig


def channels_last(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)


def test_pointwise_conv_in_evaluation_equals_conv2d_and_stays_channels_last():
    x = channels_last(2, 48, 7, 11)
    weight, bias, wide = torch.randn(96, 48, 1, 1), torch.randn(96), torch.randn(96, 60, 1, 1)
    reference = F.conv2d(x.double(), weight.double(), bias.double())
    with torch.no_grad():
        out = kernels.pointwise_conv(x, weight, bias)
        sliced = kernels.pointwise_conv(x, wide[:, 12:], None)   # a strided weight, as the dense block's LFF slices
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - reference).abs().max() < 1e-4
    assert (sliced.double() - F.conv2d(x.double(), wide[:, 12:].double())).abs().max() < 1e-4
    with torch.no_grad(), kernels.plain_forms():   # the plain form is F.conv2d itself
        assert torch.equal(kernels.pointwise_conv(x, weight, bias), F.conv2d(x, weight, bias))


def test_pointwise_conv_leaves_autograd_autocast_and_other_dtypes_to_conv2d():
    x, weight = channels_last(1, 8, 5, 6), torch.randn(4, 8, 1, 1, requires_grad=True)
    out = kernels.pointwise_conv(x, weight)    # autograd on: not the inference kernel
    out.sum().backward()
    assert torch.allclose(weight.grad.view(4, 8), x.sum((2, 3)).expand(4, -1), atol=1e-5)
    with torch.no_grad():
        double = kernels.pointwise_conv(x.double(), weight.double())
        assert torch.equal(double, F.conv2d(x.double(), weight.double()))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert kernels.pointwise_conv(x, weight).dtype == torch.bfloat16


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter perturbed, so that the zero-initialised residual scales open every branch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


# Small configurations of the networks whose blocks use PointwiseConv2d; a TLC window below the test size, so that
# the channel attention pools local windows (full-size channels-last maps) as at KITTI size.
NETWORKS = {
    'nafssr': lambda: NAFSSR(NAFSSRConfig(width=16, num_blocks=2, train_size=(8, 24))),
    'cvhssr': lambda: CVHSSR(CVHSSRConfig(width=16, num_blocks=2, train_size=(8, 24))),
    'ehfssr-s': lambda: EHFSSR(EHFSSRConfig(dim=16, groups=1, blocks=6)),
    'ipassr': lambda: build_model('ipassr', 2),
}


@pytest.mark.parametrize('name', sorted(NETWORKS))
@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_networks_equal_their_plain_forms(name, dtype, tolerance):
    torch.manual_seed(0)
    model = randomised(NETWORKS[name]()).to(dtype)
    left, right = (x.to(dtype) for x in random_pair(1, 20, 36, seed=1))
    with torch.no_grad():
        fast = model(left, right)
        with kernels.plain_forms():
            plain = model(left, right)
    for a, b in ((fast.sr_left, plain.sr_left), (fast.sr_right, plain.sr_right)):
        assert (a - b).abs().max() <= tolerance * max(1.0, b.abs().max().item())
