"""iPASSR: symmetric parallax attention for stereo image SR (Wang et al., "Symmetric Parallax Attention for Stereo
Image Super-Resolution", CVPRW 2021), its training objective and its entry in the zoo.

A Siamese network: both views share every weight. Per view, features are extracted by a residual dense group; the
bi-directional parallax attention module (biPAM) exchanges them along epipolar rows, blended by occlusion-aware
valid masks; a fusion block and a second residual dense group reconstruct the residual of a bicubic upsampling.
The views are folded into one batch as [left; right] wherever that is exactly what the official two calls compute;
the PAM BatchNorm keeps per-view statistics (`PAMBatchNorm`).

Attribute names and their registration order are those of the official `Net` (`YingqianWang/iPASSR` @e1ffe06 model.py;
the test.py:N and train.py:N cited below are lines of that commit),
so the state_dict matches `ipassr_x{2,4}_state_dict.json` and the authors' checkpoints load strictly. Equivalence
with the official code: tests/test_ipassr_parity.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.kernels import HeadConv2d, PointwiseConv2d, activation_format
from models.layers import (ChannelAttention, GroupResBlock, ResidualDenseBlock, ResidualDenseGroup,
                           ViewwiseBatchNorm2d, leaky_relu)
from models.outputs import Pair, StereoSROutput, validate_pair
from models.parallax import cycle_valid_mask, transfer
from models.registry import ModelEntry, Option, Recipe, register_model
from models.stereo_losses import (Correspondence, Objective, attention_smoothness, cycle_consistency,
                                  illumination_residuals, view_consistency)

# Feature width, dense-layer growth, dense layers per RDB and RDBs per RDG (official Net: G0=64, G=24, C=4, n_RDB=4).
CHANNELS = 64
GROWTH = 24
DENSE_LAYERS = 4
DENSE_BLOCKS = 4
# The fusion RDB works on [own; transferred] features, twice as wide, with growth 32 (official RDB(128, 4, 32)).
FUSION_GROWTH = 32
# Channel-attention reduction in the fusion block (official CALayer: channel // 16).
ATTENTION_REDUCTION = 16
# The PAM's query/key convolutions and its residual block are grouped by RDB: 4 groups of 64 channels (official).
PAM_GROUPS = DENSE_BLOCKS
SCALES = (2, 4)


@dataclass
class IPASSRConfig:
    """Hyperparameters of iPASSR; defaults are the paper's and the official code's."""

    scale_factor: int = 4
    # The official test.py never calls eval(), so the PAM BatchNorm normalises each call (one view, batch 1) with
    # its own statistics at test time (official test.py:19-21). True reproduces that in eval mode; the authors'
    # numbers need it.
    bn_batch_stats: bool = False


def validate_inputs(left: Tensor, right: Tensor, batch_statistics: bool) -> None:
    """Raise ValueError, before any computation, if an LR pair is not something the network accepts."""
    _, h, w = validate_pair(left, right)
    if batch_statistics and h * w < 2:
        raise ValueError(f"the PAM BatchNorm normalises with batch statistics here (training mode or bn_batch_stats, "
                         f"one image at a time in eval), which needs at least 2 pixels per image, got "
                         f"{tuple(left.shape)}")


class PAMBatchNorm(ViewwiseBatchNorm2d):
    """The PAM's BatchNorm2d on [left; right] folded views: per-view batch statistics in training mode (as the official
    two calls), running statistics in eval mode, or, with `batch_stats_in_eval`, the statistics of each image of each
    view in eval mode, without touching the running buffers: what the official test.py computes (test.py:19-21 never
    calls eval()), which runs one pair per call, so that a batch of pairs gives each pair the authors' numbers."""

    def __init__(self, num_features: int, batch_stats_in_eval: bool = False):
        super().__init__(num_features)
        self.batch_stats_in_eval = batch_stats_in_eval

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not self.batch_stats_in_eval:
            return super().forward(x)
        return torch.cat([F.batch_norm(image, None, None, self.weight, self.bias, True, 0.0, self.eps)
                          for image in x.split(1)])


class BiParallaxAttention(nn.Module):
    """biPAM (paper Sec. 3.2, official `PAM`): one symmetric score matrix per image row gives the attention in both
    directions; each view receives the other's features where the left-right-left cycle is consistent.

    features: (2B, 64, H, W) as [left; right], the deep features to exchange;
    blocks:   (2B, 256, H, W), the concatenated RDB outputs they came from, for matching.
    Returns (blended features (2B, 64, H, W), Pair(M_right_to_left, M_left_to_right) each (B*H, W, W) with rows
    summing to 1, Pair(V_left, V_right) each (B, 1, H, W) in [0, 1], detached).
    """

    def __init__(self, channels: int = CHANNELS, batch_stats_in_eval: bool = False):
        super().__init__()
        width = PAM_GROUPS * channels
        self.bq = nn.Conv2d(width, channels, 1, 1, 0, groups=PAM_GROUPS, bias=True)
        self.bs = nn.Conv2d(width, channels, 1, 1, 0, groups=PAM_GROUPS, bias=True)
        self.rb = GroupResBlock(width, PAM_GROUPS, leaky_relu)
        self.bn = PAMBatchNorm(width, batch_stats_in_eval)

    def forward(self, features: Tensor, blocks: Tensor) -> tuple[Tensor, Pair, Pair]:
        matching = Pair.unfold(self.rb(self.bn(blocks)))        # shared by the views; BN statistics per view
        query = self.bq(matching.left)
        key = self.bs(matching.right)
        # Centred along the width so that a constant offset of a row cannot dominate its scores.
        query = query - query.mean(3, keepdim=True)
        key = key - key.mean(3, keepdim=True)
        b, c, h, w = query.shape
        score = torch.bmm(query.permute(0, 2, 3, 1).reshape(b * h, w, c),      # (N, W_left, C), N = B*H
                          key.permute(0, 2, 1, 3).reshape(b * h, c, w))        # (N, C, W_right); no 1/sqrt(C)
        # float32 at least: under autocast the softmax of half-precision scores would lose the sharp matches
        score = score.to(torch.promote_types(score.dtype, torch.float32))
        attention = Pair(torch.softmax(score, dim=-1),                    # M_right_to_left (N, W_left, W_right)
                         torch.softmax(score.transpose(1, 2), dim=-1))    # M_left_to_right (N, W_right, W_left)
        valid = Pair(cycle_valid_mask(attention.left, attention.right).view(b, 1, h, w),
                     cycle_valid_mask(attention.right, attention.left).view(b, 1, h, w))

        own = Pair.unfold(features)
        transferred = Pair(transfer(attention.left, own.right), transfer(attention.right, own.left))
        blended = torch.cat([o * (1 - v) + t * v for o, t, v in zip(own, transferred, valid)])
        return blended, attention, valid


@dataclass
class IPASSROutput(StereoSROutput):
    """One forward pass of iPASSR, the same in train and eval mode. B batch, (H, W) LR size, s scale.

    sr_left, sr_right: (B, 3, sH, sW), not clamped.
    attention: Pair(M_right_to_left, M_left_to_right), each (B, H, W, W); M_right_to_left[b, y, i, j] is the weight
               of right column j for left pixel (y, i); each last-axis row sums to 1.
    valid:     Pair(V_left, V_right), each (B, 1, H, W): tanh(5 x cycle mass), detached; in [0, 1) (float32 rounds
               it to 1 once the mass exceeds ~1.8).
    """

    attention: Pair
    valid: Pair


class IPASSR(nn.Module):
    """iPASSR, x2 or x4. forward(left, right): LR views (B, 3, H, W) in [0, 1] -> `IPASSROutput`.

    `self.training` (set by .train()/.eval()) switches the PAM BatchNorm only; everything is always returned.
    """

    def __init__(self, config: IPASSRConfig | None = None):
        super().__init__()
        self.config = config = config or IPASSRConfig()
        scale = config.scale_factor
        if scale not in SCALES:
            raise ValueError(f"scale_factor must be one of {SCALES}, got {scale}")
        self.scale = scale
        # Any size works; BatchNorm with batch statistics needs two pixels of a view, which (1, 2) guarantees.
        self.min_input_size = (1, 2)
        self.input_multiple = 1

        # Registration order below = official state_dict order.
        # Feature extraction (Siamese)
        self.init_feature = nn.Conv2d(3, CHANNELS, 3, 1, 1, bias=True)
        self.deep_feature = ResidualDenseGroup(CHANNELS, DENSE_LAYERS, GROWTH, DENSE_BLOCKS, leaky_relu)
        # Cross-view interaction
        self.pam = BiParallaxAttention(CHANNELS, batch_stats_in_eval=config.bn_batch_stats)
        # Fusion of each view's own and transferred features
        self.fusion = nn.Sequential(
            ResidualDenseBlock(2 * CHANNELS, DENSE_LAYERS, FUSION_GROWTH, leaky_relu),
            ChannelAttention(2 * CHANNELS, ATTENTION_REDUCTION, leaky_relu),
            nn.Conv2d(2 * CHANNELS, CHANNELS, 1, 1, 0, bias=True),
        )
        # Reconstruction and sub-pixel upsampling (of the residual to the bicubic upsampling)
        self.reconstruct = ResidualDenseGroup(CHANNELS, DENSE_LAYERS, GROWTH, DENSE_BLOCKS, leaky_relu)
        self.upscale = nn.Sequential(
            PointwiseConv2d(CHANNELS, CHANNELS * scale ** 2),
            nn.PixelShuffle(scale),
            HeadConv2d(CHANNELS, 3),
        )

    def forward(self, left: Tensor, right: Tensor) -> IPASSROutput:
        validate_inputs(left, right, self.training or self.pam.bn.batch_stats_in_eval)
        lr = torch.cat([left, right]).contiguous(memory_format=activation_format(left, self))   # (2B, 3, H, W)
        upsampled = F.interpolate(lr, scale_factor=self.scale, mode='bicubic', align_corners=False)
        features, blocks = self.deep_feature.forward_with_blocks(self.init_feature(lr))  # (2B, 64 | 256, H, W)
        exchanged, attention, valid = self.pam(features, blocks)
        fused = self.fusion(torch.cat([features, exchanged], dim=1))                  # (2B, 128 -> 64, H, W)
        # HR maps one view at a time: at the x4 training batch a 64-channel HR map of both views outgrows the heap
        # blocks glibc reuses (kernels.AUTOGRAD_TENSOR_BYTES) and each step would zero-fill fresh pages
        sr = Pair(*(self.upscale(x) + up for x, up in zip(self.reconstruct(fused).chunk(2), upsampled.chunk(2))))
        b, _, h, w = left.shape
        return IPASSROutput(sr_left=sr.left, sr_right=sr.right,
                            attention=attention.map(lambda m: m.view(b, h, w, w)), valid=valid)


class IPASSRLoss(Objective):
    """The training objective of iPASSR (official train.py; paper Sec. 3.3), every term at LR resolution but `sr`:

    total = sr + 0.1 cons + 0.1 (photo + smooth + cycle)

    loss(out, lr_left, lr_right, hr_left, hr_right) -> {'sr', 'cons', 'photo', 'smooth', 'cycle', 'total'} for an
    `IPASSROutput`; LR (B, 3, H, W), HR (B, 3, sH, sW), in [0, 1]. As in the official code, masked terms divide by
    all elements, the valid masks carry no gradient and `cons` sees the attention detached.
    """

    DEFAULT_WEIGHTS: ClassVar[dict[str, float]] = {'sr': 1.0, 'cons': 0.1, 'photo': 0.1, 'smooth': 0.1, 'cycle': 0.1}

    def forward(self, out: IPASSROutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        hr = Pair(hr_left, hr_right)
        _, residual = illumination_residuals(hr, Pair(lr_left, lr_right), self.scale)   # LR (B, 3, H, W)
        corr = Correspondence.from_attention(out.attention)
        # SR errors brought to LR, where the attention lives
        error = Pair(*((h - sr).abs() for h, sr in zip(hr, (out.sr_left, out.sr_right)))).map(
            lambda x: F.interpolate(x, scale_factor=1 / self.scale, mode='bicubic', align_corners=False))
        terms = {
            # L_SR: L1 to the HR views
            'sr': F.l1_loss(out.sr_left, hr.left) + F.l1_loss(out.sr_right, hr.right),
            # L_cons: SR errors consistent across views (attention detached: it trains the SR path only)
            'cons': view_consistency(error, Correspondence.from_attention(out.attention, detach=True), out.valid),
            # L_photo: each view's illuminance-robust residual explained by the other view's
            'photo': view_consistency(residual, corr, out.valid),
            # L_smooth: attention smooth along the height and along the diagonal
            'smooth': attention_smoothness(out.attention),
            # L_cycle: residuals taken to the other view and back are unchanged
            'cycle': cycle_consistency(residual, corr, out.valid),
        }
        return self.weighted_total(terms)


def build(scale_factor: int = 4, **options) -> IPASSR:
    return IPASSR(IPASSRConfig(scale_factor=scale_factor, **options))


def release_options(checkpoint: dict) -> dict:
    """The authors' checkpoints ({'epoch', 'state_dict'} or a bare state_dict; ours always carry 'version') were
    evaluated by test.py with batch-statistics BatchNorm, so their published numbers need `bn_batch_stats`."""
    return {} if 'version' in checkpoint else {'bn_batch_stats': True}


register_model(ModelEntry(
    name='ipassr',
    build=build,
    criterion=IPASSRLoss,
    recipe=Recipe(source='official train.py defaults', batch_size=36, optimizer='adam', lr=2e-4, schedule='step',
                  n_steps=30, gamma=0.5, n_epochs=80),
    scales=SCALES,
    options=(
        Option('bn_batch_stats', dict(
            action='store_true',
            help="iPASSR: normalise the PAM BatchNorm with each call's batch statistics, one view at a time, also in "
                 "eval mode, as the official test.py does (it never calls eval()); implied by the authors' "
                 "checkpoints, whose published numbers need it")),
    ),
    release_options=release_options,
    description='Siamese stereo SR with bi-directional parallax attention and occlusion-aware valid masks',
    title='iPASSR',
    paper='Wang et al., Symmetric Parallax Attention for Stereo Image Super-Resolution, CVPRW 2021',
))

__all__ = ['IPASSR', 'IPASSRConfig', 'IPASSRLoss', 'IPASSROutput']
