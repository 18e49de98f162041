"""Building blocks shared by several networks of the zoo, in their plain (paper) form.

Residual dense blocks and groups (RDN), squeeze-and-excitation channel attention and grouped residual blocks are
used by SSRDE-FNet (with PReLU) and iPASSR (with LeakyReLU 0.1); the activation is an argument. Both networks fold
their two views into one batch and keep the official per-view BatchNorm statistics (`ViewwiseBatchNorm2d`).
Attribute names
are those of the official implementations (`MIVRC/SSRDEFNet-PyTorch`, `YingqianWang/iPASSR`), because they become
the state_dict keys that the authors' checkpoints must match. Fast forms of these blocks live behind one seam in
`models/kernels.py`; the `forward` methods here say when they are used.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import kernels

Activation = Callable[[], nn.Module]


def leaky_relu() -> nn.Module:
    """LeakyReLU(0.1), iPASSR's activation everywhere (out of place: the fast dense block feeds it views)."""
    return nn.LeakyReLU(0.1)


class ConvBlock(nn.Module):
    """Conv + PReLU (official SSRDE-FNet `common.ConvBlock` with activation='prelu', norm=None)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class DeconvBlock(nn.Module):
    """Transposed conv + PReLU (official SSRDE-FNet `common.DeconvBlock`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.deconv(x))


class DenseLayer(nn.Module):
    """3x3 conv + activation whose output is concatenated to its input (official `one_conv`): G0 -> G0 + G."""

    def __init__(self, in_channels: int, growth: int, activation: Activation = nn.PReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=True)
        self.relu = activation()  # named `relu` in the official SSRDE-FNet code although it is a PReLU

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.relu(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    """RDB: `num_layers` dense layers, 1x1 local feature fusion (`LFF`) and a local residual. (B, G0, H, W) -> same.

    Plain form: LFF(dense layers(x)) + x. With the fast kernels on, `kernels.dense_block` computes the same sums
    without re-reading the growing concatenation (banded in evaluation, chunked in training).
    """

    def __init__(self, channels: int = 64, num_layers: int = 6, growth: int = 24, activation: Activation = nn.PReLU):
        super().__init__()
        self.conv = nn.Sequential(*[DenseLayer(channels + i * growth, growth, activation) for i in range(num_layers)])
        self.LFF = nn.Conv2d(channels + num_layers * growth, channels, 1, 1, 0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if kernels.FAST:
            return kernels.dense_block(self, x)
        return self.LFF(self.conv(x)) + x


class ResidualDenseGroup(nn.Module):
    """RDG: a chain of RDBs whose outputs are concatenated and fused by a 1x1 conv.

    `forward` returns the fused features; `forward_with_blocks` also returns the concatenation of the RDB outputs
    (iPASSR's RDG returns both and feeds the concatenation to its parallax attention; SSRDE-FNet's returns one).
    """

    def __init__(self, channels: int = 64, num_layers: int = 4, growth: int = 24, num_blocks: int = 4,
                 activation: Activation = nn.PReLU):
        super().__init__()
        self.RDB = nn.Sequential(*[ResidualDenseBlock(channels, num_layers, growth, activation)
                                   for _ in range(num_blocks)])
        self.conv = nn.Conv2d(channels * num_blocks, channels, 1, 1, 0, bias=True)

    def forward_with_blocks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        outputs = []
        for block in self.RDB:
            x = block(x)
            outputs.append(x)
        blocks = torch.cat(outputs, dim=1)
        return self.conv(blocks), blocks

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_blocks(x)[0]


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (official `CALayer`): x * sigmoid(MLP(global mean of x)).

    The mean is over the whole image, so the output of a tile differs from that of the full image.
    """

    def __init__(self, channels: int = 64, reduction: int = 8, activation: Activation = nn.PReLU):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, 1, 0, bias=True),
            activation(),
            nn.Conv2d(channels // reduction, channels, 1, 1, 0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(self.avg_pool(x))


class GroupResBlock(nn.Module):
    """Residual block of two grouped (groups=4) 3x3 convs with an activation between them (official `ResB`)."""

    def __init__(self, channels: int = 64, groups: int = 4, activation: Activation = nn.PReLU):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
            activation(),
            nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if kernels.FAST and not torch.is_grad_enabled():
            return kernels.residual_block_inference(self.body, x)
        return self.body(x) + x


class ViewwiseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d for a batch that holds `num_views` views stacked on dim 0 ([left; right]).

    The official network runs the left and the right view through every shared module in separate calls, so in training
    mode each BatchNorm normalises a view with that view's own batch statistics and updates its running statistics
    twice, left first (official SSRDE-FNet model.py:71-333, e.g. lines 104-105). We fold both views into one batch for
    speed; this layer splits the batch again in training mode so statistics, running averages and `num_batches_tracked`
    stay exactly those of the official two-call behaviour. In eval mode it is a plain BatchNorm2d. State-dict keys are
    unchanged.
    """

    num_views: int = 2

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        if self.num_views == 1 or kernels.is_one_view():   # the batch holds one view (see `one_view`)
            return self._normalise(x)
        views = x.chunk(self.num_views, dim=0)
        if len(views) != self.num_views or views[0].shape[0] != views[-1].shape[0]:
            raise ValueError(f"ViewwiseBatchNorm2d expects a batch of {self.num_views} stacked views of equal "
                             f"size, got batch {x.shape[0]}")
        return torch.cat([self._normalise(v) for v in views], dim=0)

    def _normalise(self, view: Tensor) -> Tensor:
        if kernels.is_recomputing():  # momentum 0: running statistics stay as they are (same saved tensors as below)
            return F.batch_norm(view, self.running_mean, self.running_var, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(view)



def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with align_corners=False, as the official `F.upsample(..., mode='bilinear')`."""
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)
