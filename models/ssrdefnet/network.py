"""SSRDE-FNet: the recursive stereo SR + disparity network that wires the paper's concepts together.

Dai et al., "Feedback Network for Mutually Boosted Stereo Image Super-Resolution and Disparity Estimation",
ACM MM 2021. One recursion = LR features -> parallax attention (PAM) -> SR reconstruction -> HR disparity from a
local cost volume -> HR feature interaction. Between the two recursions, the HR disparity feedback (HRDIF) rebuilds
the LR features. Both views share all weights; they are folded into the batch as [left; right].

Module attribute names and their registration order are exactly those of the official `SSRDEFNet`, so the state_dict
matches `ssrdefnet_x{2,4}_state_dict.json` and the authors' checkpoint loads. Equivalence with the official code is
checked by tests/test_official_parity.py.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from models.kernels import HeadConv2d, PointwiseConv2d, activation_format, one_view, recomputing
from models.layers import ChannelAttention, ConvBlock, ResidualDenseBlock, ResidualDenseGroup
from models.outputs import Pair, validate_pair
from models.ssrdefnet.blocks import transition
from models.ssrdefnet.cost_volume import (CostVolume, Hourglass, aggregation_block, disparity_hypotheses,
                                          soft_argmax, warp)
from models.ssrdefnet.features import hr_matching_feature, lr_matching_feature
from models.ssrdefnet.feedback import FeedbackBlock, feedback_features, subpixel_draft
from models.ssrdefnet.interaction import correlation_gate, hr_valid_mask
from models.ssrdefnet.outputs import SSRDEFNetOutput
from models.ssrdefnet.parallax_attention import PAMOutput, ParallaxAttention

# Feature width of the whole network and growth rate of its dense blocks (official G0 = 64, G = 24).
CHANNELS = 64
GROWTH = 24
# Smallest LR height and width: the 30x30 average pool of the LR matching features (official model.py:358).
MIN_LR_SIZE = 30
# Down-projection of HRDIF (official `down`): (kernel, stride, padding) per scale; maps sH x sW exactly to H x W.
DOWN_PROJECTION = {2: (6, 2, 2), 4: (8, 4, 2)}


@dataclass
class SSRDEFNetConfig:
    """Hyperparameters of SSRDE-FNet; defaults are the paper's and the official code's."""

    scale_factor: int = 4
    # Official quirk (model.py:552-554 sets the x coordinates to the right view's hypotheses but never normalises
    # them again): the right-view cost volume samples at the *left* view's hypotheses. The released
    # weights were trained with it, so it stays on by default; True samples at the right view's own hypotheses.
    fix_right_cost_volume: bool = False
    # Activation recomputation in training: keep only the inputs of each stage and recompute the rest during the
    # backward pass. Same results, much less memory, about a third more time.
    grad_checkpoint: bool = False


def validate_inputs(left: Tensor, right: Tensor, scale_factor: int) -> None:
    """Raise ValueError, before any computation, if an LR pair is not something the network accepts."""
    _, h, w = validate_pair(left, right)
    if h < MIN_LR_SIZE or w < MIN_LR_SIZE:
        raise ValueError(f"LR images must be at least {MIN_LR_SIZE}x{MIN_LR_SIZE} pixels (the network pools "
                         f"{MIN_LR_SIZE}x{MIN_LR_SIZE} windows), got {h}x{w}; pad or upsample the input")
    if scale_factor == 2 and (h % 2 or w % 2):
        raise ValueError(f"at x2 the LR height and width must be even (the HR hourglass halves them twice), "
                         f"got {h}x{w}; crop or pad one row/column")


def per_view(fn, *views: Pair) -> Pair:
    """Pair(fn(*lefts), fn(*rights)) for arguments given as Pairs of views: an HR stage, one view at a time.

    The network keeps its HR maps as separate views, never as one [left; right] batch: in evaluation that halves the
    peak memory, and in training each HR map stays half as large. At the paper's x4 patches (batch 2, 120x360 HR) a
    64-channel map is then 22 MB instead of 44 MB, within the heap blocks glibc reuses
    (kernels.AUTOGRAD_TENSOR_BYTES) rather than fresh pages zero-filled by the kernel at every step. Training-mode
    BatchNorm normalises each call's batch as one view (`one_view`), as the official network, which calls every
    module once per view, does.
    """
    with one_view():
        return Pair(fn(*(v.left for v in views)), fn(*(v.right for v in views)))


def per_view_pair(fn, x: Tensor, *extras: Tensor) -> Tensor:
    """fn(own, other, *extras) for LR maps x = [left; right] on dim 0 (`per_view` of the views, `other` being the
    opposite view and `extras` split like x), stacked again; no copy of the swapped views is made."""
    views = Pair.unfold(x)
    return torch.cat(per_view(fn, views, views.swapped(), *(Pair.unfold(t) for t in extras)))


class SSRDEFNet(nn.Module):
    """SSRDE-FNet, x2 or x4.

    forward(left, right): LR views (B, 3, H, W) in [0, 1] -> `SSRDEFNetOutput` (see models/outputs.py), the same
    type in train and eval mode. `self.training` (set by .train()/.eval()) only switches BatchNorm, as in the
    official code; all intermediate outputs are always returned.
    """

    def __init__(self, config: SSRDEFNetConfig | None = None):
        super().__init__()
        self.config = config = config or SSRDEFNetConfig()
        scale = config.scale_factor
        if scale not in DOWN_PROJECTION:
            raise ValueError(f"scale_factor must be one of {sorted(DOWN_PROJECTION)}, got {scale}")
        self.scale = scale
        # what models/inference.py pads an LR pair to: at least 30x30, even sizes at x2 (see validate_inputs)
        self.min_input_size = (MIN_LR_SIZE, MIN_LR_SIZE)
        self.input_multiple = 2 if scale == 2 else 1
        # evaluation peak memory per LR pixel (CPU, float32), fitted to measured peak RSS: x4, full-width bands of
        # 32 and 64 LR rows x 1000 columns: 2.50 and 4.35 GB; x2, a whole 512x368 LR pair: 4.14 GB (demo.py)
        self.eval_bytes_per_lr_pixel = {4: 58_000, 2: 19_000}

        # Registration order below = official state_dict order. Comments name the paper concept of each module.
        # LR feature extraction (shared by both views)
        self.init_feature = nn.Conv2d(3, CHANNELS, 3, 1, 1, bias=True)
        self.deep_feature = ResidualDenseGroup(CHANNELS, num_layers=4, growth=GROWTH, num_blocks=4)
        # LR parallax attention, its matching features and its fusion
        self.pam = ParallaxAttention(CHANNELS)
        self.transition = transition(CHANNELS)
        # HR matching features (cost volume input)
        self.transition2 = transition(CHANNELS)
        self.StereoFea = lr_matching_feature()
        self.StereoFeaHigh = hr_matching_feature()
        self.encode = ResidualDenseBlock(CHANNELS, num_layers=6, growth=GROWTH)       # fuses PAM output (LR)
        self.encoder2 = ResidualDenseBlock(CHANNELS, num_layers=6, growth=GROWTH)     # fuses HR interaction (HR)
        self.CALayer2 = ChannelAttention(CHANNELS, 8)                                  # after HR interaction
        self.CALayer = ChannelAttention(CHANNELS, 8)                                   # after PAM fusion
        # SR reconstruction
        self.reconstruct = ResidualDenseGroup(CHANNELS, num_layers=4, growth=GROWTH, num_blocks=4)
        self.upscale = nn.Sequential(nn.Conv2d(CHANNELS, CHANNELS * scale ** 2, 1, 1, 0, bias=True),
                                     nn.PixelShuffle(scale))
        self.final = HeadConv2d(CHANNELS, 3)       # SR head of the LR branch (out1, out3)
        self.final2 = HeadConv2d(CHANNELS, 3)      # SR head after HR interaction (out2, out4)
        # HR cost volume and its aggregation
        self.get_cv = CostVolume(GROWTH)
        self.dres0 = aggregation_block(final_activation=True)
        self.dres1 = aggregation_block(final_activation=False)
        self.dres2 = Hourglass()
        # HR feature interaction gate
        self.att1 = PointwiseConv2d(CHANNELS, 32)
        self.att2 = PointwiseConv2d(CHANNELS, 32)
        # HRDIF feedback
        self.backatt1 = nn.Conv2d(CHANNELS, 32, 1, 1, 0)
        self.backatt2 = nn.Conv2d(CHANNELS, 32, 1, 1, 0)
        self.feedbackatt = FeedbackBlock(CHANNELS)
        self.down = ConvBlock(CHANNELS, CHANNELS, *DOWN_PROJECTION[scale])
        self.compress_in = nn.Conv2d(2 * CHANNELS, CHANNELS, 1, bias=True)
        self.resblock = ResidualDenseBlock(CHANNELS, num_layers=2, growth=GROWTH)

    # ---------------------------------------------------------------------------------------------------------
    def forward(self, left: Tensor, right: Tensor) -> SSRDEFNetOutput:
        validate_inputs(left, right, self.scale)
        lr = torch.cat([left, right]).contiguous(memory_format=activation_format(left, self))   # (2B, 3, H, W)
        upsampled = Pair.unfold(F.interpolate(lr, scale_factor=self.scale, mode='bicubic', align_corners=False))
        features = self.stage(lambda x: self.deep_feature(self.init_feature(x)), lr)   # (2B, 64, H, W)

        out = SSRDEFNetOutput(sr=[], attention=[], valid_lr=[], valid_hr=[], coords_lr=[], coords_hr=[])
        refined, coords_hr = self.recursion(features, upsampled, out)           # recursion 1
        features = self.stage(self.hr_disparity_feedback, features, refined, coords_hr)   # HRDIF, once
        del refined                                                             # (frees HR memory in evaluation)
        self.recursion(features, upsampled, out)                                # recursion 2
        return out

    def matching(self, left: Tensor, right: Tensor) -> Pair:
        """Recursion 1's LR parallax-attention correspondence alone, as `forward` computes it (its `coords_lr[0]`):
        a Pair of (B, 1, sH, sW) coordinates in HR pixels. Only the LR feature extractor, the matching features and
        the PAM run (no SR or HR branch): what a matching warm-up on ground-truth disparity trains
        (train.py --stage matching), about a third of a full step's time at x4."""
        validate_inputs(left, right, self.scale)
        lr = torch.cat([left, right]).contiguous(memory_format=activation_format(left, self))
        features = self.deep_feature(self.init_feature(lr))
        pam = self.pam(features, self.StereoFea(self.transition(features)))
        return Pair.unfold(F.interpolate(pam.coords * self.scale, scale_factor=self.scale, mode='bilinear',
                                         align_corners=False))

    def stage(self, fn, *args):
        """fn(*args), with activation recomputation when `grad_checkpoint` is on in training: only the stage's inputs
        and outputs are kept, its inside is recomputed in the backward pass (BatchNorm running statistics are
        updated once, see `recomputing`)."""
        if not (self.config.grad_checkpoint and self.training and torch.is_grad_enabled()):
            return fn(*args)
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False,
                                                 context_fn=lambda: (contextlib.nullcontext(), recomputing()))

    def recursion(self, features: Tensor, upsampled: Pair, out: SSRDEFNetOutput):
        """One recursion on LR features (2B, 64, H, W) as [left; right]; appends its outputs to `out`.

        HR maps are Pairs of views (see `per_view`). Returns the refined HR features, a Pair of (B, 64, sH, sW), and
        the HR coordinates (2B, 1, sH, sW) for the feedback.
        """
        s = self.scale
        # LR stage: parallax attention and SR reconstruction
        pam, hr_features = self.stage(self.lr_stage, features)                 # Pair of (B, 64, sH, sW)
        sr_lr = per_view(lambda x, up: self.final(x) + up, hr_features, upsampled)

        # HR disparity: hypotheses around the upsampled PAM coordinates, cost volume, aggregation, soft-argmax
        coords_lr = F.interpolate(pam.coords * s, scale_factor=s, mode='bilinear', align_corners=False)
        coords_hr = self.stage(self.hr_disparity, hr_features, coords_lr)

        refined = self.stage(self.hr_interaction, hr_features, coords_hr)
        sr_hr = per_view(lambda x, up: self.final2(x) + up, refined, upsampled)

        out.sr += [sr_lr, sr_hr]
        out.attention.append(Pair(*pam.attention))
        out.valid_lr.append(Pair.unfold(pam.valid))
        out.valid_hr.append(Pair.unfold(hr_valid_mask(coords_hr, pam.valid, s)))
        out.coords_lr.append(Pair.unfold(coords_lr))
        out.coords_hr.append(Pair.unfold(coords_hr))
        out.coords_pam.append(Pair.unfold(pam.coords))
        return refined, coords_hr

    def lr_stage(self, features: Tensor) -> tuple[PAMOutput, Pair]:
        """Parallax attention on LR features (2B, 64, H, W), fusion, reconstruction and upsampling to HR features
        (a Pair of (B, 64, sH, sW))."""
        pam = self.pam(features, self.StereoFea(self.transition(features)))
        fused = self.CALayer(features + self.encode(pam.features - features))
        return pam, per_view(lambda x: self.upscale(self.reconstruct(x)), Pair.unfold(fused))

    def hr_disparity(self, hr_features: Pair, coords_lr: Tensor) -> Tensor:
        """HR coordinates (2B, 1, sH, sW) regressed over 24 hypotheses around `coords_lr` (2B, 1, sH, sW)."""
        matching = torch.cat(per_view(lambda x: self.StereoFeaHigh(self.transition2(x)), hr_features))  # 24 channels
        hypotheses = disparity_hypotheses(coords_lr.detach(), max_coord=matching.shape[3])
        if self.config.fix_right_cost_volume:
            sample_at = hypotheses
        else:  # official quirk Q1: both views' costs are sampled at the left view's hypotheses
            left_hypotheses = hypotheses.chunk(2)[0]
            sample_at = torch.cat([left_hypotheses, left_hypotheses])
        cost = self.get_cv(matching, sample_at)
        cost = self.dres0(cost)
        cost = self.dres1(cost) + cost
        cost = self.dres2(cost) + cost
        return soft_argmax(cost, hypotheses)

    def hr_interaction(self, hr_features: Pair, coords_hr: Tensor) -> Pair:
        """Refined HR features, a Pair of (B, 64, sH, sW): the other view's HR features, warped by the HR disparity,
        fused through a correlation gate, a residual dense block and channel attention."""
        return per_view(self.interact, hr_features, hr_features.swapped(), Pair.unfold(coords_hr))

    def interact(self, own: Tensor, other: Tensor, coords: Tensor) -> Tensor:
        # In the features' dtype: under autocast grid_sample returns float32 (autocast's list), and bfloat16 maps mixed
        # with float32 ones in the in-place sums below cost 4.8 s of a 28 s bf16 forward at 48x156 (aten::add_,
        # aten::copy_ on HR maps; torch.profiler, reports/2026-12-07-bf16.md). A no-op in float32.
        warped = warp(other, coords).to(own.dtype)
        gate = correlation_gate(self.att1(own), self.att2(warped))
        if torch.is_grad_enabled():
            update = (warped - own) * gate
        else:   # in place on the fresh warp: no other full-size HR tensor
            update = warped.sub_(own).mul_(gate)
        del warped, gate  # evaluation: free before the dense block, the memory peak of the network
        refined = self.encoder2(update)
        refined += own
        return self.CALayer2(refined)

    def hr_disparity_feedback(self, features: Tensor, refined: Pair, coords_hr: Tensor) -> Tensor:
        """HRDIF: new LR features (2B, 64, H, W) for recursion 2 from the recursion-1 LR features, the refined HR
        features (a Pair) and the HR coordinates (not detached: the SR losses train the HR disparity through it)."""
        draft = per_view_pair(lambda own, other, coords: subpixel_draft(
            own, other, coords, self.scale, self.backatt1, self.backatt2, self.resblock), features, coords_hr)
        feedback = torch.cat(per_view(lambda x: feedback_features(x, self.down, self.feedbackatt), refined))
        return self.compress_in(torch.cat([draft, feedback], dim=1))
