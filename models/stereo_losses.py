"""The base of every network's training objective (`Objective`), and the loss terms shared by the
parallax-attention stereo networks (iPASSR and SSRDE-FNet): photometric, cycle and stereo-consistency terms
written once for both views and any correspondence, and the attention smoothness.

The photometric, cycle and consistency terms compare a view with the other view brought over by a correspondence:
parallax-attention maps at LR, disparity warps at HR (SSRDE-FNet). `Correspondence` holds the two directions. As
in the official code of both networks, masked L1 terms divide by all elements (not by the mask sum).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.outputs import Pair
from models.parallax import coordinates_to_disparity, transfer


class Objective(nn.Module):
    """A network's training objective: `forward(out, lr_left, lr_right, hr_left, hr_right[, disparity])` returns a
    dict of named terms plus their weighted sum 'total' (`weighted_total`). Subclasses set DEFAULT_WEIGHTS (the
    paper's); `weights` overrides some of them (train.py --loss_weight TERM=W).

    Disparity supervision (train.py --disp_supervision W, off in every paper's recipe): an objective whose network
    estimates disparity names its estimates in DISPARITY_PARTS with default weights; given `disparity`, the Pair of
    ground-truth maps (B, 1, sH, sW), it adds the term 'disp_sup' = sum over parts of weight x
    `supervised_disparity(estimate, ground truth)`. `disparity_parts` overrides some part weights.
    """

    DEFAULT_WEIGHTS: dict[str, float] = {}
    DISPARITY_PARTS: dict[str, float] = {}

    def __init__(self, scale_factor: int, weights: dict[str, float] | None = None,
                 disparity_parts: dict[str, float] | None = None):
        super().__init__()
        unknown = set(weights or {}) - set(self.DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f'unknown loss terms {sorted(unknown)}; known: {sorted(self.DEFAULT_WEIGHTS)}')
        unknown = set(disparity_parts or {}) - set(self.DISPARITY_PARTS)
        if unknown:
            raise ValueError(f'unknown disparity estimates {sorted(unknown)}; known: {sorted(self.DISPARITY_PARTS)}')
        self.scale = scale_factor
        self.weights = {**self.DEFAULT_WEIGHTS, **(weights or {})}
        self.disparity_parts = {**self.DISPARITY_PARTS, **(disparity_parts or {})}

    def weighted_total(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """terms plus 'total' = sum of weight x term."""
        terms['total'] = sum(self.weights[name] * value for name, value in terms.items())
        return terms


def supervised_disparity(estimate: Pair, truth: Pair, max_disparity: float = 192.0) -> Tensor:
    """Smooth L1 (Huber, beta 1 pixel, as PSMNet and GwcNet) between estimated and ground-truth disparities of both
    views (B, 1, sH, sW, HR pixels), averaged over the valid pixels of both: finite ground truth in
    [0, max_disparity) whose match lies inside the other view (left: x - d >= 0, right: x + d <= W - 1). A pixel
    whose match is outside the other image (a crop's border band) cannot be matched by any network; parallax
    attention, whose estimate is a column of the other view, would be pulled towards the border there.
    Zero (with a gradient path) when no pixel is valid. NaN marks unknown ground truth."""
    total, count = estimate.left.new_zeros(()), 0
    for est, gt, sign in ((estimate.left, truth.left, -1), (estimate.right, truth.right, 1)):
        columns = torch.arange(gt.shape[-1], device=gt.device, dtype=gt.dtype)
        match = columns + sign * gt
        valid = (torch.isfinite(gt) & (gt >= 0) & (gt < max_disparity)
                 & (match >= 0) & (match <= gt.shape[-1] - 1))
        error = F.smooth_l1_loss(est, torch.where(valid, gt, est.detach()), reduction='none', beta=1.0)
        total = total + (error * valid).sum()
        count = count + valid.sum()
    return total / torch.clamp(count, min=1)


class MatchingWarmupLoss(Objective):
    """train.py --stage matching: a warm-up of the LR matching alone on ground-truth disparity, before the joint
    training. forward(coords, lr_left, lr_right, hr_left, hr_right, disparity) with `coords` the Pair of LR matching
    coordinates upsampled to HR (B, 1, sH, sW) that a network's `matching(left, right)` returns (SSRDE-FNet's
    recursion-1 PAM estimate, its `coords_lr[0]`) -> {'disp_sup', 'total'}: `supervised_disparity` of it."""

    DEFAULT_WEIGHTS = {'disp_sup': 1.0}

    def forward(self, coords: Pair, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor, hr_right: Tensor,
                disparity: Pair | None = None) -> dict[str, Tensor]:
        if disparity is None:
            raise ValueError('the matching warm-up needs ground-truth disparity (a Pair of HR maps)')
        estimate = Pair(coordinates_to_disparity(coords.left, 'left', None),    # not clamped
                        coordinates_to_disparity(coords.right, 'right', None))
        return self.weighted_total({'disp_sup': supervised_disparity(estimate, disparity)})


def illumination_residuals(hr: Pair, lr: Pair, scale: int) -> tuple[Pair, Pair]:
    """iPASSR's illuminance-robust residuals: |HR - bicubic_up(LR)| per view (B, 3, sH, sW), and their bicubic
    downscaling to LR (B, 3, H, W). PyTorch bicubic (a = -0.75), align_corners=False, as both official codes."""
    residual_hr = Pair(*((h - F.interpolate(l, scale_factor=scale, mode='bicubic', align_corners=False)).abs()
                         for h, l in zip(hr, lr)))
    return residual_hr, residual_hr.map(
        lambda x: F.interpolate(x, scale_factor=1 / scale, mode='bicubic', align_corners=False))


class Correspondence(NamedTuple):
    """Brings a (B, C, H, W) map of one view into the other: `to_left(right_map)`, `to_right(left_map)`."""

    to_left: Callable[[Tensor], Tensor]
    to_right: Callable[[Tensor], Tensor]

    @staticmethod
    def from_attention(attention: Pair, detach: bool = False) -> 'Correspondence':
        """LR: row-wise attention, Pair(M_right_to_left, M_left_to_right) of shape (B, H, W, W)."""
        rl, lr = (m.detach() if detach else m for m in attention)
        flat = [m.reshape(-1, m.shape[-2], m.shape[-1]) for m in (rl, lr)]
        return Correspondence(lambda x: transfer(flat[0], x), lambda x: transfer(flat[1], x))


def masked_l1(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """mean |a*mask - b*mask| over all elements (official `nn.L1Loss` on masked maps: SSRDE-FNet train.py:174,
    iPASSR train.py:69)."""
    return (a * mask - b * mask).abs().mean()


def view_consistency(x: Pair, corr: Correspondence, valid: Pair) -> Tensor:
    """Each view against the other view transferred onto it (photometric and stereo-consistency terms)."""
    return (masked_l1(x.left, corr.to_left(x.right), valid.left)
            + masked_l1(x.right, corr.to_right(x.left), valid.right))


def cycle_consistency(x: Pair, corr: Correspondence, valid: Pair) -> Tensor:
    """Each view against itself taken to the other view and back (left -> right -> left, and vice versa)."""
    return (masked_l1(x.left, corr.to_left(corr.to_right(x.left)), valid.left)
            + masked_l1(x.right, corr.to_right(corr.to_left(x.right)), valid.right))


def attention_smoothness(attention: Pair) -> Tensor:
    """PASSRnet smoothness of the attention maps (B, H, W, W): neighbouring rows agree, and the diagonal neighbour
    in (own column, other column) space agrees."""
    return sum(F.l1_loss(m[:, :-1], m[:, 1:]) + F.l1_loss(m[:, :, :-1, :-1], m[:, :, 1:, 1:]) for m in attention)
