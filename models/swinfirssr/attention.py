"""SwinFIR's attention blocks, those of HAT (Chen et al., "Activating More Pixels in Image Super-Resolution
Transformer", CVPR 2023): the hybrid attention block (HAB: shifted-window self-attention plus a channel-attention
convolution branch) and the overlapping cross-attention block (OCAB). Official swinfir/archs/swinfir_utils.py 8-524
and the index/mask helpers of swinfirssr_arch.py 398-456.

Features travel as token maps (N, H, W, C), channels last: LayerNorm and the linear layers act on the last
dimension, and the (N, C, H, W) view the convolutions take is a permute away (channels_last memory). H and W are
multiples of the window size (the network pads its input). Attribute names are the official ones (state_dict keys).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Value added to the logits of token pairs that the cyclic shift brought together from different image regions
# (official swinfirssr_arch.py 454: -100, not -inf, so a fully masked row would still be a finite softmax).
SHIFT_MASK_VALUE = -100.0
# Standard deviation of the truncated-normal initialisation of linear layers and bias tables (official 156, 391).
INIT_STD = 0.02


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth (official utils 8-20, timm's): in training each sample of the batch (here each view of each
    pair, independently) is dropped with probability `rate` and the kept ones are scaled by 1 / (1 - rate).
    One torch.rand draw of N numbers per call, as the official draw, so a seeded run matches it."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


def window_partition(x: Tensor, window: int) -> Tensor:
    """(N, H, W, C) -> (N * H/window * W/window, window^2, C): the windows of each image in row-major order."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c).transpose(2, 3)  # N, H/ws, W/ws, ws, ws, C
    return x.reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, n: int, h: int, w: int) -> Tensor:
    """The inverse of `window_partition`: (N * nW, window^2, C) -> (N, H, W, C)."""
    x = windows.view(n, h // window, w // window, window, window, -1).transpose(2, 3)  # N, H/ws, ws, W/ws, ws, C
    return x.reshape(n, h, w, -1)


def _window_coordinates(size: int) -> Tensor:
    """(2, size^2) int64 row and column of every position of a size x size window, row-major."""
    return torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')).flatten(1)


def self_attention_position_index(window: int) -> Tensor:
    """Swin's relative-position index of the window self-attention (official swinfirssr_arch.py 398-410): for query
    i and key j of one window, (row_i - row_j + ws - 1) * (2 ws - 1) + (col_i - col_j + ws - 1), an entry of the
    (2 ws - 1)^2 bias table. (ws^2, ws^2) int64."""
    offsets = _window_coordinates(window)[:, :, None] - _window_coordinates(window)[:, None, :] + (window - 1)
    return offsets[0] * (2 * window - 1) + offsets[1]


def overlapping_attention_position_index(window: int, key_window: int) -> Tensor:
    """HAT's relative-position index of OCAB (official swinfirssr_arch.py 412-435): queries of a ws x ws window,
    keys of the kw x kw window around it. Key minus query offsets are shifted by ws - kw + 1, which does not make
    them non-negative: the index runs from -880 to 640 for ws 16, kw 24. PyTorch indexing wraps the negative ones
    around the (ws + kw - 1)^2 = 1521-entry table, so every offset still gets its own entry (a permutation of a
    learned table: harmless, kept because the authors' weights were trained with it). (ws^2, kw^2) int64."""
    offsets = (_window_coordinates(key_window)[:, None, :] - _window_coordinates(window)[:, :, None]
               + (window - key_window + 1))
    return offsets[0] * (window + key_window - 1) + offsets[1]


def shifted_window_mask(h: int, w: int, window: int, shift: int, dtype: torch.dtype,
                        device: torch.device) -> Tensor:
    """Swin's SW-MSA mask for an H x W map (official swinfirssr_arch.py 437-456). After the cyclic shift by `shift`,
    the windows on the bottom and right borders hold tokens from up to four image regions (rows/columns before
    H - ws, in [H - ws, H - shift), after H - shift); pairs from different regions get SHIFT_MASK_VALUE.
    (nW, ws^2, ws^2), 0 elsewhere."""
    def region(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()
    labels = (region(h)[:, None] * 3 + region(w)[None, :]).to(dtype)                  # H, W
    labels = window_partition(labels[None, :, :, None], window)[..., 0]                 # nW, ws^2
    different = labels[:, None, :] != labels[:, :, None]                                # nW, ws^2, ws^2
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill_(different, SHIFT_MASK_VALUE)


def relative_position_bias(table: Tensor, index: Tensor) -> Tensor:
    """The learned bias of every (query, key) pair: table (entries, heads), index (Nq, Nk) -> (heads, Nq, Nk)."""
    return table[index.view(-1)].view(*index.shape, -1).permute(2, 0, 1)


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float, bias: Tensor,
                         mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention of windows: q (B, Nq, C), k, v (B, Nk, C), C split into `heads` heads; `bias`
    (heads, Nq, Nk) added to every window's logits, `mask` (nW, Nq, Nk) to those of window b mod nW.
    Returns (B, Nq, C)."""
    b, nq, c = q.shape
    q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))  # B, heads, N, d
    logits = (q * scale) @ k.transpose(-2, -1) + bias                                    # B, heads, Nq, Nk
    if mask is not None:
        nw = mask.shape[0]
        logits = (logits.view(b // nw, nw, heads, nq, -1) + mask[:, None]).view(b, heads, nq, -1)
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, nq, c)


class Mlp(nn.Module):
    """The transformer feed-forward: Linear C -> hidden, GELU, Linear hidden -> C (official dropouts are p = 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with a learned relative-position bias (official
    WindowAttentionHATFIR, utils 212-279). The position index is the network's buffer, passed in."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=INIT_STD)

    def forward(self, windows: Tensor, position_index: Tensor, mask: Tensor | None = None) -> Tensor:
        """windows (N * nW, ws^2, C), position_index (ws^2, ws^2), mask (nW, ws^2, ws^2) or None -> same shape."""
        q, k, v = self.qkv(windows).chunk(3, dim=-1)
        bias = relative_position_bias(self.relative_position_bias_table, position_index)
        return self.proj(multi_head_attention(q, k, v, self.num_heads, self.scale, bias, mask))


class ChannelAttention(nn.Module):
    """RCAN's squeeze-and-excitation: x times sigmoid(conv(ReLU(conv(global mean of x)))) (official utils 57-75)."""

    def __init__(self, channels: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // squeeze_factor, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // squeeze_factor, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """HAT's channel attention block: conv3x3 C -> C/3, GELU, conv3x3 C/3 -> C, channel attention (utils 196-209).
    (N, C, H, W) -> same. The mean of the channel attention is over the whole (padded) map."""

    def __init__(self, channels: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(channels, channels // compress_ratio, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels // compress_ratio, channels, 3, padding=1), ChannelAttention(channels, squeeze_factor))

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block (HAT; official utils 282-392) on tokens (N, H, W, C):

        y = LN1(x);  x = x + W-MSA(y) + conv_scale * CAB(y);  x = x + MLP(LN2(x))

    Both branches read the same normalised tokens. Odd blocks shift the windows by half a window (SW-MSA) and mask
    the pairs the shift brought together. Drop-path (training only) acts on the attention and MLP branches.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, compress_ratio: int, squeeze_factor: int,
                 conv_scale: float, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.conv_scale = conv_scale
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, position_index: Tensor, shift_mask: Tensor) -> Tensor:
        """x (N, H, W, C); position_index (ws^2, ws^2); shift_mask (nW, ws^2, ws^2), used by shifted blocks."""
        n, h, w, _ = x.shape
        y = self.norm1(x)
        conv = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)               # N, H, W, C
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(y, self.window), position_index, shift_mask if self.shift else None)
        attended = window_merge(windows, self.window, n, h, w)                             # N, H, W, C
        if self.shift:
            attended = torch.roll(attended, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + drop_path(attended, self.drop_path, self.training) + conv * self.conv_scale
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)

    def extra_repr(self) -> str:
        return f'window={self.window}, shift={self.shift}, drop_path={self.drop_path}'


def overlapping_windows(x: Tensor, window: int, key_window: int) -> Tensor:
    """The key_window x key_window neighbourhood centred on every window (stride `window`), zero outside the map:
    (N, H, W, C) -> (N * nW, key_window^2, C), windows in `window_partition` order (official utils 459-460, 492-494,
    nn.Unfold with padding (kw - ws) / 2)."""
    n, _, _, c = x.shape
    patches = F.unfold(x.permute(0, 3, 1, 2), key_window, padding=(key_window - window) // 2, stride=window)
    patches = patches.view(n, c, key_window * key_window, -1)                           # N, C, kw^2, nW
    return patches.permute(0, 3, 2, 1).reshape(-1, key_window * key_window, c)


class OCAB(nn.Module):
    """Overlapping cross-attention block (HAT; official utils 435-524) on tokens (N, H, W, C): queries from each
    ws x ws window attend to keys and values of the enlarged kw x kw window around it (kw = ws + overlap * ws; the
    keys and values of positions outside the map are zero vectors), then a projection, the residual, and the MLP:

        x = x + proj(OCA(LN1(x)));  x = x + MLP(LN2(x))
    """

    def __init__(self, dim: int, window: int, overlap_ratio: float, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.key_window = int(window * overlap_ratio) + window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window + self.key_window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=INIT_STD)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, position_index: Tensor) -> Tensor:
        """x (N, H, W, C); position_index (ws^2, kw^2) -> (N, H, W, C)."""
        n, h, w, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)                                 # N, H, W, C each
        bias = relative_position_bias(self.relative_position_bias_table, position_index)
        attended = multi_head_attention(
            window_partition(q, self.window), overlapping_windows(k, self.window, self.key_window),
            overlapping_windows(v, self.window, self.key_window), self.num_heads, self.scale, bias)
        x = x + self.proj(window_merge(attended, self.window, n, h, w))
        return x + self.mlp(self.norm2(x))
