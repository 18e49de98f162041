"""CPU evaluation forms of models/kernels.py and the networks that use them, each against its plain form
(`plain_forms`) in float64 and float32: the dilated depthwise convolution on the phases of a channels-last map
(`dilated_depthwise_conv`, CVHSSR's large-kernel attention) and the two directions of stereo cross-attention from one
exp of the scores (`two_way_attention`, NAFSSR's SCAM and CVHSSR's CVIM)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_pair
from models import kernels
from models.cvhssr import CVHSSR, CVHSSRConfig
from models.nafssr import NAFSSR, NAFSSRConfig


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


@pytest.mark.parametrize('network', [CVHSSR, NAFSSR])
@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_networks_equal_their_plain_forms(network, dtype, tolerance):
    """CVHSSR: channels-last body, phased dilated convolution; both: the shared-exp cross-attention. A TLC window
    below the test size, so that the channel attention pools local windows as at KITTI size. Every parameter
    perturbed, so that the zero-initialised residual scales open every branch."""
    torch.manual_seed(0)
    config = (CVHSSRConfig if network is CVHSSR else NAFSSRConfig)(width=16, num_blocks=2, train_size=(8, 24))
    model = network(config).eval()
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


@pytest.mark.parametrize('spread', [3.0, 200.0])   # shared exponentials; past SHARED_EXP_MIN_SUM: two softmaxes
def test_two_way_attention_equals_two_softmaxes(spread):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 4, 9, 11, generator=g, dtype=torch.float64) * spread      # W_left 9, W_right 11
    value_left = torch.randn(1, 4, 9, 5, generator=g, dtype=torch.float64)
    value_right = torch.randn(1, 4, 11, 5, generator=g, dtype=torch.float64)
    expected = (scores.softmax(-1) @ value_right, scores.softmax(-2).transpose(-1, -2) @ value_left)
    with torch.no_grad():
        for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
            out = kernels.two_way_attention(scores.to(dtype), value_left.to(dtype), value_right.to(dtype))
            for a, b in zip(out, expected):
                assert a.shape == b.shape and (a.double() - b).abs().max() < tolerance
