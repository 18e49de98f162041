"""Matching features: pyramid-pooling feature extractors that feed the LR parallax attention and the HR cost volume.

Both are the PSMNet-style spatial pyramid pooling of the official code (`Stereo_feature`, `hStereo_feature`):
average-pool the input at several window sizes, project each pooled map with a 1x1 conv-BN-PReLU, resize it back
bilinearly, concatenate with the input and fuse with conv-BN-PReLU-conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import band_rows, conv_bn, halo_band, memory_format, prelu_, resize_bilinear

# Pool windows of the LR matching features (official `Stereo_feature`). The largest window, 30, is why the network's
# smallest LR input is 30x30 (spec §5).
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
        size = (x.shape[2], x.shape[3])
        pooled = [resize_bilinear(getattr(self, name)(x), size) for name in reversed(self.branch_names)]
        if self.lastconv[0].folds():
            return self.fuse_inference(x, pooled)
        # conv(cat(x, pooled)) = conv_x(x) + conv_p(cat(pooled)): the 112-channel concatenation at HR (39 MB for
        # the views of two training patches) would outgrow the heap blocks glibc reuses (blocks.AUTOGRAD_TENSOR_BYTES)
        fuse, act, project = self.lastconv
        conv, norm = fuse
        weight, c = conv.weight, x.shape[1]
        pre = F.conv2d(x, weight[:, :c], padding=1) + F.conv2d(torch.cat(pooled, dim=1), weight[:, c:], padding=1)
        return project(act(norm(pre)))

    def fuse_inference(self, x: Tensor, pooled: list[Tensor]) -> Tensor:
        """`lastconv(cat([x, *pooled]))` when its BatchNorm folds (eval mode, no autograd), a band of rows at a time:
        the concatenation (112 channels at HR, 0.2 GB for one view of a KITTI-sized x4 pair) only ever exists for one
        band, the 3x3 convolution (BatchNorm folded in) runs on cache-sized bands, and its PReLU is applied in place."""
        fuse, act, project = self.lastconv
        weight, bias = fuse.folded()
        n, _, height, width = x.shape
        out = torch.empty((n, project.out_channels, height, width), dtype=x.dtype, device=x.device,
                          memory_format=memory_format(x))
        rows = band_rows(height, weight.shape[0] * width * x.element_size(), x.device)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            band = torch.cat([halo_band(t, top, bottom, 1) for t in (x, *pooled)], dim=1)
            out[:, :, top:bottom] = project(prelu_(F.conv2d(band, weight, bias, padding=(0, 1)), act))
        return out


def lr_matching_feature() -> PyramidPoolingFeature:
    """Official `StereoFea`: 64 -> 64 channels at LR, pools 30/10/5 with 32-channel branches."""
    return PyramidPoolingFeature(LR_POOLS, branch_channels=32, out_channels=64)


def hr_matching_feature() -> PyramidPoolingFeature:
    """Official `StereoFeaHigh`: 64 -> 24 channels at HR, pools 16/8 with 24-channel branches."""
    return PyramidPoolingFeature(HR_POOLS, branch_channels=24, out_channels=24)
