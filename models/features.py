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
        branches = [getattr(self, name)(x) for name in reversed(self.branch_names)]   # at the pooled resolutions
        if self.lastconv[0].folds():
            return self.fuse_inference(x, branches)
        # conv(cat(x, resized branches)) = conv_x(x) + sum_b conv_b(resize(p_b)), each branch's term computed at its
        # pooled resolution (`add_conv_of_resized`): no 112-channel concatenation at HR (39 MB for the views of two
        # training patches, over the heap blocks glibc reuses, blocks.AUTOGRAD_TENSOR_BYTES), no resized branches,
        # and 48 of the HR fusion's 112 input channels cost a few matrix products instead of a 3x3 convolution
        fuse, act, project = self.lastconv
        conv, norm = fuse
        weight, c = conv.weight, x.shape[1]
        pre = add_conv_of_resized(F.conv2d(x, weight[:, :c], padding=1), branches, weight[:, c:])
        return project(act(norm(pre.contiguous(memory_format=memory_format(x)))))

    def fuse_inference(self, x: Tensor, branches: list[Tensor]) -> Tensor:
        """`lastconv(cat([x, *resized branches]))` when its BatchNorm folds (eval mode, no autograd), a band of rows
        at a time: the 3x3 convolution of x (BatchNorm folded in) runs on cache-sized bands, the branches' share is
        added from their pooled resolution (`resized_conv_factors`: no resized branches, no concatenation; at a
        KITTI-sized x4 pair they were 0.2 GB for one view), and the PReLU is applied in place."""
        fuse, act, project = self.lastconv
        weight, bias = fuse.folded()
        n, c, height, width = x.shape
        rows_matrix, wide = resized_conv_factors(branches, weight[:, c:], (height, width), channels_last=True)
        out = torch.empty((n, project.out_channels, height, width), dtype=x.dtype, device=x.device,
                          memory_format=memory_format(x))
        rows = band_rows(height, weight.shape[0] * width * x.element_size(), x.device)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            pre = F.conv2d(halo_band(x, top, bottom, 1), weight[:, :c], bias, padding=(0, 1))
            band = rows_matrix[top:bottom]
            support = band.any(0).nonzero().squeeze(1)   # the few branch rows a band reads (~10 % at KITTI size)
            pre.permute(0, 2, 3, 1).add_(torch.matmul(band[:, support], wide[:, support]).view(
                n, bottom - top, width, -1))
            out[:, :, top:bottom] = project(prelu_(pre, act))
        return out


def resize_matrix(size: int, source_size: int, like: Tensor) -> Tensor:
    """(size, source_size) matrix of the 1-D bilinear resize of `resize_bilinear` (align_corners=False), made by
    resizing the identity, in `like`'s dtype and device."""
    identity = torch.eye(source_size, dtype=like.dtype, device=like.device).view(1, source_size, source_size, 1)
    return resize_bilinear(identity, (size, 1))[0, :, :, 0].t()


def resize_taps(size: int, source_size: int, like: Tensor) -> Tensor:
    """(size, 3 * source_size): [A^(0) A^(1) A^(2)], A = `resize_matrix` and A^(k) its rows shifted by k - 1 (row
    t of A^(k) is row t + k - 1 of A, zero outside): what tap k of a zero-padded 3-tap convolution reads of a
    resized signal."""
    matrix = F.pad(resize_matrix(size, source_size, like), (0, 0, 1, 1))
    return torch.cat([matrix[k:k + size] for k in range(3)], dim=1)


def resized_conv_factors(branches: list[Tensor], weight: Tensor, size: tuple[int, int], channels_last: bool
                         ) -> tuple[Tensor, Tensor]:
    """conv2d(cat([resize_bilinear(p, (H, W)) for p in branches]), weight, padding=1) as a product of two factors
    computed at the branches' own resolutions: branches (N, C_b, h_b, w_b), weight (O, sum C_b, 3, 3).

    Resizing and the convolution's channel mixing are both linear and the resize is separable: with A_y (H, h) and
    A_x (W, w) the resize matrices and A^(k) as in `resize_taps`, the convolution of a resized branch p is
    sum_ij A_y^(i) (W_ij p) A_x^(j)T. Per branch, one product mixes the channels for all nine taps at (h, w) and one
    resizes the columns for all three j. Returns `rows` (H, K), [A_y^(i)] of every branch side by side, and the
    column-resized `wide` (N, O, K, W), or (N, K, W * O) when `channels_last`; the convolution is then rows @ wide
    (for any band of output rows, rows[top:bottom] @ wide), NCHW or NHWC.
    """
    n, o = branches[0].shape[0], weight.shape[0]
    height, width = size
    wide, first = [], 0
    for p in branches:
        _, c, h, w = p.shape
        taps = weight[:, first:first + c].permute(2, 3, 0, 1).reshape(9 * o, c)        # (i j O, C)
        mixed = torch.matmul(taps, p.reshape(n, c, h * w)).view(n, 3, 3, o, h, w)
        columns = resize_taps(width, w, p)                                               # (W, j w)
        if channels_last:
            mixed = mixed.permute(0, 1, 4, 2, 5, 3).reshape(n * 3 * h, 3 * w, o)         # (N i h, j w, O)
            wide.append(torch.matmul(columns, mixed).view(n, 3 * h, width * o))          # (N, i h, W O)
        else:
            mixed = mixed.permute(0, 3, 1, 4, 2, 5).reshape(n, o, 3 * h, 3 * w)          # (N, O, i h, j w)
            wide.append(torch.matmul(mixed, columns.t()))                                # (N, O, i h, W)
        first += c
    rows = torch.cat([resize_taps(height, p.shape[2], p) for p in branches], dim=1)
    return rows, torch.cat(wide, dim=1 if channels_last else 2)


def add_conv_of_resized(out: Tensor, branches: list[Tensor], weight: Tensor) -> Tensor:
    """out + conv2d(cat([resize_bilinear(p, (H, W)) for p in branches]), weight, padding=1) for out (N, O, H, W),
    computed from the branches' own resolutions (`resized_conv_factors`), the rows product added to `out` by
    `baddbmm`. At the HR matching features of a batch-2 x4 training crop, forward + backward took 207-275 ms
    against 366-410 ms for the convolution of the resized, concatenated branches. Returns NCHW."""
    n, o, height, width = out.shape
    rows, wide = resized_conv_factors(branches, weight, (height, width), channels_last=False)
    k = wide.shape[2]
    return torch.baddbmm(out.reshape(n * o, height, width), rows.expand(n * o, height, k),
                         wide.view(n * o, k, width)).view(n, o, height, width)


def lr_matching_feature() -> PyramidPoolingFeature:
    """Official `StereoFea`: 64 -> 64 channels at LR, pools 30/10/5 with 32-channel branches."""
    return PyramidPoolingFeature(LR_POOLS, branch_channels=32, out_channels=64)


def hr_matching_feature() -> PyramidPoolingFeature:
    """Official `StereoFeaHigh`: 64 -> 24 channels at HR, pools 16/8 with 24-channel branches."""
    return PyramidPoolingFeature(HR_POOLS, branch_channels=24, out_channels=24)
