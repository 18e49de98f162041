"""Generic building blocks of SSRDE-FNet: residual dense blocks, channel attention and small conv helpers.

Attribute names inside every block are those of the official implementation (`MIVRC/SSRDEFNet-PyTorch`,
`model.py` / `common.py`), because they become the keys of the state_dict and the authors' checkpoint must load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ViewwiseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d for a batch that holds `num_views` views stacked on dim 0 ([left; right]).

    The official network runs the left and the right view through every shared module in separate calls, so in
    training mode each BatchNorm normalises a view with that view's own batch statistics and updates its running
    statistics twice, left first (spec §7.2). We fold both views into one batch for speed; this layer splits the
    batch again in training mode so statistics, running averages and `num_batches_tracked` stay exactly those of
    the official two-call behaviour. In eval mode it is a plain BatchNorm2d. State-dict keys are unchanged.
    """

    num_views: int = 2

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.num_views == 1:
            return super().forward(x)
        views = x.chunk(self.num_views, dim=0)
        if len(views) != self.num_views or views[0].shape[0] != views[-1].shape[0]:
            raise ValueError(f"ViewwiseBatchNorm2d expects a batch of {self.num_views} stacked views of equal "
                             f"size, got batch {x.shape[0]}")
        return torch.cat([super(ViewwiseBatchNorm2d, self).forward(v) for v in views], dim=0)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, the official `convbn` (always used with dilation 1). Keys `.0.*`, `.1.*`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        ViewwiseBatchNorm2d(out_channels),
    )


class ConvBlock(nn.Module):
    """Conv + PReLU (official `common.ConvBlock` with activation='prelu', norm=None)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class DeconvBlock(nn.Module):
    """Transposed conv + PReLU (official `common.DeconvBlock`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.deconv(x))


class DenseLayer(nn.Module):
    """3x3 conv + PReLU whose output is concatenated to its input (official `one_conv`): G0 -> G0 + G channels."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=True)
        self.relu = nn.PReLU()  # named `relu` in the official code although it is a PReLU

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.relu(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    """RDB: `num_layers` dense layers, 1x1 local feature fusion (`LFF`) and a local residual. (B, G0, H, W) -> same."""

    def __init__(self, channels: int = 64, num_layers: int = 6, growth: int = 24):
        super().__init__()
        self.conv = nn.Sequential(*[DenseLayer(channels + i * growth, growth) for i in range(num_layers)])
        self.LFF = nn.Conv2d(channels + num_layers * growth, channels, 1, 1, 0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.LFF(self.conv(x)) + x


class ResidualDenseGroup(nn.Module):
    """RDG: a chain of RDBs whose outputs are concatenated and fused by a 1x1 conv.

    Unlike iPASSR's RDG there is no global residual and a single tensor is returned (spec §2.4).
    """

    def __init__(self, channels: int = 64, num_layers: int = 4, growth: int = 24, num_blocks: int = 4):
        super().__init__()
        self.RDB = nn.Sequential(*[ResidualDenseBlock(channels, num_layers, growth) for _ in range(num_blocks)])
        self.conv = nn.Conv2d(channels * num_blocks, channels, 1, 1, 0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        outputs = []
        for block in self.RDB:
            x = block(x)
            outputs.append(x)
        return self.conv(torch.cat(outputs, dim=1))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (official `CALayer`): x * sigmoid(MLP(global mean of x)).

    The mean is over the whole image, so the output of a tile differs from that of the full image.
    """

    def __init__(self, channels: int = 64, reduction: int = 8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, 1, 0, bias=True),
            nn.PReLU(),
            nn.Conv2d(channels // reduction, channels, 1, 1, 0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(self.avg_pool(x))


class GroupResBlock(nn.Module):
    """Residual block of two grouped (groups=4) 3x3 convs with a PReLU between them (official `ResB`)."""

    def __init__(self, channels: int = 64, groups: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def transition(channels: int = 64) -> nn.Sequential:
    """BatchNorm + ResB applied before the matching-feature extractors (official `transition`, `transition2`)."""
    return nn.Sequential(ViewwiseBatchNorm2d(channels), GroupResBlock(channels))


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with align_corners=False, as the official `F.upsample(..., mode='bilinear')`."""
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)
