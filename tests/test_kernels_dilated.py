"""The dilated depthwise convolution's CPU evaluation form (`kernels.dilated_depthwise_conv`: an undilated
convolution of the phases of a channels-last map) and CVHSSR, whose large-kernel attention uses it: each equals its
plain form (models/kernels.py `plain_forms`) in float64 and float32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_pair
from models import kernels
from models.cvhssr import CVHSSR, CVHSSRConfig


@pytest.mark.parametrize('size', [(12, 21), (10, 14), (3, 5)])   # multiples of the dilation or not, tiny
def test_dilated_depthwise_conv_on_phases_equals_conv2d(size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *size, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 1, 7, 7, generator=g), torch.randn(6, generator=g)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=9, dilation=3, groups=6)
    with torch.no_grad():
        out = kernels.dilated_depthwise_conv(x, weight, bias, 3)
        double = kernels.dilated_depthwise_conv(x.double(), weight.double(), bias.double(), 3)   # plain form
    assert out.shape == reference.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - reference).abs().max() < 1e-4
    assert (double - reference).abs().max() < 1e-10


def test_dilated_depthwise_conv_leaves_autograd_to_conv2d():
    x = torch.randn(1, 4, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(4, 1, 7, 7)
    out = kernels.dilated_depthwise_conv(x, weight, None, 3)
    out.square().sum().backward()
    assert torch.equal(out, F.conv2d(x, weight, padding=9, dilation=3, groups=4)) and x.grad is not None


@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cvhssr_equals_its_plain_form(dtype, tolerance):
    """Channels-last body and the phased dilated convolution against NCHW and F.conv2d; a TLC window below the test
    size, so that the channel attention pools local windows as at KITTI size. Every parameter perturbed, so that the
    zero-initialised residual scales open every branch."""
    torch.manual_seed(0)
    model = CVHSSR(CVHSSRConfig(width=16, num_blocks=2, train_size=(8, 24))).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model = model.to(dtype)
    left, right = (x.to(dtype) for x in random_pair(1, 20, 36, seed=1))
    with torch.no_grad():
        fast = model(left, right)
        with kernels.plain_forms():
            plain = model(left, right)
    for a, b in ((fast.sr_left, plain.sr_left), (fast.sr_right, plain.sr_right)):
        assert a.is_contiguous()
        assert (a - b).abs().max() <= tolerance * max(1.0, b.abs().max().item())
