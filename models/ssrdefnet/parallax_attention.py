"""Low-resolution parallax attention (PAM): cascaded row-wise attention between the views (PASSRnet/iPASSR style).

Along each image row, every left pixel attends over all right pixels of the same row and vice versa. The attention
gives (a) a cross-view feature transfer, blended with the view's own features by a cycle-consistency valid mask, and
(b) the LR correspondence: the expected column in the other view (paper Sec. 3.2; official model.py:638-720, `PAM`
and `PAB`).

Shapes below use N = B*H (one attention problem per image row) and views folded in the batch as [left; right].
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.parallax import cycle_valid_mask, transfer
from models.layers import ViewwiseBatchNorm2d



class ParallaxAttentionBlock(nn.Module):
    """One PAB: refines the matching features and returns this stage's left-to-right matching scores.

    features: (2B, C, H, W) as [left; right] -> (features + head(features), score (B*H, W_left, W_right)).
    Queries come from the left view (`bq`), keys from the right view (`bs`); both are centred along the width.
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, 1, 1, bias=True),
            ViewwiseBatchNorm2d(channels // 2),
            nn.PReLU(),
            nn.Conv2d(channels // 2, channels, 3, 1, 1, bias=True),
            ViewwiseBatchNorm2d(channels),
            nn.PReLU(),
        )
        self.bq = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.bs = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        refined = self.head(features)
        left, right = refined.chunk(2)
        query = self.bq(left)
        key = self.bs(right)
        query = query - query.mean(3, keepdim=True)
        key = key - key.mean(3, keepdim=True)
        b, c, h, w = query.shape
        score = torch.bmm(query.permute(0, 2, 3, 1).reshape(b * h, w, c),   # (N, W_left, C)
                          key.permute(0, 2, 1, 3).reshape(b * h, c, w))     # (N, C, W_right)
        return features + refined, score


class PAMOutput(NamedTuple):
    features: Tensor        # (2B, C, H, W): own features blended with the features transferred from the other view
    coords: Tensor          # (2B, 1, H, W): expected matching column in the other view (LR pixels)
    attention: tuple[Tensor, Tensor]  # (M_right_to_left, M_left_to_right), each (B, H, W, W), rows sum to 1
    valid: Tensor           # (2B, 1, H, W): soft valid (non-occluded) mask in [0, 1), detached


class ParallaxAttention(nn.Module):
    """Cascaded PAM with four PABs (official `PAM`). Scores of the four stages are summed before the softmax."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.pab1 = ParallaxAttentionBlock(channels)
        self.pab2 = ParallaxAttentionBlock(channels)
        self.pab3 = ParallaxAttentionBlock(channels)
        self.pab4 = ParallaxAttentionBlock(channels)

    def forward(self, values: Tensor, features: Tensor) -> PAMOutput:
        """values: (2B, C, H, W) deep features to transfer; features: (2B, C, H, W) matching features."""
        score = None
        for block in (self.pab1, self.pab2, self.pab3, self.pab4):
            features, stage_score = block(features)
            # Accumulated in (at least) float32 as the official float32 `cost` buffers do, also under autocast: with
            # the softmax in bfloat16 the coordinates below come out bfloat16 (4 px apart at 740 px, Motorcycle x4)
            # and the HR cost volume's column indices overflow (measured: reports/2026-12-07-bf16.md).
            stage_score = stage_score.to(torch.promote_types(stage_score.dtype, torch.float32))
            score = stage_score if score is None else score + stage_score
        right_to_left = torch.softmax(score, dim=-1)                  # (N, W_left, W_right)
        left_to_right = torch.softmax(score.transpose(1, 2), dim=-1)  # (N, W_right, W_left)

        b2, _, h, w = values.shape
        b = b2 // 2
        valid = torch.cat([cycle_valid_mask(right_to_left, left_to_right),
                           cycle_valid_mask(left_to_right, right_to_left)]).view(b2, 1, h, w)
        value_left, value_right = values.chunk(2)
        transferred = torch.cat([transfer(right_to_left, value_right), transfer(left_to_right, value_left)])
        blended = values * (1 - valid) + transferred * valid

        columns = torch.arange(w, device=values.device, dtype=right_to_left.dtype)
        coords = torch.cat([(right_to_left * columns).sum(-1), (left_to_right * columns).sum(-1)]).view(b2, 1, h, w)
        attention = (right_to_left.view(b, h, w, w), left_to_right.view(b, h, w, w))
        return PAMOutput(blended, coords, attention, valid)
