"""SSRDE-FNet's fast forms, behind the seam of models/kernels.py (`kernels.FAST`): the banded HR cost-volume
correlation, the matching-feature fusion computed from the pooled resolutions, and the memory-order phase helpers
of the HRDIF draft. Each equals the plain form in the paper files (cost_volume.py, features.py, feedback.py) up to
rounding; tests/test_vectorised.py keeps the reference forms and compares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.kernels import activate_, band_rows, halo_band, memory_format
from models.layers import resize_bilinear
from models.outputs import NonFiniteError

# Bytes of the all-column correlations of a band of rows in the cost volume (see `_BandCorrelation`): small enough to
# stay in the CPU caches and bound memory, large enough to keep GPU kernels busy.
COST_CHUNK_BYTES = {'cpu': 4 << 20, 'cuda': 512 << 20}


# ----------------------------------------------------------------------------------------------------------------
# HR cost volume: correlation of each query pixel with the key row sampled at its hypotheses (cost_volume.py)

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
    if not torch.isfinite(coords).all():   # they become integer column indices below
        raise NonFiniteError('the HR cost volume\'s disparity hypotheses (from the PAM disparity) are not finite')
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), coords.dtype)
    query, key, coords = (t.to(dtype) for t in (query, key, coords))
    n, _, _, w = key.shape
    budget = COST_CHUNK_BYTES.get(key.device.type, COST_CHUNK_BYTES['cuda'])
    rows = max(1, budget // (n * w * w * key.element_size()))       # the (W, W) products of a band fit the budget
    return _BandCorrelation.apply(query, key, coords, rows)


# ----------------------------------------------------------------------------------------------------------------
# Matching features: the fusion convolution of the pooled branches, computed at their own resolution (features.py)

def pyramid_fusion(module: nn.Module, x: Tensor, branches: list[Tensor]) -> Tensor:
    """`module.lastconv(cat([x, *resized branches]))` of a `PyramidPoolingFeature`, from the branches at their pooled
    resolutions: banded when the BatchNorm folds (evaluation), with autograd otherwise.

    conv(cat(x, resized branches)) = conv_x(x) + sum_b conv_b(resize(p_b)), each branch's term computed at its
    pooled resolution (`add_conv_of_resized`): no 112-channel concatenation at HR (39 MB for the views of two
    training patches, over the heap blocks glibc reuses, kernels.AUTOGRAD_TENSOR_BYTES), no resized branches, and 48
    of the HR fusion's 112 input channels cost a few matrix products instead of a 3x3 convolution.
    """
    if module.lastconv[0].folds():
        return _pyramid_fusion_inference(module, x, branches)
    fuse, act, project = module.lastconv
    conv, norm = fuse
    weight, c = conv.weight, x.shape[1]
    pre = add_conv_of_resized(F.conv2d(x, weight[:, :c], padding=1), branches, weight[:, c:])
    return project(act(norm(pre.contiguous(memory_format=memory_format(x)))))


def _pyramid_fusion_inference(module: nn.Module, x: Tensor, branches: list[Tensor]) -> Tensor:
    """The fusion when its BatchNorm folds (eval mode, no autograd), a band of rows at a time: the 3x3 convolution
    of x (BatchNorm folded in) runs on cache-sized bands, the branches' share is added from their pooled resolution
    (`resized_conv_factors`: no resized branches, no concatenation; at a KITTI-sized x4 pair they were 0.2 GB for
    one view), and the PReLU is applied in place."""
    fuse, act, project = module.lastconv
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
        out[:, :, top:bottom] = project(activate_(pre, act))
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


# ----------------------------------------------------------------------------------------------------------------
# HRDIF draft: sub-pixel phases kept in the features' memory order (feedback.py)

def sum_phases(x: Tensor) -> Tensor:
    """(N, P, C, H, W) -> sum over P, reduced in memory order: for channels-last phases a reduction over P as laid
    out was ~30x slower (115 vs 4 ms at a KITTI-sized x4 pair)."""
    if memory_format(x[:, 0]) == torch.channels_last:
        return x.permute(0, 1, 3, 4, 2).sum(1).permute(0, 3, 1, 2)
    return x.sum(1)


def fold_phases(sampled: Tensor, layout: torch.memory_format) -> Tensor:
    """(N, C, P, H, W) samples -> (N*P, C, H, W), the P phases folded into the batch, stored in `layout` (one copy
    either way)."""
    n, c, p, h, w = sampled.shape
    if layout == torch.channels_last:
        return sampled.permute(0, 2, 3, 4, 1).reshape(n * p, h, w, c).permute(0, 3, 1, 2)
    return sampled.transpose(1, 2).reshape(n * p, c, h, w)
