"""EHFSSR (Song et al., "Efficient Hybrid Feature Interaction Network for Stereo Image Super-Resolution", IEEE TMM
2024): a shared 3x3 conv embeds each view, five residual groups of six hybrid blocks follow, a 1x1 conv + channel
attention fuses them with a feature-level skip, and a PixelShuffle upsampler ends. Each hybrid block is a
convolutional feed-forward network followed by one interaction: cross-view attention along epipolar rows (block 0),
window self-attention (blocks 1-4, every other one with rolled windows) or global channel self-attention (block 5).

Two variants differ only in the window self-attention: EHFSSR-S (dim 48) attends in 16x16 windows with two heads,
EHFSSR (dim 64) splits the channels into a 16x16-window half and a half whose keys/values are downsampled 2x, so
each 16x16 query window sees an 8x8 key window covering 32x32 pixels (official EHFSSR_S_arch.py / EHFSSR_arch.py,
jianwensong/EHFSSR @66d96aa).

Quirks of the official code kept here (spec /work/shared/reference/zoo2.md §2):
- the cross-view scores are multiplied by a 0/1 disparity band (masked logits become 0, not -inf, so every position
  of the row keeps a share of the softmax) and are not scaled by 1/sqrt(d) (EHFSSR_S_arch.py:114, 142, 152);
- queries and values of the cross-view attention read "shifted-channel" maps, and its `transition` and `out` convs
  are shared by both views;
- rolled windows have no shifted-window mask, so pixels wrapped around the border share a window (177-200);
- EHFSSR-S scales its window scores by (c/2)^-0.5, whose heads have c/4 channels (176);
- before each window attention the map is reflect-padded at the bottom/right to a multiple of 16 and cropped back
  afterwards (73-91), so its channel attention pools the padded map; inputs need H, W >= 9;
- no image-level skip (the bicubic add is commented out, 38-39);
- the authors' weights expect BGR views (`channel_order`).
Both views run folded into the batch, [left; right]. Module names and registration order equal the official ones,
so the state_dict matches ehfssr{_s,}_x{2,4}_state_dict.json and the authors' files load strictly;
tests/test_ehfssr_parity.py checks equality with the official code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.nafssr import (CHANNEL_ORDER_OPTION, CHANNEL_ORDERS, LayerNorm2d,
                           release_options)  # release_options: BasicSR {'params'} files are BGR
from models.outputs import StereoSROutput, validate_pair
from models.registry import ModelEntry, Recipe, register_model
from models.stereo_losses import Objective

# The cross-view attention lets a left pixel at column x attend to right columns x - MAX_DISPARITY .. x
# (official `maxdisp = 192//2`, EHFSSR_S_arch.py:141, in LR pixels at every scale).
MAX_DISPARITY = 96
# Shifted-channel maps: 4 groups of c // SHIFT_DIVISIONS channels move one pixel left, right, up and down
# (official `shifts(x, 8)`, EHFSSR_S_arch.py:115-124, 127-134).
SHIFT_DIVISIONS = 8
# Window self-attention: 16x16 windows, rolled by half a window in every other block (EHFSSR_S_arch.py:48, 63);
# EHFSSR's second half downsamples keys/values by KV_DOWN_RATE (EHFSSR_arch.py:186, down_rates=[1, 2]).
WINDOW = 16
KV_DOWN_RATE = 2
# Each block reflect-pads before its window attention to a multiple of lcm(8, 16) (GroupSR's window_sizes=[8, 16],
# EHFSSR_S_arch.py:48, 73-81); the reflection needs H, W >= MIN_SIZE.
PAD_MULTIPLE = 16
MIN_SIZE = PAD_MULTIPLE // 2 + 1
# Feed-forward expansion (MLP ratio=2), activation slope, kernels (EHFSSR_S_arch.py:71, 213, 235-245).
FFN_EXPAND = 2
LEAKY_SLOPE = 0.1
FFN_KERNEL = 5
GLOBAL_SPATIAL_KERNEL = 9
WINDOW_ATTENTIONS = ('heads', 'dual_scale')

# Variants (official options/test/EHFSSR{_S,}/*.yml): channels, window attention form.
VARIANTS = {
    's': dict(dim=48, window_attention='heads'),
    'base': dict(dim=64, window_attention='dual_scale'),
}


@dataclass
class EHFSSRConfig:
    """Hyperparameters of EHFSSR; defaults are EHFSSR-S x4's (official options/test/EHFSSR_S/EHFSSR_S_x4.yml)."""

    scale_factor: int = 4
    dim: int = 48
    groups: int = 5                             # residual groups
    blocks: int = 6                             # hybrid blocks per group (official `num`)
    # 'heads': EHFSSR-S's two-head 16x16 windows; 'dual_scale': EHFSSR's full-resolution + 2x-downsampled halves.
    window_attention: str = 'heads'
    max_disparity: int = MAX_DISPARITY
    # Colour order the weights expect: the authors' test pipeline feeds BGR (spec §2.2); forward always takes RGB.
    channel_order: str = 'rgb'

    @classmethod
    def variant(cls, name: str, scale_factor: int = 4, **overrides) -> 'EHFSSRConfig':
        """The config of EHFSSR-S (name 's') or EHFSSR ('base'); `overrides` replace its fields."""
        return cls(scale_factor=scale_factor, **{**VARIANTS[name], **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Channel attention and the feed-forward network


class MultiDilationChannelGate(nn.Module):
    """Channel weights from the global mean (the official effCA): three 3-tap 1-D convs with dilations 1, 2, 4 slide
    over the channel axis of the pooled vector, a fourth 3-tap conv fuses them, a sigmoid squashes.
    (N, C, H, W) -> (N, C, 1, 1) in (0, 1). Names conv1..conv3, conv are the official ones."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.conv2 = nn.Conv1d(1, 1, 3, padding=2, dilation=2, bias=False)
        self.conv3 = nn.Conv1d(1, 1, 3, padding=4, dilation=4, bias=False)
        self.conv = nn.Conv1d(3, 1, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean((2, 3))[:, None]                                         # N, 1, C
        branches = torch.cat([self.conv1(pooled), self.conv2(pooled), self.conv3(pooled)], dim=1)  # N, 3, C
        return torch.sigmoid(self.conv(branches))[:, 0, :, None, None]           # N, C, 1, 1


class MultiDilationChannelAttention(MultiDilationChannelGate):
    """x times its channel gate (the official eca_layer): (N, C, H, W) -> (N, C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * super().forward(x)


class ConvFeedForward(nn.Module):
    """The official MLP: x + CA(projout(LeakyReLU(dw5x5(t) + t))), t = proj1(LN(x)) with 2c channels."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = FFN_EXPAND * dim
        self.layernorm1 = LayerNorm2d(dim)
        self.proj1 = nn.Conv2d(dim, hidden, 1)
        self.conv = nn.Conv2d(hidden, hidden, FFN_KERNEL, padding=FFN_KERNEL // 2, groups=hidden)
        self.projout = nn.Conv2d(hidden, dim, 1)
        self.ca = MultiDilationChannelAttention()

    def forward(self, x: Tensor) -> Tensor:
        t = self.proj1(self.layernorm1(x))
        t = F.leaky_relu(self.conv(t) + t, LEAKY_SLOPE)
        return x + self.ca(self.projout(t))


# ---------------------------------------------------------------------------------------------------------------
# Cross-view attention along epipolar rows


def shift_channels(x: Tensor) -> Tensor:
    """The official `shifts(x, 8)`: four groups of C // 8 channels move one pixel left, right, up and down (the
    vacated row/column is zero), the remaining channels stay. (N, C, H, W) -> same."""
    g = x.shape[1] // SHIFT_DIVISIONS
    return torch.cat([F.pad(x[:, :g, :, 1:], (0, 1)),                     # left
                      F.pad(x[:, g:2 * g, :, :-1], (1, 0)),               # right
                      F.pad(x[:, 2 * g:3 * g, 1:], (0, 0, 0, 1)),         # up
                      F.pad(x[:, 3 * g:4 * g, :-1], (0, 0, 1, 0)),        # down
                      x[:, 4 * g:]], dim=1)


def disparity_band(width: int, max_disparity: int, like: Tensor) -> Tensor:
    """(W, W) 0/1 mask of the candidate matches: entry [x_left, x_right] is 1 where 0 <= x_left - x_right <=
    max_disparity (official `tril(.., 0) * triu(.., -maxdisp)`)."""
    return torch.ones(width, width, dtype=like.dtype, device=like.device).tril().triu(-max_disparity)


def rows_of_heads(x: Tensor, heads: int) -> Tensor:
    """(B, heads * d, H, W) -> (B, heads, H, W, d): each image row a sequence of W tokens per head."""
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h, w).permute(0, 1, 3, 4, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, H, W, d) -> (B, heads * d, H, W), heads major in the channels (the official torch.cat)."""
    b, heads, h, w, d = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(b, heads * d, h, w)


class CrossViewAttention(nn.Module):
    """The official Crossattention: each left pixel attends to the right pixels of its row within the disparity band,
    and each right pixel to the left ones, in HEADS heads of c/2 channels.

    Queries: LN_view(x + transition(x)) of shifted channels through to_l / to_r; values: the raw shifted channels
    through feaL / feaR. One score matrix A = Q_left Q_right^T x band (no 1/sqrt(d); outside the band the scores are
    0, not -inf) serves both directions: softmax(A) brings the right view to the left, softmax(A^T) the left to the
    right. The shared `out` conv projects both; each view adds its input.
    """

    HEADS = 2   # official window_sizes=[1, 1]: only its length matters (BasicBlockSR, EHFSSR_S_arch.py:69)

    def __init__(self, dim: int, max_disparity: int = MAX_DISPARITY):
        super().__init__()
        self.max_disparity = max_disparity
        self.LayernormL = LayerNorm2d(dim)
        self.LayernormR = LayerNorm2d(dim)
        self.feaL = nn.Conv2d(dim, dim, 1, bias=False)
        self.feaR = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_l = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_r = nn.Conv2d(dim, dim, 1, bias=False)
        self.transition = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1))
        self.out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (2B, c, H, W), [left; right] -> the same, each view plus what it gathered from the other."""
        shifted_left, shifted_right = shift_channels(x).chunk(2)
        context_left, context_right = (self.transition(x) + x).chunk(2)
        heads = self.HEADS
        query_left = rows_of_heads(self.to_l(shift_channels(self.LayernormL(context_left))), heads)  # B,h,H,W,d
        query_right = rows_of_heads(self.to_r(shift_channels(self.LayernormR(context_right))), heads)
        value_left = rows_of_heads(self.feaL(shifted_left), heads)
        value_right = rows_of_heads(self.feaR(shifted_right), heads)
        band = disparity_band(x.shape[-1], self.max_disparity, x)                    # W_left, W_right
        scores = torch.matmul(query_left, query_right.transpose(-1, -2)) * band      # B, h, H, W_left, W_right
        right_to_left = torch.matmul(scores.softmax(-1), value_right)                # B, h, H, W_left, d
        # softmax(A^T, -1) is softmax(A, -2) transposed; the transpose is free inside the matmul.
        left_to_right = torch.matmul(scores.softmax(-2).transpose(-1, -2), value_left)   # B, h, H, W_right, d
        gathered = self.out(merge_heads(torch.cat([right_to_left, left_to_right])))  # 2B, c, H, W
        return x + gathered


# ---------------------------------------------------------------------------------------------------------------
# Window self-attention


def to_windows(x: Tensor, window: int, heads: int) -> Tensor:
    """(N, heads * d, H, W) -> (N * H/window * W/window, heads, window^2, d), windows in raster order."""
    n, c, h, w = x.shape
    x = x.reshape(n, heads, c // heads, h // window, window, w // window, window)
    return x.permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, heads, window * window, c // heads)


def from_windows(x: Tensor, window: int, size: tuple[int, int]) -> Tensor:
    """Inverse of `to_windows` for an (H, W) map: -> (N, heads * d, H, W)."""
    h, w = size
    _, heads, _, d = x.shape
    x = x.reshape(-1, h // window, w // window, heads, window, window, d)
    return x.permute(0, 3, 6, 1, 4, 2, 5).reshape(-1, heads * d, h, w)


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, heads: int, scale: float,
                     shifted: bool) -> Tensor:
    """Attention inside non-overlapping windows: q (N, C, H, W) in `window`-sized windows, k and v (N, C', H', W')
    with H' = H / r in window / r sized ones (the same number of windows), `heads` heads each. Rolled by half a
    window first and back afterwards when `shifted`, without a mask: the wrapped border rows and columns share
    windows with the opposite border (official WSAttention). Returns (N, C_v, H, W)."""
    kv_window = window * k.shape[-1] // q.shape[-1]
    if shifted:
        q = torch.roll(q, (-(window // 2), -(window // 2)), (2, 3))
        k, v = (torch.roll(t, (-(kv_window // 2), -(kv_window // 2)), (2, 3)) for t in (k, v))
    # softmax(q k^T * scale) v in one fused kernel (5x faster on the CPU than the three steps, no score tensor)
    y = F.scaled_dot_product_attention(to_windows(q, window, heads), to_windows(k, kv_window, heads),
                                       to_windows(v, kv_window, heads), scale=scale)  # windows, heads, window^2, d
    y = from_windows(y, window, q.shape[-2:])
    return torch.roll(y, (window // 2, window // 2), (2, 3)) if shifted else y


class WindowSelfAttention(nn.Module):
    """EHFSSR-S's WSAttention: x + project_out(y + sigmoid(sa(y)) * local(dw(LN x))), where y is two-head attention
    in 16x16 windows on q, k = to_qk(LN x) and v = to_v(gate(dw(LN x)) * LN x), c/2 channels (c/4 per head),
    scores scaled by (c/2)^-0.5. Input (N, c, H, W) with H, W multiples of 16."""

    HEADS = 2   # official window_sizes=[16, 16]: one head per entry (EHFSSR_S_arch.py:170)

    def __init__(self, dim: int, shifted: bool = False):
        super().__init__()
        self.shifted = shifted
        self.scale = (dim // 2) ** -0.5
        self.Layernorm = LayerNorm2d(dim)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.local = nn.Conv2d(dim, dim // 2, 1)
        self.CA = MultiDilationChannelGate()
        self.to_qk = nn.Conv2d(dim, dim, 1)
        self.to_v = nn.Conv2d(dim, dim // 2, 1)
        self.sa = nn.Sequential(nn.Conv2d(dim // 2, 1, 1), nn.Sigmoid())
        self.project_out = nn.Conv2d(dim // 2, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        normed = self.Layernorm(x)
        detail = self.depthwise(normed)
        v = self.to_v(self.CA(detail) * normed)
        q, k = self.to_qk(normed).chunk(2, dim=1)
        y = window_attention(q, k, v, WINDOW, self.HEADS, self.scale, self.shifted)   # N, c/2, H, W
        return x + self.project_out(y + self.sa(y) * self.local(detail))


class DualScaleWindowSelfAttention(nn.Module):
    """EHFSSR's WSAttention: q, k, v = to_q, to_k, to_v(LN x), v times gate(dw(LN x)), split into two halves of c/2.
    Half 0 attends in 16x16 windows; half 1's keys and values pass through `down` (2x2 stride-2 depthwise, shared
    by k and v) and each 16x16 query window attends to an 8x8 key window (32x32 pixels). Scores scaled by
    (c/2)^-0.5. x + project_out(y + sigmoid(sa(y)) * dw(LN x)). Input (N, c, H, W), H, W multiples of 16."""

    def __init__(self, dim: int, shifted: bool = False):
        super().__init__()
        half = dim // 2
        self.shifted = shifted
        self.scale = half ** -0.5
        self.Layernorm = LayerNorm2d(dim)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.CA = MultiDilationChannelGate()
        self.to_q = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_v = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_k = nn.Conv2d(dim, dim, 1, bias=False)
        self.down = nn.Conv2d(half, half, KV_DOWN_RATE, stride=KV_DOWN_RATE, groups=half)
        self.sa = nn.Sequential(nn.Conv2d(dim, 1, 1), nn.Sigmoid())
        self.project_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        normed = self.Layernorm(x)
        detail = self.depthwise(normed)
        q_fine, q_coarse = self.to_q(normed).chunk(2, dim=1)
        k_fine, k_coarse = self.to_k(normed).chunk(2, dim=1)
        v_fine, v_coarse = (self.to_v(normed) * self.CA(detail)).chunk(2, dim=1)
        y = torch.cat([
            window_attention(q_fine, k_fine, v_fine, WINDOW, 1, self.scale, self.shifted),
            window_attention(q_coarse, self.down(k_coarse), self.down(v_coarse), WINDOW, 1, self.scale, self.shifted),
        ], dim=1)                                                                      # N, c, H, W
        return x + self.project_out(y + self.sa(y) * detail)


# ---------------------------------------------------------------------------------------------------------------
# Global self-attention


class GlobalSelfAttention(nn.Module):
    """The official GSAttention, over the whole map: half the output is channel ("transposed") attention, c/2
    queries and keys L2-normalised over the H*W pixels, scores times a learnt `temperature`; the other half is
    LeakyReLU(dw9x9(to_sp(LN x))). x + out(concat). (N, c, H, W) -> same."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.temperature = nn.Parameter(torch.ones(1, 1, 1))
        self.Layernorm = LayerNorm2d(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * half, 1, bias=False)
        self.to_sp = nn.Conv2d(dim, half, 1, bias=False)
        self.conv = nn.Conv2d(half, half, GLOBAL_SPATIAL_KERNEL, padding=GLOBAL_SPATIAL_KERNEL // 2, groups=half)
        self.out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        normed = self.Layernorm(x)
        q, k, v = self.to_qkv(normed).flatten(2).chunk(3, dim=1)                     # N, c/2, HW each
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.temperature              # N, c/2, c/2
        channel = torch.matmul(scores.softmax(-1), v).reshape(n, -1, h, w)
        spatial = F.leaky_relu(self.conv(self.to_sp(normed)), LEAKY_SLOPE)
        return x + self.out(torch.cat([channel, spatial], dim=1))


# ---------------------------------------------------------------------------------------------------------------
# Blocks, groups and the network


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad (N, C, H, W) at the bottom/right to multiples of `multiple` (official check_image_size)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode='reflect')


class HybridBlock(nn.Module):
    """The official BasicBlockSR: the feed-forward network, then one interaction: cross-view attention (block 0),
    window self-attention on a map reflect-padded to a multiple of 16 (blocks 1..n-2), global self-attention (the
    last). x: (2B, c, H, W), [left; right]."""

    def __init__(self, dim: int, index: int, num_blocks: int, window_attention: str, max_disparity: int):
        super().__init__()
        window_class = WindowSelfAttention if window_attention == 'heads' else DualScaleWindowSelfAttention
        if index == 0:
            self.selfatn = None
        elif index == num_blocks - 1:
            self.selfatn = GlobalSelfAttention(dim)
        else:
            self.selfatn = window_class(dim, shifted=index % 2 == 0)
        self.interaction = CrossViewAttention(dim, max_disparity) if index == 0 else None
        self.MLP = ConvFeedForward(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.MLP(x)
        if isinstance(self.selfatn, GlobalSelfAttention):
            x = self.selfatn(x)
        elif self.selfatn is not None:
            h, w = x.shape[-2:]
            x = self.selfatn(pad_to_multiple(x, PAD_MULTIPLE))[..., :h, :w]
        if self.interaction is not None:
            x = self.interaction(x)
        return x


class ResidualGroup(nn.Module):
    """The official GroupSR: `num_blocks` hybrid blocks, a 1x1 conv + channel attention, plus the group input."""

    def __init__(self, dim: int, num_blocks: int, window_attention: str, max_disparity: int):
        super().__init__()
        self.body = nn.ModuleList(HybridBlock(dim, i, num_blocks, window_attention, max_disparity)
                                  for i in range(num_blocks))
        self.conv = nn.Sequential(nn.Conv2d(dim, dim, 1), MultiDilationChannelAttention())

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for block in self.body:
            y = block(y)
        return x + self.conv(y)


class EHFSSR(nn.Module):
    """EHFSSR for one scale: LR pair (B, 3, H, W) RGB in [0, 1], H, W >= 9 -> StereoSROutput with sr_left, sr_right
    (B, 3, sH, sW), not clamped. No dropout or drop-path: train and eval modes compute the same function."""

    def __init__(self, config: EHFSSRConfig | None = None):
        super().__init__()
        config = config or EHFSSRConfig()
        if config.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {config.channel_order!r}")
        if config.window_attention not in WINDOW_ATTENTIONS:
            raise ValueError(f"window_attention must be one of {WINDOW_ATTENTIONS}, got {config.window_attention!r}")
        if config.blocks < 2:
            raise ValueError(f'a group needs at least 2 blocks (cross-view first, global last), got {config.blocks}')
        self.config = config
        self.scale = config.scale_factor
        self.min_input_size = (MIN_SIZE, MIN_SIZE)
        self.input_multiple = 1
        c = config.dim
        # Registration order = official: init, body, up, fuse (fuse is defined last, EHFSSR_S_arch.py:25).
        self.init = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.ModuleList(ResidualGroup(c, config.blocks, config.window_attention, config.max_disparity)
                                  for _ in range(config.groups))
        self.up = nn.Sequential(nn.Conv2d(c, 3 * self.scale ** 2, 3, padding=1), nn.PixelShuffle(self.scale))
        self.fuse = nn.Sequential(nn.Conv2d(c, c, 1), MultiDilationChannelAttention())

    def forward(self, left: Tensor, right: Tensor) -> StereoSROutput:
        _, h, w = validate_pair(left, right)
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f'EHFSSR needs LR views of at least {MIN_SIZE}x{MIN_SIZE} (its blocks reflect-pad to a '
                             f'multiple of {PAD_MULTIPLE}), got {h}x{w}')
        x = torch.cat([left, right])                                             # 2B, 3, H, W
        if self.config.channel_order == 'bgr':
            x = x.flip(1)
        # The body runs channels-last: its 1x1 convs are then plain matrix products and its LayerNorms read the
        # channels of a pixel contiguously.
        shallow = self.init(x.contiguous(memory_format=torch.channels_last))     # 2B, c, H, W
        features = shallow
        for group in self.body:
            features = group(features)
        sr = self.up(self.fuse(features) + shallow)                              # 2B, 3, sH, sW
        if self.config.channel_order == 'bgr':
            sr = sr.flip(1)
        sr_left, sr_right = sr.chunk(2)
        return StereoSROutput(sr_left, sr_right)


# ---------------------------------------------------------------------------------------------------------------
# Training objective


class EHFSSRLoss(Objective):
    """The authors' objective (train ymls `pixel_opt` MSELoss 1.0 + `freq_opt` FFTLoss 0.02, official
    basicsr/models/losses/losses.py): MSE over the 6-channel stack of both views, plus the mean absolute difference
    of the real and imaginary parts of rfft2 of output and target over the same stack (norm 'backward').
    Returns {'mse', 'fft', 'total'}."""

    DEFAULT_WEIGHTS = {'mse': 1.0, 'fft': 0.02}

    def forward(self, out: StereoSROutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        """out: the network's output; hr_left, hr_right: (B, 3, sH, sW) targets in the network's colour order."""
        sr, hr = torch.cat([out.sr_left, out.sr_right], 1), torch.cat([hr_left, hr_right], 1)
        difference = torch.view_as_real(torch.fft.rfft2(sr)) - torch.view_as_real(torch.fft.rfft2(hr))
        return self.weighted_total({'mse': F.mse_loss(sr, hr), 'fft': difference.abs().mean()})


# ---------------------------------------------------------------------------------------------------------------
# The zoo's entries: ehfssr-s, ehfssr

OPTIONS = (CHANNEL_ORDER_OPTION,)   # NAFSSR's family's: one help text for all the networks that take it


def builder(variant: str):
    def build(scale_factor: int = 4, channel_order: str = 'rgb') -> EHFSSR:
        return EHFSSR(EHFSSRConfig.variant(variant, scale_factor, channel_order=channel_order))
    return build


for _name, _variant, _folder, _title in (('ehfssr-s', 's', 'EHFSSR_S', 'EHFSSR-S'),
                                         ('ehfssr', 'base', 'EHFSSR', 'EHFSSR')):
    register_model(ModelEntry(
        name=_name,
        build=builder(_variant),
        criterion=EHFSSRLoss,
        # Stage 1 (from scratch): 30x90 LR patches, batch 16 per GPU x 2 GPUs, hflip with L/R swap, vflip,
        # flip_RGB. Stage 2 (…_s2.yml) fine-tunes on 48x112 LR crops of whole images, lr 1e-4, 50k iterations.
        recipe=Recipe(source=f'official options/train/{_folder}/{_folder}_x{{2,4}}_s1.yml (stage 1 of 2)',
                      batch_size=32, optimizer='adamw', lr=1.5e-3, betas=(0.9, 0.99), weight_decay=0.0,
                      schedule='cosine', eta_min=1e-7, total_iters=100_000, grad_clip=0.01, channel_shuffle=True),
        scales=(2, 4),
        options=OPTIONS,
        release_options=release_options,
        description=f'{_title}: conv feed-forward + cross-view / window / global attention in residual groups',
        paper='Song et al., Efficient Hybrid Feature Interaction Network for Stereo Image Super-Resolution, '
              'IEEE TMM 2024',
        title=_title,
    ))

__all__ = ['EHFSSR', 'EHFSSRConfig', 'EHFSSRLoss', 'CrossViewAttention', 'WindowSelfAttention',
           'DualScaleWindowSelfAttention', 'GlobalSelfAttention', 'VARIANTS', 'MAX_DISPARITY']
