"""High-resolution disparity: hypotheses around the upsampled PAM estimate, a local 2D cost volume, aggregation and
soft-argmax regression (paper Sec. 3.3; official model.py:104-139, with `get_disp_range_samples` model.py:337-351,
`hourglass` model.py:391-433 and `GetCostVolume` model.py:518-559).

Inside the network a "disparity" is stored as a correspondence *coordinate*: for a left pixel at column x the
left map holds the matching column in the right image (x - d); for a right pixel it holds the matching column in
the left image (x + d). `coordinates_to_disparity` turns them into positive disparities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import kernels
from models.kernels import memory_format
from models.layers import ViewwiseBatchNorm2d
from models.parallax import coordinates_to_disparity  # noqa: F401 (re-exported: SSRDE-FNet's outputs)
from models.ssrdefnet.blocks import ConvBN, conv_bn
from models.ssrdefnet.kernels import correlation

# Number of disparity hypotheses of the HR cost volume (official `ndisp=24`); they span +-NUM_HYPOTHESES/2 HR pixels
# around the upsampled PAM estimate, one every 24/23 px.
NUM_HYPOTHESES = 24
# Largest disparity, in HR pixels, reported in evaluation mode (official test-mode clamp, whatever the scale) and
# the upper bound of the KITTI evaluation mask.
MAX_DISPARITY = 192.0


def disparity_hypotheses(center: Tensor, max_coord: float, num: int = NUM_HYPOTHESES) -> Tensor:
    """`num` evenly spaced column hypotheses in [center - num/2, center + num/2], clipped to [0, max_coord].

    center: (N, 1, H, W) coordinates (detach it first: the official network builds hypotheses without gradient).
    max_coord: upper clip, the official passes the HR width W (not W - 1). Returns (N, num, H, W).
    """
    low = (center - num / 2).clamp(min=0.0)
    high = (center + num / 2).clamp(max=max_coord)
    step = (high - low) / (num - 1)
    return low + torch.arange(num, device=center.device, dtype=center.dtype).view(1, -1, 1, 1) * step


def sampling_grid(coords: Tensor) -> Tensor:
    """grid_sample grid for sampling every row of a (N, C, H, W) map at columns `coords` (N, D, H, W).

    Coordinates are normalised the (size - 1)/2 way while grid_sample runs with align_corners=False, exactly as the
    official code on PyTorch >= 1.3 (model.py:490-495 and 541-548 pass no `align_corners`): column u is read at
    u * W/(W-1) - 0.5 and row y at y * H/(H-1) - 0.5, so even an identity warp blends neighbours and halves the
    first and last rows and columns.
    Returns (N, D*H, W, 2).
    """
    n, d, h, w = coords.shape
    x = coords / ((w - 1.0) / 2.0) - 1.0
    y = (torch.arange(h, device=coords.device, dtype=coords.dtype) / ((h - 1.0) / 2.0) - 1.0).view(1, 1, h, 1)
    return torch.stack([x, y.expand(n, d, h, w)], dim=4).view(n, d * h, w, 2)


def sample_columns(source: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample `source` (N, C, H, W) along each row at columns `coords` (N, D, H, W), zero outside.

    All D hypotheses go through one grid_sample call. Returns (N, C, D, H, W). Both inputs are promoted to the wider
    dtype, as autocast does for grid_sample, so coordinates are never rounded to half precision.
    """
    n, c, h, w = source.shape
    d = coords.shape[1]
    dtype = torch.promote_types(source.dtype, coords.dtype)
    sampled = F.grid_sample(source.to(dtype), sampling_grid(coords.to(dtype)), mode='bilinear', padding_mode='zeros',
                            align_corners=False)                  # (N, C, D*H, W)
    return sampled.view(n, c, d, h, w)


def warp(source: Tensor, coords: Tensor) -> Tensor:
    """Warp `source` (N, C, H, W) to the other view with one coordinate map (N, 1, H, W) -> (N, C, H, W).

    The official `dispwarpfeature`. The result has the memory format of `source` (grid_sample writes NCHW; a
    channels-last network would otherwise mix layouts, and mixed-layout element-wise ops run ~2.5x slower).
    """
    return sample_columns(source, coords).squeeze(2).contiguous(memory_format=memory_format(source))


class CostVolume(nn.Module):
    """Local cost volume between the HR matching features of the two views (official `GetCostVolume`, `get_cv`).

    cost[n, k, y, x] = mean_c query(f)[n, c, y, x] * key(f_other)[n, c, y, hyp[n, k, y, x]].
    The hypotheses index the *channels* of the following 2D aggregation, not a third conv dimension.
    """

    def __init__(self, channels: int = 24):
        super().__init__()
        self.query = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.key = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)

    def forward(self, features: Tensor, sample_coords: Tensor) -> Tensor:
        """features: (2B, C, H, W) as [left; right]; sample_coords: (2B, D, H, W) columns to read in the other view.

        Returns the cost (2B, D, H, W).
        """
        query, key = self.query(features), swap_views(self.key(features))
        if kernels.FAST:    # one matrix product per band of rows instead of sampling the key at every hypothesis
            return correlation(query, key, sample_coords)
        return (query.unsqueeze(2) * sample_columns(key, sample_coords)).mean(1)


class Hourglass(nn.Module):
    """2D encoder-decoder over the hypothesis channels (official `hourglass(24)`, `dres2`).

    Needs even H and W whose halves are even too; at x2 that means even LR sizes (the residual
    add of official model.py:429 fails otherwise).
    The single `prelu` is shared by both of its uses, as in the official code.
    """

    def __init__(self, channels: int = NUM_HYPOTHESES):
        super().__init__()
        self.conv1 = nn.Sequential(conv_bn(channels, channels, 3, 2, 1), nn.PReLU())
        self.conv2 = conv_bn(channels, channels, 3, 1, 1)
        self.conv3 = nn.Sequential(conv_bn(channels, channels, 3, 2, 1), nn.PReLU())
        self.conv4 = nn.Sequential(conv_bn(channels, channels, 3, 1, 1), nn.PReLU())
        self.conv5 = ConvBN(
            nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1, bias=False),
            ViewwiseBatchNorm2d(channels))
        self.conv6 = ConvBN(
            nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1, bias=False),
            ViewwiseBatchNorm2d(channels))
        self.prelu = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        skip = self.prelu(self.conv2(self.conv1(x)))       # 1/2 resolution
        bottom = self.conv4(self.conv3(skip))               # 1/4 resolution
        return self.conv6(self.prelu(self.conv5(bottom) + skip))


def aggregation_block(final_activation: bool) -> nn.Sequential:
    """Two 3x3 conv-BN layers over the hypothesis channels (official `dres0` with, `dres1` without final PReLU)."""
    layers = [conv_bn(NUM_HYPOTHESES, NUM_HYPOTHESES, 3, 1, 1), nn.PReLU(),
              conv_bn(NUM_HYPOTHESES, NUM_HYPOTHESES, 3, 1, 1)]
    if final_activation:
        layers.append(nn.PReLU())
    return nn.Sequential(*layers)


def soft_argmax(cost: Tensor, hypotheses: Tensor) -> Tensor:
    """Expected coordinate under softmax(cost) over the hypotheses: (N, D, H, W) x2 -> (N, 1, H, W).

    Higher cost (correlation) means more likely; no negation.
    """
    return (hypotheses * torch.softmax(cost, dim=1)).sum(1, keepdim=True)


def swap_views(x: Tensor) -> Tensor:
    """[left; right] stacked on dim 0 -> [right; left]."""
    first, second = x.chunk(2)
    return torch.cat([second, first])
