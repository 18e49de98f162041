"""The SwinFIRSSR network (official swinfir/archs/swinfirssr_arch.py 11-191 and 248-514): SwinFIR's body, in which
each residual group is a Swin Fourier transformer block (SFTB: HAT's attention blocks closed by a spatial-frequency
block), with a stereo cross-attention module (SCAM) after every group. Both views run folded into the batch as
[left; right]; only the SCAMs look across.

    x (2B, 3, H, W) RGB in [0, 1] - RGB mean -> conv_first (C) -> f
    tokens = LN(f);  6 x [tokens = SCAM(SFTB(tokens))];  LN
    f = conv_after_body(tokens) + f -> conv 64 + LeakyReLU -> log2(s) x (conv 256, PixelShuffle 2) -> conv 3 + mean

There is no image-level skip. The body needs H, W multiples of the window (16): at test time the authors pad the
LR pair symmetrically by 1 to 16 pixels at the bottom and right (always some padding, a full window when the size
is already a multiple) and crop the output (swinfir/models/swinfirssr_model.py 24-46); `forward` does that in
evaluation mode, so model(left, right) on any size computes what their test computes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.outputs import StereoSROutput, validate_pair
from models.swinfirssr.attention import (HAB, INIT_STD, OCAB, overlapping_attention_position_index,
                                         self_attention_position_index, shifted_window_mask)
from models.swinfirssr.fourier import SFB
from models.swinfirssr.scam import SCAM

# The DIV2K RGB mean that SwinIR-family networks subtract (official arch 288). The official keeps it as a float32
# tensor, cast to the input's dtype: in float64 it is the float32 rounding of these numbers, as here.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
# Width of the reconstruction head (official `num_feat`, arch 285).
NUM_FEAT = 64


@dataclass
class SwinFIRSSRConfig:
    """Hyperparameters of SwinFIRSSR; defaults are the authors' (options/{train,test}/SwinFIRSSR/*.yml, the same
    for x2 and x4)."""

    scale_factor: int = 4
    embed_dim: int = 180
    # HABs per residual group (SFTB) and attention heads per group.
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    window_size: int = 16
    # OCAB's key window is window_size * (1 + overlap_ratio): 24 for 16.
    overlap_ratio: float = 0.5
    mlp_ratio: float = 2.0
    # HAB's convolution branch: C -> C / compress_ratio -> C, channel attention squeezing C / squeeze_factor, and
    # the branch's weight in the sum.
    compress_ratio: int = 3
    squeeze_factor: int = 30
    conv_scale: float = 0.01
    # Stochastic depth in training: rates from 0 to this, linearly over all HABs (official default, not in the yml).
    drop_path: float = 0.1

    def __post_init__(self):
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f'depths {self.depths} and num_heads {self.num_heads} must have the same length')
        if self.scale_factor < 2 or self.scale_factor & (self.scale_factor - 1):
            raise ValueError(f'SwinFIRSSR upsamples by powers of 2, got scale_factor {self.scale_factor}')
        if not 0 <= self.drop_path < 1:
            raise ValueError(f'drop_path must be in [0, 1), got {self.drop_path}')


def evaluation_padding(size: int, window: int) -> int:
    """The authors' test-time padding of an LR side (swinfirssr_model.py 29-30): up to the next multiple of the
    window strictly above `size`, i.e. 1 to `window` pixels, a whole window when `size` is already a multiple."""
    return (size // window + 1) * window - size


def symmetric_pad(x: Tensor, bottom: int, right: int) -> Tensor:
    """Extend (N, C, H, W) by `bottom` rows and `right` columns with its mirror image, edge row/column included
    (the authors' torch.cat([x, x.flip(2)])[:, :, :H + bottom], then the same on columns; swinfirssr_model.py
    31-32). Where a padding is longer than the image, the mirror repeats periodically (the authors' code would
    fail there)."""
    def mirrored(size: int, pad: int) -> Tensor:
        index = torch.arange(size + pad, device=x.device) % (2 * size)
        return torch.where(index < size, index, 2 * size - 1 - index)
    if bottom:
        x = x.index_select(2, mirrored(x.shape[2], bottom))
    if right:
        x = x.index_select(3, mirrored(x.shape[3], right))
    return x


class PatchEmbed(nn.Module):
    """Image to tokens with patch size 1 (official utils 527-560): (N, C, H, W) -> LayerNorm'd (N, H, W, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1))


class AttenBlocks(nn.Module):
    """The attention part of one residual group (official arch 11-104): `depth` HABs, shifting the windows by half
    a window in every other one, then one OCAB. Tokens (N, H, W, C) -> same."""

    def __init__(self, config: SwinFIRSSRConfig, depth: int, num_heads: int, drop_paths: list[float]):
        super().__init__()
        c, window = config.embed_dim, config.window_size
        self.blocks = nn.ModuleList(
            HAB(c, num_heads, window, 0 if i % 2 == 0 else window // 2, config.compress_ratio,
                config.squeeze_factor, config.conv_scale, config.mlp_ratio, drop_paths[i]) for i in range(depth))
        self.overlap_attn = OCAB(c, window, config.overlap_ratio, num_heads, config.mlp_ratio)

    def forward(self, x: Tensor, index_sa: Tensor, index_oca: Tensor, shift_mask: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, index_sa, shift_mask)
        return self.overlap_attn(x, index_oca)


class SFTB(nn.Module):
    """Swin Fourier transformer block (official arch 107-191): x + SFB(attention blocks(x)), the SFB on the token map
    seen as an image (no norm in between). Tokens (N, H, W, C) -> same."""

    def __init__(self, config: SwinFIRSSRConfig, depth: int, num_heads: int, drop_paths: list[float]):
        super().__init__()
        self.residual_group = AttenBlocks(config, depth, num_heads, drop_paths)
        self.conv = SFB(config.embed_dim)

    def forward(self, x: Tensor, index_sa: Tensor, index_oca: Tensor, shift_mask: Tensor) -> Tensor:
        y = self.residual_group(x, index_sa, index_oca, shift_mask)
        return x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def upsampler(scale: int, channels: int) -> nn.Sequential:
    """log2(scale) x (conv3x3 C -> 4C, PixelShuffle(2)) (official utils 592-611)."""
    layers = []
    for _ in range(int(math.log2(scale))):
        layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """The official initialisation (arch 389-396): linear weights truncated normal (std 0.02, cut at +-2), biases
    0; LayerNorm 1 and 0. Convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SwinFIRSSR(nn.Module):
    """SwinFIRSSR for one scale: LR pair (B, 3, H, W) RGB in [0, 1], any size -> StereoSROutput with sr_left,
    sr_right (B, 3, sH, sW), not clamped.

    Evaluation mode pads each view symmetrically by 1-16 px to a multiple of the window (the authors' test) and crops
    the output. Training mode feeds patches that are multiples of the window as they are (the authors' 64x64) and
    pads others the same way but only as far as the next multiple (0-15 px). Drop-path acts in training mode only.
    """

    def __init__(self, config: SwinFIRSSRConfig | None = None):
        super().__init__()
        config = config or SwinFIRSSRConfig()
        self.config = config
        self.scale = config.scale_factor
        self.min_input_size = (1, 1)
        self.input_multiple = 1
        window, c = config.window_size, config.embed_dim
        # Index buffers of the relative-position bias tables, shared by every block; persistent, so they are in the
        # state_dict (and the authors' files) under these names.
        key_window = int(window * config.overlap_ratio) + window
        self.register_buffer('relative_position_index_SA', self_attention_position_index(window))
        self.register_buffer('relative_position_index_OCA', overlapping_attention_position_index(window, key_window))
        self.register_buffer('mean', torch.tensor(RGB_MEAN, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(3, c, 3, padding=1)
        self.patch_embed = PatchEmbed(c)
        drop_paths = torch.linspace(0, config.drop_path, sum(config.depths)).tolist()   # official arch 339
        starts = [sum(config.depths[:i]) for i in range(len(config.depths))]
        self.layers = nn.ModuleList(
            SFTB(config, depth, heads, drop_paths[start:start + depth])
            for depth, heads, start in zip(config.depths, config.num_heads, starts))
        self.scam_layer = nn.ModuleList(SCAM(c) for _ in config.depths)
        self.norm = nn.LayerNorm(c)
        self.conv_after_body = nn.Conv2d(c, c, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(c, NUM_FEAT, 3, padding=1), nn.LeakyReLU(inplace=True))
        self.upsample = upsampler(self.scale, NUM_FEAT)
        self.conv_last = nn.Conv2d(NUM_FEAT, 3, 3, padding=1)
        self.apply(init_weights)

    def padding(self, h: int, w: int) -> tuple[int, int]:
        """(bottom, right) padding of an H x W LR input in the current mode (see the class docstring)."""
        window = self.config.window_size
        if self.training:
            return -h % window, -w % window
        return evaluation_padding(h, window), evaluation_padding(w, window)

    def forward_features(self, x: Tensor) -> Tensor:
        """The deep feature extraction (official arch 466-487): (N, C, H, W), H and W multiples of the window ->
        (N, C, H, W)."""
        window = self.config.window_size
        shift_mask = shifted_window_mask(x.shape[2], x.shape[3], window, window // 2, x.dtype, x.device)
        tokens = self.patch_embed(x)                                                    # N, H, W, C
        for layer, scam in zip(self.layers, self.scam_layer):
            tokens = scam(layer(tokens, self.relative_position_index_SA, self.relative_position_index_OCA,
                                shift_mask))
        return self.norm(tokens).permute(0, 3, 1, 2)

    def super_resolve(self, x: Tensor) -> Tensor:
        """The official network's forward on the views folded into the batch: x (2B, 3, H, W), H and W multiples of
        the window -> (2B, 3, sH, sW)."""
        mean = self.mean.to(x.dtype)
        features = self.conv_first(x - mean)
        features = self.conv_after_body(self.forward_features(features)) + features
        return self.conv_last(self.upsample(self.conv_before_upsample(features))) + mean

    def forward(self, left: Tensor, right: Tensor) -> StereoSROutput:
        _, h, w = validate_pair(left, right)
        x = symmetric_pad(torch.cat([left, right]), *self.padding(h, w))                # 2B, 3, H', W'
        sr = self.super_resolve(x)[..., :h * self.scale, :w * self.scale]
        sr_left, sr_right = sr.chunk(2)
        return StereoSROutput(sr_left, sr_right)
