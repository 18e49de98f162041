"""Matching features: pyramid-pooling feature extractors that feed the LR parallax attention and the HR cost volume.

Both are the PSMNet-style spatial pyramid pooling of the official code (`Stereo_feature`, `hStereo_feature`):
average-pool the input at several window sizes, project each pooled map with a 1x1 conv-BN-PReLU, resize it back
bilinearly, concatenate with the input and fuse with conv-BN-PReLU-conv.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models import kernels
from models.layers import resize_bilinear
from models.ssrdefnet import kernels as ssrdefnet_kernels
from models.ssrdefnet.blocks import conv_bn

# Pool windows of the LR matching features (official `Stereo_feature`). The largest window, 30, is why the network's
# smallest LR input is 30x30 (official model.py:358).
LR_POOLS = {'branch1': 30, 'branch2': 10, 'branch3': 5}
# Pool windows of the HR matching features (official `hStereo_feature`).
HR_POOLS = {'branch2': 16, 'branch3': 8}


class PyramidPoolingFeature(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W) matching features.

    `pools` maps the official branch names to their pooling windows, in the official registration order (largest
    window first). The branches are concatenated after the input in the opposite order (smallest window first), as
    the official code does. Average pooling floors: a remainder at the bottom/right is left out of the statistics.
    """

    def __init__(self, pools: dict[str, int], branch_channels: int, out_channels: int, in_channels: int = 64):
        super().__init__()
        self.branch_names = list(pools)
        for name, window in pools.items():
            self.add_module(name, nn.Sequential(
                nn.AvgPool2d(window, stride=window),
                conv_bn(in_channels, branch_channels, 1),
                nn.PReLU(),
            ))
        self.lastconv = nn.Sequential(
            conv_bn(in_channels + len(pools) * branch_channels, 64, 3, 1, 1),
            nn.PReLU(),
            nn.Conv2d(64, out_channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = [getattr(self, name)(x) for name in reversed(self.branch_names)]   # at the pooled resolutions
        if kernels.FAST:    # the fusion computed from the pooled resolutions, without resizing the branches
            return ssrdefnet_kernels.pyramid_fusion(self, x, branches)
        size = (x.shape[2], x.shape[3])
        return self.lastconv(torch.cat([x, *(resize_bilinear(p, size) for p in branches)], dim=1))


def lr_matching_feature() -> PyramidPoolingFeature:
    """Official `StereoFea`: 64 -> 64 channels at LR, pools 30/10/5 with 32-channel branches."""
    return PyramidPoolingFeature(LR_POOLS, branch_channels=32, out_channels=64)


def hr_matching_feature() -> PyramidPoolingFeature:
    """Official `StereoFeaHigh`: 64 -> 24 channels at HR, pools 16/8 with 24-channel branches."""
    return PyramidPoolingFeature(HR_POOLS, branch_channels=24, out_channels=24)
