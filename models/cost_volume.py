"""High-resolution disparity: hypotheses around the upsampled PAM estimate, a local 2D cost volume, aggregation and
soft-argmax regression (paper Sec. 3.3; spec §2.10-2.13, §4.2).

Inside the network a "disparity" is stored as a correspondence *coordinate*: for a left pixel at column x the
left map holds the matching column in the right image (x - d); for a right pixel it holds the matching column in
the left image (x + d). `coordinates_to_disparity` turns them into positive disparities.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import ConvBN, ViewwiseBatchNorm2d, conv_bn

# Number of disparity hypotheses of the HR cost volume (official `ndisp=24`); they span +-NUM_HYPOTHESES/2 HR pixels
# around the upsampled PAM estimate, one every 24/23 px.
NUM_HYPOTHESES = 24
# Bytes of sampled features per chunk of rows in the cost volume: small enough to stay in the CPU caches (2-3x faster
# than one call over the whole image, and bounded memory), large enough to keep GPU kernels busy.
COST_CHUNK_BYTES = {'cpu': 4 << 20, 'cuda': 512 << 20}
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
    official code on PyTorch >= 1.3 (spec Q3): column u is read at u * W/(W-1) - 0.5 and row y at y * H/(H-1) - 0.5,
    so even an identity warp blends neighbours and halves the first and last rows and columns.
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


def coordinates_to_disparity(coords: Tensor, view: str, max_disparity: float = MAX_DISPARITY) -> Tensor:
    """Correspondence coordinates (B, 1, H, W) of the `view` ('left' or 'right') -> disparities in [0, max_disparity].

    Left: d = x - coord; right: d = coord - x, x being the pixel's own column, clamped as the official test mode
    does (values below 0 become 0, above 192 become 192).
    """
    columns = torch.arange(coords.shape[-1], device=coords.device, dtype=coords.dtype)
    if view == 'left':
        disparity = columns - coords
    elif view == 'right':
        disparity = coords - columns
    else:
        raise ValueError(f"view must be 'left' or 'right', got {view!r}")
    return disparity.clamp(0.0, max_disparity)


def _row_bands(height: int, rows: int):
    """Bands [top, bottom) of output rows, and the key rows [first, last) that their samples read.

    Output row y reads rows floor(y*H/(H-1) - 0.5) and the one below (see `sampling_grid`), so a band only needs the
    key rows from the first band row's to the last band row's, plus one.
    """
    stretch = height / (height - 1.0)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        first = max(0, int(math.floor(top * stretch - 0.5)))
        last = min(height, int(math.floor((bottom - 1) * stretch - 0.5)) + 2)
        yield top, bottom, first, last


def _band_grid(x_all: Tensor, top: int, bottom: int, first: int, last: int, height: int) -> Tensor:
    """grid_sample grid (N, D*rows, W, 2) that samples key rows [first, last) as the full-image grid samples the
    whole key map: x_all (N, D, H, W) are the normalised columns of `sampling_grid`; the row position
    y*H/(H-1) - 0.5 is renormalised to the crop."""
    n, d, _, w = x_all.shape
    x = x_all[:, :, top:bottom]
    rows = torch.arange(top, bottom, device=x_all.device, dtype=x_all.dtype)
    pixel = rows * (height / (height - 1.0)) - 0.5 - first                  # row position inside the crop
    y = ((2 * pixel + 1) / (last - first) - 1).view(1, 1, -1, 1).expand_as(x)
    return torch.stack([x, y], dim=4).reshape(n, d * (bottom - top), w, 2)


class _BandCorrelation(torch.autograd.Function):
    """cost[n, d, y, x] = mean_c query[n, c, y, x] * key[n, c, y, coords[n, d, y, x]] (bilinear, zero outside),
    computed a band of rows at a time from a crop of the key map. The sampled features (C*D values per pixel) are
    never stored: the backward pass samples each band again. Saves only query, key and coords."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, coords: Tensor, rows: int) -> Tensor:
        n, c, h, w = key.shape
        d = coords.shape[1]
        # the cost comes out in the query's memory format, so that the aggregation convolutions that follow stay
        # channels-last in evaluation (2x faster on CPU); the bands are computed in NCHW
        cost = torch.empty((n, d, h, w), dtype=query.dtype, device=query.device,
                           memory_format=memory_format(query))
        x_all = coords / ((w - 1.0) / 2.0) - 1.0
        for top, bottom, first, last in _row_bands(h, rows):
            crop = key[:, :, first:last].contiguous()  # a contiguous crop samples ~1.6x faster on CPU
            sampled = F.grid_sample(crop, _band_grid(x_all, top, bottom, first, last, h), mode='bilinear',
                                    padding_mode='zeros', align_corners=False)
            band = query[:, :, top:bottom].contiguous()[:, :, None]
            cost[:, :, top:bottom] = (band * sampled.view(n, c, d, -1, w)).mean(1)
        ctx.save_for_backward(query, key, coords)
        ctx.rows = rows
        return cost

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        query, key, coords = ctx.saved_tensors
        n, c, h, w = key.shape
        d = coords.shape[1]
        grad_query = torch.zeros_like(query) if ctx.needs_input_grad[0] else None
        grad_key = torch.zeros_like(key) if ctx.needs_input_grad[1] else None
        grad_coords = torch.zeros_like(coords) if ctx.needs_input_grad[2] else None
        x_all = coords / ((w - 1.0) / 2.0) - 1.0
        for top, bottom, first, last in _row_bands(h, ctx.rows):
            crop = key[:, :, first:last].contiguous()
            grid = _band_grid(x_all, top, bottom, first, last, h)
            g = grad_cost[:, None, :, top:bottom] / c                                   # (N, 1, D, rows, W)
            if grad_query is not None:
                sampled = F.grid_sample(crop, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
                grad_query[:, :, top:bottom] = (g * sampled.view(n, c, d, -1, w)).sum(2)
            if grad_key is None and grad_coords is None:
                continue
            grad_sampled = (g * query[:, :, None, top:bottom]).reshape(n, c, -1, w)
            grad_crop, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                grad_sampled, crop, grid, 0, 0, False, [grad_key is not None, grad_coords is not None])
            if grad_key is not None:
                grad_key[:, :, first:last] += grad_crop
            if grad_coords is not None:  # x = coords / ((W - 1) / 2) - 1
                grad_coords[:, :, top:bottom] = grad_grid[..., 0].view(n, d, -1, w) / ((w - 1.0) / 2.0)
        return grad_query, grad_key, grad_coords, None


def correlation(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    """Mean over channels of query (N, C, H, W) times key sampled along each row at columns coords (N, D, H, W):
    (N, D, H, W). Inputs are promoted to a common dtype (at least that of coords), as autocast does."""
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), coords.dtype)
    query, key, coords = (t.to(dtype) for t in (query, key, coords))
    n, c, _, w = key.shape
    budget = COST_CHUNK_BYTES.get(key.device.type, COST_CHUNK_BYTES['cuda'])
    rows = max(1, budget // (n * c * coords.shape[1] * w * key.element_size()))
    return _BandCorrelation.apply(query, key, coords, rows)


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
        return correlation(self.query(features), swap_views(self.key(features)), sample_coords)


class Hourglass(nn.Module):
    """2D encoder-decoder over the hypothesis channels (official `hourglass(24)`, `dres2`).

    Needs even H and W whose halves are even too; at x2 that means even LR sizes (spec §2.12).
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


def memory_format(x: Tensor) -> torch.memory_format:
    """torch.channels_last if x (N, C, H, W) is stored channels-last (and not also NCHW-contiguous), else NCHW."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def swap_views(x: Tensor) -> Tensor:
    """[left; right] stacked on dim 0 -> [right; left]."""
    first, second = x.chunk(2)
    return torch.cat([second, first])
