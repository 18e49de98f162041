"""High-resolution disparity: hypotheses around the upsampled PAM estimate, a local 2D cost volume, aggregation and
soft-argmax regression (paper Sec. 3.3; spec §2.10-2.13, §4.2).

Inside the network a "disparity" is stored as a correspondence *coordinate*: for a left pixel at column x the
left map holds the matching column in the right image (x - d); for a right pixel it holds the matching column in
the left image (x + d). `coordinates_to_disparity` turns them into positive disparities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import ConvBN, ViewwiseBatchNorm2d, conv_bn, memory_format

# Number of disparity hypotheses of the HR cost volume (official `ndisp=24`); they span +-NUM_HYPOTHESES/2 HR pixels
# around the upsampled PAM estimate, one every 24/23 px.
NUM_HYPOTHESES = 24
# Bytes of the all-column correlations of a band of rows in the cost volume (see `_BandCorrelation`): small enough to
# stay in the CPU caches and bound memory, large enough to keep GPU kernels busy.
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


def _key_rows(height: int, channels: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For every output row, the first of the two key rows it reads and their weights (the row quirk of
    `sampling_grid`), the weights divided by `channels` (the mean of the correlation).

    Row y reads rows r and r + 1, r = floor(p), with weights 1 - (p - r) and p - r, p = y*H/(H-1) - 0.5. r is
    returned +1, an index into the key padded with a zero row above and below (the first and last output rows read
    half a zero row, as grid_sample's zero padding does). Computed in float64, returned in `like`'s dtype/device.
    """
    y = torch.arange(height, dtype=torch.float64)
    p = ((y / ((height - 1.0) / 2.0)) * height - 1) / 2       # grid_sample's unnormalisation of the row position
    r = torch.floor(p)
    below = p - r
    return ((r.long() + 1).to(like.device), ((1 - below) / channels).to(like), (below / channels).to(like))


# Zero columns added on each side of the key rows: a sample whose left corner is at column -2 or less, or at W or
# more, has both corners outside the image, so clamping it there reads two zeros, as grid_sample's zero padding does.
_PAD_COLUMNS = 2


def _column_corners(coords: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Left bilinear corner of sampling columns `coords` as grid_sample finds it (align_corners=False), as an index
    into key rows padded by `_PAD_COLUMNS` zero columns on each side, and the right corner's weight."""
    x = coords / ((width - 1.0) / 2.0) - 1.0
    p = ((x + 1) * width - 1) / 2
    left = torch.floor(p)
    frac = p - left
    return left.clamp_(-_PAD_COLUMNS, width).add_(_PAD_COLUMNS).long(), frac


class _BandCorrelation(torch.autograd.Function):
    """cost[n, d, y, x] = mean_c query[n, c, y, x] * key[n, c, y, coords[n, d, y, x]] (bilinear, zero outside).

    grid_sample's bilinear weights factor into a row blend and a column blend, and the rows an output row reads do
    not depend on the hypothesis (`sampling_grid`). So, a band of rows at a time: blend the key rows, correlate every
    query pixel of a row with every column of the blended key row (one batched (W, C) x (C, W) matrix product, fast
    where grid_sample's scattered reads are not: forward + backward at the x4 training crop 1006 -> 252 ms), then
    pick the two columns around each hypothesis and blend them. The same products as the official per-hypothesis
    grid_sample, summed in another order (float64: equal to 1e-15). Nothing but the inputs is saved for backward.
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, coords: Tensor, rows: int) -> Tensor:
        with torch.autocast(query.device.type, enabled=False):   # autocast would run the products in bf16/fp16
            return _BandCorrelation._forward(ctx, query, key, coords, rows)

    @staticmethod
    def _forward(ctx, query: Tensor, key: Tensor, coords: Tensor, rows: int) -> Tensor:
        n, c, h, w = key.shape
        d = coords.shape[1]
        # the cost comes out in the query's memory format, so that the aggregation convolutions that follow stay
        # channels-last in evaluation (2x faster on CPU)
        cost = torch.empty((n, d, h, w), dtype=query.dtype, device=query.device, memory_format=memory_format(query))
        for top, bottom, keys, queries, left, frac in _bands(query, key, coords, rows, _key_rows(h, c, key)):
            at_left, at_right = _corner_products(queries, keys, left)
            cost.permute(0, 2, 3, 1)[:, top:bottom] = at_left.add_(at_right.sub_(at_left).mul_(frac)).view(
                n, bottom - top, w, d)
        ctx.save_for_backward(query, key, coords)
        ctx.rows = rows
        return cost

    @staticmethod
    def backward(ctx, grad_cost: Tensor):
        with torch.autocast(grad_cost.device.type, enabled=False):
            return _BandCorrelation._backward(ctx, grad_cost)

    @staticmethod
    def _backward(ctx, grad_cost: Tensor):
        query, key, coords = ctx.saved_tensors
        n, c, h, w = key.shape
        d = coords.shape[1]
        need_query, need_key, need_coords = ctx.needs_input_grad[:3]
        grad_query = torch.empty_like(query) if need_query else None
        grad_rows = key.new_zeros((n, h + 2, c, w)) if need_key else None   # key rows, padded as in `_key_rows`
        grad_coords = torch.empty_like(coords) if need_coords else None
        key_rows = index, above, below = _key_rows(h, c, key)
        for top, bottom, keys, queries, left, frac in _bands(query, key, coords, ctx.rows, key_rows):
            rows = bottom - top
            g = grad_cost[:, :, top:bottom].permute(0, 2, 3, 1).reshape(n * rows, w, d)
            right = left + 1
            if need_coords:   # d cost / d column = (cost at right - cost at left); column = coords * W/(W-1) - 0.5
                at_left, at_right = _corner_products(queries, keys, left)
                grad_coords.permute(0, 2, 3, 1)[:, top:bottom] = at_right.sub_(at_left).mul_(g).mul_(
                    w / (w - 1.0)).view(n, rows, w, d)
                del at_left, at_right
            if not (need_query or need_key):
                continue
            g_right = g * frac
            grad_every_column = g.new_zeros((n * rows, w, w + 2 * _PAD_COLUMNS))
            grad_every_column.scatter_add_(2, left, g - g_right)
            grad_every_column.scatter_add_(2, right, g_right)
            if need_query:
                grad_query.permute(0, 2, 3, 1)[:, top:bottom] = torch.bmm(
                    grad_every_column, keys.transpose(1, 2)).view(n, rows, w, c)
            if need_key:
                grad_keys = torch.bmm(queries.transpose(1, 2), grad_every_column).view(n, rows, c, -1)
                grad_keys = grad_keys[..., _PAD_COLUMNS:_PAD_COLUMNS + w]
                grad_rows.index_add_(1, index[top:bottom], grad_keys * above[top:bottom].view(-1, 1, 1))
                grad_rows.index_add_(1, index[top:bottom] + 1, grad_keys * below[top:bottom].view(-1, 1, 1))
        grad_key = grad_rows[:, 1:h + 1].permute(0, 2, 1, 3) if need_key else None
        return grad_query, grad_key, grad_coords, None


def _corner_products(queries: Tensor, keys: Tensor, left: Tensor) -> tuple[Tensor, Tensor]:
    """Each query pixel (N*rows, W, C) times the blended key row (N*rows, C, W + 4) at the left and the right
    bilinear corner of each of its hypotheses (`left`, (N*rows, W, D)): one product with every column, two gathers."""
    every_column = torch.bmm(queries, keys)                                    # (N*rows, W, W + 4)
    return every_column.gather(2, left), every_column.gather(2, left + 1)


def _bands(query: Tensor, key: Tensor, coords: Tensor, rows: int, key_rows: tuple[Tensor, Tensor, Tensor]):
    """Per band of `rows` output rows: (top, bottom, blended key rows (N*rows, C, W + 4) with zero columns on both
    sides, query rows (N*rows, W, C), then `_column_corners` of the band's coords, each (N*rows, W, D)).
    `key_rows` = `_key_rows(H, C, key)`."""
    n, c, h, w = query.shape
    d = coords.shape[1]
    index, above, below = key_rows
    padded = F.pad(key, (_PAD_COLUMNS, _PAD_COLUMNS, 1, 1)).permute(0, 2, 1, 3).contiguous()   # (N, H+2, C, W+4)
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        band = index[top:bottom]
        keys = padded[:, band] * above[top:bottom].view(-1, 1, 1)
        keys = keys.add_(padded[:, band + 1] * below[top:bottom].view(-1, 1, 1))          # (N, rows, C, W + 4)
        queries = query[:, :, top:bottom].permute(0, 2, 3, 1).reshape(n * (bottom - top), w, c)
        band_coords = coords[:, :, top:bottom].permute(0, 2, 3, 1).reshape(n * (bottom - top), w, d)
        yield (top, bottom, keys.view(n * (bottom - top), c, -1), queries,
               *_column_corners(band_coords, w))


def correlation(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    """Mean over channels of query (N, C, H, W) times key sampled along each row at columns coords (N, D, H, W):
    (N, D, H, W). Inputs are promoted to a common dtype (at least that of coords), as autocast does."""
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), coords.dtype)
    query, key, coords = (t.to(dtype) for t in (query, key, coords))
    n, _, _, w = key.shape
    budget = COST_CHUNK_BYTES.get(key.device.type, COST_CHUNK_BYTES['cuda'])
    rows = max(1, budget // (n * w * w * key.element_size()))       # the (W, W) products of a band fit the budget
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


def swap_views(x: Tensor) -> Tensor:
    """[left; right] stacked on dim 0 -> [right; left]."""
    first, second = x.chunk(2)
    return torch.cat([second, first])
