"""SRNet for digital zoom ("Self-supervised Residual-aware Network for Digital Zoom"; official code
selous123/SRNet-zoom-pytorch, `src/model/ssl.py` + `common.py`), applied to each view of a stereo pair independently,
its two-term objective with the Diff labels made on the fly, and its entry in the zoo.

Two EDSR-style branches of 16 residual blocks with channel attention + MPR-SA: the residual-aware auxiliary task
(RAT, official `model_ssl`) super-resolves the LR view into a Diff map, an enhanced |HR - upsampled LR|; the main
branch super-resolves the view, fusing the RAT features twice. Images run in 0-255 units with the DIV2K mean shift,
as the official code (`rgb_range` 255).

Quirks of the official code, kept by default (`selous123/SRNet-zoom-pytorch` @08b647e, src/model/ssl.py:217-297, the
forward at 268-297, and src/model/common.py):
* the RAT deep features are *subtracted* from the main head features (the paper figure draws a sum), and the long
  skip adds the fused, attended features, not the head output;                  `srnet_add_rat_features`: +
* a ReLU follows every PixelShuffle of both upsamplers (EDSR has none);        `srnet_no_upsampler_relu`
* inputs are 0-255 with the mean subtracted inside (`sub_mean`/`add_mean`, frozen 1x1 convolutions in the
  state_dict), and `add_mean` is applied to the Diff prediction too (not a bug; no switch);
* MPR-SA concatenates the four rot90 copies of each channel-pooled map, so the official code runs only on square
  maps. Here a non-square map is cut into square tiles of side min(H, W) along its longer axis (the last one flush
  with the end, overlapping its neighbour), each tile gets the official square attention, and the masks of
  overlapping tiles are averaged (`MultiPoolingSpatialAttention`); a square map is one tile, i.e. the official
  computation. BatchNorm in training normalises over all tiles (overlaps counted twice).
Names and registration order equal the official modules', so the state_dict matches
srnet_zoom_x4_state_dict.json (904 entries at x4, 908 at x8). Equivalence with the official code on square inputs:
tests/test_srnet.py (skips without SRNET_OFFICIAL_DIR).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.outputs import Pair, StereoSROutput, validate_pair
from models.registry import ModelEntry, Option, Recipe, register_model
from models.stereo_losses import Objective

SCALES = (2, 4, 8)
RESBLOCKS = 16                      # official option.py n_resblocks
FEATURES = 64                       # n_feats
REDUCTION = 16                      # channel-attention reduction
RGB_RANGE = 255.0                   # rgb_range: images are 0-255 inside
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean of the official MeanShift
POOL_GROUPS = (1, 2, 4)             # MPR-SA channel poolings (ChannelPool 1, 2, 4 groups)
ROTATIONS = 4                       # rot90 copies 0, 90, 180, 270 degrees
SPATIAL_MAPS = 8                    # each BasicConv gives 8 maps, tiled over the 64 channels
SPATIAL_KERNEL = 7
BN_MOMENTUM = 0.01                  # BasicConv's BatchNorm2d(momentum=0.01)
DIFF_RESAMPLES = ('nearest', 'bicubic')
# PIL ImageFilter kernels of generate_s_label.py (3x3, result / scale, rounded, clipped, 1-px border copied).
EDGE_ENHANCE_MORE = ((-1, -1, -1), (-1, 9, -1), (-1, -1, -1)), 1
DETAIL = ((0, -1, 0), (-1, 10, -1), (0, -1, 0)), 6


@dataclass
class SRNetConfig:
    """Hyperparameters of SRNet; defaults are the official runs' (option.py, `--attn`)."""

    scale_factor: int = 4
    n_resblocks: int = RESBLOCKS
    n_feats: int = FEATURES
    reduction: int = REDUCTION
    add_rat_features: bool = False     # correction: add the RAT deep features (the figure) instead of subtracting
    upsampler_relu: bool = True        # official: ReLU after each PixelShuffle; False is the EDSR upsampler
    diff_resample: str = 'nearest'     # upsampling of the LR view in the Diff labels (objective), see `diff_labels`


# ---------------------------------------------------------------------------------------------------------------
# Building blocks (official common.py)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 convolution adding sign x 255 x the DIV2K mean (official `MeanShift`, stored in the state_dict)."""

    def __init__(self, sign: int):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * RGB_RANGE * torch.tensor(RGB_MEAN))
        self.requires_grad_(False)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """EDSR's default_conv with kernel 3: padding 1, bias."""
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class ChannelAttention(nn.Module):
    """RCAN's channel attention (official `CALayer`): global mean -> 1x1 (C -> C/r) -> ReLU -> 1x1 -> sigmoid."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(x.mean((2, 3), keepdim=True))


class BasicConv(nn.Module):
    """Conv 7x7 (no bias) + BatchNorm (momentum 0.01), no activation: official `BasicConv(..., relu=False)`."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, SPATIAL_KERNEL, padding=SPATIAL_KERNEL // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def channel_pool(x: Tensor, groups: int) -> Tensor:
    """Mean over `groups` contiguous channel groups (official `ChannelPool`): (N, C, H, W) -> (N, groups, H, W)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).mean(2)


def rotation_stack(p: Tensor) -> Tensor:
    """The four rot90 copies of square maps on the channel axis, [p, rot90(p), rot180(p), rot270(p)]:
    (N, k, S, S) -> (N, 4k, S, S), channel i k + g = rotation i of group g (not rotated back)."""
    return torch.cat([torch.rot90(p, i, dims=(2, 3)) for i in range(ROTATIONS)], dim=1)


def square_tile_starts(length: int, side: int) -> list[int]:
    """Starts of tiles of `side` covering [0, length): 0, side, 2 side, ..., and length - side last."""
    starts = list(range(0, length - side, side))
    return starts + [length - side]


class MultiPoolingSpatialAttention(nn.Module):
    """MPR-SA (official `MultiPoolingSpatialAttn`): x (N, C, H, W) -> x times a sigmoid mask of 8 maps tiled over the
    channels (channel c uses map c mod 8). For each pooling k in (1, 2, 4) the channel-pooled maps and their three
    rotations go through a 7x7 conv + BatchNorm (`spatial1..3`); the three results are summed.

    The rotations need square maps. H != W: the pooled maps are cut into square tiles of side min(H, W) along the
    longer axis (`square_tile_starts`), folded into the batch, attended as squares, and the tiles' masks are
    averaged where they overlap. A square map is a single tile: exactly the official computation.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.spatial1, self.spatial2, self.spatial3 = (BasicConv(ROTATIONS * k, SPATIAL_MAPS) for k in POOL_GROUPS)

    def square_mask(self, pooled: list[Tensor]) -> Tensor:
        """Official attention logits -> mask on square maps: pooled [(N, k, S, S)] -> (N, 8, S, S)."""
        convs = (self.spatial1, self.spatial2, self.spatial3)
        return torch.sigmoid(sum(conv(rotation_stack(p)) for conv, p in zip(convs, pooled)))

    def mask(self, x: Tensor) -> Tensor:
        """The attention mask (N, 8, H, W) of x (N, C, H, W), any H, W."""
        n, _, h, w = x.shape
        pooled = [channel_pool(x, k) for k in POOL_GROUPS]
        if h == w:
            return self.square_mask(pooled)
        side, axis, length = min(h, w), (3 if w > h else 2), max(h, w)
        starts = square_tile_starts(length, side)
        tiles = [torch.cat([p.narrow(axis, s, side) for s in starts]) for p in pooled]   # (T N, k, S, S)
        masks = self.square_mask(tiles).split(n)                                         # T x (N, 8, S, S)
        pad = (lambda s: (s, length - side - s, 0, 0)) if axis == 3 else (lambda s: (0, 0, s, length - side - s))
        total = sum(F.pad(m, pad(s)) for m, s in zip(masks, starts))
        count = torch.zeros(length, dtype=x.dtype, device=x.device)
        for s in starts:
            count[s:s + side] += 1
        return total / (count if axis == 3 else count[:, None])

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        m = self.mask(x)
        return (x.view(n, c // SPATIAL_MAPS, SPATIAL_MAPS, h, w) * m[:, None]).view(n, c, h, w)


class MixAttention(nn.Module):
    """Channel attention then MPR-SA, in series (official `MixAttn` = `common.Attn`)."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        self.attn1 = ChannelAttention(channels, reduction)
        self.attn2 = MultiPoolingSpatialAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn2(self.attn1(x))


class RCABlock(nn.Module):
    """Residual block with mixed attention (official `RCABlock`): x + MixAttn(conv(ReLU(conv(x))))."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(channels, channels), nn.ReLU(inplace=True), conv3x3(channels, channels),
                                  MixAttention(channels, reduction))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def upsampler(scale: int, channels: int, relu: bool) -> nn.Sequential:
    """EDSR's Upsampler: per x2 (or once for x3) conv 3x3 -> PixelShuffle -> ReLU (official act='relu'); without
    `relu` the ReLU is an identity, so the parameter names stay those of the official layout."""
    factors = [3] if scale == 3 else [2] * int(math.log2(scale))
    if scale != 3 and 2 ** len(factors) != scale:
        raise ValueError(f'SRNet upsamples by powers of 2 or by 3, got scale {scale}')
    layers = []
    for f in factors:
        layers += [conv3x3(channels, f * f * channels), nn.PixelShuffle(f),
                   nn.ReLU(inplace=True) if relu else nn.Identity()]
    return nn.Sequential(*layers)


class Branch(nn.Module):
    """One EDSR-style branch: head conv, 16 RCABlocks + conv (body), upsampler + conv (tail). The RAT branch
    (official `EDSR_SSL`) is one; the main branch reuses the parts and fuses the RAT features in between."""

    def __init__(self, config: SRNetConfig):
        super().__init__()
        c = config.n_feats
        self.sub_mean = MeanShift(-1)
        self.add_mean = MeanShift(+1)
        self.head = nn.Sequential(conv3x3(3, c))
        self.body = nn.Sequential(*(RCABlock(c, config.reduction) for _ in range(config.n_resblocks)),
                                  conv3x3(c, c))
        self.tail = nn.Sequential(upsampler(config.scale_factor, c, config.upsampler_relu), conv3x3(c, 3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """RAT branch: x (N, 3, H, W) 0-255 -> (Diff prediction (N, 3, sH, sW), shallow F0, deep F0 + body(F0))."""
        shallow = self.head(self.sub_mean(x))
        deep = self.body(shallow) + shallow
        return self.add_mean(self.tail(deep)), shallow, deep


@dataclass
class SRNetOutput(StereoSROutput):
    """sr_left, sr_right: (B, 3, sH, sW) in [0, 1] units, not clamped; diff_left, diff_right: the RAT branch's Diff
    predictions, same shape and units (they carry the +mean offset of `add_mean`); diff_resample: how the Diff labels
    of this network are made (`diff_labels`)."""

    diff_left: Tensor
    diff_right: Tensor
    diff_resample: str = 'nearest'


class SRNet(nn.Module):
    """SRNet (official `EDSR_Zoom`) on each view of a stereo pair. forward(left, right): LR views (B, 3, H, W) in
    [0, 1], any H, W -> `SRNetOutput`; both views run as one batch [left; right] through `zoom`. Registration order
    = official state_dict order."""

    def __init__(self, config: SRNetConfig | None = None):
        super().__init__()
        self.config = config = config or SRNetConfig()
        if config.diff_resample not in DIFF_RESAMPLES:
            raise ValueError(f'diff_resample must be one of {DIFF_RESAMPLES}, got {config.diff_resample!r}')
        if config.scale_factor not in SCALES:
            raise ValueError(f'scale_factor must be one of {SCALES}, got {config.scale_factor}')
        self.scale = config.scale_factor
        self.min_input_size = (1, 1)
        self.input_multiple = 1
        c = config.n_feats
        self.sub_mean = MeanShift(-1)
        self.add_mean = MeanShift(+1)
        self.model_ssl = Branch(config)                                # the residual-aware auxiliary task (RAT)
        self.CALayer_head = MixAttention(c, config.reduction)
        self.CALayer_tail = MixAttention(c, config.reduction)
        main = Branch(config)                                          # the deep fusion zoom branch's parts
        self.head, self.body, self.tail = main.head, main.body, main.tail

    def zoom(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, 3, H, W) in 0-255 -> (SR, Diff prediction), each (N, 3, sH, sW) in 0-255 (official forward)."""
        diff, rat_shallow, rat_deep = self.model_ssl(x)
        head = self.head(self.sub_mean(x))
        fused = head + rat_deep if self.config.add_rat_features else head - rat_deep      # official: minus
        fused = self.CALayer_head(fused)
        res = self.CALayer_tail(self.body(fused) + rat_shallow)
        return self.add_mean(self.tail(res + fused)), diff                             # long skip from `fused`

    def forward(self, left: Tensor, right: Tensor) -> SRNetOutput:
        validate_pair(left, right)
        sr, diff = self.zoom(torch.cat([left, right]) * RGB_RANGE)
        sr, diff = Pair.unfold(sr / RGB_RANGE), Pair.unfold(diff / RGB_RANGE)
        return SRNetOutput(sr_left=sr.left, sr_right=sr.right, diff_left=diff.left, diff_right=diff.right,
                           diff_resample=self.config.diff_resample)


# ---------------------------------------------------------------------------------------------------------------
# The Diff labels of generate_s_label.py, on the fly


def pil_filter3x3(img: Tensor, kernel: tuple, scale: int) -> Tensor:
    """Pillow's ImageFilter 3x3 kernel on uint8-valued images (N, C, H, W), exactly as its C code computes it: float32
    weights kernel / scale; per pixel the rows below, at and above it (in that order, with the kernel's rows 1, 2, 3)
    are each summed left to right and accumulated; the result + 0.5 is truncated and clipped to [0, 255]. The
    1-pixel image border is copied unchanged. Returns float32 integers."""
    weights = [w / scale for w in torch.tensor(kernel, dtype=torch.float32).flatten().tolist()]
    weights = torch.tensor(weights, dtype=torch.float32, device=img.device)
    x = img.float()
    h, w = x.shape[-2:]

    def tap(dy: int, dx: int) -> Tensor:
        return x[..., 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]

    total = torch.zeros_like(tap(0, 0))
    for i, dy in enumerate((1, 0, -1)):
        row = tap(dy, -1) * weights[3 * i] + tap(dy, 0) * weights[3 * i + 1]
        total = total + (row + tap(dy, 1) * weights[3 * i + 2])
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.trunc(total + 0.5).clamp(0, 255)
    return out


def pil_upsample(lr: Tensor, size: tuple[int, int], resample: str) -> Tensor:
    """PIL Image.resize of uint8-valued RGB images (N, 3, h, w) to `size` (H, W): 'nearest' (Pillow < 7's default;
    pixel replication for an integer factor, computed here) or 'bicubic' (Pillow >= 7's default; run by Pillow)."""
    if resample == 'nearest':
        h, w = lr.shape[-2:]
        rows = torch.div((torch.arange(size[0], device=lr.device) * 2 + 1) * h, 2 * size[0], rounding_mode='floor')
        cols = torch.div((torch.arange(size[1], device=lr.device) * 2 + 1) * w, 2 * size[1], rounding_mode='floor')
        return lr[..., rows, :][..., cols]
    from PIL import Image
    out = []
    for image in lr.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
        up = Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(up)).permute(2, 0, 1))
    return torch.stack(out).to(lr)


def diff_labels(lr: Tensor, hr: Tensor, resample: str = 'nearest') -> Tensor:
    """The Diff label of generate_s_label.py: DETAIL(EDGE_ENHANCE_MORE(|HR - resize(LR, HR size)|)) with Pillow's
    filters, on 8-bit images. lr (N, 3, h, w), hr (N, 3, H, W) in [0, 1] (rounded to 8 bit first, as the PNGs the
    script read) -> (N, 3, H, W) in [0, 1]. `resample`: the upsampling of `Image.resize` without a resample argument,
    nearest for the Pillow of the logged 2019 runs (default), bicubic for Pillow >= 7 (official generate_s_label.py:49
    calls `img_lr.resize(img.size)`)."""
    lr8, hr8 = (torch.floor(x.detach().float().clamp(0, 1) * 255 + 0.5) for x in (lr, hr))
    difference = (hr8 - pil_upsample(lr8, hr8.shape[-2:], resample)).abs()          # ImageChops.difference
    label = pil_filter3x3(pil_filter3x3(difference, *EDGE_ENHANCE_MORE), *DETAIL)
    return (label / 255).to(hr.dtype)


class SRNetLoss(Objective):
    """SRNet's hybrid L1 (official ssl_trainer: 1*L1(sr, HR) + 1*L1(diff_pred, Diff)), over both views as one
    batch; the Diff labels are made from each LR/HR patch on the fly exactly as generate_s_label.py (`diff_labels`,
    with the network's `diff_resample`). In [0, 1] units (the official 0-255 scales both terms alike)."""

    DEFAULT_WEIGHTS: ClassVar[dict[str, float]] = {'sr': 1.0, 'diff': 1.0}

    def forward(self, out: SRNetOutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        hr, lr = torch.cat([hr_left, hr_right]), torch.cat([lr_left, lr_right])
        labels = diff_labels(lr, hr, out.diff_resample)
        terms = {'sr': F.l1_loss(torch.cat([out.sr_left, out.sr_right]), hr),
                 'diff': F.l1_loss(torch.cat([out.diff_left, out.diff_right]), labels)}
        return self.weighted_total(terms)


def build(scale_factor: int = 4, srnet_add_rat_features: bool = False, srnet_no_upsampler_relu: bool = False,
          srnet_diff_resample: str = 'nearest', **config) -> SRNet:
    return SRNet(SRNetConfig(scale_factor=scale_factor, add_rat_features=srnet_add_rat_features,
                             upsampler_relu=not srnet_no_upsampler_relu, diff_resample=srnet_diff_resample or 'nearest',
                             **config))


register_model(ModelEntry(
    name='srnet',
    build=build,
    criterion=SRNetLoss,
    recipe=Recipe(
        source='official README command and experiment_ablation/EDSRCA_SAT_MSAx4/config.txt + ssl_trainer.py: Adam '
               '(0.9, 0.999) lr 1e-4, batch 16, L1(SR) + L1(Diff), lr x0.5 every 100 epochs (milestones 100-200-300-'
               '400), 500 epochs (its restart; the log ends at 200); HR patches 256 there, our 30x90 LR patches here',
        batch_size=16, optimizer='adam', lr=1e-4, schedule='step', n_steps=100, gamma=0.5, n_epochs=500),
    scales=SCALES,
    options=(
        Option('srnet_add_rat_features', dict(
            action='store_true',
            help="SRNet: add the RAT branch's deep features to the main head features, as the paper figure draws "
                 "(the official code subtracts them; kept by default)"),
            of_weights=True),
        Option('srnet_no_upsampler_relu', dict(
            action='store_true',
            help='SRNet: no ReLU after each PixelShuffle (EDSR\'s upsampler; the official code has one; kept by '
                 'default)'),
            of_weights=True),
        Option('srnet_diff_resample', dict(
            choices=DIFF_RESAMPLES, default='nearest',
            help='SRNet training: upsampling of the LR view in the Diff labels (generate_s_label.py calls PIL '
                 'Image.resize without a resample argument: nearest before Pillow 7, the logged 2019 runs (default); '
                 'bicubic since)'),
            of_weights=True),
    ),
    description='two EDSR branches with channel + multi-pooling rotation spatial attention and a residual-aware '
                'auxiliary task, per view',
    title='SRNet',
    paper='Self-supervised Residual-aware Network for Digital Zoom (anonymous; code selous123/SRNet-zoom-pytorch)',
))

__all__ = ['SRNet', 'SRNetConfig', 'SRNetLoss', 'SRNetOutput', 'diff_labels', 'MultiPoolingSpatialAttention']
