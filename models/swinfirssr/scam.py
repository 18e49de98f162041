"""SwinFIRSSR's stereo cross-attention module (SCAM, NAFSSR's module as SwinFIRSSR writes it; official
swinfir/archs/swinfirssr_arch.py 194-245), after every residual group: each view attends to every position of the
same row of the other view.

It differs from NAFSSR's SCAM (models/nafssr.py) in three ways, all kept: one LayerNorm (over the channels of each
token) serves both views; queries *and* values are projections of the normalised tokens; and the residual carries
the normalised stream, `LN(x)_left + beta * F_right->left`, so the module's input before the norm is dropped
(arch 220 and 241). There is no output projection; beta and gamma start at zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution applied to channels-last tokens (N, H, W, C_in) -> (N, H, W, C_out)."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class SCAM(nn.Module):
    """Row-wise cross-view attention on tokens [left; right] (2B, H, W, C) -> the same shape.

    With L, R the normalised views: A = (l_proj1(L) r_proj1(R)^T) / sqrt(C) per row (B, H, W_left, W_right);
    left out = L + beta * softmax(A) r_proj2(R), right out = R + gamma * softmax(A^T) l_proj2(L).
    """

    def __init__(self, c: int):
        super().__init__()
        self.scale = c ** -0.5
        self.norm = nn.LayerNorm(c)
        self.l_proj1 = nn.Conv2d(c, c, 1)
        self.r_proj1 = nn.Conv2d(c, c, 1)
        # Residual scales, zero at init: the module starts as the LayerNorm alone.
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.l_proj2 = nn.Conv2d(c, c, 1)
        self.r_proj2 = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        left, right = self.norm(x).chunk(2)                                                # B, H, W, C each
        query_left = pointwise(self.l_proj1, left)                                         # B, H, W_left, C
        query_right = pointwise(self.r_proj1, right)                                       # B, H, W_right, C
        scores = (query_left @ query_right.transpose(-1, -2)) * self.scale                 # B, H, W_left, W_right
        right_to_left = scores.softmax(-1) @ pointwise(self.r_proj2, right)                 # B, H, W_left, C
        left_to_right = scores.transpose(-1, -2).softmax(-1) @ pointwise(self.l_proj2, left)  # B, H, W_right, C
        return torch.cat([left + right_to_left * self.beta.view(-1), right + left_to_right * self.gamma.view(-1)])
