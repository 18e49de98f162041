"""SSRDE-FNet's own blocks: conv-BN pairs (folded in evaluation) and the `transition` stage.

The blocks SSRDE-FNet shares with other networks (residual dense blocks and groups, channel attention, grouped
residual blocks, the per-view BatchNorm of folded views) are in models/layers.py; the fast forms of everything in
models/kernels.py. Attribute names are those of the official implementation (`MIVRC/SSRDEFNet-PyTorch`), because
they are the state_dict keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import kernels
from models.layers import GroupResBlock, ViewwiseBatchNorm2d


class ConvBN(nn.Sequential):
    """Conv (or transposed conv, no bias) followed by BatchNorm; keys `.0.*`, `.1.*` as the official Sequentials.

    In evaluation without autograd the BatchNorm is folded into the convolution: one convolution with weights
    w * g / sqrt(var + eps) and bias b - mean * g / sqrt(var + eps), so the normalisation costs no pass over the
    (often high-resolution) output. Same function; the rounding differs by ~1e-7 relative.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.folds():
            return super().forward(x)
        conv = self[0]
        weight, bias = self.folded()
        if isinstance(conv, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                      conv.dilation)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def folds(self) -> bool:
        """Whether the BatchNorm is folded into the convolution now: eval mode, no autograd, running statistics."""
        return kernels.FAST and not (self.training or torch.is_grad_enabled() or not self[1].track_running_stats)

    def folded(self) -> tuple[Tensor, Tensor]:
        """The weight and bias of the convolution with the BatchNorm's running statistics folded in (eval mode)."""
        conv, bn = self[0], self[1]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if isinstance(conv, nn.ConvTranspose2d):    # weight (in, out, kh, kw)
            return conv.weight * scale.view(1, -1, 1, 1), bias
        return conv.weight * scale.view(-1, 1, 1, 1), bias


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> ConvBN:
    """Conv (no bias) + BatchNorm, the official `convbn` (always used with dilation 1). Keys `.0.*`, `.1.*`."""
    return ConvBN(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        ViewwiseBatchNorm2d(out_channels),
    )


def transition(channels: int = 64) -> nn.Sequential:
    """BatchNorm + ResB applied before the matching-feature extractors (official `transition`, `transition2`)."""
    return nn.Sequential(ViewwiseBatchNorm2d(channels), GroupResBlock(channels))
